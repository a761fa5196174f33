"""WSGI middleware: put the gate in front of any Python package index or download app.

``GateMiddleware(app, admission, operator=…)`` decides every gated request before the wrapped app runs. A block
answers 451 with the page and the wrapped app never sees the request; allow and flag call the wrapped app with the
decision in ``environ["exportgate.decision"]`` and the decision headers added to its response. Requests outside
``gated`` (index pages, metadata) pass straight through without a decision. For a Flask app:
``gate_flask_app(app, config)`` wraps ``app.wsgi_app`` in one line; for any WSGI app, ``PerProcessGate(app, config)``
builds the gate from a config, again in each process a server forks after importing the app. Unless gate.yaml
names a ``policy_url``, the middleware also serves the gate's policy page at ``/exportgate/policy`` under the app's
mount: the 451's ``blocked-by`` link points there. Built by :class:`PerProcessGate`, it serves the gate's state
there too, as ``exportgate serve`` does at the root: ``/exportgate/healthz`` to anyone, ``/exportgate/readyz`` and
``/exportgate/metrics`` to clients in ``serve.admin_from`` (others get the app's own answer for the path). Under a
server with several processes, set ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode) for
``/exportgate/metrics`` to count every process's decisions, not only the one that answers.

The path is decided as normalised by :func:`~exportgate.web.paths.normalise_path` (decoded once, dot-segments
resolved, slashes merged; encoded ``/`` is a 400), and the wrapped app is handed exactly that path: ``PATH_INFO``,
``RAW_URI`` and ``REQUEST_URI`` are rewritten to it (the client's original target is kept in
``environ["exportgate.original_uri"]``), so an app that does not resolve ``..`` itself cannot open anything but
what was decided. A path that climbs out of the app's ``SCRIPT_NAME`` is a 404.

Paths are the whole request target, ``SCRIPT_NAME`` included: for an app mounted at ``/mirror``, ``gated`` globs and
the manifest's path rules are written ``/mirror/files/**``. A ``gated`` glob written without the mount point (as the
same gate.yaml would say it for the front end of an unmounted mirror) still gates what it names under the mount:
the request is decided, on its whole path, and the gate logs once that the globs leave the mount point out (package
rules match either way; a path rule written without the mount point leaves the file unclassified).

Caveat: apps that decode the path a second time or accept backslashes as separators need their own care; so does
a case-insensitive app behind a gate not configured with ``case_insensitive_paths``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from ..casefolding import fold_case
from ..errors import ConfigError
from ..globs import compile_glob
from ..yamlfile import item_line
from .forwardauth import Admission, StartResponse, plain, reject_path
from .page import NO_STORE, POLICY_PATH, Operator, decision_headers, overrides_no_store, policy_document
from .paths import PATH_SAFE, PathRejected, normalise_path, origin_form, wsgi_text
from .perprocess import PerProcess

log = logging.getLogger("exportgate.web")

DECISION_KEY = "exportgate.decision"
ORIGINAL_URI_KEY = "exportgate.original_uri"
"""The request target as the client sent it, before the middleware pointed PATH_INFO at the normalised path."""
STATE_PATHS = {"/exportgate/healthz": "healthz", "/exportgate/readyz": "readyz", "/exportgate/metrics": "metrics"}
"""The gate's state under the app's mount (module docstring)."""


def compile_gated(globs: Iterable[str], *, case_insensitive: bool = False) -> GatedPaths | None:
    """The gated path globs, matched as one regex; None = every path is gated.

    The globs are the manifest's (:func:`exportgate.globs.compile_glob`: ``*`` within a segment, ``**`` a whole
    segment crossing directories), so release engineers and ops write paths one way. A glob that is not valid is
    a :class:`ConfigError` naming ``serve.gated``. ``case_insensitive``: globs and paths are compared case-folded
    as the decision compares them for a case-insensitive origin (:func:`~exportgate.casefolding.fold_case`), so a
    glob written ``/Packages/**`` matches ``/packages/x`` and ``/PACKAGEſ/x`` alike, and no spelling of a gated
    path passes undecided.
    """
    parts = []
    for index, glob in enumerate(globs):
        try:
            parts.append(f"(?:{compile_glob(fold_case(glob) if case_insensitive else glob).source})")
        except ValueError as exc:
            line = item_line(globs, index)  # when ``globs`` comes from gate.yaml
            raise ConfigError(f"serve.gated: {exc}", line=line) from None
    if not parts:
        return None
    return GatedPaths(re.compile("|".join(parts)), case_insensitive=case_insensitive)


class GatedPaths:
    """Which paths need a decision (``serve.gated``): ``match(path)`` is true for those."""

    __slots__ = ("_fold", "_match")

    def __init__(self, pattern: re.Pattern[str], *, case_insensitive: bool) -> None:
        self._match = pattern.match
        self._fold = case_insensitive

    def match(self, path: str) -> bool:
        if self._match(fold_case(path) if self._fold else path) is not None:
            return True
        # The file a glob names, asked for with a trailing slash ('/files/x.tar.gz/', what '/x.tar.gz/.' resolves
        # to): werkzeug's safe_join and SharedDataMiddleware, Go's path.Clean and others serve the file for it.
        # Gated, so it is decided (a path with a trailing slash matches no artifact rule: unclassified).
        bare = path.rstrip("/")
        return bool(bare) and bare != path and self._match(fold_case(bare) if self._fold else bare) is not None


class GateMiddleware:
    """Decide before the wrapped WSGI app serves a download."""

    def __init__(self, app: Any, admission: Admission, *, operator: Operator | None = None,
                 gated: Iterable[str] = (), state: Any = None) -> None:
        """``state``: what serves the gate's ``/readyz`` and ``/metrics`` and says who may read them (a
        :class:`~exportgate.web.app.GateApp`, as :class:`PerProcessGate` builds it); None: not served."""
        self.app = app
        self.state = state
        self.admission = admission
        self.operator = operator or Operator()
        self.gated = compile_gated(gated, case_insensitive=admission.case_insensitive)
        self._said_mount = False
        self._said_outside = False
        # The default blocked-by link (no policy_url in gate.yaml) names the gate's policy page: served here, as
        # exportgate serve does, or the 451's link would lead to the app's 404.
        self._own_policy = self.operator.policy_url in (None, POLICY_PATH)
        if self.operator.policy_url is None:
            self.operator = replace(self.operator, policy_url=POLICY_PATH)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        raw_uri = _raw_uri(environ)
        try:
            # Case kept for the app; a case-insensitive gate matches ``gated`` (and decides) without case.
            normalised = normalise_path(raw_uri)
        except PathRejected as exc:
            return reject_path(start_response, exc, self.admission.metrics)
        path = normalised.path
        # The app gets the path that is matched and decided, not the raw one: /PACKAGES/, /a/../packages/ or
        # %70ackages must not slip past the gate as "not a download", and an app that does not resolve
        # dot-segments itself must not open something other than what was decided.
        in_app = _use_normalised(environ, path, raw_uri)
        script = environ.get("SCRIPT_NAME", "")
        if in_app is None:
            if not self._said_outside:
                # A client climbing out of the mount (/mirror/../x), or every request: SCRIPT_NAME set by a
                # middleware outside the gate (werkzeug's ProxyFix with x_prefix) that the request target lacks.
                self._said_outside = True
                log.warning("%s is outside the app's SCRIPT_NAME %s: answered 404 (said once). If every request "
                            "is, SCRIPT_NAME comes from a middleware outside the gate: wrap the gate around it",
                            path, script)
            return plain(start_response, "404 Not Found", "not found")
        if self._own_policy and in_app == POLICY_PATH:
            return self._policy_page(environ, start_response)
        if self.state is not None and in_app in STATE_PATHS:
            page = STATE_PATHS[in_app]
            if page == "healthz":
                return plain(start_response, "200 OK", "ok")
            if self.state.admin.allows(environ):
                return self.state.readyz(start_response) if page == "readyz" else self.state.metrics_page(
                    start_response)
        if self.gated is not None and not self.gated.match(path):
            # Gating more is the safe direction: a glob that names the path inside the app's mount gates it too.
            if in_app == path or not self.gated.match(in_app):
                return self.app(environ, start_response)
            self._say_mount_left_out(script, in_app)
        operator = self.operator
        if self._own_policy and script:  # the blocked-by link leads to this app's policy page, under its mount
            script_text = wsgi_text(script).rstrip("/")
            operator = replace(operator, policy_url=quote(script_text.encode("utf-8"), safe=PATH_SAFE) + POLICY_PATH)
        decision, refusal = self.admission.admit_download(environ, start_response, raw_uri, normalised, operator)
        if refusal is not None:
            return refusal
        environ[DECISION_KEY] = decision
        extra = decision_headers(decision)

        def start_with_decision(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            names = {name.lower() for name, _ in extra}
            kept = [(n, v) for n, v in headers if n.lower() not in names and not overrides_no_store(n.lower())]
            return start_response(status, kept + extra, exc_info)

        return self.app(environ, start_with_decision)

    def _policy_page(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0"), NO_STORE])
            return []
        body = policy_document(self.admission.gate.policies.packs, self.operator)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                  NO_STORE])
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    def _say_mount_left_out(self, script_name: str, in_app: str) -> None:
        if self._said_mount:
            return
        self._said_mount = True
        log.warning("serve.gated names %s only without the app's mount point %s: it is gated and decided on its "
                    "whole path; write serve.gated and the manifest's path rules with the mount point (%s%s)",
                    in_app, script_name, script_name.rstrip("/"), in_app)


def _use_normalised(environ: dict[str, Any], path: str, raw_uri: str) -> str | None:
    """Point ``PATH_INFO`` (and ``RAW_URI``/``REQUEST_URI``) at the normalised path; originals kept under
    :data:`ORIGINAL_URI_KEY`. Returns the path within the app (``path`` without ``SCRIPT_NAME``), or None when the
    path left the app's ``SCRIPT_NAME`` (``/app/../other``)."""
    environ[ORIGINAL_URI_KEY] = raw_uri
    script = environ.get("SCRIPT_NAME", "")
    if not script and raw_uri.partition("?")[0] == path:
        # The common case, nothing to resolve (so ASCII, no escapes): the target already names the decided path.
        environ["PATH_INFO"] = path
        return path
    if script:
        script_text = wsgi_text(script)
        if path != script_text and not path.startswith(script_text.rstrip("/") + "/"):
            return None
        path_info = path[len(script_text.rstrip("/")):]
    else:
        path_info = path
    environ["PATH_INFO"] = path_info.encode("utf-8").decode("latin-1")  # WSGI text: one character per byte
    query = environ.get("QUERY_STRING")
    uri = quote(path.encode("utf-8"), safe=PATH_SAFE) + (f"?{query}" if query else "")
    for key in ("RAW_URI", "REQUEST_URI"):
        if key in environ:
            environ[key] = uri
    return path_info or "/"


def _raw_uri(environ: dict[str, Any]) -> str:
    """The request target as the client sent it (gunicorn RAW_URI, uWSGI REQUEST_URI), else rebuilt from PATH_INFO.

    PATH_INFO is already percent-decoded by the server, so decoding it again would be wrong; when only PATH_INFO is
    available it is re-quoted so that normalise_path decodes exactly once.
    """
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        return origin_form(raw)
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    try:  # PATH_INFO is latin-1 decoded bytes per PEP 3333
        raw_bytes = path.encode("latin-1")
    except UnicodeEncodeError:  # a server that hands decoded text instead: its characters, as UTF-8
        raw_bytes = path.encode("utf-8", "surrogatepass")  # never raises; bad UTF-8 is a 400 below
    path = quote(raw_bytes, safe=PATH_SAFE)
    query = environ.get("QUERY_STRING")
    return f"{path}?{query}" if query else path


class PerProcessGate:
    """:class:`GateMiddleware` over ``app``, built from ``config`` at once (a broken manifest or pack fails where the
    app is set up) and again in each process forked since (:class:`~exportgate.web.perprocess.PerProcess`): under
    gunicorn ``--preload`` or uWSGI without ``lazy-apps``, a worker left with the master's recorder waited forever on
    every gated request."""

    def __init__(self, app: Any, config: Any) -> None:
        """``config``: a :class:`~exportgate.config.GateConfig` (``load_config(...)``) or the path of a gate.yaml."""
        from ..config import load_config

        if isinstance(config, str | os.PathLike):
            config = load_config(config)
        self.app = app
        self.config = config
        if config.file in (None, "<defaults>"):
            # Nothing a mirror's operator wrote: no manifest (every download unclassified, so refused under the
            # shipped packs), every path gated, records in this user's default store, which an admin's
            # `exportgate authorize` with the gate's config does not write to.
            log.warning("the gate in front of this app runs on its embedded defaults (no EXPORTGATE_CONFIG, no "
                        "config file given): no manifest, every path gated, records in %s", config.records)
        self._gate: PerProcess[tuple[Any, GateMiddleware]] = PerProcess(self._build, eager=True)

    def _build(self) -> tuple[Any, GateMiddleware]:
        from ..runtime import GateRuntime
        from .app import AdminAccess, GateApp, build_admission, count_record_log_failures, operator_of
        from .clientaddr import Networks
        from .metrics import Metrics

        config = self.config
        runtime = GateRuntime(config, record=True)
        metrics = Metrics()
        count_record_log_failures(runtime, metrics)
        admission = build_admission(runtime, config, metrics)
        operator = operator_of(config)
        admin = AdminAccess(Networks(config.serve.admin_from, what="serve.admin_from entry", file=config.file),
                            admission.proxies)
        # GateApp's readiness and metrics pages, for /exportgate/readyz and /exportgate/metrics.
        state = GateApp(runtime, self.app, metrics=metrics, operator=operator, admin=admin)
        return runtime, GateMiddleware(self.app, admission, operator=operator, gated=config.serve.gated, state=state)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        return self._gate.get()[1](environ, start_response)

    @property
    def runtime(self) -> Any:
        """This process's gate resources."""
        return self._gate.get()[0]

    def close(self) -> None:
        """Commit what is queued and close this process's store (if it opened one)."""
        built = self._gate.built()
        if built is not None:
            built[0].close()


def gate_flask_app(flask_app: Any, config: Any = None) -> Any:
    """Wrap a Flask app's WSGI callable with the gate configured by ``config`` (a GateConfig or a gate.yaml's path;
    default: ``load_config()``, which reads ``EXPORTGATE_CONFIG``); the :class:`PerProcessGate` is
    ``flask_app.extensions["exportgate"]``."""
    from ..config import load_config

    gate = PerProcessGate(flask_app.wsgi_app, config or load_config())
    flask_app.wsgi_app = gate
    flask_app.extensions["exportgate"] = gate
    return flask_app
