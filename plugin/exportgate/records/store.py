"""Where records are kept: the :class:`Store` contract and :func:`open_store` for a store URL.

A store is append-only by construction: :meth:`Store.append` and queries, no update or delete.
``append`` is one transaction that is durable when it returns, or raises
:class:`~exportgate.errors.RecordStoreError`; a caller never has to guess.

Store URLs (one per line in ``gate.yaml``; percent-encode ``?``, ``#`` and ``%`` in paths)::

    sqlite:///var/lib/exportgate/records.db      absolute path (three slashes, as in SQLAlchemy)
    sqlite:records/gate.db                       relative to the working directory
    sqlite::memory:                              in memory, gone at close (tests, dry runs)
    sqlite:///…/records.db?synchronous=normal&busy_timeout_ms=10000&commit_delay_ms=0.25

``synchronous`` is ``full`` (default: a commit survives power loss), ``extra`` or ``normal``
(survives a crash of the process, not of the machine). ``off`` is refused: it would break the
promise that a served download has a record. ``commit_delay_ms`` (default 0.25, 0 to 1000) is how
long a transaction waits for more records while other downloads are being decided
(:mod:`exportgate.records.recorder`); 0 commits as soon as the writer is free.

Caveat: the store is append-only through this API only. Anyone who can write the database file
can change it; :mod:`exportgate.records.verify` finds what the hash chain can show.
A PostgreSQL store (several gate replicas, one store) plugs in as another scheme in
``_SCHEMES``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, unquote, urlsplit

from exportgate.errors import ConfigError, RecordStoreError
from exportgate.records.chain import Record


class StoreOpenError(RecordStoreError):
    """The store could not be opened for writing (bad directory, not a database, read-only …)."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: cannot open the record store: {reason}")


class CorruptRecordError(RecordStoreError):
    """A stored row cannot be read back as a record (changed outside exportgate).

    Carries what could be read, so ``verify`` can report it and go on after it: ``position`` is the row's seq as
    stored (``seq`` is -1 when that is not an integer), to pass back as ``after_seq``.
    """

    def __init__(
        self, *, chain: str, seq: int, id: str, prev_hash: str, hash: str, reason: str, position: Any = None
    ) -> None:
        self.chain = chain
        self.seq = seq
        self.position = position
        self.id = id
        self.prev_hash = prev_hash
        self.hash = hash
        self.reason = reason
        super().__init__(f"record {chain} #{seq} ({id}) is unreadable: {reason}")


@runtime_checkable
class Store(Protocol):
    """Append-only keeping of records. Implementations must be safe to call from several threads."""

    def append(self, records: Sequence[Record]) -> None:
        """Store ``records`` in one transaction; durable when this returns.

        Raises :class:`~exportgate.errors.RecordStoreError` on any failure, in which case none
        of them is stored.
        """

    def iter_records(
        self, kind: str | None = None, chain: str | None = None, *, after_seq: Any = 0
    ) -> Iterator[Record]:
        """Records in (chain, seq) order, optionally of one kind / chain, with seq > ``after_seq``;
        ``after_seq=None``: every row, whatever is stored as its seq (what verification reads: a row put in at
        seq 0 or below is still a row).

        Raises :class:`CorruptRecordError` on a row that cannot be read back.
        """
        ...

    def get(self, id: str) -> Record | None:
        """The first record (in (chain, seq) order, seq from 1) with this id, or ``None``."""
        ...

    def last(self, chain: str) -> Record | None:
        """The record with the highest seq in ``chain``, or ``None`` for an unknown chain."""
        ...

    def chains(self) -> list[str]:
        """Every chain id, sorted."""
        ...

    def count(self, kind: str | None = None) -> int:
        """How many records (of ``kind``) are stored."""
        ...

    def close(self) -> None:
        """Release the store; further calls raise."""


def open_store(url: str, *, file: str | None = None, line: int | None = None) -> Store:
    """Open the store named by ``url`` (see the module docstring).

    ``file``/``line`` say where the URL was written, for the :class:`ConfigError` raised on an
    unknown scheme or a malformed URL. Failing to open a well-formed URL raises
    :class:`StoreOpenError`.
    """
    opener, settings = _parse(url, file, line)  # a malformed URL or unknown scheme: ConfigError, nothing opened
    return opener(settings)


def store_file(url: str, *, file: str | None = None, line: int | None = None) -> str | None:
    """The file a store URL names, checked as :func:`open_store` checks it but not opened (nor created): for
    ``exportgate check``, which must not make a store, its directory or its lock file. ``None``: no file (memory)."""
    path = _parse(url, file, line)[1]["path"]
    return None if path is None else os.path.abspath(path)


def _parse(url: str, file: str | None, line: int | None) -> tuple[Callable[[dict[str, Any]], Store], dict[str, Any]]:
    """The opener of ``url``'s scheme, and the settings ``url`` gives it (checked)."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"record store URL {url!r} is empty", file=file, line=line)
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:
        raise ConfigError(f"record store URL {url!r} is malformed: {exc}", file=file, line=line) from None
    kind = _SCHEMES.get(scheme)
    if kind is None:
        known = ", ".join(f"{s}:" for s in sorted(_SCHEMES))
        what = f"scheme {scheme!r}" if scheme else "no scheme"
        raise ConfigError(
            f"record store URL {url!r} has {what}; supported: {known} "
            f"(e.g. sqlite:///var/lib/exportgate/records.db)",
            file=file,
            line=line,
        )
    parse, opener = kind
    return opener, parse(url, file, line)


def _open_sqlite(settings: dict[str, Any]) -> Store:
    from exportgate.records.sqlite import SQLiteStore

    return SQLiteStore(**settings)


def _sqlite_settings(url: str, file: str | None, line: int | None) -> dict[str, Any]:
    from exportgate.records.sqlite import DEFAULT_COMMIT_DELAY, SYNCHRONOUS_MODES

    def bad(why: str) -> ConfigError:
        return ConfigError(
            f"record store URL {url!r}: {why}; use sqlite:///absolute/path.db, "
            f"sqlite:relative/path.db or sqlite::memory:",
            file=file,
            line=line,
        )

    parts = urlsplit(url)
    lowered = url.lower()
    if parts.netloc or (lowered.startswith("sqlite://") and not lowered.startswith("sqlite:///")):
        raise bad("sqlite URLs take no host")
    if parts.fragment:
        raise bad("unexpected '#' (percent-encode it as %23 in a path)")
    path = unquote(parts.path)
    if not path or path == "/":
        raise bad("no database path")
    if "\x00" in path:
        raise bad("NUL in the path")
    options: dict[str, str] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise bad(f"malformed query {parts.query!r}") from None
    for key, value in pairs:
        if key in options:
            raise bad(f"option {key!r} given twice")
        options[key] = value
    synchronous = options.pop("synchronous", "full").upper()
    if synchronous not in SYNCHRONOUS_MODES:
        raise bad(
            f"synchronous={synchronous.lower()!r} is not one of "
            f"{', '.join(m.lower() for m in SYNCHRONOUS_MODES)}"
        )
    timeout_text = options.pop("busy_timeout_ms", "5000")
    if not (timeout_text.isascii() and timeout_text.isdigit()) or not 0 < int(timeout_text) <= 600_000:
        raise bad(f"busy_timeout_ms={timeout_text!r} is not a whole number of ms in 1..600000")
    delay_text = options.pop("commit_delay_ms", None)
    commit_delay = DEFAULT_COMMIT_DELAY
    if delay_text is not None:
        try:
            delay_ms = float(delay_text)
        except ValueError:
            delay_ms = -1.0
        if not 0.0 <= delay_ms <= 1000.0:  # also NaN
            raise bad(f"commit_delay_ms={delay_text!r} is not a number of ms in 0..1000")
        commit_delay = delay_ms / 1000.0
    if options:
        raise bad(
            f"unknown option(s) {', '.join(sorted(options))} "
            f"(known: synchronous, busy_timeout_ms, commit_delay_ms)"
        )
    return {
        "path": None if path == ":memory:" else path,
        "synchronous": synchronous,
        "busy_timeout_ms": int(timeout_text),
        "commit_delay": commit_delay,
    }


# scheme -> (parser(url, file, line) of its settings, opener(settings)). A constant table, not a registry: a new
# store is a new line.
_SCHEMES: dict[str, tuple[Callable[[str, str | None, int | None], dict[str, Any]],
                          Callable[[dict[str, Any]], Store]]] = {
    "sqlite": (_sqlite_settings, _open_sqlite),
}
