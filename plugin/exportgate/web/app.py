"""The WSGI application ``exportgate serve`` runs: the mode's handler plus the gate's own pages.

Routes on every mode: ``/healthz`` (alive), ``/readyz`` (geolocation loaded, a pack in force, record store
writable, and the origin: proxy mode's upstream takes a connection, static mode's root is a directory) and
``/metrics`` (Prometheus), both for clients in ``serve.admin_from`` only (:class:`AdminAccess`),
``/exportgate/blocked/<decision id>`` (the 451 page of a recorded block, for nginx's ``error_page``),
``/exportgate/policy`` (who blocks and under which packs: the default ``blocked-by`` link). Everything else goes
to the mode: ``/auth`` in forward-auth mode, the mirror in proxy and static modes.

Build it with :func:`create_app`; it opens the gate's resources (store, recorder, geo reader) and must be called
in the process that serves (after gunicorn forks), never before.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from typing import Any

from ..config import GateConfig
from ..errors import ExportGateError
from ..runtime import DecisionFiles, GateRuntime
from .clientaddr import PEER, Networks, TrustedProxies
from .forwardauth import Admission, ForwardAuth, StartResponse, plain
from .metrics import Metrics
from .page import NO_STORE, POLICY_PATH, Operator, page_facts_from_record, policy_document, render

log = logging.getLogger("exportgate.web")

BLOCKED_PREFIX = "/exportgate/blocked/"
PROBE_EVERY = 2.0
"""Seconds a readiness write probe's answer stands: /readyz and /metrics may be asked by anyone, and each probe is a
write transaction that would take the store's lock from the records."""
_DECISION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def operator_of(config: GateConfig) -> Operator:
    return Operator(name=config.operator, contact=config.contact, policy_url=config.policy_url or POLICY_PATH)


class AdminAccess:
    """Who may read the gate's state (``/readyz``, ``/metrics``): a client in ``serve.admin_from``, located through
    the trusted proxies as a download's client is. In proxy and static modes the gate faces the internet: decision
    counts by rule and the store's health are for its operators, and a client's ``X-Forwarded-For`` only counts
    where a trusted proxy wrote it."""

    def __init__(self, networks: Networks, proxies: TrustedProxies) -> None:
        self.networks = networks
        self.proxies = proxies

    def allows(self, environ: dict[str, Any]) -> bool:
        origin = self.proxies.resolve_environ(environ)
        if origin.source == PEER and not environ.get("REMOTE_ADDR"):
            return self.networks.unix  # a unix socket's peer: no address to compare
        return origin.address is not None and origin.address in self.networks


class GateApp:
    """Dispatches the gate's own routes and hands the rest to the mode's WSGI app."""

    def __init__(self, runtime: GateRuntime, mode_app: Any, *, metrics: Metrics, operator: Operator,
                 forward_auth: ForwardAuth | None = None, admin: AdminAccess | None = None) -> None:
        self.runtime = runtime
        self.admin = admin
        """Who may read ``/readyz`` and ``/metrics``; ``None``: anyone."""
        self.mode_app = mode_app
        self.metrics = metrics
        self.operator = operator
        self.forward_auth = forward_auth
        """forward-auth mode: the ``/auth`` endpoint (the event-loop servers call it directly)."""
        self._probed: tuple[float, bool, str | None] | None = None  # (when, writable, error) of the last probe
        self._origin_probed: tuple[float, dict[str, Any]] | None = None  # (when, answer) of the last origin check

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return plain(start_response, "200 OK", "ok")
        if path == "/readyz" or path == "/metrics":
            if self.admin is not None and not self.admin.allows(environ):
                # Not for this client: what the mode serves at that path (the mirror's file, or a 404 in
                # forward-auth mode), never the gate's state.
                return self.mode_app(environ, start_response)
            return self.readyz(start_response) if path == "/readyz" else self.metrics_page(start_response)
        if path.startswith(BLOCKED_PREFIX):
            if self.forward_auth is None:
                # Only a front end's error_page needs it (forward-auth mode, on the gate's own address). In the
                # modes where clients reach the gate, the 451 is answered in place, and decision ids are
                # sequential: served, any client could read every other client's blocked downloads.
                return plain(start_response, "404 Not Found", "not found")
            return self.blocked_page(environ, start_response, path[len(BLOCKED_PREFIX):])
        if path == POLICY_PATH:
            return self.policy_page(environ, start_response)
        return self.mode_app(environ, start_response)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        gate = self.runtime.gate
        checks: dict[str, Any] = {}
        ok = True
        try:
            geo = gate.locator.describe()
            # Still ok when the file on disk did not load: the data loaded before answers (and the error shows).
            checks["geo"] = {"ok": True, **{k: geo.get(k) for k in ("source", "age_days", "stale",
                                                                      "last_reload_error")}}
        except Exception as exc:  # noqa: BLE001 - readiness reports, never crashes
            checks["geo"] = {"ok": False, "error": str(exc)}
            ok = False
        try:
            pack = gate.policies.pack_at(dt.datetime.now(dt.UTC))
            checks["policy"] = {"ok": True, "pack": f"{pack.id}@{pack.ref.version}"}
        except ExportGateError as exc:
            checks["policy"] = {"ok": False, "error": str(exc)}
            ok = False
        recorder = self.runtime.recorder
        healthy = bool(recorder is not None and recorder.healthy)
        last_error = recorder.last_error if recorder is not None else "no recorder"
        probe = getattr(self.runtime.store, "check_writable", None)
        if recorder is not None and not healthy and probe is not None:
            # The recorder turns healthy only with its next commit; a load balancer that drains this gate on 503
            # would never send that request. Ask the store directly whether it would take a write now (at most
            # every PROBE_EVERY seconds).
            now = time.monotonic()
            probed = self._probed
            if probed is not None and now - probed[0] < PROBE_EVERY:
                healthy, last_error = probed[1], probed[2] or last_error
            else:
                try:
                    probe()
                    healthy = True
                except ExportGateError as exc:
                    last_error = str(exc)
                self._probed = (now, healthy, None if healthy else last_error)
        checks["records"] = {"ok": healthy, "store": _redact(self.runtime.config.records), "last_error": last_error}
        ok = ok and healthy
        # What the mode serves from: proxy mode's upstream, static mode's root. Ready with every download failing
        # (502, 404) would keep the gate in a load balancer that has others to send them to.
        origin_check = getattr(self.mode_app, "origin_check", None)
        if origin_check is not None:
            checks["origin"] = self._origin_checked(origin_check)
            ok = ok and checks["origin"]["ok"]
        self.metrics.observe_health(checks["geo"], healthy)
        return ok, checks

    def _origin_checked(self, origin_check: Any) -> dict[str, Any]:
        """``origin_check()``'s answer, asked at most every PROBE_EVERY seconds (it may connect to the upstream)."""
        now = time.monotonic()
        if self._origin_probed is None or now - self._origin_probed[0] >= PROBE_EVERY:
            self._origin_probed = (now, origin_check())
        return self._origin_probed[1]

    def readyz(self, start_response: StartResponse) -> list[bytes]:
        ok, checks = self.readiness()
        body = json.dumps({"ready": ok, "checks": checks}, indent=2).encode()
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), NO_STORE])
        return [body]

    def metrics_page(self, start_response: StartResponse) -> list[bytes]:
        self.readiness()
        body, content_type = self.metrics.exposition()
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body))), NO_STORE])
        return [body]

    def blocked_page(self, environ: dict[str, Any], start_response: StartResponse, decision_id: str) -> list[bytes]:
        if not _DECISION_ID.fullmatch(decision_id):
            # Ids are the gate's own ([0-9a-f-] today); anything else is not one, and must not be echoed into
            # a header or the page.
            return plain(start_response, "404 Not Found", "no such blocked decision")
        store = self.runtime.store
        record = None
        if store is not None:
            try:
                record = store.get(decision_id)
            except ExportGateError as exc:
                log.error("cannot read decision %s for its 451 page: %s", decision_id, exc)
        if record is None or record.kind != "decision":
            # Still a refusal: the page could not be found, the download was blocked all the same.
            facts: dict[str, Any] = {"decision_id": decision_id, "decided_at": None, "rule": None,
                                     "citation": "see the operator's policy", "pack": {}, "path": None,
                                     "location": None}
        else:
            facts = page_facts_from_record(record.id, record.at, record.body)
            if record.body.get("enforced") != "block":
                return plain(start_response, "404 Not Found", "no such blocked decision")
        content_type, body = render(facts, self.operator, environ.get("HTTP_ACCEPT"))
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), NO_STORE,
                   ("X-Exportgate-Decision", "block"), ("X-Exportgate-Decision-Id", decision_id)]
        if facts.get("rule"):
            headers.append(("X-Exportgate-Rule", str(facts["rule"])))
        if self.operator.policy_url:
            headers.append(("Link", f'<{self.operator.policy_url}>; rel="blocked-by"'))
        start_response("451 Unavailable For Legal Reasons", headers)
        return [body] if environ.get("REQUEST_METHOD") != "HEAD" else [b""]

    def policy_page(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        body = policy_document(self.runtime.gate.policies.packs, self.operator)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def _redact(url: str) -> str:
    """Store URL without a password, for readiness output."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def count_record_log_failures(runtime: GateRuntime, metrics: Metrics) -> None:
    """Records that did not reach ``record_log`` counted in ``exportgate_record_log_failures_total``: the log
    shipper's copy misses them, which the one log line of a failure run does not say."""
    if runtime.recorder is not None:
        runtime.recorder.on_sink_failure = metrics.record_log_failures.inc


def build_admission(runtime: GateRuntime, config: GateConfig, metrics: Metrics) -> Admission:
    proxies = TrustedProxies(config.serve.trust_proxy, header=config.serve.forwarded_header)
    return Admission(runtime.gate, proxies=proxies, case_insensitive=config.case_insensitive_paths,
                     fail_open=config.serve.fail_open, metrics=metrics)


def create_app(config: GateConfig, *, runtime: GateRuntime | None = None,
               files: DecisionFiles | None = None) -> GateApp:
    """The WSGI app for ``config.serve.mode``, with the gate's resources opened (deciding by ``files`` when the
    server's master loaded them)."""
    owned = runtime is None
    runtime = runtime or GateRuntime(config, record=True, files=files)
    try:
        return _create_app(config, runtime)
    except BaseException:
        if owned:
            runtime.close()
        raise


def _create_app(config: GateConfig, runtime: GateRuntime) -> GateApp:
    metrics = Metrics()
    # Each worker states its own store's health from the start: with several workers the gauge is the minimum over
    # them, and a worker that never set it would count as 0 (unhealthy).
    metrics.store_healthy.set(1 if runtime.recorder is not None and runtime.recorder.healthy else 0)
    count_record_log_failures(runtime, metrics)
    operator = operator_of(config)
    admission = build_admission(runtime, config, metrics)
    mode = config.serve.mode
    if any(str(cidr).endswith("/0") for cidr in config.serve.trust_proxy):
        log.warning("serve.trust_proxy trusts every address (%s): any client can choose its own location with "
                    "X-Forwarded-For; list only the front end", ", ".join(map(str, config.serve.trust_proxy)))
    mode_app: Any
    auth = None
    if mode == "forward-auth":
        if not config.serve.trust_proxy:
            # Not an error (a gate may face clients itself), but behind a front end nothing it says is believed:
            # every request is located at the front end's own address, an unknown location the packs serve.
            log.warning("forward-auth mode with no trust_proxy: every request is located at the address of the "
                        "peer that asks /auth; behind a front end, list it in serve.trust_proxy (deploy/README.md)")
        if any(b.strip().startswith("unix:") for b in config.serve.bind.split(",")) and \
                "unix" not in config.serve.trust_proxy:
            # A front end on a unix socket has no address: untrusted, it is a client with no location.
            log.warning("forward-auth mode bound to a unix socket without 'unix' in serve.trust_proxy: the front "
                        "end's client headers are not believed, and every request is an unknown location")
        auth = ForwardAuth(admission, operator=operator, block_status=config.serve.block_status,
                           mirror_root=config.serve.root)

        def forward_auth_only(environ: dict[str, Any], start_response: StartResponse) -> Any:
            path = environ.get("PATH_INFO", "")
            if path == "/auth" or path.startswith("/auth/"):
                return auth(environ, start_response)
            return plain(start_response, "404 Not Found", "forward-auth mode: ask /auth")

        mode_app = forward_auth_only
    elif mode == "proxy":
        from .proxy import ProxyApp

        if not config.serve.upstream:
            raise ExportGateError("proxy mode needs an upstream (--upstream URL or serve.upstream)")
        mode_app = ProxyApp(admission, upstream=config.serve.upstream, operator=operator,
                            gated=config.serve.gated, timeout=config.serve.upstream_timeout, metrics=metrics,
                            mirror_root=config.serve.root)
    elif mode == "static":
        from .static import StaticApp

        if not config.serve.root:
            raise ExportGateError("static mode needs a directory (--root DIR or serve.root)")
        mode_app = StaticApp(admission, root=config.serve.root, operator=operator, gated=config.serve.gated)
    else:
        raise ExportGateError(f"unknown mode {mode!r}")
    admin = AdminAccess(Networks(config.serve.admin_from, what="serve.admin_from entry", file=config.file),
                        admission.proxies)
    return GateApp(runtime, mode_app, metrics=metrics, operator=operator, forward_auth=auth, admin=admin)


__all__ = ["GateApp", "create_app"]
