"""The glob index of a catalog: which of many path globs can match a request path, found in a few lookups.

:class:`GlobIndex` is built once from the manifest's globs in rank order (0 is the one that wins over all
others; the ranking is the catalog's precedence, not the index's business). It files each glob in a tree by
its literal leading directories (:attr:`~exportgate.globs.Glob.literal_prefix`) and, within a directory, by
a later segment without wildcards, or else by the literal start or end of its file name. Each bucket is one
compiled alternation in rank order, so the first alternative that matches is that bucket's best. A request
walks down the tree along its own directories, picks the buckets its segments and file name select, and runs
one regex per bucket: a few dict lookups and regex matches however many globs there are.

Caveat: globs with no literal text to file them by (``/*/*``, ``/**/*``) sit in a bucket tried on every
request below their directory; a manifest full of them is as slow as trying each glob in turn. The index only
narrows the candidates, and must never leave out a glob that could match: tests/unit/test_catalog_properties.py
checks that against a naive loop over every rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .globs import Glob
from .manifest import Rule

_Entry = tuple[int, Rule, Glob]  # (rank: 0 is the most specific glob, the rule, its glob)


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


class GlobIndex:
    """Globs filed for :meth:`best` (the per-request call) and :meth:`matches` (for explanations)."""

    __slots__ = ("_root", "_size")

    def __init__(self, ranked: Iterable[tuple[Rule, Glob]] = ()) -> None:
        """``ranked``: ``(rule, glob)`` pairs, the glob that wins over all others first."""
        self._root = _Node()
        self._size = 0
        for rank, (rule, glob) in enumerate(ranked):
            node = self._root
            for segment in glob.literal_prefix:
                node = node.children.setdefault(segment, _Node())
            node.add((rank, rule, glob))
            self._size += 1
        self._root.finish()

    def __len__(self) -> int:
        return self._size

    def best(self, key: str) -> Rule | None:
        """The rule of the best-ranked glob that matches ``key``, or None."""
        best: tuple[int, Rule] | None = None
        for group in self._groups(key):
            m = group.regex.match(key)  # type: ignore[union-attr]
            if m is not None:
                rank, rule, _ = group.entries[m.lastindex - 1]  # type: ignore[operator]
                if best is None or rank < best[0]:
                    best = (rank, rule)
        return best[1] if best is not None else None

    def matches(self, key: str) -> list[_Entry]:
        """Every ``(rank, rule, glob)`` that matches ``key``, in no particular order."""
        return [
            (rank, rule, glob)
            for group in self._groups(key)
            for rank, rule, glob in group.entries
            if re.match(glob.source, key, re.DOTALL)  # off the request path: re's own cache will do
        ]

    def _groups(self, key: str) -> list[_Group]:
        """The groups that may match ``key``: down the tree by literal directories, then by file name."""
        groups: list[_Group] = []
        if not self._size:
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
