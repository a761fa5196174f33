"""The forward-auth worker's pure parts: writing responses, and which worker class each mode gets
(the protocol itself runs under gunicorn in tests/integration/test_loopworker_http.py)."""

from __future__ import annotations

from typing import Any

import pytest

from exportgate.serve import gunicorn_options
from exportgate.web.authprotocol import _closes, plain_response, response_bytes


def test_a_response_has_its_length_and_no_body_for_head() -> None:
    get = response_bytes("451 Unavailable For Legal Reasons", [("X-Exportgate-Decision", "block")], b"page",
                         head=False, close=False)
    assert get == (b"HTTP/1.1 451 Unavailable For Legal Reasons\r\nX-Exportgate-Decision: block\r\n"
                   b"Content-Length: 4\r\n\r\npage")
    head = response_bytes("451 Unavailable For Legal Reasons", [("X-Exportgate-Decision", "block")], b"page",
                          head=True, close=False)
    assert head == get[: -len(b"page")]


def test_a_given_length_is_not_repeated_and_a_bare_code_gets_its_reason() -> None:
    out = response_bytes("200", [("Content-Length", "0")], b"", head=False, close=True)
    assert out == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    assert _closes(out)


def test_only_the_head_says_whether_the_connection_closes() -> None:
    assert not _closes(response_bytes("200 OK", [], b"\r\nConnection: close", head=False, close=False))
    assert _closes(plain_response("400 Bad Request", "malformed", head=False, close=True))


@pytest.mark.parametrize(("name", "value"), [("X-Rule", "a\r\nSet-Cookie: x=1"), ("X-Rule", "a\nb"),
                                             ("X-Bad\r\nName", "v")])
def test_a_header_with_a_line_break_is_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        response_bytes("200 OK", [(name, value)], b"", head=False, close=False)


@pytest.mark.parametrize(("mode", "threads", "worker"), [
    ("forward-auth", 16, "exportgate.web.loopworker.ForwardAuthWorker"),
    ("proxy", 16, "gthread"),
    ("static", 1, "sync"),
])
def test_each_mode_gets_its_worker_class(gate_config: Any, mode: str, threads: int, worker: str) -> None:
    config = gate_config(serve={"mode": mode, "threads": threads, "root": "/srv/mirror", "upstream": "http://m"})
    assert gunicorn_options(config)["worker_class"] == worker
