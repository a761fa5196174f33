"""Checkpoints the SQLite store's write-ahead log on a thread of its own, beside the commits instead of inside one.

Why: SQLite checkpoints by itself inside the commit that takes the WAL past 1,000 pages. That commit copies every
page of the WAL into the database file and syncs it before it returns, and every download waiting for that commit
waits as well. Behind nginx, those checkpoints set the gate's p99: a median of 13.4 ms over five runs, 7.3 ms with
this thread in the same runs, at the same throughput (bench/RESULTS.md). Here the copy runs on another connection while the gate goes on committing (a ``PASSIVE``
checkpoint takes no lock a writer needs). Then, between two commits of this process (its write turn), a second
``PASSIVE`` checkpoint copies the few pages committed meanwhile, so the WAL is wholly in the database file and the
next commit starts the WAL from its beginning: the file stays about SQLite's own size. Commits wait only for that
second, short pass (about a millisecond on the benchmark machine, against several for a whole checkpoint).

When: after about :data:`TARGET_PAGES` pages of WAL, SQLite's own default. The commits count the bytes of record
text they write; each checkpoint learns how many pages that text made (rows, indexes, pages rewritten by several
commits) and sets the next trigger from it. Several processes sharing a file each run one: the WAL pages counted
include the others', so each asks sooner, and a checkpoint that finds another one running leaves it to that one.

Durability is unchanged: a checkpoint syncs the database file (the store's ``synchronous`` mode) before the WAL can
start again, as SQLite's own does. If this thread fails, SQLite still checkpoints inside a commit once the WAL
reaches :data:`BACKSTOP_PAGES`; failures are logged (the first of a run, and the recovery).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

log = logging.getLogger(__name__)

TARGET_PAGES = 1000
"""WAL pages between checkpoints: SQLite's ``wal_autocheckpoint`` default."""
BACKSTOP_PAGES = 4 * TARGET_PAGES
"""The writer's own ``wal_autocheckpoint``: SQLite checkpoints inside a commit only if this thread fell behind."""
FIRST_TRIGGER = 512 * 1024
"""Bytes of record text before the first checkpoint (about 1,000 pages for the gate's decision records)."""
_LEAST_TRIGGER = 16 * 1024
_MOST_TRIGGER = 64 * 1024 * 1024


def next_trigger(text_bytes: int, wal_pages: int) -> int:
    """Bytes of record text to let through before the next checkpoint, from the last one: ``text_bytes`` written
    made ``wal_pages`` pages of WAL (bounded, so one odd pass cannot stall checkpoints or run them continuously)."""
    if text_bytes <= 0 or wal_pages <= 0:
        return FIRST_TRIGGER
    return max(_LEAST_TRIGGER, min(_MOST_TRIGGER, text_bytes * TARGET_PAGES // wal_pages))


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
        self._written = 0  # bytes of record text since the last checkpoint was asked for
        self._asked = 0  # the bytes that made the WAL of the checkpoint asked for
        self._trigger = FIRST_TRIGGER
        self._failing = False
        self.checkpoints = 0
        """Checkpoints that left the WAL wholly copied (the next commit starts it again)."""
        self.failures = 0
        """Checkpoints that raised."""
        self._thread = threading.Thread(target=self._run, name=f"exportgate-checkpoint {where}", daemon=True)
        self._thread.start()

    def written(self, text_bytes: int) -> None:
        """A commit wrote ``text_bytes`` of record text (called by the store's writer, under its write lock)."""
        self._written += text_bytes
        if self._written >= self._trigger and not self._wanted.is_set():
            self._asked, self._written = self._written, 0
            self._wanted.set()

    def close(self) -> None:
        """Stop the thread and wait for it (call without holding the store's write lock: its last pass takes it)."""
        self._stopping = True
        self._wanted.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            log.warning("%s: no checkpoint thread (%s); SQLite checkpoints inside commits from %d WAL pages",
                        self._where, exc, BACKSTOP_PAGES)
            return
        try:
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                try:
                    self._checkpoint(conn)
                except Exception as exc:  # noqa: BLE001 - whatever failed, commits go on; the next pass tries again
                    self.failures += 1
                    if not self._failing:
                        self._failing = True
                        log.warning("%s: WAL checkpoint failed: %s", self._where, exc)
                else:
                    if self._failing:
                        self._failing = False
                        log.warning("%s: WAL checkpoints work again", self._where)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        # (busy, pages in the WAL, pages copied); busy: another connection is checkpointing, it will finish.
        busy, pages, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if busy or pages <= 0:
            return
        self._trigger = next_trigger(self._asked, pages)
        with self._between_commits():
            busy, pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if not busy and copied == pages:
            self.checkpoints += 1
        # Otherwise a reader's snapshot still needs part of the WAL: the next pass copies it.


__all__ = ["BACKSTOP_PAGES", "TARGET_PAGES", "Checkpointer", "next_trigger"]
