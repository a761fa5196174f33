"""A MaxMind-format database file that is opened once, checked, and reloaded when it is replaced.

:class:`DatabaseFile` is the part every ``.mmdb`` the gate reads shares, whatever its records
mean (:mod:`exportgate.maxmind` says that): it opens the file with ``maxminddb`` and refuses it —
as a :class:`~exportgate.errors.GeoDatabaseError` naming the file — when it is missing, empty,
truncated, corrupt (a few probe addresses are looked up at once, so a broken data section fails
here rather than request after request; first with the library's pure-Python reader, which raises
an error on some files its C reader crashes on) or of another ``database_type`` than the subclass
accepts. ``check_for_update`` (at most once per ``check_interval``) notices when geoipupdate has
renamed a new file over the old one (device, inode, size or mtime changed) and switches to it;
``generation`` counts the switches so callers know to drop what they cached. Each build carries
its own per-network cache, so a reload can never answer from the old build's networks.

The reader never maps the file itself but a private copy of it, made when it is opened (an anonymous memory file
on Linux, else an unlinked temporary file). ``maxminddb``'s C reader maps its file into memory, and a file
written in place under a mapping (``cp``, ``curl -o`` or ``wget -O`` onto the path, rather than geoipupdate's
rename) kills the process with SIGBUS at its next lookup: every worker at once, and a restarted worker would find
a half-written file. With the copy, a file written in place is one more replacement: read again once it has
changed, refused while half-written (the old copy answers meanwhile), taken once it is whole. Cost: each worker
holds its own copy in memory (the size of the ``.mmdb``; two while a new file loads) instead of sharing the page
cache. Where no copy can be made (no ``/proc``, no writable temporary directory, no room), the file itself is
mapped, as ``maxminddb`` does, with a warning.

Caveat: a broken new file leaves the old one answering — the gate must keep serving — and says
so in the log (once per broken file, unless reloaded by hand) and in
``describe()["last_reload_error"]``. Likewise a build past ``max_age_days`` is still used, but
logged once and flagged ``stale``.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, Self

from .errors import GeoDatabaseError
from .networktable import NetworkTable

# The gate's geolocation modules share one logger, so one logging setting covers all of them.
log = logging.getLogger("exportgate.geo")

# Addresses looked up when a file is opened, so a file whose data section is broken is refused
# then rather than failing request after request.
_PROBES_V4 = ("8.8.8.8", "2.176.0.1", "81.2.69.142")
_PROBES_V6 = ("2001:4860:4860::8888", "2a01:5ec0::1")
_COPY_CHUNK = 1 << 20
_MAX_DEPTH = 512  # libmaxminddb's own limit on nested maps and arrays
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
    return _signature_of(st)


def _fd_signature(fd: int) -> tuple[int, ...]:
    return _signature_of(os.fstat(fd))


def _signature_of(st: os.stat_result) -> tuple[int, ...]:
    """What tells one file, or one state of it, from another: device, inode, size and modification time."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _reader(where: str, path: str, mode: int | None = None) -> Any:
    """``maxminddb``'s reader of the file at ``where`` (``path`` or a private copy of it; ``mode``: the library's
    default, its C reader where built); errors name ``path``. A copy that cannot be opened raises OSError: the
    caller tries another way."""
    import maxminddb

    try:
        return maxminddb.open_database(where, maxminddb.MODE_AUTO if mode is None else mode)
    except maxminddb.InvalidDatabaseError as exc:
        raise GeoDatabaseError(
            path, f"not a valid MaxMind DB file, truncated or corrupt ({_named(exc, where, path)})"
        ) from None
    except OSError as exc:
        if where != path:
            raise
        raise GeoDatabaseError(path, f"cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # the reader raises ValueError, TypeError… on junk
        raise GeoDatabaseError(path, f"not a valid MaxMind DB file ({_named(exc, where, path)})") from None


def _probe(reader: Any, path: str) -> None:
    """Look up the probe addresses (module constants): a file whose data section is broken is refused at once."""
    probes = _PROBES_V4 + (_PROBES_V6 if reader.metadata().ip_version == 6 else ())
    for probe in probes:
        try:
            record, _ = reader.get_with_prefix_len(probe)
        except Exception as exc:  # fail closed
            raise GeoDatabaseError(path, f"corrupt: looking up {probe} failed ({exc})") from None
        if not _keys_are_text(record):
            # The format allows only UTF-8 text as map keys; the C reader crashes on any other.
            raise GeoDatabaseError(path, f"corrupt: looking up {probe} found a map key that is not text")


def _keys_are_text(value: Any, depth: int = 0) -> bool:
    if depth > _MAX_DEPTH:
        return False
    if isinstance(value, dict):
        return all(type(key) is str and _keys_are_text(item, depth + 1) for key, item in value.items())
    if isinstance(value, list):
        return all(_keys_are_text(item, depth + 1) for item in value)
    return True


def _checked_in_python(where: str, path: str) -> None:
    """Open and probe the file with ``maxminddb``'s pure-Python reader before its C reader does: on some corrupt
    files the C reader kills the process (SIGSEGV) where the Python one raises an error, and a crash there would
    take down the server's master at start or reload, or a worker in a loop of restarts. This guards the metadata
    and the probes only; a crash further into a corrupt file remains possible."""
    import maxminddb

    reader = _reader(where, path, maxminddb.MODE_MMAP)
    try:
        _probe(reader, path)
    except GeoDatabaseError:
        raise
    except Exception as exc:  # metadata of the wrong shape
        raise GeoDatabaseError(path, f"not a valid MaxMind DB file ({_named(exc, where, path)})") from None
    finally:
        reader.close()


def _named(exc: Exception, where: str, path: str) -> str:
    return str(exc).replace(where, path) if where != path else str(exc)


@contextmanager
def _memory_copy(source: IO[bytes]) -> Iterator[str]:
    """A copy of ``source`` in an anonymous memory file (Linux), by the path to open it while in the ``with``.
    OSError if none can be made: no ``memfd_create`` (or a syscall filter refusing it), no ``/proc``, no memory."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is None:
        raise OSError(errno.ENOSYS, "no anonymous memory files on this system")
    fd = memfd("exportgate-geo", os.MFD_CLOEXEC)
    try:
        _copy(source, fd)
        where = f"/proc/self/fd/{fd}"
        _check_same_file(where, fd)
        yield where
    finally:
        os.close(fd)


@contextmanager
def _temporary_copy(source: IO[bytes]) -> Iterator[str]:
    """A copy of ``source`` in a temporary file, by its path while in the ``with`` and unlinked on the way out (a
    reader that has mapped it keeps it). OSError if none can be made."""
    fd, where = tempfile.mkstemp(prefix="exportgate-geo-", suffix=".mmdb")
    try:
        _copy(source, fd)
        yield where
    finally:
        os.close(fd)
        try:
            os.unlink(where)
        except OSError as exc:  # a system that cannot remove a file in use: left for the temporary directory's cleaning
            log.debug("cannot remove the geo database copy %s (%s)", where, exc)


_PRIVATE_COPIES = (_memory_copy, _temporary_copy)


class _Unreadable(Exception):
    """The file itself could not be read while copying it (not the copy failing): it is refused, never mapped."""


def _copy(source: IO[bytes], fd: int) -> None:
    """Copy ``source`` into ``fd``. OSError: the copy could not be written (the caller tries another kind);
    :class:`_Unreadable`: the source could not be read."""
    try:
        source.seek(0)
    except OSError as exc:
        raise _Unreadable(exc) from None
    with open(fd, "wb", closefd=False) as target:  # its last write is at the close: inside the caller's try
        while True:
            try:
                chunk = source.read(_COPY_CHUNK)
            except OSError as exc:
                raise _Unreadable(exc) from None
            if not chunk:
                break
            target.write(chunk)


def _check_same_file(where: str, fd: int) -> None:
    """OSError unless ``where`` opens the file of ``fd`` (``/proc/self/fd/N`` may be absent or refused)."""
    check = os.open(where, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if not os.path.samestat(os.fstat(check), os.fstat(fd)):
            raise OSError(errno.ENOENT, "the copy cannot be opened by path", where)
    finally:
        os.close(check)


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
        self._said_no_copy = False
        self._lock = threading.Lock()
        self._loaded = self._open()
        self._next_check = _monotonic() + check_interval
        self._warn_if_stale(self._loaded)

    def _open(self) -> _Loaded:
        path = self.path
        try:
            # Without blocking: a FIFO in its place would wait for a writer forever.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise GeoDatabaseError(path, "file not found") from None
        except OSError as exc:
            raise GeoDatabaseError(path, f"cannot read: {exc.strerror or exc}") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            what = "is a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise GeoDatabaseError(path, f"{what}, expected a .mmdb file")
        with open(fd, "rb") as source:
            signature = _fd_signature(fd)
            if signature[2] == 0:
                raise GeoDatabaseError(path, "empty file (an interrupted download?)")
            reader = None
            problems = []
            for private_copy in _PRIVATE_COPIES:
                try:
                    with private_copy(source) as copy:
                        if _fd_signature(fd) != signature:
                            raise GeoDatabaseError(path, "changed while it was read (being written?); read again "
                                                         "once it has changed")
                        _checked_in_python(copy, path)
                        reader = _reader(copy, path)
                    break
                except _Unreadable as exc:
                    cause = exc.args[0]
                    raise GeoDatabaseError(path, f"cannot read: {cause.strerror or cause}") from None
                except OSError as exc:  # this kind of copy cannot be made here: the next
                    if reader is not None:  # failed on the way out of the ``with``, after the reader had it
                        reader.close()
                        reader = None
                    problems.append(f"{private_copy.__name__.strip('_').replace('_', ' ')}: {exc.strerror or exc}")
            if reader is None:
                if not self._said_no_copy:
                    self._said_no_copy = True
                    log.warning("%s: no private copy could be made (%s), so the file itself is read: replace it "
                                "only by renaming a new file over it (as geoipupdate does), never by writing into "
                                "it (cp, curl -o), which would crash the workers", path, "; ".join(problems))
                _checked_in_python(path, path)
                reader = _reader(path, path)
                try:
                    now = _signature(path)
                except OSError:
                    now = None
                if now != signature:  # replaced between the check and the reader: neither saw the same file
                    reader.close()
                    raise GeoDatabaseError(path, "changed while it was read (being written?); read again once it "
                                                 "has changed")
        try:
            loaded = _Loaded(reader, signature)
            database_type = loaded.metadata.database_type
            if not any(kind in database_type for kind in self.accepted_types):
                raise GeoDatabaseError(
                    path, f"database type {database_type!r} is not {self.expected}"
                )
            _probe(reader, path)
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
