"""Conditions on what is downloaded (classification) and how (anonymiser flags), shared by rules and authorizations.

A condition left out matches anything; a listed condition matches when the artifact's value is one of the listed
values. An unclassified artifact has no values, so it matches only conditions that do not look at the
classification. ``covers`` answers "does A match everything B matches?", which lets ``exportgate check`` find rules
that can never be reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import iso3166, yamlfile
from .classification import CLASSES, PERSONAL_COMMUNICATIONS_KINDS, PRICES, Classification, is_eccn
from .errors import ConfigError
from .location import ANONYMIZER_FLAGS, Location


@dataclass(frozen=True, slots=True, kw_only=True)
class Conditions:
    categories: frozenset[str] | None = None
    """``class`` in YAML: the artifact's class must be one of these."""
    kinds: frozenset[str] | None = None
    """At least one of the artifact's personal-communications kinds must be one of these."""
    eccns: frozenset[str] | None = None
    prices: frozenset[str] | None = None
    publicly_available: bool | None = None
    anonymizer: frozenset[str] | None = None
    """At least one of the location's anonymiser flags must be one of these."""

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in self.__dataclass_fields__)

    @property
    def looks_at_classification(self) -> bool:
        return any(v is not None for v in (self.categories, self.kinds, self.eccns, self.prices,
                                           self.publicly_available))

    def matches(self, c: Classification, location: Location | None = None) -> bool:
        if self.looks_at_classification:
            if not c.classified:
                return False
            if self.categories is not None and c.category not in self.categories:
                return False
            if self.kinds is not None and not self.kinds.intersection(c.kinds):
                return False
            if self.eccns is not None and c.eccn not in self.eccns:
                return False
            if self.prices is not None and c.price not in self.prices:
                return False
            if self.publicly_available is not None and c.publicly_available is not self.publicly_available:
                return False
        if self.anonymizer is not None:
            if location is None or not self.anonymizer.intersection(location.anonymizer):
                return False
        return True

    def covers(self, other: Conditions) -> bool:
        """True when every (classification, location) that ``other`` matches is matched by ``self`` too."""
        for name in ("categories", "kinds", "eccns", "prices", "anonymizer"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is not None and (theirs is None or not theirs <= mine):
                return False
        if self.publicly_available is not None and self.publicly_available is not other.publicly_available:
            return False
        # An unclassified artifact matches `self` only if self ignores the classification; if `other` ignores
        # it too, `other` matches unclassified artifacts that `self` (looking at the classification) does not.
        return not (self.looks_at_classification and not other.looks_at_classification)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for yaml_name, name in _YAML_NAMES.items():
            value = getattr(self, name)
            if value is not None:
                out[yaml_name] = sorted(value) if isinstance(value, frozenset) else value
        return out


_YAML_NAMES = {"class": "categories", "kinds": "kinds", "eccn": "eccns", "price": "prices",
               "publicly_available": "publicly_available", "anonymizer": "anonymizer"}


def parse_conditions(value: Any, *, file: str, line: int | None, what: str) -> Conditions:
    """``when:`` of a rule or an authorization."""
    if value is None:
        return Conditions()
    f = yamlfile.Fields(value, file=file, what=f"{what} when", line=line)
    fields: dict[str, Any] = {}
    for yaml_name, name in _YAML_NAMES.items():
        if name == "publicly_available":
            fields[name] = f.bool(yaml_name, required=False)
            continue
        raw = f.list(yaml_name, required=False)
        if raw is None:
            continue
        values = [str(v) for v in raw]
        if not values:
            raise f.error(yaml_name, f"{what}: {yaml_name} is an empty list, which would match nothing")
        for v in values:
            problem = _check_value(yaml_name, v)
            if problem:
                raise f.error(yaml_name, f"{what}: {problem}")
        fields[name] = frozenset(values)
    f.done()
    return Conditions(**fields)


def _check_value(yaml_name: str, value: str) -> str | None:
    allowed = {"class": CLASSES, "kinds": PERSONAL_COMMUNICATIONS_KINDS, "price": PRICES,
               "anonymizer": ANONYMIZER_FLAGS}.get(yaml_name)
    if allowed is not None and value not in allowed:
        return f"{yaml_name} {value!r} is not one of {', '.join(allowed)}"
    if yaml_name == "eccn" and not is_eccn(value):
        return f"eccn {value!r} is not an ECCN (like 5D992.c), EAR99 or not-subject-to-ear"
    return None


def parse_destinations(values: Any, *, file: str, line: int | None, what: str,
                       allow_any: bool = True) -> frozenset[str]:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{what}: destinations must be a non-empty list of ISO 3166 codes", file=file, line=line)
    result = set()
    for v in values:
        if allow_any and v == "*":
            result.add("*")
            continue
        problem = iso3166.check_code(v)
        if problem:
            raise ConfigError(f"{what}: {problem}", file=file, line=line)
        result.add(v)
    return frozenset(result)
