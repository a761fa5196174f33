"""A MaxMind-format database file that is opened once, checked, and reloaded when it is replaced.

:class:`DatabaseFile` is the part every ``.mmdb`` the gate reads shares, whatever its records
mean (:mod:`exportgate.maxmind` says that): it opens the file with ``maxminddb`` and refuses it —
as a :class:`~exportgate.errors.GeoDatabaseError` naming the file — when it is missing, empty,
truncated, corrupt (a few probe addresses are looked up at once, so a broken data section fails
here rather than request after request) or of another ``database_type`` than the subclass
accepts. ``check_for_update`` (at most once per ``check_interval``) notices when geoipupdate has
renamed a new file over the old one (device, inode, size or mtime changed) and switches to it;
``generation`` counts the switches so callers know to drop what they cached. Each build carries
its own per-network cache, so a reload can never answer from the old build's networks.

Caveat: a broken new file leaves the old one answering — the gate must keep serving — and says
so in the log (once per broken file, unless reloaded by hand) and in
``describe()["last_reload_error"]``. Likewise a build past ``max_age_days`` is still used, but
logged once and flagged ``stale``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import stat
import threading
import time
from typing import Any, Self

from .errors import GeoDatabaseError
from .networktable import NetworkTable

# The gate's geolocation modules share one logger, so one logging setting covers all of them.
log = logging.getLogger("exportgate.geo")

# Addresses looked up when a file is opened, so a file whose data section is broken is refused
# then rather than failing request after request.
_PROBES_V4 = ("8.8.8.8", "2.176.0.1", "81.2.69.142")
_PROBES_V6 = ("2001:4860:4860::8888", "2a01:5ec0::1")
_NETWORK_CACHE_SIZE = 65536  # networks remembered per build before the cache starts over
_DAY = 86400.0
_monotonic = time.monotonic


class _Loaded:
    """One opened file: its reader, metadata and the caches that belong to that build only."""

    __slots__ = (
        "built",
        "metadata",
        "networks",
        "reader",
        "signature",
        "source",
        "warned_stale",
    )

    def __init__(self, reader: Any, signature: tuple[int, ...]) -> None:
        self.reader = reader
        self.metadata = reader.metadata()
        self.signature = signature
        self.built = dt.datetime.fromtimestamp(self.metadata.build_epoch, dt.UTC)
        self.source = f"{self.metadata.database_type} {self.built:%Y-%m-%d}"
        self.networks = NetworkTable()
        """What the subclass extracted from each database network seen (``networks.find``)."""
        self.warned_stale = False

    def remember(self, version: int, value: int, prefix_len: int, entry: Any) -> None:
        # Networks of one tree never overlap, so an address is in at most one cached network and
        # the order the prefix lengths are probed in does not matter.
        if len(self.networks) >= _NETWORK_CACHE_SIZE:
            self.networks = NetworkTable()
        self.networks.add(version, value, prefix_len, entry)


def _signature(path: str) -> tuple[int, ...]:
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class DatabaseFile:
    """A MaxMind-format file that is opened once, validated, and reloaded when it is replaced.

    Subclasses set ``accepted_types`` (one must be in the file's ``database_type``) and
    ``expected`` (what the error message says was expected), and read ``self._loaded``: the
    ``reader``, ``source`` and the build's ``networks`` cache of the file in use.
    """

    accepted_types: tuple[str, ...] = ()
    expected: str = ""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_age_days: int | None = 35,
        check_interval: float = 5.0,
    ) -> None:
        self.path = os.fspath(path)
        self.max_age_days = max_age_days
        self.check_interval = check_interval
        self.generation = 0
        """Incremented each time a new file is put in use (callers clear their caches)."""
        self.last_reload_error: str | None = None
        self._failed: object = None
        self._lock = threading.Lock()
        self._loaded = self._open()
        self._next_check = _monotonic() + check_interval
        self._warn_if_stale(self._loaded)

    def _open(self) -> _Loaded:
        import maxminddb

        path = self.path
        try:
            signature = _signature(path)
        except FileNotFoundError:
            raise GeoDatabaseError(path, "file not found") from None
        except IsADirectoryError:
            raise GeoDatabaseError(path, "is a directory, expected a .mmdb file") from None
        except OSError as exc:
            raise GeoDatabaseError(path, f"cannot read: {exc.strerror or exc}") from None
        if signature[2] == 0:
            raise GeoDatabaseError(path, "empty file (an interrupted download?)")
        try:
            reader = maxminddb.open_database(path)
        except maxminddb.InvalidDatabaseError as exc:
            raise GeoDatabaseError(
                path, f"not a valid MaxMind DB file, truncated or corrupt ({exc})"
            ) from None
        except OSError as exc:
            raise GeoDatabaseError(path, f"cannot read: {exc.strerror or exc}") from None
        except Exception as exc:  # the reader raises ValueError, TypeError… on junk
            raise GeoDatabaseError(path, f"not a valid MaxMind DB file ({exc})") from None
        try:
            loaded = _Loaded(reader, signature)
            database_type = loaded.metadata.database_type
            if not any(kind in database_type for kind in self.accepted_types):
                raise GeoDatabaseError(
                    path, f"database type {database_type!r} is not {self.expected}"
                )
            probes = _PROBES_V4 + (_PROBES_V6 if loaded.metadata.ip_version == 6 else ())
            for probe in probes:
                try:
                    reader.get_with_prefix_len(probe)
                except Exception as exc:  # fail closed
                    raise GeoDatabaseError(
                        path, f"corrupt: looking up {probe} failed ({exc})"
                    ) from None
        except GeoDatabaseError:
            reader.close()
            raise
        except Exception as exc:  # metadata of the wrong shape
            reader.close()
            raise GeoDatabaseError(path, f"not a valid MaxMind DB file ({exc})") from None
        return loaded

    @property
    def source(self) -> str:
        """``"GeoLite2-City 2026-11-24"``: database type and build date of the file in use."""
        return self._loaded.source

    def check_for_update(self) -> bool:
        """Reload if the file changed, at most once per ``check_interval``; True if reloaded."""
        now = _monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.check_interval
        return self._refresh(force=False)

    def reload(self) -> bool:
        """Reopen the file now; True if a new file is in use, False if broken (old one kept)."""
        return self._refresh(force=True)

    def _refresh(self, *, force: bool) -> bool:
        if not self._lock.acquire(blocking=force):
            return False  # another thread is reloading it right now
        try:
            current = self._loaded
            try:
                signature: tuple[int, ...] | None = _signature(self.path)
            except OSError:
                signature = None  # _open says why
            if not force:
                if signature == current.signature:
                    self._warn_if_stale(current)
                    return False
                if signature is not None and signature == self._failed:
                    return False  # the same broken file as last time: already said so
            try:
                loaded = self._open()
            except GeoDatabaseError as exc:
                failure = signature if signature is not None else str(exc)
                self.last_reload_error = str(exc)
                if force or failure != self._failed:
                    log.error("cannot reload %s; still answering from %s", exc, current.source)
                self._failed = failure
                return False
            self._loaded = loaded
            self.generation += 1
            self.last_reload_error = None
            self._failed = None
            log.info("%s: now answering from %s", self.path, loaded.source)
            self._warn_if_stale(loaded)
            return True
        finally:
            self._lock.release()

    def _age_days(self, loaded: _Loaded) -> float:
        return (time.time() - float(loaded.metadata.build_epoch)) / _DAY

    def _is_stale(self, loaded: _Loaded) -> bool:
        return self.max_age_days is not None and self._age_days(loaded) > self.max_age_days

    def _warn_if_stale(self, loaded: _Loaded) -> None:
        if not loaded.warned_stale and self._is_stale(loaded):
            loaded.warned_stale = True
            log.warning(
                "%s: %s is %d days old, past the limit of %d days; update it (geoipupdate)",
                self.path,
                loaded.source,
                self._age_days(loaded),
                self.max_age_days,
            )

    def describe(self) -> dict[str, object]:
        loaded = self._loaded
        self._warn_if_stale(loaded)
        return {
            "source": loaded.source,
            "database_type": loaded.metadata.database_type,
            "build_date": loaded.built.date().isoformat(),
            "age_days": int(self._age_days(loaded)),
            "max_age_days": self.max_age_days,
            "stale": self._is_stale(loaded),
            "path": self.path,
            "last_reload_error": self.last_reload_error,
        }

    def close(self) -> None:
        """Release the file. Only at shutdown: a lookup still running on it would fail."""
        self._loaded.reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
