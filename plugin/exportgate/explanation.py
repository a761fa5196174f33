"""What ``exportgate classify --explain`` shows: every rule that matched a path, and why the winner won.

:meth:`exportgate.catalog.Catalog.explain` returns an :class:`Explanation`: the package names read from the
path, each matching :class:`Match` in precedence order (the winner first, every other one with the reason it
lost), and the resulting classification. ``to_dict()`` is the ``--json`` form, ``lines()`` the text form that
docs/classification-manifest.md quotes; :func:`describe_classification` is the one-line summary of a
classification both use.

Caveat: an explanation is computed apart from ``classify`` (it tries every candidate glob on its own, not the
index's alternations), so it is for people and tests, not for the request path. Its ``classification`` is
taken from ``classify`` itself, so it always shows what the gate would apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .classification import Classification
from .manifest import Rule


@dataclass(frozen=True, slots=True, kw_only=True)
class Match:
    """One rule that matched a path, as :meth:`~exportgate.catalog.Catalog.explain` lists it."""

    rule: Rule
    tier: str
    """One of :data:`~exportgate.catalog.TIER_NAMES`."""

    via: tuple[str, str] | None
    """For package rules: the ``(ecosystem, name)`` read from the path that the rule matched."""

    won: bool
    lost_because: str | None
    """Why the winner beat this rule (``None`` for the winner)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.where,
            "matcher": self.rule.matcher,
            "tier": self.tier,
            "via": list(self.via) if self.via else None,
            "won": self.won,
            "lost_because": self.lost_because,
            "classification": self.rule.classification.to_dict(),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Explanation:
    """Every rule that matched a path, in precedence order, and the resulting classification."""

    path: str
    packages: tuple[tuple[str, str], ...]
    """The ``(ecosystem, name)`` candidates read from the path, best first."""

    matches: tuple[Match, ...]
    """Winner first; empty when the path is unclassified."""

    classification: Classification
    """Exactly what :meth:`~exportgate.catalog.Catalog.classify` returns for the path."""

    manifest: str | None

    @property
    def winner(self) -> Match | None:
        return self.matches[0] if self.matches else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "manifest": self.manifest,
            "packages": [{"ecosystem": e, "name": n} for e, n in self.packages],
            "classification": self.classification.to_dict(),
            "matches": [m.to_dict() for m in self.matches],
        }

    def lines(self) -> list[str]:
        out = [self.path, f"  manifest: {self.manifest or 'none configured'}"]
        names = ", ".join(f"{e} {n}" for e, n in self.packages) or "none"
        out.append(f"  package names read from the path: {names}")
        if not self.matches:
            out.append("  no rule matched: unclassified (the policy pack decides what unclassified gets)")
            return out
        out.append(f"  classified as {describe_classification(self.classification)}")
        for i, m in enumerate(self.matches, 1):
            via = f" via {m.via[0]} {m.via[1]}" if m.via else ""
            out.append(f"  {i}. {m.rule.where} {m.rule.matcher} [{m.tier}{via}]"
                       + (" <- wins" if m.won else f" - loses: {m.lost_because}"))
        return out


def describe_classification(c: Classification) -> str:
    """``personal-communications (instant-messaging), eccn 5D992.c, no-cost, publicly available``."""
    if not c.classified:
        return "unclassified"
    parts = [f"{c.category}" + (f" ({', '.join(c.kinds)})" if c.kinds else "")]
    if c.eccn:
        parts.append(f"eccn {c.eccn}")
    if c.price:
        parts.append(c.price)
    if c.publicly_available is not None:
        parts.append("publicly available" if c.publicly_available else "not publicly available")
    return ", ".join(parts)
