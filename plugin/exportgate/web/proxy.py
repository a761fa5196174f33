"""Proxy mode: the gate in front of a mirror, forwarding allowed downloads to it (``exportgate serve --mode proxy``).

``ProxyApp(admission, upstream="http://127.0.0.1:8080", operator=…)`` decides every gated request first; a block
answers 451 with the page and the upstream is never contacted. Allow and flag forward the request to the upstream
at the **normalised** path (what was decided is exactly what the upstream resolves: ``/a/%2e%2e/b`` goes out as
``/b``), with the query string as sent, and stream the answer back in 64 KiB chunks: status and entity headers,
``Range``/``If-None-Match``/``If-Modified-Since``/``If-Range`` and ``HEAD`` pass through (206, 304, 416 are the
upstream's), the body bytes are not decoded (``Content-Length`` and ``Content-Encoding`` stay true), hop-by-hop
headers are dropped both ways, and gated answers carry the decision headers and ``Cache-Control: no-store`` (and
lose the caching headers CDNs and nginx obey ahead of it: ``CDN-Cache-Control``, ``Surrogate-Control``,
``X-Accel-Expires``).
Paths outside ``gated`` (index pages, metadata) are forwarded without a decision. Symlinks in the upstream's tree are
invisible from here: the upstream would serve a link's target under the link's name. With ``serve.root`` (the
directory the upstream serves, on the gate's host) a link is decided as its target and the target is what is asked
of the upstream (a directory's ``index.html`` too); a link out of the root or to nothing, or a path in a directory
the gate may not read, is refused undecided (403). Without it, keep links out of the tree (nginx:
``disable_symlinks``).

Upstream failures: a GET or HEAD whose kept-alive connection the upstream closed before answering (its idle
timeout met the gate's request) is sent once more on a new connection, as nginx does; otherwise cannot connect ->
502, no answer within ``timeout`` -> 504, a malformed answer (including a ``Content-Length`` that is not one
number, or a ``101``: no upgrade is forwarded) -> 502, and a ``Content-Length`` beside ``Transfer-Encoding`` is
dropped (the body arrives de-chunked: RFC 9112, section 6.3); the upstream closing
(or stalling past ``timeout``) in the middle of a body raises :class:`UpstreamCutOff` out of the response iterator,
so the WSGI server aborts the connection and the client sees a short body, never a response that looks complete.
Each is logged and counted in ``exportgate_upstream_errors{kind}``.

Caveats: one pooled ``requests.Session`` per ``ProxyApp`` (per worker process), shared by its threads; it keeps no
cookies (one client's cookies must never reach another) and ignores ``HTTP_PROXY``/``.netrc`` in the
environment. Redirects are passed to the client, with ``Location`` pointing at the upstream rewritten to a path
on the gate (a client must not be sent around the gate). ``X-Forwarded-For`` sent by a peer that is not a
trusted proxy is replaced, not extended: the upstream sees only what the gate can vouch for.
"""

from __future__ import annotations

import http
import http.client
import http.cookiejar
import logging
import os
import re
import socket
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import SplitResult, quote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError, ProtocolError

from ..errors import ConfigError, ResponseCutShort
from .forwardauth import Admission, StartResponse, plain, reject_path
from .middleware import _raw_uri, compile_gated
from .mirrorfiles import checked_root, linked_file, served_uri
from .page import Operator, decision_headers, overrides_no_store
from .paths import PATH_SAFE, PathRejected, normalise_path

log = logging.getLogger("exportgate.web")

CHUNK = 64 * 1024
"""Bytes read from the upstream and handed to the server at a time: memory use per download is about this."""

ORIGIN_CHECK_TIMEOUT = 2.0
"""Seconds ``/readyz`` waits for a TCP connection to the upstream."""

POOL_SIZE = 64
"""Kept-alive upstream connections per worker; more concurrent requests open extra, unpooled ones."""

# RFC 9110 section 7.6.1, plus the Proxy-* family and Keep-Alive (RFC 2068) that proxies still see.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "transfer-encoding", "upgrade"})

# Upstream error kinds (the ``kind`` label of exportgate_upstream_errors).
CONNECT, TIMEOUT, BAD_RESPONSE, CUT = "connect", "timeout", "bad-response", "cut"

# Request headers the gate sets itself for the upstream (a client must not choose them).
_OWN_REQUEST_HEADERS = frozenset({"host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "forwarded",
                                  "x-real-ip", "expect", "content-length"})
_SAFE_QUERY = PATH_SAFE + "?%"
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


class UpstreamCutOff(ResponseCutShort):
    """The upstream stopped sending in the middle of a body: the client's response must be cut short too."""

    def __init__(self, url: str, received: int, expected: int | None, reason: str) -> None:
        self.url = url
        self.received = received
        self.expected = expected
        self.reason = reason
        of = f" of {expected}" if expected is not None else ""
        super().__init__(f"upstream {url} stopped after {received}{of} bytes: {reason}")


def checked_upstream(upstream: str, timeout: float) -> SplitResult:
    """``upstream``, split, once it is a base URL the proxy can forward to; ConfigError otherwise."""
    try:
        parts = urlsplit(upstream)
        parts.port  # noqa: B018 - raises for a port that is no number or out of range
    except ValueError as exc:
        raise ConfigError(f"upstream {upstream!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"upstream {upstream!r} is not an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ConfigError(f"upstream {upstream!r}: give the base URL without a query or fragment")
    if timeout <= 0:
        raise ConfigError(f"upstream timeout must be positive, got {timeout!r}")
    return parts


class ProxyApp:
    """WSGI app forwarding gated-and-allowed (and ungated) requests to one upstream."""

    def __init__(self, admission: Admission, *, upstream: str, operator: Operator, gated: Iterable[str] = (),
                 timeout: float = 30.0, metrics: Any = None, mirror_root: str | None = None) -> None:
        """``mirror_root``: the directory the upstream serves its files from, when it is on this host
        (``serve.root``): a symlink is decided as its target, and the target is what is asked of the upstream."""
        parts = checked_upstream(upstream, timeout)
        if mirror_root is not None:
            checked_root(mirror_root)
        self.mirror_root = mirror_root
        self.admission = admission
        self.operator = operator
        self.gated = compile_gated(gated, case_insensitive=admission.case_insensitive)
        self.timeout = timeout
        self.metrics = metrics
        self.base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        # Without user:password@ (requests sends those as Basic auth): for logs.
        self.public_base = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path.rstrip('/')}"
        self.origin = _origin(parts)
        self.base_path = parts.path.rstrip("/")
        self.session = _session()

    def close(self) -> None:
        self.session.close()

    def origin_check(self) -> dict[str, Any]:
        """For ``/readyz``: whether the upstream takes a TCP connection now (nothing is asked of it)."""
        _, host, port = self.origin
        try:
            socket.create_connection((host, port or 80), timeout=ORIGIN_CHECK_TIMEOUT).close()
        except OSError as exc:
            return {"ok": False, "upstream": self.public_base, "error": f"cannot connect: {exc}"}
        return {"ok": True, "upstream": self.public_base}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        raw_uri = _raw_uri(environ)
        try:
            # Case kept: the upstream gets the path as the client wrote it, resolved; a case-insensitive
            # decision folds it separately (a case-insensitive upstream resolves both to the same file).
            normalised = normalise_path(raw_uri)
        except PathRejected as exc:
            return reject_path(start_response, exc, self.metrics)
        path = normalised.path
        requested = None
        decided_uri: str = raw_uri
        if self.mirror_root is not None:
            # The root as it is now: a switched `current` link counts.
            linked = linked_file(os.path.realpath(self.mirror_root), path)
            if linked.refused is not None:  # the upstream would follow it where the gate cannot look
                if self.metrics is not None:
                    self.metrics.reject("path")
                return plain(start_response, "403 Forbidden", f"{linked.refused}: not decided")
            served = linked.decide_on
            if served is not None:  # a link (a directory's index.html too): decided as, and asked of the
                try:                  # upstream as, its target
                    served.encode("utf-8")
                except UnicodeEncodeError:  # a link target's name that is not UTF-8: no path to ask for
                    problem = PathRejected(path, "not-utf8", "a symlink on the way leads to a name that is not UTF-8")
                    return reject_path(start_response, problem, self.metrics)
                query = raw_uri.partition("#")[0].partition("?")[2]
                requested, path, normalised = path, served, None
                decided_uri = served_uri(served) + (f"?{query}" if query else "")
        decision = None
        asked = (path,) if requested is None else (path, requested, linked.named)
        if self.gated is None or any(self.gated.match(p) for p in asked):
            decision, refusal = self.admission.admit_download(environ, start_response, decided_uri, normalised,
                                                              self.operator, requested=requested)
            if refusal is not None:
                return refusal
        return self.forward(environ, start_response, method, path, raw_uri, decision)

    def forward(self, environ: dict[str, Any], start_response: StartResponse, method: str, path: str,
                raw_uri: str, decision: Any) -> Iterable[bytes]:
        quoted = quote(path.encode("utf-8"), safe=PATH_SAFE)
        target = self.public_base + quoted  # for logs: no credentials, no query (it may hold tokens)
        query = raw_uri.partition("#")[0].partition("?")[2]
        if query:
            try:
                # The client's bytes (WSGI text is one character per byte), escaped only where the wire needs it;
                # a '%' that starts no escape is one too, or the HTTP client would re-encode every escape of the
                # query (%2F becoming %252F) to fix it.
                query = _STRAY_PERCENT.sub("%25", quote(query.encode("latin-1"), safe=_SAFE_QUERY))
            except UnicodeEncodeError:
                return plain(start_response, "400 Bad Request", "rejected query: not bytes")
        url = self.base + quoted + (f"?{query}" if query else "")
        headers = self.request_headers(environ, decision)
        body = _request_body(environ)
        # A request without a body that the upstream did not begin to answer may be sent once more (below).
        again = body is None and method in ("GET", "HEAD")
        try:
            prepared = self.session.prepare_request(requests.Request(method, url, headers=headers, data=body))
            while True:
                try:
                    response = self.send(url, prepared)
                    break
                except requests.ConnectionError as exc:
                    if not (again and _closed_unanswered(exc)):
                        raise
                    # A kept-alive connection the upstream closed as the gate sent on it (its idle timeout), or
                    # one holding stray bytes of an earlier answer: nothing was answered, so nginx's rule for its
                    # kept-alive upstream connections holds here too: ask once more, on a new connection.
                    again = False
                    log.info("upstream %s closed a connection without answering; asking again: %s", target, exc)
        except requests.Timeout as exc:
            return self.failed(start_response, TIMEOUT, "504 Gateway Timeout", target, exc, decision)
        except requests.ConnectionError as exc:
            # Refused, unreachable or unresolvable comes as MaxRetryError(NewConnectionError); anything else
            # (closed before the status line, malformed or oversized headers) is a bad answer.
            reason = getattr(exc.args[0] if exc.args else None, "reason", None)
            kind = CONNECT if isinstance(reason, NewConnectionError) else BAD_RESPONSE
            return self.failed(start_response, kind, "502 Bad Gateway", target, exc, decision)
        except (requests.RequestException, Urllib3Error, ValueError) as exc:
            return self.failed(start_response, BAD_RESPONSE, "502 Bad Gateway", target, exc, decision)
        try:
            if response.status_code == 101:  # it would switch the connection to no protocol
                raise BadUpstreamAnswer("101: the gate forwards no protocol switch")
            if response.status_code < 200:  # http.client reads past 100 Continue only
                raise BadUpstreamAnswer(f"{response.status_code}: an informational answer (103 Early Hints?) the "
                                        "gate cannot read past; turn it off for the gate's requests")
            status, out = self.response_headers(response, decision)
        except BadUpstreamAnswer as exc:
            response.close()
            return self.failed(start_response, BAD_RESPONSE, "502 Bad Gateway", target, exc, decision)
        except Exception:
            response.close()
            raise
        start_response(status, out)
        if method == "HEAD" or response.status_code in (204, 304):
            _release(response)
            return []
        return _Streamed(response, target, self)

    def send(self, url: str, prepared: requests.PreparedRequest) -> requests.Response:
        # The adapter, not Session.send: with allow_redirects=False a session still reads the whole body of a
        # redirect (to offer Response.next), and the client then got a 500 for nginx's every directory redirect.
        return self.session.get_adapter(url).send(prepared, stream=True, timeout=(self.timeout, self.timeout),
                                                  verify=True, cert=None, proxies={})

    def request_headers(self, environ: dict[str, Any], decision: Any) -> dict[str, str]:
        headers: dict[str, str] = {}
        connection_named: set[str] = set()
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                name = key[5:].replace("_", "-").lower()
                if name == "connection":
                    connection_named.update(t.strip().lower() for t in value.split(","))
                if name in HOP_BY_HOP or name in _OWN_REQUEST_HEADERS or name.startswith(("proxy-", "x-exportgate-")):
                    continue
                headers[name] = value
        for name in connection_named:
            headers.pop(name, None)
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        length = environ.get("CONTENT_LENGTH")
        if length and length.isdigit() and int(length) > 0:
            headers["content-length"] = length
        peer = environ.get("REMOTE_ADDR") or ""
        trusted = self.admission.proxies.is_trusted(peer)
        prior = environ.get("HTTP_X_FORWARDED_FOR") if trusted else None
        if peer:
            headers["x-forwarded-for"] = f"{prior}, {peer}" if prior else peer
        elif prior:
            headers["x-forwarded-for"] = prior
        forwarded_host = environ.get("HTTP_X_FORWARDED_HOST") if trusted else None
        host = forwarded_host or environ.get("HTTP_HOST")
        if host:
            headers["x-forwarded-host"] = host
        proto = environ.get("HTTP_X_FORWARDED_PROTO") if trusted else None
        headers["x-forwarded-proto"] = proto or environ.get("wsgi.url_scheme", "http")
        if trusted and environ.get("HTTP_FORWARDED"):
            headers["forwarded"] = environ["HTTP_FORWARDED"]
        if decision is not None:
            headers["x-exportgate-decision"] = decision.enforced_action
            headers["x-exportgate-decision-id"] = decision.id
        return headers

    def response_headers(self, response: requests.Response, decision: Any) -> tuple[str, list[tuple[str, str]]]:
        code = response.status_code
        try:
            phrase = http.HTTPStatus(code).phrase
        except ValueError:
            phrase = "Unknown"
        raw = response.raw.headers
        connection_named = {t.strip().lower() for v in raw.getlist("connection") for t in v.split(",")}
        extra = decision_headers(decision) if decision is not None else []
        replaced = {n.lower() for n, _ in extra}
        # Content-Length only where it is the body's length: beside Transfer-Encoding the body arrives de-chunked
        # and the length is wrong (RFC 9112 section 6.3: a proxy removes it), and one that is not a number is no
        # answer at all; passed on, either would end the client's download early, looking complete.
        if raw.get("transfer-encoding") is not None:
            replaced.add("content-length")
        else:
            content_length(response)
        out: list[tuple[str, str]] = []
        for name, value in raw.items():
            lower = name.lower()
            if lower in HOP_BY_HOP or lower.startswith(("proxy-", "x-exportgate-")) or lower in connection_named \
                    or lower in replaced or (decision is not None and overrides_no_store(lower)):
                # X-Exportgate-* only ever comes from the gate: an upstream's could pass for a decision in logs.
                continue
            if lower == "location":
                value = self.relative_location(value)
            out.append((name, value))
        out.extend(extra)
        return f"{code} {phrase}", out

    def relative_location(self, location: str) -> str:
        """A redirect to the upstream itself becomes a path on the gate (so it is decided again): the same
        scheme, host and port however written (``HTTP://``, a host in capitals, ``:80`` or no port, ``//host``),
        or a path alone under the upstream's base path (``/files/sub/`` from ``http://mirror/files``: the client
        would take it as a path on the gate, which adds the base again)."""
        try:
            parts = urlsplit(location)
            if parts.netloc and not parts.scheme:  # '//host/x': the scheme of the request, the upstream's
                parts = parts._replace(scheme=self.origin[0])
            origin = _origin(parts) if parts.scheme and parts.netloc else None
        except ValueError:  # a port that is no number: not the upstream's
            return location
        base = self.base_path
        path_alone = not parts.scheme and not parts.netloc and parts.path.startswith("/") and bool(base)
        if (origin != self.origin and not path_alone) or not (parts.path == base or parts.path.startswith(base + "/")):
            return location
        # One leading slash: '//host/x' is a path on the upstream but another host to the client.
        rest = "/" + parts.path[len(base):].lstrip("/")
        return rest + (f"?{parts.query}" if parts.query else "") + (f"#{parts.fragment}" if parts.fragment else "")

    def failed(self, start_response: StartResponse, kind: str, status: str, url: str, exc: Exception,
               decision: Any) -> list[bytes]:
        self.upstream_error(kind)
        log.error("upstream %s failed (%s): %s", url, kind, exc)
        # The decision headers still go out: the access log shows an allowed download that the mirror failed.
        extra = [h for h in decision_headers(decision) if h[0] != "Cache-Control"] if decision is not None else []
        return plain(start_response, status, f"upstream {kind}: the mirror behind this gate did not answer properly",
                     extra)

    def upstream_error(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.upstream_errors.labels(kind).inc()


def _origin(parts: SplitResult) -> tuple[str, str, int | None]:
    """Scheme, host and port of a URL, compared as HTTP does: case-insensitive, the default port made explicit."""
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").rstrip("."), parts.port or {"http": 80, "https": 443}.get(scheme)


def _closed_unanswered(exc: requests.ConnectionError) -> bool:
    """Whether the upstream closed the connection (or sent what is no status line) before answering."""
    cause = exc.args[0] if exc.args else None
    if not isinstance(cause, ProtocolError):  # MaxRetryError: no connection was made
        return False
    inner = cause.args[1] if len(cause.args) > 1 else None
    return isinstance(inner, (http.client.BadStatusLine, ConnectionResetError, BrokenPipeError))


def _release(response: requests.Response) -> None:
    """Hand the connection of an answer without a body (HEAD, 204, 304) back to the pool: reading its empty body
    does (closing the response would close the connection)."""
    try:
        response.raw.read(decode_content=False)
    except (Urllib3Error, OSError):
        pass
    response.close()


class BadUpstreamAnswer(ValueError):
    """The upstream's answer cannot be passed on as it is (502)."""


def content_length(response: requests.Response) -> int | None:
    """The upstream's declared body length; None when it declares none (or sends Transfer-Encoding)."""
    raw = response.raw.headers
    if raw.get("transfer-encoding") is not None:
        return None
    values = {v.strip() for v in raw.getlist("content-length")}
    if not values:
        return None
    value = values.pop()
    if values or not (value.isascii() and value.isdigit()) or len(value) > 19:  # one value, ASCII digits, < 2**63
        raise BadUpstreamAnswer(f"malformed Content-Length: {', '.join(raw.getlist('content-length'))!r}")
    return int(value)


class _Streamed:
    """The upstream body as a WSGI iterable: chunks as they arrive; raises if the upstream cuts it short."""

    __slots__ = ("app", "expected", "received", "response", "url")

    def __init__(self, response: requests.Response, url: str, app: ProxyApp) -> None:
        self.response = response
        self.url = url
        self.app = app
        self.received = 0
        self.expected = content_length(response)  # checked by response_headers before this is made

    def __iter__(self) -> Iterator[bytes]:
        try:
            # decode_content=False: the bytes the upstream sent, so its Content-Length/Content-Encoding hold.
            for chunk in self.response.raw.stream(CHUNK, decode_content=False):
                self.received += len(chunk)
                yield chunk
        except (Urllib3Error, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        else:
            if self.expected is None or self.received >= self.expected:
                return
            reason = "connection closed early"
        self.app.upstream_error(CUT)
        log.error("upstream %s stopped after %d of %s bytes, cutting the response: %s", self.url, self.received,
                  self.expected if self.expected is not None else "?", reason)
        # An exception out of the iterator is the only way a WSGI app can tell the server to abort the
        # connection; returning would let a short body pass as complete when no length was declared.
        raise UpstreamCutOff(self.url, self.received, self.expected, reason)

    def close(self) -> None:
        # A response read to the end goes back to the pool; one abandoned midway closes its connection
        # (draining a large body just to reuse a socket would cost more than a new connection).
        self.response.close()


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Any, request: Any) -> bool:
        return False


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no HTTP_PROXY, no .netrc credentials sent to the mirror
    session.headers.clear()  # no default Accept-Encoding: the client's own (or none) goes upstream
    session.cookies.set_policy(_NoCookies())
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=POOL_SIZE, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _Body:
    """The request body with its declared length, read as it is sent (uploads are not buffered)."""

    def __init__(self, stream: Any, length: int) -> None:
        self.stream = stream
        self.left = length
        self.length = length

    def __len__(self) -> int:
        return self.length

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        size = self.left if size < 0 else min(size, self.left)
        data: bytes = self.stream.read(size)
        self.left -= len(data)
        return data

    def __iter__(self) -> Iterator[bytes]:
        while True:
            data = self.read(CHUNK)
            if not data:
                return
            yield data


def _request_body(environ: dict[str, Any]) -> Any:
    length = environ.get("CONTENT_LENGTH")
    stream = environ.get("wsgi.input")
    if stream is None:
        return None
    if length and length.isdigit() and int(length) > 0:
        return _Body(stream, int(length))
    if environ.get("wsgi.input_terminated") and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        def chunks() -> Iterator[bytes]:
            while data := stream.read(CHUNK):
                yield data

        return chunks()
    return None
