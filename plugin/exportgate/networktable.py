"""Entries filed by IP network, found for an address with one dict lookup per prefix length.

:class:`NetworkTable` is what both the static :class:`~exportgate.overrides.Overrides` and the
per-build network cache of a MaxMind-format file (:mod:`exportgate.mmdbfile`) use: an address,
as an integer, shifted right by ``bits - prefix_len`` is the key of the network of that length
that would contain it. A lookup costs one dict probe per distinct prefix length stored, whatever
the number of networks — typically a handful.

Caveat: prefix lengths are probed in the order they were first added and the first hit wins.
Where stored networks can overlap (overrides), add the most specific ones first; where they
cannot (networks of one database tree), the order does not matter.
"""

from __future__ import annotations

from typing import Any


class NetworkTable:
    """Network -> entry, per IP version; ``find`` answers the first stored network holding it."""

    __slots__ = ("_count", "_rows")

    def __init__(self) -> None:
        # Per IP version: [(shift, {address >> shift: entry})], one dict per prefix length added.
        self._rows: dict[int, list[tuple[int, dict[int, Any]]]] = {4: [], 6: []}
        self._count = 0

    def __len__(self) -> int:
        """How many entries were added."""
        return self._count

    def add(self, version: int, value: int, prefix_len: int, entry: Any) -> None:
        """File ``entry`` under the network of ``prefix_len`` bits holding address ``value``.

        ``value`` may be any address in the network (the host bits are shifted away); ``entry``
        must not be ``None``, which :meth:`find` uses for "no network".
        """
        shift = (32 if version == 4 else 128) - prefix_len
        rows = self._rows[version]
        for row_shift, table in rows:
            if row_shift == shift:
                break
        else:
            table = {}
            rows.append((shift, table))
        table[value >> shift] = entry
        self._count += 1

    def find(self, version: int, value: int) -> Any:
        """The entry of the first stored network (in the order above) holding ``value``, or None."""
        for shift, table in self._rows[version]:
            entry = table.get(value >> shift)
            if entry is not None:
                return entry
        return None
