"""Contracts with front ends that cannot run here: Traefik ForwardAuth and Envoy ext_authz (HTTP service).

Each front end is modelled by what its documentation and source say it sends the gate and what it does with the
answer, with its settings read from the files ``deploy/`` ships (so a change there changes what is tested):

* Traefik (docs "ForwardAuth", ``pkg/middlewares/auth/forward.go``; entry point ``forwardedHeaders``): the entry
  point deletes every X-Forwarded-* header from clients not in ``trustedIPs``; ForwardAuth sends ``GET <address>``
  with the client headers named in ``authRequestHeaders`` (all of them when the list is empty) and sets
  ``X-Forwarded-For`` (the incoming chain + the peer with ``trustForwardHeader``, else the peer), and, unless an
  incoming value is trusted, ``X-Forwarded-Method``, ``-Proto``, ``-Host`` and ``-Uri`` (the request URI as
  received). 2xx: the request goes on with ``authResponseHeaders`` copied onto it. Otherwise the gate's status,
  headers (minus hop-by-hop) and body go to the client.
* Envoy (``ext_authz.proto``, HTTP service): the check request has the original method, the path
  ``path_prefix`` + original path and query, ``Host``, ``Content-Length: 0``, ``Authorization`` and only the client
  headers matched by ``allowed_headers``; ``X-Forwarded-For`` is the chain with the peer appended
  (``use_remote_address``). 200: allowed, ``allowed_upstream_headers`` copied onto the request. 5xx or no answer:
  refused with ``status_on_error``. Other statuses: the gate's status, body and headers go to the client.

The gate is the real WSGI app (werkzeug test client), behind the proxy's address 10.0.0.5. Also here: the other
deploy files agree with the gate (gunicorn.conf.py really serves; alert rules name metrics that exist; the systemd
unit parses).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import Client

from conftest import IR_CLIENT, REPO, US_CLIENT, require, write_config
from exportgate.config import load_config
from exportgate.web.app import GateApp, create_app
from serverproc import DEPLOY, GunicornProcess, StoreFault, decision_record, free_port, request

PROXY = "10.0.0.5"              # Traefik's / Envoy's address as the gate sees it
LOAD_BALANCER = "10.1.0.1"      # a load balancer in front of the proxy
CRYPTO = "/files/crypto-1.tar.gz"
CHAT = "/files/chat-1.tar.gz"
DECISION_HEADERS = ["X-Exportgate-Decision", "X-Exportgate-Decision-Id", "X-Exportgate-Rule"]
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade"}


@dataclass(frozen=True, kw_only=True)
class ClientRequest:
    """A request as it reaches the proxy."""

    target: str
    method: str = "GET"
    peer: str = IR_CLIENT
    """The TCP peer the proxy sees: the client, or a load balancer."""
    headers: Sequence[tuple[str, str]] = ()
    host: str = "mirror.example.org"


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What the proxy does with the gate's answer."""

    served: bool
    status: int
    """The status the client gets (for a served download: the origin's, not modelled: 200)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Served: headers added to the request the origin receives. Refused: headers the client receives."""
    answer_headers: Mapping[str, str] = field(default_factory=dict)
    """Served: headers the proxy adds to (or sets on) the origin's answer to the client."""
    body: bytes = b""
    gate_status: int = 0
    gate_request: Mapping[str, str] = field(default_factory=dict)
    """The headers the gate received (lower-case names)."""


def _gate_call(client: Client, path: str, method: str, headers: list[tuple[str, str]]) -> Any:
    return client.open(path, method=method, headers=headers, environ_base={"REMOTE_ADDR": PROXY})


# ------------------------------------------------------------------------------------------------ Traefik


def traefik_settings() -> dict[str, Any]:
    dynamic = yaml.safe_load((DEPLOY / "traefik" / "exportgate.yml").read_text(encoding="utf-8"))["http"]
    static = yaml.safe_load((DEPLOY / "traefik" / "traefik.yml").read_text(encoding="utf-8"))
    router = dynamic["routers"]["mirror-downloads"]
    middlewares = [dynamic["middlewares"][name] for name in router["middlewares"]]
    forward = next(m["forwardAuth"] for m in middlewares if "forwardAuth" in m)
    removed = [name for m in middlewares if "headers" in m
               for name, value in m["headers"].get("customRequestHeaders", {}).items() if value == ""]
    # Response headers set by middlewares after ForwardAuth (those before it would also touch a block's answer).
    names = router["middlewares"]
    after = names[next(i for i, n in enumerate(names) if "forwardAuth" in dynamic["middlewares"][n]):]
    answer = {name: value for n in after for name, value in
              dynamic["middlewares"][n].get("headers", {}).get("customResponseHeaders", {}).items()}
    return {"forward": forward, "removed": removed, "answer": answer,
            "trusted": static["entryPoints"]["web"]["forwardedHeaders"]["trustedIPs"]}


def traefik(client: Client, req: ClientRequest, *, trusted_ips: Sequence[str] = (), **override: Any) -> Outcome:
    """What Traefik does for ``req`` with the deploy/traefik settings (``override`` replaces some of them)."""
    settings = traefik_settings()
    forward = {**settings["forward"], **override.get("forward", {})}
    removed = override.get("removed", settings["removed"])
    trusted = list(trusted_ips) or settings["trusted"]
    headers = list(req.headers)
    # Entry point: X-Forwarded-* from an untrusted peer are deleted (forwardedheaders.XHeadersSet).
    if req.peer not in trusted:
        headers = [(k, v) for k, v in headers if not (k.lower().startswith("x-forwarded-") or k.lower() == "x-real-ip")]
    # Middlewares before ForwardAuth: headers with an empty customRequestHeaders value are deleted.
    headers = [(k, v) for k, v in headers if k.lower() not in {r.lower() for r in removed}]
    incoming = {k.lower(): v for k, v in headers}
    # ForwardAuth: copy (only authRequestHeaders, if set), then X-Forwarded-* (forward.go writeHeader).
    allowed = {h.lower() for h in forward.get("authRequestHeaders") or []}
    sent = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and (not allowed or k.lower() in allowed)]
    trust = bool(forward.get("trustForwardHeader"))
    xff = req.peer
    if trust and "x-forwarded-for" in incoming:
        xff = f"{incoming['x-forwarded-for']}, {req.peer}"

    def pick(name: str, own: str) -> str:
        return incoming[name] if trust and incoming.get(name) else own

    own = {"x-forwarded-for": xff,
           "x-forwarded-method": pick("x-forwarded-method", req.method),
           "x-forwarded-proto": pick("x-forwarded-proto", "http"),
           "x-forwarded-host": pick("x-forwarded-host", req.host),
           "x-forwarded-uri": pick("x-forwarded-uri", req.target)}
    sent = [(k, v) for k, v in sent if k.lower() not in own] + list(own.items())
    path = "/" + forward["address"].split("://", 1)[1].split("/", 1)[1]
    r = _gate_call(client, path, "GET", sent)
    gate_request = {k.lower(): v for k, v in sent}
    if 200 <= r.status_code < 300:
        copied = {h: r.headers[h] for h in forward.get("authResponseHeaders", []) if h in r.headers}
        return Outcome(served=True, status=200, headers=copied, answer_headers=settings["answer"],
                       gate_status=r.status_code, gate_request=gate_request)
    passed = {k: v for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP}
    return Outcome(served=False, status=r.status_code, headers=passed, body=r.get_data(), gate_status=r.status_code,
                   gate_request=gate_request)


# -------------------------------------------------------------------------------------------------- Envoy


def envoy_settings() -> dict[str, Any]:
    config = yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text(encoding="utf-8"))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    authz = next(f["typed_config"] for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_authz")
    return {"hcm": hcm, "authz": authz}


def _matches(patterns: Sequence[Mapping[str, str]], name: str) -> bool:
    name = name.lower()
    for p in patterns:
        if ("exact" in p and p["exact"].lower() == name) or ("prefix" in p and name.startswith(p["prefix"].lower())):
            return True
    return False


def envoy(client: Client, req: ClientRequest, *, allowed_patterns: Sequence[Mapping[str, str]] | None = None,
          gate_down: bool = False) -> Outcome:
    """What Envoy's ext_authz filter does for ``req`` with the deploy/envoy settings."""
    settings = envoy_settings()
    authz = settings["authz"]
    service = authz["http_service"]
    patterns = allowed_patterns if allowed_patterns is not None else authz["allowed_headers"]["patterns"]
    incoming = [(k, v) for k, v in req.headers]
    # HCM with use_remote_address: the peer is appended to X-Forwarded-For before any filter runs.
    chain = ", ".join([v for k, v in incoming if k.lower() == "x-forwarded-for"] + [req.peer])
    incoming = [(k, v) for k, v in incoming if k.lower() != "x-forwarded-for"] + [("X-Forwarded-For", chain)]
    sent = [(k, v) for k, v in incoming
            if _matches(patterns, k) or k.lower() in ("authorization",)]
    sent += [("Host", req.host), ("Content-Length", "0")]
    status_on_error = {"ServiceUnavailable": 503, "Forbidden": 403}[authz.get("status_on_error", {}).get("code",
                                                                                                      "Forbidden")]
    if gate_down:
        return Outcome(served=bool(authz.get("failure_mode_allow")), status=status_on_error)
    r = _gate_call(client, service["path_prefix"] + req.target, req.method, sent)
    gate_request = {k.lower(): v for k, v in sent}
    if r.status_code == 200:
        response = service.get("authorization_response", {})
        upstream = response.get("allowed_upstream_headers", {}).get("patterns", [])
        copied = {k: v for k, v in r.headers.items() if _matches(upstream, k)}
        on_success = response.get("allowed_client_headers_on_success", {}).get("patterns", [])
        added = {k: v for k, v in r.headers.items() if _matches(on_success, k)}
        return Outcome(served=True, status=200, headers=copied, answer_headers=added, gate_status=200,
                       gate_request=gate_request)
    if r.status_code >= 500:
        if authz.get("failure_mode_allow"):
            return Outcome(served=True, status=200, gate_status=r.status_code, gate_request=gate_request)
        return Outcome(served=False, status=status_on_error, gate_status=r.status_code, gate_request=gate_request)
    client_patterns = service.get("authorization_response", {}).get("allowed_client_headers")
    passed = {k: v for k, v in r.headers.items()
              if k.lower() != "host" and (client_patterns is None or _matches(client_patterns["patterns"], k))}
    return Outcome(served=False, status=r.status_code, headers=passed, body=r.get_data(), gate_status=r.status_code,
                   gate_request=gate_request)


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Path]]:
    directory = tmp_path_factory.mktemp("contracts")
    config = load_config(write_config(directory, serve={"trust_proxy": [f"{PROXY}/32", f"{LOAD_BALANCER}/32"]}),
                         env={})
    app: GateApp = create_app(config)
    yield Client(app), directory / "records.db"
    app.runtime.close()


Proxy = Any
PROXIES = [pytest.param(traefik, id="traefik"), pytest.param(envoy, id="envoy")]


def _assert_451_page(outcome: Outcome, rule: str) -> None:
    assert not outcome.served
    assert outcome.status == 451
    assert outcome.headers["Link"] == '</exportgate/policy>; rel="blocked-by"'
    assert outcome.headers["Cache-Control"] == "no-store"
    assert outcome.headers["X-Exportgate-Decision"] == "block"
    assert outcome.headers["X-Exportgate-Rule"] == rule
    assert outcome.headers["X-Exportgate-Decision-Id"]
    assert int(outcome.headers["Content-Length"]) == len(outcome.body)


# ------------------------------------------------------------------------------------------ both proxies


@pytest.mark.parametrize("proxy", PROXIES)
@pytest.mark.parametrize(("req", "served", "rule"), [
    pytest.param(ClientRequest(target=CHAT), True, "ir-personal-comms-software", id="allow"),
    pytest.param(ClientRequest(target=CRYPTO), False, "ir-other-software", id="block"),
    pytest.param(ClientRequest(target=CRYPTO, peer=US_CLIENT), True, "not-a-sanctioned-destination", id="US"),
    pytest.param(ClientRequest(target=CRYPTO, peer="198.51.100.7"), True, "unknown-location", id="flag"),
    pytest.param(ClientRequest(target=CRYPTO + "?sig=abc"), False, "ir-other-software", id="query"),
    pytest.param(ClientRequest(target="/files/%63rypto-1.tar.gz"), False, "ir-other-software", id="encoded"),
    pytest.param(ClientRequest(target=CRYPTO, method="HEAD"), False, "ir-other-software", id="HEAD"),
    pytest.param(ClientRequest(target=CHAT, method="POST"), True, "ir-personal-comms-software", id="POST"),
    # Client-written forwarding headers: Traefik's entry point deletes them (untrusted peer); Envoy appends the
    # peer, which the gate takes.
    pytest.param(ClientRequest(target=CRYPTO, headers=[("X-Forwarded-For", US_CLIENT)]), False,
                 "ir-other-software", id="spoofed XFF"),
    pytest.param(ClientRequest(target=CRYPTO, headers=[("X-Forwarded-Uri", CHAT), ("X-Forwarded-Method", "HEAD"),
                                                       ("X-Original-URI", CHAT), ("X-Exportgate-Decision", "allow")]),
                 False, "ir-other-software", id="spoofed URI and decision headers"),
])
def test_decisions_through_the_proxy(gate: tuple[Client, Path], proxy: Proxy, req: ClientRequest, served: bool,
                                     rule: str) -> None:
    client, database = gate
    outcome = proxy(client, req)
    assert outcome.served is served
    if served:
        # The gate's answer rides on the request to the origin (Traefik authResponseHeaders, Envoy
        # allowed_upstream_headers): exactly the three decision headers.
        assert sorted(outcome.headers) == sorted(DECISION_HEADERS)
        assert outcome.headers["X-Exportgate-Rule"] == rule
        decision_id = outcome.headers["X-Exportgate-Decision-Id"]
    else:
        _assert_451_page(outcome, rule)
        decision_id = outcome.headers["X-Exportgate-Decision-Id"]
        if req.method != "HEAD":
            assert rule in outcome.body.decode()
    record = decision_record(database, decision_id)
    assert record is not None
    assert record["request"]["client"] == req.peer  # type: ignore[index]
    assert record["request"]["method"] == req.method  # type: ignore[index]
    assert record["request"]["host"] == req.host  # type: ignore[index]


@pytest.mark.parametrize("proxy", PROXIES)
@pytest.mark.parametrize(("accept", "content_type"), [
    pytest.param("application/json", "application/json", id="json"),
    pytest.param("text/html", "text/html; charset=utf-8", id="html"),
])
def test_451_page_follows_accept(gate: tuple[Client, Path], proxy: Proxy, accept: str, content_type: str) -> None:
    client, _ = gate
    outcome = proxy(client, ClientRequest(target=CRYPTO, headers=[("Accept", accept)]))
    _assert_451_page(outcome, "ir-other-software")
    assert outcome.headers["Content-Type"] == content_type
    assert outcome.gate_request["accept"] == accept  # authRequestHeaders / allowed_headers let it through
    if accept == "application/json":
        assert json.loads(outcome.body)["status"] == 451


@pytest.mark.parametrize("proxy", PROXIES)
def test_refused_paths(gate: tuple[Client, Path], proxy: Proxy) -> None:
    client, _ = gate
    outcome = proxy(client, ClientRequest(target="/files%2fcrypto-1.tar.gz"))
    assert (outcome.served, outcome.status) == (False, 400)
    assert b"encoded-slash" in outcome.body


def test_store_failure(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, serve={"trust_proxy": [f"{PROXY}/32"]}), env={})
    app = create_app(config)
    try:
        client = Client(app)
        with StoreFault(tmp_path / "records.db"):
            # Traefik hands the gate's 503 to the client; Envoy turns a 5xx into status_on_error (503).
            t = traefik(client, ClientRequest(target=CHAT))
            assert (t.served, t.status) == (False, 503) and b"could not be recorded" in t.body
            e = envoy(client, ClientRequest(target=CHAT))
            assert (e.served, e.status, e.gate_status) == (False, 503, 503)
    finally:
        app.runtime.close()


# --------------------------------------------------------------------------------------------- Traefik only


def test_traefik_request_is_what_the_docs_say(gate: tuple[Client, Path]) -> None:
    client, _ = gate
    outcome = traefik(client, ClientRequest(target=CRYPTO + "?a=1", method="HEAD",
                                            headers=[("Accept", "*/*"), ("User-Agent", "pip/24"),
                                                     ("Cookie", "session=secret")]))
    sent = outcome.gate_request
    assert sent["x-forwarded-method"] == "HEAD"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["x-forwarded-host"] == "mirror.example.org"
    assert sent["x-forwarded-uri"] == CRYPTO + "?a=1"
    assert sent["x-forwarded-for"] == IR_CLIENT
    # authRequestHeaders: the client's other headers (cookies!) stay away from the gate.
    assert "cookie" not in sent and "user-agent" not in sent


def test_traefik_behind_a_trusted_load_balancer(gate: tuple[Client, Path]) -> None:
    """The balancer's chain survives the entry point (trustedIPs) and ForwardAuth (trustForwardHeader)."""
    client, database = gate
    req = ClientRequest(target=CRYPTO, peer=LOAD_BALANCER, headers=[("X-Forwarded-For", f"{US_CLIENT}, {IR_CLIENT}")])
    outcome = traefik(client, req, trusted_ips=[LOAD_BALANCER])
    assert outcome.gate_request["x-forwarded-for"] == f"{US_CLIENT}, {IR_CLIENT}, {LOAD_BALANCER}"
    _assert_451_page(outcome, "ir-other-software")
    record = decision_record(database, outcome.headers["X-Exportgate-Decision-Id"])
    assert record is not None and record["request"]["client"] == IR_CLIENT  # type: ignore[index]


def test_traefik_without_the_clean_middleware_a_balancer_passes_the_clients_uri(gate: tuple[Client, Path]) -> None:
    """Why deploy/traefik deletes X-Forwarded-Uri before ForwardAuth: a trusted balancer passes client headers on."""
    client, _ = gate
    req = ClientRequest(target=CRYPTO, peer=LOAD_BALANCER,
                        headers=[("X-Forwarded-For", IR_CLIENT), ("X-Forwarded-Uri", CHAT)])
    unsafe = traefik(client, req, trusted_ips=[LOAD_BALANCER], removed=[])
    assert unsafe.served  # the gate decided on chat-1, Traefik would serve crypto-1: the hole the file closes
    assert unsafe.headers["X-Exportgate-Rule"] == "ir-personal-comms-software"
    safe = traefik(client, req, trusted_ips=[LOAD_BALANCER])
    _assert_451_page(safe, "ir-other-software")


def test_traefik_copying_every_client_header_cannot_smuggle_a_uri(gate: tuple[Client, Path]) -> None:
    """Without authRequestHeaders a client's X-Original-URI reaches the gate: it disagrees with X-Forwarded-Uri."""
    client, _ = gate
    req = ClientRequest(target=CRYPTO, headers=[("X-Original-URI", CHAT)])
    outcome = traefik(client, req, forward={"authRequestHeaders": []})
    assert (outcome.served, outcome.status) == (False, 400)
    assert b"disagree" in outcome.body


# ----------------------------------------------------------------------------------------------- Envoy only


def test_envoy_request_is_what_the_docs_say(gate: tuple[Client, Path]) -> None:
    client, _ = gate
    outcome = envoy(client, ClientRequest(target=CRYPTO + "?a=1", method="POST",
                                          headers=[("Accept", "*/*"), ("Cookie", "session=secret"),
                                                   ("X-Forwarded-Uri", CHAT)]))
    sent = outcome.gate_request
    assert sent["content-length"] == "0"
    assert sent["host"] == "mirror.example.org"
    assert sent["x-forwarded-for"] == IR_CLIENT
    assert "cookie" not in sent and "x-forwarded-uri" not in sent  # allowed_headers: exact names only
    _assert_451_page(outcome, "ir-other-software")


def test_envoy_with_a_prefix_allowlist_a_client_uri_is_refused(gate: tuple[Client, Path]) -> None:
    """allowed_headers with prefix "x-" would pass a client's X-Forwarded-Uri on; the gate refuses the conflict."""
    client, _ = gate
    outcome = envoy(client, ClientRequest(target=CRYPTO, headers=[("X-Forwarded-Uri", CHAT)]),
                    allowed_patterns=[{"prefix": "x-"}, {"exact": "accept"}])
    assert (outcome.served, outcome.status) == (False, 400)
    assert b"disagree" in outcome.body


def test_envoy_gate_down_is_refused(gate: tuple[Client, Path]) -> None:
    client, _ = gate
    outcome = envoy(client, ClientRequest(target=CHAT), gate_down=True)
    assert (outcome.served, outcome.status) == (False, 503)


def test_envoy_deploy_file_settings() -> None:
    settings = envoy_settings()
    hcm, authz = settings["hcm"], settings["authz"]
    assert authz["failure_mode_allow"] is False
    assert authz["http_service"]["path_prefix"] == "/auth"
    assert all("exact" in p for p in authz["allowed_headers"]["patterns"])
    assert "allowed_client_headers" not in authz["http_service"]["authorization_response"]
    assert hcm["use_remote_address"] is True
    assert hcm["normalize_path"] is True and hcm["merge_slashes"] is True
    assert hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST"


@pytest.mark.parametrize("proxy", PROXIES)
def test_an_allowed_download_is_kept_from_shared_caches(gate: tuple[Client, Path], proxy: Proxy) -> None:
    """deploy/README rule 6: nginx and Caddy say 'private'; Traefik and Envoy answered with the origin's headers
    alone, which a CDN may keep (a static file's ETag and Last-Modified) and replay to the next client."""
    client, _ = gate
    outcome = proxy(client, ClientRequest(target=CHAT))
    assert outcome.served
    cache_control = {k.lower(): v for k, v in outcome.answer_headers.items()}.get("cache-control", "")
    assert {"private", "no-store"} & {d.strip() for d in cache_control.split(",")}, outcome.answer_headers


def test_a_clients_decision_headers_are_dropped() -> None:
    """A client's X-Exportgate-* would reach the origin and the access log looking like the gate's decision: on
    index pages and metadata (not gated), and on a gated download the gate blocked or could not decide."""
    dynamic = yaml.safe_load((DEPLOY / "traefik" / "exportgate.yml").read_text(encoding="utf-8"))["http"]
    for name, router in dynamic["routers"].items():
        if router["service"] == "mirror":
            removed = {h.lower() for m in router.get("middlewares", []) for h, v in
                       dynamic["middlewares"][m].get("headers", {}).get("customRequestHeaders", {}).items() if v == ""}
            assert {"x-exportgate-decision", "x-exportgate-decision-id", "x-exportgate-rule"} <= removed, name
    # Envoy: removed from every request before ext_authz (a route's request_headers_to_remove would act after it,
    # leaving a client's values in the access log of a block or a gate error on the gated route).
    filters = [f["name"] for f in envoy_settings()["hcm"]["http_filters"]]
    assert filters.index("envoy.filters.http.header_mutation") < filters.index("envoy.filters.http.ext_authz")
    mutation = next(f["typed_config"] for f in envoy_settings()["hcm"]["http_filters"]
                    if f["name"] == "envoy.filters.http.header_mutation")
    removed = {m["remove"] for m in mutation["mutations"]["request_mutations"] if "remove" in m}
    assert {"x-exportgate-decision", "x-exportgate-decision-id", "x-exportgate-rule"} <= removed


# ------------------------------------------------------------------------------------- other deploy files


def test_gunicorn_conf_serves_the_gate(tmp_path: Path) -> None:
    require(Path(sys.executable).with_name("gunicorn").exists() or shutil.which("gunicorn") is not None,
            "gunicorn", "pip install -e '.[web]'")
    port = free_port()
    config = write_config(tmp_path, serve={"bind": f"127.0.0.1:{port}", "workers": 2, "threads": 2,
                                           "trust_proxy": ["127.0.0.1/32"]})
    with GunicornProcess(workdir=tmp_path / "gunicorn", config=config, port=port):
        statuses = [request(port, "/auth", headers={"X-Original-URI": CRYPTO, "X-Forwarded-For": IR_CLIENT}).status
                    for _ in range(4)]
        assert statuses == [403] * 4
        metrics = request(port, "/metrics").text
    families = {s.name: s.value for f in text_string_to_metric_families(metrics) for s in f.samples
                if not s.labels or s.labels.get("rule") == "ir-other-software"}
    # Summed over both workers, and the store gauge is 1 although one worker may never have been asked.
    assert families["exportgate_decisions_total"] == 4
    assert families["exportgate_record_store_healthy"] == 1


def test_gunicorn_conf_removes_the_metrics_directory_it_made_even_after_a_reload(tmp_path: Path) -> None:
    import os
    import signal
    import time

    port = free_port()
    config = write_config(tmp_path, serve={"bind": f"127.0.0.1:{port}", "workers": 1})
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR" and not k.startswith("EXPORTGATE_")}
    env.update(TMPDIR=str(temporary), EXPORTGATE_CONFIG=str(config))
    exe = Path(sys.executable).with_name("gunicorn")
    with open(tmp_path / "gunicorn.log", "wb") as log:
        proc = subprocess.Popen([str(exe), "-c", str(DEPLOY / "gunicorn.conf.py")], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if request(port, "/healthz").status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
            time.sleep(0.1)
        assert [p.name[:19] for p in temporary.iterdir()] == ["exportgate-metrics-"]
        proc.send_signal(signal.SIGHUP)  # gunicorn runs the config file again
        time.sleep(1.0)
        proc.terminate()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list(temporary.iterdir()) == []


def test_alert_rules_name_metrics_the_gate_exports(gate: tuple[Client, Path]) -> None:
    client, _ = gate
    families = list(text_string_to_metric_families(client.get("/metrics").get_data(as_text=True)))
    # Labelled counters without a sample yet still declare their family.
    exported = {s.name for f in families for s in f.samples} | {f"{f.name}_total" for f in families
                                                                 if f.type == "counter"} | {f.name for f in families}
    # And the one the server's master sets (tests/integration/test_serve_operations.py reads it from a running gate).
    from exportgate.web.metrics import reload_gauge

    exported |= {m.name for m in reload_gauge().describe()}
    rules = yaml.safe_load((DEPLOY / "prometheus" / "exportgate-alerts.yml").read_text(encoding="utf-8"))
    named = {m for g in rules["groups"] for r in g["rules"] for m in re.findall(r"exportgate_[a-z_]+", r["expr"])}
    assert named and named <= exported, named - exported
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    assert scrape["scrape_configs"][0]["job_name"] == "exportgate"


def test_systemd_unit_parses(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze", "apt-get install systemd")
    assert analyze is not None
    exe = Path(sys.executable).with_name("exportgate")
    unit = tmp_path / "exportgate.service"
    text = (DEPLOY / "systemd" / "exportgate.service").read_text(encoding="utf-8")
    unit.write_text(text.replace("/opt/exportgate/bin/exportgate", str(exe)), encoding="utf-8")
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, check=False)
    problems = [line for line in result.stderr.splitlines() if "exportgate.service" in line]
    assert problems == [], result.stderr


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / "exportgate.service").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_systemd_unit_lets_the_gate_do_what_its_config_asks() -> None:
    """Under the unit a unix-socket bind failed (gunicorn chowns the socket, and @privileged holds @chown), and a
    record_log in /var/log stopped every worker from starting (read-only there)."""
    unit = _unit_settings()
    filters = unit["SystemCallFilter"]
    denied = [f for f in filters if f.startswith("~")]
    assert any("@privileged" in f for f in denied)
    assert filters.index("@chown") > filters.index(denied[-1])  # allowed again after the deny list
    assert unit["LogsDirectory"] == ["exportgate"]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "record_log: /var/log/exportgate/" in readme
    # Nothing in the environment overrides gate.yaml's records: the admin's commands read gate.yaml alone.
    assert not any(v.startswith("EXPORTGATE_RECORDS") for v in unit.get("Environment", []))


def test_container_image_leaves_records_and_mode_to_gate_yaml() -> None:
    """EXPORTGATE_RECORDS and EXPORTGATE_SERVE__MODE in the image overrode a mounted gate.yaml's `records:` (a
    PostgreSQL store) and `serve.mode` in silence: environment variables win over the file."""
    text = (DEPLOY / "container" / "Containerfile").read_text(encoding="utf-8")
    env = " ".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "EXPORTGATE_RECORDS" not in env and "EXPORTGATE_SERVE__MODE" not in env
    assert "XDG_STATE_HOME=/var/lib" in env  # the default store on the volume
    assert "--format docker" in text  # podman's OCI default drops HEALTHCHECK
