"""Forward auth on granian's RSGI interface: every waiting request on one event loop, none on a thread of its own.

Why: behind a front end, each ``/auth`` answer waits for its record's commit. Under WSGI each waiting request holds
a thread, and the writer wakes every thread separately (bench/RESULTS.md: thread hand-offs, not SQLite, bounded
gunicorn and granian's WSGI mode). Here a request decides, hands its record to the writer
(:meth:`~exportgate.gate.Gate.submit`) and awaits a future; the writer settles a whole transaction with one
``call_soon_threadsafe``, and the answer leaves only once its record is committed, as in every other mode.

The request is read into the same small environ the WSGI endpoint sees (headers repeated are joined with ``,``
as WSGI servers do), so :class:`~exportgate.web.forwardauth.ForwardAuth` decides what to answer in both. RSGI
gives the path already percent-decoded and no raw request target: the Envoy form ``/auth/<path>`` is refused
(400), as under granian's WSGI mode; the nginx, Traefik and Caddy headers carry the raw target and are unaffected.
Every other route (``/healthz``, ``/readyz``, ``/metrics``, the 451 pages) is the WSGI :class:`GateApp`, run on
a worker thread through werkzeug: they may block (the readiness probe writes to the store).

granian drops a header line whose value holds bytes outside ASCII from ``scope.headers.items()`` and ``get()``
without a word, yet lists its name in ``keys()``. A request that lost one of the headers the gate reads
(:data:`~exportgate.web.forwardauth.REQUEST_HEADERS`: the original request, the forwarding chain, Accept) is
refused (400) on every route: the gate would otherwise decide on what is left, e.g. give ``/metrics`` to a trusted
proxy whose X-Forwarded-For naming the real client vanished. A lost line of a header sent more than once cannot be
seen (``keys()`` names it once): for X-Forwarded-For that is harmless, since the front end's own entry, which the
gate reads from the right, is ASCII; for the headers naming the request (X-Original-URI, X-Forwarded-Uri, their
methods) and Host, a second line holding such bytes goes unseen and the readable one is decided on, where the loop
worker refuses the request. The front ends in deploy/ set those headers once, replacing the client's, so only a
client that reaches the gate directly can send two. Other headers lost are no concern of the gate's. A repeated
``Host`` whose lines granian can read is refused (400), as the loop worker refuses it.

Where granian's HTTP parsing (hyper) still differs from the loop worker's (llhttp), on requests no front end
sends (measured with granian 2.8): line ends of a bare LF, and ``Content-Length`` beside ``Transfer-Encoding``,
are read and decided (the loop worker answers 400); after a client's half-close, requests pipelined behind those
being answered may be dropped unread (neither decided nor recorded; the loop worker answers them all); a
connection that never sends a byte is held until its peer closes it (granian's ``header_read_timeout`` starts
with a request; the loop worker closes it after 30 s). None of these serves a download without its committed
record; all are reasons to let nothing but the front end reach the gate, which trusting its headers needs anyway.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..errors import ExportGateError
from ..runtime import DecisionFiles
from .app import GateApp
from .forwardauth import REPEATED_KEY, REQUEST_HEADERS, SINGLE_HEADERS, UNREADABLE_KEY, ForwardAuth, environ_key
from .settle import CountsPerTurn, TransactionWaits, call_page, page_environ

log = logging.getLogger("exportgate.web")

# The request headers the forward-auth endpoint reads (granian gives names in lower case), by WSGI environ key.
_ENVIRON_KEYS = {name: environ_key(name) for name in REQUEST_HEADERS}
_SINGLE = {environ_key(name): written for name, written in SINGLE_HEADERS.items()}
_PEER_CACHE_SIZE = 4096

_PLAIN = [("content-type", "text/plain; charset=utf-8"), ("cache-control", "no-store")]


def unreadable_headers(headers: Any, items: list[tuple[str, str]]) -> list[str]:
    """The headers the gate reads that granian dropped from ``items`` (``headers.items()``; module docstring)."""
    if len(headers) == len({name for name, _ in items}):  # keys() counts each name once
        return []
    return sorted(set(headers.keys()).intersection(REQUEST_HEADERS).difference(name for name, _ in items))


def peer_address(client: str) -> str:
    """The TCP peer's address from RSGI's ``scope.client``: ``192.0.2.1:5678`` or ``[2001:db8::1]:5678``.

    Anything else is passed on whole, and the client-address resolver calls it unparseable: an unbracketed IPv6
    address with a port cannot be split without guessing, and a wrong guess could match a trusted proxy.
    """
    if client.startswith("["):
        host, sep, port = client[1:].partition("]:")
        return host if sep and port.isdigit() else client
    host, sep, port = client.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host
    return client


class ForwardAuthRSGI:
    """The RSGI application of ``exportgate serve --server granian`` in forward-auth mode."""

    def __init__(self, app: GateApp, auth: ForwardAuth) -> None:
        self.app = app
        self.auth = auth
        self.admission = auth.admission
        self.gate = auth.admission.gate
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waits: TransactionWaits | None = None
        self._counts: CountsPerTurn | None = None
        self._peers: dict[str, str] = {}
        self._told_about_envoy = False

    # granian calls these on the worker's event loop when the worker starts and stops.
    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waits = TransactionWaits(loop)
        self._counts = CountsPerTurn(loop, self.admission.metrics)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Commits what is queued (each of those requests is still waiting for it) and closes the store.
        self.app.runtime.close()

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":  # websockets: not ours
            return
        path = scope.path
        if not (path == "/auth" or path.startswith("/auth/")):  # "/auth?x" (from "/auth%3Fx") included
            await self._wsgi(scope, protocol)
            return
        environ = self._environ(scope)
        facts, style, text = self.auth.request(environ)
        if facts is None:
            if path != "/auth" and not self._told_about_envoy:
                # Every download through a front end configured this way is refused: say so loudly, once.
                self._told_about_envoy = True
                log.error("refusing /auth/<path> requests (Envoy's path_prefix form): granian does not give the "
                          "raw request target; serve Envoy with --server gunicorn (deploy/envoy/envoy.yaml)")
            protocol.response_str(int(style[:3]), _PLAIN, text + "\n")
            return
        admission = self.admission
        try:
            pending = self.gate.submit(facts)
            await self._settled(pending)
            decision = admission.recorded(pending.result(), count=False)
            self._counter().count(decision)
        except ExportGateError as exc:
            decision, status, text = admission.failed(facts, exc)
            if decision is None:
                protocol.response_str(int(status[:3]), _PLAIN, text + "\n")
                return
        status_line, headers, body = self.auth.answer(environ, decision, style)
        protocol.response_bytes(int(status_line[:3]), headers, body)

    def _environ(self, scope: Any) -> dict[str, Any]:
        client = scope.client
        peer = self._peers.get(client)
        if peer is None:
            if len(self._peers) >= _PEER_CACHE_SIZE:
                self._peers.clear()
            peer = self._peers[client] = peer_address(client)
        environ = {"REQUEST_METHOD": scope.method, "PATH_INFO": scope.path, "REMOTE_ADDR": peer}
        keys = _ENVIRON_KEYS
        items = scope.headers.items()  # one call into granian, every line of every header (it could read)
        unreadable = unreadable_headers(scope.headers, items)
        if unreadable:
            environ[UNREADABLE_KEY] = unreadable
        for name, value in items:
            key = keys.get(name)
            if key is None:
                continue
            if key in environ:
                if key in _SINGLE:  # ForwardAuth refuses the request (400)
                    environ.setdefault(REPEATED_KEY, []).append(_SINGLE[key])
                elif key == "HTTP_HOST":  # refused (400), as the loop worker refuses it
                    environ.setdefault(REPEATED_KEY, []).append("Host")
                # A repeated header is one value joined with "," (as WSGI servers do): X-Forwarded-For stays one
                # chain.
                environ[key] = f"{environ[key]},{value}"
            else:
                environ[key] = value
        return environ

    def _counter(self) -> CountsPerTurn:
        if self._counts is None:  # a granian that did not call __rsgi_init__
            self._counts = CountsPerTurn(asyncio.get_running_loop(), self.admission.metrics)
        return self._counts

    def _settled(self, pending: Any) -> asyncio.Future[None]:
        """A future done once ``pending``'s transaction is settled (committed or failed)."""
        if self._waits is None:
            self._waits = TransactionWaits(asyncio.get_running_loop())
        future = (self._loop or asyncio.get_running_loop()).create_future()
        self._waits.when_settled(pending, lambda: _wake(future))
        return future

    async def _wsgi(self, scope: Any, protocol: Any) -> None:
        """The gate's own pages: the WSGI app on a worker thread. None of them reads a request body, so none is
        read (a large one would otherwise sit in the memory of the worker that answers /auth)."""
        items = scope.headers.items()
        unreadable = unreadable_headers(scope.headers, items)
        if unreadable:
            protocol.response_str(400, _PLAIN, f"a {unreadable[0]} header the server could not read (bytes outside "
                                               "ASCII)\n")
            return
        if sum(name == "host" for name, _ in items) > 1:
            protocol.response_str(400, _PLAIN, "more than one Host header\n")
            return
        environ = page_environ(
            # granian decodes the path as UTF-8; PEP 3333 wants its bytes as latin-1.
            method=scope.method, path_info=scope.path.encode("utf-8", "surrogateescape").decode("latin-1"),
            query_string=scope.query_string or "", headers=list(items),
            peer=peer_address(scope.client),
        )
        loop = self._loop or asyncio.get_running_loop()
        status, headers, content = await loop.run_in_executor(None, call_page, self.app, environ)
        protocol.response_bytes(status, headers, content)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():  # a request whose client went away may have been cancelled
        future.set_result(None)


def create_rsgi_app(config: Any, files: DecisionFiles | None = None) -> ForwardAuthRSGI:
    """Build the gate's resources in this (worker) process and wrap them for RSGI; forward-auth mode only
    (``files``: the manifest and packs the server's master loaded)."""
    from .app import create_app

    if config.serve.mode != "forward-auth":
        raise ExportGateError("the RSGI server runs forward-auth mode only; proxy and static use WSGI")
    app = create_app(config, files=files)
    auth = app.forward_auth
    if auth is None:
        raise ExportGateError("forward-auth mode without its endpoint")
    return ForwardAuthRSGI(app, auth)


__all__ = ["ForwardAuthRSGI", "create_rsgi_app", "peer_address"]
