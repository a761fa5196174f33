"""The decision for one download, and the facts of the request it was made for.

A :class:`Decision` is a frozen value that always carries its reason: the rule id, its citation, the pack (id,
version, content hash), the authorization relied on, where the requester was located and by which source, and how
the artifact was classified and by which manifest rule. Only the web layer turns it into a status code or a page.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from .classification import Classification
from .location import Location
from .policy import PackRef

ALLOW, FLAG, BLOCK = "allow", "flag", "block"


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestFacts:
    """What was asked, by whom, as the gate saw it."""

    client: str
    """The client address used for location (as received, before normalisation)."""
    path: str
    """The artifact path, normalised exactly as the origin will resolve it."""
    method: str = "GET"
    host: str | None = None
    raw_path: str | None = None
    """The path as received (before decoding and normalisation), when it differs."""
    client_source: str = "peer"
    """Where ``client`` came from: ``peer`` (TCP peer), ``x-forwarded-for``, ``forwarded``, ``cli``…"""
    address_chain: tuple[str, ...] = ()
    """The whole forwarded-for chain, for the record, when proxies were involved (left to right, peer last)."""
    client_hop: int = 0
    """Which entry of the chain was used, counted from the right: 0 is the TCP peer, 1 the last header entry."""
    client_error: str | None = None
    """Why no client address could be established (``obfuscated``, ``unparseable``, ``too-large``…); the location
    is then unknown for that reason, without a lookup."""
    requested_path: str | None = None
    """The path asked for, when the gate decided on the file it names instead (static mode: a symlink's target,
    a directory's ``index.html``); ``path`` is then that file's."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "client_source": self.client_source,
            "address_chain": list(self.address_chain),
            "client_hop": self.client_hop,
            "client_error": self.client_error,
            "method": self.method,
            "host": self.host,
            "path": self.path,
            "raw_path": self.raw_path,
            "requested_path": self.requested_path,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    id: str
    """Unique id of this decision (also the record id and the ``X-Exportgate-Decision-Id`` header)."""
    at: dt.datetime
    """When it was decided (UTC); the pack in force at this time decided."""
    action: str
    """``allow``, ``flag`` or ``block`` — what the rule says."""
    mode: str
    """``enforce``, or ``dry-run``: recorded but not enforced (the download is served)."""
    rule: str
    citation: str
    pack: PackRef
    authorization: str | None
    location: Location
    classification: Classification
    request: RequestFacts
    reasons: tuple[str, ...] = ()

    @property
    def enforced_action(self) -> str:
        """What the gate does: the action in ``enforce`` mode; in ``dry-run`` a block is served but flagged."""
        if self.mode == "dry-run" and self.action == BLOCK:
            return FLAG
        return self.action

    @property
    def served(self) -> bool:
        return self.enforced_action != BLOCK

    @classmethod
    def build(cls, id: str, at: dt.datetime, outcome: Any, location: Location, classification: Classification,
              request: RequestFacts) -> Decision:
        """Construct from a policy outcome, on the hot path: ~3x cheaper than the frozen dataclass ``__init__``
        (which goes through ``object.__setattr__`` per field); same value, same immutability afterwards."""
        d = _new(cls)
        _set_id(d, id)
        _set_at(d, at)
        _set_action(d, outcome.action)
        _set_mode(d, outcome.mode)
        _set_rule(d, outcome.rule)
        _set_citation(d, outcome.citation)
        _set_pack(d, outcome.pack)
        _set_authorization(d, outcome.authorization)
        _set_location(d, location)
        _set_classification(d, classification)
        _set_request(d, request)
        _set_reasons(d, outcome.reasons)
        return d

    def to_record(self) -> dict[str, Any]:
        """The body of the decision record: everything an auditor needs, nothing secret.

        The gate encodes it through :class:`~exportgate.recordbody.RecordEncoder`, which gives the same text.
        """
        return {
            "action": self.action,
            "mode": self.mode,
            "enforced": self.enforced_action,
            "rule": self.rule,
            "citation": self.citation,
            "authorization": self.authorization,
            "pack": self.pack.to_dict(),
            "location": self.location.to_dict(),
            "classification": self.classification.to_dict(),
            "request": self.request.to_dict(),
            "reasons": list(self.reasons),
        }

    def summary(self) -> dict[str, Any]:
        """The flat view ``exportgate explain --json`` prints."""
        return {
            "id": self.id,
            "at": self.at.isoformat().replace("+00:00", "Z"),
            "action": self.action,
            "enforced": self.enforced_action,
            "mode": self.mode,
            "rule": self.rule,
            "citation": self.citation,
            "authorization": self.authorization,
            "pack": f"{self.pack.id}@{self.pack.version}",
            "pack_sha256": self.pack.sha256,
            "country": self.location.country,
            "subdivision": self.location.subdivision,
            "unknown_reason": self.location.unknown_reason,
            "geo_source": self.location.source,
            "address": self.location.address,
            "address_form": self.location.form,
            "anonymizer": sorted(self.location.anonymizer),
            "classification": self.classification.to_dict(),
            "reasons": list(self.reasons),
        }


_new = object.__new__
(_set_id, _set_at, _set_action, _set_mode, _set_rule, _set_citation, _set_pack, _set_authorization, _set_location,
 _set_classification, _set_request, _set_reasons) = (
    Decision.__dict__[name].__set__ for name in (
        "id", "at", "action", "mode", "rule", "citation", "pack", "authorization", "location", "classification",
        "request", "reasons"))
