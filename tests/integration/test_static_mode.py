"""Static mode: the gate serving a real directory tree (files, internal and escaping symlinks, a FIFO).

Requests go through ``werkzeug.test.Client`` into ``create_app`` in static mode; one test serves the app from a
real werkzeug server thread on 127.0.0.1. Whether a file was opened is observed with a Python audit hook on the
``open`` event (it sees every ``open``/``os.open`` in the process), not by replacing any code.
"""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server
from werkzeug.test import Client

from conftest import IR_CLIENT, US_CLIENT
from exportgate.errors import ResponseCutShort
from exportgate.web.app import create_app
from exportgate.web.mirrorfiles import served_file

UNKNOWN_CLIENT = "10.0.0.1"
CHAT = bytes(range(256)) * 400
CRYPTO = b"RESTRICTED-5D002 " * 2048
SECRET = b"OUTSIDE-THE-ROOT-SECRET"
INDEX = b"<!doctype html><a href='/files/chat-1.tar.gz'>chat</a>"

_opened: list[str] | None = None  # paths opened while a test watches (the audit hook cannot be removed)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def opened() -> Iterator[list[str]]:
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(SECRET)
    root = tmp_path / "root"
    files = root / "files"
    files.mkdir(parents=True)
    (files / "chat-1.tar.gz").write_bytes(CHAT)
    (files / "crypto-1.tar.gz").write_bytes(CRYPTO)
    (files / "latest.tar.gz").symlink_to("chat-1.tar.gz")  # alias inside root: decided as its target
    (files / "chat-latest.tar.gz").symlink_to("crypto-1.tar.gz")  # misleading name, restricted target
    (files / "escape.tar.gz").symlink_to(outside / "secret.bin")
    (files / "escape-relative.tar.gz").symlink_to("../../outside/secret.bin")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "simple" / "chatpkg").mkdir(parents=True)
    (root / "simple" / "index.html").write_bytes(INDEX)
    (root / "simple" / "chatpkg" / "index.html").write_bytes(INDEX)
    (root / "empty").mkdir()
    os.mkfifo(root / "files" / "fifo.tar.gz")
    return root


@pytest.fixture
def make_gate(gate_config: Any, tree: Path) -> Iterator[Any]:
    apps: list[Any] = []

    def make(*, top: dict[str, Any] | None = None, **serve: Any) -> Any:
        app = create_app(gate_config(serve={"mode": "static", "root": str(tree), **serve}, **(top or {})))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.runtime.close()


def fetch(app: Any, raw: str, *, client: str = IR_CLIENT, method: str = "GET", headers: Any = None) -> Any:
    return Client(app).open(raw, method=method, headers=headers or {}, buffered=True,
                            environ_overrides={"REMOTE_ADDR": client, "RAW_URI": raw, "REQUEST_URI": raw})


# -- decisions ------------------------------------------------------------------------------------------------


def test_allowed_download(make_gate: Any) -> None:
    app = make_gate()
    response = fetch(app, "/files/chat-1.tar.gz")
    assert response.status_code == 200 and response.data == CHAT
    assert response.headers["Content-Type"] == "application/gzip"
    assert "Content-Encoding" not in response.headers  # clients must not unpack the archive
    assert response.headers["Content-Length"] == str(len(CHAT))
    assert response.headers["X-Exportgate-Decision"] == "allow"
    assert response.headers["Cache-Control"] == "no-store"
    assert app.runtime.store.get(response.headers["X-Exportgate-Decision-Id"]) is not None


def test_unknown_location_is_flagged_and_served(make_gate: Any) -> None:
    response = fetch(make_gate(), "/files/crypto-1.tar.gz", client=UNKNOWN_CLIENT)
    assert response.status_code == 200 and response.data == CRYPTO
    assert response.headers["X-Exportgate-Decision"] == "flag"


@pytest.mark.parametrize("accept, json_page", [
    pytest.param("text/html", False, id="html"),
    pytest.param("application/json", True, id="json"),
])
def test_block_is_451_and_the_file_is_never_opened(make_gate: Any, tree: Path, opened: list[str], accept: str,
                                                   json_page: bool) -> None:
    app = make_gate()
    opened.clear()
    response = fetch(app, "/files/crypto-1.tar.gz", headers={"Accept": accept})
    assert response.status_code == 451
    assert response.headers["Cache-Control"] == "no-store"
    assert CRYPTO[:16] not in response.data
    if json_page:
        assert json.loads(response.data)["rule"] == "ir-other-software"
    else:
        assert b"451 Unavailable For Legal Reasons" in response.data
    assert not [p for p in opened if p.startswith(str(tree))]


HOSTILE_PATHS = [
    pytest.param("/files/crypto-1.tar.gz", 451, id="plain"),
    pytest.param("/files/%2e%2e/files/crypto-1.tar.gz", 451, id="encoded dot-dot"),
    pytest.param("/files/../files/crypto-1.tar.gz", 451, id="dot-dot"),
    pytest.param("/files/chat-1.tar.gz/../crypto-1.tar.gz", 451, id="through the allowed file"),
    pytest.param("/files//crypto-1.tar.gz", 451, id="double slash"),
    pytest.param("/files/./crypto-1.tar.gz", 451, id="dot segment"),
    pytest.param("/files/%63rypto-1.tar.gz", 451, id="encoded letter"),
    pytest.param("/files/crypto-1.tar.gz?download=1", 451, id="query string"),
    pytest.param("/files/crypto-1.tar.gz/", 451, id="trailing slash"),
    pytest.param("/files/chat-latest.tar.gz", 451, id="symlink with an allowed name"),
    pytest.param("/FILES/CRYPTO-1.TAR.GZ", 451, id="upper case"),
    pytest.param("/files%2fcrypto-1.tar.gz", 400, id="encoded slash"),
    pytest.param("/files/chat-\\..\\crypto-1.tar.gz", 400, id="backslash traversal behind an allowed name"),
    pytest.param("/files/crypto-1.tar.gz%00", 400, id="encoded nul"),
    pytest.param("/../files/crypto-1.tar.gz", 400, id="above the root"),
]


@pytest.mark.parametrize("raw, status", HOSTILE_PATHS)
@pytest.mark.parametrize("gated", [pytest.param((), id="all gated"), pytest.param(("/files/**",), id="files gated")])
def test_restricted_artifact_is_never_served_to_iran(make_gate: Any, raw: str, status: int,
                                                    gated: tuple[str, ...]) -> None:
    response = fetch(make_gate(gated=list(gated)), raw)
    if gated and raw == "/FILES/CRYPTO-1.TAR.GZ":
        status = 404  # not under /files/ on a case-sensitive file system: not the artifact, and not there
    assert response.status_code == status
    assert CRYPTO[:16] not in response.data


@pytest.mark.parametrize("raw", [
    pytest.param("/FILES/CRYPTO-1.TAR.GZ", id="upper"),
    pytest.param("/Files/Crypto-1.tar.gz", id="mixed"),
])
def test_case_variants_with_case_insensitive_paths(make_gate: Any, raw: str) -> None:
    app = make_gate(top={"case_insensitive_paths": True}, gated=["/Files/**"])
    response = fetch(app, raw, headers={"Accept": "application/json"})
    assert response.status_code == 451
    assert json.loads(response.data)["rule"] == "ir-other-software"


@pytest.mark.parametrize("raw", [
    pytest.param("/file%C5%BF/crypto-1.tar.gz", id="long s"),
    pytest.param("/f%C4%B1les/CRYPTO-1.tar.gz", id="dotless i"),
    pytest.param("/files/cry%C3%9Fpto-1.tar.gz", id="sharp s"),
])
def test_a_letter_file_systems_fold_differently_is_400_for_a_case_insensitive_origin(make_gate: Any, raw: str) -> None:
    response = fetch(make_gate(top={"case_insensitive_paths": True}, gated=["/Files/**"]), raw)
    assert response.status_code == 400 and b"case-ambiguous" in response.data


def test_blocked_pages_are_not_served_where_clients_reach_the_gate(make_gate: Any) -> None:
    """Decision ids are sequential: served here, any client could read every other client's blocked downloads
    (path, country, time). The 451 is answered in place; only a front end's error_page needs these pages."""
    app = make_gate()
    blocked = fetch(app, "/files/crypto-1.tar.gz", headers={"Accept": "application/json"})
    decision_id = blocked.headers["X-Exportgate-Decision-Id"]
    assert blocked.status_code == 451
    other = fetch(app, f"/exportgate/blocked/{decision_id}", client=US_CLIENT, headers={"Accept": "application/json"})
    assert other.status_code == 404 and b"crypto" not in other.data


def test_symlink_alias_is_decided_as_its_target(make_gate: Any) -> None:
    app = make_gate()
    response = fetch(app, "/files/latest.tar.gz")
    assert response.status_code == 200 and response.data == CHAT
    record = app.runtime.store.get(response.headers["X-Exportgate-Decision-Id"])
    assert record.body["request"]["path"] == "/files/chat-1.tar.gz"
    assert record.body["request"]["requested_path"] == "/files/latest.tar.gz"  # what the client asked for, too
    direct = app.runtime.store.get(fetch(app, "/files/chat-1.tar.gz").headers["X-Exportgate-Decision-Id"])
    assert direct.body["request"]["requested_path"] is None


@pytest.mark.parametrize(("asked", "decided", "action"), [
    ("/files/latest.tar.gz", "/files/chat-1.tar.gz", "allow"),
    ("/files/chat-latest.tar.gz", "/files/crypto-1.tar.gz", "block"),
    ("/simple/", "/simple/index.html", None),
    ("/files/missing.tar.gz", "/files/missing.tar.gz", None),
])
def test_explain_and_classify_answer_for_the_file_static_mode_serves(gate_config: Any, tree: Path, tmp_path: Path,
                                                                     asked: str, decided: str,
                                                                     action: str | None) -> None:
    """Static mode decides on a symlink's target; explain and classify answered for its name, so a compliance
    check of ``chat-latest.tar.gz`` said allow where the gate blocks."""
    from click.testing import CliRunner

    from exportgate.cli import main

    config = gate_config(serve={"mode": "static", "root": str(tree)})
    path = tmp_path / "gate.yaml"  # the file gate_config wrote
    explained = CliRunner().invoke(main, ["--config", str(path), "explain", "--ip", IR_CLIENT, "--path", asked,
                                          "--json"])
    assert explained.exit_code == 0, explained.output
    data = json.loads(explained.output)
    assert data["path"] == decided
    if action is not None:
        assert data["action"] == action
        app = create_app(config)
        try:
            assert fetch(app, asked).headers["X-Exportgate-Decision"] == action
        finally:
            app.runtime.close()
    classified = CliRunner().invoke(main, ["--config", str(path), "classify", asked, "--json"])
    assert classified.exit_code == 0 and json.loads(classified.output)["path"] == decided, classified.output


# -- escapes --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, status", [
    pytest.param("/../outside/secret.bin", 400, id="dot-dot above root"),
    pytest.param("/files/../../outside/secret.bin", 400, id="dot-dot twice"),
    pytest.param("/%2e%2e/outside/secret.bin", 400, id="encoded dot-dot"),
    pytest.param("/..%2foutside/secret.bin", 400, id="encoded slash"),
    pytest.param("/files/escape.tar.gz", 404, id="absolute symlink out"),
    pytest.param("/files/escape-relative.tar.gz", 404, id="relative symlink out"),
    pytest.param("/linkdir/secret.bin", 404, id="directory symlink out"),
    pytest.param("/linkdir/", 404, id="directory symlink out, index"),
    pytest.param("/files/fifo.tar.gz", 404, id="fifo"),
    pytest.param("/files/missing.tar.gz", 404, id="missing"),
])
def test_nothing_outside_root_or_irregular_is_served(make_gate: Any, raw: str, status: int) -> None:
    response = fetch(make_gate(), raw, client=US_CLIENT)
    assert response.status_code == status
    assert SECRET not in response.data


def test_path_swapped_for_an_escaping_link_after_resolving_is_refused(make_gate: Any, tree: Path) -> None:
    static = make_gate().mode_app
    (tree / "sub").mkdir()
    (tree / "sub" / "secret.bin").write_bytes(b"inside")
    real = served_file(static.root, "/sub/secret.bin")[1]
    assert real == str(tree / "sub" / "secret.bin")
    # Between the decision and the open, "sub" becomes a link to a directory outside root.
    (tree / "sub" / "secret.bin").unlink()
    (tree / "sub").rmdir()
    (tree / "sub").symlink_to(tree.parent / "outside", target_is_directory=True)
    assert static.open(real, directory_ok=False) is None


# -- directories ----------------------------------------------------------------------------------------------


def test_directory_index_and_redirect(make_gate: Any) -> None:
    app = make_gate(gated=["/files/**"])
    index = fetch(app, "/simple/chatpkg/")
    assert index.status_code == 200 and index.data == INDEX
    assert index.headers["Content-Type"].startswith("text/html")
    assert "X-Exportgate-Decision" not in index.headers
    redirect = fetch(app, "/simple/chatpkg?x=1")
    assert redirect.status_code == 301 and redirect.headers["Location"] == "/simple/chatpkg/?x=1"
    assert fetch(app, "/empty/").status_code == 404  # no listings
    assert fetch(app, "/files/", client=US_CLIENT).status_code == 404


def test_index_html_is_decided_as_the_file_served(make_gate: Any) -> None:
    app = make_gate(gated=["/simple/**"])
    response = fetch(app, "/simple/chatpkg/", client=US_CLIENT)
    record = app.runtime.store.get(response.headers["X-Exportgate-Decision-Id"])
    assert record.body["request"]["path"] == "/simple/chatpkg/index.html"


# -- HTTP semantics -------------------------------------------------------------------------------------------


def test_range_and_conditional_requests(make_gate: Any) -> None:
    app = make_gate()
    part = fetch(app, "/files/chat-1.tar.gz", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.data == CHAT[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(CHAT)}"
    assert part.headers["X-Exportgate-Decision"] == "allow"
    suffix = fetch(app, "/files/chat-1.tar.gz", headers={"Range": "bytes=-10"})
    assert suffix.status_code == 206 and suffix.data == CHAT[-10:]
    too_far = fetch(app, "/files/chat-1.tar.gz", headers={"Range": f"bytes={len(CHAT)}-"})
    assert too_far.status_code == 416 and too_far.headers["Content-Range"] == f"bytes */{len(CHAT)}"
    assert too_far.headers["Cache-Control"] == "no-store"
    etag, modified = part.headers["ETag"], part.headers["Last-Modified"]
    same = fetch(app, "/files/chat-1.tar.gz", headers={"If-None-Match": etag})
    assert same.status_code == 304 and same.data == b""
    assert same.headers["X-Exportgate-Decision"] == "allow"
    assert fetch(app, "/files/chat-1.tar.gz", headers={"If-Modified-Since": modified}).status_code == 304
    other = fetch(app, "/files/chat-1.tar.gz", headers={"If-Range": '"other"', "Range": "bytes=0-9"})
    assert other.status_code == 200 and other.data == CHAT
    blocked = fetch(app, "/files/crypto-1.tar.gz", headers={"If-None-Match": "*", "Range": "bytes=0-15"})
    assert blocked.status_code == 451


@pytest.mark.parametrize("value", [
    pytest.param("items=0-5", id="unknown unit: ignored"),
    pytest.param("bytes=0-0,5-9", id="two ranges"),
    pytest.param("bytes=1-2, 3-4", id="two ranges, spaced"),
])
def test_ranges_served_whole(make_gate: Any, value: str) -> None:
    response = fetch(make_gate(), "/files/chat-1.tar.gz", headers={"Range": value})
    assert response.status_code == 200 and response.data == CHAT


def test_preconditions_come_before_the_range(make_gate: Any, tree: Path) -> None:
    """RFC 9110 13.2.2. A client resuming with the old version's ETag after the file was replaced got a 206 of the
    new version's bytes: a download spliced from two files."""
    app = make_gate()
    file = tree / "files" / "chat-1.tar.gz"
    old = fetch(app, "/files/chat-1.tar.gz", headers={"Range": "bytes=0-99"})
    etag, modified = old.headers["ETag"], old.headers["Last-Modified"]
    assert fetch(app, "/files/chat-1.tar.gz", headers={"If-Match": "*"}).data == CHAT  # the file exists
    same = fetch(app, "/files/chat-1.tar.gz", headers={"If-None-Match": etag, "Range": "bytes=0-9"})
    assert same.status_code == 304 and same.data == b"" and same.headers["ETag"] == etag
    weak = fetch(app, "/files/chat-1.tar.gz", headers={"If-Range": f"W/{etag}", "Range": "bytes=0-9"})
    assert weak.status_code == 200 and weak.data == CHAT  # a weak tag never matches If-Range
    dated = fetch(app, "/files/chat-1.tar.gz", headers={"If-Range": modified, "Range": "bytes=0-9"})
    assert dated.status_code == 206 and dated.data == CHAT[:10]
    file.write_bytes(CHAT[::-1])  # replaced: another inode, size and time
    os.utime(file, (1, 1))
    resumed = fetch(app, "/files/chat-1.tar.gz", headers={"If-Match": etag, "Range": "bytes=100-"})
    assert resumed.status_code == 412 and resumed.data == b""
    restarted = fetch(app, "/files/chat-1.tar.gz", headers={"If-Range": etag, "Range": "bytes=100-"})
    assert restarted.status_code == 200 and restarted.data == CHAT[::-1]


@pytest.mark.parametrize(("value", "status", "body"), [
    pytest.param(f"bytes=-{len(CHAT) * 2}", 206, CHAT, id="a suffix longer than the file: all of it"),
    pytest.param("bytes=0-5,3-9", 200, CHAT, id="overlapping ranges: whole"),
    pytest.param("bytes=10-19,0-9", 200, CHAT, id="ranges out of order: whole"),
    pytest.param("bytes=9-5", 200, CHAT, id="last before first: ignored"),
    pytest.param("bytes=oops", 200, CHAT, id="malformed: ignored"),
    pytest.param(f"bytes=10-{len(CHAT) * 2}", 206, CHAT[10:], id="a last byte past the end: to the end"),
    pytest.param("bytes=-0", 416, b"", id="an empty suffix"),
    pytest.param("bytes=" + "1" * 5000 + "-", 200, CHAT, id="a position of 5000 digits: ignored"),
    pytest.param("bytes=0-" + "9" * 5000, 200, CHAT, id="a last position of 5000 digits: ignored"),
])
def test_range_edge_cases(make_gate: Any, value: str, status: int, body: bytes) -> None:
    response = fetch(make_gate(), "/files/chat-1.tar.gz", headers={"Range": value})
    assert response.status_code == status and response.data == body
    if status == 206:
        assert response.headers["Content-Range"] == f"bytes {len(CHAT) - len(body)}-{len(CHAT) - 1}/{len(CHAT)}"


def test_an_empty_files_suffix_range_is_the_whole_empty_file(make_gate: Any, tree: Path) -> None:
    (tree / "files" / "chat-0.tar.gz").write_bytes(b"")
    response = fetch(make_gate(), "/files/chat-0.tar.gz", headers={"Range": "bytes=-5"})
    assert response.status_code == 200 and response.data == b""


def test_head_ignores_the_range(make_gate: Any) -> None:
    response = fetch(make_gate(), "/files/chat-1.tar.gz", method="HEAD", headers={"Range": "bytes=0-9"})
    assert response.status_code == 200 and response.data == b"" and response.headers["Content-Length"] == str(
        len(CHAT))


def test_failed_preconditions_are_412_without_the_file(make_gate: Any) -> None:
    app = make_gate()
    etag = fetch(app, "/files/chat-1.tar.gz").headers["ETag"]
    for headers in ({"If-Match": '"other"'}, {"If-Unmodified-Since": "Mon, 01 Jan 1990 00:00:00 GMT"}):
        response = fetch(app, "/files/chat-1.tar.gz", headers=headers)
        assert response.status_code == 412 and response.data == b"", headers
        assert response.headers["X-Exportgate-Decision"] == "allow" and response.headers["Cache-Control"] == "no-store"
    # If-Match decides alone when both are sent (RFC 9110, 13.2.2); an invalid date is ignored.
    both = {"If-Match": etag, "If-Unmodified-Since": "Mon, 01 Jan 1990 00:00:00 GMT"}
    assert fetch(app, "/files/chat-1.tar.gz", headers=both).data == CHAT
    assert fetch(app, "/files/chat-1.tar.gz", headers={"If-Unmodified-Since": "garbage"}).data == CHAT
    assert fetch(app, "/files/chat-1.tar.gz", headers={"If-Unmodified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}
                 ).data == CHAT


def _bytes_read() -> int:
    with open("/proc/self/io", encoding="ascii") as io:
        return int(next(line for line in io if line.startswith("rchar:")).split()[1])


def test_a_range_is_seeked_to_under_a_server_file_wrapper_that_cannot_seek(make_gate: Any, tree: Path) -> None:
    """gunicorn's wsgi.file_wrapper (its sendfile path) has no seek: one request for the last bytes of a large
    file must not make the worker read the whole file to find them."""
    from gunicorn.http.wsgi import FileWrapper as GunicornFileWrapper

    size = 64 * 1024 * 1024
    with open(tree / "files" / "big.tar.gz", "wb") as big:
        big.truncate(size)  # sparse: nothing on disk, but reading it still costs 64 MiB of read()
    app = make_gate()
    before = _bytes_read()
    response = Client(app).open("/files/big.tar.gz", headers={"Range": f"bytes={size - 8}-"}, buffered=True,
                                environ_overrides={"REMOTE_ADDR": US_CLIENT, "RAW_URI": "/files/big.tar.gz",
                                                   "wsgi.file_wrapper": GunicornFileWrapper})
    assert response.status_code == 206 and response.data == bytes(8)
    assert _bytes_read() - before < size // 8


def test_a_directory_named_like_the_index_page_is_not_found_not_a_redirect_loop(make_gate: Any, tree: Path) -> None:
    (tree / "loop" / "index.html").mkdir(parents=True)
    response = fetch(make_gate(), "/loop/", client=US_CLIENT)
    assert response.status_code == 404
    assert fetch(make_gate(), "/loop", client=US_CLIENT).headers["Location"] == "/loop/"


def test_head(make_gate: Any) -> None:
    app = make_gate()
    response = fetch(app, "/files/chat-1.tar.gz", method="HEAD")
    assert response.status_code == 200 and response.data == b""
    assert response.headers["Content-Length"] == str(len(CHAT))
    blocked = fetch(app, "/files/crypto-1.tar.gz", method="HEAD")
    assert blocked.status_code == 451 and blocked.data == b""


def test_ungated_files_are_cacheable_but_revalidated(make_gate: Any) -> None:
    response = fetch(make_gate(gated=["/files/**"]), "/simple/index.html")
    assert response.headers["Cache-Control"] == "no-cache"
    assert "X-Exportgate-Decision" not in response.headers


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_other_methods_are_405_without_a_decision(make_gate: Any, method: str) -> None:
    app = make_gate()
    response = fetch(app, "/files/chat-1.tar.gz", method=method)
    assert response.status_code == 405 and response.headers["Allow"] == "GET, HEAD"
    assert app.runtime.store.count("decision") == 0


def test_spoofed_forwarded_for_from_untrusted_peer_is_ignored(make_gate: Any) -> None:
    app = make_gate(trust_proxy=["127.0.0.1/32"])
    response = fetch(app, "/files/crypto-1.tar.gz", client=IR_CLIENT,
                     headers={"X-Forwarded-For": US_CLIENT, "Forwarded": f"for={US_CLIENT}"})
    assert response.status_code == 451
    assert fetch(app, "/files/crypto-1.tar.gz", client="127.0.0.1",
                 headers={"X-Forwarded-For": f"{US_CLIENT}, {IR_CLIENT}"}).status_code == 451


def test_a_trusted_front_end_that_names_no_client_is_refused(make_gate: Any, opened: list[str]) -> None:
    """Located at the front end's own address it would be an unknown location, flagged and served: one front-end
    location that loses the header would hand restricted files to anyone."""
    app = make_gate(trust_proxy=["127.0.0.1/32"])
    opened.clear()
    response = fetch(app, "/files/crypto-1.tar.gz", client="127.0.0.1")
    assert response.status_code == 400 and b"sent no X-Forwarded-For" in response.data
    assert app.runtime.store.count("decision") == 0 and opened == []
    assert fetch(app, "/files/chat-1.tar.gz", client="127.0.0.1",
                 headers={"X-Forwarded-For": IR_CLIENT}).status_code == 200


def test_record_store_failure_refuses_and_never_opens_the_file(make_gate: Any, tree: Path, tmp_path: Path,
                                                               opened: list[str]) -> None:
    # A real failure: another connection holds SQLite's write lock; the commit gives up after 50 ms.
    db = tmp_path / "locked.db"
    app = make_gate(top={"records": f"sqlite://{db}?busy_timeout_ms=50"})
    locker = sqlite3.connect(db, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")
        opened.clear()
        response = fetch(app, "/files/chat-1.tar.gz")
        assert response.status_code == 503 and CHAT[:16] not in response.data
        assert not [p for p in opened if p.startswith(str(tree))]
        locker.execute("ROLLBACK")
        assert fetch(app, "/files/chat-1.tar.gz").data == CHAT
        assert [p for p in opened if p.startswith(str(tree))] == [str(tree / "files" / "chat-1.tar.gz")]
    finally:
        locker.close()


def test_served_over_a_real_server(make_gate: Any) -> None:
    app = make_gate(trust_proxy=["127.0.0.1/32"])
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        for client, path, status, body in [
            (IR_CLIENT, "/files/chat-1.tar.gz", 200, CHAT),
            (IR_CLIENT, "/files/%2e%2e/files/crypto-1.tar.gz", 451, None),
            (US_CLIENT, "/files/escape.tar.gz", 404, None),
        ]:
            connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
            connection.request("GET", path, headers={"X-Forwarded-For": client, "Range": "bytes=0-"})
            response = connection.getresponse()
            data = response.read()
            connection.close()
            assert response.status in (status, 206 if status == 200 else status)
            if body is not None:
                assert data == body
            assert CRYPTO[:16] not in data and SECRET not in data
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_root_switched_to_a_new_release_is_served_from_it_at_once(gate_config: Any, tmp_path: Path) -> None:
    """Mirrors switch a `current` symlink to each new release; the gate kept serving (and deciding on) the release
    it found at start."""
    for release, body in (("a", b"release a"), ("b", b"release b")):
        (tmp_path / release / "files").mkdir(parents=True)
        (tmp_path / release / "files" / "chat-1.tar.gz").write_bytes(body)
    current = tmp_path / "current"
    current.symlink_to("a", target_is_directory=True)
    app = create_app(gate_config(serve={"mode": "static", "root": str(current)}))
    try:
        assert fetch(app, "/files/chat-1.tar.gz").data == b"release a"
        switched = tmp_path / "current.new"
        switched.symlink_to("b", target_is_directory=True)
        os.replace(switched, current)  # the atomic switch release tools do
        assert fetch(app, "/files/chat-1.tar.gz").data == b"release b"
    finally:
        app.runtime.close()


def test_a_range_of_a_file_cut_short_while_sent_ends_in_an_error(make_gate: Any, tree: Path) -> None:
    """Not a short body that looks complete: the server aborts the connection (a client reusing it would read the
    next answer as the rest of the file)."""
    (tree / "files" / "chat-9.tar.gz").write_bytes(CHAT)
    app = make_gate()
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/files/chat-9.tar.gz", "RAW_URI": "/files/chat-9.tar.gz",
               "REMOTE_ADDR": US_CLIENT, "HTTP_RANGE": "bytes=100-", "SERVER_NAME": "m", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http", "QUERY_STRING": "", "SCRIPT_NAME": ""}
    statuses: list[str] = []
    body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    os.truncate(tree / "files" / "chat-9.tar.gz", 200)
    with pytest.raises(ResponseCutShort, match="shorter than when it was opened"):
        b"".join(body)
    assert statuses == ["206 PARTIAL CONTENT"]


def test_readiness_says_when_the_root_is_gone(make_gate: Any, tree: Path) -> None:
    """Ready while every download was a 404 (a mirror volume unmounted, the directory moved away)."""
    app = make_gate()
    assert fetch(app, "/readyz", client="127.0.0.1").get_json()["checks"]["origin"]["ok"] is True
    app._origin_probed = None  # asked again at once, not after PROBE_EVERY seconds
    tree.rename(tree.with_name("moved"))
    try:
        gone = fetch(app, "/readyz", client="127.0.0.1")
        assert gone.status_code == 503 and gone.get_json()["checks"]["origin"]["error"] == "not a directory now"
    finally:
        tree.with_name("moved").rename(tree)


def test_an_unreadable_file_is_a_404_the_log_names(make_gate: Any, tree: Path, caplog: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    app = make_gate()
    with caplog.at_level(logging.WARNING, logger="exportgate.web"):
        missing = fetch(app, "/files/chat-404.tar.gz", client=US_CLIENT)
    assert missing.status_code == 404 and not caplog.records  # gone is gone: nothing to mend
    assert missing.headers.getlist("Cache-Control") == ["no-store"]  # once, beside the decision headers
    (tree / "files" / "chat-5.tar.gz").mkdir()
    (tree / "files" / "chat-5.tar.gz" / "x").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="exportgate.web"):
        # A directory where a file was asked for, through a file name: ENOTDIR is not logged either.
        assert fetch(app, "/files/chat-1.tar.gz/x", client=US_CLIENT).status_code == 404
    assert not caplog.records
    # A file the gate's user may not read (the tests may run as root, who reads everything: the refusal is the
    # kernel's answer, EACCES, given here).
    (tree / "files" / "chat-6.tar.gz").write_bytes(CHAT)
    real_open = os.open

    def refusing_open(path: Any, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith("chat-6.tar.gz"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    with caplog.at_level(logging.WARNING, logger="exportgate.web"):
        assert fetch(app, "/files/chat-6.tar.gz", client=US_CLIENT).status_code == 404
    assert any("chat-6.tar.gz cannot be read" in r.getMessage() for r in caplog.records)
