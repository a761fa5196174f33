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
from typing import Protocol

from .classification import Classification
from .decision import Decision, RequestFacts
from .errors import ExportGateError
from .location import CLIENT_UNKNOWN, Location, unknown
from .policy import PolicySet


class Locator(Protocol):
    def locate(self, address: str) -> Location: ...


class Catalog(Protocol):
    def classify(self, path: str) -> Classification: ...


class Recorder(Protocol):
    def record(self, kind: str, id: str, at: str, body: dict) -> object: ...  # noqa: A002


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_time(at: dt.datetime) -> str:
    """UTC, microseconds, ``Z``: the one time format of records."""
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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

    def decide(self, request: RequestFacts, *, at: dt.datetime | None = None) -> Decision:
        """Decide without recording. ``at`` defaults to now; a time before every pack raises NoPackInForce."""
        when = at if at is not None else self.clock()
        if request.client_error is not None:
            location = unknown(CLIENT_UNKNOWN, source=f"client address: {request.client_error}")
        else:
            location = self.locator.locate(request.client)
        classification = self.catalog.classify(request.path)
        outcome = self.policies.evaluate(location, classification, when)
        return Decision(
            id=f"{self._prefix}-{next(self._counter):x}",
            at=when,
            action=outcome.action,
            mode=outcome.mode,
            rule=outcome.rule,
            citation=outcome.citation,
            pack=outcome.pack,
            authorization=outcome.authorization,
            location=location,
            classification=classification,
            request=request,
            reasons=outcome.reasons,
        )

    def decide_and_record(self, request: RequestFacts) -> Decision:
        """Decide and commit the record; returns only after the record is durable."""
        if self.recorder is None:
            raise ExportGateError("this gate has no record store; use decide() to evaluate without recording")
        decision = self.decide(request)
        self.recorder.record("decision", decision.id, format_time(decision.at), decision.to_record())
        return decision
