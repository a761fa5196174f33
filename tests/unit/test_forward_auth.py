"""The forward-auth endpoint and the gate's own pages, through werkzeug's test client (no server, real store).

Every test builds the real app (``create_app``) from a gate.yaml with the test overrides and manifest and a SQLite
store in a temporary directory. The WSGI peer is 127.0.0.1 (the front end) unless a test says otherwise; the gate
trusts only 127.0.0.1/32. A failing record store is the real SQLite store refusing inserts (a trigger), not a mock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import Client, TestResponse

from conftest import CU_CLIENT, IR_CLIENT, SD_CLIENT, US_CLIENT, write_config
from exportgate.config import load_config
from exportgate.web.app import GateApp, create_app
from integration.serverproc import StoreFault, decision_count, decision_record

FRONT_END = "127.0.0.1"
CRYPTO = "/files/crypto-1.tar.gz"
CHAT = "/files/chat-1.tar.gz"

AppFactory = Callable[..., tuple[GateApp, Client, Path]]


def open_gate(directory: Path, **serve: Any) -> tuple[GateApp, Client, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    config = load_config(write_config(directory, serve={"trust_proxy": [f"{FRONT_END}/32"], **serve}), env={})
    app = create_app(config)
    return app, Client(app), directory / "records.db"


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[AppFactory]:
    """``make_app(**serve)`` -> (app, client, records.db) of its own, for tests that change settings or state."""
    opened: list[GateApp] = []

    def make(**serve: Any) -> tuple[GateApp, Client, Path]:
        gate = open_gate(tmp_path / f"gate{len(opened)}", **serve)
        opened.append(gate[0])
        return gate

    yield make
    for app in opened:
        app.runtime.close()


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GateApp, Client, Path]]:
    """One app with default settings, shared by the tests that only add decisions (counters keep moving)."""
    shared = open_gate(tmp_path_factory.mktemp("forward-auth"))
    yield shared
    shared[0].runtime.close()


def ask(client: Client, path: str = "/auth", *, headers: list[tuple[str, str]] | dict[str, str] | None = None,
        peer: str | None = FRONT_END, method: str = "GET") -> TestResponse:
    environ = {"REMOTE_ADDR": peer} if peer is not None else {}
    return client.open(path, method=method, headers=headers or {}, environ_base=environ)


def nginx(uri: str, client_ip: str = IR_CLIENT, **more: str) -> dict[str, str]:
    return {"X-Original-URI": uri, "X-Original-Method": more.pop("method", "GET"), "X-Forwarded-For": client_ip,
            **more}


def forwarded(uri: str, client_ip: str = IR_CLIENT, **more: str) -> dict[str, str]:
    return {"X-Forwarded-Uri": uri, "X-Forwarded-Method": more.pop("method", "GET"), "X-Forwarded-For": client_ip,
            **more}


def metric(client: Client, name: str, **labels: str) -> float:
    """A sample's value from /metrics (0 when absent)."""
    text = ask(client, "/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


# ------------------------------------------------------------------------------------------- header sources


@pytest.mark.parametrize(("path", "headers", "method", "status", "rule", "recorded_method"), [
    pytest.param("/auth", nginx(CHAT), "GET", 200, "ir-personal-comms-software", "GET", id="nginx allow"),
    pytest.param("/auth", nginx(CRYPTO), "GET", 403, "ir-other-software", "GET", id="nginx block is 403"),
    pytest.param("/auth", nginx(CRYPTO, method="HEAD"), "GET", 403, "ir-other-software", "HEAD",
                 id="nginx HEAD"),
    pytest.param("/auth", nginx(CRYPTO, method="POST"), "GET", 403, "ir-other-software", "POST",
                 id="nginx POST"),
    pytest.param("/auth", {"X-Original-URI": CRYPTO, "X-Forwarded-For": IR_CLIENT}, "GET", 403,
                 "ir-other-software", "GET", id="nginx without method is GET"),
    pytest.param("/auth", forwarded(CHAT), "GET", 200, "ir-personal-comms-software", "GET", id="traefik allow"),
    pytest.param("/auth", forwarded(CRYPTO), "GET", 451, "ir-other-software", "GET", id="traefik block is 451"),
    pytest.param("/auth", forwarded(CRYPTO, method="HEAD"), "GET", 451, "ir-other-software", "HEAD",
                 id="caddy HEAD"),
    pytest.param("/auth", {**nginx(CRYPTO), "X-Forwarded-Uri": CRYPTO}, "GET", 403, "ir-other-software", "GET",
                 id="both headers agreeing"),
    pytest.param("/auth" + CRYPTO, {"X-Forwarded-For": IR_CLIENT}, "GET", 451, "ir-other-software", "GET",
                 id="envoy path"),
    pytest.param("/auth" + CRYPTO, {"X-Forwarded-For": IR_CLIENT}, "POST", 451, "ir-other-software", "POST",
                 id="envoy POST"),
    pytest.param("/auth" + CHAT, {"X-Forwarded-For": IR_CLIENT}, "HEAD", 200, "ir-personal-comms-software",
                 "HEAD", id="envoy HEAD"),
    pytest.param("/auth" + CRYPTO, {"X-Forwarded-For": IR_CLIENT, "X-Forwarded-Uri": CRYPTO}, "GET", 451,
                 "ir-other-software", "GET", id="envoy path and header agreeing"),
])
def test_every_header_source(gate: tuple[GateApp, Client, Path], path: str, headers: dict[str, str], method: str,
                             status: int, rule: str, recorded_method: str) -> None:
    _, client, database = gate
    r = ask(client, path, headers=headers, method=method)
    assert r.status_code == status
    assert r.headers["X-Exportgate-Rule"] == rule
    assert r.headers["Cache-Control"] == "no-store"
    record = decision_record(database, r.headers["X-Exportgate-Decision-Id"])
    assert record is not None
    assert record["request"]["method"] == recorded_method  # type: ignore[index]
    assert record["request"]["client"] == IR_CLIENT  # type: ignore[index]
    if status == 200:
        assert r.headers["X-Exportgate-Decision"] == "allow"
        assert r.get_data() == b""
    else:
        assert r.headers["X-Exportgate-Decision"] == "block"
        assert r.headers["Link"] == '</exportgate/policy>; rel="blocked-by"'


@pytest.mark.parametrize(("path", "headers", "status", "message"), [
    pytest.param("/auth", {"X-Forwarded-For": IR_CLIENT}, 400, "missing X-Original-URI", id="no URI at all"),
    pytest.param("/auth", {"X-Original-Method": "GET"}, 400, "missing X-Original-URI", id="method only"),
    pytest.param("/auth", {"X-Original-URI": CHAT, "X-Forwarded-Uri": CRYPTO}, 400, "disagree",
                 id="X-Original-URI and X-Forwarded-Uri disagree"),
    pytest.param("/auth", {"X-Original-URI": CRYPTO, "X-Forwarded-Uri": CRYPTO + "?x"}, 400, "disagree",
                 id="disagree only in the query"),
    pytest.param("/auth" + CRYPTO, {"X-Forwarded-Uri": CHAT}, 400, "disagree", id="envoy path vs header"),
    pytest.param("/auth" + CRYPTO, {"X-Original-URI": CHAT}, 400, "disagree", id="envoy path vs nginx header"),
    pytest.param("/auth", {"X-Original-URI": ""}, 400, "not-absolute", id="empty URI"),
    pytest.param("/auth", {"X-Original-URI": "files/chat-1.tar.gz"}, 400, "not-absolute", id="relative URI"),
    pytest.param("/auth", {"X-Original-URI": "http://mirror/files/chat-1.tar.gz"}, 400, "not-absolute",
                 id="absolute-form URI"),
    pytest.param("/auth", {"X-Original-URI": "/files%2fcrypto-1.tar.gz"}, 400, "encoded-slash", id="%2f"),
    pytest.param("/auth", {"X-Original-URI": "/files/..%5ccrypto-1.tar.gz"}, 400, "encoded-backslash",
                 id="%5c"),
    pytest.param("/auth", {"X-Original-URI": "/files/chat-\\..\\crypto-1.tar.gz"}, 400, "backslash",
                 id="raw backslash"),
    pytest.param("/auth", {"X-Original-URI": "/../files/crypto-1.tar.gz"}, 400, "escapes-root", id="above root"),
    pytest.param("/auth", {"X-Original-URI": "/files/%zzcrypto"}, 400, "bad-percent-encoding", id="bad escape"),
    pytest.param("/auth", {"X-Original-URI": "/files/%ff"}, 400, "not-utf8", id="not UTF-8"),
    pytest.param("/auth", {"X-Original-URI": "/" + "a" * 9000}, 414, "too long", id="huge URI"),
    pytest.param("/", {"X-Original-URI": CRYPTO}, 404, "ask /auth", id="not /auth"),
    pytest.param("/authx", {"X-Original-URI": CRYPTO}, 404, "ask /auth", id="/auth prefix only"),
])
def test_requests_the_gate_will_not_guess_at(gate: tuple[GateApp, Client, Path], path: str,
                                             headers: dict[str, str], status: int, message: str) -> None:
    _, client, _ = gate
    r = ask(client, path, headers=headers)
    assert r.status_code == status
    assert message in r.get_data(as_text=True)
    assert "X-Exportgate-Decision" not in r.headers
    assert r.headers["Cache-Control"] == "no-store"


def test_a_header_a_server_saw_twice_is_400_without_a_record(gate: tuple[GateApp, Client, Path]) -> None:
    """The event-loop servers list the headers naming the request that came twice; ForwardAuth refuses them."""
    from exportgate.web.forwardauth import REPEATED_KEY

    app, _, database = gate
    before = decision_count(database)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/auth", "REMOTE_ADDR": FRONT_END,
               "HTTP_X_ORIGINAL_URI": "/packages/aa/cryptopkg-1.0.tar.gz,/packages/bb/chatpkg-1.0.tar.gz",
               "HTTP_X_FORWARDED_FOR": IR_CLIENT, REPEATED_KEY: ["X-Original-URI"]}
    facts, status, text = app.forward_auth.request(environ)
    assert facts is None and status.startswith("400") and "more than one X-Original-URI header" in text
    assert decision_count(database) == before


def test_envoy_path_needs_the_raw_request_target(gate: tuple[GateApp, Client, Path]) -> None:
    """PATH_INFO is decoded once already; without RAW_URI/REQUEST_URI the gate refuses rather than decode twice."""
    app, _, _ = gate
    statuses: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/auth/files/%2e%2e/files/crypto-1.tar.gz",
               "REMOTE_ADDR": FRONT_END, "HTTP_X_FORWARDED_FOR": IR_CLIENT, "wsgi.input": None}
    body = b"".join(app(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["400 Bad Request"]
    assert b"raw request target" in body


# -------------------------------------------------------------------------------------------- client address


@pytest.mark.parametrize(("peer", "xff", "rule", "client"), [
    # The front end is trusted: the rightmost address it did not add is the client.
    pytest.param(FRONT_END, [IR_CLIENT], "ir-other-software", IR_CLIENT, id="trusted front end"),
    pytest.param(FRONT_END, [f"{US_CLIENT}, {IR_CLIENT}"], "ir-other-software", IR_CLIENT,
                 id="client-written entry on the left is ignored"),
    pytest.param(FRONT_END, [US_CLIENT, IR_CLIENT], "ir-other-software", IR_CLIENT,
                 id="two header lines, read in order"),
    pytest.param(FRONT_END, [IR_CLIENT, US_CLIENT], "not-a-sanctioned-destination", US_CLIENT,
                 id="two header lines, other order"),
    pytest.param(FRONT_END, [f"{IR_CLIENT}, {FRONT_END}"], "ir-other-software", IR_CLIENT,
                 id="trusted hop skipped"),
    pytest.param(FRONT_END, ["x" * 20000 + f", {SD_CLIENT}"], "sd-other-software", SD_CLIENT,
                 id="huge client-written junk left of the client"),
    pytest.param(FRONT_END, [", ".join([US_CLIENT] + [FRONT_END] * 70)], "unknown-location", None,
                 id="more trusted hops than allowed is unknown"),
    pytest.param(FRONT_END, ["unknown"], "unknown-location", None, id="obfuscated is unknown"),
    pytest.param(FRONT_END, ["not-an-address"], "unknown-location", None, id="garbage is unknown"),
    # Untrusted peers: their X-Forwarded-For is ignored, whatever it says.
    pytest.param(IR_CLIENT, [US_CLIENT], "ir-other-software", IR_CLIENT, id="spoofed XFF from untrusted peer"),
    pytest.param(CU_CLIENT, [f"{US_CLIENT}, {FRONT_END}"], "cu-software-pending-commerce", CU_CLIENT,
                 id="spoofed trusted chain from untrusted peer"),
    pytest.param(IR_CLIENT, ["garbage"], "ir-other-software", IR_CLIENT,
                 id="untrusted peer cannot make itself unknown"),
])
def test_client_address(gate: tuple[GateApp, Client, Path], peer: str, xff: list[str], rule: str,
                        client: str | None) -> None:
    _, web, database = gate
    headers = [("X-Original-URI", CRYPTO)] + [("X-Forwarded-For", v) for v in xff]
    r = ask(web, headers=headers, peer=peer)
    assert r.headers["X-Exportgate-Rule"] == rule
    record = decision_record(database, r.headers["X-Exportgate-Decision-Id"])
    assert record is not None
    if client is not None:
        assert record["request"]["client"] == client  # type: ignore[index]
    else:
        assert record["location"]["country"] is None  # type: ignore[index]


@pytest.mark.parametrize("forwarded_header", ["x-forwarded-for", "forwarded"])
def test_a_trusted_front_end_that_names_no_client_is_400(make_app: AppFactory, forwarded_header: str) -> None:
    """Decided on, the request was located as the front end itself (loopback: unknown, so flagged and served):
    a front end that drops or never sends the configured header would serve everyone."""
    _, client, database = make_app(forwarded_header=forwarded_header)
    r = ask(client, headers={"X-Original-URI": CRYPTO})
    named = "X-Forwarded-For" if forwarded_header == "x-forwarded-for" else "Forwarded"
    assert r.status_code == 400 and f"the front end sent no {named}" in r.get_data(as_text=True)
    assert decision_count(database) == 0
    untrusted = ask(client, headers={"X-Original-URI": CRYPTO}, peer=IR_CLIENT)  # a peer not trusted is the client
    assert untrusted.headers["X-Exportgate-Rule"] == "ir-other-software"


def test_huge_header_values(gate: tuple[GateApp, Client, Path]) -> None:
    _, client, _ = gate
    r = ask(client, headers={**nginx(CRYPTO), "X-Forwarded-Host": "h" * 10000, "Accept": "a/b, " * 2000,
                             "User-Agent": "u" * 20000})
    assert r.status_code == 403
    assert r.headers["X-Exportgate-Rule"] == "ir-other-software"


# ------------------------------------------------------------------------------------------------ paths


@pytest.mark.parametrize(("uri", "rule"), [
    pytest.param(CRYPTO, "ir-other-software", id="plain"),
    pytest.param("/files/%2e%2e/files/crypto-1.tar.gz", "ir-other-software", id="encoded dot-dot"),
    pytest.param("/files/%2E%2e/files/crypto-1.tar.gz", "ir-other-software", id="mixed case dot-dot"),
    pytest.param("/files/a/../crypto-1.tar.gz", "ir-other-software", id="dot-dot"),
    pytest.param("/files//crypto-1.tar.gz", "ir-other-software", id="double slash"),
    pytest.param("///files///crypto-1.tar.gz", "ir-other-software", id="many slashes"),
    pytest.param("/files/./crypto-1.tar.gz", "ir-other-software", id="dot segment"),
    pytest.param("/files/%2e/crypto-1.tar.gz", "ir-other-software", id="encoded dot segment"),
    pytest.param("/files/%63rypto-1.tar.gz", "ir-other-software", id="encoded letter"),
    pytest.param("/%66%69%6c%65%73/%63%72%79%70%74%6f-1.tar.gz", "ir-other-software", id="all encoded"),
    pytest.param(CRYPTO + "?token=abc&file=/files/chat-1.tar.gz", "ir-other-software", id="query"),
    pytest.param(CRYPTO + "#/files/chat-1.tar.gz", "ir-other-software", id="fragment"),
    # Decoded exactly once: %252e is the file name text "%2e", not a dot segment.
    pytest.param("/files/%252e%252e/files/crypto-1.tar.gz", "unclassified-to-sanctioned", id="double-encoded"),
    pytest.param(CRYPTO + "/", "unclassified-to-sanctioned", id="trailing slash is a directory"),
    pytest.param("/files/CRYPTO-1.tar.gz", "unclassified-to-sanctioned", id="case matters"),
    pytest.param("/files/crypto-1.tar.gz;jsessionid=1", "unclassified-to-sanctioned", id="path parameter"),
])
@pytest.mark.parametrize("style", ["nginx", "forwarded", "envoy"])
def test_path_variants(gate: tuple[GateApp, Client, Path], uri: str, rule: str, style: str) -> None:
    _, client, database = gate
    if style == "envoy":
        r = ask(client, "/auth" + uri, headers={"X-Forwarded-For": IR_CLIENT})
    else:
        r = ask(client, headers=nginx(uri) if style == "nginx" else forwarded(uri))
    assert r.status_code == (403 if style == "nginx" else 451)
    assert r.headers["X-Exportgate-Rule"] == rule
    record = decision_record(database, r.headers["X-Exportgate-Decision-Id"])
    assert record is not None
    if rule == "ir-other-software":
        assert record["request"]["path"] == CRYPTO  # type: ignore[index]


@pytest.mark.parametrize("uri", [
    pytest.param("/FILES/CRYPTO-1.TAR.GZ", id="upper"),
    pytest.param("/Files/./Crypto-1.tar.gz", id="mixed, dot segment"),
])
@pytest.mark.parametrize("style", ["nginx", "forwarded", "envoy"])
def test_case_variants_with_case_insensitive_paths(tmp_path: Path, uri: str, style: str) -> None:
    """For a case-insensitive origin every spelling the origin opens as the restricted file is that file."""
    config = load_config(write_config(tmp_path, case_insensitive_paths=True,
                                      serve={"trust_proxy": [f"{FRONT_END}/32"]}), env={})
    app = create_app(config)
    try:
        client = Client(app)
        if style == "envoy":
            r = ask(client, "/auth" + uri, headers={"X-Forwarded-For": IR_CLIENT})
        else:
            r = ask(client, headers=nginx(uri) if style == "nginx" else forwarded(uri))
        assert r.status_code == (403 if style == "nginx" else 451)
        assert r.headers["X-Exportgate-Rule"] == "ir-other-software"
        record = decision_record(tmp_path / "records.db", r.headers["X-Exportgate-Decision-Id"])
        assert record is not None and record["request"]["path"] == CRYPTO  # type: ignore[index]
    finally:
        app.runtime.close()


@pytest.mark.parametrize("uri", [
    pytest.param("/file%C5%BF/crypto-1.tar.gz", id="long s"),
    pytest.param("/f%C4%B1les/CRYPTO-1.tar.gz", id="dotless i"),
    pytest.param("/files/cry%C3%9Fpto-1.tar.gz", id="sharp s"),
])
def test_a_letter_file_systems_fold_differently_is_400_for_a_case_insensitive_origin(tmp_path: Path, uri: str) -> None:
    """NTFS's upcase table, APFS's folding and lower() disagree on ſ, ı, ß…: one origin opens the restricted file,
    another a different one. No guess is safe, so the gate decides on neither."""
    config = load_config(write_config(tmp_path, case_insensitive_paths=True,
                                      serve={"trust_proxy": [f"{FRONT_END}/32"]}), env={})
    app = create_app(config)
    try:
        r = ask(Client(app), headers=nginx(uri))
        assert r.status_code == 400 and b"rejected path: case-ambiguous" in r.get_data()
        assert decision_count(tmp_path / "records.db") == 0
    finally:
        app.runtime.close()


# -------------------------------------------------------------------------------------------- the 451 page


@pytest.mark.parametrize(("accept", "json_wanted"), [
    pytest.param(None, False, id="no Accept"),
    pytest.param("*/*", False, id="anything"),
    pytest.param("text/html,application/xhtml+xml,*/*;q=0.8", False, id="browser"),
    pytest.param("application/json", True, id="json"),
    pytest.param("application/problem+json", True, id="problem json"),
    pytest.param("application/json;q=0.1, text/html", False, id="html preferred"),
    pytest.param("text/html;q=0.5, application/json", True, id="json preferred"),
])
def test_451_page_by_accept(gate: tuple[GateApp, Client, Path], accept: str | None, json_wanted: bool) -> None:
    _, client, _ = gate
    r = ask(client, headers={**forwarded(CRYPTO), **({"Accept": accept} if accept else {})})
    assert r.status_code == 451
    decision_id = r.headers["X-Exportgate-Decision-Id"]
    assert int(r.headers["Content-Length"]) == len(r.get_data())
    if json_wanted:
        assert r.mimetype == "application/json"
        page = json.loads(r.get_data())
        assert page["status"] == 451 and page["rule"] == "ir-other-software"
        assert page["decision_id"] == decision_id and page["blocked_by"] == "Test Mirror Operator"
        assert page["contact"] == "compliance@example.org" and page["location"] == "IR"
    else:
        assert r.mimetype == "text/html"
        text = r.get_data(as_text=True)
        assert "451 Unavailable For Legal Reasons" in text and "ir-other-software" in text
        assert decision_id in text and "mailto:compliance@example.org" in text


@pytest.mark.parametrize(("block_status", "headers", "status"), [
    pytest.param("auto", nginx(CRYPTO), 403, id="auto nginx"),
    pytest.param("auto", forwarded(CRYPTO), 451, id="auto forwarded"),
    pytest.param("403", nginx(CRYPTO), 403, id="403 nginx"),
    pytest.param("403", forwarded(CRYPTO), 403, id="403 forwarded"),
    pytest.param("451", nginx(CRYPTO), 451, id="451 nginx"),
    pytest.param("451", forwarded(CRYPTO), 451, id="451 forwarded"),
])
def test_block_status(make_app: AppFactory, block_status: str, headers: dict[str, str], status: int) -> None:
    _, client, _ = make_app(block_status=block_status)
    r = ask(client, headers=headers)
    assert r.status_code == status
    assert r.headers["X-Exportgate-Decision"] == "block"
    assert b"Unavailable For Legal Reasons" in r.get_data()
    # An allowed download is 200 whatever block_status says.
    assert ask(client, headers={**headers, "X-Original-URI": CHAT} if "X-Original-URI" in headers
               else {**headers, "X-Forwarded-Uri": CHAT}).status_code == 200


def test_the_blocked_page_names_the_region_a_block_is_about(gate: tuple[GateApp, Client, Path]) -> None:
    """A block for Crimea (UA-43, restricted on its own) said the client was in UA, which the packs allow."""
    _, client, _ = gate
    crimea = "192.0.2.50"
    direct = ask(client, headers={**forwarded(CRYPTO, crimea), "Accept": "application/json"})
    assert direct.status_code == 451 and json.loads(direct.get_data())["location"] == "UA-43"
    decision_id = ask(client, headers=nginx(CRYPTO, crimea)).headers["X-Exportgate-Decision-Id"]
    page = ask(client, f"/exportgate/blocked/{decision_id}", headers={"Accept": "application/json"})
    assert page.status_code == 451 and json.loads(page.get_data())["location"] == "UA-43"


def test_blocked_page_of_a_recorded_block(gate: tuple[GateApp, Client, Path]) -> None:
    _, client, _ = gate
    decision_id = ask(client, headers=nginx(CRYPTO)).headers["X-Exportgate-Decision-Id"]
    r = ask(client, f"/exportgate/blocked/{decision_id}")
    assert r.status_code == 451
    assert r.headers["X-Exportgate-Decision"] == "block"
    assert r.headers["X-Exportgate-Decision-Id"] == decision_id
    assert r.headers["X-Exportgate-Rule"] == "ir-other-software"
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["Link"] == '</exportgate/policy>; rel="blocked-by"'
    text = r.get_data(as_text=True)
    assert "ir-other-software" in text and "31 CFR" in text and decision_id in text
    page = json.loads(ask(client, f"/exportgate/blocked/{decision_id}",
                          headers={"Accept": "application/json"}).get_data())
    assert page["rule"] == "ir-other-software" and page["path"] == CRYPTO and page["location"] == "IR"
    head = ask(client, f"/exportgate/blocked/{decision_id}", method="HEAD")
    assert head.status_code == 451 and head.get_data() == b""


@pytest.mark.parametrize(("headers", "status"), [
    pytest.param(nginx(CHAT), 404, id="an allow"),
    pytest.param(nginx(CRYPTO, client_ip="198.51.100.7"), 404, id="a flag"),
])
def test_blocked_page_of_a_decision_that_served(gate: tuple[GateApp, Client, Path], headers: dict[str, str],
                                                status: int) -> None:
    _, client, _ = gate
    decision_id = ask(client, headers=headers).headers["X-Exportgate-Decision-Id"]
    r = ask(client, f"/exportgate/blocked/{decision_id}")
    assert r.status_code == status
    assert "X-Exportgate-Decision" not in r.headers


@pytest.mark.parametrize(("decision_id", "status"), [
    # Well formed but not in the store (another replica's store, or a store that could not be read): still a
    # refusal, shown without details.
    pytest.param("0123456789ab-ffff", 451, id="unknown id"),
    pytest.param("<script>alert(1)</script>", 404, id="markup"),
    pytest.param("a" * 129, 404, id="too long"),
    pytest.param("", 404, id="empty"),
    pytest.param("-leading-dash", 404, id="leading dash"),
    pytest.param("x%0d%0aSet-Cookie:%20a=b", 404, id="header injection"),
])
def test_blocked_page_of_unknown_ids(gate: tuple[GateApp, Client, Path], decision_id: str, status: int) -> None:
    _, client, _ = gate
    r = ask(client, f"/exportgate/blocked/{decision_id}")
    assert r.status_code == status
    assert "Set-Cookie" not in r.headers
    if status == 451:
        assert r.headers["X-Exportgate-Decision-Id"] == decision_id
        assert "X-Exportgate-Rule" not in r.headers
        page = r.get_data(as_text=True)
        assert "see the operator&#x27;s policy" in page
        assert "None" not in page and "record could not be read" in page  # not "Rule None in pack None"


# ---------------------------------------------------------------------------------------- health, metrics


def test_health_readiness_and_policy(gate: tuple[GateApp, Client, Path]) -> None:
    _, client, _ = gate
    health = ask(client, "/healthz")
    assert (health.status_code, health.get_data()) == (200, b"ok\n")
    ready = ask(client, "/readyz")
    assert ready.status_code == 200
    checks = json.loads(ready.get_data())["checks"]
    assert checks["geo"]["ok"] and checks["policy"]["ok"] and checks["records"]["ok"]
    assert checks["policy"]["pack"].startswith("us-2022-02-21-covered-regions@")  # in force today
    policy = json.loads(ask(client, "/exportgate/policy").get_data())
    assert policy["operator"] == "Test Mirror Operator"
    assert all("file" not in p for p in policy["packs"])  # no server paths on a public page


def test_metrics_move(make_app: AppFactory) -> None:
    _, client, _ = make_app()
    block = {"action": "block", "rule": "ir-other-software", "mode": "enforce"}
    allow = {"action": "allow", "rule": "ir-personal-comms-software", "mode": "enforce"}
    assert metric(client, "exportgate_decisions_total", **block) == 0
    for _ in range(3):
        ask(client, headers=nginx(CRYPTO))
    ask(client, headers=forwarded(CHAT))
    ask(client, headers={"X-Forwarded-For": IR_CLIENT})
    ask(client, headers={"X-Original-URI": "/a%2fb"})
    ask(client, headers={"X-Original-URI": "/" + "a" * 9000})
    assert metric(client, "exportgate_decisions_total", **block) == 3
    assert metric(client, "exportgate_decisions_total", **allow) == 1
    assert metric(client, "exportgate_rejected_requests_total", reason="headers") == 1
    assert metric(client, "exportgate_rejected_requests_total", reason="path") == 2
    assert metric(client, "exportgate_record_failures_total") == 0
    assert metric(client, "exportgate_record_store_healthy") == 1
    assert metric(client, "exportgate_geo_database_stale") == 0


# ------------------------------------------------------------------------------------- store failures


def test_store_failure_refuses_and_readiness_says_so(make_app: AppFactory) -> None:
    _, client, database = make_app()
    with StoreFault(database):
        for headers in (nginx(CHAT), forwarded(CHAT), nginx(CRYPTO), forwarded(CRYPTO, client_ip=US_CLIENT)):
            r = ask(client, headers=headers)
            assert r.status_code == 503
            assert b"could not be recorded" in r.get_data()
            assert "X-Exportgate-Decision" not in r.headers
        ready = ask(client, "/readyz")
        assert ready.status_code == 503
        assert json.loads(ready.get_data())["checks"]["records"]["ok"] is False
        assert metric(client, "exportgate_record_failures_total") == 4
        assert metric(client, "exportgate_record_store_healthy") == 0
    r = ask(client, headers=nginx(CHAT))
    assert r.status_code == 200
    assert decision_record(database, r.headers["X-Exportgate-Decision-Id"]) is not None
    assert ask(client, "/readyz").status_code == 200


@pytest.mark.parametrize(("headers", "status", "decision"), [
    pytest.param(nginx(CHAT), 200, "allow", id="allow served unrecorded"),
    pytest.param(forwarded(CRYPTO, client_ip=US_CLIENT), 200, "allow", id="US served unrecorded"),
    pytest.param(nginx(CRYPTO), 403, "block", id="block still blocked (nginx)"),
    pytest.param(forwarded(CRYPTO), 451, "block", id="block still blocked (451)"),
])
def test_fail_open(make_app: AppFactory, headers: dict[str, str], status: int, decision: str,
                   caplog: pytest.LogCaptureFixture) -> None:
    _, client, database = make_app(fail_open=True)
    with StoreFault(database), caplog.at_level("ERROR", logger="exportgate.web"):
        r = ask(client, headers=headers)
        assert r.status_code == status
        assert r.headers["X-Exportgate-Decision"] == decision
        assert metric(client, "exportgate_record_failures_total") == 1
    decision_id = r.headers["X-Exportgate-Decision-Id"]
    assert decision_record(database, decision_id) is None  # it was never recorded
    # ...so the log holds the whole decision, under the id the front end logged with the download.
    [line] = [m for m in caplog.messages if "unrecorded decision" in m]
    assert ("serving anyway (fail_open)" if decision != "block" else "blocked all the same") in line
    logged = json.loads(line.split("unrecorded decision ", 1)[1])
    assert logged["id"] == decision_id
    assert logged["enforced"] == decision
    assert logged["rule"] == r.headers["X-Exportgate-Rule"]
    assert logged["request"]["path"] and logged["location"]["country"]


def test_an_authorization_added_or_revoked_reaches_a_running_gate(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``exportgate authorize`` writes to the store from another process; a worker that read the authorizations
    once at start went on allowing under a revoked license until it was restarted."""
    import time

    from click.testing import CliRunner

    from exportgate import runtime
    from exportgate.cli import main

    monkeypatch.setattr(runtime, "AUTHORIZATION_POLL", 0.05)
    app, client, _ = open_gate(tmp_path / "gate")
    config = str(tmp_path / "gate" / "gate.yaml")

    def decided(expected: str) -> dict[str, str]:
        deadline = time.monotonic() + 10
        while True:
            r = ask(client, headers=nginx(CHAT, CU_CLIENT))
            if r.headers["X-Exportgate-Decision"] == expected or time.monotonic() > deadline:
                return dict(r.headers)
            time.sleep(0.02)

    def cli(*args: str) -> None:
        result = CliRunner().invoke(main, ["--config", config, *args], env={})
        assert result.exit_code == 0, result.output

    try:
        assert decided("block")["X-Exportgate-Rule"] == "cu-software-pending-commerce"
        cli("authorize", "add", "--id", "BIS-CU-9", "--basis", "BIS license D999", "--destination", "CU",
            "--class", "personal-communications", "--valid-from", "2010-01-01")
        assert decided("allow")["X-Exportgate-Decision"] == "allow"
        cli("authorize", "revoke", "BIS-CU-9", "--reason", "license withdrawn")
        assert decided("block")["X-Exportgate-Decision"] == "block"
    finally:
        app.runtime.close()


def test_readiness_recovers_without_a_download_once_the_store_can_write(make_app: AppFactory,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # A load balancer that drains the gate on 503 sends it no download: readiness must see the store heal by itself.
    from exportgate.web import app as app_module

    monkeypatch.setattr(app_module, "PROBE_EVERY", 0.0)
    _, client, database = make_app()
    with StoreFault(database):
        assert ask(client, headers=nginx(CHAT)).status_code == 503
        assert ask(client, "/readyz").status_code == 503
    ready = ask(client, "/readyz")
    assert ready.status_code == 200
    assert json.loads(ready.get_data())["checks"]["records"]["ok"] is True
    assert decision_count(database) == 0  # the probe kept nothing


def test_readiness_probes_the_store_at_most_every_few_seconds(make_app: AppFactory) -> None:
    """Each probe is a write transaction; /readyz and /metrics answered anyone with one each while the store was
    unhealthy, taking the store's lock from the records."""
    app, client, database = make_app()
    probes = 0
    probe = app.runtime.store.check_writable

    def counted() -> None:
        nonlocal probes
        probes += 1
        probe()

    app.runtime.store.check_writable = counted  # type: ignore[method-assign]
    with StoreFault(database):
        assert ask(client, headers=nginx(CHAT)).status_code == 503
        for _ in range(20):
            assert ask(client, "/readyz").status_code == 503
            ask(client, "/metrics")
    assert probes == 1


def test_the_record_names_the_address_chain_and_the_hop_used(gate: tuple[GateApp, Client, Path]) -> None:
    # The peer (127.0.0.1) is a trusted proxy; the client prepended a spoofed entry, which is never used.
    _, client, database = gate
    r = ask(client, headers=nginx(CRYPTO, client_ip=f"{US_CLIENT}, {IR_CLIENT}"))
    assert r.status_code == 403
    record = decision_record(database, r.headers["X-Exportgate-Decision-Id"])
    assert record is not None
    request = record["request"]  # type: ignore[index]
    assert request["client"] == IR_CLIENT and request["client_source"] == "x-forwarded-for"
    assert request["client_hop"] == 1
    assert request["address_chain"] == [US_CLIENT, IR_CLIENT, "127.0.0.1"]


def test_a_client_the_geo_database_cannot_be_read_for_gets_no_decision(tmp_path: Path) -> None:
    """A corrupt record, or a database written over in place while in use: ``lookup-failed`` is a failure, not
    an unknown location. The shipped pack serves unknown locations (flagged), and a download to a sanctioned
    destination must never be served because something failed to read: 503, no record, counted."""
    from exportgate import geodata

    city = geodata.build(geodata.load_networks(Path(__file__).parents[2] / "geodata" / "networks.yaml"),
                         tmp_path / "City.mmdb", kind="City")
    data = bytearray(city.read_bytes())
    at = data.find(b"\x45Sudan")  # Sudan's record: its name turned into a data type that does not exist
    assert at > 0 and data.find(b"\x45Sudan", at + 1) == -1
    data[at] = 0x00
    broken = tmp_path / "Broken-City.mmdb"
    broken.write_bytes(bytes(data))
    config = load_config(write_config(tmp_path, geo={"database": str(broken)},
                                      serve={"trust_proxy": [f"{FRONT_END}/32"]}), env={})
    app = create_app(config)
    try:
        client = Client(app)
        refused = ask(client, headers=nginx(CRYPTO, "41.67.0.1"))
        assert refused.status_code == 503
        assert "geolocation database could not be read" in refused.get_data(as_text=True)
        assert ask(client, headers=nginx(CHAT, "41.67.0.1")).status_code == 503  # nothing is served
        assert decision_count(tmp_path / "records.db") == 0
        assert metric(client, "exportgate_rejected_requests_total", reason="no-decision") == 2
        assert ask(client, headers=nginx(CRYPTO, "2.176.0.1")).status_code == 403  # the rest of the file works
    finally:
        app.runtime.close()


def test_a_geo_file_that_does_not_load_shows_in_readiness_and_metrics(tmp_path: Path) -> None:
    """The data loaded before still answers (ready), and the error shows: /readyz read the wrong key, and no
    metric said it, so a truncated geoipupdate went unnoticed until the data was stale."""
    from exportgate import geodata

    database = geodata.build(geodata.load_networks(Path(__file__).parents[2] / "geodata" / "networks.yaml"),
                             tmp_path / "City.mmdb", kind="City")
    good = database.read_bytes()
    config = load_config(write_config(tmp_path, geo={"database": str(database)},
                                      serve={"trust_proxy": [f"{FRONT_END}/32"]}), env={})
    app = create_app(config)
    try:
        client = Client(app)
        assert metric(client, "exportgate_geo_database_reload_failed") == 0
        database.write_bytes(good[: len(good) // 2])
        app.runtime.gate.locator.source.reload()  # what the next check after the change does
        ready = ask(client, "/readyz")
        assert ready.status_code == 200
        geo = json.loads(ready.get_data())["checks"]["geo"]
        assert geo["ok"] is True and "City.mmdb" in geo["last_reload_error"]
        assert metric(client, "exportgate_geo_database_reload_failed") == 1
        assert ask(client, headers=nginx(CRYPTO, "2.176.0.1")).status_code == 403  # decided by the data it had
        database.write_bytes(good)
        app.runtime.gate.locator.source.reload()
        assert json.loads(ask(client, "/readyz").get_data())["checks"]["geo"]["last_reload_error"] is None
        assert metric(client, "exportgate_geo_database_reload_failed") == 0
    finally:
        app.runtime.close()


def test_forward_auth_without_trusted_proxies_says_so_at_start(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(write_config(tmp_path, serve={}), env={})
    with caplog.at_level("WARNING", logger="exportgate.web"):
        app = create_app(config)
    app.runtime.close()
    assert "forward-auth mode with no trust_proxy" in caplog.text


@pytest.mark.parametrize(("serve", "warned"), [
    pytest.param({"bind": "unix:/run/exportgate.sock", "trust_proxy": [f"{FRONT_END}/32"]}, "unix socket without 'unix'",
                 id="unix socket, unix not trusted"),
    pytest.param({"trust_proxy": ["0.0.0.0/0", "::/0"]}, "trusts every address", id="every address trusted"),
])
def test_settings_that_let_clients_choose_their_location_are_warned_of(tmp_path: Path, serve: dict[str, Any],
                                                                       warned: str,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(write_config(tmp_path, serve=serve), env={})
    with caplog.at_level("WARNING", logger="exportgate.web"):
        app = create_app(config)
    app.runtime.close()
    assert warned in caplog.text


@pytest.mark.parametrize("written", [
    f"{IR_CLIENT}:443", f"[::ffff:{IR_CLIENT}]:80", f"::ffff:{IR_CLIENT}", "fe80::1%eth0", "[2001:db8::1]:8080",
    "garbage", "_hidden", "unknown", f"{IR_CLIENT}:http", "[2001:db8::1",
])
def test_explain_answers_what_the_gate_answers_for_the_client_a_front_end_names(gate: Any, written: str) -> None:
    """`explain --ip` read ``2.176.0.1:443`` (as an access log writes it) as unparseable, a flag, where the gate
    reads the same X-Forwarded-For entry as an Iranian address and blocks."""
    from click.testing import CliRunner

    from exportgate.cli import main

    _, client, database = gate
    served = ask(client, headers=nginx(CRYPTO, written))
    record = decision_record(database, served.headers["X-Exportgate-Decision-Id"])
    config = database.parent / "gate.yaml"
    explained = CliRunner().invoke(main, ["--config", str(config), "explain", "--ip", written, "--path", CRYPTO,
                                          "--json"])
    assert explained.exit_code == 0, explained.output
    data = json.loads(explained.output)
    assert data["action"] == served.headers["X-Exportgate-Decision"]
    assert (data["address"], data["country"], data["unknown_reason"]) == (
        record["location"]["address"], record["location"]["country"], record["location"]["unknown_reason"])


def test_a_front_end_missing_from_trust_proxy_is_named_in_the_log_once(make_app: AppFactory,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A trust_proxy that does not name the front end (a container network, a NAT) decided every download for the
    front end's own address, flagged and served, and nothing said so."""
    _, client, _ = make_app()
    with caplog.at_level("WARNING", logger="exportgate.web"):
        for _ in range(3):
            r = ask(client, headers=nginx(CRYPTO), peer="10.88.0.5")
            assert r.status_code == 200 and r.headers["X-Exportgate-Rule"] == "unknown-location"
        assert ask(client, headers=nginx(CRYPTO)).status_code == 403  # the trusted front end: no warning
        ask(client, headers={"X-Original-URI": CRYPTO}, peer="10.88.0.6")  # no forwarding header: nothing to say
    said = [r.getMessage() for r in caplog.records if "not in serve.trust_proxy" in r.getMessage()]
    assert len(said) == 1 and "10.88.0.5" in said[0] and "X-Forwarded-For" in said[0]


@pytest.fixture
def mirror_root(tmp_path: Path) -> Path:
    """The directory a front end serves, with the links a mirror keeps: a release link, a link out of the root."""
    root = tmp_path / "mirror"
    (root / "files" / "release-1").mkdir(parents=True)
    (root / "files" / "chat-1.tar.gz").write_bytes(b"chat")
    (root / "files" / "crypto-1.tar.gz").write_bytes(b"crypto")
    (root / "files" / "release-1" / "crypto-1.tar.gz").write_bytes(b"crypto")
    (root / "files" / "chat-latest.tar.gz").symlink_to("crypto-1.tar.gz")  # named like chat, is the 5D002 file
    (root / "files" / "current").symlink_to("release-1", target_is_directory=True)
    (root / "files" / "chat-2.tar.gz").symlink_to(tmp_path / "outside.tar.gz")
    (tmp_path / "outside.tar.gz").write_bytes(b"outside")
    (root / "files" / "chat-3.tar.gz").symlink_to("nowhere.tar.gz")
    (root / "files" / "chat-4.tar.gz").symlink_to("chat-1.tar.gz")
    # The front end's own working directory, not the gate's: another process follows it somewhere else (so does a
    # link into a PrivateTmp or another mount namespace).
    (root / "files" / "elsewhere").symlink_to("/proc/self/cwd", target_is_directory=True)
    return root


@pytest.mark.parametrize("headers", [nginx, forwarded], ids=["nginx", "forwarded"])
def test_with_the_front_ends_root_a_symlink_is_decided_as_its_target(make_app: AppFactory, mirror_root: Path,
                                                                     headers: Any) -> None:
    # The front end opens the link's target: chat-latest.tar.gz -> crypto-1.tar.gz is the 5D002 file, for Iran.
    _, client, database = make_app(root=str(mirror_root))
    r = ask(client, headers=headers("/files/chat-latest.tar.gz"))
    assert r.status_code in (403, 451) and r.headers["X-Exportgate-Decision"] == "block"
    request = decision_record(database, r.headers["X-Exportgate-Decision-Id"])["request"]  # type: ignore[index]
    assert request["path"] == CRYPTO and request["requested_path"] == "/files/chat-latest.tar.gz"
    # Through a linked directory, and a link to an allowed file: decided as what is served.
    r = ask(client, headers=headers("/files/current/crypto-1.tar.gz"))
    assert r.headers["X-Exportgate-Decision"] == "block"
    assert decision_record(database, r.headers["X-Exportgate-Decision-Id"])["request"]["path"] == (  # type: ignore[index]
        "/files/release-1/crypto-1.tar.gz")
    r = ask(client, headers=headers("/files/chat-4.tar.gz"))
    assert r.status_code == 200 and r.headers["X-Exportgate-Decision"] == "allow"
    # Files themselves, and names the front end will answer 404 for, are decided as asked.
    assert ask(client, headers=headers(CHAT)).status_code == 200
    assert ask(client, headers=headers("/files/chat-9.tar.gz")).headers["X-Exportgate-Decision"] == "allow"


@pytest.mark.parametrize("link", ["/files/chat-2.tar.gz", "/files/chat-3.tar.gz", "/files/current/../chat-2.tar.gz",
                                  "/files/elsewhere/chatpkg-1.0-py3-none-any.whl"],
                         ids=["out of the root", "to nothing", "through dot-segments",
                              "through a directory link to what the gate does not see"])
def test_with_the_front_ends_root_a_link_out_of_it_is_refused_undecided(make_app: AppFactory, mirror_root: Path,
                                                                        link: str) -> None:
    _, client, database = make_app(root=str(mirror_root))
    before = decision_count(database)
    r = ask(client, headers=forwarded(link, client_ip=US_CLIENT))
    assert r.status_code == 403 and "not decided" in r.get_data(as_text=True)
    assert decision_count(database) == before


def test_without_the_front_ends_root_a_link_is_decided_by_its_name(make_app: AppFactory, mirror_root: Path) -> None:
    # What deploy/README rule 4 warns of (nginx refuses links itself; other front ends need serve.root).
    _, client, _ = make_app()
    assert ask(client, headers=forwarded("/files/chat-latest.tar.gz")).headers["X-Exportgate-Decision"] == "allow"


def test_with_the_front_ends_root_a_directory_the_gate_may_not_read_is_refused(
        make_app: AppFactory, mirror_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The front end runs as another user (the shipped unit's DynamicUser): a link in a directory only it may read
    was decided by its name (allowed) and served as its target. The tests may run as root, who reads everything:
    the kernel's answer to another user, EACCES, is given here for that directory."""
    import os

    private = mirror_root / "files" / "private"
    private.mkdir()
    (private / "chat-7.tar.gz").symlink_to("../crypto-1.tar.gz")
    _, client, database = make_app(root=str(mirror_root))
    before = decision_count(database)

    def refusing(call: Any) -> Any:
        def refused(path: Any, *args: Any, **kwargs: Any) -> Any:
            if "/private/" in str(path):
                raise PermissionError(13, "Permission denied", str(path))
            return call(path, *args, **kwargs)
        return refused

    monkeypatch.setattr(os, "stat", refusing(os.stat))
    monkeypatch.setattr(os.path, "realpath", refusing(os.path.realpath))
    r = ask(client, headers=forwarded("/files/private/chat-7.tar.gz"))
    assert r.status_code == 403 and "cannot read" in r.get_data(as_text=True)
    assert decision_count(database) == before


def test_geo_age_is_not_a_number_when_the_data_has_no_build_date() -> None:
    """The embedded registry data has no build date: the age gauge said 0 (fresh) while /readyz said null, so a
    staleness alert on it read as "fresh" forever."""
    import math

    from exportgate.web.metrics import Metrics

    metrics = Metrics()
    metrics.observe_health({"age_days": None, "stale": False}, True)
    assert math.isnan(metrics.registry.get_sample_value("exportgate_geo_database_age_days"))
    metrics.observe_health({"age_days": 3, "stale": False}, True)
    assert metrics.registry.get_sample_value("exportgate_geo_database_age_days") == 3


def test_refusals_while_the_store_fails_are_one_log_line_then_a_count(make_app: AppFactory,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A full disk refused every download with an ERROR line each (39,000 lines in 15 s under load), filling the
    disk the log shares. One line, then the count when the store commits again; the metric counts each."""
    _, client, database = make_app()
    with caplog.at_level("WARNING", logger="exportgate.web"):
        with StoreFault(database):
            for _ in range(20):
                assert ask(client, headers=nginx(CHAT)).status_code == 503
        assert metric(client, "exportgate_record_failures_total") == 20
        assert ask(client, headers=nginx(CHAT)).status_code == 200
    refused = [m for m in caplog.messages if "refusing download" in m]
    assert len(refused) == 1, refused
    assert any("19 more download(s) were refused" in m for m in caplog.messages), caplog.messages


def test_records_that_miss_the_record_log_are_counted(tmp_path: Path) -> None:
    """record_log failing (a full disk, /dev/full): downloads are served and recorded in the store, the failure is
    logged once; the log shipper's copy missing records showed nowhere else."""
    config = load_config(write_config(tmp_path, record_log="/dev/full"), env={})
    app = create_app(config)
    try:
        client = Client(app)
        for _ in range(3):
            assert ask(client, headers=nginx(CHAT)).status_code == 200
        app.runtime.recorder.close()  # the writer thread has run every sink
        assert metric(client, "exportgate_record_log_failures_total") == 3
    finally:
        app.runtime.close()
