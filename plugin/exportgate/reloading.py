"""What a server's master has in force, and ``SIGHUP`` replacing it only with something that loads.

The master (``exportgate serve``, or a gunicorn started with ``deploy/gunicorn.conf.py``) loads the configuration
and the manifest and packs (:func:`~exportgate.runtime.load_decision_files`, which also opens and closes the geo
database and the record store as a worker would), checks the serve settings every worker builds from (trusted
proxies, gated globs, upstream or root: :func:`~exportgate.web.serving.check_serving`), and every worker it forks
starts from that copy. So a worker started later (after a crash, at ``max_requests``) neither stops at a file
someone has broken since, nor decides by a file edited but not yet reloaded.

``SIGHUP`` loads everything again first. Only when all of it loads does the server go on with its own reload (fresh
workers, the listening socket kept); otherwise the master logs every problem (file:line), keeps the running workers
and sets ``exportgate_config_last_reload_successful`` to 0, so ``systemctl reload`` after a typo does not take the
gate down.

A worker that cannot start all the same (:func:`start_worker`: another program holding the record store's lock, a
geo database broken on disk, the metrics directory deleted) tries again for a while, then leaves with a plain exit
so that the server starts another one: gunicorn stops altogether when a worker "fails to boot", which would turn a
passing lock into a gate that stays down.

Caveat: authorizations and the geo database are still read by each new worker (they are data of the store and a
reader that must not cross a fork); a running worker follows the store's authorizations itself
(:class:`~exportgate.runtime.AuthorizationWatch`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .config import GateConfig
from .errors import ConfigError
from .policy import coverage
from .runtime import DecisionFiles, load_decision_files

log = logging.getLogger("exportgate.serve")

WORKER_START_TIMEOUT = 15.0  # seconds; below gunicorn's default worker timeout (30 s)

T = TypeVar("T")
_monotonic, _sleep = time.monotonic, time.sleep  # module names, for the tests to replace

_in_force: tuple[GateConfig, DecisionFiles] | None = None
_reloaded: Any = None  # the master's exportgate_config_last_reload_successful gauge
_config_read: bytes | None = None  # the config file's bytes when it was last read


def start(load_config: Callable[[], GateConfig]) -> None:
    """In the master, before any worker: load what the workers will start from (errors raise, with file:line)."""
    global _in_force, _config_read
    config = load_config()
    _in_force = (config, _load(config))
    _config_read = _file_bytes(config.file)


def count_reloads() -> None:
    """Publish ``exportgate_config_last_reload_successful`` (1 now); call once ``PROMETHEUS_MULTIPROC_DIR`` is set."""
    global _reloaded
    from .web.metrics import reload_gauge

    _reloaded = reload_gauge()
    _reloaded.set(1)


def in_force() -> tuple[GateConfig, DecisionFiles] | None:
    """In a worker forked by such a master: the configuration and files to start from; ``None`` elsewhere."""
    return _in_force


def start_worker(build: Callable[[], T]) -> T:
    """Build a new worker's app with ``build()``, trying again for :data:`WORKER_START_TIMEOUT` seconds while it
    fails, then ``SystemExit(1)``: a plain exit, after which the server starts another worker (module docstring)."""
    from .web.metrics import ensure_directory

    deadline = _monotonic() + WORKER_START_TIMEOUT
    delay = 0.5
    while True:
        ensure_directory()
        try:
            return build()
        except Exception as exc:  # noqa: BLE001 - whatever it is, the server must not stop for it
            if _monotonic() + delay > deadline:
                log.exception("this worker cannot start; leaving so that another is started")
                raise SystemExit(1) from exc
            log.warning("this worker cannot start yet, trying again in %.1f s: %s", delay, exc)
            _sleep(delay)
            delay = min(delay * 2, 4.0)


def reload(load_config: Callable[[], GateConfig]) -> str | None:
    """``SIGHUP``, in the master: load everything again. ``None`` when the new set is in force; otherwise why the
    running workers stay as they are."""
    global _in_force, _config_read
    previous = _in_force[0] if _in_force is not None else None
    try:
        config = load_config()
        loaded = (config, _load(config))
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the workers that run must stay
        problem: str | None = str(exc) or type(exc).__name__
    else:
        _in_force, problem = loaded, None
        now = _file_bytes(config.file)
        if config is previous and now != _config_read:
            # exportgate serve keeps the settings it started with (its command-line options sit on top of them):
            # a changed trust_proxy or policy_settings would otherwise seem applied by the successful reload.
            log.warning("%s changed since the gate started, and a reload does not read it again (the manifest and "
                        "packs were reloaded): restart the gate to apply it", config.file)
        else:
            _config_read = now
    if _reloaded is not None:
        _reloaded.set(0 if problem else 1)
    return problem


def _file_bytes(path: str | None) -> bytes | None:
    from .yamlfile import read_file

    if path is None:
        return None
    try:
        return read_file(path)
    except ConfigError:
        return None


def _load(config: GateConfig) -> DecisionFiles:
    """The files of ``config``, once everything a worker builds from it would build (errors raise, with file:line)."""
    from .web.serving import check_serving

    files = load_decision_files(config)
    check_serving(config)
    # Served, such a set refuses every download (503): refused here, the running workers keep deciding.
    problem, _ = coverage(files.packs, dt.datetime.now(dt.UTC).date())
    if problem is not None:
        raise ConfigError(problem, file=config.file)
    return files


def refused(problem: str) -> str:
    """The log line of a refused reload."""
    return (f"reload refused, the running workers keep the configuration, manifest and packs they have; fix this "
            f"and send SIGHUP again:\n{problem}")


def guard_gunicorn(arbiter: Any, load_config: Callable[[], GateConfig]) -> None:
    """From gunicorn's ``on_starting`` hook, after :func:`start`: a ``SIGHUP`` to ``arbiter`` (gunicorn's master)
    goes through :func:`reload` first."""
    reload_workers = arbiter.handle_hup  # gunicorn's own: reads its settings again, starts fresh workers

    def handle_hup() -> None:
        problem = reload(load_config)
        if problem is not None:
            arbiter.log.error(refused(problem))
            return
        reload_workers()

    arbiter.handle_hup = handle_hup  # the arbiter looks its signal handlers up by name on itself


__all__ = ["count_reloads", "guard_gunicorn", "in_force", "refused", "reload", "start", "start_worker"]
