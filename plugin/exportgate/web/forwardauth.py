"""The forward-auth endpoint: nginx ``auth_request``, Traefik ForwardAuth, Caddy ``forward_auth``, Envoy ext_authz.

The front end asks ``/auth`` before serving a download and the gate answers with a status only:

* allow and flag -> ``200`` (the front end serves the file);
* block -> ``451`` with the page (Traefik, Caddy and Envoy pass the gate's answer through to the client), or ``403``
  when the request came the nginx way (``X-Original-URI``): ``auth_request`` only understands 2xx/401/403 and
  turns anything else into a 500, so ``deploy/nginx`` maps 403 to the gate's 451 page at
  ``/exportgate/blocked/<decision id>``;
* the decision cannot be recorded -> ``503`` (the front end refuses the download), unless ``fail_open``.

Where the original request is read from, in this order: ``X-Original-URI``/``X-Original-Method`` (nginx),
``X-Forwarded-Uri``/``X-Forwarded-Method`` (Traefik, Caddy), or the path after ``/auth`` (Envoy ext_authz HTTP with
``path_prefix: /auth``), taken from the raw request target (``RAW_URI``/``REQUEST_URI``), never from the already
decoded ``PATH_INFO``. Two sources that disagree (including a header next to a path after ``/auth``), or none at
all, is a 400: the gate will not guess which artifact it is deciding on. So is one of these headers sent twice
(:data:`SINGLE_HEADERS`): every front end sets it once, replacing what the client sent, so a second line was added
by someone else, and the two joined could name a third artifact. The event-loop and RSGI servers see each line;
under a generic WSGI server the lines arrive already joined with ``,``, which cannot be told from a comma in a path.

The file decided on: the path as the front end will resolve it (:mod:`exportgate.web.paths`), by name. A symlink
in the mirror would have the front end open its target; with ``serve.root`` (the directory the front end serves,
on the gate's host) the gate decides on that target, as static mode does (the record keeps the name asked for as
``requested_path``), and refuses a link out of the root, to nothing, or in a directory it may not read (403,
undecided). That covers what the gate is asked about: names the front end exempts (index pages, metadata) must
not be links. Without it, keep links out of the tree (deploy/nginx refuses them itself).

Security caveat: these headers and ``X-Forwarded-For`` are trusted because only the front end can reach this
endpoint. Bind the gate to loopback or a private network and list the front end in ``trust_proxy``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from ..decision import RequestFacts
from ..errors import ExportGateError, RecordStoreError
from ..records.chain import canonical_text
from .clientaddr import PEER, ClientOrigin, TrustedProxies
from .mirrorfiles import checked_root, linked_file, served_uri
from .page import NO_STORE, Operator, blocked_body, blocked_headers, decision_headers, send_blocked
from .paths import NormalisedPath, PathRejected, fold_path, normalise_path, origin_form

log = logging.getLogger("exportgate.web")

_TELL_UNTRUSTED_PEERS = 16
"""Peers named in the log as untrusted yet sending a forwarding header (once each, at most this many)."""

StartResponse = Callable[..., Any]

MAX_URI = 8192

# Every request header the endpoint reads (the client-address headers through TrustedProxies), in lower case: what a
# server that builds its environ itself must copy, as ``HTTP_*`` keys.
REQUEST_HEADERS = ("x-original-uri", "x-original-method", "x-forwarded-uri", "x-forwarded-method",
                   "x-forwarded-host", "x-forwarded-for", "forwarded", "host", "accept")


SINGLE_HEADERS = {"x-original-uri": "X-Original-URI", "x-original-method": "X-Original-Method",
                  "x-forwarded-uri": "X-Forwarded-Uri", "x-forwarded-method": "X-Forwarded-Method"}
"""Headers naming the original request, which a request may carry once (module docstring), as they are written."""
REPEATED_KEY = "exportgate.repeated_headers"
"""Environ key where a server that sees each header line lists those of :data:`SINGLE_HEADERS` sent more than once."""
UNREADABLE_KEY = "exportgate.unreadable_headers"
"""Environ key where a server that drops header lines it cannot read as text (granian: bytes outside ASCII) lists
those of :data:`REQUEST_HEADERS` it dropped: the gate would decide on what is left, so it refuses (400)."""


def environ_key(header: str) -> str:
    """``x-original-uri`` -> ``HTTP_X_ORIGINAL_URI``."""
    return "HTTP_" + header.upper().replace("-", "_")


def plain(start_response: StartResponse, status: str, text: str,
          extra: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    body = (text + "\n").encode()
    extra = list(extra)
    cache = [] if any(name.lower() == "cache-control" for name, _ in extra) else [NO_STORE]  # said once
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                            *cache, *extra])
    return [body]


def reject_path(start_response: StartResponse, exc: PathRejected, metrics: Any = None) -> list[bytes]:
    """A path the gate will not decide on (encoded slash, NUL, escaping the root…): 400, counted."""
    if metrics is not None:
        metrics.reject("path")
    return plain(start_response, "400 Bad Request", f"rejected path: {exc.reason}")


REFUSAL_LOG_EVERY = 10.0
"""Seconds between log lines about downloads refused because the record store fails."""


class Admission:
    """Decide one download request and say what to answer; shared by every HTTP mode.

    ``admit`` returns ``(decision, error_status, error_text)``: a recorded decision, or why there is none.
    """

    def __init__(self, gate: Any, *, proxies: TrustedProxies, case_insensitive: bool = False,
                 fail_open: bool = False, metrics: Any = None) -> None:
        self.gate = gate
        self.proxies = proxies
        self.case_insensitive = case_insensitive
        self.fail_open = fail_open
        self.metrics = metrics
        # The store-health gauge follows this process's commits as they happen, not only when /metrics or
        # /readyz is asked on this worker (with several workers it is the minimum over all of them).
        self._store_failing = False
        self._refused_unsaid = 0  # downloads refused for the store since the last line that said so
        self._refused_said_at = -REFUSAL_LOG_EVERY

    def admit(self, environ: dict[str, Any], method: str, raw_uri: str, host: str | None,
              normalised: NormalisedPath | None = None, requested: str | None = None) -> tuple[Any, str, str]:
        """``normalised``: ``normalise_path(raw_uri)`` when the caller has it already (modes that must match
        ``gated`` first), so the hot path does not do it twice; case is folded here if the gate is
        case-insensitive. ``requested``: see :meth:`admit_download`."""
        facts, status, text = self.facts(self.proxies.resolve_environ(environ), method, raw_uri, host, normalised)
        if facts is None:
            return None, status, text
        if requested is not None:
            facts = replace(facts, requested_path=requested)
        return self.decide_and_record(facts)

    def decide_and_record(self, facts: RequestFacts) -> tuple[Any, str, str]:
        """``(decision, "", "")`` once its record is committed (or, with ``fail_open``, could not be), or
        ``(None, status, text)`` refusing the download."""
        try:
            decision = self.gate.decide_and_record(facts)
        except ExportGateError as exc:
            return self.failed(facts, exc)
        return self.recorded(decision), "", ""

    def admit_download(self, environ: dict[str, Any], start_response: StartResponse, raw_uri: str,
                       normalised: NormalisedPath | None, operator: Operator,
                       requested: str | None = None) -> tuple[Any, list[bytes] | None]:
        """For the modes that serve the download themselves (middleware, proxy, static): ``(decision, None)`` to
        serve it, or ``(None, answer)`` refusing it: why it could not be decided, or the 451 page. ``requested``:
        the path asked for, when ``raw_uri`` names the file served instead (static mode), for the record."""
        refusal = self.no_client_named(environ)
        if refusal is not None:
            return None, plain(start_response, "400 Bad Request", refusal)
        decision, status, text = self.admit(environ, environ.get("REQUEST_METHOD", "GET"), raw_uri,
                                            environ.get("HTTP_HOST"), normalised, requested)
        if decision is None:
            return None, plain(start_response, status, text)
        if not decision.served:
            return None, send_blocked(start_response, decision, operator, environ)
        return decision, None

    def no_client_named(self, environ: dict[str, Any]) -> str | None:
        """Why a download from a trusted front end that names no client is refused (400), or ``None``. Located at
        the front end's own address it would be an unknown location, which packs flag and serve: one front-end
        location that loses the header (nginx drops server-level ``proxy_set_header`` lines in a location that sets
        its own) would serve restricted artifacts to anyone behind it."""
        missing = self.proxies.sent_no_client(environ)
        if missing is None:
            return None
        if self.metrics is not None:
            self.metrics.reject("headers")
        return (f"the front end sent no {missing}: the gate cannot tell who is asking (deploy/ shows the header "
                "each front end sends)")

    def facts(self, origin: ClientOrigin, method: str, raw_uri: str, host: str | None,
              normalised: NormalisedPath | None = None) -> tuple[RequestFacts | None, str, str]:
        """What the gate decides on, or ``(None, status, text)`` for a request it will not decide on."""
        if len(raw_uri) > MAX_URI:  # the query string counts too
            if self.metrics is not None:
                self.metrics.reject("path")
            return None, "414 URI Too Long", "request URI too long"
        try:
            if normalised is None:
                normalised = normalise_path(raw_uri, case_insensitive=self.case_insensitive)
            elif self.case_insensitive:
                normalised = NormalisedPath(path=fold_path(normalised.path, normalised.raw), raw=normalised.raw)
        except PathRejected as exc:
            if self.metrics is not None:
                self.metrics.reject("path")
            return None, "400 Bad Request", f"rejected path: {exc.reason}"
        client_error = None
        if origin.address is None:
            client_error = origin.error or "unparseable"
        return RequestFacts(
            client=origin.address or "",
            path=normalised.path,
            # Without the query string: signed-URL tokens stay out of the records.
            raw_path=normalised.raw if normalised.raw != normalised.path else None,
            method=method,
            host=host,
            client_source=origin.source,
            address_chain=origin.chain,
            client_hop=origin.hop,
            client_error=client_error,
        ), "", ""

    def recorded(self, decision: Any, *, count: bool = True) -> Any:
        """Account for a decision whose record is committed; returns it. ``count=False``: the caller counts it
        in the metrics itself (the event-loop servers, once per turn of their loop)."""
        if self._store_failing:
            self._store_failing = False
            if self._refused_unsaid:
                log.warning("record store committing again; %d more download(s) were refused meanwhile",
                            self._refused_unsaid)
            self._refused_unsaid, self._refused_said_at = 0, -REFUSAL_LOG_EVERY
            if self.metrics is not None:
                self.metrics.store_healthy.set(1)
        if count and self.metrics is not None:
            self.metrics.decided(decision)
        return decision

    def failed(self, facts: RequestFacts, exc: ExportGateError) -> tuple[Any, str, str]:
        """No committed record for ``facts``: refuse (503), or with ``fail_open`` serve what the gate decides."""
        if not isinstance(exc, RecordStoreError):
            log.error("no decision for %s: %s", facts.path, exc)
            if self.metrics is not None:
                self.metrics.reject("no-decision")
            return None, "503 Service Unavailable", f"no decision: {exc}"
        if self.metrics is not None:
            self.metrics.record_failed()
            self.metrics.store_healthy.set(0)
        self._store_failing = True
        if not self.fail_open:
            # One line per REFUSAL_LOG_EVERY seconds while the store fails, not one per request: a full disk that
            # the log shares would fill faster (every refusal is counted in exportgate_record_failures_total).
            now = time.monotonic()
            if now - self._refused_said_at >= REFUSAL_LOG_EVERY:
                more = f" ({self._refused_unsaid} more refused since the last line)" if self._refused_unsaid else ""
                log.error("decision record not committed, refusing download of %s: %s%s", facts.path, exc, more)
                self._refused_unsaid, self._refused_said_at = 0, now
            else:
                self._refused_unsaid += 1
            return None, "503 Service Unavailable", "decision could not be recorded; download refused"
        try:
            decision = self.gate.decide(facts)
        except ExportGateError as again:
            log.error("decision record not committed (%s), and no decision for %s: %s", exc, facts.path, again)
            return None, "503 Service Unavailable", f"no decision: {again}"
        # The answer names a decision id no record holds: the whole decision goes to the log, so compliance can
        # find the download that id was served under and account for it.
        outcome = "serving anyway (fail_open)" if decision.served else "blocked all the same"
        log.error("decision record not committed, %s %s: %s; unrecorded decision %s", outcome, facts.path, exc,
                  canonical_text({"id": decision.id, "at": decision.at.isoformat(), **decision.to_record()}))
        if self.metrics is not None:
            self.metrics.decided(decision)
        return decision, "", ""


class ForwardAuth:
    """WSGI app answering ``/auth`` and ``/auth/<original path>`` for a front end."""

    def __init__(self, admission: Admission, *, operator: Operator, block_status: str = "auto",
                 mirror_root: str | None = None) -> None:
        """``mirror_root``: the directory the front end serves, when it is on this host (``serve.root``): each
        request is decided on the file the front end will open (a symlink's target), as static mode does."""
        if block_status not in ("auto", "451", "403"):
            raise ValueError("block_status must be auto, 451 or 403")
        self.admission = admission
        self.operator = operator
        self.block_status = block_status
        self.mirror_root = mirror_root
        if mirror_root is not None:
            checked_root(mirror_root)
        self._told_untrusted: set[str] = set()

    def original_request(self, environ: dict[str, Any]) -> tuple[str | None, str, str, str | None]:
        """``(uri, method, style, problem)`` where style is ``nginx``, ``forwarded`` or ``envoy``."""
        unreadable = environ.get(UNREADABLE_KEY)
        if unreadable:
            return None, "", "", (f"a {unreadable[0]} header the server could not read (bytes outside ASCII): the "
                                  "gate will not decide on what is left of the request")
        repeated = environ.get(REPEATED_KEY)
        if repeated:
            return None, "", "", (f"more than one {repeated[0]} header: the front end sends it once, and the gate "
                                  "will not choose which request to decide on")
        nginx_uri = environ.get("HTTP_X_ORIGINAL_URI")
        fwd_uri = environ.get("HTTP_X_FORWARDED_URI")
        if nginx_uri is not None and fwd_uri is not None and nginx_uri != fwd_uri:
            return None, "", "", "X-Original-URI and X-Forwarded-Uri disagree"
        path_uri = None
        path = environ.get("PATH_INFO", "")
        if path.startswith("/auth/"):
            path_uri = _after_auth(environ.get("RAW_URI") or environ.get("REQUEST_URI") or "")
            if path_uri is None:
                # Never PATH_INFO: it is decoded once already, and deciding on it would decode twice.
                return None, "", "", ("cannot read the raw request target (no RAW_URI or REQUEST_URI); serve this "
                                      "form (Envoy's path_prefix) with --server gunicorn")
            header_uri = nginx_uri if nginx_uri is not None else fwd_uri
            if header_uri is not None and header_uri != path_uri:
                return None, "", "", "the path after /auth and the X-Original-URI/X-Forwarded-Uri header disagree"
        if nginx_uri is not None:
            return nginx_uri, environ.get("HTTP_X_ORIGINAL_METHOD") or "GET", "nginx", None
        if fwd_uri is not None:
            return fwd_uri, environ.get("HTTP_X_FORWARDED_METHOD") or "GET", "forwarded", None
        if path_uri is not None:
            return path_uri, environ.get("REQUEST_METHOD", "GET"), "envoy", None
        return None, "", "", "missing X-Original-URI (nginx) or X-Forwarded-Uri (Traefik, Caddy)"

    def request(self, environ: dict[str, Any]) -> tuple[RequestFacts | None, str, str]:
        """``(facts, style, "")`` for the request to decide on, or ``(None, status, text)`` to answer at once."""
        uri, method, style, problem = self.original_request(environ)
        if uri is None:
            if self.admission.metrics is not None:
                self.admission.metrics.reject("headers")
            return None, "400 Bad Request", problem or "bad request"
        admission = self.admission
        host = environ.get("HTTP_X_FORWARDED_HOST") or environ.get("HTTP_HOST")
        origin = admission.proxies.resolve_environ(environ)
        facts, status, text = admission.facts(origin, method, uri, host)
        if facts is None:
            return None, status, text
        if self.mirror_root is not None:
            facts, status, text = self._file_served(facts, uri, origin, method, host)
            if facts is None:
                return None, status, text
        refusal = admission.no_client_named(environ)
        if refusal is not None:
            return None, "400 Bad Request", refusal
        if facts.client_source == PEER and len(self._told_untrusted) < _TELL_UNTRUSTED_PEERS:
            self._say_untrusted(environ)
        return facts, style, ""

    def _file_served(self, facts: RequestFacts, uri: str, origin: ClientOrigin, method: str,
                     host: str | None) -> tuple[RequestFacts | None, str, str]:
        """``facts`` for the file the front end will open under :attr:`mirror_root`: a symlink's target, also a
        directory's ``index.html`` that is one (with the path asked for as ``requested_path``); a refusal for what
        the gate cannot see (:func:`~exportgate.web.mirrorfiles.unseen`: a link out of the root or to nothing, a
        directory it may not read), which the front end would follow. The root is resolved now: a switched
        ``current`` link counts."""
        asked = normalise_path(uri).path  # as the file system spells it (facts.path may be case-folded)
        linked = linked_file(os.path.realpath(self.mirror_root or ""), asked)
        if linked.refused is not None:
            if self.admission.metrics is not None:
                self.admission.metrics.reject("path")
            return None, "403 Forbidden", f"{linked.refused}: not decided"
        if linked.decide_on is None:  # no link on the way: decided as asked
            return facts, "", ""
        facts_served, status, text = self.admission.facts(origin, method, served_uri(linked.decide_on), host)
        if facts_served is None:
            return None, status, text
        return replace(facts_served, requested_path=facts.path), "", ""

    def _say_untrusted(self, environ: dict[str, Any]) -> None:
        """Log, once per peer, a front end the gate does not trust: its every request is decided for its own
        address, which packs treat as an unknown location (flagged and served), and nothing else shows it."""
        header = self.admission.proxies.ignored_header(environ)
        peer = environ.get("REMOTE_ADDR") or ""
        if header is None or peer in self._told_untrusted:
            return
        self._told_untrusted.add(peer)
        log.warning("/auth from %s carried %s, but %s is not in serve.trust_proxy: the header is ignored and the "
                    "request decided for %s itself. If it is your front end, add its address as the gate sees it "
                    "to trust_proxy; if not, something other than the front end reaches the gate", peer or "a unix "
                    "socket", header, peer or "a unix-socket peer", peer or "that peer")

    def answer(self, environ: dict[str, Any], decision: Any, style: str) -> tuple[str, list[tuple[str, str]], bytes]:
        """Status line, headers and body for a decision (see the module docstring)."""
        if decision.served:
            return "200 OK", [("Content-Length", "0"), *decision_headers(decision)], b""
        nginx = self.block_status == "403" or (self.block_status == "auto" and style == "nginx")
        content_type, body = blocked_body(decision, self.operator, environ.get("HTTP_ACCEPT"))
        status_line = "403 Forbidden" if nginx else "451 Unavailable For Legal Reasons"
        return status_line, blocked_headers(decision, self.operator, content_type, len(body)), body

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        facts, style, text = self.request(environ)
        if facts is None:
            return plain(start_response, style, text)
        decision, status, text = self.admission.decide_and_record(facts)
        if decision is None:
            return plain(start_response, status, text)
        status_line, headers, body = self.answer(environ, decision, style)
        start_response(status_line, headers)
        return [body]


def _after_auth(raw: str) -> str | None:
    """The original request target in ``/auth/<target>``, from the raw request target (origin or absolute form)."""
    raw = origin_form(raw)
    if not raw.startswith("/auth/"):
        return None
    return raw[len("/auth"):]
