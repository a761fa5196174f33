"""Authorizations on file: licenses and license exceptions that turn a "pending authorization" outcome into allow.

Compliance records them with ``exportgate authorize add|import`` (e.g. a Commerce license for software to Cuba,
or License Exception CCD for a donation programme). They live in the record store as append-only entries: adding
one is an ``authorization`` record; withdrawing one is a ``revocation`` record that takes effect at its time, so
decisions made before the revocation still show the authorization they relied on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from . import yamlfile
from .classification import Classification
from .conditions import Conditions, parse_conditions, parse_destinations
from .errors import ConfigError
from .location import Location


@dataclass(frozen=True, slots=True, kw_only=True)
class Authorization:
    id: str
    """Your reference, e.g. the license number: quoted in every decision that relies on it."""
    basis: str
    """Legal basis, e.g. ``License Exception CCD, 15 CFR 740.19`` or a BIS license number."""
    destinations: frozenset[str]
    """ISO 3166-1 countries or ISO 3166-2 subdivisions it covers."""
    when: Conditions
    """Which artifacts it covers (same conditions as policy rules); empty covers every artifact."""
    valid_from: dt.date
    valid_until: dt.date | None = None
    """Exclusive end date; ``None`` for no end."""
    note: str = ""
    revoked_at: dt.datetime | None = None
    revoked_reason: str = ""
    not_before: dt.datetime | None = None
    """Added again under an id on file: valid only from then on, whatever ``valid_from`` says (a revoked period
    stays revoked; the terms it replaced held until then)."""
    replaced_at: dt.datetime | None = None
    """Added again under the same id then (a renewed or amended license): these terms held until that time."""
    added_at: dt.datetime | None = None
    """When this entry was put on file (its record's time); ``None`` for one not from the record store."""

    def valid_at(self, at: dt.datetime) -> bool:
        day = at.astimezone(dt.UTC).date()
        if day < self.valid_from or (self.valid_until is not None and day >= self.valid_until):
            return False
        if self.not_before is not None and at < self.not_before:
            return False
        if self.replaced_at is not None and at >= self.replaced_at:
            return False
        return self.revoked_at is None or at < self.revoked_at

    def covers(self, location: Location, classification: Classification, at: dt.datetime, *,
               region: str | None = None) -> bool:
        """``region``: a subdivision the pack restricts on its own, which only an authorization naming it covers."""
        if not location.known or not self.valid_at(at):
            return False
        if region is not None:
            if region not in self.destinations:
                return False
        elif location.country not in self.destinations and location.subdivision not in self.destinations:
            return False
        return self.when.matches(classification, location)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "basis": self.basis,
            "destinations": sorted(self.destinations),
            "when": self.when.to_dict(),
            "valid_from": self.valid_from.isoformat(),
            "valid_until": self.valid_until.isoformat() if self.valid_until else None,
            "note": self.note,
        }

    def status_at(self, at: dt.datetime) -> str:
        if self.revoked_at is not None and at >= self.revoked_at:
            return "revoked"
        if self.replaced_at is not None and at >= self.replaced_at:
            return "replaced"
        if self.not_before is not None and at < self.not_before:
            return "not yet valid"
        day = at.astimezone(dt.UTC).date()
        if day < self.valid_from:
            return "not yet valid"
        if self.valid_until is not None and day >= self.valid_until:
            return "expired"
        return "valid"


class AuthorizationBook:
    """The authorizations on file, as rebuilt from the record store's append-only entries."""

    def __init__(self, authorizations: Iterable[Authorization]) -> None:
        self.all = tuple(authorizations)

    def covering(self, location: Location, classification: Classification, at: dt.datetime, *,
                 region: str | None = None) -> Authorization | None:
        for auth in self.all:
            if auth.covers(location, classification, at, region=region):
                return auth
        return None

    def first_on_file(self, auth_id: str) -> dt.datetime | None:
        """When ``auth_id`` was first put on file, or ``None`` (not on file, or not from the record store)."""
        times = [a.added_at for a in self.all if a.id == auth_id and a.added_at is not None]
        return min(times) if times else None

    def get(self, auth_id: str) -> Authorization | None:
        """The latest authorization on file under ``auth_id``."""
        for auth in reversed(self.all):
            if auth.id == auth_id:
                return auth
        return None

    @classmethod
    def from_entries(cls, entries: Iterable[tuple[str, str, Mapping[str, Any]]]) -> AuthorizationBook:
        """Replay ``(kind, at, body)`` entries in order: ``authorization`` adds, ``revocation`` withdraws.

        An authorization's own dates (``valid_from``, ``valid_until``) are the license's, a legal fact like a
        pack's dates: one put on file late still covers the dates it was valid, for ``explain --at`` (which says
        when it was put on file). What is recorded later never rewrites what was recorded before: re-adding an id
        that is on file (a renewed or amended license, or one revoked before) keeps the earlier entry for the time
        it was in force, and the new one is valid only from when it was added; a revocation takes effect at its
        time and stays.
        """
        by_id: dict[str, Authorization] = {}
        withdrawn: list[Authorization] = []
        for kind, at, body in entries:
            if kind == "authorization":
                added = parse_time(at)
                auth = replace(parse_authorization(body, file="<record store>", line=None), added_at=added)
                earlier = by_id.get(auth.id)
                if earlier is not None:
                    withdrawn.append(earlier if earlier.revoked_at is not None
                                     else replace(earlier, replaced_at=added))
                    auth = replace(auth, not_before=added)
                by_id[auth.id] = auth
            elif kind == "revocation":
                auth_id = body.get("authorization")
                if auth_id in by_id:
                    by_id[auth_id] = replace(by_id[auth_id], revoked_at=parse_time(at),
                                             revoked_reason=str(body.get("reason", "")))
        return cls([*withdrawn, *by_id.values()])


def parse_time(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def parse_authorization(value: Any, *, file: str, line: int | None) -> Authorization:
    f = yamlfile.Fields(value, file=file, what="authorization", line=line)
    auth_id = f.str("id")
    if not auth_id.strip() or len(auth_id) > 200:
        raise f.error("id", "authorization id must be 1-200 characters")
    destinations = parse_destinations(f.list("destinations"), file=file, line=f.line("destinations"),
                                      what=f"authorization {auth_id}", allow_any=False)
    valid_from = f.date("valid_from")
    valid_until = f.date("valid_until", required=False)
    if valid_until is not None and valid_until <= valid_from:
        raise f.error("valid_until", f"authorization {auth_id}: valid_until {valid_until} is not after "
                                     f"valid_from {valid_from}")
    auth = Authorization(
        id=auth_id,
        basis=f.str("basis"),
        destinations=destinations,
        when=parse_conditions(f.raw("when"), file=file, line=f.line("when"), what=f"authorization {auth_id}"),
        valid_from=valid_from,
        valid_until=valid_until,
        note=f.str("note", required=False) or "",
    )
    f.done()
    return auth


def load_authorization_file(path: str) -> list[Authorization]:
    """An ``authorizations:`` list from YAML, for ``exportgate authorize import``; all-or-nothing."""
    data = yamlfile.load(path)
    top = yamlfile.Fields(data, file=path, what="authorization file")
    items = top.list("authorizations")
    top.done()
    result = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        line = yamlfile.item_line(items, i)
        auth = parse_authorization(item, file=path, line=line)
        if auth.id in seen:
            raise ConfigError(f"duplicate authorization id {auth.id!r}", file=path, line=line)
        seen.add(auth.id)
        result.append(auth)
    return result
