"""What the event-loop servers of forward auth share: one wake-up per transaction, metrics once per turn of the
loop, and the gate's own pages run as WSGI on a worker thread.

Shared by the two event-loop servers (:mod:`exportgate.web.authprotocol` under gunicorn,
:mod:`exportgate.web.rsgi` under granian). A request decides, hands its record to the writer
(:meth:`~exportgate.gate.Gate.submit`) and asks to be told once it is committed; the writer settles a whole
transaction with one ``call_soon_threadsafe`` instead of one per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from werkzeug.test import EnvironBuilder, run_wsgi_app

log = logging.getLogger("exportgate.web")


class TransactionWaits:
    """Calls back on the loop once a pending record's transaction is settled (committed or failed)."""

    __slots__ = ("_loop", "_transaction", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transaction: object = None
        self._waiting: list[Callable[[], None]] = []

    def when_settled(self, pending: Any, callback: Callable[[], None]) -> None:
        """``callback()`` on the loop's thread once ``pending`` is settled (its ``result()`` does not block)."""
        transaction = pending.transaction
        if transaction is not self._transaction:
            # Records go into the writer's open transaction until it takes it: one wake-up per transaction.
            self._transaction = transaction
            self._waiting = waiting = [callback]
            loop = self._loop
            pending.on_settled(lambda: loop.call_soon_threadsafe(_run_all, waiting))
        else:
            self._waiting.append(callback)


def _run_all(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:  # one request's failure must not leave the rest of its transaction unanswered
            log.exception("answering a settled request failed")


class CountsPerTurn:
    """Decisions counted for ``/metrics`` once per turn of the loop rather than per request: each count is a
    write to a metrics file shared between workers."""

    __slots__ = ("_counts", "_loop", "_metrics")

    def __init__(self, loop: asyncio.AbstractEventLoop, metrics: Any) -> None:
        self._loop = loop
        self._metrics = metrics
        self._counts: dict[Any, int] = {}

    def count(self, decision: Any) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        counts = self._counts
        if not counts:
            self._loop.call_soon(self.flush)
        key = metrics.decision_key(decision)
        counts[key] = counts.get(key, 0) + 1

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        if counts:
            self._metrics.decided_many(counts)


def page_environ(*, method: str, path_info: str, query_string: str, headers: list[tuple[str, str]], peer: str,
                 raw_uri: str | None = None) -> dict[str, Any]:
    """The WSGI environ of a request for one of the gate's pages. ``path_info`` is decoded once already, as
    PEP 3333 has it (the bytes as latin-1): set as given, because werkzeug would split a decoded ``?`` (``%3F``)
    out of a path it is handed, or refuse it next to a query string."""
    base = {"REMOTE_ADDR": peer}
    if raw_uri is not None:
        base["RAW_URI"] = raw_uri
    # Header names with "_" are dropped, as gunicorn drops them: X_Forwarded_For would become HTTP_X_FORWARDED_FOR
    # beside the real one, and a client could add an entry to the chain its front end wrote.
    headers = [(name, value) for name, value in headers if "_" not in name]
    environ = EnvironBuilder(method=method, query_string=query_string, headers=headers,
                             environ_base=base).get_environ()
    environ["PATH_INFO"] = path_info
    return environ


def call_page(app: Any, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    """One of the gate's own pages (a WSGI app) run to completion, for an event-loop server to call on an
    executor thread: ``(status, headers, body)``."""
    app_iter, status, headers = run_wsgi_app(app, environ, buffered=True)
    try:
        content = b"".join(app_iter)
    finally:
        close = getattr(app_iter, "close", None)
        if close is not None:
            close()
    return int(status[:3]), list(headers.items()), content


__all__ = ["CountsPerTurn", "TransactionWaits", "call_page", "page_environ"]
