"""The gate: one decision per download, from who asks, what they ask for, and the pack in force.

``Gate.decide`` is pure given its inputs and the clock: it locates, classifies and evaluates, and returns a
:class:`~exportgate.decision.Decision` without writing anything (``exportgate explain`` uses it). When the
geolocation data cannot be read for the client (``lookup-failed``) it raises
:class:`~exportgate.errors.GeolocationFailed` instead: that is a failure, not an unknown location, and the
download is refused rather than decided by the pack's rule for unknown locations.
``Gate.decide_and_record`` also commits the decision record and returns only once it is durable; if the store
cannot commit it raises :class:`~exportgate.errors.RecordStoreError` and the caller must refuse to serve.

Every HTTP adapter is a thin shell over these two calls.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import os
from collections.abc import Callable
from typing import Any, Protocol

from .classification import Classification
from .decision import Decision, RequestFacts
from .errors import ExportGateError, GeolocationFailed
from .location import CLIENT_UNKNOWN, LOOKUP_FAILED, Location, unknown
from .recordbody import RecordEncoder
from .policy import PolicySet
from .records.chain import format_time

__all__ = ["Gate", "PendingDecision", "format_time"]


class Locator(Protocol):
    def locate(self, address: str) -> Location: ...

    def describe(self) -> dict[str, object]: ...


class Catalog(Protocol):
    def classify(self, path: str) -> Classification: ...


class Pending(Protocol):
    def result(self) -> Any: ...

    @property
    def transaction(self) -> object: ...

    def on_settled(self, callback: Callable[[], None]) -> None: ...


class Recorder(Protocol):
    def submit_encoded(self, kind: str, id: str, at: str, body_json: str) -> Pending: ...  # noqa: A002


# The default clock without a Python frame per call (a measurable share of a decision).
_now_utc = functools.partial(dt.datetime.now, dt.UTC)


class Gate:
    """Wires a locator, a catalog, the policy set and (optionally) a recorder."""

    def __init__(
        self,
        *,
        locator: Locator,
        catalog: Catalog,
        policies: PolicySet,
        recorder: Recorder | None = None,
        clock: Callable[[], dt.datetime] = _now_utc,
        instance: str | None = None,
    ) -> None:
        self.locator = locator
        self.catalog = catalog
        self.policies = policies
        self.recorder = recorder
        self.clock = clock
        # Decision ids: a random prefix per gate instance and a zero-padded counter. Unique across restarts and
        # replicas without an os.urandom call per request, and increasing within an instance, so the store's index
        # on ids grows at its right edge (random or unpadded ids made each insert cost twice as much).
        self.instance = instance or "gate"
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)
        self._encoder = RecordEncoder()

    def decide(self, request: RequestFacts, *, at: dt.datetime | None = None) -> Decision:
        """Decide without recording. ``at`` defaults to now; a time before every pack raises NoPackInForce."""
        when = at if at is not None else self.clock()
        if request.client_error is not None:
            location = unknown(CLIENT_UNKNOWN, source=f"client address: {request.client_error}")
        else:
            location = self.locator.locate(request.client)
            if location.unknown_reason == LOOKUP_FAILED:
                # Not "unknown": the data failed. A pack's rule for unknown locations may serve the download,
                # and a sanctioned destination must never be served because something failed to read.
                raise GeolocationFailed(f"locating {request.client} failed: the geolocation database could not "
                                        f"be read (see the log)")
        classification = self.catalog.classify(request.path)
        outcome = self.policies.evaluate(location, classification, when)
        return Decision.build(f"{self._prefix}-{next(self._counter):012x}", when, outcome, location,
                              classification, request)

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
        body_json = self._encoder.encode(decision)
        pending = self.recorder.submit_encoded("decision", decision.id, format_time(decision.at), body_json)
        return PendingDecision(decision, pending)


class PendingDecision:
    """A decision whose record is on its way to the store."""

    __slots__ = ("decision", "_pending")

    def __init__(self, decision: Decision, pending: Pending) -> None:
        self.decision = decision
        self._pending = pending

    def result(self) -> Decision:
        """The decision, once its record is committed; raises RecordStoreError if it could not be."""
        self._pending.result()
        return self.decision

    @property
    def transaction(self) -> object:
        """The same token for decisions whose records commit together (one wake-up serves them all)."""
        return self._pending.transaction

    def on_settled(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (on the writer thread) once ``result()`` would no longer block."""
        self._pending.on_settled(callback)
