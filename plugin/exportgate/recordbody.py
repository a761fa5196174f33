"""The decision record body as canonical JSON text, assembled from cached fragments.

Every download produces one record; encoding its ~1 KiB body from scratch is the largest cost of recording. Most
of it repeats: the policy outcome (action, rule, citation, pack, reasons) is shared by every request a rule
decides, and the locator and catalog hand out the same Location and Classification objects for the same address
and artifact. So those parts are encoded once and only the request facts are encoded per decision.

The result is byte for byte ``canonical_text(decision.to_record())`` (sorted keys, compact, UTF-8); a test holds
it to that. Caveat: caches are keyed by object identity and hold the object, so an id is never reused while its
entry lives; they are cleared when they grow past their bound.
"""

from __future__ import annotations

from typing import Any

import orjson

from .decision import Decision

_OPTIONS = orjson.OPT_SORT_KEYS


def _j(value: Any) -> str:
    return orjson.dumps(value, option=_OPTIONS).decode("utf-8")


class RecordEncoder:
    """Encodes the decisions of one gate. Safe from several threads: each dict operation is atomic, and a cache
    entry lost to a concurrent clear only costs one more encoding."""

    def __init__(self, max_entries: int = 131072) -> None:
        self.max_entries = max_entries
        self._outcomes: dict[tuple[object, ...], tuple[str, str, str, str]] = {}
        self._values: dict[int, tuple[object, str]] = {}

    def _value(self, value: Any) -> str:
        hit = self._values.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        if len(self._values) >= self.max_entries:
            self._values.clear()
        text = _j(value.to_dict())
        self._values[id(value)] = (value, text)
        return text

    def _frame(self, d: Decision) -> tuple[str, str, str, str]:
        key = (d.action, d.mode, d.rule, d.citation, d.authorization, d.pack, d.reasons)
        frame = self._outcomes.get(key)
        if frame is not None:
            return frame
        frame = (
            '{"action":' + _j(d.action) + ',"authorization":' + _j(d.authorization) + ',"citation":'
            + _j(d.citation) + ',"classification":',
            ',"enforced":' + _j(d.enforced_action) + ',"location":',
            ',"mode":' + _j(d.mode) + ',"pack":' + _j(d.pack.to_dict()) + ',"reasons":' + _j(list(d.reasons))
            + ',"request":',
            ',"rule":' + _j(d.rule) + "}",
        )
        if len(self._outcomes) >= self.max_entries:
            self._outcomes.clear()
        self._outcomes[key] = frame
        return frame

    def encode(self, decision: Decision) -> str:
        """Canonical JSON of ``decision.to_record()``."""
        a, b, c, d = self._frame(decision)
        return (a + self._value(decision.classification) + b + self._value(decision.location) + c
                + _j(decision.request.to_dict()) + d)
