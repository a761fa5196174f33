"""The pure part of decision records: canonical JSON, sealing, the hash chain."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exportgate.errors import RecordStoreError
from exportgate.records.chain import (
    GENESIS,
    Chain,
    InvalidRecord,
    Record,
    canonical,
    canonical_text,
    check_fields,
    format_time,
    make_record,
    record_hash,
)

AT = "2026-11-29T03:04:05.000006Z"


def reference_hash(record: Record) -> str:
    """The hash as the design states it, computed the slow, obvious way."""
    envelope = {
        "chain": record.chain,
        "seq": record.seq,
        "kind": record.kind,
        "id": record.id,
        "at": record.at,
        "body": record.body,
    }
    return hashlib.sha256(record.prev_hash.encode() + canonical(envelope)).hexdigest()


# -- canonical -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param({"b": 1, "a": 2}, b'{"a":2,"b":1}', id="keys sorted"),
        pytest.param(
            {"a": [1, {"d": None, "c": True}]},
            b'{"a":[1,{"c":true,"d":null}]}',
            id="nested sorted, no spaces",
        ),
        pytest.param(
            {"city": "Zürich"}, '{"city":"Zürich"}'.encode(), id="non-ASCII kept as UTF-8"
        ),
        pytest.param({"q": 'say "hi"\n'}, b'{"q":"say \\"hi\\"\\n"}', id="escapes"),
        pytest.param({"t": (1, 2)}, b'{"t":[1,2]}', id="tuple as list"),
        pytest.param(
            {"f": 0.1, "g": -0.0, "h": 1e16}, b'{"f":0.1,"g":-0.0,"h":1e+16}', id="floats by repr"
        ),
        pytest.param({}, b"{}", id="empty"),
    ],
)
def test_canonical_form(value: object, expected: bytes) -> None:
    assert canonical(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"x": math.nan}, id="NaN"),
        pytest.param({"x": math.inf}, id="inf"),
        pytest.param({"x": [-math.inf]}, id="-inf in list"),
        pytest.param({"x": datetime(2026, 1, 1, tzinfo=UTC)}, id="datetime"),
        pytest.param({"x": {1, 2}}, id="set"),
        pytest.param({"x": b"bytes"}, id="bytes"),
        pytest.param({1: "int key"}, id="int key"),
        pytest.param({"x": {10: "a", 9: "b"}}, id="nested int keys"),
        pytest.param({"x": [{None: 1}]}, id="None key in list"),
        pytest.param({"x": "\ud800"}, id="lone surrogate"),
        pytest.param({"\udfff": 1}, id="lone surrogate key"),
    ],
)
def test_canonical_refuses(value: object) -> None:
    with pytest.raises(InvalidRecord) as info:
        canonical(value)
    # A RecordStoreError: whoever serves downloads treats it as "not recorded" and fails closed.
    assert isinstance(info.value, RecordStoreError)
    assert isinstance(info.value, ValueError)


def test_canonical_refuses_cycles() -> None:
    loop: dict[str, object] = {}
    loop["self"] = loop
    with pytest.raises(InvalidRecord):
        canonical(loop)


# Records hold strings, whole numbers within 64 bits, booleans and nulls; floats round-trip (below) but are
# formatted by orjson, not json.dumps (1e16 vs 1e+16), so the text comparison leaves them out.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_canonical_is_json_dumps_and_survives_a_round_trip(body: dict[str, object]) -> None:
    text = canonical_text(body)
    assert text == json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # What the store keeps re-encodes to the same bytes: verify() hashes stored text reliably.
    assert canonical_text(json.loads(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(), st.floats(allow_nan=False, allow_infinity=False), max_size=4))
def test_floats_survive_a_round_trip(body: dict[str, float]) -> None:
    text = canonical_text(body)
    assert json.loads(text) == body
    assert canonical_text(json.loads(text)) == text


def test_integers_beyond_64_bits_are_refused() -> None:
    with pytest.raises(InvalidRecord):
        canonical_text({"x": 2**64})


# -- fields and time -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        pytest.param(datetime(2026, 11, 29, 3, 4, 5, 6, tzinfo=UTC), AT, id="UTC"),
        pytest.param(
            datetime(2026, 11, 29, 5, 4, 5, 6, tzinfo=timezone(timedelta(hours=2))),
            AT,
            id="offset converted to UTC",
        ),
        pytest.param(
            datetime(2026, 1, 1, tzinfo=UTC),
            "2026-01-01T00:00:00.000000Z",
            id="zero microseconds written",
        ),
        pytest.param(
            datetime(999, 1, 1, tzinfo=UTC), "0999-01-01T00:00:00.000000Z", id="four-digit year"
        ),
    ],
)
def test_format_time(when: datetime, expected: str) -> None:
    assert format_time(when) == expected
    check_fields("decision", "d", expected)


def test_format_time_refuses_naive() -> None:
    with pytest.raises(InvalidRecord, match="naive"):
        format_time(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("kind", "id", "at", "field"),
    [
        pytest.param("", "d", AT, "kind", id="empty kind"),
        pytest.param(None, "d", AT, "kind", id="kind None"),
        pytest.param("decision", "", AT, "id", id="empty id"),
        pytest.param("decision", 7, AT, "id", id="int id"),
        pytest.param("decision", "d\udc00", AT, "id", id="surrogate in id"),
        pytest.param("decision", "d", "2026-11-29T03:04:05Z", "at", id="no microseconds"),
        pytest.param("decision", "d", "2026-11-29T03:04:05.000006+00:00", "at", id="offset not Z"),
        pytest.param("decision", "d", "2026-11-29 03:04:05.000006Z", "at", id="space"),
        pytest.param("decision", "d", AT + "\n", "at", id="trailing newline"),
        pytest.param("decision", "d", datetime(2026, 1, 1, tzinfo=UTC), "at", id="datetime"),
    ],
)
def test_seal_refuses_bad_fields(kind: object, id: object, at: object, field: str) -> None:
    chain = Chain("c:1")
    with pytest.raises(InvalidRecord) as info:
        chain.seal(kind, id, at, {})  # type: ignore[arg-type]
    assert info.value.field == field
    assert chain.next_seq == 1 and chain.prev_hash == GENESIS  # nothing advanced


@pytest.mark.parametrize(
    "body",
    [pytest.param([], id="list"), pytest.param("x", id="str"), pytest.param(None, id="None")],
)
def test_seal_refuses_a_body_that_is_not_an_object(body: object) -> None:
    with pytest.raises(InvalidRecord, match="JSON object"):
        Chain("c:1").seal("decision", "d", AT, body)  # type: ignore[arg-type]


# -- sealing ---------------------------------------------------------------------------------


def test_seal_links_records_into_a_chain() -> None:
    chain = Chain("gate-1:0123456789ab")
    first = chain.seal("decision", "d-1", AT, {"action": "allow"})
    second = chain.seal("authorization", "a-1", AT, {"licence": "GL D-1", "city": "Zürich"})
    assert (first.seq, first.prev_hash) == (1, GENESIS)
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert (chain.next_seq, chain.prev_hash) == (3, second.hash)
    for record in (first, second):
        assert record.hash == reference_hash(record)
        assert record.body_json == canonical_text(record.body)


def test_hash_is_pinned() -> None:
    # Changing the envelope silently would make every stored chain fail verification.
    record = Chain("gate-1:0123456789ab").seal("decision", "d-1", AT, {"action": "allow"})
    # = printf %s "$GENESIS"'{"at":"2026-11-29T03:04:05.000006Z","body":{"action":"allow"},'\
    #   '"chain":"gate-1:0123456789ab","id":"d-1","kind":"decision","seq":1}' | sha256sum
    assert record.hash == "c9bfa39d3667d3ccc929e327c80351c6f0067697afb48338f10b19cbe67f961b"


@settings(max_examples=100, deadline=None)
@given(
    chain_id=st.text(min_size=1),
    kind=st.text(min_size=1),
    id=st.text(min_size=1),
    body=st.dictionaries(st.text(), json_values, max_size=4),
    seq=st.integers(1, 2**62),
)
def test_hand_built_envelope_equals_canonical(
    chain_id: str, kind: str, id: str, body: dict[str, object], seq: int
) -> None:
    # Chain.seal builds the envelope text by hand to encode the body once; it must be
    # byte-identical to canonical() of the envelope dict, for any strings.
    try:
        chain_id.encode(), kind.encode(), id.encode()
    except UnicodeEncodeError:
        return
    chain = Chain(chain_id, prev_hash="ab" * 32, next_seq=seq)
    record = chain.seal(kind, id, AT, body)
    assert record.hash == reference_hash(record)
    assert record.hash == record_hash(
        record.prev_hash, chain_id, seq, kind, id, AT, record.body_json
    )


def test_mutating_the_body_after_sealing_does_not_change_what_was_hashed() -> None:
    body = {"action": "allow"}
    record = Chain("c:1").seal("decision", "d", AT, body)
    body["action"] = "block"
    assert record.hash == record_hash(GENESIS, "c:1", 1, "decision", "d", AT, record.body_json)
    assert json.loads(record.body_json) == {"action": "allow"}


def test_rewind_puts_the_head_back() -> None:
    chain = Chain("c:1")
    first = chain.seal("decision", "d-1", AT, {})
    chain.seal("decision", "d-2", AT, {})
    chain.rewind(2, first.hash)
    again = chain.seal("decision", "d-2b", AT, {})
    assert (again.seq, again.prev_hash) == (2, first.hash)


def test_make_record_equals_the_dataclass_constructor() -> None:
    fields: dict[str, Any] = {"chain": "c", "seq": 3, "kind": "k", "id": "i", "at": AT,
                              "body": {"a": 1}, "prev_hash": GENESIS, "hash": "h" * 64}
    fast = make_record(**fields, body_json='{"a":1}')
    assert fast == Record(**fields)
    assert fast.body_json == '{"a":1}'
    with pytest.raises(AttributeError):
        fast.seq = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    "chain_id",
    [
        pytest.param("", id="empty"),
        pytest.param(None, id="None"),
        pytest.param("c\ud800", id="surrogate"),
    ],
)
def test_chain_id_must_be_text(chain_id: object) -> None:
    with pytest.raises(InvalidRecord):
        Chain(chain_id)  # type: ignore[arg-type]


def test_seal_many_equals_sealing_one_by_one() -> None:
    items = [("decision", f'd-{i}"\u00fc', AT, {"i": i}) for i in range(5)]
    one_by_one = Chain("c:\u00fc\"1")
    expected = [one_by_one.seal(*item) for item in items]
    many = Chain("c:\u00fc\"1")
    got = many.seal_many([(*item, canonical_text(item[3])) for item in items])
    assert got == expected
    assert [r.hash for r in got] == [r.hash for r in expected]
    assert (many.next_seq, many.prev_hash) == (one_by_one.next_seq, one_by_one.prev_hash)
