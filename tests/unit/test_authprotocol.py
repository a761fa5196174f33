"""The forward-auth worker's pure parts: writing responses, and which worker class each mode gets
(the protocol itself runs under gunicorn in tests/integration/test_loopworker_http.py)."""

from __future__ import annotations

from typing import Any

import pytest

from exportgate.serve import gunicorn_options
from exportgate.web.authprotocol import plain_response, response_bytes


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


def test_only_the_head_says_whether_the_connection_closes() -> None:
    kept = response_bytes("200 OK", [], b"\r\nConnection: close", head=False, close=False)
    assert b"Connection: close" not in kept.partition(b"\r\n\r\n")[0]
    closing = plain_response("400 Bad Request", "malformed", head=False, close=True)
    assert closing.partition(b"\r\n\r\n")[0].endswith(b"\r\nConnection: close")


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


def test_slow_heads_and_idle_connections_are_closed(gate_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's sweep (once a second under gunicorn; by hand here, in-process): a connection idle past the
    keep-alive timeout is closed, and so is one still sending its head after the head timeout, however steadily
    it trickles bytes; one waiting for nothing but within both stays open."""
    import asyncio

    from exportgate.web import authprotocol
    from exportgate.web.app import create_app

    monkeypatch.setattr(authprotocol, "HEAD_TIMEOUT", 0.3)
    app = create_app(gate_config())

    async def closed(reader: asyncio.StreamReader) -> bytes:
        try:
            return await asyncio.wait_for(reader.read(), 2)
        except ConnectionResetError:  # closed with bytes of ours unread: a reset, just as closed
            return b""

    async def main() -> tuple[bytes, bytes, bool]:
        loop = asyncio.get_running_loop()
        server = authprotocol.ForwardAuthServer(app, loop, keepalive=0.6)
        listener = await loop.create_server(server, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
        slow_writer.write(b"GET /auth HTTP/1.1\r\nX-Original-URI: /files/")
        for _ in range(4):  # 0.4 s: past the head timeout, within the keep-alive timeout
            await asyncio.sleep(0.1)
            slow_writer.write(b"a")
            server.sweep()
        slow = await closed(slow_reader)
        still_open = not idle_reader.at_eof() and len(server.connections) == 1
        await asyncio.sleep(0.4)  # now past the keep-alive timeout too
        server.sweep()
        idle = await closed(idle_reader)
        for writer in (idle_writer, slow_writer):
            writer.close()
        listener.close()
        await server.shutdown(0.0)
        return slow, idle, still_open

    try:
        slow, idle, still_open = asyncio.run(main())
    finally:
        app.runtime.close()
    assert slow == b"" and idle == b""  # closed without an answer: there was no request to answer
    assert still_open


def _auth_request(uri: str, extra: str = "") -> bytes:
    """A forward-auth request as nginx sends it, for an Iranian client (the test overrides place it there)."""
    from conftest import IR_CLIENT

    return (f"GET /auth HTTP/1.1\r\nHost: gate\r\nX-Original-URI: {uri}\r\nX-Forwarded-For: {IR_CLIENT}\r\n"
            f"{extra}\r\n").encode()


async def _client(port: int, *, receive_buffer: int | None = None) -> Any:
    """A non-blocking socket connected to the server on ``port``, for the running loop's ``sock_*`` calls."""
    import asyncio
    import socket

    client = socket.socket()
    if receive_buffer is not None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    client.setblocking(False)
    await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", port))
    return client


def test_a_client_that_never_reads_its_answers_is_cut_off_after_the_keepalive_timeout(gate_config: Any) -> None:
    """Closing a connection waits for the answers written to it to leave; a client that pipelines requests and
    never reads them would keep the socket and its queued answers for as long as it likes. Past the keep-alive
    timeout the sweep aborts it instead, and the shutdown does not wait for it either."""
    import asyncio
    import socket

    from exportgate.web import authprotocol
    from exportgate.web.app import create_app

    app = create_app(gate_config(serve={"trust_proxy": ["127.0.0.1/32"], "block_status": "auto"}))
    # Blocked, with the HTML page: about 1 KiB per answer, far more than the sockets' buffers hold.
    request = _auth_request("/files/crypto-1.tar.gz", "Accept: text/html\r\n")

    async def main() -> tuple[bool, int, int]:
        loop = asyncio.get_running_loop()
        server = authprotocol.ForwardAuthServer(app, loop, keepalive=0.5)
        listener = await loop.create_server(server, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]

        async def client_that_never_reads() -> tuple[socket.socket, bool]:
            """Connected, 3,000 requests sent, and the gate stopped writing: its buffer full, the window shut."""
            client = await _client(port, receive_buffer=4096)
            await loop.sock_sendall(client, request * 3000)  # and never a recv()
            for _ in range(40):
                await asyncio.sleep(0.1)
                if any(c._write_paused and c.unsent() for c in server.connections):
                    return client, True
            return client, False

        client, stuck = await client_that_never_reads()
        await asyncio.sleep(0.6)  # past the keep-alive timeout
        server.sweep()
        await asyncio.sleep(0.2)
        after_sweep = len(server.connections)
        again, stuck_again = await client_that_never_reads()  # this one left to the shutdown (deadline 0: at once)
        listener.close()
        await server.shutdown(0.0)
        await asyncio.sleep(0.2)
        after_shutdown = len(server.connections)
        client.close()
        again.close()
        return stuck and stuck_again, after_sweep, after_shutdown

    try:
        stuck, after_sweep, after_shutdown = asyncio.run(main())
    finally:
        app.runtime.close()
    assert stuck  # the case under test was reached: answers written, unread
    assert after_sweep == 0
    assert after_shutdown == 0


@pytest.mark.parametrize("half_close", [False, True], ids=["kept-open", "half-closed"])
def test_pipelined_requests_past_the_waiting_limit_are_parsed_only_as_answers_leave(gate_config: Any,
                                                                                   half_close: bool) -> None:
    """3,000 requests in one send arrive in a few large reads; llhttp would parse and decide every request of a
    read at once. The connection parses one head at a time and keeps the rest back while MAX_WAITING answers wait,
    so no more than that are ever in flight on it; every request is still answered, in order, including those
    sent before a half-close."""
    import asyncio
    import re
    import socket

    from exportgate.web import authprotocol
    from exportgate.web.app import create_app

    app = create_app(gate_config(serve={"trust_proxy": ["127.0.0.1/32"]}))
    request = _auth_request("/files/chat-1.tar.gz")
    total = 3000
    in_flight = []

    class Counting(authprotocol.AuthConnection):
        def on_headers_complete(self) -> None:
            in_flight.append(len(self.answers) + 1)  # this request's answer, and those still waiting before it
            super().on_headers_complete()

    class Server(authprotocol.ForwardAuthServer):
        def __call__(self) -> authprotocol.AuthConnection:
            return Counting(self)

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        server = Server(app, loop, keepalive=60)
        listener = await loop.create_server(server, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        client = await _client(port)
        await loop.sock_sendall(client, request * total)
        if half_close:
            client.shutdown(socket.SHUT_WR)
        received = b""
        while received.count(b"HTTP/1.1 ") < total or half_close:
            chunk = await asyncio.wait_for(loop.sock_recv(client, 1 << 16), 20)
            if not chunk:
                break
            received += chunk
        client.close()
        listener.close()
        await server.shutdown(1.0)
        return received

    try:
        received = asyncio.run(main())
    finally:
        app.runtime.close()
    assert len(in_flight) == total
    # One more at most: a CRLF CRLF split between two reads lets one piece hold two heads.
    assert max(in_flight) <= authprotocol.MAX_WAITING + 1
    ids = re.findall(rb"X-Exportgate-Decision-Id: \S+-([0-9a-f]+)\r\n", received)
    assert received.count(b"HTTP/1.1 200 OK") == len(ids) == total
    assert [int(i, 16) for i in ids] == list(range(1, total + 1))  # answers in request order


def test_a_worker_near_its_limit_of_open_files_says_so_once(gate_config: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Past the limit of open files the event loop drops new connections unanswered and unlogged; the server warns
    while there is room (here the limit is made small), once, and again only after the crowd has thinned."""
    import asyncio
    import logging

    from exportgate.web import authprotocol
    from exportgate.web.app import create_app

    app = create_app(gate_config())

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        server = authprotocol.ForwardAuthServer(app, loop, keepalive=60)
        assert server.crowded >= 1
        server.crowded = 2
        listener = await loop.create_server(server, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        said = []

        async def connect(n: int) -> list[asyncio.StreamWriter]:
            writers = []
            for _ in range(n):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writers.append(writer)
            await asyncio.sleep(0.1)
            return writers

        def close(writers: list[asyncio.StreamWriter]) -> None:
            for writer in writers:
                writer.close()

        first = await connect(4)
        said.append(caplog.text.count("near this worker's limit of open files"))
        close(first)
        await asyncio.sleep(0.1)
        server.sweep()  # fewer than half: re-armed
        second = await connect(4)
        said.append(caplog.text.count("near this worker's limit of open files"))
        close(second)
        listener.close()
        await server.shutdown(0.0)
        return said

    try:
        with caplog.at_level(logging.WARNING, logger="exportgate.web"):
            said = asyncio.run(main())
    finally:
        app.runtime.close()
    assert said == [1, 2]


def test_serve_raises_its_limit_of_open_files_to_the_hard_limit(monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import resource

    from exportgate.openfiles import raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lower = min(soft, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
    try:
        raise_open_file_limit()
        raised = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))

        def refuse(*args: object) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(resource, "setrlimit", refuse)  # a seccomp filter (deploy/systemd's @resources)
        with caplog.at_level(logging.WARNING, logger="exportgate.openfiles"):
            raise_open_file_limit()  # no exception: the gate starts with the limit it has
    finally:
        monkeypatch.undo()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert raised == (hard if hard != resource.RLIM_INFINITY else 65536)
    assert f"cannot raise the limit of {lower}" in caplog.text
    assert "LimitNOFILE" in caplog.text
