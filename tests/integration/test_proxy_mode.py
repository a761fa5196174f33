"""Proxy mode against a real upstream: a werkzeug server thread on 127.0.0.1 serving a tiny mirror.

Most requests go through ``werkzeug.test.Client`` into the gate's WSGI app (``create_app`` in proxy mode), which
talks to the upstream over real sockets; the cases that are about the wire (a body cut short, a timeout) also run
the gate itself as a threaded werkzeug server and read its answer with ``http.client``.

The upstream is honest about what it was asked: it logs every request target, so "never contacted" and "the
upstream was asked for the normalised path" are checked against what really arrived.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server
from werkzeug.test import Client
from werkzeug.utils import send_file

from conftest import IR_CLIENT, US_CLIENT
from exportgate.web.app import create_app
from exportgate.web.proxy import CHUNK, UpstreamCutOff

UNKNOWN_CLIENT = "10.0.0.1"  # private address: no country, the pack flags it
CHAT = bytes(range(256)) * 800  # 200 KiB: several chunks
CRYPTO = b"RESTRICTED-5D002 " * 4096
TIMEOUT = 0.5


# -- the upstream ---------------------------------------------------------------------------------------------


# Caching headers CDNs and nginx obey ahead of Cache-Control.
CACHE_OVERRIDES = [("Surrogate-Control", "max-age=600"), ("CDN-Cache-Control", "max-age=600"),
                   ("Cloudflare-CDN-Cache-Control", "max-age=600"), ("X-Accel-Expires", "600"),
                   ("Edge-Control", "!no-store, max-age=86400"), ("Akamai-Cache-Control", "max-age=600")]


class Upstream:
    """A small mirror as a WSGI app: files under ``root`` (Range, ETag, 304 by werkzeug) and misbehaving routes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.case_insensitive = False
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.base = ""

    def targets(self) -> list[str]:
        with self.lock:
            return [target for _, target in self.seen]

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        target = environ.get("RAW_URI") or environ["PATH_INFO"]
        with self.lock:
            self.seen.append((environ["REQUEST_METHOD"], target))
        path = environ["PATH_INFO"]
        special = getattr(self, "route_" + path.rpartition("/")[2].replace("-", "_").replace(".", "_"), None)
        if path.startswith("/echo"):
            return self.echo(environ, start_response)
        if special is not None:
            return special(environ, start_response)
        file = self.root / path.lstrip("/")
        if self.case_insensitive and not file.exists():
            matches = [p for p in self.root.rglob("*") if str(p.relative_to(self.root)).lower()
                       == path.lstrip("/").lower()]
            file = matches[0] if matches else file
        if not file.is_file():
            start_response("404 Not Found", [("Content-Length", "9")])
            return [b"not found"]
        try:
            response = send_file(file, environ, conditional=True, mimetype="application/octet-stream")
        except HTTPException as exc:  # 416
            return exc(environ, start_response)
        return response(environ, start_response)

    def echo(self, environ: dict[str, Any], start_response: Any) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        data = json.dumps({
            "method": environ["REQUEST_METHOD"],
            "target": environ.get("RAW_URI"),
            "headers": {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")},
            "body": body.decode("latin-1"),
        }).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def route_slow_1_tar_gz(self, environ: dict[str, Any], start_response: Any) -> Any:
        time.sleep(TIMEOUT * 3)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    def route_cut_1_tar_gz(self, environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Length", str(len(CHAT) * 4))])

        def body() -> Iterator[bytes]:
            yield CHAT
            raise ConnectionAbortedError("upstream dies mid-body (test)")

        return body()

    def route_cut_chunked_1_tar_gz(self, environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "application/gzip")])  # no length: chunked

        def body() -> Iterator[bytes]:
            yield CHAT
            raise ConnectionAbortedError("upstream dies mid-body (test)")

        return body()

    def route_stall_1_tar_gz(self, environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Length", str(len(CHAT) * 2))])

        def body() -> Iterator[bytes]:
            yield CHAT
            time.sleep(TIMEOUT * 4)
            yield CHAT

        return body()

    def route_many_headers(self, environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [(f"X-H{i}", "v") for i in range(150)] + [("Content-Length", "0")])
        return [b""]

    def route_long_header(self, environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("X-Long", "v" * 70_000), ("Content-Length", "0")])
        return [b""]

    def route_hop(self, environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Connection", "X-Secret-Hop"), ("X-Secret-Hop", "1"), ("Keep-Alive", "timeout=5"),
                                  ("Proxy-Authenticate", "Basic"), ("Upgrade", "h2c"), ("Trailer", "X-T"),
                                  ("X-Kept", "yes"), ("X-Exportgate-Decision", "allow"),
                                  ("Cache-Control", "public, max-age=3600"), *CACHE_OVERRIDES, ("Content-Length", "2")])
        return [b"ok"]

    def route_redirect(self, environ: dict[str, Any], start_response: Any) -> Any:
        start_response("301 Moved Permanently", [("Location", self.base + "/files/chat-1.tar.gz"),
                                                 ("Content-Length", "0")])
        return [b""]

    def route_redirect_slashes(self, environ: dict[str, Any], start_response: Any) -> Any:
        start_response("302 Found", [("Location", self.base + "//elsewhere.example/x"), ("Content-Length", "0")])
        return [b""]

    def route_redirect_with_body(self, environ: dict[str, Any], start_response: Any) -> Any:
        # As nginx redirects a directory: a small HTML body with its length.
        body = b"<html><body>301 Moved Permanently</body></html>\n"
        start_response("301 Moved Permanently", [("Location", self.base + "/simple/"), ("Content-Type", "text/html"),
                                                 ("Content-Length", str(len(body)))])
        return [body]

    def route_redirect_written_otherwise(self, environ: dict[str, Any], start_response: Any) -> Any:
        # The upstream itself, its scheme and host written in capitals.
        location = self.base.replace("http://", "HTTP://").replace("127.0.0.1", "127.0.0.1.")
        start_response("302 Found", [("Location", location + "/files/crypto-1.tar.gz?x=1"), ("Content-Length", "0")])
        return [b""]

    def route_redirect_other_port(self, environ: dict[str, Any], start_response: Any) -> Any:
        start_response("302 Found", [("Location", "http://127.0.0.1:9/files/x"), ("Content-Length", "0")])
        return [b""]

    def route_cookies(self, environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/"),
                                  ("Content-Length", "0")])
        return [b""]

    def route_gzipped(self, environ: dict[str, Any], start_response: Any) -> Any:
        data = gzip.compress(b"hello " * 1000)
        start_response("200 OK", [("Content-Encoding", "gzip"), ("Content-Length", str(len(data)))])
        return [data]


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve a WSGI app on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    root = tmp_path_factory.mktemp("mirror")
    (root / "files").mkdir()
    (root / "files" / "chat-1.tar.gz").write_bytes(CHAT)
    (root / "files" / "crypto-1.tar.gz").write_bytes(CRYPTO)
    (root / "files" / "chat-big.tar.gz").write_bytes(CHAT * 5)
    (root / "simple").mkdir()
    (root / "simple" / "index.html").write_bytes(b"<a href='/files/chat-1.tar.gz'>chat</a>")
    app = Upstream(root)
    with serving(app) as base:
        app.base = base
        yield app


@pytest.fixture
def make_gate(gate_config: Any, upstream: Upstream) -> Iterator[Any]:
    """``make_gate(**serve)`` -> the gate's WSGI app in proxy mode in front of the upstream."""
    apps: list[Any] = []

    def make(*, top: dict[str, Any] | None = None, **serve: Any) -> Any:
        settings = {"mode": "proxy", "upstream": upstream.base, "upstream_timeout": TIMEOUT, **serve}
        app = create_app(gate_config(serve=settings, **(top or {})))
        apps.append(app)
        return app

    upstream.case_insensitive = False
    yield make
    for app in apps:
        app.mode_app.close()
        app.runtime.close()


def fetch(app: Any, raw: str, *, client: str = IR_CLIENT, method: str = "GET", headers: Any = None,
          buffered: bool = True) -> Any:
    """One request with ``raw`` as the request target exactly as sent (RAW_URI), from ``client``."""
    return Client(app).open(raw, method=method, headers=headers or {}, buffered=buffered,
                            environ_overrides={"REMOTE_ADDR": client, "RAW_URI": raw, "REQUEST_URI": raw})


def upstream_errors(app: Any, kind: str) -> float:
    return app.metrics.registry.get_sample_value("exportgate_upstream_errors_total", {"kind": kind}) or 0.0


# -- decisions ------------------------------------------------------------------------------------------------


def test_allowed_download_is_streamed_with_decision_headers(make_gate: Any, upstream: Upstream) -> None:
    app = make_gate()
    response = fetch(app, "/files/chat-1.tar.gz")
    assert response.status_code == 200
    assert response.data == CHAT
    assert response.headers["Content-Length"] == str(len(CHAT))
    assert response.headers["X-Exportgate-Decision"] == "allow"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["ETag"]  # the upstream's entity headers pass through
    # The record was committed before the bytes left.
    assert app.runtime.store.get(response.headers["X-Exportgate-Decision-Id"]) is not None


@contextmanager
def links(made: dict[Path, Path | str]) -> Iterator[None]:
    """Symlinks (``link: target``) in the upstream's tree for one test."""
    try:
        for link, target in made.items():
            link.symlink_to(target)
        yield
    finally:
        for link in made:
            link.unlink(missing_ok=True)


def test_with_the_upstreams_root_a_symlink_is_decided_as_its_target(make_gate: Any, upstream: Upstream,
                                                                    tmp_path: Path) -> None:
    # The upstream follows the link: chat-latest.tar.gz -> crypto-1.tar.gz is the 5D002 file, for Iran.
    (tmp_path / "outside.tar.gz").write_bytes(CRYPTO)
    files = upstream.root / "files"
    with links({files / "chat-latest.tar.gz": "crypto-1.tar.gz", files / "chat-4.tar.gz": "chat-1.tar.gz",
                files / "chat-2.tar.gz": tmp_path / "outside.tar.gz"}):
        app = make_gate(root=str(upstream.root))
        seen = len(upstream.targets())
        blocked = fetch(app, "/files/chat-latest.tar.gz")
        assert blocked.status_code == 451 and CRYPTO not in blocked.data
        record = app.runtime.store.get(blocked.headers["X-Exportgate-Decision-Id"])
        assert record.body["request"]["path"] == "/files/crypto-1.tar.gz"
        assert record.body["request"]["requested_path"] == "/files/chat-latest.tar.gz"
        allowed = fetch(app, "/files/chat-4.tar.gz")  # decided as chat-1, and chat-1 is what is asked upstream
        assert allowed.status_code == 200 and allowed.data == CHAT
        assert upstream.targets()[seen:] == ["/files/chat-1.tar.gz"]
        out = fetch(app, "/files/chat-2.tar.gz", client=US_CLIENT)  # a link out of the tree: refused, undecided
        assert out.status_code == 403 and CRYPTO not in out.data and len(upstream.targets()) == seen + 1


def test_unknown_location_is_flagged_and_served(make_gate: Any) -> None:
    response = fetch(make_gate(), "/files/crypto-1.tar.gz", client=UNKNOWN_CLIENT)
    assert response.status_code == 200
    assert response.data == CRYPTO
    assert response.headers["X-Exportgate-Decision"] == "flag"


@pytest.mark.parametrize("accept, content_type", [
    pytest.param("text/html", "text/html; charset=utf-8", id="html"),
    pytest.param(None, "text/html; charset=utf-8", id="no accept"),
    pytest.param("application/json", "application/json", id="json"),
    pytest.param("text/html;q=0.1, application/json", "application/json", id="json preferred"),
])
def test_block_answers_451_page_and_never_contacts_upstream(make_gate: Any, upstream: Upstream, accept: str | None,
                                                            content_type: str) -> None:
    app = make_gate()
    before = len(upstream.targets())
    response = fetch(app, "/files/crypto-1.tar.gz?token=1", headers={"Accept": accept} if accept else None)
    assert response.status_code == 451
    assert response.headers["Content-Type"] == content_type
    assert response.headers["X-Exportgate-Decision"] == "block"
    assert response.headers["Cache-Control"] == "no-store"
    assert 'rel="blocked-by"' in response.headers["Link"]
    assert CRYPTO[:16] not in response.data
    if content_type == "application/json":
        page = json.loads(response.data)
        assert page["status"] == 451 and page["rule"] == "ir-other-software"
        assert page["decision_id"] == response.headers["X-Exportgate-Decision-Id"]
    else:
        assert b"451 Unavailable For Legal Reasons" in response.data
    assert len(upstream.targets()) == before
    assert app.runtime.store.get(response.headers["X-Exportgate-Decision-Id"]).body["enforced"] == "block"


def test_head_of_blocked_download_has_no_body(make_gate: Any, upstream: Upstream) -> None:
    before = len(upstream.targets())
    response = fetch(make_gate(), "/files/crypto-1.tar.gz", method="HEAD")
    assert response.status_code == 451 and response.data == b""
    assert len(upstream.targets()) == before


# Every spelling of the restricted artifact, from Iran: never its bytes, never an upstream request for it. With
# only /files/** gated, two spellings are not under /files/ at all on a case-sensitive origin (the upstream here):
# they are not decided, and the upstream has nothing there (404).
HOSTILE_PATHS = [
    pytest.param("/files/crypto-1.tar.gz", 451, 451, id="plain"),
    pytest.param("/files/%2e%2e/files/crypto-1.tar.gz", 451, 451, id="encoded dot-dot"),
    pytest.param("/files/%2E%2E/files/crypto-1.tar.gz", 451, 451, id="encoded dot-dot upper"),
    pytest.param("/files/../files/crypto-1.tar.gz", 451, 451, id="dot-dot"),
    pytest.param("/files/chat-1.tar.gz/../crypto-1.tar.gz", 451, 451, id="through the allowed file"),
    pytest.param("/files//crypto-1.tar.gz", 451, 451, id="double slash"),
    pytest.param("//files/crypto-1.tar.gz", 451, 451, id="leading double slash"),
    pytest.param("/files/./crypto-1.tar.gz", 451, 451, id="dot segment"),
    pytest.param("/files/%2e/crypto-1.tar.gz", 451, 451, id="encoded dot segment"),
    pytest.param("/files/%63rypto-1.tar.gz", 451, 451, id="encoded letter"),
    pytest.param("/files/crypto-1.tar.gz?x=1&y=../chat-1.tar.gz", 451, 451, id="query string"),
    pytest.param("/files/crypto-1.tar.gz#frag", 451, 451, id="fragment"),
    pytest.param("/files/chat-1.tar.gz%3F/../crypto-1.tar.gz", 451, 451, id="encoded question mark"),
    pytest.param("/files/crypto-1.tar.gz/", 451, 451, id="trailing slash"),
    pytest.param("/files/crypto-1.tar.gz/.", 451, 451, id="trailing dot"),
    pytest.param("/FILES/CRYPTO-1.TAR.GZ", 451, 404, id="upper case (unclassified: blocked)"),
    pytest.param("/files/crypto-1.tar.gz;.whl", 451, 451, id="path parameter"),
    pytest.param("/files\\crypto-1.tar.gz", 400, 400, id="backslash"),
    pytest.param("/files/chat-\\..\\crypto-1.tar.gz", 400, 400, id="backslash traversal behind an allowed name"),
    pytest.param("/files/%252e%252e/files/crypto-1.tar.gz", 451, 451, id="double encoded"),
    pytest.param("/files%2fcrypto-1.tar.gz", 400, 400, id="encoded slash"),
    pytest.param("/files/%2F../crypto-1.tar.gz", 400, 400, id="encoded slash upper"),
    pytest.param("/files/%5c../crypto-1.tar.gz", 400, 400, id="encoded backslash"),
    pytest.param("/files/crypto-1.tar.gz%00.txt", 400, 400, id="encoded nul"),
    pytest.param("/../files/crypto-1.tar.gz", 400, 400, id="above the root"),
    pytest.param("/files/crypto-1.tar.gz%", 400, 400, id="broken escape"),
    pytest.param("/files/crypto-1.tar.gz%ff", 400, 400, id="not utf-8"),
    pytest.param("http://127.0.0.1/files/crypto-1.tar.gz", 451, 451, id="absolute form"),  # RFC 9112 3.2.2: read
    pytest.param("/files/crypto-1.tar.gz ", 400, 400, id="raw space"),
    pytest.param("/" + "a/" * 3000 + "files/crypto-1.tar.gz", 400, 400, id="path too long"),
    pytest.param("/files/crypto-1.tar.gz?" + "q" * 9000, 414, 414, id="query too long"),
]


@pytest.mark.parametrize("raw, status, status_files_gated", HOSTILE_PATHS)
@pytest.mark.parametrize("gated", [pytest.param((), id="all gated"), pytest.param(("/files/**",), id="files gated")])
def test_restricted_artifact_is_never_served_to_iran(make_gate: Any, upstream: Upstream, raw: str, status: int,
                                                    status_files_gated: int, gated: tuple[str, ...]) -> None:
    before = len(upstream.targets())
    response = fetch(make_gate(gated=list(gated)), raw)
    expected = status_files_gated if gated else status
    assert response.status_code == expected, response.data[:200]
    assert CRYPTO[:16] not in response.data
    asked = upstream.targets()[before:]
    assert "/files/crypto-1.tar.gz" not in [t.partition("?")[0] for t in asked]
    if expected != 404:
        assert asked == []


@pytest.mark.parametrize("raw", [
    pytest.param("/FILES/CRYPTO-1.TAR.GZ", id="upper"),
    pytest.param("/Files/Crypto-1.tar.gz", id="mixed"),
    pytest.param("/files/%43RYPTO-1.tar.gz", id="encoded upper"),
])
@pytest.mark.parametrize("gated", [pytest.param((), id="all gated"),
                                   pytest.param(("/Files/**",), id="gated glob in caps")])
def test_case_variants_with_case_insensitive_paths(make_gate: Any, upstream: Upstream, raw: str,
                                                  gated: tuple[str, ...]) -> None:
    app = make_gate(top={"case_insensitive_paths": True}, gated=list(gated))
    upstream.case_insensitive = True  # the origin this setting is for: it would serve CRYPTO for any case
    before = len(upstream.targets())
    response = fetch(app, raw, headers={"Accept": "application/json"})
    assert response.status_code == 451
    assert json.loads(response.data)["rule"] == "ir-other-software"  # classified, not just "unclassified"
    assert upstream.targets()[before:] == []


@pytest.mark.parametrize("raw", [
    pytest.param("/file%C5%BF/crypto-1.tar.gz", id="long s"),
    pytest.param("/f%C4%B1les/CRYPTO-1.tar.gz", id="dotless i"),
    pytest.param("/files/cry%C3%9Fpto-1.tar.gz", id="sharp s"),
])
def test_a_letter_file_systems_fold_differently_is_400_for_a_case_insensitive_origin(make_gate: Any,
                                                                                     upstream: Upstream,
                                                                                     raw: str) -> None:
    app = make_gate(top={"case_insensitive_paths": True}, gated=["/Files/**"])
    before = len(upstream.targets())
    response = fetch(app, raw)
    assert response.status_code == 400 and b"case-ambiguous" in response.data
    assert upstream.targets()[before:] == []


@pytest.mark.parametrize("raw, forwarded", [
    pytest.param("/files/%2e%2e/files/chat-1.tar.gz", "/files/chat-1.tar.gz", id="dot-dot resolved"),
    pytest.param("/files//./chat-1.tar.gz?a=1&b=%2F#x", "/files/chat-1.tar.gz?a=1&b=%2F", id="query kept as sent"),
    pytest.param("/files/%63hat-1.tar.gz", "/files/chat-1.tar.gz", id="decoded"),
])
def test_allowed_variant_is_forwarded_as_the_normalised_path(make_gate: Any, upstream: Upstream, raw: str,
                                                             forwarded: str) -> None:
    before = len(upstream.targets())
    response = fetch(make_gate(), raw)
    assert response.status_code == 200 and response.data == CHAT
    assert upstream.targets()[before:] == [forwarded]


@pytest.mark.parametrize("raw, forwarded", [
    pytest.param("/echo/caf%C3%A9", "/echo/caf%C3%A9", id="utf-8 re-encoded"),
    pytest.param("/echo/a%3Fb%23c%25d", "/echo/a%3Fb%23c%25d", id="reserved characters stay encoded"),
    pytest.param("/echo/%7euser/x", "/echo/~user/x", id="unreserved decoded"),
    pytest.param("/echo/x?q=a%20b&r=%2F&s=[1]", "/echo/x?q=a%20b&r=%2F&s=%5B1%5D", id="query escapes kept"),
    pytest.param('/echo/x?q=a"b<c>{d}|e', "/echo/x?q=a%22b%3Cc%3E%7Bd%7D%7Ce", id="query: wire-illegal escaped"),
    pytest.param("/echo/x?q=\xe9", "/echo/x?q=%E9", id="query: the client's byte, not re-encoded"),
    # One stray '%' made the HTTP client re-encode every escape of the query (%2F became %252F).
    pytest.param("/echo/x?a=%2F&b=%zz", "/echo/x?a=%2F&b=%25zz", id="query: a stray % is the only escape added"),
    pytest.param("/echo/x?a=%2F&b=100%", "/echo/x?a=%2F&b=100%25", id="query: a trailing %"),
])
def test_forwarded_path_encoding(make_gate: Any, raw: str, forwarded: str) -> None:
    response = fetch(make_gate(), raw, client=US_CLIENT)
    assert response.status_code == 200
    assert json.loads(response.data)["target"] == forwarded


def test_ungated_paths_pass_without_a_decision(make_gate: Any) -> None:
    app = make_gate(gated=["/files/**"])
    response = fetch(app, "/simple/index.html")
    assert response.status_code == 200
    assert "X-Exportgate-Decision" not in response.headers
    assert app.runtime.store.count("decision") == 0
    assert fetch(app, "/simple/../files/crypto-1.tar.gz").status_code == 451


# -- client address -------------------------------------------------------------------------------------------


def test_spoofed_forwarded_for_from_untrusted_peer_is_ignored(make_gate: Any, upstream: Upstream) -> None:
    app = make_gate(trust_proxy=["127.0.0.1/32"])
    before = len(upstream.targets())
    blocked = fetch(app, "/files/crypto-1.tar.gz", client=IR_CLIENT,
                    headers={"X-Forwarded-For": US_CLIENT, "Forwarded": f"for={US_CLIENT}"})
    assert blocked.status_code == 451
    assert upstream.targets()[before:] == []
    # Allowed: the upstream sees only the peer, not the client's claim.
    echoed = json.loads(fetch(app, "/echo/x", client=US_CLIENT,
                              headers={"X-Forwarded-For": IR_CLIENT, "Forwarded": "for=1.2.3.4",
                                       "X-Real-IP": "1.2.3.4"}).data)
    assert echoed["headers"]["x-forwarded-for"] == US_CLIENT
    assert "forwarded" not in echoed["headers"] and "x-real-ip" not in echoed["headers"]


def test_trusted_proxy_chain_is_used_and_extended(make_gate: Any) -> None:
    app = make_gate(trust_proxy=["127.0.0.1/32"])
    assert fetch(app, "/files/crypto-1.tar.gz", client="127.0.0.1",
                 headers={"X-Forwarded-For": IR_CLIENT}).status_code == 451
    echoed = json.loads(fetch(app, "/echo/x", client="127.0.0.1",
                              headers={"X-Forwarded-For": US_CLIENT, "X-Forwarded-Host": "mirror.example",
                                       "Host": "gate.internal"}).data)
    assert echoed["headers"]["x-forwarded-for"] == f"{US_CLIENT}, 127.0.0.1"
    assert echoed["headers"]["x-forwarded-host"] == "mirror.example"
    assert echoed["headers"]["host"].startswith("127.0.0.1:")  # the upstream's own name


# -- HTTP semantics passed through ----------------------------------------------------------------------------


def test_range_request(make_gate: Any) -> None:
    response = fetch(make_gate(), "/files/chat-1.tar.gz", headers={"Range": "bytes=1000-1999"})
    assert response.status_code == 206
    assert response.data == CHAT[1000:2000]
    assert response.headers["Content-Range"] == f"bytes 1000-1999/{len(CHAT)}"
    assert response.headers["X-Exportgate-Decision"] == "allow"


def test_unsatisfiable_range_is_416(make_gate: Any) -> None:
    response = fetch(make_gate(), "/files/chat-1.tar.gz", headers={"Range": f"bytes={len(CHAT) + 10}-"})
    assert response.status_code == 416


def test_range_of_blocked_download_is_still_451(make_gate: Any) -> None:
    response = fetch(make_gate(), "/files/crypto-1.tar.gz", headers={"Range": "bytes=0-15"})
    assert response.status_code == 451 and CRYPTO[:16] not in response.data


def test_conditional_requests(make_gate: Any) -> None:
    app = make_gate()
    first = fetch(app, "/files/chat-1.tar.gz")
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    not_modified = fetch(app, "/files/chat-1.tar.gz", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.data == b""
    assert not_modified.headers["X-Exportgate-Decision"] == "allow"
    assert fetch(app, "/files/chat-1.tar.gz", headers={"If-Modified-Since": modified}).status_code == 304
    stale_range = fetch(app, "/files/chat-1.tar.gz", headers={"If-Range": '"other"', "Range": "bytes=0-9"})
    assert stale_range.status_code == 200 and stale_range.data == CHAT
    fresh_range = fetch(app, "/files/chat-1.tar.gz", headers={"If-Range": etag, "Range": "bytes=0-9"})
    assert fresh_range.status_code == 206 and fresh_range.data == CHAT[:10]


def test_head_passes_through(make_gate: Any, upstream: Upstream) -> None:
    before = len(upstream.seen)
    response = fetch(make_gate(), "/files/chat-1.tar.gz", method="HEAD")
    assert response.status_code == 200 and response.data == b""
    assert response.headers["Content-Length"] == str(len(CHAT))
    assert upstream.seen[before:] == [("HEAD", "/files/chat-1.tar.gz")]


def test_hop_by_hop_request_headers_are_dropped(make_gate: Any) -> None:
    headers = {"Connection": "X-Drop-Me, keep-alive", "X-Drop-Me": "1", "Keep-Alive": "300", "TE": "trailers",
               "Proxy-Authorization": "Basic c2VjcmV0", "Upgrade": "websocket", "X-Kept": "yes",
               "X-Exportgate-Decision": "allow", "Range": "bytes=0-1", "If-None-Match": '"x"'}
    echoed = json.loads(fetch(make_gate(), "/echo/x", client=US_CLIENT, headers=headers).data)
    seen = echoed["headers"]
    for name in ("x-drop-me", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert name not in seen, name
    assert seen["x-kept"] == "yes" and seen["range"] == "bytes=0-1" and seen["if-none-match"] == '"x"'
    assert seen["x-exportgate-decision"] == "allow"  # the gate's own, for the upstream's log
    assert "x-exportgate-decision-id" in seen
    assert seen.get("accept-encoding", "identity") == "identity"  # no compression the client did not ask for


def test_hop_by_hop_response_headers_are_dropped(make_gate: Any) -> None:
    response = fetch(make_gate(), "/files/hop", client=US_CLIENT)
    assert response.status_code == 200 and response.data == b"ok"
    for name in ("Connection", "X-Secret-Hop", "Keep-Alive", "Proxy-Authenticate", "Upgrade", "Trailer"):
        assert name not in response.headers, name
    assert response.headers["X-Kept"] == "yes"
    assert response.headers["Cache-Control"] == "no-store"  # gated: the upstream's caching is overridden
    assert [name for name, _ in CACHE_OVERRIDES if name in response.headers] == []  # and what would override it
    assert response.headers.getlist("X-Exportgate-Decision") == ["allow"]


def test_ungated_response_keeps_upstream_caching_but_not_fake_decisions(make_gate: Any) -> None:
    response = fetch(make_gate(gated=["/packages/**"]), "/files/hop", client=IR_CLIENT)
    assert response.headers["Cache-Control"] == "public, max-age=3600"
    assert all(response.headers[name] == value for name, value in CACHE_OVERRIDES)
    assert "X-Exportgate-Decision" not in response.headers


def test_redirect_to_upstream_is_rewritten_onto_the_gate(make_gate: Any) -> None:
    response = fetch(make_gate(), "/files/redirect", client=US_CLIENT)
    assert response.status_code == 301
    assert response.headers["Location"] == "/files/chat-1.tar.gz"


def test_redirect_to_an_upstream_path_with_slashes_stays_on_the_gate(make_gate: Any) -> None:
    """'//elsewhere.example/x' is a path on the upstream, but a client reads it as another host."""
    response = fetch(make_gate(), "/files/redirect-slashes", client=US_CLIENT)
    assert response.status_code == 302
    assert response.headers["Location"] == "/elsewhere.example/x"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_redirect_with_a_body_is_passed_on_whole(make_gate: Any, method: str) -> None:
    """requests' Session read a redirect's body itself (for Response.next) even with allow_redirects=False: the
    client got a 500 for every redirect nginx answers with a body, a directory redirect among them."""
    app = make_gate()
    response = fetch(app, "/files/redirect_with_body", client=US_CLIENT, method=method)
    assert response.status_code == 301
    assert response.headers["Location"] == "/simple/"
    assert response.data == (b"" if method == "HEAD" else b"<html><body>301 Moved Permanently</body></html>\n")
    assert upstream_errors(app, "cut") == 0


def test_a_redirect_to_the_upstream_written_otherwise_is_still_rewritten(make_gate: Any) -> None:
    response = fetch(make_gate(), "/files/redirect_written_otherwise", client=US_CLIENT)
    assert response.headers["Location"] == "/files/crypto-1.tar.gz?x=1"  # decided again when the client follows


def test_a_redirect_to_another_port_is_left_alone(make_gate: Any) -> None:
    response = fetch(make_gate(), "/files/redirect_other_port", client=US_CLIENT)
    assert response.headers["Location"] == "http://127.0.0.1:9/files/x"


@pytest.mark.parametrize(("upstream_url", "location", "rewritten"), [
    ("http://Mirror.Example", "http://mirror.example:80/a", "/a"),
    ("http://mirror.example:80", "HTTP://MIRROR.EXAMPLE/a?b#c", "/a?b#c"),
    ("https://mirror.example/base/", "https://mirror.example:443/base", "/"),
    ("https://mirror.example/base", "https://mirror.example/basement/x", None),
    ("https://mirror.example", "http://mirror.example/a", None),
    ("http://mirror.example", "http://mirror.example:8080/a", None),
    ("http://mirror.example", "http://mirror.example:99999/a", None),
    ("http://[::1]:8080", "http://[0:0::1]:8080/a", None),  # not the same text: left as it is, never wrong
    ("http://[::1]:8080", "http://[::1]:8080//evil.example/a", "/evil.example/a"),
    ("http://mirror.example", "/relative", None),
    ("http://mirror.example/files", "/files/sub/?a=1", "/sub/?a=1"),  # a path alone, under the base
    ("http://mirror.example/files", "/elsewhere/", None),
    ("http://mirror.example/files", "sub/", None),  # relative: the client resolves it against the gate's path
    ("http://mirror.example:8080/base", "//Mirror.Example:8080/base/x", "/x"),  # scheme-relative
    ("http://mirror.example:8080/base", "//mirror.example/base/x", None),  # another port: another server
])
def test_location_rewriting(gate_config: Any, upstream_url: str, location: str, rewritten: str | None) -> None:
    app = create_app(gate_config(serve={"mode": "proxy", "upstream": upstream_url}))
    try:
        assert app.mode_app.relative_location(location) == (rewritten if rewritten is not None else location)
    finally:
        app.mode_app.close()
        app.runtime.close()


def test_a_trusted_front_end_that_names_no_client_is_refused(make_gate: Any, upstream: Upstream) -> None:
    app = make_gate(trust_proxy=["127.0.0.1/32"])
    before = len(upstream.seen)
    response = fetch(app, "/files/crypto-1.tar.gz", client="127.0.0.1")
    assert response.status_code == 400 and b"sent no X-Forwarded-For" in response.data
    assert len(upstream.seen) == before and app.runtime.store.count("decision") == 0


def test_upstream_switching_protocols_is_502(gate_config: Any) -> None:
    """The gate forwards no upgrade: a 101 passed on without its Upgrade header would leave the connection in
    no protocol at all."""
    answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    with raw_upstream(answer) as base:
        app = create_app(gate_config(serve={"mode": "proxy", "upstream": base, "upstream_timeout": TIMEOUT}))
        try:
            response = fetch(app, "/files/chat-1.tar.gz", client=US_CLIENT)
            assert response.status_code == 502
            assert upstream_errors(app, "bad-response") == 1
        finally:
            app.mode_app.close()
            app.runtime.close()


def test_cookies_pass_to_the_client_and_are_not_kept(make_gate: Any) -> None:
    app = make_gate()
    response = fetch(app, "/files/cookies", client=US_CLIENT)
    assert response.headers.getlist("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert len(app.mode_app.session.cookies) == 0  # never replayed to the next client
    echoed = json.loads(fetch(app, "/echo/x", client=US_CLIENT).data)
    assert "cookie" not in echoed["headers"]


def test_compressed_body_passes_untouched(make_gate: Any) -> None:
    response = fetch(make_gate(), "/files/gzipped", client=US_CLIENT, headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    assert len(response.data) == int(response.headers["Content-Length"])
    assert gzip.decompress(response.data) == b"hello " * 1000


def test_request_body_is_forwarded(make_gate: Any) -> None:
    response = Client(make_gate()).post("/echo/upload", data=b"x" * 100_000,
                                        environ_overrides={"REMOTE_ADDR": US_CLIENT})
    echoed = json.loads(response.data)
    assert echoed["method"] == "POST" and echoed["body"] == "x" * 100_000


def test_body_is_streamed_in_bounded_chunks(make_gate: Any) -> None:
    response = fetch(make_gate(), "/files/chat-big.tar.gz", buffered=False)
    try:
        sizes = [len(chunk) for chunk in response.response]
    finally:
        response.close()
    assert sum(sizes) == len(CHAT) * 5
    assert max(sizes) <= CHUNK and len(sizes) >= len(CHAT) * 5 // CHUNK


def test_huge_request_header_is_forwarded(make_gate: Any) -> None:
    echoed = json.loads(fetch(make_gate(), "/echo/x", client=US_CLIENT, headers={"X-Big": "b" * 60_000}).data)
    assert echoed["headers"]["x-big"] == "b" * 60_000


# -- upstream failures ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_upstream_refusing_connections_is_502(gate_config: Any) -> None:
    app = create_app(gate_config(serve={"mode": "proxy", "upstream": f"http://127.0.0.1:{free_port()}"}))
    try:
        response = fetch(app, "/files/chat-1.tar.gz")
        assert response.status_code == 502
        assert response.headers.getlist("Cache-Control") == ["no-store"]
        assert response.headers["X-Exportgate-Decision"] == "allow"  # decided and recorded; the mirror failed
        assert upstream_errors(app, "connect") == 1
    finally:
        app.mode_app.close()
        app.runtime.close()


@pytest.mark.parametrize("path, kind", [
    pytest.param("/files/many-headers", "bad-response", id="150 headers"),
    pytest.param("/files/long-header", "bad-response", id="70 KB header line"),
])
def test_malformed_upstream_answer_is_502(make_gate: Any, path: str, kind: str) -> None:
    app = make_gate()
    response = fetch(app, path, client=US_CLIENT)
    assert response.status_code == 502
    assert upstream_errors(app, kind) == 1


@contextmanager
def listening(handle: Any) -> Iterator[str]:
    """A TCP server on 127.0.0.1 calling ``handle(connection)`` on a thread of its own for each connection it
    accepts; yields its base URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(connection,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@contextmanager
def raw_upstream(answer: bytes) -> Iterator[str]:
    """An upstream that answers every request with ``answer``, byte for byte (what no WSGI server would send)."""

    def one(connection: socket.socket) -> None:
        with connection:
            connection.settimeout(5)
            try:
                connection.recv(65536)
                connection.sendall(answer)
            except OSError:
                pass

    with listening(one) as base:
        yield base


@contextmanager
def closing_kept_alive_upstream(body: bytes) -> Iterator[tuple[str, list[str]]]:
    """An upstream that answers a connection's first request (keep-alive) and closes the connection on reading its
    second, unanswered: an idle keep-alive connection timed out by the upstream just as the gate reused it. Yields
    its base URL and, per request read, "answered" or "closed"."""
    seen: list[str] = []
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    def one(connection: socket.socket) -> None:
        with connection:
            connection.settimeout(5)
            try:
                for turn in range(2):
                    request = b""
                    while b"\r\n\r\n" not in request:
                        data = connection.recv(65536)
                        if not data:
                            return
                        request += data
                    if turn == 1:
                        seen.append("closed")
                        connection.shutdown(socket.SHUT_RDWR)
                        return
                    seen.append("answered")
                    connection.sendall(answer)
            except OSError:
                pass

    with listening(one) as base:
        yield base, seen


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_kept_alive_connection_the_upstream_closed_is_tried_again_on_a_new_one(gate_config: Any,
                                                                                 method: str) -> None:
    """The race every keep-alive proxy meets (nginx asks again on another connection, as here): an idle upstream
    connection closed by the upstream just as the gate sends on it gets no answer. A GET or HEAD, which the upstream
    has not answered, is sent once more on a new connection instead of answering 502."""
    with closing_kept_alive_upstream(b"ok") as (base, seen):
        app = create_app(gate_config(serve={"mode": "proxy", "upstream": base, "upstream_timeout": TIMEOUT}))
        try:
            first = fetch(app, "/files/chat-1.tar.gz", method=method)
            second = fetch(app, "/files/chat-1.tar.gz", method=method)
            assert (first.status_code, second.status_code) == (200, 200), second.data
            assert second.data == (b"ok" if method == "GET" else b"")
            assert seen == ["answered", "closed", "answered"]
            assert upstream_errors(app, "bad-response") == 0
            # One decision, one record, for the request sent twice.
            assert app.runtime.store.get(second.headers["X-Exportgate-Decision-Id"]) is not None
        finally:
            app.mode_app.close()
            app.runtime.close()


def test_a_request_with_a_body_is_not_sent_again(gate_config: Any) -> None:
    # The upstream may have acted on it: a POST is answered 502 rather than sent twice.
    with closing_kept_alive_upstream(b"ok") as (base, seen):
        app = create_app(gate_config(serve={"mode": "proxy", "upstream": base, "upstream_timeout": TIMEOUT}))
        try:
            assert fetch(app, "/echo/a", client=US_CLIENT).status_code == 200
            response = Client(app).post("/echo/b", data=b"payload", environ_overrides={
                "REMOTE_ADDR": US_CLIENT, "RAW_URI": "/echo/b", "REQUEST_URI": "/echo/b"})
            assert response.status_code == 502
            assert seen == ["answered", "closed"]
            assert upstream_errors(app, "bad-response") == 1
        finally:
            app.mode_app.close()
            app.runtime.close()


def test_an_upstream_closing_every_connection_unanswered_is_asked_twice_then_502(gate_config: Any) -> None:
    with raw_upstream(b"") as base:  # reads the request, closes without a byte
        app = create_app(gate_config(serve={"mode": "proxy", "upstream": base, "upstream_timeout": TIMEOUT}))
        try:
            response = fetch(app, "/files/chat-1.tar.gz")
            assert response.status_code == 502
            assert response.headers["X-Exportgate-Decision"] == "allow"
            assert upstream_errors(app, "bad-response") == 1
        finally:
            app.mode_app.close()
            app.runtime.close()


def test_upstream_length_beside_transfer_encoding_is_dropped(gate_config: Any) -> None:
    """The body arrives de-chunked, so the upstream's Content-Length is not its length (RFC 9112, 6.3): passed on,
    the client would stop after 10 of 100 bytes and take the file for complete."""
    body = bytes(range(100))
    answer = (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
              + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    with raw_upstream(answer) as base:
        app = create_app(gate_config(serve={"mode": "proxy", "upstream": base, "upstream_timeout": TIMEOUT}))
        try:
            response = fetch(app, "/files/chat-1.tar.gz")
            assert response.status_code == 200 and response.headers["X-Exportgate-Decision"] == "allow"
            assert "Content-Length" not in response.headers and response.data == body
        finally:
            app.mode_app.close()
            app.runtime.close()


@pytest.mark.parametrize("length", [
    pytest.param(b"\xb2", id="superscript two"),
    pytest.param(b"-1", id="negative"),
    pytest.param(b"+2", id="signed"),
    pytest.param(b"0x2", id="hex"),
    pytest.param(b"2, 3", id="two values"),
    pytest.param(b"9" * 30, id="too large"),
])
def test_malformed_upstream_length_is_502(gate_config: Any, length: bytes) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\nConnection: close\r\n\r\nok"
    with raw_upstream(answer) as base:
        app = create_app(gate_config(serve={"mode": "proxy", "upstream": base, "upstream_timeout": TIMEOUT}))
        try:
            response = fetch(app, "/files/chat-1.tar.gz")
            assert response.status_code == 502, response.headers
            assert response.headers["X-Exportgate-Decision"] == "allow"  # decided and recorded; the mirror failed
            assert upstream_errors(app, "bad-response") == 1
        finally:
            app.mode_app.close()
            app.runtime.close()


def test_slow_upstream_is_504(make_gate: Any) -> None:
    app = make_gate()
    started = time.monotonic()
    response = fetch(app, "/files/slow-1.tar.gz", client=US_CLIENT)
    assert response.status_code == 504
    assert time.monotonic() - started < TIMEOUT * 2.5
    assert upstream_errors(app, "timeout") == 1


@pytest.mark.parametrize("path", [
    pytest.param("/files/cut-1.tar.gz", id="declared length"),
    pytest.param("/files/cut-chunked-1.tar.gz", id="chunked"),
    pytest.param("/files/stall-1.tar.gz", id="stalls past the timeout"),
])
def test_upstream_cut_mid_body_raises_out_of_the_iterator(make_gate: Any, path: str) -> None:
    app = make_gate()
    response = fetch(app, path, client=US_CLIENT, buffered=False)
    received = 0
    try:
        with pytest.raises(UpstreamCutOff) as cut:
            for chunk in response.response:
                received += len(chunk)
    finally:
        response.close()
    # What was read is what was passed on (a partial read in progress when the upstream died is lost with it).
    assert 0 < received == cut.value.received <= len(CHAT)
    assert upstream_errors(app, "cut") == 1


# -- over real sockets ----------------------------------------------------------------------------------------


@contextmanager
def gate_server(make_gate: Any, **serve: Any) -> Iterator[tuple[str, int]]:
    app = make_gate(trust_proxy=["127.0.0.1/32"], **serve)
    with serving(app) as base:
        host, port = base[len("http://"):].split(":")
        yield host, int(port)


def get(address: tuple[str, int], raw: str, client: str = US_CLIENT) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection(*address, timeout=10)
    connection.request("GET", raw, headers={"X-Forwarded-For": client})
    return connection.getresponse()


@pytest.mark.parametrize("path", [
    pytest.param("/files/cut-1.tar.gz", id="declared length"),
    pytest.param("/files/cut-chunked-1.tar.gz", id="chunked"),
    pytest.param("/files/stall-1.tar.gz", id="stall"),
])
def test_client_sees_a_truncated_body_over_the_wire(make_gate: Any, path: str) -> None:
    with gate_server(make_gate) as address:
        response = get(address, path)
        assert response.status == 200
        declared = response.getheader("Content-Length")
        with pytest.raises(http.client.IncompleteRead) as short:
            response.read()
        response.close()
    assert len(short.value.partial) < (int(declared) if declared else len(CHAT) + 1)


def test_timeout_and_refusal_over_the_wire(make_gate: Any) -> None:
    with gate_server(make_gate) as address:
        slow = get(address, "/files/slow-1.tar.gz")
        assert slow.status == 504
        slow.read()
        slow.close()
        blocked = get(address, "/files/crypto-1.tar.gz", client=IR_CLIENT)
        assert blocked.status == 451 and CRYPTO[:16] not in blocked.read()
        blocked.close()


def test_huge_request_headers_over_the_wire_are_refused_by_the_server(make_gate: Any,
                                                                      upstream: Upstream) -> None:
    before = len(upstream.targets())
    with gate_server(make_gate) as address:
        connection = http.client.HTTPConnection(*address, timeout=10)
        connection.putrequest("GET", "/files/crypto-1.tar.gz")
        for i in range(120):
            connection.putheader(f"X-Pad-{i}", "p" * 100)
        connection.putheader("X-Forwarded-For", US_CLIENT)
        connection.endheaders()
        response = connection.getresponse()
        assert response.status in (400, 431)
        response.close()
        connection.close()
    assert upstream.targets()[before:] == []


# -- record store failure -------------------------------------------------------------------------------------


def test_record_store_failure_refuses_and_never_contacts_upstream(make_gate: Any, upstream: Upstream,
                                                                  tmp_path: Path) -> None:
    # A real failure: another connection holds SQLite's write lock (a stuck writer, a long admin transaction);
    # the gate's commit gives up after its busy timeout with "database is locked".
    db = tmp_path / "locked.db"
    app = make_gate(top={"records": f"sqlite://{db}?busy_timeout_ms=50"})
    locker = sqlite3.connect(db, isolation_level=None)
    before = len(upstream.targets())
    try:
        locker.execute("BEGIN IMMEDIATE")
        response = fetch(app, "/files/chat-1.tar.gz")
        assert response.status_code == 503
        assert CHAT[:16] not in response.data
        assert upstream.targets()[before:] == []
        assert app.metrics.registry.get_sample_value("exportgate_record_failures_total") == 1
        locker.execute("ROLLBACK")
        # The store is back: so is the mirror.
        response = fetch(app, "/files/chat-1.tar.gz")
        assert response.status_code == 200 and response.data == CHAT
    finally:
        locker.close()


# -- configuration --------------------------------------------------------------------------------------------


def test_upstream_with_a_base_path(gate_config: Any, upstream: Upstream) -> None:
    app = create_app(gate_config(serve={"mode": "proxy", "upstream": upstream.base + "/echo/"}))
    try:
        echoed = json.loads(fetch(app, "/files/../x?y=1", client=US_CLIENT).data)
        assert echoed["target"] == "/echo/x?y=1"
        assert app.mode_app.relative_location(upstream.base + "/echo/files/a") == "/files/a"
        assert app.mode_app.relative_location(upstream.base + "/echoes/a") == upstream.base + "/echoes/a"
        assert app.mode_app.relative_location("https://elsewhere.example/a") == "https://elsewhere.example/a"
    finally:
        app.mode_app.close()
        app.runtime.close()


@pytest.mark.parametrize("upstream_url", [
    pytest.param("ftp://127.0.0.1/", id="not http"),
    pytest.param("http://", id="no host"),
    pytest.param("127.0.0.1:8080", id="no scheme"),
    pytest.param("http://127.0.0.1/?a=1", id="query"),
])
def test_bad_upstream_is_a_config_error(gate_config: Any, upstream_url: str) -> None:
    from exportgate.errors import ConfigError

    config = gate_config(serve={"mode": "proxy", "upstream": upstream_url})
    with pytest.raises(ConfigError, match="upstream"):
        create_app(config)


def test_readiness_says_when_the_upstream_takes_no_connection(gate_config: Any, make_gate: Any) -> None:
    """Ready while every download was a 502: a load balancer kept sending clients to a gate that cannot serve."""
    up = fetch(make_gate(), "/readyz", client="127.0.0.1")
    assert up.status_code == 200 and up.get_json()["checks"]["origin"]["ok"] is True
    app = create_app(gate_config(serve={"mode": "proxy", "upstream": f"http://127.0.0.1:{free_port()}"}))
    try:
        down = fetch(app, "/readyz", client="127.0.0.1")
        origin = down.get_json()["checks"]["origin"]
        assert down.status_code == 503 and origin["ok"] is False and "cannot connect" in origin["error"]
    finally:
        app.mode_app.close()
        app.runtime.close()


def test_with_the_upstreams_root_a_directorys_index_that_is_a_link_is_decided_as_its_target(
        make_gate: Any, upstream: Upstream) -> None:
    # The upstream serves /files/sub/ as sub/index.html, a link to the 5D002 file: decided as that file, not as the
    # name asked for (and not passed undecided because the glob names only artifacts).
    sub = upstream.root / "files" / "sub"
    sub.mkdir()
    try:
        with links({sub / "index.html": "../crypto-1.tar.gz"}):
            app = make_gate(root=str(upstream.root), gated=["/files/*.tar.gz"])
            response = fetch(app, "/files/sub/")
            assert response.status_code == 451 and CRYPTO not in response.data
            record = app.runtime.store.get(response.headers["X-Exportgate-Decision-Id"])
            assert record.body["request"]["path"] == "/files/crypto-1.tar.gz"
            assert record.body["request"]["requested_path"] == "/files/sub/"
    finally:
        sub.rmdir()


def test_with_the_upstreams_root_a_link_to_a_name_that_is_not_utf8_is_400(make_gate: Any, upstream: Upstream,
                                                                          ) -> None:
    import os

    meta = upstream.root / "meta"
    meta.mkdir()
    try:
        with open(os.fsencode(meta) + b"/\xff.json", "wb") as target:
            target.write(b"{}")
        os.symlink(b"\xff.json", os.fsencode(meta / "notes.json"))
        app = make_gate(root=str(upstream.root), gated=["/files/**"])
        assert fetch(app, "/meta/notes.json", client=US_CLIENT).status_code == 400
    finally:
        for name in os.listdir(os.fsencode(meta)):
            os.unlink(os.fsencode(meta) + b"/" + name)
        meta.rmdir()
