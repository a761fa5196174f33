"""The gunicorn worker of forward-auth mode: one event loop running :mod:`exportgate.web.authprotocol`.

gunicorn's master does what it does for every other mode: binds the sockets, forks and replaces workers, reloads
on ``SIGHUP`` without closing the sockets, tells systemd it is ready, stops gracefully on ``SIGTERM``. This worker
serves the forward-auth endpoint on an event loop (uvloop where installed) instead of a thread per request.

Signals: ``SIGTERM`` stops taking connections, answers every request already received (each after its record is
committed) within gunicorn's ``graceful_timeout``, then closes the store; ``SIGINT``/``SIGQUIT`` stop at once (what
is queued is still committed); ``SIGUSR1`` reopens the log files. The worker tells the master it is alive every
second, and leaves if the master is gone; after ``max_requests`` requests (gunicorn's setting) it stops gracefully
and the master starts another. ``keepalive: 0`` closes every connection after one answer.

There is no access log here: the front end's log carries the decision headers (deploy/nginx).
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from gunicorn.workers.base import Worker

from .authprotocol import ForwardAuthServer

HEARTBEAT = 1.0


class ForwardAuthWorker(Worker):  # type: ignore[misc]
    """``worker_class`` of ``exportgate serve`` in forward-auth mode (see :mod:`exportgate.serve`)."""

    def run(self) -> None:
        try:
            import uvloop
        except ImportError:  # not on this platform: asyncio's own loop
            asyncio.run(self._serve())
        else:
            uvloop.run(self._serve())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        quick = False

        def graceful() -> None:
            self.alive = False
            stop.set()

        def at_once() -> None:
            nonlocal quick
            quick = True
            server.hurry = True  # also cuts a graceful shutdown already under way
            graceful()
            self.cfg.worker_int(self)

        app: Any = self.wsgi
        server = ForwardAuthServer(app, loop, keepalive=float(self.cfg.keepalive))
        loop.add_signal_handler(signal.SIGTERM, graceful)
        loop.add_signal_handler(signal.SIGINT, at_once)
        loop.add_signal_handler(signal.SIGQUIT, at_once)
        loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)
        listeners = [await loop.create_server(server, sock=listener.sock, backlog=self.cfg.backlog)
                     for listener in self.sockets]
        try:
            while self.alive:
                self.notify()
                if self.ppid != os.getppid():
                    self.log.info("Parent changed, shutting down: %s", self)
                    break
                if server.requests >= self.max_requests:
                    self.log.info("Autorestarting worker after current request.")
                    break
                server.sweep()
                try:
                    await asyncio.wait_for(stop.wait(), HEARTBEAT)
                except TimeoutError:
                    pass
            for listener in listeners:
                listener.close()
            # Heartbeats keep the master from killing the worker while the last answers wait for their commits;
            # a second short of gunicorn's own deadline leaves time to close the store.
            grace = 0.0 if quick else max(0.0, float(self.cfg.graceful_timeout) - 1.0)
            await server.shutdown(grace, tick=self.notify)
        finally:
            # Commits what is still queued (those requests' records), then closes the store.
            app.runtime.close()


__all__ = ["ForwardAuthWorker"]
