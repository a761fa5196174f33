"""Tamper evidence: change a real SQLite store behind exportgate's back, and verify() names it."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exportgate.records import Chain, Record, SQLiteStore, chain_heads, verify
from exportgate.gate import format_time
from exportgate.records.chain import GENESIS, canonical_text, record_hash

AT = "2026-11-29T03:04:05.000006Z"
CHAIN = "gate-1:0123456789ab"
OTHER = "gate-2:ba9876543210"

Tamper = Callable[[sqlite3.Connection], object]


def build(path: Path, n: int = 10) -> None:
    with SQLiteStore(str(path)) as store:
        for chain_id in (CHAIN, OTHER):
            chain = Chain(chain_id)
            store.append(
                [
                    chain.seal(
                        "decision",
                        f"{chain_id[:6]}d-{i}",
                        AT,
                        {"action": "allow", "i": i, "country": "DE"},
                    )
                    for i in range(1, n + 1)
                ]
            )


def row(conn: sqlite3.Connection, seq: int) -> dict[str, object]:
    cursor = conn.execute("SELECT * FROM records WHERE chain = ? AND seq = ?", (CHAIN, seq))
    names = [d[0] for d in cursor.description]
    return dict(zip(names, cursor.fetchone(), strict=True))


def forge(
    conn: sqlite3.Connection, *, seq: int, prev_hash: str, id: str, body: dict[str, object]
) -> None:
    """Insert a well-formed record, hashed the way exportgate would: what a careful forger does."""
    body_json = canonical_text(body)
    digest = record_hash(prev_hash, CHAIN, seq, "decision", id, AT, body_json)
    conn.execute(
        "INSERT INTO records VALUES (?, ?, 'decision', ?, ?, ?, ?, ?)",
        (CHAIN, seq, id, AT, body_json, prev_hash, digest),
    )


def set_seq(conn: sqlite3.Connection, old: int, new: int) -> None:
    conn.execute("UPDATE records SET seq = ? WHERE chain = ? AND seq = ?", (new, CHAIN, old))


# -- tampering, each as an attacker with the sqlite3 module would do it ----------------------


def update_body(conn: sqlite3.Connection) -> None:
    conn.execute(
        "UPDATE records SET body = ? WHERE chain = ? AND seq = 5",
        ('{"action":"block","country":"DE","i":5}', CHAIN),
    )


def update_body_and_rehash(conn: sqlite3.Connection) -> None:
    r = row(conn, 5)
    body = '{"action":"block","country":"DE","i":5}'
    digest = record_hash(str(r["prev_hash"]), CHAIN, 5, "decision", str(r["id"]), AT, body)
    conn.execute(
        "UPDATE records SET body = ?, hash = ? WHERE chain = ? AND seq = 5", (body, digest, CHAIN)
    )


def update_time(conn: sqlite3.Connection) -> None:
    conn.execute(
        "UPDATE records SET at = '2020-01-01T00:00:00.000000Z' WHERE chain = ? AND seq = 5",
        (CHAIN,),
    )


def update_prev_hash(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE records SET prev_hash = ? WHERE chain = ? AND seq = 5", ("f" * 64, CHAIN))


def update_hash(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE records SET hash = ? WHERE chain = ? AND seq = 5", ("f" * 64, CHAIN))


def garbage_body(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE records SET body = 'not json' WHERE chain = ? AND seq = 5", (CHAIN,))


def delete_one(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM records WHERE chain = ? AND seq = 5", (CHAIN,))


def delete_first(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM records WHERE chain = ? AND seq = 1", (CHAIN,))


def delete_range(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM records WHERE chain = ? AND seq BETWEEN 4 AND 6", (CHAIN,))


def insert_forged_after_four(conn: sqlite3.Connection) -> None:
    # A forged "authorization-like" decision meant to sit after #4; the only free seq is #11.
    forge(conn, seq=11, prev_hash=str(row(conn, 4)["hash"]), id="forged", body={"action": "allow"})


def insert_forged_unlinked(conn: sqlite3.Connection) -> None:
    forge(conn, seq=11, prev_hash="e" * 64, id="forged", body={"action": "allow"})


def insert_forged_genesis(conn: sqlite3.Connection) -> None:
    forge(conn, seq=11, prev_hash=GENESIS, id="forged", body={"action": "allow"})


def insert_copy(conn: sqlite3.Connection) -> None:
    r = row(conn, 3)
    conn.execute(
        "INSERT INTO records VALUES (?, 11, ?, ?, ?, ?, ?, ?)",
        (CHAIN, r["kind"], r["id"], r["at"], r["body"], r["prev_hash"], r["hash"]),
    )


def replace_with_a_later_copy(conn: sqlite3.Connection) -> None:
    # #3 deleted and a copy of #7 stored in its place: the copy comes first in seq order, #7 is the genuine one.
    r = row(conn, 7)
    conn.execute("DELETE FROM records WHERE chain = ? AND seq = 3", (CHAIN,))
    conn.execute(
        "INSERT INTO records VALUES (?, 3, ?, ?, ?, ?, ?, ?)",
        (CHAIN, r["kind"], r["id"], r["at"], r["body"], r["prev_hash"], r["hash"]),
    )


def swap_two(conn: sqlite3.Connection) -> None:
    set_seq(conn, 4, -1)
    set_seq(conn, 5, 4)
    set_seq(conn, -1, 5)


def replace_one(conn: sqlite3.Connection) -> None:
    # Delete #5 and forge a new #5 that links properly to #4: #6 still links to the old #5.
    prev = str(row(conn, 5)["prev_hash"])
    conn.execute("DELETE FROM records WHERE chain = ? AND seq = 5", (CHAIN,))
    forge(conn, seq=5, prev_hash=prev, id="replacement", body={"action": "allow"})


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        pytest.param(update_body, [("altered", 5, "gate-1d-5")], id="UPDATE a body"),
        pytest.param(
            update_body_and_rehash,
            [("altered", 5, "gate-1d-5")],
            id="UPDATE a body and recompute its hash",
        ),
        pytest.param(update_time, [("altered", 5, "gate-1d-5")], id="UPDATE the time"),
        pytest.param(update_prev_hash, [("altered", 5, "gate-1d-5")], id="UPDATE prev_hash"),
        pytest.param(update_hash, [("altered", 5, "gate-1d-5")], id="UPDATE hash"),
        pytest.param(garbage_body, [("altered", 5, "gate-1d-5")], id="body no longer JSON"),
        pytest.param(delete_one, [("deleted", 5, None)], id="DELETE a row"),
        pytest.param(delete_first, [("deleted", 1, None)], id="DELETE the first row"),
        pytest.param(delete_range, [("deleted", 4, None)], id="DELETE three rows"),
        pytest.param(
            insert_forged_after_four,
            [("inserted", 11, "forged")],
            id="INSERT a forged row linking into the middle",
        ),
        pytest.param(
            insert_forged_unlinked,
            [("inserted", 11, "forged")],
            id="INSERT a forged row linking nowhere",
        ),
        pytest.param(
            insert_forged_genesis,
            [("inserted", 11, "forged")],
            id="INSERT a forged row starting from genesis",
        ),
        pytest.param(insert_copy, [("inserted", 11, "gate-1d-3")], id="INSERT a copy"),
        pytest.param(replace_with_a_later_copy, [("inserted", 3, "gate-1d-7")],
                     id="a row replaced by a copy of a later one"),
        pytest.param(
            swap_two,
            [("reordered", 4, "gate-1d-5"), ("reordered", 5, "gate-1d-4")],
            id="swap two rows' seq",
        ),
        pytest.param(replace_one, [("altered", 5, "replacement")], id="replace a row"),
    ],
)
def test_tampering_is_named(
    tmp_path: Path, tamper: Tamper, expected: list[tuple[str, int, str | None]]
) -> None:
    path = tmp_path / "records.db"
    build(path)
    with SQLiteStore(str(path)) as store:
        assert verify(store).ok
        heads = chain_heads(store)
    with sqlite3.connect(path) as conn:
        # The triggers stop accidents, not attackers: drop them first.
        conn.execute("DROP TRIGGER records_no_update")
        conn.execute("DROP TRIGGER records_no_delete")
        tamper(conn)
    with SQLiteStore(str(path)) as store:
        report = verify(store)
        with_heads = verify(store, expected_heads=heads)
    assert not report.ok
    assert [(p.kind, p.seq, p.id) for p in report.problems] == expected, report.problems
    assert {p.chain for p in report.problems} == {CHAIN}  # the other chain is fine
    assert report.chains == 2
    assert report.counts[expected[0][0]] == sum(1 for e in expected if e[0] == expected[0][0])
    assert all(p.detail for p in report.problems)
    assert not with_heads.ok


def test_a_clean_store_verifies(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    build(path)
    with SQLiteStore(str(path)) as store:
        report = verify(store, expected_heads=chain_heads(store))
    assert report.ok
    assert report.to_dict() == {
        "ok": True,
        "chains": 2,
        "records": 20,
        "counts": {"altered": 0, "deleted": 0, "inserted": 0, "reordered": 0},
        "problems": [],
    }


def test_an_empty_store_verifies() -> None:
    with SQLiteStore(None) as store:
        assert verify(store).ok and verify(store).records == 0
        assert chain_heads(store) == {}


# -- what only saved heads can show ----------------------------------------------------------


def tamper_file(path: Path, tamper: Tamper) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER IF EXISTS records_no_update")
        conn.execute("DROP TRIGGER IF EXISTS records_no_delete")
        tamper(conn)


def test_tail_truncation_needs_saved_heads(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    build(path)
    with SQLiteStore(str(path)) as store:
        heads = chain_heads(store)
    assert heads[CHAIN][0] == 10
    tamper_file(
        path, lambda c: c.execute("DELETE FROM records WHERE chain = ? AND seq > 7", (CHAIN,))
    )
    with SQLiteStore(str(path)) as store:
        assert verify(store).ok  # the documented blind spot
        report = verify(store, expected_heads=heads)
    assert [(p.kind, p.chain, p.seq) for p in report.problems] == [("deleted", CHAIN, 8)]
    assert "#8..#10" in report.problems[0].detail


def test_a_vanished_chain_needs_saved_heads(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    build(path)
    with SQLiteStore(str(path)) as store:
        heads = chain_heads(store)
    tamper_file(path, lambda c: c.execute("DELETE FROM records WHERE chain = ?", (OTHER,)))
    with SQLiteStore(str(path)) as store:
        assert verify(store).ok
        report = verify(store, expected_heads=heads)
    assert [(p.kind, p.chain, p.seq) for p in report.problems] == [("deleted", OTHER, None)]


def test_a_consistently_rewritten_tail_needs_saved_heads(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    build(path)
    with SQLiteStore(str(path)) as store:
        heads = chain_heads(store)

    def rewrite(conn: sqlite3.Connection) -> None:
        prev = str(row(conn, 8)["hash"])
        conn.execute("DELETE FROM records WHERE chain = ? AND seq > 8", (CHAIN,))
        for seq in (9, 10):
            forge(conn, seq=seq, prev_hash=prev, id=f"rewritten-{seq}", body={"action": "allow"})
            prev = str(row(conn, seq)["hash"])

    tamper_file(path, rewrite)
    with SQLiteStore(str(path)) as store:
        assert verify(store).ok  # sha256 has no key: a consistent rewrite is invisible alone
        report = verify(store, expected_heads=heads)
    assert [(p.kind, p.seq) for p in report.problems] == [("altered", 10)]


def test_records_appended_after_the_heads_were_saved_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    build(path)
    with SQLiteStore(str(path)) as store:
        heads = chain_heads(store)
        last = store.last(CHAIN)
        assert last is not None
        chain = Chain(CHAIN, prev_hash=last.hash, next_seq=last.seq + 1)
        store.append([chain.seal("decision", "later", AT, {})])
        assert verify(store, expected_heads=heads).ok


def test_a_record_appended_after_a_saved_head_but_dated_before_the_save_is_backdated(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    build(path)  # every record dated AT
    with SQLiteStore(str(path)) as store:
        first = verify(store)
        assert first.started_at is not None
        last = store.last(CHAIN)
        assert last is not None
        chain = Chain(CHAIN, prev_hash=last.hash, next_seq=last.seq + 1)
        store.append([chain.seal("decision", "honest", format_time(first.started_at), {}),
                      chain.seal("authorization", "forged", AT, {}), chain.seal("decision", "also", AT, {})])
        report = verify(store, expected_heads=first.heads, heads_saved_at=first.started_at)
        assert verify(store, expected_heads=first.heads).ok  # without the save's time it cannot be seen
    assert [(p.kind, p.chain, p.seq, p.id) for p in report.problems] == [("inserted", CHAIN, 12, "forged")]
    assert "backdated (and 1 more after it)" in report.problems[0].detail


def test_a_record_dated_just_before_the_save_is_no_backdating(tmp_path: Path) -> None:
    """Decided before the heads were saved, committed after: within the recorder's commit time."""
    path = tmp_path / "records.db"
    build(path)
    with SQLiteStore(str(path)) as store:
        first = verify(store)
        assert first.started_at is not None
        chain = Chain("gate-3:000000000001")
        store.append([chain.seal("decision", "late", format_time(first.started_at - dt.timedelta(seconds=5)), {})])
        assert verify(store, expected_heads=first.heads, heads_saved_at=first.started_at).ok


def test_problems_serialise(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    build(path)
    tamper_file(path, delete_one)
    with SQLiteStore(str(path)) as store:
        data = verify(store).to_dict()
    assert data["ok"] is False and data["counts"]["deleted"] == 1
    assert data["problems"] == [
        {
            "kind": "deleted",
            "chain": CHAIN,
            "seq": 5,
            "id": None,
            "detail": "record(s) #5 missing before #6",
        }
    ]


# -- any tampering short of cutting the tail is noticed, and verify never crashes ------------


class ListStore:
    """A store over a plain list, so hypothesis can tamper without touching SQLite."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records

    def append(self, records: Sequence[Record]) -> None:
        self.records.extend(records)

    def iter_records(
        self, kind: str | None = None, chain: str | None = None, *, after_seq: int | None = 0
    ) -> Iterator[Record]:
        for r in sorted(self.records, key=lambda r: (r.chain, r.seq)):
            wanted = (kind is None or r.kind == kind) and (chain is None or r.chain == chain)
            if wanted and (after_seq is None or r.seq > after_seq):
                yield r

    def get(self, id: str) -> Record | None:
        return next((r for r in self.iter_records() if r.id == id), None)  # seq > 0, as the protocol says

    def last(self, chain: str) -> Record | None:
        mine = list(self.iter_records(chain=chain))
        return mine[-1] if mine else None

    def chains(self) -> list[str]:
        return sorted({r.chain for r in self.records})

    def count(self, kind: str | None = None) -> int:
        return len(list(self.iter_records(kind=kind)))

    def close(self) -> None:
        pass


operations = st.lists(
    st.tuples(st.sampled_from(["delete", "alter", "swap", "copy", "forge", "renumber"]),
              st.integers(0, 11), st.integers(0, 11)),
    min_size=1, max_size=4,
)


def apply(records: list[Record], op: str, i: int, j: int) -> list[Record]:
    if not records:
        return records
    i, j = i % len(records), j % len(records)
    r = records[i]
    if op == "delete":
        return records[:i] + records[i + 1:]
    if op == "alter":
        return [*records[:i], replace(r, body={**r.body, "action": "block"}, body_json=""),
                *records[i + 1:]]
    if op == "swap" and i != j:
        out = list(records)
        out[i], out[j] = replace(records[j], seq=r.seq), replace(r, seq=records[j].seq)
        return out
    if op == "copy":
        return [*records, replace(r, seq=max(x.seq for x in records) + 1)]
    if op == "forge":
        seq = max(x.seq for x in records) + 1
        body_json = canonical_text({"forged": j})
        digest = record_hash(r.prev_hash, CHAIN, seq, "decision", "forged", AT, body_json)
        return [*records, replace(r, seq=seq, id="forged", body={"forged": j}, body_json=body_json,
                                  hash=digest)]
    if op == "renumber":
        return [replace(x, seq=x.seq - 1) if x.seq > r.seq else x for x in records if x is not r]
    return records


@settings(max_examples=300, deadline=None)
@given(operations)
def test_any_tampering_but_tail_truncation_is_noticed(ops: list[tuple[str, int, int]]) -> None:
    chain = Chain(CHAIN)
    original = [chain.seal("decision", f"d-{i}", AT, {"action": "allow", "i": i})
                for i in range(1, 11)]
    heads = {CHAIN: (original[-1].seq, original[-1].hash)}
    tampered = list(original)
    for op in ops:
        tampered = apply(tampered, op[0], op[1], op[2])
    store = ListStore(tampered)
    report = verify(store)
    by_content = sorted((r.seq, r.hash, r.body_json or canonical_text(r.body)) for r in tampered)
    prefix = original[: len(tampered)]
    untouched_prefix = by_content == [(r.seq, r.hash, r.body_json) for r in prefix]
    if not untouched_prefix:
        assert not report.ok, (ops, tampered)
    assert not verify(store, expected_heads=heads).ok or by_content == [
        (r.seq, r.hash, r.body_json) for r in original]
    for problem in report.problems:
        assert problem.kind in {"altered", "deleted", "inserted", "reordered"}
        assert problem.chain == CHAIN and problem.detail


def test_the_report_names_the_heads_it_checked(tmp_path: Path) -> None:
    """The heads to save are those of the pass that checked them: chain_heads() read afterwards could name records
    appended meanwhile, which no run checked."""
    build(tmp_path / "r.db")
    store = SQLiteStore(str(tmp_path / "r.db"))
    try:
        report = verify(store)
        assert report.ok and report.heads == chain_heads(store) and report.heads
        chain_id, (seq, digest) = next(iter(report.heads.items()))
        later = Chain(chain_id, digest, seq + 1)
        store.append([later.seal("decision", "appended-after", "2026-01-01T00:00:00.000000Z", {"late": True})])
        assert chain_heads(store) != report.heads  # what a save after the run would have named
    finally:
        store.close()
