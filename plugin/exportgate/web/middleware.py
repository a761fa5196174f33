"""WSGI middleware: put the gate in front of any Python package index or download app.

``GateMiddleware(app, admission, operator=…)`` decides every gated request before the wrapped app runs. A block
answers 451 with the page and the wrapped app never sees the request; allow and flag call the wrapped app with the
decision in ``environ["exportgate.decision"]`` and the decision headers added to its response. Requests outside
``gated`` (index pages, metadata) pass straight through without a decision. For a Flask app:
``gate_flask_app(app, config)`` wraps ``app.wsgi_app`` in one line.

Caveat: the path is decided as normalised by :func:`~exportgate.web.paths.normalise_path`, and the wrapped app must
resolve paths the same way (decode once, resolve dot-segments). Apps that decode twice or accept backslashes as
separators need their own care.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from typing import Any

from .forwardauth import Admission, StartResponse, plain
from .page import Operator, blocked_body, blocked_headers, decision_headers
from .paths import PathRejected, normalise_path

DECISION_KEY = "exportgate.decision"


def compile_gated(globs: Iterable[str]) -> re.Pattern[str] | None:
    """One regex for the gated path globs (``*`` stays within a segment, ``**`` crosses them); None = all."""
    parts = []
    for glob in globs:
        regex = fnmatch.translate(glob.replace("**", "\0"))
        regex = regex.replace(".*", "[^/]*").replace("\0", ".*")
        parts.append(f"(?:{regex})")
    return re.compile("|".join(parts)) if parts else None


class GateMiddleware:
    """Decide before the wrapped WSGI app serves a download."""

    def __init__(self, app: Any, admission: Admission, *, operator: Operator | None = None,
                 gated: Iterable[str] = ()) -> None:
        self.app = app
        self.admission = admission
        self.operator = operator or Operator()
        self.gated = compile_gated(gated)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        raw_uri = _raw_uri(environ)
        if self.gated is not None:
            # Match the path the app will resolve, not the raw one: /PACKAGES/, /a/../packages/ or %70ackages
            # must not slip past the gate as "not a download".
            try:
                path = normalise_path(raw_uri, case_insensitive=self.admission.case_insensitive).path
            except PathRejected as exc:
                return plain(start_response, "400 Bad Request", f"rejected path: {exc.reason}")
            if not self.gated.match(path):
                return self.app(environ, start_response)
        decision, status, text = self.admission.admit(environ, environ.get("REQUEST_METHOD", "GET"), raw_uri,
                                                      environ.get("HTTP_HOST"))
        if decision is None:
            return plain(start_response, status, text)
        if not decision.served:
            content_type, body = blocked_body(decision, self.operator, environ.get("HTTP_ACCEPT"))
            start_response("451 Unavailable For Legal Reasons",
                           blocked_headers(decision, self.operator, content_type, len(body)))
            return [body] if environ.get("REQUEST_METHOD") != "HEAD" else [b""]
        environ[DECISION_KEY] = decision
        extra = decision_headers(decision)

        def start_with_decision(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            names = {name.lower() for name, _ in extra}
            kept = [(n, v) for n, v in headers if n.lower() not in names]
            return start_response(status, kept + extra, exc_info)

        return self.app(environ, start_with_decision)


def _raw_uri(environ: dict[str, Any]) -> str:
    """The request target as the client sent it (gunicorn RAW_URI, uWSGI REQUEST_URI), else rebuilt from PATH_INFO.

    PATH_INFO is already percent-decoded by the server, so decoding it again would be wrong; when only PATH_INFO is
    available it is re-quoted so that normalise_path decodes exactly once.
    """
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        return raw
    from urllib.parse import quote

    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    # PATH_INFO is latin-1 decoded bytes per PEP 3333.
    path = quote(path.encode("latin-1"), safe="/:@!$&'()*+,;=-._~")
    query = environ.get("QUERY_STRING")
    return f"{path}?{query}" if query else path


def gate_flask_app(flask_app: Any, config: Any = None) -> Any:
    """Wrap a Flask app's WSGI callable with the gate configured by ``config`` (default: load_config())."""
    from ..config import load_config
    from ..runtime import GateRuntime
    from .app import build_admission, operator_of
    from .metrics import Metrics

    config = config or load_config()
    runtime = GateRuntime(config, record=True)
    admission = build_admission(runtime, config, Metrics())
    flask_app.wsgi_app = GateMiddleware(flask_app.wsgi_app, admission, operator=operator_of(config),
                                        gated=config.serve.gated)
    flask_app.extensions["exportgate"] = runtime
    return flask_app
