"""One object per process: the gate's resources (record store, recorder thread, geo reader) do not survive a fork.

A WSGI server that imports an app before forking its workers (gunicorn ``--preload``, uWSGI without
``lazy-apps``, a module attribute read in the master) hands every worker the master's copy, whose recorder thread
stayed behind: each commit would wait forever. :class:`PerProcess` builds the object again in a process other than
the one it was built in. The copy inherited from the parent is left alone there: its thread is not in this
process, and its store connection must not be used (nor closed) on this side of the fork.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """``get()``: what ``build()`` made in this process, built on first use here (or at once with ``eager``)."""

    def __init__(self, build: Callable[[], T], *, eager: bool = False) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._pid = 0
        self._value: T | None = None
        if eager:  # a broken manifest or pack fails where the app is set up, not at its first request
            self.get()

    def get(self) -> T:
        value = self._value
        if value is None or self._pid != os.getpid():
            with self._lock:
                if self._value is None or self._pid != os.getpid():
                    self._value, self._pid = self._build(), os.getpid()
                value = self._value
        return value

    def built(self) -> T | None:
        """This process's object if it was built here, else ``None``."""
        return self._value if self._pid == os.getpid() else None


__all__ = ["PerProcess"]
