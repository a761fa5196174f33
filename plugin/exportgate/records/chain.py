"""Decision records and the hash chain that links them (pure: no I/O).

A :class:`Record` is ``(kind, id, at, body)`` plus its place in a chain: ``chain`` (which writer),
``seq`` (1, 2, 3, … without gaps), ``prev_hash`` (the hash of the record before it, or
:data:`GENESIS`) and ``hash``::

    hash = sha256(prev_hash + canonical({"chain", "seq", "kind", "id", "at", "body"})).hexdigest()

:func:`canonical` is the one serialisation everything hashes, stores and ships: JSON with sorted
keys, no whitespace, UTF-8, no NaN/infinity, string keys only. The records layer knows nothing of
policy: a body is whatever JSON object the caller hands in ("decision", "authorization", …).

Caveat: sha256 has no key. The chain shows that stored records were changed, removed or reordered
*relative to each other*; anyone able to write the store can append a well-formed record at the
tail, or rewrite a whole tail consistently. Saving chain heads elsewhere (see ``verify``) bounds
that.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from exportgate.errors import RecordStoreError

GENESIS = "0" * 64
"""The ``prev_hash`` of the first record of every chain."""

AT_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
"""The only form of ``Record.at``: UTC, microseconds, ``Z`` (so text order is time order)."""


def _refuse(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON (convert datetimes with format_time)")


# orjson: the decision body is encoded once per download, and the stdlib encoder with sort_keys costs ~10x more
# (~20 us for a 1 KiB decision body against ~2 us). Its compact, key-sorted, UTF-8 output is the same text as
# json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) for the values records hold (strings,
# ints, bools, None, lists, dicts); verify() hashes the stored text, so records stay verifiable either way.
# Datetimes, dataclasses and str/int subclasses are passed to _refuse rather than silently converted.
_ORJSON_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
_dumps = orjson.dumps


def _encode(obj: Any) -> str:
    return _dumps(obj, default=_refuse, option=_ORJSON_OPTIONS).decode("utf-8")


def canonical_text_trusted(obj: Any) -> str:
    """:func:`canonical_text` without the scan for non-finite floats and non-string keys.

    For bodies built by the gate itself from typed values that hold no floats (a decision's record): the scan
    costs more than the encoding. Anything else still fails (orjson refuses non-string keys and lone
    surrogates; unknown types go to ``_refuse``) with :class:`InvalidRecord`.
    """
    try:
        return _encode(obj)
    except (TypeError, ValueError, RecursionError, orjson.JSONEncodeError) as exc:
        raise InvalidRecord("body", f"not canonical JSON: {exc}") from None


_quote = json.encoder.encode_basestring
_at_ok = AT_PATTERN.fullmatch
_sha256 = hashlib.sha256


class InvalidRecord(RecordStoreError, ValueError):
    """A record cannot be sealed: its body is not canonical JSON or a field has the wrong form.

    A :class:`~exportgate.errors.RecordStoreError` because the consequence is the same — the
    record is not committed and the download must not be served.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"cannot record {field}: {reason}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One sealed entry of a chain."""

    chain: str
    """Which chain (one per writer instance), e.g. ``"gate-1:3f2a9c0b11d4"``."""

    seq: int
    """Position in the chain, from 1, without gaps."""

    kind: str
    """What the body is: ``"decision"``, ``"authorization"``, ``"revocation"``, …"""

    id: str
    """The caller's id for this record (a decision id, an authorization id)."""

    at: str
    """When, as UTC ISO 8601 with microseconds and ``Z`` (see :func:`format_time`)."""

    body: dict[str, Any]
    """The caller's JSON object."""

    prev_hash: str
    """``hash`` of the record before this one in the chain, or :data:`GENESIS`."""

    hash: str
    """sha256 hex over ``prev_hash`` and the canonical envelope (see the module docstring)."""

    body_json: str = field(default="", repr=False, compare=False)
    """``canonical(body)`` as text, exactly as hashed and stored ("" when built by hand).

    Kept because it is computed while sealing anyway, the store writes it as is, and a caller
    mutating ``body`` after sealing cannot make the stored text disagree with the hash.
    """

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict (what the JSON-lines sink writes)."""
        return {
            "chain": self.chain,
            "seq": self.seq,
            "kind": self.kind,
            "id": self.id,
            "at": self.at,
            "body": self.body,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def canonical(obj: Any) -> bytes:
    """The canonical JSON encoding of ``obj`` as UTF-8 bytes.

    Raises :class:`InvalidRecord` for NaN/infinity, non-JSON values (datetimes must already be
    strings), non-string keys, and strings that are not valid Unicode (lone surrogates).
    """
    return canonical_text(obj, "value").encode("utf-8")


def canonical_text(obj: Any, what: str = "body") -> str:
    """Like :func:`canonical` but returns text (what the store keeps)."""
    try:
        _check_keys(obj)
        text = _encode(obj)
        # Lone surrogates encode to JSON but not to UTF-8; find out now, not in the store.
        text.encode("utf-8")
    except InvalidRecord:
        raise
    except (TypeError, ValueError, RecursionError, orjson.JSONEncodeError) as exc:
        raise InvalidRecord(what, f"not canonical JSON: {exc}") from None
    return text


_SCALARS = {str, int, bool, type(None)}
_INFINITIES = (float("inf"), float("-inf"))


def _check_keys(obj: Any) -> None:
    # json would turn 1 into "1" and sort {10, 9} numerically: the stored text would then not
    # re-encode to the same bytes and verify() would report an untouched record as altered.
    # orjson writes NaN and infinities as null: refuse them here rather than store a lossy value.
    # A plain loop with exact type tests is the fastest form measured.
    if isinstance(obj, dict):
        for key, value in obj.items():
            if type(key) is not str and not isinstance(key, str):
                raise TypeError(f"key {key!r} is not a string")
            if type(value) not in _SCALARS:
                _check_value(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            if type(value) not in _SCALARS:
                _check_value(value)
    else:
        _check_value(obj)


def _check_value(value: Any) -> None:
    if isinstance(value, float):
        if value != value or value in _INFINITIES:
            raise ValueError(f"{value!r} is not a finite number")
    elif isinstance(value, (dict, list, tuple)):
        _check_keys(value)


# The last second formatted, as one (key, text) pair: replaced whole, so threads never see a half-updated entry.
_last_second: list[tuple[tuple[int, ...], str]] = [((), "")]


def format_time(when: datetime) -> str:
    """``when`` in the record form ``2026-11-29T03:04:05.000006Z``; naive datetimes are refused."""
    if when.tzinfo is not UTC:  # the gate's clock gives UTC: skip the conversion then (this runs per decision)
        if when.tzinfo is None or when.utcoffset() is None:
            raise InvalidRecord("at", f"naive datetime {when!r}: give a timezone (UTC)")
        when = when.astimezone(UTC)
    if when.year < 1000:
        return when.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    # Decisions within one second share its text: formatting only the microseconds halves the cost.
    key = (when.year, when.month, when.day, when.hour, when.minute, when.second)
    entry = _last_second[0]
    if entry[0] != key:
        entry = (key, when.isoformat()[:19])
        _last_second[0] = entry
    return f"{entry[1]}.{when.microsecond:06d}Z"


def check_fields(kind: str, id: str, at: str) -> None:
    """Raise :class:`InvalidRecord` unless kind/id are non-empty text and ``at`` is well-formed."""
    if type(kind) is not str or not kind:
        raise InvalidRecord("kind", f"expected a non-empty string, got {kind!r}")
    if type(id) is not str or not id:
        raise InvalidRecord("id", f"expected a non-empty string, got {id!r}")
    if type(at) is not str or _at_ok(at) is None:
        raise InvalidRecord("at", f"expected UTC like 2026-01-02T03:04:05.000006Z, got {at!r}")
    try:
        (kind + id).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRecord("id", f"not valid Unicode: {exc.reason}") from None


def record_hash(
    prev_hash: str, chain: str, seq: int, kind: str, id: str, at: str, body_json: str
) -> str:
    """The hash of a record, from its fields and its canonical body text.

    Builds ``canonical({"at", "body", "chain", "id", "kind", "seq"})`` by hand (keys in sorted
    order) so the body is encoded once per record, not twice.
    """
    return _hash_quoted(prev_hash, _quote(chain), seq, kind, id, at, body_json)


def _hash_quoted(
    prev_hash: str, chain_quoted: str, seq: int, kind: str, id: str, at: str, body_json: str
) -> str:
    envelope = (
        f'{prev_hash}{{"at":{_quote(at)},"body":{body_json},"chain":{chain_quoted},'
        f'"id":{_quote(id)},"kind":{_quote(kind)},"seq":{int(seq)}}}'
    )
    return _sha256(envelope.encode("utf-8")).hexdigest()


def make_record(
    chain: str,
    seq: int,
    kind: str,
    id: str,
    at: str,
    body: dict[str, Any],
    prev_hash: str,
    hash: str,
    body_json: str,
) -> Record:
    """``Record(...)`` without the frozen-dataclass ``__init__`` (a third of its cost).

    For sealing and reading back many records; the fields are set exactly as ``__init__`` would.
    """
    record = _new(Record)
    _set_chain(record, chain)
    _set_seq(record, seq)
    _set_kind(record, kind)
    _set_id(record, id)
    _set_at(record, at)
    _set_body(record, body)
    _set_prev_hash(record, prev_hash)
    _set_hash(record, hash)
    _set_body_json(record, body_json)
    return record


# The slot descriptors' setters: frozen dataclasses forbid setattr, not the descriptors.
_new = object.__new__
(
    _set_chain,
    _set_seq,
    _set_kind,
    _set_id,
    _set_at,
    _set_body,
    _set_prev_hash,
    _set_hash,
    _set_body_json,
) = (
    Record.__dict__[name].__set__
    for name in ("chain", "seq", "kind", "id", "at", "body", "prev_hash", "hash", "body_json")
)


class Chain:
    """The head of one chain: where the next record goes. Not thread-safe (one writer owns it).

    :meth:`seal` advances the head. A writer whose commit failed puts the head back with
    :meth:`rewind` so no later record links to one that was never stored.
    """

    __slots__ = ("_quoted", "chain_id", "next_seq", "prev_hash")

    def __init__(self, chain_id: str, prev_hash: str = GENESIS, next_seq: int = 1) -> None:
        if type(chain_id) is not str or not chain_id:
            raise InvalidRecord("chain", f"expected a non-empty string, got {chain_id!r}")
        try:
            chain_id.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidRecord("chain", f"not valid Unicode: {exc.reason}") from None
        self.chain_id = chain_id
        self._quoted = _quote(chain_id)
        self.prev_hash = prev_hash
        self.next_seq = next_seq

    def seal(self, kind: str, id: str, at: str, body: dict[str, Any]) -> Record:
        """Check the fields, encode the body and seal it as the next record of this chain."""
        check_fields(kind, id, at)
        if not isinstance(body, dict):
            raise InvalidRecord("body", f"expected a JSON object (dict), got {type(body).__name__}")
        return self.seal_checked(kind, id, at, body, canonical_text(body))

    def seal_checked(
        self, kind: str, id: str, at: str, body: dict[str, Any], body_json: str
    ) -> Record:
        """:meth:`seal` for fields already checked and a body already encoded (the writer's)."""
        seq = self.next_seq
        prev = self.prev_hash
        digest = _hash_quoted(prev, self._quoted, seq, kind, id, at, body_json)
        record = make_record(self.chain_id, seq, kind, id, at, body, prev, digest, body_json)
        self.prev_hash = digest
        self.next_seq = seq + 1
        return record

    def seal_many(self, items: Iterable[tuple[str, str, str, dict[str, Any], str]]) -> list[Record]:
        """:meth:`seal_checked` for each ``(kind, id, at, body, body_json)``, in order.

        The writer's loop, written out: it runs once per decision, and the function calls it
        saves are a measurable part of the per-record cost. ``at`` needs no JSON escaping here
        because :func:`check_fields` admitted only digits, ``-:.TZ``.
        """
        chain_id = self.chain_id
        quoted = self._quoted
        seq = self.next_seq
        prev = self.prev_hash
        sealed: list[Record] = []
        append = sealed.append
        for kind, id, at, body, body_json in items:
            envelope = (
                f'{prev}{{"at":"{at}","body":{body_json},"chain":{quoted},'
                f'"id":{_quote(id)},"kind":{_quote(kind)},"seq":{seq}}}'
            )
            digest = _sha256(envelope.encode("utf-8")).hexdigest()
            record = _new(Record)
            _set_chain(record, chain_id)
            _set_seq(record, seq)
            _set_kind(record, kind)
            _set_id(record, id)
            _set_at(record, at)
            _set_body(record, body)
            _set_prev_hash(record, prev)
            _set_hash(record, digest)
            _set_body_json(record, body_json)
            append(record)
            prev = digest
            seq += 1
        self.prev_hash = prev
        self.next_seq = seq
        return sealed

    def rewind(self, next_seq: int, prev_hash: str) -> None:
        """Put the head back (after a failed commit) or forward (to resume a stored chain)."""
        self.next_seq = next_seq
        self.prev_hash = prev_hash

    def __repr__(self) -> str:
        return f"Chain({self.chain_id!r}, next_seq={self.next_seq})"
