"""Decision records: sealed into hash chains, committed durably, checked for tampering.

The records layer knows nothing of policy: a record is ``(kind, id, at, body)``. Typical use::

    store = open_store("sqlite:///var/lib/exportgate/records.db")
    with Recorder(store, instance="gate-1", sinks=[JsonLinesSink("-")]) as recorder:
        recorder.record("decision", decision_id, format_time(now), body)  # durable on return
    report = verify(store)

This module is the stable facade: import from here, not from the submodules.
"""

from __future__ import annotations

from exportgate.records.chain import (
    GENESIS,
    Chain,
    InvalidRecord,
    Record,
    canonical,
    canonical_text,
    format_time,
)
from exportgate.records.jsonl import JsonLinesSink
from exportgate.records.recorder import NotCommitted, Recorder, RecorderStats, Sink
from exportgate.records.sqlite import SQLiteStore
from exportgate.records.store import CorruptRecordError, Store, StoreOpenError, open_store
from exportgate.records.verify import Problem, VerifyReport, chain_heads, verify

__all__ = [
    "GENESIS",
    "Chain",
    "CorruptRecordError",
    "InvalidRecord",
    "JsonLinesSink",
    "NotCommitted",
    "Problem",
    "Record",
    "Recorder",
    "RecorderStats",
    "SQLiteStore",
    "Sink",
    "Store",
    "StoreOpenError",
    "VerifyReport",
    "canonical",
    "canonical_text",
    "chain_heads",
    "format_time",
    "open_store",
    "verify",
]
