"""Check the hash chains of a store and name what was tampered with.

``verify(store)`` recomputes every record's hash and checks that each chain runs 1, 2, 3, …
with every ``prev_hash`` pointing at the record before. Each problem names the chain, the seq,
the record id when there is one, and a kind:

``altered``
    the record's content (or stored hash) is not what was sealed; its place in the chain fits.
``deleted``
    records are missing: a seq gap, a chain that does not start at 1, or (with saved heads) a
    truncated tail or a vanished chain.
``inserted``
    a well-formed record that does not fit where it sits: a duplicate, one that links after
    some record but is stored elsewhere (a forgery that copied a ``prev_hash``), or one stored at
    seq 0 or below; also stored rows that no chain's reading reached (compared with ``count()``).
``reordered``
    a record sealed at one position and stored at another (e.g. two records' seq swapped): its
    hash is right for the position its links give it.

What cannot be detected from the store alone: removing the last records of a chain, removing a
whole chain, and appending well-formed records at the tail (sha256 has no key; anyone who can
write the store can extend a chain or rewrite a tail consistently). Mitigation: an auditor saves
:func:`chain_heads` somewhere the gate cannot write (a ticket, a signed mail, another system) and
passes it back as ``verify(store, expected_heads=...)``; then a truncated tail, a vanished
chain, or history rewritten up to a saved head is reported. Records appended after the save are
not covered until the next save, with one exception: given the time the heads were saved
(``heads_saved_at``), a record they do not cover (in a chain they do not name, or after a chain's
saved head) that is dated before that time, less :data:`LATE_COMMIT_SLACK`, was written after the
save and backdated (e.g. an authorization made to look as if it had been on file last month), and is
reported ``inserted``.

Caveat: classification is a best reading of the evidence, not proof of intent. A deletion
followed by renumbering the later records shows as every later record ``altered``; a record at
the tail that links to an unknown predecessor is reported ``inserted``, though its predecessor
may have been rewritten instead (the detail says so).

Every row is read, whatever is stored as its seq: a row that cannot be read back (a seq that is not
an integer, a column of the wrong type) is reported ``altered`` and reading goes on after it, so it
cannot hide what follows. Runs in one streaming pass per chain (constant memory); a chain with a
problem is read a second time and held in memory to classify it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from exportgate.records.chain import GENESIS, Record, canonical_text, record_hash
from exportgate.records.store import CorruptRecordError, Store

ALTERED = "altered"
DELETED = "deleted"
INSERTED = "inserted"
REORDERED = "reordered"
PROBLEM_KINDS = (ALTERED, DELETED, INSERTED, REORDERED)

LATE_COMMIT_SLACK = dt.timedelta(minutes=30)
"""How much older than the heads' save a record they do not cover may be dated: a record is dated when the gate
decides and committed a moment later (within the store's busy timeout: 5 s by default, 10 minutes at most, and a
batch queued behind a slow commit waits for that one too), so one decided just before the save can be committed
just after it. Thirty minutes is beyond that, and short of any backdating that matters."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One thing wrong with one chain."""

    kind: str
    """One of :data:`PROBLEM_KINDS`."""
    chain: str
    """The chain it is in."""
    seq: int | None
    """Where: the record's seq, or the first missing seq (``None``: the whole chain)."""
    id: str | None
    """The id of the record concerned, when there is one (not for missing records)."""
    detail: str
    """What was seen, in words."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "chain": self.chain,
            "seq": self.seq,
            "id": self.id,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """The outcome of :func:`verify`."""

    chains: int
    """Chains checked."""
    records: int
    """Records read."""
    problems: tuple[Problem, ...]
    """Everything found, by chain then seq."""
    heads: Mapping[str, tuple[int, str]] = field(default_factory=dict)
    """``{chain: (seq, hash)}`` of the last record each chain's checked pass read: what to save for a later
    ``expected_heads`` (not :func:`chain_heads` afterwards, which could name records appended since and never
    checked)."""
    started_at: dt.datetime | None = None
    """When the pass began (UTC): save it with :attr:`heads` as a later ``heads_saved_at``. Every record the
    heads cover was committed before it."""

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.problems

    @property
    def counts(self) -> dict[str, int]:
        """Problems per kind (every kind present, zero included)."""
        counts = dict.fromkeys(PROBLEM_KINDS, 0)
        for problem in self.problems:
            counts[problem.kind] += 1
        return counts

    def lines(self) -> list[str]:
        """The report for a person: one line per problem, then a summary."""
        out = [f"{p.kind}: chain {p.chain} seq {p.seq if p.seq is not None else '-'}"
               f"{f' id {p.id}' if p.id else ''}: {p.detail}" for p in self.problems]
        if self.ok:
            out.append(f"ok: {self.records} records in {self.chains} chains verify")
        else:
            found = ", ".join(f"{n} {kind}" for kind, n in self.counts.items() if n)
            out.append(f"FAILED: {found} ({self.records} records in {self.chains} chains checked)")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "chains": self.chains,
            "records": self.records,
            "counts": self.counts,
            "problems": [p.to_dict() for p in self.problems],
        }


def chain_heads(store: Store) -> dict[str, tuple[int, str]]:
    """``{chain: (seq, hash)}`` of the last record of every chain: save it to detect truncation."""
    heads: dict[str, tuple[int, str]] = {}
    for chain in store.chains():
        last = store.last(chain)
        if last is not None:
            heads[chain] = (last.seq, last.hash)
    return heads


def verify(
    store: Store,
    *,
    expected_heads: Mapping[str, tuple[int, str]] | None = None,
    heads_saved_at: dt.datetime | None = None,
) -> VerifyReport:
    """Check every chain of ``store`` (and the saved heads, if given, saved at ``heads_saved_at``, if given); see
    the module docstring."""
    started_at = dt.datetime.now(dt.UTC)
    not_before = None if heads_saved_at is None or expected_heads is None else heads_saved_at - LATE_COMMIT_SLACK
    problems: list[Problem] = []
    total = 0
    stored = store.count()  # before listing the chains: rows appended meanwhile only add to what is read
    chains = store.chains()
    heads = dict(expected_heads or {})
    verified_heads: dict[str, tuple[int, str]] = {}
    for chain in chains:
        head = heads.get(chain)
        scan = _scan(store, chain, head[0] if head else None, not_before)
        total += scan.count
        if scan.last_hash is not None:
            verified_heads[chain] = (scan.last_seq, scan.last_hash)
        if not scan.clean:
            problems.extend(_classify(chain, list(_entries(store, chain))))
        if head is not None:
            problems.extend(_check_head(chain, head, scan))
        if scan.backdated is not None:
            first, when = scan.backdated
            more = f" (and {scan.backdated_count - 1} more after it)" if scan.backdated_count > 1 else ""
            covers = f"after the saved head #{head[0]}" if head is not None else "in a chain the heads do not name"
            problems.append(
                Problem(
                    kind=INSERTED,
                    chain=chain,
                    seq=first.seq,
                    id=first.id,
                    detail=f"dated {when}, before the heads were saved at {_iso(heads_saved_at)}, yet {covers}: "
                    f"written after the save and backdated{more}",
                )
            )
    if total < stored:
        problems.append(
            Problem(
                kind=INSERTED,
                chain="(none)",
                seq=None,
                id=None,
                detail=f"{stored - total} stored row(s) that no chain's reading reached",
            )
        )
    for chain in sorted(set(heads) - set(chains)):
        seq, _ = heads[chain]
        problems.append(
            Problem(
                kind=DELETED,
                chain=chain,
                seq=None,
                id=None,
                detail=f"the whole chain is missing (saved head was #{seq})",
            )
        )
    return VerifyReport(chains=len(chains), records=total, problems=tuple(problems), heads=verified_heads,
                        started_at=started_at)


def _iso(when: dt.datetime | None) -> str:
    return "-" if when is None else when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _dated_before(record: Record, not_before: dt.datetime) -> str | None:
    """``record.at`` if it is before ``not_before`` (or is no time at all: a forger's date fails closed)."""
    try:
        when = dt.datetime.fromisoformat(record.at)
    except (TypeError, ValueError):
        return repr(record.at)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return record.at if when < not_before else None


# -- reading ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    seq: int
    id: str
    prev: str
    hash: str
    valid: bool
    record: Record | None  # None when the row could not be read back
    note: str = ""


def _entries(store: Store, chain: str) -> Iterator[_Entry]:
    """The chain's rows in seq order, every one of them (seq 0 and below included); unreadable rows become invalid
    entries, not a crash, and reading goes on after them where the store says where they are."""
    after: Any = None
    resumed_at: list[Any] = []
    while True:
        try:
            for record in store.iter_records(chain=chain, after_seq=after):
                after = record.seq
                body_json = record.body_json or canonical_text(record.body)
                valid = record.hash == record_hash(
                    record.prev_hash,
                    record.chain,
                    record.seq,
                    record.kind,
                    record.id,
                    record.at,
                    body_json,
                )
                yield _Entry(record.seq, record.id, record.prev_hash, record.hash, valid, record)
            return
        except CorruptRecordError as exc:
            yield _Entry(
                exc.seq,
                exc.id,
                exc.prev_hash,
                exc.hash,
                False,
                None,
                note=f"unreadable: {exc.reason}",
            )
            if exc.position is None or exc.position in resumed_at:  # cannot step past it: stop here
                return
            resumed_at.append(exc.position)
            after = exc.position


@dataclass(slots=True)
class _Scan:
    count: int = 0
    clean: bool = True
    last_seq: int = 0
    at_head: str | None = None  # the hash stored at the saved head's seq, if any
    last_hash: str | None = None  # of the record read last (the highest seq)
    backdated: tuple[_Entry, str] | None = None  # the first record the heads do not cover dated before their save
    backdated_count: int = 0


def _scan(store: Store, chain: str, head_seq: int | None, not_before: dt.datetime | None) -> _Scan:
    """One streaming pass: count, whether every hash and link holds, what the saved head sees, and (given
    ``not_before``) which records the saved heads do not cover yet are dated before it."""
    scan = _Scan()
    expect_seq, expect_prev = 1, GENESIS
    for entry in _entries(store, chain):
        scan.count += 1
        if not_before is not None and entry.record is not None and (head_seq is None or entry.seq > head_seq):
            when = _dated_before(entry.record, not_before)
            if when is not None:
                scan.backdated_count += 1
                if scan.backdated is None:
                    scan.backdated = (entry, when)
        if not entry.valid or entry.seq != expect_seq or entry.prev != expect_prev:
            scan.clean = False
        if entry.seq == head_seq:
            scan.at_head = entry.hash
        if entry.seq >= scan.last_seq:
            scan.last_seq, scan.last_hash = entry.seq, entry.hash
        expect_seq, expect_prev = entry.seq + 1, entry.hash
    return scan


def _check_head(chain: str, head: tuple[int, str], scan: _Scan) -> list[Problem]:
    seq, digest = head
    if scan.last_seq < seq:
        return [
            Problem(
                kind=DELETED,
                chain=chain,
                seq=scan.last_seq + 1,
                id=None,
                detail=f"tail truncated: records #{scan.last_seq + 1}..#{seq} are missing "
                f"(saved head #{seq})",
            )
        ]
    if scan.at_head != digest:
        return [
            Problem(
                kind=ALTERED,
                chain=chain,
                seq=seq,
                id=None,
                detail=f"record #{seq} is not the saved head: the chain was rewritten up to it",
            )
        ]
    return []


# -- classifying -----------------------------------------------------------------------------


def _classify(chain: str, entries: list[_Entry]) -> list[Problem]:
    problems: list[Problem] = []

    def report(kind: str, entry: _Entry | None, seq: int, detail: str) -> None:
        problems.append(
            Problem(
                kind=kind,
                chain=chain,
                seq=seq,
                id=entry.id if entry is not None else None,
                detail=detail,
            )
        )

    # The record a hash stands for: the one stored where it was sealed (its hash holds), else the first. A copy
    # stored at an earlier seq must not make the genuine record look like the copy.
    first_by_hash: dict[str, _Entry] = {}
    for entry in entries:
        known = first_by_hash.get(entry.hash)
        if known is None or (entry.valid and not known.valid):
            first_by_hash[entry.hash] = entry
    children: set[str] = {e.prev for e in entries}
    linked = _linked_positions(entries, first_by_hash)

    blamed: set[int] = set()  # id() of entries already reported, so none is named twice
    seen_seq: set[int] = set()
    previous: _Entry | None = None
    for entry in entries:
        if entry.seq < 1 and entry.record is not None:  # read back whole, but where no record can be
            report(INSERTED, entry, entry.seq, f"stored as #{entry.seq}, before the chain's first record (#1)")
            blamed.add(id(entry))
            continue
        if entry.seq in seen_seq:
            report(INSERTED, entry, entry.seq, f"a second record stored as #{entry.seq}")
            blamed.add(id(entry))
            continue
        seen_seq.add(entry.seq)
        expect = previous.seq + 1 if previous is not None else 1
        gap = entry.seq > expect
        if gap:
            missing = f"#{expect}" if entry.seq - 1 == expect else f"#{expect}..#{entry.seq - 1}"
            report(DELETED, None, expect, f"record(s) {missing} missing before #{entry.seq}")
        original = first_by_hash[entry.hash]
        if original is not entry:
            report(INSERTED, entry, entry.seq, f"a copy of record #{original.seq}")
            blamed.add(id(entry))
            previous = entry
            continue
        position = linked[id(entry)]
        parent_missing = entry.prev != GENESIS and entry.prev not in first_by_hash
        if entry.note:
            report(ALTERED, entry, entry.seq, entry.note)
        elif position != entry.seq:
            assert entry.record is not None
            r = entry.record
            resealed = record_hash(
                r.prev_hash,
                r.chain,
                position,
                r.kind,
                r.id,
                r.at,
                r.body_json or canonical_text(r.body),
            )
            if resealed == entry.hash:
                report(
                    REORDERED, entry, entry.seq, f"sealed as #{position}, stored as #{entry.seq}"
                )
            elif entry.valid:
                after = "starts from genesis" if position == 1 else f"links after #{position - 1}"
                report(INSERTED, entry, entry.seq, f"{after} but is stored as #{entry.seq}")
            else:
                report(ALTERED, entry, entry.seq, "hash does not match the content")
            blamed.add(id(entry))
        elif not entry.valid:
            report(ALTERED, entry, entry.seq, "hash does not match the content")
            blamed.add(id(entry))
        elif parent_missing and not gap:
            # It links to a hash no stored record has, yet no seq is missing: either its
            # predecessor was rewritten (hash recomputed) or this record was forged.
            if previous is None:
                report(
                    INSERTED,
                    entry,
                    entry.seq,
                    "the chain's first record does not start from genesis",
                )
                blamed.add(id(entry))
            elif entry.hash in children and id(previous) not in blamed:
                report(
                    ALTERED,
                    previous,
                    previous.seq,
                    f"rewritten with a new hash: record #{entry.seq} links to a different "
                    f"#{previous.seq}",
                )
                blamed.add(id(previous))
            elif entry.hash not in children:
                report(
                    INSERTED,
                    entry,
                    entry.seq,
                    f"links to no stored record (or record #{previous.seq} was rewritten)",
                )
                blamed.add(id(entry))
        previous = entry
    problems.sort(key=lambda p: p.seq if p.seq is not None else -1)
    return problems


def _linked_positions(entries: list[_Entry], by_hash: dict[str, _Entry]) -> dict[int, int]:
    """Each entry's position according to the links alone (``id(entry) -> seq``).

    Genesis is position 0; an entry whose predecessor is missing (or that sits in a loop of
    forged links) is taken to be where it is stored, and its descendants count from there.
    """
    positions: dict[int, int] = {}
    for start in entries:
        path: list[_Entry] = []
        on_path: set[int] = set()
        entry: _Entry | None = start
        base = 0
        while entry is not None and id(entry) not in positions:
            if id(entry) in on_path:  # a loop of forged links: anchor where it is stored
                base = path[-1].seq - 1
                break
            path.append(entry)
            on_path.add(id(entry))
            if entry.prev == GENESIS:
                base = 0
                entry = None
            elif entry.prev in by_hash:
                entry = by_hash[entry.prev]
            else:  # predecessor missing: trust the stored seq
                base = entry.seq - 1
                entry = None
        else:
            if entry is not None:
                base = positions[id(entry)]
        for offset, item in enumerate(reversed(path), start=1):
            positions.setdefault(id(item), base + offset)
    return positions
