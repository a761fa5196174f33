"""``exportgate serve`` in forward-auth mode, over real HTTP, under both event-loop servers: gunicorn with the
gate's own worker (:mod:`exportgate.web.loopworker`, the default) and granian's RSGI interface.

The same answers as the WSGI endpoint for every front end's headers, and the same hostile inputs: spoofed and
repeated ``X-Forwarded-For``, encoded paths, missing or disagreeing URI headers, huge headers, malformed HTTP,
pipelining, a failing store. Every decided answer has its record committed before it leaves; the gate's own pages
(health, metrics, the 451 page) are served too. Where granian differs it fails closed: no raw request target, so
the Envoy ``/auth/<path>`` form is refused there; a header line it drops (bytes outside ASCII) refuses the request.
Its parser's other differences, on requests no front end sends, are listed in :mod:`exportgate.web.rsgi`.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import IR_CLIENT, US_CLIENT, require, write_config
from serverproc import GateProcess, Response, StoreFault, decision_count, decision_record

CHAT = "/files/chat-1.tar.gz"
CRYPTO = "/files/crypto-1.tar.gz"


@pytest.fixture(scope="module", params=["gunicorn", "granian"])
def server(request: pytest.FixtureRequest) -> str:
    if request.param == "granian":
        require(importlib.util.find_spec("granian") is not None, "granian",
                "pip install -e . (granian is a dependency)")
    return str(request.param)


def _start(directory: Path, server: str, **kwargs: object) -> GateProcess:
    directory.mkdir(parents=True, exist_ok=True)
    config = write_config(directory, serve={"block_status": "auto"})
    return GateProcess(workdir=directory, config=config, server=server, **kwargs)


@pytest.fixture(scope="module")
def gate(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateProcess]:
    with _start(tmp_path_factory.mktemp(f"loop-{server}"), server) as process:
        yield process


@pytest.fixture(scope="module")
def untrusting_gate(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateProcess]:
    """No trusted proxy: only the TCP peer (127.0.0.1, loopback: an unknown location) counts."""
    with _start(tmp_path_factory.mktemp(f"loop-untrusting-{server}"), server, trust_proxy=()) as process:
        yield process


def database(gate: GateProcess) -> Path:
    return gate.workdir / "records.db"


def nginx_auth(gate: GateProcess, uri: str, client: str = IR_CLIENT, **headers: str) -> Response:
    return gate.get("/auth", headers={"X-Original-URI": uri, "X-Original-Method": "GET", "X-Forwarded-For": client,
                                      **headers})


def traefik_auth(gate: GateProcess, uri: str, client: str = IR_CLIENT, accept: str = "text/html") -> Response:
    return gate.get("/auth", headers={"X-Forwarded-Uri": uri, "X-Forwarded-Method": "GET",
                                      "X-Forwarded-Host": "mirror.example.org", "X-Forwarded-For": client,
                                      "Accept": accept})


def committed(gate: GateProcess, response: Response) -> dict[str, object]:
    """The answer's decision record: it must be in the store when the answer arrives (no waiting here)."""
    decision_id = response.header("X-Exportgate-Decision-Id")
    assert decision_id, response
    record = decision_record(database(gate), decision_id)
    assert record is not None, f"answer for {decision_id} left before its record was committed"
    return record


# ---------------------------------------------------------------------------------------------- decisions


def test_allow_for_nginx(gate: GateProcess) -> None:
    r = nginx_auth(gate, CHAT)
    assert r.status == 200 and r.body == b""
    assert r.header("X-Exportgate-Decision") == "allow"
    assert r.header("X-Exportgate-Rule")
    assert r.header("Cache-Control") == "no-store"
    record = committed(gate, r)
    assert record["action"] == "allow"


def test_block_for_nginx_is_403_and_its_page_is_451(gate: GateProcess) -> None:
    r = nginx_auth(gate, CRYPTO)
    assert r.status == 403 and r.header("X-Exportgate-Decision") == "block"
    decision_id = r.header("X-Exportgate-Decision-Id")
    assert committed(gate, r)["action"] == "block"
    page = gate.get(f"/exportgate/blocked/{decision_id}", headers={"Accept": "application/json"})
    assert page.status == 451
    assert json.loads(page.body)["decision_id"] == decision_id
    assert 'rel="blocked-by"' in (page.header("Link") or "")


@pytest.mark.parametrize(("accept", "content_type"), [("text/html", "text/html"),
                                                      ("application/json", "application/json")])
def test_block_for_traefik_is_the_451_page(gate: GateProcess, accept: str, content_type: str) -> None:
    r = traefik_auth(gate, CRYPTO, accept=accept)
    assert r.status == 451
    assert (r.header("Content-Type") or "").startswith(content_type)
    assert r.header("Cache-Control") == "no-store"
    assert 'rel="blocked-by"' in (r.header("Link") or "")
    assert r.header("X-Exportgate-Decision-Id") in r.text
    committed(gate, r)


def test_us_client_allowed(gate: GateProcess) -> None:
    r = traefik_auth(gate, CRYPTO, client=US_CLIENT)
    assert r.status == 200 and r.header("X-Exportgate-Decision") == "allow"


def test_concurrent_answers_each_have_their_committed_record(gate: GateProcess) -> None:
    results: list[Response] = []
    lock = threading.Lock()

    def worker(uri: str) -> None:
        for _ in range(10):
            r = nginx_auth(gate, uri)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker, args=(CHAT if i % 2 else CRYPTO,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 80
    assert {r.status for r in results} == {200, 403}
    ids = {r.header("X-Exportgate-Decision-Id") for r in results}
    assert len(ids) == 80
    for r in results:
        committed(gate, r)


# -------------------------------------------------------------------------------------------- who is asking


def test_spoofed_xff_from_an_untrusted_peer_is_ignored(untrusting_gate: GateProcess) -> None:
    r = nginx_auth(untrusting_gate, CRYPTO, client=US_CLIENT)
    # The peer (loopback) counts, not the header: an unknown location, flagged by the shipped pack.
    assert r.status == 200 and r.header("X-Exportgate-Decision") == "flag"
    record = committed(untrusting_gate, r)
    assert record["location"]["country"] is None  # type: ignore[index]


def test_repeated_xff_headers_are_one_chain_read_from_the_right(gate: GateProcess) -> None:
    r = gate.get("/auth", headers=[("X-Original-URI", CRYPTO), ("X-Forwarded-For", US_CLIENT),
                                   ("X-Forwarded-For", IR_CLIENT)])
    assert r.status == 403  # the rightmost untrusted entry is the Iranian client, not the spoofed US one
    record = committed(gate, r)
    assert record["request"]["address_chain"][:2] == [US_CLIENT, IR_CLIENT]  # type: ignore[index]


@pytest.mark.parametrize("xff", ["garbage", "", "192.0.2.10:8080, nonsense", "[2001:db8::1", "fe80::1%eth0"])
def test_unusable_xff_is_an_unknown_location_never_allowed(gate: GateProcess, xff: str) -> None:
    r = gate.get("/auth", headers={"X-Original-URI": CRYPTO, "X-Forwarded-For": xff})
    assert r.status in (200, 403)
    assert r.header("X-Exportgate-Decision") in ("flag", "block")
    committed(gate, r)


# ---------------------------------------------------------------------------------------- what is asked for


@pytest.mark.parametrize("uri", [
    "/files/%2e%2e/files/crypto-1.tar.gz",
    "/files/./crypto-1.tar.gz",
    "/files//crypto-1.tar.gz",
    "/other/../files/crypto-1.tar.gz",
    "/files/crypto%2d1.tar.gz",
    "/files/crypto-1.tar.gz?token=abc#frag",
])
def test_path_variants_of_a_restricted_artifact_are_that_artifact(gate: GateProcess, uri: str) -> None:
    r = nginx_auth(gate, uri)
    assert r.status == 403, (uri, r)
    assert committed(gate, r)["request"]["path"] == CRYPTO  # type: ignore[index]


@pytest.mark.parametrize("uri", ["/files%2fcrypto-1.tar.gz", "/files/crypto-1.tar.gz%00", "/files/%0acrypto"])
def test_refused_paths_are_400_without_a_record(gate: GateProcess, uri: str) -> None:
    before = decision_count(database(gate))
    r = nginx_auth(gate, uri)
    assert r.status == 400 and b"rejected path" in r.body
    assert decision_count(database(gate)) == before


def test_missing_uri_header_is_400(gate: GateProcess) -> None:
    r = gate.get("/auth", headers={"X-Forwarded-For": IR_CLIENT})
    assert r.status == 400 and b"missing X-Original-URI" in r.body


@pytest.mark.parametrize(("lines", "named"), [
    pytest.param([("X-Original-URI", CHAT), ("X-Original-URI", CRYPTO)], "X-Original-URI", id="nginx's URI twice"),
    # Joined with ",", these two would read as one path whose last segment names the allowed package.
    pytest.param([("X-Original-URI", "/packages/aa/cryptopkg-1.0.tar.gz"),
                  ("x-original-uri", "/packages/bb/chatpkg-1.0.tar.gz")], "X-Original-URI", id="joined to another"),
    pytest.param([("X-Forwarded-Uri", CRYPTO), ("X-Forwarded-Uri", CHAT)], "X-Forwarded-Uri", id="Traefik's URI"),
    pytest.param([("X-Original-URI", CRYPTO), ("X-Original-Method", "GET"), ("X-Original-Method", "HEAD")],
                 "X-Original-Method", id="method twice"),
])
def test_a_header_naming_the_request_sent_twice_is_400_without_a_record(gate: GateProcess, lines: list[tuple[str, str]],
                                                                        named: str) -> None:
    """Front ends set these headers once, replacing the client's: a second line came from elsewhere."""
    before = decision_count(database(gate))
    r = gate.get("/auth", headers=[*lines, ("X-Forwarded-For", IR_CLIENT)])
    assert r.status == 400 and f"more than one {named} header".encode() in r.body, r
    assert decision_count(database(gate)) == before
    assert nginx_auth(gate, CHAT).status == 200


def test_metrics_count_every_decision(gate: GateProcess) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def allowed() -> float:
        families = text_string_to_metric_families(gate.get("/metrics").text)
        return sum(s.value for f in families if f.name == "exportgate_decisions" for s in f.samples
                   if s.name == "exportgate_decisions_total" and s.labels["action"] == "allow")

    before = allowed()
    for _ in range(5):
        assert nginx_auth(gate, CHAT).status == 200
    assert allowed() == before + 5


def test_disagreeing_uri_headers_are_400(gate: GateProcess) -> None:
    r = gate.get("/auth", headers={"X-Original-URI": CHAT, "X-Forwarded-Uri": CRYPTO, "X-Forwarded-For": IR_CLIENT})
    assert r.status == 400 and b"disagree" in r.body


def test_envoy_path_form_is_decided_on_the_raw_target_or_refused(gate: GateProcess) -> None:
    if gate.server == "granian":  # no raw request target: refused, never decided on a decoded path
        before = decision_count(database(gate))
        r = gate.get("/auth" + CHAT, headers={"X-Forwarded-For": IR_CLIENT})
        assert r.status == 400 and b"raw request target" in r.body
        assert decision_count(database(gate)) == before
        return
    r = gate.get("/auth" + CRYPTO, headers={"X-Forwarded-For": IR_CLIENT})
    assert r.status == 451 and r.header("X-Exportgate-Decision") == "block"
    committed(gate, r)
    assert gate.get("/auth" + CHAT, headers={"X-Forwarded-For": IR_CLIENT}).status == 200
    # Decoded once from the raw target: an encoded slash is refused, never decided as /files/crypto-1.tar.gz.
    before = decision_count(database(gate))
    assert gate.get("/auth/files%2fcrypto-1.tar.gz", headers={"X-Forwarded-For": IR_CLIENT}).status == 400
    assert gate.get("/auth/files/%2e%2e/files/crypto-1.tar.gz",
                    headers={"X-Forwarded-For": IR_CLIENT}).header("X-Exportgate-Decision") == "block"
    assert decision_count(database(gate)) == before + 1


def test_huge_headers_do_not_crash_the_worker(gate: GateProcess) -> None:
    try:
        r = gate.get("/auth", headers={"X-Original-URI": CRYPTO, "X-Forwarded-For": "1.2.3.4, " * 20000})
    except OSError:
        pass  # the server may drop the connection: fine, as long as it keeps serving
    else:
        assert r.status in (400, 403, 413, 414, 431) or r.header("X-Exportgate-Decision") in ("flag", "block")
    long_uri = "/files/" + "a" * 9000
    r = nginx_auth(gate, long_uri)
    assert r.status in (414, 431)
    assert nginx_auth(gate, CHAT).status == 200


# ------------------------------------------------------------------------------------------ the gate's pages


def test_health_readiness_and_metrics(gate: GateProcess) -> None:
    assert gate.get("/healthz").status == 200
    ready = gate.get("/readyz")
    assert ready.status == 200 and json.loads(ready.body)["ready"] is True
    nginx_auth(gate, CHAT)
    metrics = gate.get("/metrics")
    assert metrics.status == 200 and b"exportgate_decisions_total" in metrics.body
    assert gate.get("/nothing-here").status == 404
    # Only for clients in serve.admin_from (by default loopback and private networks), located through the trusted
    # front end as a download's client is: a client on the internet the front end passed on gets a 404.
    for page in ("/readyz", "/metrics"):
        assert gate.get(page, headers={"X-Forwarded-For": US_CLIENT}).status == 404
        assert gate.get(page, headers={"X-Forwarded-For": "10.1.2.3"}).status == 200


def _raw(gate: GateProcess, request: bytes) -> tuple[int, bytes]:
    """One request written byte for byte (a client can put any byte in a header), its status and body."""
    import socket

    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("page", ["/metrics", "/readyz"])
def test_a_forwarding_header_with_bytes_outside_ascii_does_not_open_the_admin_pages(gate: GateProcess,
                                                                                    page: str) -> None:
    """nginx passes a client's bytes on in the X-Forwarded-For it writes; granian dropped that line without a word,
    and the trusted front end, naming no client, counted as itself: a loopback address, let in."""
    for xff in (b"192.0.2.40\xff", b"\xc3\xa9, 192.0.2.40"):
        code, body = _raw(gate, b"GET " + page.encode() + b" HTTP/1.1\r\nHost: gate\r\nX-Forwarded-For: " + xff
                          + b"\r\nConnection: close\r\n\r\n")
        assert code in (400, 404) and b"exportgate_" not in body and b"ready" not in body, (xff, code, body)


def test_a_uri_header_with_bytes_outside_ascii_is_decided_on_or_refused_never_dropped(gate: GateProcess) -> None:
    """A second X-Original-URI is a 400; one granian could not read must not leave the first to be decided on."""
    before = decision_count(database(gate))
    code, body = _raw(gate, (f"GET /auth HTTP/1.1\r\nHost: gate\r\nX-Original-URI: {CHAT}\r\n"
                             f"X-Forwarded-Uri: {CRYPTO}\xff\r\nX-Forwarded-For: {IR_CLIENT}\r\n"
                             "Connection: close\r\n\r\n").encode("latin-1"))
    assert code == 400 and decision_count(database(gate)) == before, (code, body)


@pytest.mark.parametrize("target", ["/auth", "/metrics"])
def test_a_repeated_host_is_400_under_both_servers(gate: GateProcess, target: str) -> None:
    before = decision_count(database(gate))
    code, body = _raw(gate, (f"GET {target} HTTP/1.1\r\nHost: gate\r\nHost: other\r\nX-Original-URI: {CHAT}\r\n"
                             f"X-Forwarded-For: {IR_CLIENT}\r\nConnection: close\r\n\r\n").encode())
    assert code == 400 and b"more than one Host header" in body, (code, body)
    assert decision_count(database(gate)) == before


def test_store_failure_refuses_then_recovers(server: str, tmp_path: Path) -> None:
    with _start(tmp_path / "gate", server) as process:
        assert nginx_auth(process, CHAT).status == 200
        with StoreFault(database(process)):
            r = nginx_auth(process, CHAT)
            assert r.status == 503 and b"could not be recorded" in r.body
            assert process.get("/readyz").status == 503
        r = nginx_auth(process, CHAT)
        assert r.status == 200
        committed(process, r)


def test_tells_systemd_it_is_ready(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/systemd runs the gate as Type=notify: gunicorn's master notifies; granian does not, so the gate
    does once it listens."""
    import socket

    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    with _start(tmp_path / "gate", server) as process:
        message = listener.recv(256)
        assert message.split(b"\n")[0] == b"READY=1"
        assert process.get("/healthz").status == 200
    listener.close()


def test_head_and_pipelined_requests_on_one_connection(gate: GateProcess) -> None:
    """A HEAD answer carries the page's headers without its body; the next request on the connection is intact."""
    import socket

    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as conn:
        conn.sendall((f"HEAD /auth HTTP/1.1\r\nHost: gate\r\nX-Forwarded-Uri: {CRYPTO}\r\n"
                      f"X-Forwarded-For: {IR_CLIENT}\r\n\r\n"
                      f"GET /auth HTTP/1.1\r\nHost: gate\r\nX-Original-URI: {CHAT}\r\n"
                      f"X-Forwarded-For: {IR_CLIENT}\r\n\r\n").encode())
        data = b""
        while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"\r\n\r\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    head, second = data.split(b"HTTP/1.1 200 OK", 1)
    assert head.startswith(b"HTTP/1.1 451 ")
    assert b"content-length: " in head.lower() and head.endswith(b"\r\n\r\n")  # no body after the headers
    assert b"x-exportgate-decision: allow" in second.lower()


def test_fail_open_serves_when_the_store_fails_and_says_so(server: str, tmp_path: Path) -> None:
    directory = tmp_path / "gate"
    directory.mkdir()
    config = write_config(directory, serve={"fail_open": True})
    with GateProcess(workdir=directory, config=config, server=server) as process:
        with StoreFault(database(process)):
            allowed = nginx_auth(process, CHAT)
            blocked = nginx_auth(process, CRYPTO)
        # Served without a record (the operator chose availability), but never turned into an allow.
        assert allowed.status == 200 and allowed.header("X-Exportgate-Decision") == "allow"
        assert blocked.status == 403 and blocked.header("X-Exportgate-Decision") == "block"
        assert decision_record(database(process), allowed.header("X-Exportgate-Decision-Id") or "") is None
        assert "serving anyway (fail_open)" in process.log_text()
        metrics = process.get("/metrics").text
        assert "exportgate_record_failures_total 2.0" in metrics


def test_an_encoded_question_mark_after_auth_is_neither_endpoint_nor_page(gate: GateProcess) -> None:
    before = decision_count(database(gate))
    r = gate.get("/auth%3Fz", headers={"X-Original-URI": CHAT, "X-Forwarded-For": IR_CLIENT})
    assert r.status == 404
    assert decision_count(database(gate)) == before


@pytest.mark.parametrize("target", ["/healthz%3Fx", "/exportgate/policy%3F", "/metrics%3Fa=b?c=d", "/caf%C3%A9",
                                    "/%FF%FE"])
def test_encoded_question_marks_and_odd_bytes_in_page_paths_are_no_page(gate: GateProcess, target: str) -> None:
    # Decoded once: "/healthz?x" is a path, not /healthz with a query string, and no page has it.
    assert gate.get(target).status == 404


def test_gate_pages_ignore_request_bodies(gate: GateProcess) -> None:
    r = gate.get("/healthz", method="POST", headers={"Content-Length": "5"})  # announced, never sent
    assert r.status == 200


def test_the_envoy_form_is_reported_once_in_the_log_under_granian(tmp_path: Path) -> None:
    require(importlib.util.find_spec("granian") is not None, "granian", "pip install -e . (granian is a dependency)")
    with _start(tmp_path / "gate", "granian") as process:
        for _ in range(3):
            assert process.get("/auth" + CHAT, headers={"X-Forwarded-For": IR_CLIENT}).status == 400
        assert process.log_text().count("serve Envoy with --server gunicorn") == 1


@pytest.fixture(scope="module")
def forwarded_gate(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateProcess]:
    """Trusting RFC 7239 ``Forwarded`` from the front end instead of X-Forwarded-For."""
    directory = tmp_path_factory.mktemp(f"loop-forwarded-{server}")
    config = write_config(directory, serve={"forwarded_header": "forwarded"})
    with GateProcess(workdir=directory, config=config, server=server) as process:
        yield process


@pytest.mark.parametrize(("lines", "decision"), [
    pytest.param([f"for={IR_CLIENT}"], "block", id="plain"),
    pytest.param([f'for="{IR_CLIENT}:4711"'], "block", id="quoted with port"),
    pytest.param([f"for={US_CLIENT}", f"for={IR_CLIENT}"], "block", id="two lines: rightmost counts"),
    pytest.param([f"for={IR_CLIENT};proto=https, for={US_CLIENT}"], "allow", id="list: rightmost is the US client"),
    pytest.param(['for="[::ffff:192.0.2.10]"'], "block", id="bracketed IPv4-mapped IPv6"),
    pytest.param(["for=_hidden"], "flag", id="obfuscated: unknown, flagged"),
    pytest.param(["for="], "flag", id="empty: unknown, flagged"),
    pytest.param(["garbage;;;=="], "flag", id="unparseable: unknown, flagged"),
])
def test_forwarded_header_through_rsgi(forwarded_gate: GateProcess, lines: list[str], decision: str) -> None:
    headers = [("X-Original-URI", CRYPTO), ("X-Forwarded-For", US_CLIENT)]  # XFF is not the configured header
    headers += [("Forwarded", line) for line in lines]
    r = forwarded_gate.get("/auth", headers=headers)
    assert r.header("X-Exportgate-Decision") == decision, r
    assert r.status == (403 if decision == "block" else 200)
    committed(forwarded_gate, r)


@pytest.mark.parametrize("xff", ["::ffff:192.0.2.10", "2002:c000:020a::1", "64:ff9b::192.0.2.10"])
def test_embedded_iranian_addresses_are_located_through_rsgi(gate: GateProcess, xff: str) -> None:
    r = nginx_auth(gate, CRYPTO, client=xff)
    assert r.status == 403, (xff, r)
