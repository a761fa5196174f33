"""The recorder (group commit, failure and recovery) and the JSON-lines sink."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from exportgate.errors import ConfigError, RecordStoreError
from exportgate.records import (
    InvalidRecord,
    JsonLinesSink,
    NotCommitted,
    Record,
    Recorder,
    SQLiteStore,
    canonical,
    verify,
)

AT = "2026-11-29T03:04:05.000006Z"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "records.db"), busy_timeout_ms=50)
    yield s
    s.close()


def decision(i: int) -> dict[str, object]:
    return {"action": "allow" if i % 3 else "block", "rule": f"r-{i}", "country": "DE"}


class ListSink:
    """Keeps what it is given, and what the store held at that moment."""

    def __init__(self, store: SQLiteStore | None = None) -> None:
        self.batches: list[list[Record]] = []
        self.stored_when_seen: list[bool] = []
        self.closed = False
        self._store = store

    def write(self, records: Sequence[Record]) -> None:
        self.batches.append(list(records))
        if self._store is not None:
            self.stored_when_seen.append(all(self._store.get(r.id) == r for r in records))

    def close(self) -> None:
        self.closed = True


class BrokenSink:
    def __init__(self) -> None:
        self.calls = 0

    def write(self, records: Sequence[Record]) -> None:
        self.calls += 1
        raise OSError("log shipper is gone")

    def close(self) -> None:
        raise OSError("still gone")


# -- committing ------------------------------------------------------------------------------


def test_record_returns_once_committed(store: SQLiteStore) -> None:
    with Recorder(store, instance="gate-1") as recorder:
        assert re.fullmatch(r"gate-1:[0-9a-f]{12}", recorder.chain_id)
        record = recorder.record("decision", "d-1", AT, decision(1))
        assert store.get("d-1") == record  # already durable: no wait, no flush
        assert (record.chain, record.seq, record.kind) == (recorder.chain_id, 1, "decision")
        stats = recorder.stats()
        assert (stats.committed, stats.batches, stats.failed, stats.healthy) == (1, 1, 0, True)


def test_concurrent_callers_share_commits_and_the_chain_stays_continuous(
    store: SQLiteStore,
) -> None:
    threads, each = 16, 150
    returned: list[Record] = []
    lock = threading.Lock()

    def caller(t: int) -> None:
        for i in range(each):
            r = recorder.record("decision", f"t{t}-{i}", AT, decision(i))
            with lock:
                returned.append(r)

    with Recorder(store, instance="gate-1") as recorder:
        workers = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        stats = recorder.stats()
    total = threads * each
    assert stats.committed == total == store.count()
    assert sorted(r.seq for r in returned) == list(range(1, total + 1))
    assert {r.id for r in returned} == {r.id for r in store.iter_records()}
    assert verify(store).ok
    # Group commit happened: fewer transactions than records.
    assert stats.batches < total and stats.mean_batch_size > 1


def test_record_many_is_contiguous_and_spans_batches(store: SQLiteStore) -> None:
    items = [("decision", f"d-{i}", AT, decision(i)) for i in range(10)]
    with Recorder(store, instance="import", max_batch=3) as recorder:
        recorder.record("decision", "first", AT, {})
        records = recorder.record_many(items)
        assert [r.seq for r in records] == list(range(2, 12))
        assert [r.id for r in records] == [f"d-{i}" for i in range(10)]
        assert recorder.stats().batches >= 4  # 10 items in batches of at most 3
    assert verify(store).ok


@pytest.mark.parametrize(
    ("args", "field"),
    [
        pytest.param(("decision", "d", "2026-11-29T03:04:05Z", {}), "at", id="bad time"),
        pytest.param(("decision", "", AT, {}), "id", id="empty id"),
        pytest.param(("decision", "d", AT, {"x": float("nan")}), "body", id="NaN in body"),
        pytest.param(("decision", "d", AT, ["not", "a", "dict"]), "body", id="body not a dict"),
    ],
)
def test_a_bad_record_fails_only_its_caller(store: SQLiteStore, args: tuple, field: str) -> None:
    with Recorder(store, instance="gate-1") as recorder:
        with pytest.raises(InvalidRecord) as info:
            recorder.record(*args)
        assert info.value.field == field
        with pytest.raises(InvalidRecord):
            recorder.record_many([("decision", "ok", AT, {}), args])  # checked before enqueueing
        assert recorder.record("decision", "after", AT, {}).seq == 1  # the chain did not move
        assert recorder.healthy


def test_closing_drains_and_then_refuses(store: SQLiteStore) -> None:
    sink = ListSink()
    recorder = Recorder(store, instance="gate-1", sinks=[sink])
    results: list[list[Record]] = []
    worker = threading.Thread(
        target=lambda: results.append(
            recorder.record_many([("decision", f"d-{i}", AT, {}) for i in range(500)])
        )
    )
    worker.start()
    worker.join()
    recorder.close()
    recorder.close()  # twice is fine
    assert sink.closed
    assert len(results[0]) == 500 == store.count()
    with pytest.raises(NotCommitted, match="closed") as info:
        recorder.record("decision", "late", AT, {})
    assert isinstance(info.value, RecordStoreError)


def test_each_recorder_writes_its_own_chain(store: SQLiteStore) -> None:
    with Recorder(store, instance="gate-1") as a, Recorder(store, instance="gate-1") as b:
        a.record("decision", "a-1", AT, {})
        b.record("decision", "b-1", AT, {})
        a.record("decision", "a-2", AT, {})
        assert a.chain_id != b.chain_id
    assert sorted(store.chains()) == sorted([a.chain_id, b.chain_id])
    assert [r.seq for r in store.iter_records(chain=a.chain_id)] == [1, 2]
    assert verify(store).ok


# -- failure and recovery --------------------------------------------------------------------


def test_a_failed_commit_fails_every_waiting_caller_and_the_recorder_recovers(
    store: SQLiteStore, tmp_path: Path
) -> None:
    with Recorder(store, instance="gate-1") as recorder:
        recorder.record("decision", "before", AT, {})
        # Another process holds the write lock: the store gives up after its busy timeout.
        blocker = sqlite3.connect(tmp_path / "records.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        outcomes: list[object] = []
        lock = threading.Lock()

        def caller(i: int) -> None:
            try:
                result: object = recorder.record("decision", f"during-{i}", AT, {})
            except RecordStoreError as exc:
                result = exc
            with lock:
                outcomes.append(result)

        workers = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert len(outcomes) == 8
        assert all(isinstance(o, NotCommitted) for o in outcomes), (
            outcomes
        )  # never a silent success
        assert "locked" in str(outcomes[0])
        assert not recorder.healthy and "locked" in (recorder.last_error or "")
        stats = recorder.stats()
        assert (stats.failed, stats.committed) == (8, 1) and stats.failed_batches >= 1

        blocker.execute("ROLLBACK")
        blocker.close()
        after = recorder.record("decision", "after", AT, {})
        assert after.seq == 2  # the chain was not advanced past what was never stored
        assert recorder.healthy
        assert recorder.last_error is not None  # kept for the logs
    assert [r.id for r in store.iter_records()] == ["before", "after"]
    assert verify(store).ok


class CommitsThenFails:
    """A store whose commit reaches the disk but reports failure once (an ambiguous commit)."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.fail_next = False

    def append(self, records: Sequence[Record]) -> None:
        self.inner.append(records)
        if self.fail_next:
            self.fail_next = False
            raise RecordStoreError("I/O error reported after commit")

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_after_an_ambiguous_commit_the_head_is_read_back_from_the_store(store: SQLiteStore) -> None:
    flaky = CommitsThenFails(store)
    with Recorder(flaky, instance="gate-1") as recorder:  # type: ignore[arg-type]
        recorder.record("decision", "one", AT, {})
        flaky.fail_next = True
        with pytest.raises(NotCommitted):
            recorder.record("decision", "two", AT, {})  # stored, but the caller was told no
        three = recorder.record("decision", "three", AT, {})
        assert three.seq == 3  # links after "two", which is in the store
    assert verify(store).ok


def test_record_many_reports_what_was_committed(store: SQLiteStore, tmp_path: Path) -> None:
    with Recorder(store, instance="import", max_batch=2) as recorder:
        blocker = sqlite3.connect(tmp_path / "records.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(NotCommitted) as info:
                recorder.record_many([("decision", f"d-{i}", AT, {}) for i in range(4)])
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert info.value.count == 4 and info.value.committed == ()
        assert len(recorder.record_many([("decision", f"e-{i}", AT, {}) for i in range(3)])) == 3


# -- sinks -----------------------------------------------------------------------------------


def test_sinks_see_committed_records_and_a_broken_sink_is_not_fatal(store: SQLiteStore) -> None:
    good, broken = ListSink(store), BrokenSink()
    with Recorder(store, instance="gate-1", sinks=[broken, good]) as recorder:
        first = recorder.record("decision", "d-1", AT, {})
        second = recorder.record("decision", "d-2", AT, {})
    assert [r for batch in good.batches for r in batch] == [first, second]
    assert all(good.stored_when_seen)  # after the commit, never before
    assert broken.calls == 2
    assert recorder.stats().sink_failures == 2
    assert recorder.healthy  # the store is the system of record


def test_a_sink_that_records_does_not_deadlock(store: SQLiteStore) -> None:
    class Reentrant:
        def write(self, records: Sequence[Record]) -> None:
            recorder.record("decision", "from-sink", AT, {})

        def close(self) -> None:
            pass

    with Recorder(store, instance="gate-1", sinks=[Reentrant()]) as recorder:
        recorder.record("decision", "d-1", AT, {})
        assert recorder.stats().sink_failures == 1
    assert store.count() == 1


def test_json_lines_sink_writes_one_canonical_object_per_record(
    store: SQLiteStore, tmp_path: Path
) -> None:
    target = tmp_path / "logs" / "records.jsonl"
    sink = JsonLinesSink(str(target))
    with Recorder(store, instance="gate-1", sinks=[sink]) as recorder:
        records = recorder.record_many(
            [
                (
                    "decision",
                    f"d-{i}",
                    AT,
                    {"city": "Zürich", "i": i, "nested": {"b": 1, "a": [None]}},
                )
                for i in range(5)
            ]
        )
        # Flushed per batch: readable before the sink is closed. The writer hands a batch to the sinks just after
        # releasing its callers (a slow log must not delay downloads), so allow it a moment.
        deadline = time.monotonic() + 5
        while target.read_text(encoding="utf-8").count("\n") < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert target.read_text(encoding="utf-8").count("\n") == 5
    lines = target.read_bytes().splitlines()
    assert lines == [canonical(r.to_dict()) for r in records]
    first = json.loads(lines[0])
    assert set(first) == {"chain", "seq", "kind", "id", "at", "body", "prev_hash", "hash"}
    assert sink.lines == 5


def test_json_lines_sink_appends(tmp_path: Path) -> None:
    target = tmp_path / "records.jsonl"
    target.write_text('{"earlier":true}\n', encoding="utf-8")
    with SQLiteStore(None) as s, Recorder(s, instance="g", sinks=[JsonLinesSink(str(target))]) as r:
        r.record("decision", "d", AT, {})
    assert target.read_text(encoding="utf-8").splitlines()[0] == '{"earlier":true}'
    assert len(target.read_text(encoding="utf-8").splitlines()) == 2


def test_json_lines_sink_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    with SQLiteStore(None) as s, Recorder(s, instance="g", sinks=[JsonLinesSink("-")]) as r:
        record = r.record("decision", "d", AT, {"ü": 1})
    out = capsys.readouterr().out
    assert out == canonical(record.to_dict()).decode() + "\n"


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("", id="empty"),
        pytest.param("/proc/exportgate-test/records.jsonl", id="unwritable"),
    ],
)
def test_json_lines_sink_refuses_a_bad_target(target: str) -> None:
    with pytest.raises(ConfigError):
        JsonLinesSink(target)


def test_recorder_arguments_are_checked(store: SQLiteStore) -> None:
    with pytest.raises(ValueError):
        Recorder(store, instance="")
    with pytest.raises(ValueError):
        Recorder(store, instance="g", max_batch=0)
    for delay in (-0.001, 1.5, float("nan")):
        with pytest.raises(ValueError):
            Recorder(store, instance="g", commit_delay=delay)


def _mean_batch(store: SQLiteStore, commit_delay: float, threads: int = 16, each: int = 60) -> float:
    def caller(t: int) -> None:
        for i in range(each):
            recorder.record("decision", f"t{t}-{i}", AT, decision(i))

    with Recorder(store, instance=f"gate-{commit_delay}", commit_delay=commit_delay) as recorder:
        workers = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return recorder.stats().mean_batch_size


def test_commit_delay_lets_transactions_fill_while_others_are_deciding(store: SQLiteStore) -> None:
    # 16 callers and a generous delay: nearly every caller is queued by the time the writer takes the batch.
    # Without the delay the writer takes whatever is there, often one or two.
    assert _mean_batch(store, 0.02) > 8
    assert verify(store).ok


def test_a_lone_caller_never_waits_for_the_commit_delay(store: SQLiteStore) -> None:
    with Recorder(store, instance="gate-1", commit_delay=0.5) as recorder:
        started = time.monotonic()
        for i in range(5):
            recorder.record("decision", f"d{i}", AT, decision(i))
        # One record per transaction: the delay (0.5 s each) would have taken 2 s or more.
        assert time.monotonic() - started < 1.0
        assert recorder.stats().batches == 5


def test_closing_does_not_wait_for_the_commit_delay(store: SQLiteStore) -> None:
    recorder = Recorder(store, instance="gate-1", commit_delay=0.05)
    pending = [recorder.submit("decision", f"d{i}", AT, decision(i)) for i in range(20)]
    recorder.close()  # drains: everything queued is committed
    assert [p.result().seq for p in pending] == list(range(1, 21))


# -- waiting without blocking (event loops) ----------------------------------------------------------------


def test_on_settled_tells_once_per_transaction_after_the_commit(store: SQLiteStore) -> None:
    with Recorder(store, instance="gate-1") as recorder:
        seen: list[tuple[str, bool]] = []
        done = threading.Event()
        pending = recorder.submit("decision", "d-1", AT, decision(1))

        def told() -> None:
            # On the writer thread, after the commit: the record is in the store and result() does not block.
            seen.append((threading.current_thread().name, store.get("d-1") is not None))
            done.set()

        pending.on_settled(told)
        assert done.wait(5)
        assert seen == [(f"exportgate-recorder {recorder.chain_id}", True)]
        assert pending.result().id == "d-1"
        # Settled already: told at once, on the caller's thread.
        late: list[str] = []
        pending.on_settled(lambda: late.append(threading.current_thread().name))
        assert late == [threading.current_thread().name]


def test_records_of_one_transaction_share_its_token(store: SQLiteStore) -> None:
    with Recorder(store, instance="gate-1") as recorder:
        first = recorder.submit("decision", "d-1", AT, decision(1))
        first.result()
        a = recorder.submit("decision", "d-2", AT, decision(2))
        b = recorder.submit("decision", "d-3", AT, decision(3))
        assert first.transaction is not a.transaction
        a.result()
        b.result()
        if a.transaction is b.transaction:  # the writer may take d-2 alone, before d-3 is queued
            assert store.get("d-2") is not None and store.get("d-3") is not None


def test_on_settled_after_a_failed_commit_and_a_broken_callback(store: SQLiteStore, tmp_path: Path) -> None:
    with Recorder(store, instance="gate-1") as recorder:
        recorder.record("decision", "before", AT, {})
        blocker = sqlite3.connect(tmp_path / "records.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            pending = recorder.submit("decision", "during", AT, {})
            done = threading.Event()

            def broken() -> None:
                raise RuntimeError("a caller's bug")

            pending.on_settled(broken)
            pending.on_settled(done.set)
            assert done.wait(5)  # the broken callback did not stop the next one
            with pytest.raises(NotCommitted):
                pending.result()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        # The writer thread survived the broken callback.
        assert recorder.record("decision", "after", AT, {}).seq == 2
