"""The recorder: seals records into this instance's chain and commits them with group commit.

The gate calls :meth:`Recorder.record` once per decision and serves the download only after it
returns: the record is then committed (durable, for a durable store). Callers on many threads
enqueue; one writer thread takes everything queued so far, seals it into the chain, stores it in
ONE transaction, and wakes all of those callers at once. While that commit is on its way to
disk, the next batch fills up, so a commit costs one fsync per batch instead of per download.

Commit delay (``commit_delay``, PostgreSQL's ``commit_delay``): when the last transaction held more than one
record, other callers are active, and the writer waits that long before taking the next batch, so it takes
more records at once. A fast disk otherwise commits a handful of records per fsync, and the fsync, the
transaction and waking the callers cost the same for five records as for thirty. A caller alone (the last
transaction held one record) never waits for it.
Committed records then go to the sinks (JSON lines for log shippers), whose failures are logged
and counted, never fatal: the store is the system of record.

Each Recorder starts a new chain, ``"{instance}:{12 hex}"``, so replicas and restarts never
interleave in one chain.

Failure: if a commit fails, every caller waiting on that batch gets
:class:`NotCommitted` (a :class:`~exportgate.errors.RecordStoreError`) — never a silent success
— the chain head goes back to the last committed record, and later records are tried again (the
store may come back). Before the first commit after a failure the head is re-read from the store,
in case the failed commit did reach the disk. ``healthy``, ``last_error`` and :meth:`stats` feed
health checks and metrics.

Caveat: a caller blocked in ``record()`` waits for the commit, however long the store takes
(SQLite gives up after its busy timeout). A sink runs on the writer thread, so a slow sink
delays the next batch.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self

from exportgate.errors import RecordStoreError
from exportgate.records.chain import (
    GENESIS,
    Chain,
    InvalidRecord,
    Record,
    canonical_text,
    check_fields,
)
from exportgate.records.store import Store

log = logging.getLogger(__name__)

_allocate_lock = threading.Lock


class Sink(Protocol):
    """Where committed records are copied after each commit (best effort)."""

    def write(self, records: Sequence[Record]) -> None:
        """Take one committed batch; may raise (the recorder logs and counts it)."""

    def close(self) -> None:
        """Flush and release; called once by :meth:`Recorder.close`."""


class NotCommitted(RecordStoreError):
    """A record (or part of a ``record_many``) was not committed: do not serve the download."""

    def __init__(self, reason: str, *, count: int, committed: Sequence[Record] = ()) -> None:
        self.reason = reason
        self.count = count
        """How many of the caller's records were not committed."""
        self.committed = tuple(committed)
        """For ``record_many``: those that were (in other batches)."""
        super().__init__(f"{count} record(s) not committed: {reason}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RecorderStats:
    """A snapshot of a recorder's counters (for metrics)."""

    chain: str
    """This recorder's chain id."""
    healthy: bool
    """False after a failed commit, until a commit succeeds again."""
    last_error: str | None
    """The reason of the last failed commit, if any."""
    committed: int
    """Records committed."""
    failed: int
    """Records whose commit failed (their callers got :class:`NotCommitted`)."""
    batches: int
    """Transactions committed."""
    failed_batches: int
    """Transactions that failed."""
    sink_failures: int
    """Sink writes that raised."""

    @property
    def mean_batch_size(self) -> float:
        """Records per committed transaction (0.0 before the first)."""
        return self.committed / self.batches if self.batches else 0.0


class _Batch:
    """Records that will be committed in one transaction, and the callers' shared wake-up.

    One lock per batch, not one Event per record: the writer releases it once, and each woken
    caller re-releases it for the next (a relay), so no caller allocates anything to wait.
    """

    __slots__ = ("_callbacks", "_callbacks_lock", "_done", "error", "items", "records")

    def __init__(self) -> None:
        self.items: list[tuple[str, str, str, dict[str, Any], str]] = []
        self.records: list[Record] = []
        self.error: BaseException | None = None
        self._done = _allocate_lock()
        self._done.acquire()
        # For callers that must not block (an event loop): told once the batch is settled.
        self._callbacks: list[Callable[[], None]] | None = []
        self._callbacks_lock = _allocate_lock()

    def wait(self) -> None:
        # ``with``: a signal (KeyboardInterrupt in the main thread) cannot land between taking
        # the lock and passing it on, which would leave the rest of the batch waiting forever.
        with self._done:
            pass

    def finish(self) -> None:
        self._done.release()
        with self._callbacks_lock:
            callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            try:
                callback()
            except Exception:  # a caller's callback must not kill the writer thread
                log.exception("commit callback failed")

    def on_settled(self, callback: Callable[[], None]) -> None:
        with self._callbacks_lock:
            callbacks = self._callbacks
            if callbacks is not None:
                callbacks.append(callback)
                return
        callback()  # settled already


class Pending:
    """A record handed to the writer and not yet known to be committed: :meth:`result` waits for it.

    For callers that keep many decisions in flight on one thread (an event loop, a pipelined benchmark): they
    submit, carry on, and release each response only when its ``result()`` returns. Nothing may be served
    before that.
    """

    __slots__ = ("_batch", "_index")

    def __init__(self, batch: _Batch, index: int) -> None:
        self._batch = batch
        self._index = index

    def done(self) -> bool:
        return bool(self._batch.records) or self._batch.error is not None

    @property
    def transaction(self) -> object:
        """An opaque token, the same for every record committed in the same transaction as this one."""
        return self._batch

    def on_settled(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once this record's transaction committed or failed (then :meth:`result` does not
        block). It runs on the writer thread, or at once if that happened already; it must be quick and
        thread-safe (``loop.call_soon_threadsafe``). One call per transaction is enough: see :attr:`transaction`.
        """
        self._batch.on_settled(callback)

    def result(self) -> Record:
        """The committed record; raises :class:`NotCommitted` if its transaction failed."""
        batch = self._batch
        batch.wait()
        if batch.error is not None:
            raise NotCommitted(str(batch.error), count=1) from batch.error
        return batch.records[self._index]


class Recorder:
    """Seals and durably commits records for one writer instance (thread-safe, context manager)."""

    def __init__(
        self,
        store: Store,
        *,
        instance: str,
        sinks: Sequence[Sink] = (),
        max_batch: int = 1024,
        commit_delay: float | None = None,
    ) -> None:
        """``commit_delay``: seconds (module docstring); by default the store's own ``commit_delay`` (a store URL
        option), else 0."""
        if not isinstance(instance, str) or not instance:
            raise ValueError(f"instance must be a non-empty string, got {instance!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if commit_delay is None:
            commit_delay = float(getattr(store, "commit_delay", 0.0))
        if not 0.0 <= commit_delay <= 1.0:
            raise ValueError(f"commit_delay must be 0 to 1 second, got {commit_delay}")
        self._store = store
        self._sinks = tuple(sinks)
        self._max_batch = max_batch
        self._commit_delay = commit_delay
        self._chain = Chain(f"{instance}:{uuid.uuid4().hex[:12]}")
        self.instance = instance
        self._cond = threading.Condition(threading.Lock())
        self._open: _Batch | None = None  # the batch callers are adding to
        self._full: deque[_Batch] = deque()  # batches that reached max_batch, oldest first
        self._writer_waiting = False
        self._closing = False
        self._resync = False
        self._healthy = True
        self._last_error: str | None = None
        self._committed = 0
        self._failed = 0
        self._batches = 0
        self._failed_batches = 0
        self._sink_failures = 0
        self._sink_failing = [False] * len(self._sinks)
        self.on_sink_failure: Callable[[int], None] | None = None
        """Called on the writer thread with the number of records a sink failed to take (for a metric)."""
        self._thread = threading.Thread(
            target=self._run, name=f"exportgate-recorder {self._chain.chain_id}", daemon=True
        )
        self._thread.start()

    # -- public ----------------------------------------------------------------------------

    @property
    def chain_id(self) -> str:
        """The chain this recorder writes."""
        return self._chain.chain_id

    @property
    def healthy(self) -> bool:
        """False from a failed commit until the next successful one."""
        return self._healthy

    @property
    def last_error(self) -> str | None:
        """Why the last commit failed (kept after recovery, for the logs)."""
        return self._last_error

    def stats(self) -> RecorderStats:
        """The counters as one consistent-enough snapshot (each is updated by the writer only)."""
        return RecorderStats(
            chain=self._chain.chain_id,
            healthy=self._healthy,
            last_error=self._last_error,
            committed=self._committed,
            failed=self._failed,
            batches=self._batches,
            failed_batches=self._failed_batches,
            sink_failures=self._sink_failures,
        )

    def record(self, kind: str, id: str, at: str, body: dict[str, Any], body_json: str | None = None) -> Record:
        """Commit one record; returns it sealed once it is durable.

        ``body_json``, when given, must be the canonical text of ``body`` (the gate passes
        :func:`~exportgate.records.chain.canonical_text_trusted` of a body it built itself).

        Raises :class:`~exportgate.records.chain.InvalidRecord` (nothing enqueued) for a bad
        field or body, :class:`NotCommitted` if the commit failed or the recorder is closed.
        """
        return self.submit(kind, id, at, body, body_json).result()

    def submit(self, kind: str, id: str, at: str, body: dict[str, Any], body_json: str | None = None) -> Pending:
        """Hand one record to the writer without waiting; :meth:`Pending.result` waits for its commit."""
        # Checked and encoded on the caller's thread: a bad record fails its own caller, never
        # the batch it would have joined.
        check_fields(kind, id, at)
        if not isinstance(body, dict):
            raise InvalidRecord("body", f"expected a JSON object (dict), got {type(body).__name__}")
        item = (kind, id, at, body, body_json if body_json is not None else canonical_text(body))
        with self._cond:
            batch = self._enqueue_locked(item)
            index = len(batch.items) - 1
        return Pending(batch, index)

    def submit_encoded(self, kind: str, id: str, at: str, body_json: str) -> Pending:
        """:meth:`submit` for a body the caller has already encoded as canonical JSON text, unchecked.

        For the gate's own decision records, on the hot path: ``kind`` and ``id`` are its own plain strings, ``at``
        comes from ``format_time`` and ``body_json`` from :class:`~exportgate.recordbody.RecordEncoder`. The
        sealed :class:`Record` has ``body=None`` (the text is what is stored and hashed); records read back from
        the store have their body.
        """
        with self._cond:
            batch = self._enqueue_locked((kind, id, at, None, body_json))
            index = len(batch.items) - 1
        return Pending(batch, index)

    def record_many(self, items: Iterable[tuple[str, str, str, dict[str, Any]]]) -> list[Record]:
        """Commit many ``(kind, id, at, body)``, in order and contiguous in the chain; return them.

        All items are checked before any is enqueued. They may span several transactions (of
        ``max_batch``); if any fails, :class:`NotCommitted` says how many did not make it and
        carries the ones that did.
        """
        checked = [_checked(*item) for item in items]
        spans: list[tuple[_Batch, int, int]] = []
        with self._cond:
            for item in checked:
                batch = self._enqueue_locked(item)
                end = len(batch.items)
                if spans and spans[-1][0] is batch:
                    spans[-1] = (batch, spans[-1][1], end)
                else:
                    spans.append((batch, end - 1, end))
        committed: list[Record] = []
        failures: list[BaseException] = []
        lost = 0
        for batch, start, end in spans:
            batch.wait()
            if batch.error is None:
                committed.extend(batch.records[start:end])
            else:
                failures.append(batch.error)
                lost += end - start
        if failures:
            raise NotCommitted(str(failures[0]), count=lost, committed=committed) from failures[0]
        return committed

    def close(self) -> None:
        """Commit what is queued, stop the writer, close the sinks. Later calls to record() fail."""
        with self._cond:
            if self._closing:
                already = True
            else:
                already = False
                self._closing = True
                self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        if already:
            return
        for sink in self._sinks:
            try:
                sink.close()
            except Exception:
                log.exception("record sink %r failed to close", sink)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Recorder({self._chain.chain_id!r}, healthy={self._healthy})"

    # -- callers' side ---------------------------------------------------------------------

    def _enqueue_locked(self, item: tuple[str, str, str, dict[str, Any], str]) -> _Batch:
        if self._closing:
            raise NotCommitted("the recorder is closed", count=1)
        if threading.current_thread() is self._thread:
            # A sink recording would wait for a commit only it could perform.
            raise RuntimeError("record() called from the recorder's own writer thread")
        batch = self._open
        if batch is None:
            batch = self._open = _Batch()
        elif len(batch.items) >= self._max_batch:
            self._full.append(batch)
            batch = self._open = _Batch()
        batch.items.append(item)
        if self._writer_waiting:
            self._writer_waiting = False
            self._cond.notify()
        return batch

    # -- writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        batch: _Batch | None = None
        last_size = 0
        try:
            while True:
                with self._cond:
                    while not self._full and self._open is None:
                        if self._closing:
                            return
                        self._writer_waiting = True
                        self._cond.wait()
                    # Others are active and there is room: let the batch fill (module docstring). Callers
                    # enqueue meanwhile without waking the writer (it is not waiting).
                    delay = self._commit_delay if last_size > 1 and not self._full and not self._closing else 0.0
                if delay:
                    time.sleep(delay)
                with self._cond:
                    if self._full:
                        batch = self._full.popleft()
                    else:
                        batch, self._open = self._open, None
                assert batch is not None
                last_size = len(batch.items)
                self._commit(batch)
                batch = None
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            log.critical("recorder writer thread died", exc_info=True)
            with self._cond:
                self._closing = True
                self._healthy = False
                self._last_error = f"writer thread died: {exc!r}"
                orphans = ([batch] if batch is not None else []) + list(self._full)
                if self._open is not None:
                    orphans.append(self._open)
                self._full.clear()
                self._open = None
            for orphan in orphans:
                if orphan.error is None and not orphan.records:
                    orphan.error = RecordStoreError(self._last_error)
                    orphan.finish()

    def _commit(self, batch: _Batch) -> None:
        chain = self._chain
        try:
            if self._resync:
                last = self._store.last(chain.chain_id)
                if last is None:
                    chain.rewind(1, GENESIS)
                else:
                    chain.rewind(last.seq + 1, last.hash)
                self._resync = False
            mark = (chain.next_seq, chain.prev_hash)
            records = chain.seal_many(batch.items)
            try:
                self._store.append(records)
            except BaseException:
                chain.rewind(*mark)  # never link a later record to one that was not stored
                raise
        except Exception as exc:  # noqa: BLE001 - any failure must reach the waiting callers
            # Maybe the transaction reached the disk after all: re-read the head before the
            # next commit instead of trusting our own.
            self._resync = True
            self._failed += len(batch.items)
            self._failed_batches += 1
            self._last_error = str(exc)
            was_healthy, self._healthy = self._healthy, False
            batch.error = exc
            batch.finish()
            if was_healthy:
                log.error("decision records not committed (%d): %s", len(batch.items), exc)
            return
        self._committed += len(records)
        self._batches += 1
        if not self._healthy:
            self._healthy = True
            log.warning("record store is committing again (chain %s)", chain.chain_id)
        batch.records = records
        batch.finish()
        for i, sink in enumerate(self._sinks):
            try:
                sink.write(records)
            except Exception:
                self._sink_failures += 1
                if self.on_sink_failure is not None:
                    try:
                        self.on_sink_failure(len(records))
                    except Exception:  # a metric must not kill the writer thread
                        log.exception("counting a record sink failure failed")
                if not self._sink_failing[i]:  # log the first failure of a run, not every batch
                    self._sink_failing[i] = True
                    log.exception("record sink %r failed (the store has the records)", sink)
            else:
                if self._sink_failing[i]:
                    self._sink_failing[i] = False
                    log.warning("record sink %r works again", sink)


def _checked(
    kind: str, id: str, at: str, body: dict[str, Any]
) -> tuple[str, str, str, dict[str, Any], str]:
    # Same as at the top of Recorder.record (kept inline there: it runs per decision).
    check_fields(kind, id, at)
    if not isinstance(body, dict):
        raise InvalidRecord("body", f"expected a JSON object (dict), got {type(body).__name__}")
    return (kind, id, at, body, canonical_text(body))
