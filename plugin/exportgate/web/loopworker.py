"""The gunicorn worker of forward-auth mode: one event loop running :mod:`exportgate.web.authprotocol`.

gunicorn's master does what it does for every other mode: binds the sockets, forks and replaces workers, reloads
on ``SIGHUP`` without closing the sockets, tells systemd it is ready, stops gracefully on ``SIGTERM``. This worker
serves the forward-auth endpoint on an event loop (uvloop where installed) instead of a thread per request.

Signals: ``SIGTERM`` stops taking connections, answers every request already received (each after its record is
committed) within gunicorn's ``graceful_timeout``, then closes the store; ``SIGINT``/``SIGQUIT`` stop at once (what
is queued is still committed); ``SIGUSR1`` reopens the log files. The worker tells the master it is alive every
second, and leaves if the master is gone.

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
            graceful()
            self.cfg.worker_int(self)

        loop.add_signal_handler(signal.SIGTERM, graceful)
        loop.add_signal_handler(signal.SIGINT, at_once)
        loop.add_signal_handler(signal.SIGQUIT, at_once)
        loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)
        app: Any = self.wsgi
        server = ForwardAuthServer(app, loop, keepalive=float(self.cfg.keepalive or 75))
        listeners = [await loop.create_server(server, sock=listener.sock, backlog=self.cfg.backlog)
                     for listener in self.sockets]
        try:
            while self.alive:
                self.notify()
                if self.ppid != os.getppid():
                    self.log.info("Parent changed, shutting down: %s", self)
                    break
                server.sweep()
                try:
                    await asyncio.wait_for(stop.wait(), HEARTBEAT)
                except TimeoutError:
                    pass
            for listener in listeners:
                listener.close()
            if not quick:
                # Still alive for the master while the last answers wait for their commits.
                self.notify()
                await server.shutdown(float(self.cfg.graceful_timeout))
            else:
                await server.shutdown(0.0)
        finally:
            # Commits what is still queued (those requests' records), then closes the store.
            app.runtime.close()


__all__ = ["ForwardAuthWorker"]
