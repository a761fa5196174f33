"""Forward auth on an asyncio protocol: the ``/auth`` endpoint of ``exportgate serve`` under gunicorn.

Why not a WSGI or ASGI server: behind a front end every answer waits for its record's commit, and at the rates
nginx asks, what the server does around the gate's own work dominates. Under WSGI each waiting request holds a
thread; granian's RSGI and uvicorn's ASGI hop between threads or through a coroutine for every request
(bench/RESULTS.md). Here a connection's bytes go through llhttp (``httptools``, the parser of Node.js and
uvicorn), a complete ``/auth`` request is decided at once and its record handed to the writer, and the writer's
one wake-up per transaction (:class:`~exportgate.web.settle.TransactionWaits`) writes every answer of that
transaction. An answer still leaves only once its record is committed.

What the endpoint decides on is exactly what the WSGI endpoint sees: the same small environ (a repeated header
joined with ``,`` as WSGI servers do), ``PATH_INFO`` decoded once and ``RAW_URI`` the request target as sent
(Envoy's ``/auth/<path>`` form reads it), then :class:`~exportgate.web.forwardauth.ForwardAuth`. Every other
route (``/healthz``, ``/readyz``, ``/metrics``, the 451 pages) is the WSGI :class:`~exportgate.web.app.GateApp`
on a worker thread: those may block (the readiness probe writes to the store).

HTTP/1.1 as front ends use it: keep-alive, pipelining (answers in request order), ``HEAD``, a client's half-close
(answered, then closed); an HTTP/1.0 request is answered and its connection closed, a request line without a version
(HTTP/0.9 to llhttp) is refused. A request is answered from its head alone: nothing here reads a body. A request that
announces one (``Content-Length`` above 0, ``Transfer-Encoding``, which front ends do not send on ``/auth``) is
answered and its connection closed after the answer, so no byte after a head is ever read as another request; so is
a request asking for an ``Upgrade``, which is not taken (RFC 9110, 7.8: a server may ignore it): Caddy's
``forward_auth`` passes on a client's ``Upgrade: h2c`` (``curl --http2``, Java's HttpClient on ``http://``).
Limits: a head over 64 KiB is a 431, a head not complete within 30 s or a connection idle longer than the
keep-alive timeout is closed (aborted, if answers written to it are still unread); a connection with 64 answers
waiting (for their commits, or for the client to read them) is not parsed or read further until half of them are
written (pipelined requests already received wait, unparsed and undecided). ``CONNECT`` and a repeated ``Host``
are refused (400).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

import httptools
from ..errors import ExportGateError
from ..openfiles import crowded_at
from .app import GateApp
from .forwardauth import REPEATED_KEY, REQUEST_HEADERS, SINGLE_HEADERS, environ_key
from .settle import CountsPerTurn, TransactionWaits, call_page, page_environ

log = logging.getLogger("exportgate.web")

MAX_HEAD = 64 * 1024
HEAD_TIMEOUT = 30.0
MAX_WAITING = 64

# The request headers read as they arrive (httptools gives names as sent): those the forward-auth endpoint reads,
# by WSGI environ key, and those that frame a body or ask for an upgrade.
_BODY = "body"
_UPGRADE = "upgrade"
_HEADER_KEYS = {
    **{name.encode(): environ_key(name) for name in REQUEST_HEADERS},
    b"content-length": _BODY, b"transfer-encoding": _BODY, b"upgrade": _UPGRADE,
}
_SINGLE = {environ_key(name): written for name, written in SINGLE_HEADERS.items()}
_PLAIN = [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")]
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 414: "URI Too Long",
            431: "Request Header Fields Too Large", 451: "Unavailable For Legal Reasons",
            500: "Internal Server Error", 503: "Service Unavailable"}


def response_bytes(status: str, headers: list[tuple[str, str]], body: bytes, *, head: bool, close: bool) -> bytes:
    """One HTTP/1.1 response. ``status`` is ``"200 OK"`` or ``"200"``; a header with CR or LF is refused
    (ValueError): it would split the response."""
    code, _, reason = status.partition(" ")
    lines = [f"HTTP/1.1 {code} {reason or _REASONS.get(int(code), 'Unknown')}"]
    length = False
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} has a line break")
        length = length or name.lower() == "content-length"
        lines.append(f"{name}: {value}")
    if not length:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    lines.append("\r\n")
    out = "\r\n".join(lines).encode("latin-1")
    return out if head else out + body


def plain_response(status: str, text: str, *, head: bool, close: bool) -> bytes:
    return response_bytes(status, _PLAIN, (text + "\n").encode(), head=head, close=close)


class ForwardAuthServer:
    """One worker's endpoint: the protocol factory for ``loop.create_server`` and the connections it made."""

    def __init__(self, app: GateApp, loop: asyncio.AbstractEventLoop, *, keepalive: float = 75.0) -> None:
        auth = getattr(app, "forward_auth", None)
        if auth is None:
            raise ExportGateError("the forward-auth worker serves exportgate's own app in forward-auth mode "
                                  "(exportgate serve, or gunicorn with 'exportgate.web.wsgi:create()')")
        self.app = app
        self.auth = auth
        self.admission = auth.admission
        self.gate = auth.admission.gate
        self.loop = loop
        self.keepalive = keepalive
        self.no_keepalive = keepalive <= 0  # gunicorn's keepalive 0: one request per connection
        self.requests = 0  # decided or answered here, for gunicorn's max_requests
        self.hurry = False  # set to cut a graceful shutdown short
        self.waits = TransactionWaits(loop)
        self.counts = CountsPerTurn(loop, self.admission.metrics)
        self.connections: set[AuthConnection] = set()
        self.stopping = False
        self.crowded = crowded_at()
        self._said_crowded = False

    def __call__(self) -> AuthConnection:
        if len(self.connections) >= self.crowded and not self._said_crowded:
            # Past the limit of open files the event loop drops new connections before they reach this server,
            # unanswered, and uvloop's without a log line (asyncio's own loop logs them): say so while there is
            # still room.
            self._said_crowded = True
            log.warning("%d connections open, near this worker's limit of open files: past it, new connections "
                        "are dropped unanswered (raise ulimit -n / LimitNOFILE, or limit the front end's "
                        "connections to the gate)", len(self.connections))
        return AuthConnection(self)

    def sweep(self) -> None:
        """Close connections idle past the keep-alive timeout, or slow to send a request head."""
        if self._said_crowded and len(self.connections) < self.crowded // 2:
            self._said_crowded = False  # said again if it happens again
        now = time.monotonic()
        for conn in list(self.connections):
            conn.expire(now)

    async def shutdown(self, timeout: float, tick: Callable[[], None] = lambda: None) -> None:
        """Answer what was asked (each answer after its commit), close idle connections, then the rest, within
        ``timeout`` seconds or until :attr:`hurry` is set; ``tick`` is called on the way (the worker's heartbeat)."""
        self.stopping = True
        deadline = self.loop.time() + timeout
        while True:
            tick()
            for conn in list(self.connections):
                if not conn.answers and not conn.in_request:
                    conn.close()
            if not self.connections or self.hurry or self.loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close(abort=conn.unsent())  # past the deadline: a client not reading is not waited for
        self.counts.flush()


class AuthConnection(asyncio.Protocol):
    """One front-end connection: parses requests, answers them in order."""

    def __init__(self, server: ForwardAuthServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        # Answers in request order, each filled when ready (pipelining).
        self.answers: deque[_Slot] = deque()
        self.in_request = False
        self.closing = False  # no further request is read on this connection
        self.last_active = time.monotonic()
        self.head_started = 0.0
        self.head_bytes = 0
        self._reading_paused = False
        self._write_paused = False  # the client is not reading: answers wait in self.answers
        self._eof = False
        self._backlog = b""  # received, not parsed yet: MAX_WAITING answers were waiting (reading is paused)
        self._parsing = False
        self._url = b""
        self._head_size = 0
        self._last = False  # a body or another protocol may follow the head: the connection's last request
        self._refusal: tuple[str, str] | None = None
        self._refused_head = False  # the refused request was a HEAD: its answer has no body
        self._environ: dict[str, Any] = {}
        self._headers: list[tuple[bytes, bytes]] = []

    # -- asyncio.Protocol --------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        # (host, port) or (host, port, flowinfo, scope id); a Unix socket has no address: unknown client.
        self.peer = peer[0] if isinstance(peer, tuple) and peer else ""
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        self.answers.clear()  # the records of requests still waiting are committed all the same
        self._backlog = b""

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = time.monotonic()
        self._read(data)

    def eof_received(self) -> bool:
        """The client will send nothing more: answer what it asked, then close."""
        self._eof = True
        if not self._backlog:  # requests received before the half-close are still answered
            self.closing = True
        return bool(self.answers or self._backlog)  # True: keep the transport open for the answers to come

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.last_active = time.monotonic()  # the client reads: not idle, even once closing
        self._flush()

    # -- reading ----------------------------------------------------------------------------------------------

    def _read(self, data: bytes) -> None:
        """Parse requests from ``data`` (after the backlog) one head at a time; once MAX_WAITING answers wait,
        keep the rest, unparsed, until they are written.

        One read can hold thousands of pipelined requests, and llhttp parses all it is given: fed whole, they
        would all be decided at once whatever the limit. A head ends at its first CRLF CRLF (llhttp refuses bare
        LF line ends, and a request with a body is the connection's last), so each piece fed is one request;
        a CRLF CRLF split between two reads lets the next piece hold two.
        """
        if self._backlog:
            data, self._backlog = self._backlog + data, b""
        answers = self.answers
        while data and len(answers) < MAX_WAITING:
            end = data.find(b"\r\n\r\n") + 4
            if end == 3 or end == len(data):  # the last head, whole or not
                piece, data = data, b""
            else:
                piece, data = data[:end], data[end:]
            if not self._feed(piece):
                return
        if len(answers) >= MAX_WAITING:
            self._backlog = data
            self._pause_reading()
        if self._eof and not self._backlog:
            self.closing = True

    def _feed(self, piece: bytes) -> bool:
        """Parse ``piece``; False once the connection reads no further request."""
        if not self.in_request:
            if not self.head_bytes:
                self.head_started = self.last_active
            self.head_bytes += len(piece)
        stopped: Exception | None = None
        self._parsing = True
        try:
            self.parser.feed_data(piece)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:  # and what on_headers_complete stopped
            stopped = exc
        finally:
            self._parsing = False
        if stopped is not None:
            refusal, self._refusal = self._refusal, None
            if not self.closing:  # not stopped by a request answered with Connection: close
                status, text = refusal or ("400 Bad Request", f"malformed request: {_parser_reason(stopped)}")
                self._refuse(status, text, head=refusal is not None and self._refused_head)
            return False
        if not self.in_request and self.head_bytes > MAX_HEAD:  # a head still coming, already too large
            self._refuse("431 Request Header Fields Too Large", "request head too large")
            return False
        return not self.closing

    # -- httptools callbacks -----------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head_size = 0
        self._last = False
        self._url = b""
        self._environ = {"REMOTE_ADDR": self.peer}
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        value = value.strip(b" \t")  # optional whitespace around a value is not part of it (RFC 9110, 5.5)
        self._headers.append((name, value))
        key = _HEADER_KEYS.get(name.lower())
        if key is None:  # most headers: nothing to do until a page needs them
            return
        if key is _BODY:
            self._last = self._last or name.lower() == b"transfer-encoding" or value != b"0"
            return
        if key is _UPGRADE:  # not taken: answered in HTTP/1.1, and nothing after the head is read (docstring)
            self._last = True
            return
        environ = self._environ
        text = value.decode("latin-1")
        if key in environ:
            if key == "HTTP_HOST" and self._refusal is None:
                self._refusal = ("400 Bad Request", "more than one Host header")
            elif key in _SINGLE:  # ForwardAuth refuses the request (400); the connection goes on
                environ.setdefault(REPEATED_KEY, []).append(_SINGLE[key])
            # A repeated header is one value joined with "," (as WSGI servers do): X-Forwarded-For stays one chain.
            environ[key] = f"{environ[key]},{text}"
        else:
            environ[key] = text

    def on_headers_complete(self) -> None:
        if self.closing:
            raise _Stop  # a request after one that ended the connection: not read, not decided
        self.in_request = True
        self.head_bytes = 0
        self.server.requests += 1
        if self._head_size > MAX_HEAD:
            self._refusal = ("431 Request Header Fields Too Large", "request head too large")
        method = self.parser.get_method().decode("latin-1")
        version = self.parser.get_http_version()
        if method == "CONNECT" and self._refusal is None:
            self._refusal = ("400 Bad Request", "CONNECT is not served here")
        if version not in ("1.1", "1.0") and self._refusal is None:
            # llhttp reads a request line without a version as HTTP/0.9, headers and all: no front end sends one.
            self._refusal = ("400 Bad Request", f"HTTP/{version} is not served here")
        if self._refusal is not None:
            self._refused_head = method == "HEAD"
            raise _Stop  # data_received answers the refusal, without a decision
        # Answered from the head alone (module docstring). A request announcing a body is the connection's last:
        # what follows its head is never parsed, so no byte of a body can be read as a request.
        slot = _Slot()
        self.answers.append(slot)
        head = method == "HEAD"
        # An HTTP/1.0 connection is closed after its answer, keep-alive asked for or not (as gunicorn does): the
        # answer would have to say "Connection: keep-alive", and front ends ask in HTTP/1.1 anyway.
        close = (self._last or version == "1.0" or not self.parser.should_keep_alive() or self.server.stopping
                 or self.server.no_keepalive)
        try:
            self._handle(slot, method, head=head, close=close)
        except Exception:  # a bug must not take the connection's other answers, or the worker, with it
            log.exception("forward-auth request failed")
            self._plain(slot, "500", "internal error", head=head, close=True)
            close = True
        if close or self.closing:
            self.closing = True
            raise _Stop

    def on_message_complete(self) -> None:
        self.in_request = False

    # -- requests ----------------------------------------------------------------------------------------------

    def _handle(self, slot: _Slot, method: str, *, head: bool, close: bool) -> None:
        raw = self._url
        try:
            url = httptools.parse_url(raw)
        except httptools.HttpParserInvalidURLError:
            url = None
        if url is None or not url.path or not url.path.startswith(b"/"):
            self.closing = True  # the connection's last answer: nothing after it is read
            self._plain(slot, "400", "bad request target", head=head, close=True)
            return
        path = unquote_to_bytes(url.path).decode("latin-1")  # PATH_INFO, as WSGI servers decode it
        environ = self._environ
        environ["REQUEST_METHOD"] = method
        environ["PATH_INFO"] = path
        environ["RAW_URI"] = raw.decode("latin-1")
        if not (path == "/auth" or path.startswith("/auth/")):
            self._page(slot, url, environ, head=head, close=close)
            return
        server = self.server
        auth = server.auth
        facts, style, text = auth.request(environ)
        if facts is None:
            self._plain(slot, style, text, head=head, close=close)
            return
        try:
            pending = server.gate.submit(facts)
        except ExportGateError as exc:
            self._failed(slot, environ, facts, exc, style, head=head, close=close)
            return

        def settled() -> None:
            try:
                try:
                    decision = server.admission.recorded(pending.result(), count=False)
                except ExportGateError as exc:
                    self._failed(slot, environ, facts, exc, style, head=head, close=close)
                    return
                server.counts.count(decision)
                self._decided(slot, environ, decision, style, head=head, close=close)
            except Exception:  # a bug: this request gets a 500, the rest of its transaction its answers
                log.exception("forward-auth answer failed")
                self._plain(slot, "500", "internal error", head=head, close=True)

        server.waits.when_settled(pending, settled)

    def _decided(self, slot: _Slot, environ: dict[str, Any], decision: Any, style: str, *,
                 head: bool, close: bool) -> None:
        try:
            status, headers, body = self.server.auth.answer(environ, decision, style)
            answer = response_bytes(status, headers, body, head=head, close=close)
        except Exception:
            log.exception("forward-auth answer failed")
            answer, close = plain_response("500", "internal error", head=head, close=True), True
        self._answer(slot, answer, close=close)

    def _failed(self, slot: _Slot, environ: dict[str, Any], facts: Any, exc: ExportGateError,
                style: str, *, head: bool, close: bool) -> None:
        decision, status, text = self.server.admission.failed(facts, exc)
        if decision is None:
            self._plain(slot, status, text, head=head, close=close)
        else:  # fail_open: served, and said so in the log and the metrics
            self._decided(slot, environ, decision, style, head=head, close=close)

    def _page(self, slot: _Slot, url: Any, environ: dict[str, Any], *, head: bool, close: bool) -> None:
        """The gate's own pages: the WSGI app on a worker thread."""
        page = page_environ(method=environ["REQUEST_METHOD"], path_info=environ["PATH_INFO"],
                            query_string=(url.query or b"").decode("latin-1"),
                            headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._headers],
                            peer=self.peer, raw_uri=environ["RAW_URI"])
        future = self.server.loop.run_in_executor(None, call_page, self.server.app, page)

        def done(f: asyncio.Future[tuple[int, list[tuple[str, str]], bytes]]) -> None:
            try:
                status, page_headers, content = f.result()
                answer, last = response_bytes(str(status), page_headers, content, head=head, close=close), close
            except Exception:
                log.exception("gate page failed")
                answer, last = plain_response("500", "internal error", head=head, close=True), True
            self._answer(slot, answer, close=last)

        future.add_done_callback(done)

    # -- answering ---------------------------------------------------------------------------------------------

    def _answer(self, slot: _Slot, answer: bytes, *, close: bool) -> None:
        """Fill ``slot`` and write every answer that is ready, in request order; ``close``: the answer says
        ``Connection: close`` and is the connection's last."""
        slot.data = answer
        slot.close = close
        self._flush()

    def _plain(self, slot: _Slot, status: str, text: str, *, head: bool, close: bool) -> None:
        self._answer(slot, plain_response(status, text, head=head, close=close), close=close)

    def _flush(self) -> None:
        """Write the answers that are ready, in order, while the client reads them."""
        answers = self.answers
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        while answers and answers[0].data is not None and not self._write_paused:
            slot = answers.popleft()
            transport.write(slot.data)
            if slot.close:
                self.close()
                return
        self.last_active = time.monotonic()
        if self._parsing:  # an answer given while parsing: _read goes on by itself
            return
        if self._backlog and not self._write_paused and len(answers) < MAX_WAITING // 2:
            self._read(b"")  # the requests kept back: parsed now, up to the limit again
            if transport.is_closing():
                return
        if self._eof and not answers and not self._backlog:
            self.close()
        elif (self._reading_paused and not self._backlog and not self._write_paused
              and len(answers) < MAX_WAITING // 2):
            self._reading_paused = False
            transport.resume_reading()

    def _refuse(self, status: str, text: str, *, head: bool = False) -> None:
        """A request the gate will not read: answered after those before it, then the connection is closed."""
        log.info("closing a connection from %s: %s", self.peer or "?", text)
        self.closing = True
        slot = _Slot()
        self.answers.append(slot)
        self._plain(slot, status, text, head=head, close=True)

    def expire(self, now: float) -> None:
        if self.answers and not self._write_paused:
            return  # waiting for commits: never cut off
        slow_head = self.head_bytes and now - self.head_started > HEAD_TIMEOUT
        if slow_head or now - self.last_active > self.server.keepalive:
            # A client that has not read its answers in all that time will not: close() would wait for them
            # to drain, forever, holding the socket and the answers (also when close() was already asked for).
            self.close(abort=self.unsent())

    def unsent(self) -> bool:
        """Whether answers written to the transport still wait for the client to read them."""
        return self.transport is not None and self.transport.get_write_buffer_size() > 0

    def close(self, *, abort: bool = False) -> None:
        """Close after the answers written so far have left; ``abort``: at once, dropping them."""
        self.closing = True
        if self.transport is None:
            return
        if abort:
            self.transport.abort()
        elif not self.transport.is_closing():
            self.transport.close()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.transport.is_closing():
            self._reading_paused = True
            self.transport.pause_reading()


class _Slot:
    """One request's place in its connection's answers (pipelined answers leave in request order)."""

    __slots__ = ("close", "data")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.close = False


class _Stop(Exception):
    """Raised in a parser callback to stop parsing the rest of what was received (data_received says why)."""


def _parser_reason(exc: Exception) -> str:
    return str(exc).strip() or type(exc).__name__


__all__ = ["AuthConnection", "ForwardAuthServer", "response_bytes"]
