"""GateMiddleware around a tiny real WSGI mirror app, driven with ``werkzeug.test.Client`` (no server).

The wrapped app serves a few artifacts by exact ``PATH_INFO`` and notes every call, so "the app never saw the
request" and "the app was handed the decided path" are observed, not assumed.
"""

from __future__ import annotations

import logging

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from conftest import IR_CLIENT, US_CLIENT, write_config
from exportgate.config import load_config
from exportgate.runtime import GateRuntime
from exportgate.web.app import build_admission, operator_of
from exportgate.web.metrics import Metrics
from exportgate.web.middleware import (
    DECISION_KEY,
    ORIGINAL_URI_KEY,
    GateMiddleware,
    PerProcessGate,
    compile_gated,
    gate_flask_app,
)

CHAT = b"chat client bytes"
CRYPTO = b"RESTRICTED-5D002 crypto bytes"
FILES = {
    "/files/chat-1.tar.gz": CHAT,
    "/files/crypto-1.tar.gz": CRYPTO,
    "/packages/chatpkg-1.0.tar.gz": CHAT,
    "/packages/cryptopkg-1.0.tar.gz": CRYPTO,
    "/simple/": b"<a href='/packages/chatpkg-1.0.tar.gz'>",
}


# Caching headers CDNs and nginx obey ahead of Cache-Control.
CACHE_OVERRIDES = [("Surrogate-Control", "max-age=600"), ("CDN-Cache-Control", "max-age=600"),
                   ("Cloudflare-CDN-Cache-Control", "max-age=600"), ("X-Accel-Expires", "600"),
                   ("Edge-Control", "!no-store, max-age=86400"), ("Akamai-Cache-Control", "max-age=600")]


class Mirror:
    """Serves FILES by exact PATH_INFO, like an app that does no path resolution of its own."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.calls.append(dict(environ))
        body = FILES.get(environ["PATH_INFO"])
        if body is None:
            start_response("404 Not Found", [("Content-Length", "0")])
            return [b""]
        start_response("200 OK", [("Content-Length", str(len(body))), ("Cache-Control", "public, max-age=600"),
                                  *CACHE_OVERRIDES, ("X-Exportgate-Decision", "forged")])
        return [body]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    """``make(gated=…, **config)`` -> (middleware-wrapped app, mirror, runtime, metrics)."""
    runtimes: list[GateRuntime] = []

    def build(*, gated: tuple[str, ...] = (), **extra: Any) -> tuple[GateMiddleware, Mirror, GateRuntime, Metrics]:
        config = load_config(write_config(tmp_path, **extra), env={})
        runtime = GateRuntime(config, record=True)
        runtimes.append(runtime)
        metrics = Metrics()
        mirror = Mirror()
        app = GateMiddleware(mirror, build_admission(runtime, config, metrics), operator=operator_of(config),
                             gated=gated)
        return app, mirror, runtime, metrics

    yield build
    for runtime in runtimes:
        runtime.close()


def fetch(app: Any, raw: str, *, client: str = IR_CLIENT, method: str = "GET", headers: Any = None,
          script_name: str = "") -> Any:
    return Client(app).open(raw, method=method, headers=headers or {}, buffered=True,
                            environ_overrides={"REMOTE_ADDR": client, "RAW_URI": raw, "REQUEST_URI": raw,
                                               "SCRIPT_NAME": script_name})


# -- compile_gated --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("globs, path, case_insensitive, matches", [
    pytest.param(["/packages/**"], "/packages/a/b.whl", False, True, id="double star crosses segments"),
    pytest.param(["/packages/**"], "/packages/", False, True, id="double star matches empty"),
    pytest.param(["/packages/**"], "/packagesX/a", False, False, id="prefix is not a segment"),
    pytest.param(["/files/*.tar.gz"], "/files/a.tar.gz", False, True, id="star in a segment"),
    pytest.param(["/files/*.tar.gz"], "/files/d/a.tar.gz", False, False, id="star stays in its segment"),
    pytest.param(["/files/*.tar.gz"], "/files/a.tar.gz.sig", False, False, id="anchored at the end"),
    pytest.param(["/files/*.tar.gz"], "/files/a.tar\ngz", False, False, id="dot is literal"),
    pytest.param(["/Packages/**"], "/packages/x", False, False, id="case sensitive by default"),
    pytest.param(["/Packages/**"], "/packages/x", True, True, id="case-insensitive origin"),
    pytest.param(["/Packages/**"], "/PACKAGE\u017f/x", True, True, id="long s is s"),
    pytest.param(["/Packages/**"], "/package\u017f/x", False, False, id="long s is another letter when case matters"),
    pytest.param(["/l\u0131b/**"], "/LIB/x", True, True, id="dotless i in the glob"),
    pytest.param(["/a/**", "/b/*"], "/b/x", False, True, id="several globs"),
    # A file asked for with a trailing slash: many servers serve the file.
    pytest.param(["/files/*.tar.gz"], "/files/a.tar.gz/", False, True, id="trailing slash"),
    pytest.param(["/files/*.tar.gz"], "/files/a.tar.gz//", False, True, id="trailing slashes"),
    pytest.param(["/Files/*.tar.gz"], "/files/A.TAR.GZ/", True, True, id="trailing slash, case-insensitive"),
    pytest.param(["/files/*.tar.gz"], "/files/", False, False, id="the directory itself"),
    pytest.param(["/files/*"], "/", False, False, id="root"),
])
def test_compile_gated(globs: list[str], path: str, case_insensitive: bool, matches: bool) -> None:
    gated = compile_gated(globs, case_insensitive=case_insensitive)
    assert gated is not None
    assert gated.match(path) is matches


def test_no_globs_gates_everything() -> None:
    assert compile_gated([]) is None


# -- decisions ------------------------------------------------------------------------------------------------


def test_allowed_download_reaches_the_app_with_the_decision(make: Any) -> None:
    app, mirror, runtime, _ = make()
    response = fetch(app, "/files/chat-1.tar.gz")
    assert response.status_code == 200 and response.data == CHAT
    assert response.headers.getlist("X-Exportgate-Decision") == ["allow"]  # the app's forgery replaced
    assert response.headers["Cache-Control"] == "no-store"  # the app's caching replaced
    assert [name for name, _ in CACHE_OVERRIDES if name in response.headers] == []  # and what would override it
    decision = mirror.calls[0][DECISION_KEY]
    assert decision.id == response.headers["X-Exportgate-Decision-Id"]
    assert runtime.store.get(decision.id) is not None


def test_unknown_location_is_flagged_and_served(make: Any) -> None:
    app, _, _, _ = make()
    response = fetch(app, "/files/crypto-1.tar.gz", client="10.0.0.1")
    assert response.status_code == 200 and response.data == CRYPTO
    assert response.headers["X-Exportgate-Decision"] == "flag"


@pytest.mark.parametrize("method, accept, kind", [
    pytest.param("GET", "text/html,application/xhtml+xml", "html", id="browser"),
    pytest.param("GET", "application/json", "json", id="json"),
    pytest.param("HEAD", "application/json", "empty", id="head"),
])
def test_block_is_451_and_the_app_never_runs(make: Any, method: str, accept: str, kind: str) -> None:
    app, mirror, _, _ = make()
    response = fetch(app, "/files/crypto-1.tar.gz", method=method, headers={"Accept": accept})
    assert response.status_code == 451
    assert mirror.calls == []
    assert response.headers["Cache-Control"] == "no-store"
    if kind == "json":
        assert json.loads(response.data)["rule"] == "ir-other-software"
    elif kind == "html":
        assert b"Test Mirror Operator" in response.data
    else:
        assert response.data == b""
        assert int(response.headers["Content-Length"]) > 0


HOSTILE = [
    pytest.param("/files/%2e%2e/files/crypto-1.tar.gz", 451, id="encoded dot-dot"),
    pytest.param("/files/../files/crypto-1.tar.gz", 451, id="dot-dot"),
    pytest.param("/files//crypto-1.tar.gz", 451, id="double slash"),
    pytest.param("/files/./crypto-1.tar.gz", 451, id="dot segment"),
    pytest.param("/files/chat-1.tar.gz/../crypto-1.tar.gz", 451, id="through the allowed file"),
    pytest.param("/files/crypto-1.tar.gz?x=../chat-1.tar.gz", 451, id="query"),
    pytest.param("/files/crypto-1.tar.gz/", 451, id="trailing slash"),
    pytest.param("/FILES/crypto-1.tar.gz", 451, id="case (unclassified)"),
    pytest.param("/files%2fcrypto-1.tar.gz", 400, id="encoded slash"),
    pytest.param("/files/chat-1.tar.gz\\..\\crypto-1.tar.gz", 400, id="backslash traversal"),
    pytest.param("/files/crypto-1.tar.gz%00", 400, id="nul"),
    pytest.param("/../files/crypto-1.tar.gz", 400, id="above root"),
]


@pytest.mark.parametrize("raw, status", HOSTILE)
@pytest.mark.parametrize("gated", [pytest.param((), id="all gated"), pytest.param(("/files/**",), id="files gated")])
def test_restricted_artifact_is_never_served_to_iran(make: Any, raw: str, status: int,
                                                    gated: tuple[str, ...]) -> None:
    app, mirror, _, _ = make(gated=gated)
    response = fetch(app, raw)
    if gated and raw.startswith("/FILES/"):
        status = 404  # not under /files/ for a case-sensitive app: undecided, and the app has nothing there
    assert response.status_code == status
    assert CRYPTO not in response.data
    assert all(call["PATH_INFO"] != "/files/crypto-1.tar.gz" for call in mirror.calls)


@pytest.mark.parametrize("raw", [
    pytest.param("/PACKAGES/CRYPTOPKG-1.0.tar.gz", id="upper"),
    pytest.param("/Packages/CryptoPkg-1.0.tar.gz", id="mixed"),
])
def test_case_insensitive_gate_matches_globs_without_case(make: Any, raw: str) -> None:
    app, mirror, _, _ = make(gated=("/Packages/**",), case_insensitive_paths=True)
    response = fetch(app, raw, headers={"Accept": "application/json"})
    assert response.status_code == 451
    assert json.loads(response.data)["rule"] == "ir-other-software"
    assert mirror.calls == []


@pytest.mark.parametrize("raw", [
    pytest.param("/file%C5%BF/crypto-1.tar.gz", id="long s"),
    pytest.param("/f%C4%B1les/CRYPTO-1.tar.gz", id="dotless i"),
    pytest.param("/files/cry%C3%9Fpto-1.tar.gz", id="sharp s"),
])
def test_a_letter_file_systems_fold_differently_is_400_for_a_case_insensitive_app(make: Any, raw: str) -> None:
    app, mirror, _, _ = make(gated=("/Files/**",), case_insensitive_paths=True)
    response = fetch(app, raw)
    assert response.status_code == 400 and b"case-ambiguous" in response.data
    assert mirror.calls == []


# -- what the wrapped app is handed ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw, path_info, uri", [
    pytest.param("/files/x/%2e%2e/chat-1.tar.gz?a=1", "/files/chat-1.tar.gz", "/files/chat-1.tar.gz?a=1",
                 id="dot-dot resolved"),
    pytest.param("/files//chat-1.tar.gz", "/files/chat-1.tar.gz", "/files/chat-1.tar.gz", id="slashes merged"),
    pytest.param("/files/%63hat-1.tar.gz", "/files/chat-1.tar.gz", "/files/chat-1.tar.gz", id="decoded"),
    pytest.param("/files/caf%C3%A9", "/files/caf\xc3\xa9", "/files/caf%C3%A9", id="utf-8 as WSGI text"),
])
def test_app_is_handed_the_decided_path(make: Any, raw: str, path_info: str, uri: str) -> None:
    app, mirror, _, _ = make()
    fetch(app, raw, client=US_CLIENT)
    call = mirror.calls[0]
    assert call["PATH_INFO"] == path_info
    assert call["RAW_URI"] == call["REQUEST_URI"] == uri
    assert call[ORIGINAL_URI_KEY] == raw
    assert call[DECISION_KEY].request.path == path_info.encode("latin-1").decode("utf-8")


def test_app_that_ignores_trailing_segments_cannot_serve_another_artifact(make: Any) -> None:
    # An app that takes the first segment after /packages/ would read this as cryptopkg; the gate decided chatpkg.
    def first_segment_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        name = environ["PATH_INFO"].split("/")[2]
        body = FILES.get(f"/packages/{name}", b"")
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    _, _, runtime, metrics = make(gated=("/packages/**",))
    config = runtime.config
    app = GateMiddleware(first_segment_app, build_admission(runtime, config, metrics), gated=["/packages/**"])
    response = fetch(app, "/packages/cryptopkg-1.0.tar.gz/../chatpkg-1.0.tar.gz")
    assert response.status_code == 200 and response.data == CHAT


def test_script_name(make: Any) -> None:
    app, mirror, _, _ = make()
    response = fetch(app, "/mirror/files/chat-1.tar.gz", client=US_CLIENT, script_name="/mirror")
    assert response.status_code == 200
    assert mirror.calls[0]["PATH_INFO"] == "/files/chat-1.tar.gz"
    out = fetch(app, "/mirror/../files/crypto-1.tar.gz", client=US_CLIENT, script_name="/mirror")
    assert out.status_code == 404 and len(mirror.calls) == 1


@pytest.mark.parametrize("script_name, raw", [
    pytest.param("/mirror", "/mirror/packages/cryptopkg-1.0.tar.gz", id="mounted"),
    pytest.param("/mirror/", "/mirror/packages/cryptopkg-1.0.tar.gz", id="mount with a trailing slash"),
    pytest.param("/mirror", "/mirror//packages/./cryptopkg-1.0.tar.gz", id="mounted, unresolved path"),
    pytest.param("/mirror", "/mirror/PACKAGES/../packages/cryptopkg-1.0.tar.gz", id="mounted, dot-segments"),
])
def test_a_glob_written_without_the_mount_point_still_gates(make: Any, caplog: Any, script_name: str,
                                                             raw: str) -> None:
    # The same gate.yaml as for an unmounted index: /packages/** must not let /mirror/packages/... pass undecided.
    app, mirror, runtime, _ = make(gated=("/packages/**",))
    with caplog.at_level(logging.WARNING, logger="exportgate.web"):
        response = fetch(app, raw, script_name=script_name)
        fetch(app, raw, script_name=script_name)
    assert response.status_code == 451 and mirror.calls == []
    assert runtime.store.count("decision") == 2
    said = [r.getMessage() for r in caplog.records if "mount point" in r.getMessage()]
    assert len(said) == 1 and "/mirror/packages/cryptopkg-1.0.tar.gz" in said[0]  # once, with the glob to write
    allowed = fetch(app, "/mirror/packages/chatpkg-1.0.tar.gz", script_name=script_name)  # a package rule matches
    assert allowed.status_code == 200 and mirror.calls[0]["PATH_INFO"] == "/packages/chatpkg-1.0.tar.gz"
    listing = fetch(app, "/mirror/simple/", script_name=script_name)  # outside the globs, mounted or not
    assert listing.status_code == 200 and "X-Exportgate-Decision-Id" not in listing.headers


@pytest.mark.parametrize("script_name", ["", "/mirror"])
def test_the_blocked_by_link_leads_to_the_policy_page(make: Any, script_name: str) -> None:
    # RFC 7725's link names who blocks: the app behind the middleware has no such page, so the middleware serves it.
    app, mirror, runtime, _ = make(gated=("/packages/**",))
    blocked = fetch(app, f"{script_name}/packages/cryptopkg-1.0.tar.gz", script_name=script_name)
    assert blocked.status_code == 451
    link = blocked.headers["Link"]
    assert link == f'<{script_name}/exportgate/policy>; rel="blocked-by"'
    page = fetch(app, link[1:link.index(">")], script_name=script_name)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    document = page.get_json()
    assert document["operator"] == "Test Mirror Operator" and document["packs"]
    assert all("file" not in pack for pack in document["packs"])
    assert fetch(app, f"{script_name}/exportgate/policy", method="HEAD", script_name=script_name).data == b""
    assert fetch(app, f"{script_name}/exportgate/policy", method="POST", script_name=script_name).status_code == 405
    assert mirror.calls == [] and runtime.store.count("decision") == 1


def test_a_policy_url_of_the_operator_is_linked_and_the_app_keeps_the_path(make: Any) -> None:
    app, mirror, _, _ = make(gated=("/packages/**",), policy_url="https://mirror.example.org/export-policy")
    blocked = fetch(app, "/packages/cryptopkg-1.0.tar.gz")
    assert blocked.headers["Link"] == '<https://mirror.example.org/export-policy>; rel="blocked-by"'
    fetch(app, "/exportgate/policy")
    assert [call["PATH_INFO"] for call in mirror.calls] == ["/exportgate/policy"]  # the app answers it


def test_ungated_paths_pass_without_a_decision(make: Any) -> None:
    app, mirror, runtime, _ = make(gated=("/packages/**",))
    response = fetch(app, "/simple/")
    assert response.status_code == 200 and "X-Exportgate-Decision-Id" not in response.headers
    assert response.headers["Cache-Control"] == "public, max-age=600"  # the app's own answer, untouched
    assert all(response.headers[name] == value for name, value in CACHE_OVERRIDES)
    assert DECISION_KEY not in mirror.calls[0]
    assert runtime.store.count("decision") == 0
    assert fetch(app, "/simple/../packages/cryptopkg-1.0.tar.gz").status_code == 451


def test_rejected_path_is_counted(make: Any) -> None:
    app, mirror, _, metrics = make(gated=("/packages/**",))
    assert fetch(app, "/simple%2f").status_code == 400
    assert mirror.calls == []
    assert metrics.registry.get_sample_value("exportgate_rejected_requests_total", {"reason": "path"}) == 1


# -- client address and failures ------------------------------------------------------------------------------


@pytest.mark.parametrize("peer, header, status", [
    pytest.param(IR_CLIENT, US_CLIENT, 451, id="untrusted peer claims US"),
    pytest.param(IR_CLIENT, f"{US_CLIENT}, 127.0.0.1", 451, id="untrusted peer claims a chain"),
    pytest.param("127.0.0.1", IR_CLIENT, 451, id="trusted proxy says IR"),
    pytest.param("127.0.0.1", f"{IR_CLIENT}, {US_CLIENT}", 200, id="trusted proxy: rightmost untrusted entry"),
    pytest.param("127.0.0.1", f"{US_CLIENT}, {IR_CLIENT}", 451, id="client-prepended US ignored"),
])
def test_forwarded_for(make: Any, peer: str, header: str, status: int) -> None:
    app, _, _, _ = make(serve={"trust_proxy": ["127.0.0.1/32"]})
    response = fetch(app, "/files/crypto-1.tar.gz", client=peer, headers={"X-Forwarded-For": header})
    assert response.status_code == status


def test_a_trusted_front_end_that_names_no_client_is_refused(make: Any) -> None:
    app, mirror, _, _ = make(serve={"trust_proxy": ["127.0.0.1/32"]})
    response = fetch(app, "/files/crypto-1.tar.gz", client="127.0.0.1")
    assert response.status_code == 400 and b"sent no X-Forwarded-For" in response.data
    assert mirror.calls == []


def test_record_store_failure_is_503_and_the_app_never_runs(make: Any, tmp_path: Path) -> None:
    # A real failure: another connection holds SQLite's write lock past the gate's 50 ms busy timeout.
    db = tmp_path / "locked.db"
    app, mirror, _, metrics = make(records=f"sqlite://{db}?busy_timeout_ms=50")
    locker = sqlite3.connect(db, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")
        response = fetch(app, "/files/chat-1.tar.gz")
        assert response.status_code == 503 and mirror.calls == []
        assert metrics.registry.get_sample_value("exportgate_record_failures_total") == 1
    finally:
        locker.close()
    assert fetch(app, "/files/chat-1.tar.gz").status_code == 200


def test_fail_open_serves_when_the_store_fails(make: Any, tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    app, _, _, _ = make(records=f"sqlite://{db}?busy_timeout_ms=50", serve={"fail_open": True})
    locker = sqlite3.connect(db, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")
        assert fetch(app, "/files/chat-1.tar.gz").status_code == 200
        assert fetch(app, "/files/crypto-1.tar.gz").status_code == 451  # still decided, only not recorded
    finally:
        locker.close()


def test_gate_flask_app(tmp_path: Path) -> None:
    import flask

    flask_app = flask.Flask("mirror")

    @flask_app.route("/files/<name>")
    def download(name: str) -> Any:
        return FILES.get(f"/files/{name}", b"")

    config = load_config(write_config(tmp_path, serve={"gated": ["/files/**"]}), env={})
    gate_flask_app(flask_app, config)
    try:
        client = flask_app.test_client()
        env = {"REMOTE_ADDR": IR_CLIENT}
        assert client.get("/files/chat-1.tar.gz", environ_overrides=env).data == CHAT
        assert client.get("/files/crypto-1.tar.gz", environ_overrides=env).status_code == 451
    finally:
        flask_app.extensions["exportgate"].close()


@pytest.mark.parametrize("path_info, status", [
    pytest.param("/files/crypto-1.tar.gz", 451, id="ascii"),
    pytest.param("/files/caf\u00c3\u00a9-1.tar.gz", 451, id="UTF-8 bytes as latin-1 text, as PEP 3333 says"),
    pytest.param("/files/caf\u00e9-1.tar.gz", 400, id="bytes that are not UTF-8"),
    pytest.param("/files/\u0441rypto-1.tar.gz", 451, id="decoded text past latin-1 (not PEP 3333)"),
    pytest.param("/files/\ud800-1.tar.gz", 400, id="a lone surrogate"),
])
def test_a_server_without_a_raw_target_is_decided_not_crashed(make: Any, path_info: str, status: int) -> None:
    app, mirror, _, _ = make()
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path_info, "SCRIPT_NAME": "", "QUERY_STRING": "",
               "REMOTE_ADDR": IR_CLIENT, "SERVER_NAME": "mirror", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    statuses: list[str] = []
    b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert int(statuses[0].split()[0]) == status and mirror.calls == []


@pytest.mark.parametrize("script_name", ["/m\u00efrror\u20ac", "/m\u00c3\u00afrror"],
                         ids=["decoded text past latin-1 (not PEP 3333)", "UTF-8 bytes as latin-1 text"])
def test_a_mount_point_outside_ascii_is_read_not_crashed(make: Any, script_name: str) -> None:
    app, mirror, _, _ = make(gated=("/packages/**",))
    environ = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": script_name, "PATH_INFO": "/packages/cryptopkg-1.0.tar.gz",
               "QUERY_STRING": "", "REMOTE_ADDR": IR_CLIENT, "SERVER_NAME": "mirror", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http"}
    statuses: list[str] = []
    b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses[0].startswith("451") and mirror.calls == []


def test_a_mount_the_request_target_lacks_is_404_and_said_once(make: Any, caplog: Any) -> None:
    # werkzeug's ProxyFix(x_prefix=1) outside the gate: SCRIPT_NAME from X-Forwarded-Prefix, not in the target.
    app, mirror, _, _ = make()
    with caplog.at_level(logging.WARNING, logger="exportgate.web"):
        assert fetch(app, "/files/chat-1.tar.gz", script_name="/mirror").status_code == 404
        assert fetch(app, "/files/chat-1.tar.gz", script_name="/mirror").status_code == 404
    said = [r.getMessage() for r in caplog.records if "outside the app's SCRIPT_NAME" in r.getMessage()]
    assert len(said) == 1 and mirror.calls == []


@pytest.mark.parametrize("as_path", [str, Path])
def test_gate_flask_app_takes_the_path_of_a_gate_yaml(tmp_path: Path, caplog: Any, as_path: Any) -> None:
    import flask

    flask_app = flask.Flask("mirror")
    flask_app.add_url_rule("/files/<name>", "download", lambda name: FILES.get(f"/files/{name}", b""))
    with caplog.at_level(logging.WARNING, logger="exportgate.web"):
        gate_flask_app(flask_app, as_path(write_config(tmp_path, serve={"gated": ["/files/**"]})))
    try:
        client = flask_app.test_client()
        env = {"REMOTE_ADDR": IR_CLIENT}
        assert client.get("/files/chat-1.tar.gz", environ_overrides=env).data == CHAT
        assert client.get("/files/crypto-1.tar.gz", environ_overrides=env).status_code == 451
        assert not [r for r in caplog.records if "embedded defaults" in r.getMessage()]
    finally:
        flask_app.extensions["exportgate"].close()


def test_a_gate_on_the_embedded_defaults_says_so(tmp_path: Path, caplog: Any) -> None:
    # The README's one-liner without EXPORTGATE_CONFIG: no manifest, every path gated, another store than the
    # admin's. Fails closed, and the log says why.
    records = f"sqlite://{tmp_path / 'records.db'}"
    with caplog.at_level(logging.WARNING, logger="exportgate.web"):
        gate = PerProcessGate(Mirror(), load_config(env={"EXPORTGATE_RECORDS": records}))
    try:
        said = [r.getMessage() for r in caplog.records if "embedded defaults" in r.getMessage()]
        assert len(said) == 1 and records in said[0]
    finally:
        gate.close()


@pytest.mark.parametrize("target", ["/files/crypto-1.tar.gz/", "/files/crypto-1.tar.gz/.", "/files/crypto-1.tar.gz//"])
def test_a_file_glob_gates_the_file_asked_for_with_a_trailing_slash(make: Any, tmp_path: Path, target: str) -> None:
    """werkzeug's SharedDataMiddleware (and Flask's send_from_directory) serve '/x.tar.gz/' as the file: with a
    gated glob naming files, the slashed form passed as 'not a download' and the restricted file left undecided."""
    from werkzeug.middleware.shared_data import SharedDataMiddleware

    root = tmp_path / "mirror"
    (root / "files").mkdir(parents=True)
    (root / "files" / "crypto-1.tar.gz").write_bytes(b"RESTRICTED 5D002")
    app, _, runtime, _ = make(gated=("/files/*.tar.gz",))
    app.app = SharedDataMiddleware(lambda e, s: s("404 Not Found", []) or [b""], {"/": str(root)})
    response = fetch(app, target)
    assert response.status_code == 451 and b"RESTRICTED" not in response.data
    assert runtime.store.count("decision") == 1


def test_an_absolute_form_target_is_read_as_its_path(make: Any) -> None:
    """RFC 9112 section 3.2.2: a server must accept it; gunicorn puts it in RAW_URI as sent."""
    app, mirror, _, _ = make(gated=("/files/**",))
    response = fetch(app, "http://mirror.example/files/crypto-1.tar.gz")
    assert response.status_code == 451 and mirror.calls == []
    response = fetch(app, "http://mirror.example/files/chat-1.tar.gz?x=1", client=US_CLIENT)
    assert response.status_code == 200
    assert mirror.calls[-1]["PATH_INFO"] == "/files/chat-1.tar.gz"


def test_a_gated_app_built_before_a_fork_serves_in_the_child(tmp_path: Path) -> None:
    """gunicorn --preload and uWSGI without lazy-apps import the app in the master and fork: the recorder's
    writer thread stayed behind, and every gated request in a worker waited for a commit that never came."""
    import os
    import select

    import flask

    flask_app = flask.Flask("mirror")

    @flask_app.route("/files/<name>")
    def download(name: str) -> Any:
        return FILES.get(f"/files/{name}", b"")

    gate_flask_app(flask_app, load_config(write_config(tmp_path, serve={"gated": ["/files/**"]}), env={}))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        try:
            client = flask_app.test_client()
            env = {"REMOTE_ADDR": IR_CLIENT}
            statuses = [client.get(p, environ_overrides=env).status_code
                        for p in ("/files/chat-1.tar.gz", "/files/crypto-1.tar.gz")]
            flask_app.extensions["exportgate"].close()
            os.write(write, repr(statuses).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 30)
        answer = os.read(read, 100).decode() if ready else "no answer in 30 s"
    finally:
        os.close(read)
        if not ready:
            os.kill(pid, 9)
        os.waitpid(pid, 0)
        flask_app.extensions["exportgate"].close()
    assert answer == "[200, 451]"
    with sqlite3.connect(tmp_path / "records.db") as db:  # both decided in the child, recorded
        assert db.execute("SELECT count(*) FROM records WHERE kind = 'decision'").fetchone()[0] == 2


@pytest.mark.parametrize("script_name", ["", "/mirror"])
def test_the_gates_state_is_served_under_the_apps_mount_to_admins_only(tmp_path: Path, script_name: str) -> None:
    """An index wrapped by the middleware had no /readyz or /metrics at all: ops could neither drain a replica whose
    store failed nor see its decisions. They are served under /exportgate/ (beside the policy page), to clients in
    serve.admin_from; anyone else gets the app's own answer for the path."""
    mirror = Mirror()
    db = tmp_path / "records.db"
    config = write_config(tmp_path, records=f"sqlite://{db}?busy_timeout_ms=50",
                          serve={"gated": [f"{script_name}/files/**"]})
    gate = PerProcessGate(mirror, load_config(config, env={}))
    try:
        assert fetch(gate, f"{script_name}/files/chat-1.tar.gz", client=US_CLIENT,
                     script_name=script_name).status_code == 200
        admin = "127.0.0.1"
        health = fetch(gate, f"{script_name}/exportgate/healthz", client=IR_CLIENT, script_name=script_name)
        assert health.status_code == 200 and health.data == b"ok\n"
        ready = fetch(gate, f"{script_name}/exportgate/readyz", client=admin, script_name=script_name)
        assert ready.status_code == 200, ready.data
        body = json.loads(ready.data)
        assert body["ready"] is True and body["checks"]["records"]["ok"] is True
        assert ready.headers["Cache-Control"] == "no-store"
        metrics = fetch(gate, f"{script_name}/exportgate/metrics", client=admin, script_name=script_name)
        assert metrics.status_code == 200
        assert b'exportgate_decisions_total{action="allow"' in metrics.data
        calls = len(mirror.calls)
        for page in ("readyz", "metrics"):  # not an admin: the app answers the path
            other = fetch(gate, f"{script_name}/exportgate/{page}", client=IR_CLIENT, script_name=script_name)
            assert other.status_code == 404 and b"exportgate_" not in other.data
        assert len(mirror.calls) == calls + 2
        # A store that takes no write (another connection holds SQLite's write lock): not ready, so a load
        # balancer drains this replica.
        locker = sqlite3.connect(db, isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")
            assert fetch(gate, f"{script_name}/files/chat-1.tar.gz", script_name=script_name).status_code == 503
            down = fetch(gate, f"{script_name}/exportgate/readyz", client=admin, script_name=script_name)
            assert down.status_code == 503 and json.loads(down.data)["checks"]["records"]["ok"] is False
        finally:
            locker.close()
    finally:
        gate.close()
