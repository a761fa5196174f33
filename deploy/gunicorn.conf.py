"""gunicorn settings for running exportgate under a gunicorn you start yourself.

    EXPORTGATE_CONFIG=/etc/exportgate/gate.yaml gunicorn -c /etc/exportgate/gunicorn.conf.py

``exportgate serve`` runs gunicorn with exactly these options; use this file when something else manages gunicorn
(a process supervisor with its own command line, a platform that runs ``gunicorn -c``). The options come from the
``serve`` section of gate.yaml (bind, workers, threads, timeouts), so there is one place to change them; the
forward-auth, proxy or static mode is ``serve.mode`` there too.

Caveat: each worker builds its own app after the fork (``exportgate.web.wsgi:create()``): record store
connection, recorder thread and geo reader must not cross a fork, so ``preload_app`` stays off. Every worker writes
its own hash chain. Metrics of all workers are summed through ``PROMETHEUS_MULTIPROC_DIR``, which must be an empty
directory when gunicorn starts (systemd: ``RuntimeDirectory=``); without it this file makes a fresh one.

Reload (``kill -HUP``): gate.yaml, the manifest and the packs are loaded again, and only if they load does gunicorn
start fresh workers; otherwise the running workers stay and the log says why (:mod:`exportgate.reloading`, as
under ``exportgate serve``). Workers start from the master's last good copy, not from the files on disk.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

# prometheus_client reads PROMETHEUS_MULTIPROC_DIR when it is first imported: set it before anything imports it.
_made_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _made_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="exportgate-metrics-")
else:  # named by a supervisor that did not make it: made here, not a crash at start
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], mode=0o700, exist_ok=True)

from exportgate import reloading  # after the environment is set
from exportgate.config import load_config
from exportgate.openfiles import raise_open_file_limit
from exportgate.serve import gunicorn_options, log_to_server_log, say_unused_settings

# EXPORTGATE_CONFIG and EXPORTGATE_*; a bad file fails here with file:line. On a SIGHUP gunicorn runs this file
# again after the reload guard loaded the files: that copy is used, so a file changed (or half-written) meanwhile
# cannot stop the master (gunicorn exits when its config file raises).
_config = reloading.in_force()[0] if reloading.in_force() is not None else load_config()
globals().update(gunicorn_options(_config))

wsgi_app = "exportgate.web.wsgi:create()"
preload_app = False


def on_starting(server: Any) -> None:
    # Kept on the master itself: a SIGHUP runs this file again, where the variable is set already, and gunicorn
    # calls that run's on_exit.
    server.exportgate_made_metrics_dir = _made_metrics_dir
    # The gate's own lines (a record not committed, a fail_open decision, geo reloads) in gunicorn's error log.
    log_to_server_log(server)
    say_unused_settings(_config)
    # Counters left by a previous run would be added to this one's.
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.unlink(os.path.join(directory, name))
    # Each connection a worker holds is an open file (exportgate serve does the same).
    raise_open_file_limit()
    # What the workers start from, loaded once here; a SIGHUP whose files do not load is refused.
    reloading.start(load_config)
    reloading.count_reloads()
    reloading.guard_gunicorn(server, load_config)


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    # The directory this file made (none given): nobody else would remove it.
    made = getattr(server, "exportgate_made_metrics_dir", None)
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)
