"""End to end through real nginx: ``deploy/nginx/exportgate.conf`` in front of a mirror, ``exportgate serve`` behind.

One machine: test client -> nginx (``127.0.0.1:P``) -> ``auth_request`` -> gate (``127.0.0.1:G``, forward-auth,
``trust_proxy 127.0.0.1/32``); nginx serves the mirror from a temporary root. The deploy file is rendered with its
port, upstream, root and log path replaced and its commented real_ip lines switched on; nothing else changes.

Playing countries: the rendered config trusts 127.0.0.1 as a load balancer (``set_real_ip_from``), so the test
client, connecting from 127.0.0.1 with ``X-Forwarded-For: 192.0.2.10``, is 192.0.2.10 to nginx and the gate (Iran
by the test overrides). An untrusted peer is the same client bound to 127.0.0.2: nginx ignores its
``X-Forwarded-For``. The overrides put 127.0.0.2 itself in Iran, so a spoofed US address would have to be believed
for the 5D002 file to be served.
"""

from __future__ import annotations

import json
import shutil
import subprocess
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
    GateProcess,
    NginxProcess,
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


def nginx_usable() -> bool:
    nginx = shutil.which("nginx")
    if nginx is None:
        return False
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False).stderr
    return "http_auth_request_module" in built and "http_realip_module" in built


@dataclass
class Stack:
    port: int
    gate: GateProcess
    nginx: NginxProcess
    database: Path
    access_log: Path
    root: Path

    def get(self, target: str, *, client: str | None = None, source: str | None = None, method: str = "GET",
            headers: dict[str, str] | None = None) -> Response:
        sent = dict(headers or {})
        if client is not None:
            sent["X-Forwarded-For"] = client
        return request(self.port, target, method=method, headers=sent, source=source)

    def logged(self, needle: str) -> str:
        """The nginx access-log line containing ``needle`` (nginx writes it after answering)."""
        text = wait_for_text(self.access_log, needle)
        return next(line for line in text.splitlines() if needle in line)


def build_stack(tmp_path_factory: pytest.TempPathFactory, server: str) -> Iterator[Stack]:
    require(nginx_usable(), "nginx with auth_request and realip", "apt-get install nginx")
    base = tmp_path_factory.mktemp("nginx-stack")
    root = write_mirror(base / "mirror")
    config = write_config(base, geo={"overrides": [*TEST_OVERRIDES,
                                                   {"network": f"{UNTRUSTED_PEER}/32", "country": "IR"}]})
    gate = GateProcess(workdir=base / "gate", config=config, server=server)
    port = free_port()
    access_log = base / "nginx" / "access.log"
    conf = render(DEPLOY / "nginx" / "exportgate.conf", {
        "listen 80;": f"listen 127.0.0.1:{port};",
        "server 127.0.0.1:8451;": f"server 127.0.0.1:{gate.port};",
        "root /srv/mirror;": f"root {root};",
        "/var/log/nginx/exportgate-access.log": str(access_log),
        "#set_real_ip_from  10.0.0.0/8;": "set_real_ip_from 127.0.0.1;",
        "#real_ip_header    X-Forwarded-For;": "real_ip_header X-Forwarded-For;",
        "#real_ip_recursive on;": "real_ip_recursive on;",
    })
    nginx = NginxProcess(workdir=base / "nginx", server_conf=conf, port=port)
    gate.start()
    try:
        nginx.start()
        yield Stack(port=port, gate=gate, nginx=nginx, database=base / "records.db", access_log=access_log,
                    root=root)
    finally:
        nginx.stop()
        gate.stop()


@pytest.fixture(scope="module", params=["granian", "gunicorn"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """deploy/nginx before the gate under each server it runs on: gunicorn (the default), granian."""
    yield from build_stack(tmp_path_factory, request.param)


def test_allowed_download_is_served(stack: Stack) -> None:
    before = decision_count(stack.database)
    r = stack.get("/files/chat-1.tar.gz", client=IR_CLIENT)
    assert r.status == 200
    assert r.body == CHAT
    assert r.header("cache-control") == "private"  # no shared cache may replay it to the next client
    assert decision_count(stack.database) == before + 1
    line = stack.logged('"GET /files/chat-1.tar.gz HTTP/1.1" 200')
    assert f"{IR_CLIENT} - " in line
    assert "decision=allow rule=ir-personal-comms-software id=" in line and "gate=200" in line


def test_unknown_location_is_flagged_and_served(stack: Stack) -> None:
    r = stack.get("/files/crypto-1.tar.gz?flag-check", client=UNKNOWN_CLIENT)
    assert r.status == 200
    assert r.body == CRYPTO
    assert "decision=flag rule=unknown-location" in stack.logged("crypto-1.tar.gz?flag-check")


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
        assert page["status"] == 451
        assert page["rule"] == "ir-other-software"
        assert page["decision_id"] == decision_id
        assert "31 CFR" in page["citation"]
    else:
        assert (r.header("content-type") or "").startswith("text/html")
        assert "ir-other-software" in r.text and "31 CFR" in r.text and decision_id in r.text
    # The page is the recorded decision: committed before nginx asked for the page.
    record = decision_record(stack.database, decision_id)
    assert record is not None and record["enforced"] == "block"
    assert record["request"]["client"] == IR_CLIENT  # type: ignore[index]
    assert record["request"]["method"] == method  # type: ignore[index]


@pytest.mark.parametrize(("source", "claimed", "status"), [
    pytest.param(source, claimed, status, id=case) for source, claimed, status, case in TRUSTED_PROXY_CASES])
def test_forwarded_for_only_from_trusted_proxies(stack: Stack, source: str, claimed: str, status: int) -> None:
    check_forwarded_for_only_from_trusted_proxies(stack.get, stack.database, source, claimed, status)


@pytest.mark.parametrize(("target", "status"), [
    *[pytest.param(target, status, id=case) for target, status, case in FRONT_END_PATH_VARIANTS],
    # The gate refuses an encoded slash (400): an error for auth_request, so nginx answers 500.
    pytest.param("/files%2fcrypto-1.tar.gz", 500, id="encoded slash"),
    pytest.param("/files%2Fcrypto-1.tar.gz", 500, id="encoded slash upper case"),
    pytest.param("/files/%2e%2e%2ffiles/crypto-1.tar.gz", 500, id="encoded dot-dot-slash"),
    # A trailing "/" makes it a directory to nginx (an index page, not gated): not a directory, so 404.
    pytest.param("/files/crypto-1.tar.gz%2f", 404, id="encoded trailing slash"),
    pytest.param("/files/crypto-1.tar.gz/", 404, id="trailing slash"),
    pytest.param("/files/crypto-1.tar.gz/.", 404, id="trailing dot segment"),
    pytest.param("/files/crypto-1.tar.gz%00", 400, id="encoded NUL"),
])
def test_path_variants_never_serve_crypto_to_iran(stack: Stack, target: str, status: int) -> None:
    r = stack.get(target, client=IR_CLIENT)
    assert r.status == status
    assert CRYPTO not in r.body


def test_index_pages_and_metadata_do_not_ask_the_gate(stack: Stack) -> None:
    check_only_downloads_ask_the_gate(stack.get, stack.gate, stack.database, b"Index of /", IR_CLIENT)


def test_policy_page_is_public_and_blocked_pages_are_not(stack: Stack) -> None:
    r = stack.get("/exportgate/policy")
    assert r.status == 200
    assert json.loads(r.body)["operator"] == "Test Mirror Operator"
    blocked = stack.get("/files/crypto-1.tar.gz", client=IR_CLIENT)
    decision_id = blocked.header("x-exportgate-decision-id")
    assert blocked.status == 451 and decision_id
    # The gate shows it to nginx's error_page, but nobody else may enumerate decisions through nginx.
    assert stack.get(f"/exportgate/blocked/{decision_id}").status == 404
    assert stack.gate.get(f"/exportgate/blocked/{decision_id}").status == 451
    # Matched on the normalised URI, proxied as exactly /exportgate/policy: never the gate's /auth.
    sneaked = stack.get("/auth/../exportgate/policy")
    assert sneaked.status == 200 and json.loads(sneaked.body)["operator"] == "Test Mirror Operator"
    assert stack.get("/exportgate/readyz").status == 404


def test_a_directory_without_its_slash_is_redirected_without_a_decision(stack: Stack) -> None:
    before = decision_count(stack.database)
    for directory in ("/files", "/simple/chatpkg"):
        r = stack.get(directory, client=IR_CLIENT)
        assert r.status == 301 and (r.header("location") or "").endswith(directory + "/"), r
    assert decision_count(stack.database) == before


def test_the_directory_redirect_keeps_the_path_as_written_and_the_query(stack: Stack) -> None:
    # $uri is decoded: "a%20b" became a Location with a raw space, "q%3Fx" the other resource "q?x/".
    made = [stack.root / "files" / "a b", stack.root / "files" / "q?x"]
    for directory in made:
        directory.mkdir()
    try:
        for target, location in [("/files/a%20b", "/files/a%20b/"), ("/files/q%3Fx", "/files/q%3Fx/"),
                                 ("/files?sort=name", "/files/?sort=name")]:
            r = stack.get(target, client=IR_CLIENT)
            assert r.status == 301 and (r.header("location") or "").endswith(location), (target, r)
    finally:
        for directory in made:
            directory.rmdir()


def test_a_symlink_below_the_root_is_never_served(stack: Stack) -> None:
    # The gate decides on the name asked for; nginx would open the link's target. Named like an allowed file, the
    # 5D002 file would be served to Iran as personal-communications software; named like metadata, undecided.
    links = [stack.root / "files" / "chat-latest.tar.gz", stack.root / "files" / "notes.json",
             stack.root / "latest"]
    links[0].symlink_to("crypto-1.tar.gz")
    links[1].symlink_to("crypto-1.tar.gz")
    links[2].symlink_to("files", target_is_directory=True)
    try:
        for target in ("/files/chat-latest.tar.gz", "/files/notes.json", "/latest/crypto-1.tar.gz",
                       "/latest/chat-1.tar.gz"):
            for client in (IR_CLIENT, US_CLIENT):
                r = stack.get(target, client=client)
                # 403 or 404: allowed by the gate, refused by nginx; 451: the gate blocked the name itself.
                assert r.status in (403, 404, 451) and CRYPTO not in r.body and CHAT not in r.body, (target, client, r)
        r = stack.get("/files/chat-latest.tar.gz?link-check", client=IR_CLIENT)
        assert r.status == 403 and "decision=allow" in stack.logged("link-check")  # the name alone is allowed
        assert stack.get("/files/chat-1.tar.gz", client=IR_CLIENT).body == CHAT  # files themselves are served
    finally:
        for link in links:
            link.unlink()


def test_gate_down_refuses_downloads_but_not_index_pages(stack: Stack) -> None:
    stack.gate.stop()
    try:
        for client, target in [(IR_CLIENT, "/files/chat-1.tar.gz"), (US_CLIENT, "/files/crypto-1.tar.gz")]:
            r = stack.get(target, client=client)
            assert r.status == 500
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
            assert r.status == 500, target  # the gate's 503 is an error to auth_request
            assert CHAT not in r.body and CRYPTO not in r.body
        ready = stack.gate.get("/readyz")
        assert ready.status == 503
        assert json.loads(ready.body)["checks"]["records"]["ok"] is False
    # The store is back: the next download commits its record and is served.
    assert stack.get("/files/chat-1.tar.gz", client=IR_CLIENT).body == CHAT
    assert stack.gate.get("/readyz").status == 200
