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

Speed: exact paths and package names are dict lookups. Globs are translated to regular expressions that run in
time linear in the path (each ``*``/``**`` commits to the earliest match of what follows), filed in a tree by
their literal leading directories and, within a directory, by a later segment without wildcards or by the
literal start or end of the file name; each bucket is one alternation in precedence order. A request costs a
few dict lookups and regex matches however many rules there are, and results are cached per path (bounded LRU;
paths over 1 KiB are not cached). Only globs with no literal text to file them by (``/*/*``) are tried on every
request.

Caveat: matching is on the path as the web layer normalised it. If the origin resolves paths differently (case,
``//``, encoded slashes), configure the web layer and ``case_sensitive`` to match the origin, or a rule can be
sidestepped. An unmatched artifact is unclassified, and the policy pack decides what that gets.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import yamlfile
from .classification import (
    CLASSES,
    KNOWN_ECCNS,
    PERSONAL_COMMUNICATIONS,
    PERSONAL_COMMUNICATIONS_KINDS,
    PRICES,
    UNCLASSIFIED,
    Classification,
)
from .errors import ConfigError, ConfigErrors
from .packagenames import ECOSYSTEMS, normalize_name, package_of

EXACT, PACKAGE_IN_ECOSYSTEM, PACKAGE_ANY_ECOSYSTEM, GLOB = 0, 1, 2, 3
TIER_NAMES = ("exact path", "package name for its ecosystem", "package name for any ecosystem", "path glob")
_TIER_PHRASES = ("an exact path", "a package rule for this ecosystem", "a package rule for any ecosystem",
                 "a path glob")

# Same shape as policy conditions accept (conditions._ECCN_SHAPE), without empty paragraphs like "5D002..".
_ECCN_SHAPE = re.compile(r"[0-9][A-E][0-9]{3}(?:\.[a-z0-9]+)*")
_TOP_KEYS = ("manifest", "version", "artifacts")
_RULE_KEYS = ("package", "ecosystem", "path", "class", "kinds", "eccn", "price", "publicly_available", "note")
# Paths longer than this are classified but not cached: an attacker sending long unique paths must not be able
# to pin megabytes in the cache.
_CACHE_MAX_PATH = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One manifest rule: what it matches and the classification it gives."""

    file: str
    """The manifest file the rule is in."""

    line: int
    """Line of the rule in that file."""

    classification: Classification
    """What the rule says; the very object :meth:`Catalog.classify` returns when the rule wins."""

    package: str | None = None
    """The package name as written (a package rule), else ``None``."""

    ecosystem: str | None = None
    """For package rules: the ecosystem the name is restricted to; ``None`` means any."""

    path: str | None = None
    """The path glob as written (a path rule), else ``None``."""

    @property
    def matcher(self) -> str:
        """``package signal-desktop``, ``package signal-desktop in pypi`` or ``path /downloads/**``."""
        if self.package is not None:
            return f"package {self.package}" + (f" in {self.ecosystem}" if self.ecosystem else "")
        return f"path {self.path}"

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class _Glob:
    """A compiled path glob and its specificity."""

    source: str
    """Regular expression source, anchored at the end (use with ``match``)."""
    literals: int
    double_stars: int
    wildcards: int
    literal_prefix: tuple[str, ...]
    """Leading directories without wildcards: where the glob sits in the index tree."""
    last_head: str
    """Literal characters the last segment starts with ("" if none, or if the glob ends with ``**``)."""
    last_tail: str
    """Literal characters the last segment ends with (likewise)."""
    key_segment: str | None
    """The longest segment without wildcards after ``literal_prefix``, if any: every path the glob matches has
    a segment equal to it."""

    @property
    def exact(self) -> bool:
        return self.wildcards == 0 and self.double_stars == 0


def compile_glob(glob: str) -> _Glob:
    """Translate one path glob; raises ``ValueError`` with a message for the manifest author.

    Only the translation: the catalog compiles one alternation per index node, not a regex per glob.
    """
    if not glob:
        raise ValueError("path is empty")
    if not glob.startswith("/"):
        raise ValueError(f"path {glob!r} must start with / (it is matched against the request path)")
    if any(c < " " or c == "\x7f" for c in glob):
        raise ValueError(f"path {glob!r} contains a control character")
    segments: list[list[str | None] | None] = []  # None: a "**" segment; in a segment, None is a "*"
    literals = glob.count("/")
    double_stars = wildcards = 0
    prefix: list[str] = []
    prefix_open = True
    head = tail = ""
    key_segment: str | None = None
    for text in glob[1:].split("/"):
        head = tail = ""
        if text == "**":
            prefix_open = False
            if segments and segments[-1] is None:
                continue  # "/**/**/" means the same as "/**/"
            segments.append(None)
            double_stars += 1
            continue
        if "**" in text:
            raise ValueError(f"path {glob!r}: ** must be a whole segment (/a/**/b); use * inside a segment")
        tokens, raw, lit, wild = _segment_tokens(text, glob)
        wild_at = [i for i, c in enumerate(raw) if c is None]
        head = text if not wild_at else "".join(c or "" for c in raw[:wild_at[0]])
        tail = text if not wild_at else "".join(c or "" for c in raw[wild_at[-1] + 1:])
        literals += lit
        wildcards += wild
        segments.append(tokens)
        if prefix_open and wild == 0:
            prefix.append(text)
            continue
        prefix_open = False
        if wild == 0 and (key_segment is None or len(text) > len(key_segment)):
            key_segment = text
    if prefix_open:
        prefix.pop()  # an exact path: no glob index entry needed, but keep the invariant "prefix < whole"
    source = "/" + _glob_regex(segments) + r"\Z"
    return _Glob(source, literals, double_stars, wildcards, tuple(prefix), head, tail, key_segment)


def _segment_tokens(text: str, glob: str) -> tuple[list[str | None], list[str | None], int, int]:
    """Regex pieces (``None`` for ``*``), the raw characters (``None`` for any wildcard), and the counts."""
    tokens: list[str | None] = []
    raw: list[str | None] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "*":
            tokens.append(None)
            i += 1
        elif c == "?":
            tokens.append("[^/]")
            i += 1
        elif c == "[":
            cls, i = _char_class(text, i, glob)
            tokens.append(cls)
        else:
            tokens.append(re.escape(c))
            raw.append(c)
            i += 1
            continue
        raw.append(None)
    wildcards = raw.count(None)
    return tokens, raw, len(raw) - wildcards, wildcards


def _char_class(text: str, start: int, glob: str) -> tuple[str, int]:
    i = start + 1
    negate = i < len(text) and text[i] in "!^"
    i += negate
    items: list[str] = []
    first = True
    while True:
        if i >= len(text):
            raise ValueError(f"path {glob!r}: unclosed [ (write [[] for a literal [; a set cannot hold /)")
        c = text[i]
        if c == "]" and not first:
            i += 1
            break
        first = False
        if i + 2 < len(text) and text[i + 1] == "-" and text[i + 2] != "]":
            lo, hi = c, text[i + 2]
            if lo > hi:
                raise ValueError(f"path {glob!r}: range {lo}-{hi} is backwards")
            if not negate and lo <= "/" <= hi:
                raise ValueError(f"path {glob!r}: range {lo}-{hi} includes /, which a set never matches")
            items.append(f"{re.escape(lo)}-{re.escape(hi)}")
            i += 3
        else:
            items.append(re.escape(c))
            i += 1
    # A negated set must still not match "/": one glob segment is one path segment.
    return ("[^/" if negate else "[") + "".join(items) + "]", i


def _segment_regex(tokens: list[str | None]) -> str:
    """One segment. Each ``*`` commits to the earliest match of the text after it (an atomic group): within one
    segment that is always a correct choice, and it keeps matching linear instead of exponential in the number
    of stars, whatever the request path."""
    chunks: list[list[str]] = [[]]
    for token in tokens:
        if token is None:
            chunks.append([])
        else:
            chunks[-1].append(token)
    out = "".join(chunks[0])
    if len(chunks) == 1:
        return out
    for chunk in chunks[1:-1]:
        out += "(?>[^/]*?" + "".join(chunk) + ")"
    last = "".join(chunks[-1])
    return out + ("(?>[^/]*?" + last + "(?![^/]))" if last else "[^/]*+")


def _glob_regex(segments: list[list[str | None] | None]) -> str:
    """Segments after the leading "/".

    A ``**`` between groups of segments skips whole segments and, like ``*`` within a segment, commits to the
    earliest place the next group matches (correct for the same reason, one level up). The group after the
    last ``**`` has a fixed number of segments and must end the path, so it can only start at one place: jump
    there from the end (greedy ``.*/`` backs off to the right slash) instead of trying every segment, which
    keeps ``/**/x`` cheap on paths with thousands of segments. A trailing ``**`` takes the rest.
    """
    groups: list[list[list[str | None]]] = [[]]
    for segment in segments:
        if segment is None:
            groups.append([])
        else:
            groups[-1].append(segment)
    head = "/".join(_segment_regex(s) for s in groups[0])
    if len(groups) == 1:
        return head
    out = head + "/" if groups[0] else ""
    for group in groups[1:-1]:
        out += "(?>(?:[^/]*/)*?" + "/".join(_segment_regex(s) for s in group) + "/)"
    last = groups[-1]
    if not last:
        return out + ".*"
    slashes = "(?:/[^/]*)" + (f"{{{len(last) - 1}}}" if len(last) > 2 else "") if len(last) > 1 else ""
    return out + f"(?>(?:.*/)?(?=[^/]*{slashes}\\Z))" + "/".join(_segment_regex(s) for s in last)


_Entry = tuple[int, Rule, _Glob]  # (rank: 0 is the most specific glob, the rule, its glob)


@dataclass(slots=True)
class _Group:
    """Globs tried together as one alternation in rank order: the first alternative that matches is the best."""

    entries: list[_Entry] = field(default_factory=list)
    regex: re.Pattern[str] | None = None

    def compile(self) -> None:
        self.regex = re.compile("|".join(f"({g.source})" for _, _, g in self.entries), re.DOTALL)


@dataclass(slots=True)
class _Node:
    """The globs whose literal leading directories lead here, split by a segment without wildcards further on,
    or else by the literal start or end of their last segment, so a request only tries globs that can match."""

    children: dict[str, _Node] = field(default_factory=dict)
    anywhere: _Group = field(default_factory=_Group)
    by_segment: dict[str, _Group] = field(default_factory=dict)
    by_head: dict[str, _Group] = field(default_factory=dict)
    by_tail: dict[str, _Group] = field(default_factory=dict)
    head_lengths: tuple[int, ...] = ()
    tail_lengths: tuple[int, ...] = ()

    def add(self, entry: _Entry) -> None:
        glob = entry[2]
        if glob.key_segment is not None:
            self.by_segment.setdefault(glob.key_segment, _Group()).entries.append(entry)
        elif glob.last_head and len(glob.last_head) >= len(glob.last_tail):  # the longer literal is the rarer
            self.by_head.setdefault(glob.last_head, _Group()).entries.append(entry)
        elif glob.last_tail:
            self.by_tail.setdefault(glob.last_tail, _Group()).entries.append(entry)
        else:
            self.anywhere.entries.append(entry)

    def finish(self) -> None:
        for group in (self.anywhere, *self.by_segment.values(), *self.by_head.values(), *self.by_tail.values()):
            if group.entries:
                group.compile()
        self.head_lengths = tuple(sorted({len(k) for k in self.by_head}))
        self.tail_lengths = tuple(sorted({len(k) for k in self.by_tail}))
        for child in self.children.values():
            child.finish()

    def groups(self, segments: list[str], out: list[_Group]) -> None:
        """Append the groups that may match a path made of ``segments``."""
        if self.anywhere.regex is not None:
            out.append(self.anywhere)
        if self.by_segment:
            # set intersection runs in C: linear in the path, however many segment keys there are
            for segment in self.by_segment.keys() & set(segments):
                out.append(self.by_segment[segment])
        name = segments[-1]
        n = len(name)
        for length in self.head_lengths:
            if length > n:
                break
            group = self.by_head.get(name[:length])
            if group is not None:
                out.append(group)
        for length in self.tail_lengths:
            if length > n:
                break
            group = self.by_tail.get(name[n - length:])
            if group is not None:
                out.append(group)


@dataclass(slots=True)
class _Hit:
    rule: Rule
    tier: int
    order: tuple[int, ...]
    via: tuple[str, str] | None = None
    glob: _Glob | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Match:
    """One rule that matched a path, as :meth:`Catalog.explain` lists it."""

    rule: Rule
    tier: str
    """One of :data:`TIER_NAMES`."""

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
    """Exactly what :meth:`Catalog.classify` returns for the path."""

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
        self._root = _Node()
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
        return path if self.case_sensitive else path.lower()

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
        best: tuple[int, Rule] | None = None
        for group in self._glob_groups(key):
            m = group.regex.match(key)  # type: ignore[union-attr]
            if m is not None:
                rank, rule, _ = group.entries[m.lastindex - 1]  # type: ignore[operator]
                if best is None or rank < best[0]:
                    best = (rank, rule)
        return best[1].classification if best is not None else self.unclassified

    def _glob_groups(self, key: str) -> list[_Group]:
        """The glob groups that may match ``key``: down the tree by literal directories, then by file name."""
        groups: list[_Group] = []
        if not self._has_globs:
            return groups
        segments = key.split("/")
        node = self._root
        node.groups(segments, groups)
        for segment in segments[1:-1]:
            child = node.children.get(segment)
            if child is None:
                break
            node = child
            node.groups(segments, groups)
        return groups

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
        for group in self._glob_groups(key):
            for rank, rule, glob in group.entries:
                if re.match(glob.source, key, re.DOTALL):  # explain is off the request path: re's cache will do
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

        globs: list[tuple[tuple[int, ...], Rule, _Glob]] = []
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
                errors.append(ConfigError(_bad_name(rule.package or "", rule.ecosystem), file=rule.file,
                                          line=rule.line))
                continue
            scope = "in" if rule.ecosystem else "any"
            if all(claim((scope, *k), rule) for k in keys):
                for k in keys:
                    (self._in_ecosystem if rule.ecosystem else self._any_ecosystem)[k] = rule
        globs.sort(key=lambda g: g[0])
        for rank, (_, rule, glob) in enumerate(globs):
            node = self._root
            for segment in glob.literal_prefix:
                node = node.children.setdefault(segment, _Node())
            node.add((rank, rule, glob))
        self._root.finish()
        self._has_globs = bool(globs)
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


def _bad_name(name: str, ecosystem: str | None) -> str:
    hint = " (package names are exact; use path for a pattern)" if any(c in name for c in "*?[") else ""
    if ecosystem:
        return f"package {name!r} is not a valid {ecosystem} package name{hint}"
    return f"package {name!r} is not a valid package name in any ecosystem ({', '.join(ECOSYSTEMS)}){hint}"


# ---------------------------------------------------------------------------------------------------------------
# Reading the manifest


def load_catalog(path: str | Path, *, case_sensitive: bool = True, cache_size: int = 16384) -> Catalog:
    """Read, validate and compile a manifest. Every fault found is reported at once as :class:`ConfigErrors`."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigErrors([ConfigError("manifest file not found", file=file)]) from None
    except IsADirectoryError:
        raise ConfigErrors([ConfigError("is a directory, expected a manifest (YAML)", file=file)]) from None
    except OSError as exc:
        raise ConfigErrors([ConfigError(f"cannot read: {exc.strerror}", file=file)]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigErrors([ConfigError(f"not UTF-8 text ({exc.reason})", file=file)]) from None
    return parse_catalog(text, file=file, case_sensitive=case_sensitive, cache_size=cache_size)


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
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    try:
        doc = yamlfile.loads(text, file)
    except ConfigError as exc:
        raise ConfigErrors([exc]) from None
    errors: list[ConfigError] = []
    if not isinstance(doc, dict):
        what = "empty" if doc is None else f"a {type(doc).__name__}"
        raise ConfigErrors([ConfigError(f"the manifest is {what}; expected a mapping with keys "
                                        f"{', '.join(_TOP_KEYS)}", file=file, line=getattr(doc, "line", 1))])
    f = yamlfile.Fields(doc, file=file, what="manifest")
    _unknown_keys(f, _TOP_KEYS, errors)
    name = _attempt(errors, lambda: f.str("manifest"))
    if name is not None and not name.strip():
        errors.append(f.error("manifest", "manifest: the name must not be empty"))
    version = _attempt(errors, lambda: _version(f))
    artifacts = _attempt(errors, lambda: f.list("artifacts"))
    ident = f"{name} v{version} sha256:{digest[:12]}"
    rules: list[Rule] = []
    if isinstance(artifacts, yamlfile.Sequence):
        for i, item in enumerate(artifacts):
            rule = _rule(item, artifacts.line_of(i), file, ident, errors)
            if rule is not None:
                rules.append(rule)
    elif artifacts is not None:
        errors.append(f.error("artifacts", "manifest: artifacts must be a list of rules"))
    catalog: Catalog | None = None
    try:
        catalog = Catalog(rules, manifest=ident, case_sensitive=case_sensitive, cache_size=cache_size)
    except ConfigErrors as exc:
        errors.extend(exc.errors)
    if errors or catalog is None:
        raise ConfigErrors(sorted(errors, key=lambda e: e.line or 0))
    return catalog


def _attempt(errors: list[ConfigError], read: Any) -> Any:
    try:
        return read()
    except ConfigError as exc:
        errors.append(exc)
        return None


def _unknown_keys(f: yamlfile.Fields, known: tuple[str, ...], errors: list[ConfigError]) -> None:
    for key in f.map:
        if key not in known:
            errors.append(f.error(key, f"{f.what}: unknown key {key!r} (known keys: {', '.join(known)})"))


def _version(f: yamlfile.Fields) -> str:
    value = f.raw("version")
    if value is None:
        raise f.error(None, "manifest: missing required key 'version' (a number or text, e.g. 7 or 2024.02)")
    if hasattr(value, "isoformat") and not isinstance(value, str):  # an unquoted date: keep it as written
        return str(value.isoformat())
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or not str(value).strip():
        raise f.error("version", f"manifest: version must be a number or text, got {value!r}")
    return str(value)


def _rule(item: Any, line: int, file: str, ident: str, errors: list[ConfigError]) -> Rule | None:
    before = len(errors)
    try:
        f = yamlfile.Fields(item, file=file, what="artifact", line=line)
    except ConfigError as exc:
        errors.append(exc)
        return None
    _unknown_keys(f, _RULE_KEYS, errors)
    package = _attempt(errors, lambda: f.str("package", required=False))
    path = _attempt(errors, lambda: f.str("path", required=False))
    ecosystem = _attempt(errors, lambda: f.str("ecosystem", required=False, choices=ECOSYSTEMS))
    if f.has("package") and f.has("path"):
        errors.append(ConfigError("artifact: give either package or path, not both", file=file, line=line))
    elif not f.has("package") and not f.has("path"):
        errors.append(ConfigError("artifact: needs package (a package name) or path (a path glob)",
                                  file=file, line=line))
    if ecosystem is not None and f.has("path"):
        errors.append(f.error("ecosystem", "artifact: ecosystem applies to package rules only"))
    if package is not None and not package.strip():
        errors.append(f.error("package", "artifact: package is empty"))
    elif package is not None and not any(normalize_name(e, package) for e in ((ecosystem,) if ecosystem else
                                                                                   ECOSYSTEMS)):
        errors.append(f.error("package", f"artifact: {_bad_name(package, ecosystem)}"))
    if path is not None:
        try:
            compile_glob(path)
        except ValueError as exc:
            errors.append(f.error("path", f"artifact: {exc}"))
    category = _attempt(errors, lambda: f.str("class", choices=CLASSES))
    kinds = _attempt(errors, lambda: _kinds(f, category))
    eccn = _attempt(errors, lambda: _eccn(f))
    price = _attempt(errors, lambda: f.str("price", required=False, choices=PRICES))
    public = _attempt(errors, lambda: f.bool("publicly_available", required=False))
    note = _attempt(errors, lambda: f.str("note", required=False))
    if len(errors) > before:
        return None
    matcher = Rule(file=file, line=line, package=package, ecosystem=ecosystem, path=path,
                   classification=UNCLASSIFIED).matcher
    return Rule(
        file=file, line=line, package=package, ecosystem=ecosystem, path=path,
        classification=Classification(
            classified=True, category=category, kinds=kinds, eccn=eccn, price=price, publicly_available=public,
            note=note or "", manifest=ident, rule=f"{file}:{line} ({matcher})",
        ),
    )


def _kinds(f: yamlfile.Fields, category: str | None) -> tuple[str, ...]:
    raw = f.list("kinds", required=False)
    if category == PERSONAL_COMMUNICATIONS and not raw:
        raise f.error("kinds" if f.has("kinds") else "class",
                      f"artifact: class {PERSONAL_COMMUNICATIONS} needs kinds: one or more of "
                      f"{', '.join(PERSONAL_COMMUNICATIONS_KINDS)}")
    if raw is None:
        return ()
    if category != PERSONAL_COMMUNICATIONS:
        raise f.error("kinds", f"artifact: kinds apply only to class {PERSONAL_COMMUNICATIONS}")
    kinds: list[str] = []
    for value in raw:
        if value not in PERSONAL_COMMUNICATIONS_KINDS:
            raise f.error("kinds", f"artifact: kind {value!r} is not one of "
                                   f"{', '.join(PERSONAL_COMMUNICATIONS_KINDS)}")
        if value in kinds:
            raise f.error("kinds", f"artifact: kind {value!r} is listed twice")
        kinds.append(value)
    return tuple(kinds)


def _eccn(f: yamlfile.Fields) -> str | None:
    value: str | None = f.str("eccn", required=False)
    if value is None or value in KNOWN_ECCNS or _ECCN_SHAPE.fullmatch(value):
        return value
    close = [k for k in KNOWN_ECCNS if k.lower() == value.lower().strip()]
    hint = f"; did you mean {close[0]}?" if close else ""
    raise f.error("eccn", f"artifact: eccn {value!r} is not an ECCN (like 5D992.c or 4D994), EAR99 or "
                          f"not-subject-to-ear{hint}")
