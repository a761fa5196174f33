"""The classification manifest: which artifacts are what, by package name or by path glob.

Release engineers tag artifacts in a YAML manifest (docs/classification-manifest.md); :func:`load_catalog`
validates it and compiles it into a :class:`Catalog`, whose ``classify(path)`` answers with the
:class:`~exportgate.classification.Classification` of the rule that wins for that request path (or the
unclassified value when none matches). ``explain(path)`` lists every rule that matched and why the winner won.

Precedence, highest first, always the same whatever the order of the file:

1. **exact path** — a ``path`` without wildcards, equal to the request path;
2. **package name for this ecosystem** — a ``package`` rule with ``ecosystem`` set, matching a name read from
   the path (:func:`~exportgate.packagenames.package_of`);
3. **package name for any ecosystem** — a ``package`` rule without ``ecosystem``;
4. **path globs**, most specific first: more literal characters, then fewer ``**``, then fewer other wildcards,
   then earlier in the file.

Within 2 and 3, when a path names several packages (a ``.deb`` names its binary package and, through the pool
directory, its source package), the file's own name comes first. Package names beat globs because a name is the
release engineer's statement about *what* the artifact is, wherever a mirror puts it (PyPI serves files under
hash directories nobody writes globs for); globs are the net for downloads with no package name. To override a
package rule for one file, write its exact path.

Globs: ``*`` (any characters within a segment), ``**`` (a whole segment: any number of segments; ``/a/**`` is
everything under ``/a/``), ``?`` (one character), ``[abc]``/``[a-z]``/``[!abc]`` (one character of a set; never
``/``). No escapes: write ``[*]``, ``[?]``, ``[[]`` for literal ``*``, ``?``, ``[``.

Speed: exact paths and package names are dict lookups; globs are translated to regular expressions that run in
time linear in the path (:mod:`exportgate.globs`) and filed in an index (:mod:`exportgate.globindex`), so a
request costs a few dict lookups and regex matches however many rules there are. Results are cached per path
(bounded LRU; paths over 1 KiB are not cached). Reading and checking the YAML is :mod:`exportgate.manifest`;
what ``explain`` returns is :mod:`exportgate.explanation`; the names callers import from those modules are
re-exported here.

Caveat: matching is on the path as the web layer normalised it. If the origin resolves paths differently (case,
``//``, encoded slashes), configure the web layer and ``case_sensitive`` to match the origin, or a rule can be
sidestepped. An unmatched artifact is unclassified, and the policy pack decides what that gets.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .casefolding import fold_case
from .classification import UNCLASSIFIED, Classification
from .errors import ConfigError, ConfigErrors
from .explanation import Explanation, Match, describe_classification
from .globindex import GlobIndex
from .globs import Glob, compile_glob
from .manifest import RULE_KEYS as _RULE_KEYS  # noqa: F401  (tests check the manual names every key)
from .manifest import TOP_KEYS as _TOP_KEYS  # noqa: F401
from .manifest import Rule, bad_package_name, read_manifest_file, read_rules
from .packagenames import ECOSYSTEMS, normalize_name, package_of

__all__ = [
    "TIER_NAMES",
    "Catalog",
    "Explanation",
    "Match",
    "Rule",
    "check_catalog",
    "compile_glob",
    "describe_classification",
    "load_catalog",
    "parse_catalog",
]

EXACT, PACKAGE_IN_ECOSYSTEM, PACKAGE_ANY_ECOSYSTEM, GLOB = 0, 1, 2, 3
TIER_NAMES = ("exact path", "package name for its ecosystem", "package name for any ecosystem", "path glob")
_TIER_PHRASES = ("an exact path", "a package rule for this ecosystem", "a package rule for any ecosystem",
                 "a path glob")

# Paths longer than this are classified but not cached: an attacker sending long unique paths must not be able
# to pin megabytes in the cache.
_CACHE_MAX_PATH = 1024


@dataclass(slots=True)
class _Hit:
    rule: Rule
    tier: int
    order: tuple[int, ...]
    via: tuple[str, str] | None = None
    glob: Glob | None = None


class Catalog:
    """Compiled manifest rules; ``classify(path)`` is the per-request call.

    ``Catalog.empty()`` classifies nothing (no manifest configured). Build from a file with
    :func:`load_catalog`; building from :class:`Rule` objects directly is for tests and tools.
    """

    def __init__(self, rules: Iterable[Rule] = (), *, manifest: str | None = None, case_sensitive: bool = True,
                 cache_size: int = 16384) -> None:
        self.rules = tuple(rules)
        self.manifest = manifest
        self.case_sensitive = case_sensitive
        # Unclassified still says which manifest was consulted, so a record shows "not in manifest v7".
        self.unclassified = UNCLASSIFIED if manifest is None else Classification(classified=False, manifest=manifest)
        self._exact: dict[str, Rule] = {}
        self._in_ecosystem: dict[tuple[str, str], Rule] = {}
        self._any_ecosystem: dict[tuple[str, str], Rule] = {}
        self._globs = GlobIndex()
        errors = self._index()
        if errors:
            raise ConfigErrors(errors)
        self._has_packages = bool(self._in_ecosystem or self._any_ecosystem)
        self._cached = functools.lru_cache(maxsize=cache_size)(self._classify)

    @classmethod
    def empty(cls) -> Catalog:
        return cls()

    def __len__(self) -> int:
        return len(self.rules)

    def __repr__(self) -> str:
        return f"<Catalog {self.manifest or 'empty'}: {len(self.rules)} rules>"

    def describe(self) -> dict[str, Any]:
        """What ``exportgate check`` prints about the catalog."""
        globs = sum(1 for r in self.rules if r.path is not None) - len(self._exact)
        return {"manifest": self.manifest, "rules": len(self.rules), "exact_paths": len(self._exact),
                "package_rules": len(self.rules) - len(self._exact) - globs, "globs": globs,
                "case_sensitive": self.case_sensitive}

    def classify(self, path: str) -> Classification:
        """The classification of the artifact at ``path`` (a normalised request path)."""
        if len(path) > _CACHE_MAX_PATH:
            return self._classify(path)
        return self._cached(path)

    def cache_info(self) -> Any:
        return self._cached.cache_info()

    def _fold(self, path: str) -> str:
        return path if self.case_sensitive else fold_case(path)

    def _classify(self, path: str) -> Classification:
        key = self._fold(path)
        rule = self._exact.get(key)
        if rule is not None:
            return rule.classification
        if self._has_packages:
            candidates = package_of(key)
            for candidate in candidates:
                rule = self._in_ecosystem.get(candidate)
                if rule is not None:
                    return rule.classification
            for candidate in candidates:
                rule = self._any_ecosystem.get(candidate)
                if rule is not None:
                    return rule.classification
        rule = self._globs.best(key)
        return rule.classification if rule is not None else self.unclassified

    def explain(self, path: str) -> Explanation:
        """Every rule that matches ``path``, in precedence order, and why the winner beat each other one."""
        key = self._fold(path)
        candidates = package_of(key)
        hits: list[_Hit] = []
        rule = self._exact.get(key)
        if rule is not None:
            hits.append(_Hit(rule, EXACT, ()))
        for tier, index in ((PACKAGE_IN_ECOSYSTEM, self._in_ecosystem), (PACKAGE_ANY_ECOSYSTEM, self._any_ecosystem)):
            for position, candidate in enumerate(candidates):
                rule = index.get(candidate)
                if rule is not None:
                    hits.append(_Hit(rule, tier, (position,), via=candidate))
        for rank, rule, glob in self._globs.matches(key):
            hits.append(_Hit(rule, GLOB, (rank,), glob=glob))
        hits.sort(key=lambda h: (h.tier, h.order))
        unique: list[_Hit] = []
        for hit in hits:  # a rule found through two names counts once, at its best place
            if all(h.rule is not hit.rule for h in unique):
                unique.append(hit)
        matches = tuple(
            Match(rule=h.rule, tier=TIER_NAMES[h.tier], via=h.via, won=i == 0,
                  lost_because=None if i == 0 else _why(unique[0], h))
            for i, h in enumerate(unique)
        )
        return Explanation(path=path, packages=tuple(candidates), matches=matches,
                           classification=self.classify(path), manifest=self.manifest)

    def _index(self) -> list[ConfigError]:
        """Build the lookup structures; duplicate and contradictory matchers are errors."""
        errors: list[ConfigError] = []
        seen: dict[tuple[str, ...], Rule] = {}

        def claim(key: tuple[str, ...], rule: Rule) -> bool:
            other = seen.get(key)
            if other is None:
                seen[key] = rule
                return True
            errors.append(_conflict(rule, other))
            return False

        globs: list[tuple[tuple[int, ...], Rule, Glob]] = []
        for order, rule in enumerate(self.rules):
            if rule.path is not None:
                try:
                    glob = compile_glob(self._fold(rule.path))
                except ValueError as exc:
                    errors.append(ConfigError(str(exc), file=rule.file, line=rule.line))
                    continue
                if not claim(("path", self._fold(rule.path)), rule):
                    continue
                if glob.exact:
                    self._exact[self._fold(rule.path)] = rule
                else:
                    globs.append(((-glob.literals, glob.double_stars, glob.wildcards, order), rule, glob))
                continue
            name = self._fold(rule.package or "")
            ecosystems = (rule.ecosystem,) if rule.ecosystem else ECOSYSTEMS
            keys = [(e, n) for e in ecosystems if (n := normalize_name(e, name)) is not None]
            if not keys:
                errors.append(ConfigError(bad_package_name(rule.package or "", rule.ecosystem), file=rule.file,
                                          line=rule.line))
                continue
            scope = "in" if rule.ecosystem else "any"
            if all(claim((scope, *k), rule) for k in keys):
                for k in keys:
                    (self._in_ecosystem if rule.ecosystem else self._any_ecosystem)[k] = rule
        globs.sort(key=lambda g: g[0])  # rank 0: the glob that wins over every other
        self._globs = GlobIndex((rule, glob) for _, rule, glob in globs)
        return errors


def _why(winner: _Hit, loser: _Hit) -> str:
    if winner.tier != loser.tier:
        return f"{_TIER_PHRASES[winner.tier]} beats {_TIER_PHRASES[loser.tier]}"
    if winner.tier != GLOB:
        assert winner.via and loser.via
        return (f"the path names {winner.via[0]} {winner.via[1]} before {loser.via[0]} {loser.via[1]} "
                "(a file's own package comes before its source package)")
    w, lo = winner.glob, loser.glob
    assert w is not None and lo is not None
    if w.literals != lo.literals:
        return f"more literal characters ({w.literals} vs {lo.literals})"
    if w.double_stars != lo.double_stars:
        return f"fewer ** ({w.double_stars} vs {lo.double_stars})"
    if w.wildcards != lo.wildcards:
        return f"fewer wildcards ({w.wildcards} vs {lo.wildcards})"
    return f"equally specific, and earlier in the manifest (line {winner.rule.line} vs {loser.rule.line})"


def _facts(c: Classification) -> dict[str, Any]:
    return {"class": c.category, "kinds": sorted(c.kinds), "eccn": c.eccn, "price": c.price,
            "publicly_available": c.publicly_available}


def _conflict(rule: Rule, first: Rule) -> ConfigError:
    mine, theirs = _facts(rule.classification), _facts(first.classification)
    at = f"line {first.line}" if rule.file == first.file else first.where
    if mine == theirs:
        message = f"duplicate rule: {rule.matcher} is already classified the same way at {at}"
    else:
        diff = [k for k in mine if mine[k] != theirs[k]]
        said = ", ".join(f"{k} {theirs[k]}" for k in diff)
        says = ", ".join(f"{k} {mine[k]}" for k in diff)
        message = f"contradictory rule: {rule.matcher} is classified at {at} with {said}; this rule says {says}"
    if rule.matcher != first.matcher:
        message += f" (the same package as {first.matcher})"
    return ConfigError(message, file=rule.file, line=rule.line)


def load_catalog(path: str | Path, *, case_sensitive: bool = True, cache_size: int = 16384) -> Catalog:
    """Read, validate and compile a manifest. Every fault found is reported at once as :class:`ConfigErrors`."""
    text = read_manifest_file(path)
    return parse_catalog(text, file=str(path), case_sensitive=case_sensitive, cache_size=cache_size)


def check_catalog(path: str | Path, *, case_sensitive: bool = True) -> list[ConfigError]:
    """All faults of a manifest file (``[]`` when it is valid), for ``exportgate check``."""
    try:
        load_catalog(path, case_sensitive=case_sensitive, cache_size=0)
    except ConfigErrors as exc:
        return exc.errors
    return []


def parse_catalog(text: str, *, file: str = "<string>", case_sensitive: bool = True,
                  cache_size: int = 16384) -> Catalog:
    """Validate and compile manifest text; ``file`` is the name used in messages and in each rule."""
    ident, rules, errors = read_rules(text, file=file)
    catalog: Catalog | None = None
    try:
        catalog = Catalog(rules, manifest=ident, case_sensitive=case_sensitive, cache_size=cache_size)
    except ConfigErrors as exc:
        errors.extend(exc.errors)
    if errors or catalog is None:
        raise ConfigErrors(sorted(errors, key=lambda e: e.line or 0))
    return catalog
