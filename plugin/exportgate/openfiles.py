"""The limit of open files: each connection a worker holds is one.

Shells and systemd give 1,024 by default, and past the limit the event loop drops new connections without an
answer (uvloop's, the default, without a log line either). The server's master raises the limit for the workers it
forks (:func:`raise_open_file_limit`); a worker warns when its connections near it (:func:`crowded_at`).
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("exportgate.openfiles")

# With no hard limit (RLIM_INFINITY, some BSDs and macOS), as many as this: Linux refuses an infinite soft limit.
_OPEN_FILES_WITHOUT_HARD_LIMIT = 65536


def raise_open_file_limit() -> None:
    """Raise this process's soft limit of open files to its hard limit, for the workers it forks (as nginx's
    ``worker_rlimit_nofile`` and Go's runtime do). Where it may not (a seccomp filter, deploy/systemd), the limit
    stays and a warning says so."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _OPEN_FILES_WITHOUT_HARD_LIMIT if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("open files: cannot raise the limit of %d to %d (%s); raise it where the gate is started "
                        "(ulimit -n, systemd LimitNOFILE=)", soft, target, exc)
        else:
            log.info("open files: limit raised from %d to %d", soft, target)


def crowded_at() -> int:
    """Open connections worth a warning: four fifths of this process's limit of open files (none without a limit)."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return sys.maxsize
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return sys.maxsize if soft == resource.RLIM_INFINITY else max(1, soft * 4 // 5)


__all__ = ["crowded_at", "raise_open_file_limit"]
