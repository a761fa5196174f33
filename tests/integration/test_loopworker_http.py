"""The HTTP that gunicorn's forward-auth worker (:mod:`exportgate.web.authprotocol`) parses itself, over raw sockets.

Malformed and hostile bytes on the connection: bad request lines, oversized heads, upgrades, ``OPTIONS *``,
pipelined requests mixing the endpoint and the gate's pages, chunked bodies, clients that leave before their
answer. None may crash the worker, answer out of order, or let an answer out before its record is committed.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import IR_CLIENT, write_config
from serverproc import GateProcess, GunicornProcess, decision_count, free_port, request

CHAT = "/files/chat-1.tar.gz"
CRYPTO = "/files/crypto-1.tar.gz"


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateProcess]:
    directory = tmp_path_factory.mktemp("loopworker")
    config = write_config(directory, serve={"block_status": "auto"})
    with GateProcess(workdir=directory, config=config, server="gunicorn") as process:
        yield process


def database(gate: GateProcess) -> Path:
    return gate.workdir / "records.db"


def auth_request(uri: str, *, client: str = IR_CLIENT, extra: str = "", method: str = "GET") -> bytes:
    return (f"{method} /auth HTTP/1.1\r\nHost: gate\r\nX-Original-URI: {uri}\r\nX-Forwarded-For: {client}\r\n"
            f"{extra}\r\n").encode()


def exchange(gate: GateProcess, data: bytes, *, answers: int = 1, timeout: float = 10.0) -> list[bytes]:
    """Send ``data`` at once and read until ``answers`` responses (or the gate closes): each response's head."""
    with socket.create_connection(("127.0.0.1", gate.port), timeout=timeout) as conn:
        conn.sendall(data)
        received = b""
        while _complete(received) < answers:
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
    return _heads(received)


def _heads(data: bytes) -> list[bytes]:
    heads = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        heads.append(head)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        data = rest[length:]  # no HEAD requests here: every answer has the body its length says
    return heads


def _complete(data: bytes) -> int:
    return len(_heads(data))


def status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def header(head: bytes, name: str) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.encode():
            return value.strip().decode()
    return None


def test_pipelined_answers_come_back_in_request_order(gate: GateProcess) -> None:
    # The pages run on a thread and the decisions wait for their commit: whatever finishes first, the answers
    # leave in the order asked.
    data = (b"GET /readyz HTTP/1.1\r\nHost: gate\r\n\r\n" + auth_request(CRYPTO) +
            b"GET /healthz HTTP/1.1\r\nHost: gate\r\n\r\n" + auth_request(CHAT) +
            b"GET /metrics HTTP/1.1\r\nHost: gate\r\n\r\n")
    heads = exchange(gate, data, answers=5)
    assert [status(h) for h in heads] == [200, 403, 200, 200, 200]
    assert header(heads[0], "content-type") == "application/json"
    assert header(heads[1], "x-exportgate-decision") == "block"
    assert header(heads[3], "x-exportgate-decision") == "allow"
    assert header(heads[4], "content-type").startswith("text/plain")


@pytest.mark.parametrize("line", [
    b"GARBAGE\r\n\r\n",
    b"GET /auth HTTP/9.9\r\n\r\n",
    b"GET /auth HTTP/1.1\r\nBad Header Line\r\n\r\n",
    b"GET /auth HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"GET /auth HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET /auth HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    b"GET /au\x00th HTTP/1.1\r\n\r\n",
], ids=["garbage", "bad version", "bad header", "negative length", "two lengths", "chunked and length", "NUL"])
def test_malformed_requests_are_400_and_the_connection_closes(gate: GateProcess, line: bytes) -> None:
    before = decision_count(database(gate))
    heads = exchange(gate, line + auth_request(CHAT), answers=2)
    assert [status(h) for h in heads] == [400]  # nothing after the bad bytes is read
    assert header(heads[0], "connection") == "close"
    assert decision_count(database(gate)) == before
    assert gate.get("/healthz").status == 200


def test_a_request_head_over_64_kib_is_431(gate: GateProcess) -> None:
    filler = "".join(f"X-Filler-{i}: {'a' * 1000}\r\n" for i in range(70))
    heads = exchange(gate, auth_request(CHAT, extra=filler))
    assert [status(h) for h in heads] == [431]
    # One header line that never ends: refused once it passes the limit, not buffered forever.
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as conn:
        conn.sendall(b"GET /auth HTTP/1.1\r\nX-Endless: ")
        answer = b""
        try:
            for _ in range(200):
                conn.sendall(b"a" * 4096)
        except OSError:
            pass  # closed on us: expected
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except OSError:
            pass
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert gate.get("/healthz").status == 200


@pytest.mark.parametrize("data", [
    b"OPTIONS * HTTP/1.1\r\nHost: gate\r\n\r\n",
    b"CONNECT gate:443 HTTP/1.1\r\nHost: gate:443\r\n\r\n",
], ids=["asterisk form", "CONNECT"])
def test_odd_targets_are_refused(gate: GateProcess, data: bytes) -> None:
    heads = exchange(gate, data)
    assert heads and status(heads[0]) == 400
    assert gate.get("/healthz").status == 200


def refused_without_a_decision(gate: GateProcess, data: bytes) -> bytes:
    """The one answer to ``data`` (asked for two): a 400, and no decision recorded; its head."""
    before = decision_count(database(gate))
    heads = exchange(gate, data, answers=2)
    assert [status(h) for h in heads] == [400]
    assert decision_count(database(gate)) == before
    return heads[0]


def test_nothing_after_a_bad_request_target_is_decided(gate: GateProcess) -> None:
    head = refused_without_a_decision(gate, b"GET auth HTTP/1.1\r\nHost: gate\r\n\r\n" + auth_request(CHAT))
    assert header(head, "connection") == "close"


def test_absolute_form_target_is_the_endpoint(gate: GateProcess) -> None:
    data = (f"GET http://gate/auth HTTP/1.1\r\nHost: gate\r\nX-Original-URI: {CHAT}\r\n"
            f"X-Forwarded-For: {IR_CLIENT}\r\n\r\n").encode()
    heads = exchange(gate, data)
    assert status(heads[0]) == 200 and header(heads[0], "x-exportgate-decision") == "allow"


@pytest.mark.parametrize("framing", [
    "Transfer-Encoding: chunked\r\n",
    "Transfer-Encoding: identity\r\n",
    "Content-Length: 5\r\n",
    "Content-Length: 5\r\nExpect: 100-continue\r\n",
], ids=["chunked", "identity", "length", "expect"])
def test_a_request_with_a_body_is_the_connections_last(gate: GateProcess, framing: str) -> None:
    # Answered from its head, with Connection: close; whatever follows is never read as a request, so a body that
    # is (or is not) there cannot smuggle one: the crypto request for an Iranian address below is not decided.
    before = decision_count(database(gate))
    data = auth_request(CHAT, extra=framing, method="POST") + auth_request(CRYPTO)
    heads = exchange(gate, data, answers=2)
    assert [status(h) for h in heads] == [200]
    assert header(heads[0], "connection") == "close"
    assert header(heads[0], "x-exportgate-decision") == "allow"
    assert decision_count(database(gate)) == before + 1


@pytest.mark.parametrize("upgrade", [
    "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    "Upgrade: h2c\r\n",
], ids=["h2c, as Caddy passes on curl --http2", "websocket", "upgrade without connection"])
def test_an_upgrade_is_not_taken_and_the_request_is_the_connections_last(gate: GateProcess, upgrade: str) -> None:
    # Answered in HTTP/1.1 (RFC 9110 7.8), decided like any request, then closed: the bytes after the head (another
    # protocol's, or the crypto request for an Iranian address below) are never read.
    before = decision_count(database(gate))
    heads = exchange(gate, auth_request(CHAT, extra=upgrade) + auth_request(CRYPTO), answers=2)
    assert [status(h) for h in heads] == [200]
    assert header(heads[0], "x-exportgate-decision") == "allow" and header(heads[0], "connection") == "close"
    assert decision_count(database(gate)) == before + 1


def test_header_values_are_trimmed_and_a_second_host_is_refused(gate: GateProcess) -> None:
    data = (f"GET /auth HTTP/1.1\r\nHost: gate\r\nX-Original-URI: {CHAT} \t\r\n"
            f"X-Original-Method: GET \r\nX-Forwarded-For: {IR_CLIENT}\r\n\r\n").encode()
    heads = exchange(gate, data)
    assert status(heads[0]) == 200 and header(heads[0], "x-exportgate-decision") == "allow"
    before = decision_count(database(gate))
    heads = exchange(gate, auth_request(CHAT, extra="Host: other\r\n"))
    assert [status(h) for h in heads] == [400]
    assert decision_count(database(gate)) == before


def test_a_half_closed_client_still_gets_its_answers(gate: GateProcess) -> None:
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: gate\r\n\r\n" + auth_request(CHAT))
        conn.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    heads = _heads(received)
    assert [status(h) for h in heads] == [200, 200]
    assert header(heads[1], "x-exportgate-decision") == "allow"


def _worker_rss_kib(gate: GateProcess) -> int:
    assert gate.proc is not None
    children = Path(f"/proc/{gate.proc.pid}/task/{gate.proc.pid}/children").read_text().split()
    status_text = Path(f"/proc/{children[0]}/status").read_text()
    return int(next(line.split()[1] for line in status_text.splitlines() if line.startswith("VmRSS:")))


def test_a_client_that_never_reads_cannot_grow_the_worker(gate: GateProcess) -> None:
    # Requests answered at once (400, keep-alive), pipelined without ever reading the answers: the worker stops
    # reading once its answers back up, so the client's sends block instead of the worker's memory growing.
    request = b"GET /auth HTTP/1.1\r\nHost: gate\r\n\r\n"
    before = _worker_rss_kib(gate)
    sent = 0
    with socket.create_connection(("127.0.0.1", gate.port), timeout=2) as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        burst = request * 2000
        try:
            while sent < 400_000_000:
                conn.sendall(burst)
                sent += len(burst)
        except (TimeoutError, OSError):
            pass  # the worker stopped reading: what we wanted
        grown = _worker_rss_kib(gate) - before
    assert sent < 400_000_000, "the worker read 400 MB of requests nobody collected the answers of"
    assert grown < 50 * 1024, f"worker grew by {grown} KiB"
    assert gate.get("/healthz").status == 200


def test_connection_close_and_http_1_0_end_the_connection(gate: GateProcess) -> None:
    heads = exchange(gate, auth_request(CHAT, extra="Connection: close\r\n") + auth_request(CHAT), answers=2)
    assert len(heads) == 1 and header(heads[0], "connection") == "close"
    old = f"GET /auth HTTP/1.0\r\nX-Original-URI: {CHAT}\r\nX-Forwarded-For: {IR_CLIENT}\r\n\r\n".encode()
    heads = exchange(gate, old + old, answers=2)
    assert len(heads) == 1 and status(heads[0]) == 200
    # HTTP/1.0 asking for keep-alive: the answer would have to say so, or the client waits for the close that
    # never comes (until the keep-alive timeout). Closed, as gunicorn does.
    kept = old.replace(b"\r\n\r\n", b"\r\nConnection: keep-alive\r\n\r\n")
    started = time.monotonic()
    heads = exchange(gate, kept + kept, answers=2)
    assert len(heads) == 1 and status(heads[0]) == 200 and header(heads[0], "connection") == "close"
    assert time.monotonic() - started < 5


def test_a_request_line_without_a_version_is_refused_without_a_decision(gate: GateProcess) -> None:
    """llhttp reads it as HTTP/0.9, headers and all; the WSGI servers refuse it."""
    head = refused_without_a_decision(gate, auth_request(CRYPTO).replace(b" HTTP/1.1\r\n", b"\r\n", 1))
    assert header(head, "connection") == "close"


def test_a_refused_head_request_gets_no_body(gate: GateProcess) -> None:
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as conn:
        conn.sendall(b"HEAD /auth HTTP/1.1\r\nHost: gate\r\nHost: other\r\n\r\n")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and body == b""
    assert header(head, "content-length") not in (None, "0")  # what a GET would get


def test_underscore_headers_do_not_reach_the_gates_pages(gate: GateProcess) -> None:
    """X_Forwarded_For became a second X-Forwarded-For line in the pages' environ, after the front end's: a client
    outside serve.admin_from could name itself the last hop and read /metrics."""
    asked = (b"GET /metrics HTTP/1.1\r\nHost: gate\r\nX-Forwarded-For: 192.0.2.40\r\n"
             b"X_Forwarded_For: 10.0.0.1\r\n\r\n")
    heads = exchange(gate, asked)
    assert [status(h) for h in heads] == [404]


def test_clients_that_leave_before_their_answer_do_not_hurt_the_worker(gate: GateProcess) -> None:
    before = decision_count(database(gate))
    for _ in range(20):
        conn = socket.create_connection(("127.0.0.1", gate.port), timeout=10)
        conn.sendall(auth_request(CHAT) * 3)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        conn.close()
    deadline = time.monotonic() + 5
    # Each request that was read was decided and recorded, answered or not; none is recorded twice.
    while decision_count(database(gate)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert before <= decision_count(database(gate)) <= before + 60
    r = gate.get("/auth", headers={"X-Original-URI": CHAT, "X-Forwarded-For": IR_CLIENT})
    assert r.status == 200 and r.header("X-Exportgate-Decision") == "allow"
    assert "Traceback" not in gate.log_text()


def test_gunicorn_max_requests_and_keepalive_0_are_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gunicorn's own settings, given the way ops give them (``GUNICORN_CMD_ARGS`` with deploy/gunicorn.conf.py):
    after max_requests the worker stops gracefully and the master starts another, with no request lost; keep-alive 0
    closes every connection after its answer."""
    monkeypatch.setenv("GUNICORN_CMD_ARGS", "--max-requests 5 --keep-alive 0")
    port = free_port()
    config = write_config(tmp_path, serve={"bind": f"127.0.0.1:{port}", "workers": 1,
                                           "trust_proxy": ["127.0.0.1/32"]})
    with GunicornProcess(workdir=tmp_path / "gunicorn", config=config, port=port) as process:
        answers = []
        for _ in range(20):
            r = request(port, "/auth", headers={"X-Original-URI": CHAT, "X-Forwarded-For": IR_CLIENT})
            answers.append((r.status, r.header("X-Exportgate-Decision"), r.header("Connection")))
            time.sleep(0.1)  # the worker looks at its count once a second
        assert answers == [(200, "allow", "close")] * 20
        assert "Autorestarting worker" in process.log_text()
        assert decision_count(tmp_path / "records.db") == 20
