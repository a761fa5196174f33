"""The embedded record store: one SQLite file in WAL mode (stdlib ``sqlite3``).

Use it when one gate process (or one host) writes the records; open it with
``open_store("sqlite:///var/lib/exportgate/records.db")``. With ``synchronous=FULL`` (default) a
commit is on disk when :meth:`SQLiteStore.append` returns; WAL lets readers (verify, review UI,
CLI) run while the gate writes. Everything that can go wrong at open time — a directory that
cannot be created, a path that is a directory, a file that is not a database, a database
written by a newer exportgate, one that cannot be written — is a :class:`StoreOpenError` then,
not a surprise at the first download.

Threads: one writer connection, used under a lock (the recorder's writer thread is its only
user in practice); queries take a connection from a small pool of reader connections, so a long
``verify`` does not stall commits. A file store checkpoints its WAL on a thread of its own, beside
the commits rather than inside one (records/checkpoint.py). An in-memory store has a single
connection for everything.

Processes: several gate workers may write one file. They take turns through a lock file beside it
(``records.db.lock``, ``flock``) before each transaction, so one waits exactly as long as the other's
commit takes: SQLite's own busy handler, met otherwise, sleeps 1, 2, 5 … 100 ms between tries, which
under load put a p99 of 150 ms on two workers sharing a file. The wait is bounded by the busy timeout
(then the commit fails: the download is refused). Without ``fcntl`` (Windows) SQLite's handler is all.

Caveat: triggers refuse UPDATE and DELETE on ``records`` so that mistakes fail loudly, but
anyone who can write the file can drop them. The hash chain (``verify``) is what shows tampering.
A reader that iterates for a long time keeps WAL from being checkpointed past its snapshot. A database file,
WAL or ``-shm`` removed or replaced while the store has it open fails every later commit (SQLite would go on
writing into the removed file, whose records vanish with the process, or by a wal-index the next process to open
the store no longer shares, which corrupts the database): restart the gate.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self

from exportgate.errors import RecordStoreError
from exportgate.records.chain import Record, canonical_text, make_record
from exportgate.records.checkpoint import BACKSTOP_PAGES, Checkpointer, WalPages
from exportgate.records.store import CorruptRecordError, StoreOpenError

try:
    import fcntl
except ImportError:  # Windows: SQLite's busy handler alone
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SYNCHRONOUS_MODES = ("FULL", "EXTRA", "NORMAL")
# 0.25 ms: behind nginx with 32 connections the gate answered about 25 % more downloads than with none, on less
# CPU each; 0.1 to 0.4 ms measured alike, 0.75 ms less (bench/RESULTS.md). Near one fsync on the benchmark machine.
DEFAULT_COMMIT_DELAY = 0.00025

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS records (
        chain     TEXT NOT NULL,
        seq       INTEGER NOT NULL,
        kind      TEXT NOT NULL,
        id        TEXT NOT NULL,
        at        TEXT NOT NULL,
        body      TEXT NOT NULL,   -- canonical JSON, exactly the text that was hashed
        prev_hash TEXT NOT NULL,
        hash      TEXT NOT NULL,
        PRIMARY KEY (chain, seq)
    )""",
    "CREATE INDEX IF NOT EXISTS records_by_id ON records (id)",
    # (kind, chain, seq) rather than (kind): iter_records(kind=…) is then ordered by the index.
    # Partial: decisions are nearly every row and are read by chain or id, never by kind alone; leaving
    # them out of this index saves a B-tree insert per decision. Queries name the kind as a literal so
    # the planner can use it (a bound parameter cannot prove `kind <> 'decision'`).
    "CREATE INDEX IF NOT EXISTS records_by_kind ON records (kind, chain, seq) WHERE kind <> 'decision'",
    # One row, rewritten by the readiness probe: a commit of its own, never a record (check_writable).
    "CREATE TABLE IF NOT EXISTS readiness (id INTEGER PRIMARY KEY CHECK (id = 1), probed_at TEXT NOT NULL, room BLOB)",
    """CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
       BEGIN SELECT RAISE(ABORT, 'records are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
       BEGIN SELECT RAISE(ABORT, 'records are append-only'); END""",
)
# Bytes the readiness probe commits: about a transaction of 50 decision records under load.
_PROBE_ROOM = 64 * 1024
_COLUMNS = "chain, seq, kind, id, at, body, prev_hash, hash"
_KIND_LITERAL = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_FETCH = 512
# Rows per INSERT statement. A batch of up to this many rows is ONE statement in autocommit mode
# (atomic and durable on its own): sqlite3 drops the GIL once per statement step, and under
# load every re-acquisition waits behind the caller threads, so executemany()'s step per row
# made commits several times slower. Bigger batches run as several such statements in one
# BEGIN IMMEDIATE … COMMIT. At most this many distinct statements are prepared and cached.
_ROWS_PER_STATEMENT = 128
_INSERTS = [""] + [
    f"INSERT INTO records ({_COLUMNS}) VALUES " + ",".join(["(?,?,?,?,?,?,?,?)"] * n)
    for n in range(1, _ROWS_PER_STATEMENT + 1)
]


class SQLiteStore:
    """A :class:`~exportgate.records.store.Store` in one SQLite file (``path=None``: in memory)."""

    def __init__(
        self,
        path: str | None,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
        commit_delay: float = DEFAULT_COMMIT_DELAY,
    ) -> None:
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, not {synchronous!r}")
        self._memory = path is None
        self.path = None if path is None else os.path.abspath(path)
        self.where = self.path or ":memory:"
        self._synchronous = synchronous.upper()
        self._busy_timeout_ms = busy_timeout_ms
        # Read by the recorder: how long a transaction may wait for more records under load (recorder.py).
        self.commit_delay = commit_delay
        self._write_lock = threading.RLock()
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        self._lock_fd: int | None = None
        if self.path is not None:
            self._prepare_path(self.path)
        try:
            self._writer = self._connect(writer=True)
        except sqlite3.Error as exc:
            raise StoreOpenError(self.where, _reason(exc)) from None
        try:
            self._set_up_schema()
        except StoreOpenError:
            self._writer.close()
            raise
        except sqlite3.Error as exc:
            self._writer.close()
            raise StoreOpenError(self.where, _reason(exc)) from None
        if self.path is not None and fcntl is not None:
            self._lock_fd = self._open_lock_file(os.path.realpath(self.path) + ".lock")
        # SQLite keeps the WAL beside the file a symbolic link points to.
        self._wal_path = None if self.path is None else os.path.realpath(self.path) + "-wal"
        self._identity = self._file_identity()
        if self._identity is not None and None in self._identity[1:]:
            self._writer.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            raise StoreOpenError(self.where, f"no write-ahead log and wal-index ({self._wal_path}, -shm) after "
                                             "opening it")
        self._checkpointer: Checkpointer | None = None
        self._wal_pages: WalPages | None = None
        self._finalizer: Any = None
        if self.path is not None:
            # Checkpoints beside the commits, not inside them (records/checkpoint.py); SQLite's own only as a backstop.
            self._writer.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")
            try:
                self._wal_pages = WalPages(self.path)
            except OSError as exc:
                log.warning("%s: cannot read the WAL's page count (%s); SQLite checkpoints inside commits from %d "
                            "pages", self.where, exc.strerror or exc, BACKSTOP_PAGES)
            else:
                self._checkpointer = _checkpointer_of(self)
                self._finalizer = weakref.finalize(self, _stop_checkpoints, self._checkpointer, self._wal_pages)

    # -- opening ---------------------------------------------------------------------------

    def _open_lock_file(self, path: str) -> int | None:
        """The writers' lock file beside the database, owned like the database (or ``None``: SQLite alone)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            # Correct without it (SQLite's own locking), only slower under contention: never a reason not to run.
            log.warning("%s: cannot open the writers' lock file %s (%s); SQLite's busy handler alone orders "
                        "the writers", self.where, path, exc.strerror or exc)
            return None
        try:
            # Created by root (an `exportgate audit` as root, say), it must still open for the service's user,
            # as SQLite's own -wal and -shm files do: give it the database's owner.
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                st = os.stat(os.path.realpath(self.path or path))
                os.fchown(fd, st.st_uid, st.st_gid)
        except OSError:
            pass
        return fd

    @staticmethod
    def _prepare_path(path: str) -> None:
        if os.path.isdir(path):
            raise StoreOpenError(path, "this is a directory; give a file name inside it")
        parent = os.path.dirname(path)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise StoreOpenError(
                path, f"cannot create directory {parent}: {exc.strerror or exc}"
            ) from None
        if not os.path.isdir(parent):
            raise StoreOpenError(path, f"{parent} is not a directory")

    def _connect(self, *, writer: bool) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; append() says BEGIN/COMMIT itself.
        conn = sqlite3.connect(
            ":memory:" if self.path is None else self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=self._busy_timeout_ms / 1000,
            cached_statements=_ROWS_PER_STATEMENT + 32 if writer else 32,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            if writer:
                if self.path is not None:
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    if str(mode).lower() != "wal":
                        raise StoreOpenError(
                            self.where, f"cannot switch to WAL (journal_mode is {mode})"
                        )
                conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            else:
                conn.execute("PRAGMA query_only = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _set_up_schema(self) -> None:
        conn = self._writer
        # BEGIN IMMEDIATE takes the write lock: two processes opening a new file do not race.
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            rows = conn.execute("SELECT version FROM schema_version").fetchall()
            if not rows:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif len(rows) > 1 or rows[0][0] != SCHEMA_VERSION:
                versions = ", ".join(str(r[0]) for r in rows)
                raise StoreOpenError(
                    self.where,
                    f"schema version {versions}, this exportgate reads version {SCHEMA_VERSION}",
                )
            else:
                # An existing database opens without writing anything; prove now that it can
                # be written (read-only file or mount), not at the first download.
                conn.execute("UPDATE schema_version SET version = version")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- writing ---------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Commit a write as a record would be, keeping no record; RecordStoreError if the store cannot.

        For readiness checks after a failed commit: proves the store would accept the next record now. A record is
        inserted and rolled back (the same statement, triggers and constraints as a real one), then the probe's own
        row in ``readiness`` is rewritten and committed, which needs what a transaction of records needs: room in
        the WAL for about as many pages (:data:`_PROBE_ROOM`) and a sync. So a full disk fails it, where a
        rolled-back insert writes nothing and passes; a disk with a little room left may still pass it while a
        larger transaction fails.
        """
        with self._writing("not writable") as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("SAVEPOINT probe")
                conn.execute(_INSERTS[1], ("exportgate:readiness-probe", 0, "probe", "probe",
                                           "2000-01-01T00:00:00.000000Z", "{}", "", ""))
                conn.execute("ROLLBACK TO probe")
                conn.execute("RELEASE probe")
                conn.execute("INSERT INTO readiness (id, probed_at, room) VALUES (1, ?, zeroblob(?)) "
                             "ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at, room = excluded.room",
                             (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), _PROBE_ROOM))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise RecordStoreError(f"{self.where}: not writable: {_reason(exc)}") from exc
            finally:
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the connection is in trouble already; the probe's error is the story

    def append(self, records: Sequence[Record]) -> None:
        params: list[Any] = []
        extend = params.extend
        for r in records:
            extend(
                (
                    r.chain,
                    r.seq,
                    r.kind,
                    r.id,
                    r.at,
                    r.body_json or canonical_text(r.body),
                    r.prev_hash,
                    r.hash,
                )
            )
        count = len(records)
        if not count:
            return
        with self._writing(f"commit of {count} record(s) failed") as conn:
            try:
                if count <= _ROWS_PER_STATEMENT:
                    stored = conn.execute(_INSERTS[count], params).rowcount
                else:
                    conn.execute("BEGIN IMMEDIATE")
                    step = _ROWS_PER_STATEMENT * 8
                    stored = 0
                    for start in range(0, len(params), step):
                        chunk = params[start : start + step]
                        stored += conn.execute(_INSERTS[len(chunk) // 8], chunk).rowcount
                    if stored == count:
                        conn.execute("COMMIT")
                if stored != count:
                    # A trigger put in the file by someone else can drop rows silently (RAISE(IGNORE)): a commit
                    # that did not store every record is no commit (the recorder re-reads the chain's head).
                    raise sqlite3.DatabaseError(f"only {stored} of {count} rows were stored: a trigger or rule "
                                                "in the database skipped the others")
            except Exception as exc:  # any failure: nothing is stored, and the caller is told
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the connection is in trouble already; the original error is the story
                raise RecordStoreError(
                    f"{self.where}: commit of {count} record(s) failed: {_reason(exc)}"
                ) from exc
            if self._checkpointer is not None and self._wal_pages is not None:
                self._checkpointer.committed(self._wal_pages())

    @contextmanager
    def _writing(self, failure: str) -> Iterator[sqlite3.Connection]:
        """The writer connection, for this thread (the write lock) and this process (the writers' turn) alone;
        ``failure`` says what did not happen if the turn never comes."""
        with self._write_lock:
            self._check_open()
            try:
                self._check_file()
                self._take_turn()
            except RecordStoreError as exc:
                raise RecordStoreError(f"{self.where}: {failure}: {exc}") from exc
            try:
                yield self._writer
            finally:
                self._end_turn()

    def _file_identity(self) -> tuple[tuple[int, int] | None, ...] | None:
        """Device and inode of the database file, of its WAL and of its wal-index (``-shm``) (``None``: in memory;
        a ``None`` inside: no such file now). Both exist from the store's opening to its closing (SQLite removes
        them only when the last connection closes). A new ``-shm`` under the open store would be a second
        wal-index: the next process to open the store writes the WAL by it, and the two writers corrupt it."""
        if self.path is None:
            return None
        wal = self._wal_path or ""
        return (_identity(self.path), _identity(wal), _identity(wal[:-len("-wal")] + "-shm" if wal else ""))

    def _check_file(self) -> None:
        """A database file or WAL removed or replaced under the open store: what it commits would go to a file
        nobody can read any more, and vanish when the gate stops (or with a crash, for the WAL). Refuse (the
        download is refused) until a restart."""
        if self.path is not None and self._file_identity() != self._identity:
            raise RecordStoreError("the database file, its WAL or its -shm was removed or replaced while the gate "
                                   "had it open; restart the gate (downloads are refused until then)")

    def _take_turn(self) -> None:
        """Wait for the other writers of this file (module docstring), at most the busy timeout."""
        fd = self._lock_fd
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        # Another process is committing: poll in short steps (a blocking flock could not time out).
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        pause = 0.00005
        while True:
            time.sleep(pause)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RecordStoreError(
                        f"another writer held the store for over {self._busy_timeout_ms} ms") from None
                pause = min(pause * 2, 0.001)

    def _end_turn(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # -- reading ---------------------------------------------------------------------------

    def iter_records(
        self, kind: str | None = None, chain: str | None = None, *, after_seq: Any = 0
    ) -> Iterator[Record]:
        where = ["1"] if after_seq is None else ["seq > ?"]
        params: list[Any] = [] if after_seq is None else [after_seq]
        if kind is not None:
            if kind != "decision" and _KIND_LITERAL.fullmatch(kind):
                where.append(f"kind = '{kind}' AND kind <> 'decision'")
            else:
                where.append("kind = ?")
                params.append(kind)
        if chain is not None:
            where.append("chain = ?")
            params.append(chain)
        sql = f"SELECT {_COLUMNS} FROM records WHERE {' AND '.join(where)} ORDER BY chain, seq"
        if self._memory:
            # One connection: read everything under the lock, so the writer is never stuck
            # behind a half-consumed iterator.
            for row in self._query_all(sql, params):
                yield _to_record(row)
            return
        with self._reader() as conn:
            try:
                cursor = conn.execute(sql, params)
            except sqlite3.Error as exc:
                raise RecordStoreError(f"{self.where}: query failed: {_reason(exc)}") from exc
            try:
                while True:
                    try:
                        batch = cursor.fetchmany(_FETCH)
                    except sqlite3.Error as exc:
                        raise RecordStoreError(
                            f"{self.where}: query failed: {_reason(exc)}"
                        ) from exc
                    if not batch:
                        break
                    for row in batch:
                        yield _to_record(row)
            finally:
                cursor.close()

    def get(self, id: str) -> Record | None:
        row = self._query_one(
            f"SELECT {_COLUMNS} FROM records WHERE id = ? AND seq > 0 ORDER BY chain, seq LIMIT 1", (id,)
        )
        return None if row is None else _to_record(row)

    def last(self, chain: str) -> Record | None:
        row = self._query_one(
            f"SELECT {_COLUMNS} FROM records WHERE chain = ? ORDER BY seq DESC LIMIT 1", (chain,)
        )
        return None if row is None else _to_record(row)

    def chains(self) -> list[str]:
        return [
            r[0] for r in self._query_all("SELECT DISTINCT chain FROM records ORDER BY chain", ())
        ]

    def count(self, kind: str | None = None) -> int:
        if kind is None:
            row = self._query_one("SELECT COUNT(*) FROM records", ())
        else:
            row = self._query_one("SELECT COUNT(*) FROM records WHERE kind = ?", (kind,))
        return int(row[0]) if row else 0

    def _query_one(self, sql: str, params: Sequence[Any]) -> Any:
        rows = self._query_all(sql, params)
        return rows[0] if rows else None

    def _query_all(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            if self._memory:
                with self._write_lock:
                    self._check_open()
                    return self._writer.execute(sql, params).fetchall()
            with self._reader() as conn:
                return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise RecordStoreError(f"{self.where}: query failed: {_reason(exc)}") from exc

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        with self._pool_lock:
            self._check_open()
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            try:
                conn = self._connect(writer=False)
            except sqlite3.Error as exc:
                raise RecordStoreError(
                    f"{self.where}: cannot open a reader: {_reason(exc)}"
                ) from exc
        try:
            yield conn
        finally:
            with self._pool_lock:
                if self._closed:
                    conn.close()
                else:
                    self._idle.append(conn)

    # -- lifecycle -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RecordStoreError(f"{self.where}: the record store is closed")

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()  # before the write lock: its last pass may be waiting for it
        with self._write_lock, self._pool_lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
            for conn in idle:
                conn.close()
            self._writer.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            if self._finalizer is not None:
                self._finalizer()  # closes the WAL page count's file (once: a finalizer runs at most once)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.where!r}, synchronous={self._synchronous})"


def _to_record(row: tuple[Any, ...]) -> Record:
    chain, seq, kind, id, at, body_json, prev_hash, digest = row
    try:
        if not (
            type(seq) is int
            and all(type(v) is str for v in (chain, kind, id, at, prev_hash, digest))
        ):
            raise ValueError("a column has the wrong type")
        if type(body_json) is not str:
            raise ValueError(f"body is stored as {type(body_json).__name__}, not text")
        body = json.loads(body_json)
        if type(body) is not dict:
            raise ValueError(f"body is a JSON {type(body).__name__}, not an object")
    except ValueError as exc:
        raise CorruptRecordError(
            chain=str(chain),
            seq=seq if type(seq) is int else -1,
            id=str(id),
            prev_hash=str(prev_hash),
            hash=str(digest),
            reason=str(exc),
            position=seq,
        ) from None
    return make_record(chain, seq, kind, id, at, body, prev_hash, digest, body_json)


def _checkpointer_of(store: SQLiteStore) -> Checkpointer:
    """The store's checkpoint thread. It holds the store weakly: a store dropped without close() is still freed (and
    the thread stopped, :func:`_stop_checkpoints`)."""
    ref = weakref.ref(store)

    def alive() -> SQLiteStore:
        found = ref()
        if found is None:
            raise RecordStoreError("the record store is gone")
        return found

    # A writer's connection: a checkpoint syncs the database file as its connection's mode says, the writer's.
    return Checkpointer(lambda: alive()._connect(writer=True),
                        # The second pass runs in a write turn of its own: between two commits, of any process.
                        lambda: alive()._writing("WAL not checkpointed"), store.where)


def _stop_checkpoints(checkpointer: Checkpointer, wal_pages: WalPages) -> None:
    """A store freed without close(): its thread stops by itself (not waited for: this may run in the collector)."""
    checkpointer.stop()
    try:
        wal_pages.close()
    except OSError:
        pass


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, StoreOpenError):
        return exc.reason
    return text
