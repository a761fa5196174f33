"""``exportgate serve``: run the gate under a production HTTP server, gunicorn (default) or granian.

Which server (``serve.server``, ``--server``): ``auto``, the default, is gunicorn in every mode; its worker class
follows the mode.

* Forward auth runs gunicorn's master with the gate's own event-loop worker (:mod:`exportgate.web.loopworker`,
  :mod:`exportgate.web.authprotocol`): every waiting request's decision is in flight on one loop, and the recorder
  settles a whole transaction with one wake-up. Behind nginx ``auth_request`` it answered 1.0 to 1.4 times
  granian's RSGI endpoint, on less CPU per answer (bench/http_forward_auth.py, bench/RESULTS.md; gunicorn's
  gthread worker, which it replaces in this mode, answered a fifth of granian's). It reads the raw request
  target, so Envoy's ``/auth/<path>`` form is served. Workers: about one per core the front end leaves free; on
  the 2-core benchmark machines, shared with nginx and the load generator, two measured as fast as one or up to
  a quarter slower.
* Proxy and static modes run gunicorn's gthread worker (WSGI; ``threads`` per worker).
* ``--server granian`` serves forward auth on granian's RSGI interface (:mod:`exportgate.web.rsgi`), for those
  who run granian already. It gives no raw request target: the Envoy form is refused with 400 there, and proxy or
  static mode under granian would decide on an already-decoded path (a ``%2F`` in the client's path would arrive
  as ``/`` and not be refused), so asking for that is a configuration error. Its HTTP parsing differs from the
  loop worker's on requests no front end sends (:mod:`exportgate.web.rsgi` lists how).

Each worker process builds its own app after the fork (record store connections, the recorder's writer thread and
the geo reader must not cross a fork), so every worker writes its own hash chain; it starts from the manifest and
packs its master loaded. ``SIGHUP`` to the master loads them again and, when they load, starts fresh workers
without dropping the listening socket; when they do not, the running workers stay (:mod:`exportgate.reloading`).
gate.yaml and the command-line options stay those the master started with (restart to change them). Metrics from
all workers are summed through ``PROMETHEUS_MULTIPROC_DIR``.

Logs: in proxy and static modes gunicorn writes an access log with the decision; in forward-auth mode neither
server writes one (the front end's log carries the decision headers, see deploy/nginx), and the gate's own
warnings go to the same stream as the server's.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
from typing import Any

from . import reloading
from .config import GateConfig, bind_addresses
from .errors import ConfigError, ExportGateError, ResponseCutShort
from .openfiles import raise_open_file_limit
from .runtime import DecisionFiles, record_log_problem

log = logging.getLogger("exportgate.serve")

# %(B)s counts what went through write(): a whole static file goes out by sendfile, which gunicorn does not count
# (0), so the announced length is logged beside it.
ACCESS_LOG_FORMAT = ('%(h)s "%(r)s" %(s)s %(B)s length=%({content-length}o)s decision=%({x-exportgate-decision}o)s '
                     'rule=%({x-exportgate-rule}o)s id=%({x-exportgate-decision-id}o)s %(M)sms')


def _metrics_dir() -> str | None:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` if it is not; returns the directory when this call created it."""
    # prometheus_client reads this when it is first imported: set it before anything imports it.
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        # Named by a supervisor that did not make it (systemd's RuntimeDirectory= does): made here, not a crash.
        os.makedirs(given, mode=0o700, exist_ok=True)
        return None
    path = tempfile.mkdtemp(prefix="exportgate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def server_for(config: GateConfig) -> str:
    """``gunicorn`` or ``granian``: the configured server, with ``auto`` resolved (module docstring)."""
    server, mode = config.serve.server, config.serve.mode
    if server == "auto":
        return "gunicorn"
    if server == "granian" and mode != "forward-auth":
        raise ExportGateError(f"granian serves forward-auth mode only: in {mode} mode it would hand the gate an "
                              "already-decoded path (a %2F would not be refused); use gunicorn (the default "
                              "for this mode)")
    return server


def gunicorn_options(config: GateConfig) -> dict[str, Any]:
    s = config.serve
    return {
        "bind": bind_addresses(s.bind),
        "workers": s.workers,
        "threads": s.threads,
        "worker_class": _worker_class(s),
        "preload_app": False,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": "info",
        "access_log_format": ACCESS_LOG_FORMAT,
        "timeout": max(30, int(s.upstream_timeout) + 10),
        "graceful_timeout": 10,
        "keepalive": 75,  # front ends keep upstream connections open; close later than they do
        "limit_request_field_size": 16384,
        # A unix: socket gets the process's own umask (systemd's UMask=), not gunicorn's default 0: a socket anyone on
        # the host can write to lets any local user ask with an X-Forwarded-For of their choosing.
        "umask": _current_umask(),
        "proc_name": f"exportgate[{config.instance}]",
        # gunicorn >= 25 opens a control socket at one fixed path per user: a second gate on the same host would
        # take it over. Not needed to run the gate; skipped on versions that do not have it.
        "control_socket_disable": True,
    }


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _worker_class(serve: Any) -> str:
    """The event-loop worker for forward auth, WSGI threads for the modes that serve the download themselves."""
    if serve.mode == "forward-auth":
        return "exportgate.web.loopworker.ForwardAuthWorker"
    return "gthread" if serve.threads > 1 else "sync"


def run(config: GateConfig) -> None:
    """Serve until stopped (SIGINT/SIGTERM: graceful). Everything the workers start from is loaded and checked
    first (:func:`exportgate.reloading.start`): a problem raises here, with file:line, before any server starts."""
    problem = record_log_problem(config.record_log)
    if problem is not None:
        raise ConfigError(problem, file=config.file)
    raise_open_file_limit()
    reloading.start(lambda: config)
    created = _metrics_dir()
    master = os.getpid()
    try:
        reloading.count_reloads()  # after _metrics_dir(): prometheus_client reads it when first imported
        if server_for(config) == "granian":
            _run_granian(config)
        else:
            _run_gunicorn(config)
    finally:
        # Only the master removes the directory it made. gunicorn's workers are forked inside run() and leave
        # through this very frame (SystemExit) whenever they stop - at every SIGHUP reload, for one: removing it
        # there took the live workers' metric files away, and the next worker failed to boot.
        if created is not None and os.getpid() == master:
            shutil.rmtree(created, ignore_errors=True)


def _run_gunicorn(config: GateConfig) -> None:
    from gunicorn.app.base import BaseApplication

    def on_starting(arbiter: Any) -> None:
        log_to_server_log(arbiter)
        say_unused_settings(config)
        reloading.guard_gunicorn(arbiter, lambda: config)

    class GateServer(BaseApplication):  # type: ignore[misc]
        def __init__(self) -> None:
            self.options = gunicorn_options(config)
            super().__init__()

        def load_config(self) -> None:
            for key, value in self.options.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)
            self.cfg.set("child_exit", _child_exit)
            self.cfg.set("on_starting", on_starting)

        def load(self) -> Any:
            from .web.app import create_app

            start, files = _starting_point(config)
            return reloading.start_worker(lambda: create_app(start, files=files))

    GateServer().run()


def log_to_server_log(arbiter: Any) -> None:
    """From gunicorn's ``on_starting`` hook: the gate's own log lines (``exportgate.*``: a record not committed, a
    fail_open decision, a geo database switched or refused, authorizations reloaded) go to gunicorn's error log, with
    its time, process and level, from INFO up, in the master and every worker it forks. Unconfigured, Python printed
    only WARNING and up, bare. The handlers are gunicorn's own, so ``SIGUSR1`` reopens their files too. Left
    alone where logging is configured already (a handler on ``exportgate`` or on the root logger).

    Also drops gunicorn's "Error handling request" and its traceback for a download the gate cut short on purpose
    (:class:`~exportgate.errors.ResponseCutShort`, which the gate has logged in one line already)."""
    error_log = arbiter.log.error_log
    if not any(isinstance(f, _CutShortOnPurpose) for f in error_log.filters):
        error_log.addFilter(_CutShortOnPurpose())
    gate = logging.getLogger("exportgate")
    if gate.handlers or logging.getLogger().handlers:
        return  # the operator's own logging config (gunicorn's logconfig_dict or --log-config) decides
    gate.handlers = list(arbiter.log.error_log.handlers)
    gate.setLevel(logging.INFO)
    gate.propagate = False


class _CutShortOnPurpose(logging.Filter):
    """Raising out of a response's body is how a WSGI app has the server abort a connection (the upstream stopped
    mid-body, a file was cut short while sent): the gate says why itself, so gunicorn's traceback of that is
    noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ResponseCutShort))


def say_unused_settings(config: GateConfig) -> None:
    """Once, in the master: the serve settings the mode ignores (:func:`~exportgate.web.serving.unused_settings`)."""
    from .web.serving import unused_settings

    for warning in unused_settings(config.serve):
        log.warning("%s: %s", config.file or "config", warning)


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def granian_options(config: GateConfig) -> dict[str, Any]:
    """Keyword arguments for ``granian.Granian`` from ``config.serve`` (RSGI interface, one address)."""
    s = config.serve
    binds = [b.strip() for b in s.bind.split(",") if b.strip()]
    if len(binds) != 1:
        raise ExportGateError(f"granian listens on one address; bind is {s.bind!r}")
    host, sep, port = binds[0].rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ExportGateError(f"bind must be HOST:PORT for granian, got {binds[0]!r}")
    options: dict[str, Any] = {
        "address": host.strip("[]") or "127.0.0.1",
        "port": int(port),
        "workers": s.workers,
        # RSGI: the loop's own thread; the gate's pages use the loop's executor. (granian's experimental Rust
        # task implementation measured within this machine's noise of asyncio's Task: not worth it on the path
        # that must fail closed.)
        "blocking_threads": 1,
        # gunicorn's behaviour: a worker that dies is replaced, the server stays up (granian's default is to
        # shut down entirely); a worker that does not stop within the grace period is killed.
        "respawn_failed_workers": True,
        "workers_kill_timeout": 10,
        # Access lines without the decision would only repeat the front end's log, at a cost per request.
        "log_access": False,
    }
    if importlib.util.find_spec("setproctitle") is not None:  # granian refuses process_name without it
        options["process_name"] = f"exportgate[{config.instance}]"
    return options


def _run_granian(config: GateConfig) -> None:
    try:
        from granian import Granian
        from granian.constants import Interfaces
    except ImportError as exc:
        raise ExportGateError("granian is not installed (a dependency of exportgate): reinstall exportgate, "
                              "or serve with --server gunicorn") from exc

    class GateGranian(Granian):  # type: ignore[misc,valid-type]
        # granian's SIGHUP, refused as gunicorn's is. _reload is granian's own (private) method: if a release
        # renames it, tests/integration/test_serve_operations.py fails rather than the reload going unguarded.
        def _reload(self, spawn_target: Any, target_loader: Any) -> Any:
            problem = reloading.reload(lambda: config)
            if problem is not None:
                log.error(reloading.refused(problem))
                self.reload_signal = False
                self.main_loop_interrupt.clear()
                result = None
            else:
                result = super()._reload(spawn_target, target_loader)
            # A SIGTERM that came while the files loaded or the workers were replaced set interrupt_signal and
            # this wake-up, which the reload then cleared: without it again the server would never stop.
            if self.interrupt_signal:
                self.main_loop_interrupt.set()
            return result

    server = GateGranian("exportgate.web.rsgi:create_rsgi_app", interface=Interfaces.RSGI,
                         log_dictconfig=_granian_logging(), **granian_options(config))
    server.on_startup(_tell_systemd_ready)
    server.on_startup(functools.partial(say_unused_settings, config))
    # The loader runs in each worker after it starts (granian forks or spawns workers): the app, its store
    # connection, recorder thread and geo reader are built there, from this very config (command-line options
    # included), never carried across the fork.
    server.serve(target_loader=functools.partial(_granian_worker_app, config), wrap_loader=False)


def _tell_systemd_ready() -> None:
    """``READY=1`` to systemd (``Type=notify``, deploy/systemd) once granian listens, as gunicorn does itself.

    gunicorn's own helper: a no-op outside systemd; the variable is dropped so the workers do not inherit it.
    """
    from gunicorn.systemd import sd_notify

    sd_notify("READY=1", log, unset_environment=True)


def _granian_logging() -> dict[str, Any]:
    """granian's logging setup plus the gate's own loggers (store failures, stale geo data) on the same stream.

    gunicorn's ``errorlog`` and granian's defaults configure only the servers' loggers: the gate's warnings would
    reach stderr bare, without time or level.
    """
    import copy

    from granian.log import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["exportgate"] = {"()": "logging.Formatter",
                                          "fmt": "[%(asctime)s] [%(levelname)s] %(name)s: %(message)s"}
    config["handlers"]["exportgate"] = {"formatter": "exportgate", "class": "logging.StreamHandler",
                                        "stream": "ext://sys.stdout"}
    config["loggers"]["exportgate"] = {"handlers": ["exportgate"], "level": "INFO", "propagate": False}
    return config


def _granian_worker_app(config: GateConfig) -> Any:
    from .web.rsgi import create_rsgi_app

    _forget_dead_workers()
    # After a SIGHUP the old workers stop only once the new ones run (granian waits 3.5 s between workers, then
    # up to the kill timeout): look again when they are surely gone.
    later = threading.Timer(60.0, _forget_dead_workers)
    later.daemon = True
    later.start()
    start, files = _starting_point(config)
    return reloading.start_worker(lambda: create_rsgi_app(start, files))


def _starting_point(config: GateConfig) -> tuple[GateConfig, DecisionFiles | None]:
    """What a new worker builds its app from: what its master has in force, when it was forked from one; spawned
    workers (granian on Python >= 3.14) load the files again."""
    loaded = reloading.in_force()
    return loaded if loaded is not None else (config, None)


def _forget_dead_workers() -> None:
    """Drop the live-gauge files of worker processes that are gone (granian has no child-exit hook).

    Without this a worker replaced after a crash or a ``SIGHUP`` would keep its last store-health and geo
    readings in ``/metrics`` for good.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    from prometheus_client import multiprocess

    pids: set[int] = set()
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        stem, _, pid = name.removesuffix(".db").rpartition("_")
        if stem.startswith("gauge_live") and pid.isdigit():
            pids.add(int(pid))
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                multiprocess.mark_process_dead(pid, directory)
            except OSError:
                pass  # another worker starting at the same time removed it first
        except PermissionError:
            pass  # alive, someone else's
