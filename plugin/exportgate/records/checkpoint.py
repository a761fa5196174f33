"""Checkpoints the SQLite store's write-ahead log on a thread of its own, beside the commits instead of inside one.

Why: SQLite checkpoints by itself inside the commit that takes the WAL past 1,000 pages. That commit copies every
page of the WAL into the database file and syncs it before it returns, and every download waiting for that commit
waits as well. Behind nginx, those checkpoints set the gate's p99: a median of 12.2 ms over 16 runs, 7.4 ms with
this thread in runs alternating with those, for 3 % less throughput, within the noise (bench/RESULTS.md). Here
the copy runs on another connection while the gate goes on committing (a ``PASSIVE`` checkpoint takes no lock a
writer needs). Then, between two commits (the store's write turn), a second ``PASSIVE`` pass copies the few pages
committed meanwhile, so the WAL is wholly in the database file and the next commit starts the WAL from its
beginning. Commits wait only for that second, short pass (a median of 1.1 ms on the benchmark machine, against
several for a whole checkpoint).

When: once the WAL holds :data:`TARGET_PAGES` pages, SQLite's own default. The count is SQLite's own (``mxFrame``
of the wal-index header, the ``-shm`` file, whose layout is SQLite's documented file format): the store reads it
after each commit, one ``pread``. It counts every process's pages, so several processes sharing a file start
checkpoints at the same size as one, and a checkpoint that finds another one running leaves it to that one.

Durability is unchanged: a checkpoint syncs the database file (the store's ``synchronous`` mode) before the WAL can
start again, as SQLite's own does. If this thread fails, or the count cannot be read, SQLite still checkpoints
inside a commit once the WAL reaches :data:`BACKSTOP_PAGES`; failures are logged (the first of a run, and the
recovery). A reader holding an old snapshot keeps part of the WAL from being copied: the thread then tries again
only after the WAL has grown by another half of :data:`TARGET_PAGES`, so it never holds up commits pass after pass.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

log = logging.getLogger(__name__)

TARGET_PAGES = 1000
"""WAL pages between checkpoints: SQLite's ``wal_autocheckpoint`` default."""
BACKSTOP_PAGES = 4 * TARGET_PAGES
"""The writer's own ``wal_autocheckpoint``: SQLite checkpoints inside a commit only if this thread fell behind."""
_MX_FRAME = struct.Struct("=I")  # WalIndexHdr.mxFrame: native byte order, at offset 16 of the -shm file
_MX_FRAME_OFFSET = 16


class WalPages:
    """The number of pages in a database's WAL now, read from its wal-index (``-shm``) without a lock (a count,
    not a snapshot: it may be one commit behind)."""

    def __init__(self, database: str) -> None:
        self._fd = os.open(os.path.realpath(database) + "-shm", os.O_RDONLY | os.O_CLOEXEC)

    def __call__(self) -> int | None:
        """The count, or ``None`` when the file cannot be read (the checkpoints are then SQLite's own)."""
        try:
            raw = os.pread(self._fd, _MX_FRAME.size, _MX_FRAME_OFFSET)
        except OSError:
            return None
        return _MX_FRAME.unpack(raw)[0] if len(raw) == _MX_FRAME.size else None

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


class Checkpointer:
    """The checkpoint thread of one :class:`~exportgate.records.sqlite.SQLiteStore` (a file in WAL mode).

    ``connect`` opens the thread's own connection; ``between_commits`` is a context manager during which the
    store commits nothing (its write lock and the writers' turn) and which raises once the store is closed.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection],
                 between_commits: Callable[[], AbstractContextManager[object]], where: str) -> None:
        self._connect = connect
        self._between_commits = between_commits
        self._where = where
        self._wanted = threading.Event()
        self._stopping = False
        self._conn: sqlite3.Connection | None = None
        self._retry_at = TARGET_PAGES  # WAL pages from which the next checkpoint is asked for
        self._failing = False
        self.checkpoints = 0
        """Checkpoints that left the WAL wholly copied (the next commit starts it again)."""
        self.passes = 0
        """Checkpoints asked for and run (complete or not)."""
        self.failures = 0
        """Checkpoints that raised."""
        self._thread = threading.Thread(target=self._run, name=f"exportgate-checkpoint {where}", daemon=True)
        self._thread.start()

    def committed(self, wal_pages: int | None) -> None:
        """A commit left ``wal_pages`` pages in the WAL (called by the store's writer, under its write lock)."""
        if wal_pages is None:
            return
        if wal_pages < TARGET_PAGES // 2:
            self._retry_at = TARGET_PAGES  # the WAL started again, after this process's checkpoint or another's
        elif wal_pages >= self._retry_at and not self._wanted.is_set():
            self._retry_at = wal_pages + TARGET_PAGES // 2  # asked once; again only if it grows that much more
            self._wanted.set()

    def stop(self) -> None:
        """Ask the thread to stop, interrupting a checkpoint under way (it can be taken up again; nothing is lost)."""
        self._stopping = True
        self._wanted.set()
        conn = self._conn
        if conn is not None:
            conn.interrupt()

    def close(self) -> None:
        """:meth:`stop`, and wait for the thread (call without holding the store's write lock: its last pass may
        be waiting for it)."""
        self.stop()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        try:
            conn = self._conn = self._connect()
        except Exception as exc:  # noqa: BLE001 - without the thread, SQLite's own checkpoints still run
            log.warning("%s: no checkpoint thread (%s); SQLite checkpoints inside commits from %d WAL pages",
                        self._where, exc, BACKSTOP_PAGES)
            return
        try:
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                self.passes += 1
                try:
                    self._checkpoint(conn)
                except Exception as exc:  # noqa: BLE001 - whatever failed, commits go on; the next pass tries again
                    if self._stopping:
                        return  # interrupted by close()
                    self.failures += 1
                    if not self._failing:
                        self._failing = True
                        log.warning("%s: WAL checkpoint failed: %s", self._where, exc)
                else:
                    if self._failing:
                        self._failing = False
                        log.warning("%s: WAL checkpoints work again", self._where)
        finally:
            self._conn = None
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        # (busy, pages in the WAL, pages copied); busy: another connection is checkpointing, it will finish.
        busy, pages, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if busy or pages <= 0:
            return
        with self._between_commits():
            busy, pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if not busy and copied == pages:
            self.checkpoints += 1
            self._retry_at = TARGET_PAGES  # the next commit starts the WAL again
        # Otherwise a reader's snapshot still needs part of the WAL: asked again once it has grown (committed()).


__all__ = ["BACKSTOP_PAGES", "TARGET_PAGES", "Checkpointer", "WalPages"]
