"""WSGI entry points for servers that import the gate rather than being started by ``exportgate serve``.

* ``gunicorn 'exportgate.web.wsgi:create()'`` (gunicorn >= 20.1 calls the factory in each worker, after the fork;
  ``deploy/gunicorn.conf.py`` sets this up with the options ``exportgate serve`` would use);
* ``exportgate.web.wsgi:application`` for servers that want a module attribute (uWSGI ``module=``, mod_wsgi): it
  builds the app on its first request in each process.

Both read the configuration the usual way: ``EXPORTGATE_CONFIG`` names the file, ``EXPORTGATE_*`` variables
override it (see :mod:`exportgate.config`).

Caveat: the app opens the record store, starts the recorder's writer thread and opens the geo database; none of
these survive a fork. Never build it before the server forks its workers (no ``preload_app``, no uWSGI
``lazy-apps = false``): :data:`application` rebuilds itself in a process it was not built in, but the resources of
the parent's copy would still be open there.
"""

from __future__ import annotations

from typing import Any

from .. import reloading
from ..config import load_config
from .app import GateApp, create_app
from .perprocess import PerProcess


def create() -> GateApp:
    """The gate's WSGI app from ``EXPORTGATE_CONFIG`` and ``EXPORTGATE_*``; call it once per worker process.

    Under a master that loaded them (``deploy/gunicorn.conf.py``), from the master's configuration, manifest and
    packs rather than the files now on disk (:mod:`exportgate.reloading`).
    """
    loaded = reloading.in_force()
    if loaded is not None:
        config, files = loaded
        return reloading.start_worker(lambda: create_app(config, files=files))
    return create_app(load_config())


class PerProcessApp:
    """A WSGI app built by :func:`create` on the first request in each process.

    A WSGI server that imports a module attribute needs an object before any worker exists; this is that object.
    It holds the one app of the current process (the reason for a module-level instance, which the project
    otherwise avoids), and a different process id means a fork happened since: build again
    (:class:`~exportgate.web.perprocess.PerProcess`).
    """

    def __init__(self) -> None:
        self._app: PerProcess[GateApp] = PerProcess(create)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self._app.get()(environ, start_response)


application = PerProcessApp()
