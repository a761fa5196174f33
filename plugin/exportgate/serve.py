"""``exportgate serve``: run the gate under a production WSGI server (gunicorn by default, granian if chosen).

Each worker process builds its own app after the fork (record store connections, the recorder's writer thread and
the geo reader must not cross a fork), so every worker writes its own hash chain. ``SIGHUP`` to the master makes
gunicorn start fresh workers: config, packs, manifest, authorizations and the geo database are re-read without
dropping connections. Metrics from all workers are summed through ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from .config import GateConfig

ACCESS_LOG_FORMAT = ('%(h)s "%(r)s" %(s)s %(B)s decision=%({x-exportgate-decision}o)s '
                     'rule=%({x-exportgate-rule}o)s id=%({x-exportgate-decision-id}o)s %(M)sms')


def _metrics_dir() -> str:
    # prometheus_client reads this when it is first imported: set it before anything imports it.
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="exportgate-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def gunicorn_options(config: GateConfig) -> dict[str, Any]:
    s = config.serve
    return {
        "bind": [b.strip() for b in s.bind.split(",")],
        "workers": s.workers,
        "threads": s.threads,
        "worker_class": "gthread" if s.threads > 1 else "sync",
        "preload_app": False,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": "info",
        "access_log_format": ACCESS_LOG_FORMAT,
        "timeout": max(30, int(s.upstream_timeout) + 10),
        "graceful_timeout": 10,
        "keepalive": 75,  # front ends keep upstream connections open; close later than they do
        "limit_request_field_size": 16384,
        "proc_name": f"exportgate[{config.instance}]",
        # gunicorn >= 25 opens a control socket at one fixed path per user: a second gate on the same host would
        # take it over. Not needed to run the gate; skipped on versions that do not have it.
        "control_socket_disable": True,
    }


def run(config: GateConfig) -> None:
    """Serve until stopped (SIGINT/SIGTERM: graceful)."""
    metrics_dir = _metrics_dir()
    try:
        if config.serve.server == "granian":
            _run_granian(config)
        else:
            _run_gunicorn(config)
    finally:
        if metrics_dir.startswith(tempfile.gettempdir()) and "exportgate-metrics-" in metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run_gunicorn(config: GateConfig) -> None:
    from gunicorn.app.base import BaseApplication

    class GateServer(BaseApplication):  # type: ignore[misc]
        def __init__(self) -> None:
            self.options = gunicorn_options(config)
            super().__init__()

        def load_config(self) -> None:
            for key, value in self.options.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)
            self.cfg.set("child_exit", _child_exit)

        def load(self) -> Any:
            from .web.app import create_app

            return create_app(config)

    GateServer().run()


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _run_granian(config: GateConfig) -> None:  # pragma: no cover - optional server
    try:
        from granian import Granian
        from granian.constants import Interfaces
    except ImportError as exc:
        raise SystemExit("granian is not installed: pip install 'exportgate[granian]'") from exc
    host, _, port = config.serve.bind.rpartition(":")
    os.environ["EXPORTGATE_SERVE_CONFIG_FILE"] = config.file or ""
    server = Granian("exportgate.serve:granian_app", address=host.strip("[]") or "127.0.0.1", port=int(port),
                     interface=Interfaces.WSGI, workers=config.serve.workers,
                     blocking_threads=config.serve.threads)
    server.serve()


def granian_app(environ: dict[str, Any], start_response: Any) -> Any:  # pragma: no cover - optional server
    global _granian_app
    if _granian_app is None:
        from .config import load_config
        from .web.app import create_app

        _granian_app = create_app(load_config(os.environ.get("EXPORTGATE_SERVE_CONFIG_FILE") or None))
    return _granian_app(environ, start_response)


_granian_app: Any = None
