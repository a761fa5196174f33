"""End to end through real Caddy: ``deploy/caddy/Caddyfile`` in front of a mirror, ``exportgate serve`` behind.

One machine: test client -> Caddy (``http://127.0.0.1:P``) -> ``forward_auth`` -> gate (``127.0.0.1:G``,
forward-auth, ``trust_proxy 127.0.0.1/32``); Caddy's ``file_server`` serves the mirror from a temporary root. The
Caddyfile is rendered with its site address, root, log path and gate address replaced and its commented
``trusted_proxies`` line switched on; nothing else changes.

Playing countries: the rendered Caddyfile trusts 127.0.0.1 as a load balancer, so Caddy keeps the test client's
``X-Forwarded-For`` and appends 127.0.0.1; the gate (trusting 127.0.0.1) takes the client from it. The client
bound to 127.0.0.2 is an untrusted peer: Caddy replaces its ``X-Forwarded-For`` with 127.0.0.2, which the test
overrides put in Iran, so a spoofed US address would have to be believed for the 5D002 file to be served.

Unlike nginx, Caddy hands the gate's non-2xx answer to the client as it is: the 451 page comes straight from
``/auth``, a refused path is the gate's 400, a store failure the gate's 503, and a gate that is down a 502.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import IR_CLIENT, TEST_OVERRIDES, US_CLIENT, require, write_config
from serverproc import (
    DEPLOY,
    FRONT_END_PATH_VARIANTS,
    MIRROR_FILES,
    TRUSTED_PROXY_CASES,
    UNTRUSTED_PEER,
    CaddyProcess,
    GateProcess,
    Response,
    StoreFault,
    check_forwarded_for_only_from_trusted_proxies,
    check_only_downloads_ask_the_gate,
    decision_count,
    decision_record,
    free_port,
    render,
    request,
    wait_for_text,
    write_mirror,
)

UNKNOWN_CLIENT = "198.51.100.7"  # TEST-NET-2: no country in registry data, no override
CHAT = MIRROR_FILES["files/chat-1.tar.gz"]
CRYPTO = MIRROR_FILES["files/crypto-1.tar.gz"]


@dataclass
class Stack:
    port: int
    gate: GateProcess
    caddy: CaddyProcess
    database: Path
    access_log: Path

    def get(self, target: str, *, client: str | None = None, source: str | None = None, method: str = "GET",
            headers: dict[str, str] | None = None) -> Response:
        sent = dict(headers or {})
        if client is not None:
            sent["X-Forwarded-For"] = client
        return request(self.port, target, method=method, headers=sent, source=source)


def caddyfile_for(port: int, root: Path, access_log: Path, gate_port: int, *, trusted: str | None = None) -> str:
    """deploy/caddy/Caddyfile with its site address, root, log and gate address replaced, and its commented
    ``trusted_proxies`` line switched on for ``trusted`` (a CIDR) if given; nothing else changes."""
    replacements = {
        "\nmirror.example.org {": f"\nhttp://127.0.0.1:{port} {{",
        "root * /srv/mirror": f"root * {root}",
        "/var/log/caddy/exportgate-access.log": str(access_log),
        "reverse_proxy 127.0.0.1:8451": f"reverse_proxy 127.0.0.1:{gate_port}",
        "forward_auth 127.0.0.1:8451": f"forward_auth 127.0.0.1:{gate_port}",
    }
    if trusted is not None:
        replacements["#trusted_proxies 10.0.0.0/8"] = f"trusted_proxies {trusted}"
    return render(DEPLOY / "caddy" / "Caddyfile", replacements)


@pytest.fixture(scope="module", params=["granian", "gunicorn"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """deploy/caddy before the gate under each server it runs on: gunicorn (the default), granian."""
    require(shutil.which("caddy") is not None, "caddy", "apt-get install caddy")
    base = tmp_path_factory.mktemp("caddy-stack")
    root = write_mirror(base / "mirror")
    config = write_config(base, geo={"overrides": [*TEST_OVERRIDES,
                                                   {"network": f"{UNTRUSTED_PEER}/32", "country": "IR"}]})
    gate = GateProcess(workdir=base / "gate", config=config, server=request.param)
    port = free_port()
    access_log = base / "caddy" / "access.log"
    caddyfile = caddyfile_for(port, root, access_log, gate.port, trusted="127.0.0.1/32")
    caddy = CaddyProcess(workdir=base / "caddy", caddyfile=caddyfile, port=port)
    gate.start()
    try:
        caddy.start()
        yield Stack(port=port, gate=gate, caddy=caddy, database=base / "records.db", access_log=access_log)
    finally:
        caddy.stop()
        gate.stop()


def test_allowed_download_is_served(stack: Stack) -> None:
    before = decision_count(stack.database)
    r = stack.get("/files/chat-1.tar.gz?allow-check", client=IR_CLIENT)
    assert r.status == 200
    assert r.body == CHAT
    assert r.header("cache-control") == "private"  # no shared cache may replay it to the next client
    assert decision_count(stack.database) == before + 1
    # Caddy's access log has the download; the decision is in the gate's record (the count above).
    entry = json.loads(next(line for line in wait_for_text(stack.access_log, "allow-check").splitlines()
                            if "allow-check" in line))
    assert entry["status"] == 200


def test_a_client_asking_to_upgrade_is_decided_and_served(stack: Stack) -> None:
    # curl --http2 on http:// (Upgrade: h2c): forward_auth would pass the client's Upgrade on to the gate.
    upgrade = {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA"}
    before = decision_count(stack.database)
    r = stack.get("/files/chat-1.tar.gz", client=IR_CLIENT, headers=upgrade)
    assert r.status == 200 and r.body == CHAT
    blocked = stack.get("/files/crypto-1.tar.gz", client=IR_CLIENT, headers=upgrade)
    assert blocked.status == 451 and CRYPTO not in blocked.body
    assert decision_count(stack.database) == before + 2


def test_unknown_location_is_flagged_and_served(stack: Stack) -> None:
    r = stack.get("/files/crypto-1.tar.gz", client=UNKNOWN_CLIENT)
    assert r.status == 200
    assert r.body == CRYPTO


@pytest.mark.parametrize(("method", "accept"), [
    pytest.param("GET", "text/html,*/*;q=0.8", id="browser"),
    pytest.param("GET", "application/json", id="json"),
    pytest.param("HEAD", None, id="head"),
])
def test_block_is_the_451_page_citing_the_rule(stack: Stack, method: str, accept: str | None) -> None:
    r = stack.get("/files/crypto-1.tar.gz", client=IR_CLIENT, method=method,
                  headers={"Accept": accept} if accept else None)
    assert r.status == 451
    assert r.header("link") == '</exportgate/policy>; rel="blocked-by"'
    assert r.header("cache-control") == "no-store"
    assert r.header("x-exportgate-decision") == "block"
    assert r.header("x-exportgate-rule") == "ir-other-software"
    decision_id = r.header("x-exportgate-decision-id")
    assert decision_id
    assert CRYPTO not in r.body
    if method == "HEAD":
        assert r.body == b""
    elif accept == "application/json":
        page = json.loads(r.body)
        assert (page["status"], page["rule"], page["decision_id"]) == (451, "ir-other-software", decision_id)
        assert "31 CFR" in page["citation"]
    else:
        assert (r.header("content-type") or "").startswith("text/html")
        assert "ir-other-software" in r.text and "31 CFR" in r.text and decision_id in r.text
    record = decision_record(stack.database, decision_id)
    assert record is not None and record["enforced"] == "block"
    assert record["request"]["client"] == IR_CLIENT  # type: ignore[index]
    # forward_auth always asks with GET; the original method travels in X-Forwarded-Method.
    assert record["request"]["method"] == method  # type: ignore[index]


def test_client_written_request_headers_do_not_reach_the_gate(stack: Stack) -> None:
    """forward_auth passes every request header on: a client's own X-Original-Method made a GET download look like
    a HEAD in its record, and its X-Original-URI turned the gate's answer into nginx's 403 instead of the 451."""
    r = stack.get("/files/crypto-1.tar.gz", client=IR_CLIENT, headers={
        "X-Original-URI": "/files/crypto-1.tar.gz", "X-Original-Method": "HEAD"})
    assert r.status == 451 and CRYPTO not in r.body
    record = decision_record(stack.database, r.header("x-exportgate-decision-id"))
    assert record is not None and record["request"]["method"] == "GET"  # type: ignore[index]
    # A client's Forwarded neither: were the gate told to read it, it would choose the client's country.
    r = stack.get("/files/crypto-1.tar.gz", client=IR_CLIENT, headers={"Forwarded": f"for={US_CLIENT}"})
    assert r.status == 451


def test_client_cannot_name_another_uri_or_decision(stack: Stack) -> None:
    # Caddy sets X-Forwarded-Uri/-Method itself; client-sent decision headers are dropped before the gate asks.
    r = stack.get("/files/crypto-1.tar.gz", client=IR_CLIENT, headers={
        "X-Forwarded-Uri": "/files/chat-1.tar.gz", "X-Forwarded-Method": "OPTIONS",
        "X-Original-URI": "/files/chat-1.tar.gz", "X-Exportgate-Decision": "allow"})
    assert r.status in (400, 451)  # a conflicting X-Original-URI is a 400; never the file
    assert CRYPTO not in r.body
    r = stack.get("/files/crypto-1.tar.gz", client=IR_CLIENT, headers={"X-Forwarded-Uri": "/files/chat-1.tar.gz"})
    assert r.status == 451


@pytest.mark.parametrize(("source", "claimed", "status"), [
    pytest.param(source, claimed, status, id=case) for source, claimed, status, case in TRUSTED_PROXY_CASES])
def test_forwarded_for_only_from_trusted_proxies(stack: Stack, source: str, claimed: str, status: int) -> None:
    check_forwarded_for_only_from_trusted_proxies(stack.get, stack.database, source, claimed, status)


@pytest.mark.parametrize(("target", "status"), [
    *[pytest.param(target, status, id=case) for target, status, case in FRONT_END_PATH_VARIANTS],
    # Not an existing directory, so not an index page: gated, decided as the unclassified path
    # /files/crypto-1.tar.gz/ (blocked to Iran), and file_server would not serve a file with a trailing "/".
    pytest.param("/files/crypto-1.tar.gz/", 451, id="trailing slash"),
    # Refused by the Caddyfile: Go cleans it to the file, the gate reads a directory.
    pytest.param("/files/crypto-1.tar.gz/.", 400, id="trailing dot segment"),
    pytest.param("/files/crypto-1.tar.gz/%2e", 400, id="encoded trailing dot segment"),
    pytest.param("/files/crypto-1.tar.gz/x/..", 400, id="trailing dot-dot segment"),
    # Refused by the gate (400), passed on by Caddy.
    pytest.param("/files%2fcrypto-1.tar.gz", 400, id="encoded slash"),
    pytest.param("/files%2Fcrypto-1.tar.gz", 400, id="encoded slash upper case"),
    pytest.param("/files/%2e%2e%2ffiles/crypto-1.tar.gz", 400, id="encoded dot-dot-slash"),
    pytest.param("/files/crypto-1.tar.gz%2f", 400, id="encoded trailing slash"),
    pytest.param("/files/crypto-1.tar.gz%00", 400, id="encoded NUL"),
])
def test_path_variants_never_serve_crypto_to_iran(stack: Stack, target: str, status: int) -> None:
    r = stack.get(target, client=IR_CLIENT)
    assert r.status == status
    assert CRYPTO not in r.body


def test_index_pages_and_metadata_do_not_ask_the_gate(stack: Stack) -> None:
    check_only_downloads_ask_the_gate(stack.get, stack.gate, stack.database, b"files", IR_CLIENT)


def test_policy_page_is_public_and_blocked_pages_are_not(stack: Stack) -> None:
    r = stack.get("/exportgate/policy")
    assert r.status == 200
    assert json.loads(r.body)["operator"] == "Test Mirror Operator"
    blocked = stack.get("/files/crypto-1.tar.gz", client=IR_CLIENT)
    decision_id = blocked.header("x-exportgate-decision-id")
    assert blocked.status == 451 and decision_id
    # Only /exportgate/policy is proxied: anything else under /exportgate/ is an ordinary (missing) file.
    r = stack.get(f"/exportgate/blocked/{decision_id}", client=US_CLIENT)
    assert r.status == 404
    assert b"31 CFR" not in r.body
    # Matched on the cleaned path, proxied as exactly /exportgate/policy: never the gate's /auth.
    sneaked = stack.get("/auth/../exportgate/policy", client=US_CLIENT)
    assert sneaked.status == 200 and json.loads(sneaked.body)["operator"] == "Test Mirror Operator"


def test_gate_down_refuses_downloads_but_not_index_pages(stack: Stack) -> None:
    stack.gate.stop()
    try:
        for client, target in [(IR_CLIENT, "/files/chat-1.tar.gz"), (US_CLIENT, "/files/crypto-1.tar.gz")]:
            r = stack.get(target, client=client)
            assert r.status == 502
            assert CHAT not in r.body and CRYPTO not in r.body
        assert stack.get("/files/", client=IR_CLIENT).status == 200
    finally:
        stack.gate.start()
    assert stack.get("/files/chat-1.tar.gz", client=IR_CLIENT).body == CHAT


def test_record_store_failure_refuses_downloads(stack: Stack) -> None:
    with StoreFault(stack.database):
        for client, target in [(IR_CLIENT, "/files/chat-1.tar.gz"), (US_CLIENT, "/files/crypto-1.tar.gz"),
                               (IR_CLIENT, "/files/crypto-1.tar.gz")]:
            r = stack.get(target, client=client)
            assert r.status == 503, target  # the gate's own answer, passed on by Caddy
            assert b"could not be recorded" in r.body
            assert CHAT not in r.body and CRYPTO not in r.body
        assert stack.gate.get("/readyz").status == 503
    assert stack.get("/files/chat-1.tar.gz", client=IR_CLIENT).body == CHAT
    assert stack.gate.get("/readyz").status == 200


def test_behind_a_load_balancer_the_gate_trusts_it_too(tmp_path: Path) -> None:
    """Caddy keeps a trusted balancer's X-Forwarded-For and appends the balancer's own address: a gate trusting only
    Caddy located every client at the balancer (an unknown location: flagged, and the 5D002 file served to Iran).
    Set up as the Caddyfile says, the gate trusts the balancer too. Here the balancer is 127.0.0.3."""
    require(shutil.which("caddy") is not None, "caddy", "apt-get install caddy")
    balancer = "127.0.0.3"
    root = write_mirror(tmp_path / "mirror")
    gate = GateProcess(workdir=tmp_path / "gate", config=write_config(tmp_path), trust_proxy=(
        "127.0.0.1/32", f"{balancer}/32"))
    port = free_port()
    caddyfile = caddyfile_for(port, root, tmp_path / "caddy" / "access.log", gate.port, trusted=f"{balancer}/32")
    caddy = CaddyProcess(workdir=tmp_path / "caddy", caddyfile=caddyfile, port=port)
    with gate, caddy:
        r = request(port, "/files/crypto-1.tar.gz", headers={"X-Forwarded-For": IR_CLIENT}, source=balancer)
        assert r.status == 451 and CRYPTO not in r.body
        record = decision_record(tmp_path / "records.db", r.header("x-exportgate-decision-id") or "")
        assert record is not None and record["request"]["client"] == IR_CLIENT  # type: ignore[index]
        assert record["request"]["address_chain"] == [IR_CLIENT, balancer, "127.0.0.1"]  # type: ignore[index]


def test_with_the_mirrors_root_the_gate_decides_on_a_symlinks_target(tmp_path: Path) -> None:
    """Caddy's file_server opens a link's target and has no switch to refuse links (nginx's disable_symlinks): the
    gate, given the root Caddy serves (serve.root, same host), decides on the file Caddy will open."""
    require(shutil.which("caddy") is not None, "caddy", "apt-get install caddy")
    root = write_mirror(tmp_path / "mirror")
    (root / "files" / "chat-latest.tar.gz").symlink_to("crypto-1.tar.gz")
    (root / "files" / "chat-2.tar.gz").symlink_to(tmp_path / "outside.tar.gz")
    (tmp_path / "outside.tar.gz").write_bytes(CRYPTO)
    iran = {"network": f"{UNTRUSTED_PEER}/32", "country": "IR"}
    config = write_config(tmp_path, serve={"root": str(root)}, geo={"overrides": [*TEST_OVERRIDES, iran]})
    gate = GateProcess(workdir=tmp_path / "gate", config=config)
    port = free_port()
    caddyfile = caddyfile_for(port, root, tmp_path / "caddy" / "access.log", gate.port)
    caddy = CaddyProcess(workdir=tmp_path / "caddy", caddyfile=caddyfile, port=port)
    with gate, caddy:
        r = request(port, "/files/chat-latest.tar.gz", source=UNTRUSTED_PEER)  # located in Iran
        assert r.status == 451 and CRYPTO not in r.body
        record = decision_record(tmp_path / "records.db", r.header("x-exportgate-decision-id") or "")
        assert record is not None and record["request"]["path"] == "/files/crypto-1.tar.gz"  # type: ignore[index]
        out = request(port, "/files/chat-2.tar.gz", source=UNTRUSTED_PEER)
        assert out.status == 403 and CRYPTO not in out.body
        assert request(port, "/files/chat-1.tar.gz", source=UNTRUSTED_PEER).body == CHAT


@pytest.mark.parametrize("name", ["release", "packages", "notes.JSON", "sum.SHA256", "repomd.XML"])
def test_an_artifact_named_like_metadata_in_another_case_asks_the_gate(stack: Stack, name: str) -> None:
    """Caddy's `path` matcher ignores case: a download called `release` (an extensionless binary) or `x.JSON`
    matched the metadata names and was served to Iran without a decision or a record."""
    mirror = stack.gate.workdir.parent / "mirror"
    artifact = mirror / "files" / name
    artifact.write_bytes(CRYPTO)
    try:
        r = stack.get(f"/files/{name}", client=IR_CLIENT)
    finally:
        artifact.unlink()
    assert r.status == 451 and CRYPTO not in r.body, (r.status, r.body[:100])
