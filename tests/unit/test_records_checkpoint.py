"""WAL checkpoints beside the commits (records/checkpoint.py): they happen, they keep the WAL at SQLite's own size,
they never lose a record, they give way to readers, and a checkpoint thread that fails leaves the store working."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from exportgate.records import Chain, Record, SQLiteStore
from exportgate.records.checkpoint import BACKSTOP_PAGES, TARGET_PAGES, Checkpointer, WalPages
from exportgate.records.verify import verify

AT = "2026-11-29T03:04:05.000006Z"
# About the size of a decision record's body (bench: 1.2 KiB), so a few hundred records ask for a checkpoint.
BODY = {"note": "x" * 1200}


def batches(chain: Chain, count: int, size: int = 15) -> Iterator[list[Record]]:
    """``count`` batches of ``size`` records, as the recorder commits them."""
    for _ in range(count):
        yield [chain.seal("decision", f"d-{chain.next_seq}", AT, BODY) for _ in range(size)]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def wal_pages(path: Path) -> int:
    """Pages in the WAL now (a PASSIVE checkpoint reports them; it copies what it can, which changes nothing)."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
    finally:
        conn.close()


def checkpointer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("exportgate-checkpoint")]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "records.db"))
    yield s
    s.close()


def test_the_wal_page_count_is_sqlites_own(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("CREATE TABLE t (x TEXT)")
    count = WalPages(str(path))
    try:
        for _ in range(50):
            writer.execute("INSERT INTO t VALUES (?)", ("x" * 3000,))
        before = count()
        assert before is not None and before > 50
        assert writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1] == before  # (busy, pages, copied)
        writer.execute("INSERT INTO t VALUES ('y')")  # the WAL starts again
        assert 0 < (count() or 0) < 5
    finally:
        count.close()
        count.close()  # twice is fine
        writer.close()
    assert count() is None  # closed: no count, so no checkpoint is asked for


def refuse() -> sqlite3.Connection:
    raise sqlite3.OperationalError("unable to open database file")


@contextmanager
def never() -> Iterator[None]:
    raise AssertionError("no checkpoint without a connection")
    yield


def test_a_checkpoint_is_asked_for_at_the_target_then_only_as_the_wal_grows() -> None:
    checkpointer = Checkpointer(refuse, never, "test")
    checkpointer.close()
    asked = []
    for pages in (10, TARGET_PAGES - 1, TARGET_PAGES, TARGET_PAGES + 10, TARGET_PAGES + 499, TARGET_PAGES + 500,
                  None, 3, TARGET_PAGES):
        checkpointer._wanted.clear()
        checkpointer.committed(pages)
        asked.append(checkpointer._wanted.is_set())
    # At the target; not again until the WAL grew by half of it (a reader holds it); after it started again
    # (3 pages), at the target again.
    assert asked == [False, False, True, False, False, True, False, False, True]


def test_commits_leave_the_checkpoint_to_the_thread_which_keeps_the_wal_small(store: SQLiteStore) -> None:
    assert store._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == BACKSTOP_PAGES
    checkpointer = store._checkpointer
    assert checkpointer is not None
    chain = Chain("c")
    for batch in batches(chain, 400):  # 6,000 records, about 7 MiB of text: several checkpoints
        store.append(batch)
    wait_for(lambda: checkpointer.checkpoints >= 2)
    # The WAL was wholly copied by a checkpoint, so a commit starts it again: it stays about SQLite's own size, not
    # the thousands of pages SQLite's backstop would allow.
    assert wal_pages(Path(store.where)) < 2 * TARGET_PAGES
    assert checkpointer.failures == 0
    assert store.count() == 6000
    assert verify(store).ok


def test_no_record_is_lost_across_checkpoints_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    chain = Chain("c")
    with SQLiteStore(str(path)) as store:
        for batch in batches(chain, 300, size=10):
            store.append(batch)
    with SQLiteStore(str(path)) as reopened:
        assert reopened.count() == 3000
        assert [r.seq for r in reopened.iter_records()] == list(range(1, 3001))
        assert verify(reopened).ok


def test_a_reader_holding_its_snapshot_delays_checkpoints_without_stalling_commits(store: SQLiteStore) -> None:
    checkpointer = store._checkpointer
    assert checkpointer is not None
    chain = Chain("c")
    store.append(next(batches(chain, 1)))
    reader = sqlite3.connect(store.where, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 15  # holds this snapshot
    started = time.monotonic()
    for batch in batches(chain, 200):
        store.append(batch)
    assert time.monotonic() - started < 30  # commits went on (a checkpoint does not wait for the reader)
    time.sleep(0.3)
    assert checkpointer.checkpoints == 0  # the reader's snapshot still needs the WAL
    assert checkpointer.failures == 0
    # Tried again only as the WAL grew by half the target each time, not after every commit (each pass holds the
    # writers up for a moment): 200 commits of about 15 pages.
    assert 1 <= checkpointer.passes <= 8
    reader.execute("COMMIT")
    reader.close()
    for batch in batches(chain, 200):
        store.append(batch)
    wait_for(lambda: checkpointer.checkpoints >= 1)
    assert store.count() == 15 * 401


def test_two_stores_on_one_file_checkpoint_it_together(tmp_path: Path) -> None:
    path = str(tmp_path / "records.db")
    with SQLiteStore(path) as first, SQLiteStore(path) as second:
        a, b = Chain("a"), Chain("b")

        def write(store: SQLiteStore, chain: Chain) -> None:
            for batch in batches(chain, 200):
                store.append(batch)

        threads = [threading.Thread(target=write, args=(first, a)), threading.Thread(target=write, args=(second, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        c1, c2 = first._checkpointer, second._checkpointer
        assert c1 is not None and c2 is not None
        wait_for(lambda: c1.checkpoints + c2.checkpoints >= 1)
        assert c1.failures == c2.failures == 0
        assert first.count() == 6000
        assert verify(first).ok


def test_closing_the_store_stops_its_checkpoint_thread(tmp_path: Path) -> None:
    before = len(checkpointer_threads())
    store = SQLiteStore(str(tmp_path / "records.db"))
    assert len(checkpointer_threads()) == before + 1
    for batch in batches(Chain("c"), 100):
        store.append(batch)
    store.close()
    assert len(checkpointer_threads()) == before
    store.close()  # twice is fine


def test_a_store_in_memory_has_no_checkpoint_thread() -> None:
    before = len(checkpointer_threads())
    with SQLiteStore(None) as store:
        assert store._checkpointer is None
        assert len(checkpointer_threads()) == before


def test_a_checkpoint_thread_that_cannot_connect_leaves_commits_to_sqlites_backstop(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="exportgate.records.checkpoint"):
        checkpointer = Checkpointer(refuse, never, "records.db")
        checkpointer.committed(TARGET_PAGES)
        checkpointer.close()
    assert "no checkpoint thread (unable to open database file)" in caplog.text
    assert f"from {BACKSTOP_PAGES} WAL pages" in caplog.text


def test_failing_checkpoints_are_logged_once_then_their_recovery(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "wal.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("CREATE TABLE t (x TEXT)")
    failing = True
    passes: list[bool] = []

    @contextmanager
    def between_commits() -> Iterator[None]:
        passes.append(failing)
        if failing:
            raise sqlite3.OperationalError("disk I/O error")
        yield

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def commit_and_ask(pages: int) -> None:
        writer.execute("INSERT INTO t VALUES (?)", ("x" * 5000,))  # pages for the checkpoint to find
        checkpointer.committed(pages)  # as many as it takes to be asked for

    with caplog.at_level(logging.WARNING, logger="exportgate.records.checkpoint"):
        checkpointer = Checkpointer(connect, between_commits, "wal.db")
        try:
            for round_ in range(1, 4):
                commit_and_ask(round_ * TARGET_PAGES)
                wait_for(lambda n=round_: len(passes) == n)
            failing = False
            commit_and_ask(4 * TARGET_PAGES)
            wait_for(lambda: checkpointer.checkpoints == 1)
        finally:
            checkpointer.close()
            writer.close()
    assert checkpointer.failures == 3
    assert caplog.text.count("WAL checkpoint failed: disk I/O error") == 1
    assert "WAL checkpoints work again" in caplog.text


_WRITER = """
import random, sys, time
from exportgate.records import Chain, SQLiteStore
path, name, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
chain, rnd, body = Chain(name), random.Random(name), {"note": "x" * 1200}
with SQLiteStore(path) as store:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        store.append([chain.seal("decision", f"{name}-{chain.next_seq}", "2026-11-29T03:04:05.000006Z", body)
                      for _ in range(rnd.randint(1, 64))])
    print(chain.next_seq - 1, store._checkpointer.checkpoints, store._checkpointer.failures)
"""


def test_two_processes_keep_the_wal_at_sqlites_own_size(tmp_path: Path) -> None:
    """Two gate workers share one file, as `exportgate serve` runs by default. Each counts every process's WAL pages
    (SQLite's own count), so the WAL starts again at about the target whoever checkpoints; a per-process estimate
    let it grow to SQLite's backstop (4,000 pages) inside commits."""
    path = tmp_path / "records.db"
    SQLiteStore(str(path)).close()
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), name, "3"], stdout=subprocess.PIPE,
                                text=True) for name in ("a", "b")]
    most = 0
    count = None
    while any(w.poll() is None for w in writers):
        try:
            count = count or WalPages(str(path))
        except OSError:  # the writers have not opened it yet
            time.sleep(0.01)
            continue
        most = max(most, count() or 0)
        time.sleep(0.002)
    if count is not None:
        count.close()
    results = [w.communicate(timeout=30)[0].split() for w in writers]
    assert all(w.returncode == 0 for w in writers)
    written = sum(int(r[0]) for r in results)
    assert sum(int(r[1]) for r in results) >= 2 and all(r[2] == "0" for r in results), results
    # What it guards: the WAL never grows to SQLite's backstop, where the checkpoint runs inside a commit (the
    # per-process estimate did: 4,019 pages). How far above the target it goes depends on the machine (a pass waits
    # for the other process's commits): 1,300 to 2,000 pages on one 2-core machine, 1,850 to 2,800 on another.
    assert most < BACKSTOP_PAGES, most
    with SQLiteStore(str(path)) as store:
        assert store.count() == written
        assert verify(store).ok


def test_a_store_dropped_without_closing_is_freed_and_its_thread_stops(tmp_path: Path) -> None:
    import gc
    import weakref

    before = len(checkpointer_threads())
    store = SQLiteStore(str(tmp_path / "records.db"))
    store.append(next(batches(Chain("c"), 1)))
    gone = weakref.ref(store)
    del store
    # The thread holds the store for as long as it opens its own connection, at its start: freed once it has.
    wait_for(lambda: gc.collect() is not None and gone() is None)
    wait_for(lambda: len(checkpointer_threads()) == before)
