"""The gate: one decision per download, from who asks, what they ask for, and the pack in force.

``Gate.decide`` is pure given its inputs and the clock: it locates, classifies and evaluates, and returns a
:class:`~exportgate.decision.Decision` without writing anything (``exportgate explain`` uses it).
``Gate.decide_and_record`` also commits the decision record and returns only once it is durable; if the store
cannot commit it raises :class:`~exportgate.errors.RecordStoreError` and the caller must refuse to serve.

Every HTTP adapter is a thin shell over these two calls.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import Callable
from typing import Any, Protocol

from .classification import Classification
from .decision import Decision, RequestFacts
from .errors import ExportGateError
from .location import CLIENT_UNKNOWN, Location, unknown
from .records.chain import canonical_text_trusted
from .policy import PolicySet


class Locator(Protocol):
    def locate(self, address: str) -> Location: ...

    def describe(self) -> dict[str, object]: ...


class Catalog(Protocol):
    def classify(self, path: str) -> Classification: ...


class Recorder(Protocol):
    def submit(self, kind: str, id: str, at: str, body: dict, body_json: str | None = None) -> Any: ...  # noqa: A002


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_time(at: dt.datetime) -> str:
    """UTC, microseconds, ``Z``: the one time format of records (``2026-11-29T03:04:05.000006Z``).

    A naive datetime is refused rather than read as local time. isoformat, not strftime: this runs per decision
    and strftime costs ten times more.
    """
    if at.tzinfo is None:
        raise ValueError(f"naive datetime {at!r}: give a timezone (decisions are made in UTC)")
    if at.utcoffset():
        at = at.astimezone(dt.UTC)
    if at.year < 1000:
        return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ").rjust(27, "0")
    return at.isoformat(timespec="microseconds")[:26] + "Z"


class Gate:
    """Wires a locator, a catalog, the policy set and (optionally) a recorder."""

    def __init__(
        self,
        *,
        locator: Locator,
        catalog: Catalog,
        policies: PolicySet,
        recorder: Recorder | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        instance: str | None = None,
    ) -> None:
        self.locator = locator
        self.catalog = catalog
        self.policies = policies
        self.recorder = recorder
        self.clock = clock
        # Decision ids: a random prefix per gate instance and a counter. Unique across restarts and replicas
        # without paying for uuid4 (an os.urandom call) on every request.
        self.instance = instance or "gate"
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)
        # Record views of the location and classification values, by identity: the locator and catalog hand out
        # the same objects for the same address and artifact, and building the dicts is a third of the record.
        self._dicts: dict[int, tuple[object, dict[str, object]]] = {}

    def _as_dict(self, value: Any) -> dict[str, object]:
        hit = self._dicts.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        if len(self._dicts) >= 262144:
            self._dicts.clear()
        as_dict = value.to_dict()
        self._dicts[id(value)] = (value, as_dict)  # holding ``value`` keeps its id from being reused
        return as_dict

    def decide(self, request: RequestFacts, *, at: dt.datetime | None = None) -> Decision:
        """Decide without recording. ``at`` defaults to now; a time before every pack raises NoPackInForce."""
        when = at if at is not None else self.clock()
        if request.client_error is not None:
            location = unknown(CLIENT_UNKNOWN, source=f"client address: {request.client_error}")
        else:
            location = self.locator.locate(request.client)
        classification = self.catalog.classify(request.path)
        outcome = self.policies.evaluate(location, classification, when)
        return Decision.build(f"{self._prefix}-{next(self._counter):x}", when, outcome, location, classification,
                              request)

    def decide_and_record(self, request: RequestFacts) -> Decision:
        """Decide and commit the record; returns only after the record is durable."""
        return self.submit(request).result()

    def submit(self, request: RequestFacts) -> PendingDecision:
        """Decide and hand the record to the writer; ``.result()`` returns the decision once it is durable.

        For callers with many requests in flight on one thread (an event loop): a response may leave only after
        ``result()`` has returned.
        """
        if self.recorder is None:
            raise ExportGateError("this gate has no record store; use decide() to evaluate without recording")
        decision = self.decide(request)
        body = decision.to_record(self._as_dict)
        pending = self.recorder.submit("decision", decision.id, format_time(decision.at), body,
                                       canonical_text_trusted(body))
        return PendingDecision(decision, pending)


class PendingDecision:
    """A decision whose record is on its way to the store."""

    __slots__ = ("decision", "_pending")

    def __init__(self, decision: Decision, pending: Any) -> None:
        self.decision = decision
        self._pending = pending

    def result(self) -> Decision:
        """The decision, once its record is committed; raises RecordStoreError if it could not be."""
        self._pending.result()
        return self.decision
