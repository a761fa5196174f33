"""The decision core end to end: locator + catalog + packs (+ recorder) -> Decision, without HTTP."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import iptocc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from conftest import TEST_CATALOG

from exportgate.catalog import load_catalog
from exportgate.decision import Decision, RequestFacts
from exportgate.errors import ExportGateError, NoPackInForce, RecordStoreError
from exportgate.gate import Gate, format_time
from exportgate.geo import build_locator
from exportgate.policy import SHIPPED_DIR, load_packs
from exportgate.records import Recorder, open_store

AFTER = dt.datetime(2010, 3, 8, 12, tzinfo=dt.UTC)
BEFORE = dt.datetime(2010, 3, 7, 12, tzinfo=dt.UTC)
CHAT = "/files/chat-1.0.tar.gz"
CRYPTO = "/files/crypto-1.0.tar.gz"
OTHER = "/files/readme.txt"

# Registry data (iptocc) for these addresses; checked first so a data change reads as such, not as a gate bug.
EMBEDDED = {"2.176.0.1": "IR", "2a01:5ec0::1": "IR", "41.67.0.1": "SD", "152.206.0.1": "CU", "8.8.8.8": "US"}


@pytest.fixture(scope="module")
def gate() -> Gate:
    for address, country in EMBEDDED.items():
        assert iptocc.country_code(address) == country, f"iptocc data changed for {address}"
    return Gate(locator=build_locator(), catalog=load_catalog(TEST_CATALOG), policies=load_packs([SHIPPED_DIR]))


def decide(gate: Gate, client: str, path: str, at: dt.datetime = AFTER) -> Decision:
    return gate.decide(RequestFacts(client=client, path=path), at=at)


SEED = [
    pytest.param("2.176.0.1", CHAT, AFTER, "allow", id="IR free personal comms after"),
    pytest.param("2.176.0.1", CHAT, BEFORE, "block", id="IR free personal comms before"),
    pytest.param("2.176.0.1", CRYPTO, AFTER, "block", id="IR 5D002 fee"),
    pytest.param("2.176.0.1", OTHER, AFTER, "block", id="IR unclassified"),
    pytest.param("2a01:5ec0::1", CHAT, AFTER, "allow", id="IR IPv6 free personal comms"),
    pytest.param("41.67.0.1", CHAT, AFTER, "allow", id="SD free personal comms after"),
    pytest.param("41.67.0.1", CHAT, BEFORE, "block", id="SD before"),
    pytest.param("41.67.0.1", CRYPTO, AFTER, "block", id="SD 5D002"),
    pytest.param("152.206.0.1", CHAT, AFTER, "block", id="CU pending Commerce"),
    pytest.param("152.206.0.1", OTHER, AFTER, "block", id="CU unclassified"),
    pytest.param("8.8.8.8", CRYPTO, AFTER, "allow", id="US 5D002"),
    pytest.param("10.1.2.3", CRYPTO, AFTER, "flag", id="private address"),
    pytest.param("not-an-ip", CRYPTO, AFTER, "flag", id="garbage address"),
]


@pytest.mark.parametrize(("client", "path", "at", "action"), SEED)
def test_seed_scenarios_through_the_gate(gate, client, path, at, action):
    decision = decide(gate, client, path, at)
    assert decision.action == action
    assert decision.citation and decision.rule
    assert decision.location.source or decision.location.unknown_reason == "unparseable"  # names its source


IRANIAN_FORMS = [
    pytest.param("2.176.0.1", "plain", id="plain"),
    pytest.param("::ffff:2.176.0.1", "ipv4-mapped", id="IPv4-mapped"),
    pytest.param("::ffff:2b0:1", "ipv4-mapped", id="IPv4-mapped hex"),
    pytest.param("::2.176.0.1", "ipv4-compatible", id="IPv4-compatible"),
    pytest.param("2002:2b0:1::1", "6to4", id="6to4"),
    pytest.param("64:ff9b::2.176.0.1", "nat64", id="NAT64"),
    # Teredo: client 2.176.0.1 obfuscated (bitwise not) in the last 32 bits; server 65.54.227.120.
    pytest.param("2001:0:4136:e378:8000:63bf:fd4f:fffe", "teredo", id="Teredo"),
    pytest.param("2a01:5ec0::1%eth0", "plain", id="IPv6 with zone id"),
]


@pytest.mark.parametrize(("client", "form"), IRANIAN_FORMS)
def test_every_form_of_an_iranian_address_is_located_in_iran(gate, client, form):
    for path, action in ((CHAT, "allow"), (CRYPTO, "block")):
        decision = decide(gate, client, path)
        assert decision.location.country == "IR", decision.location
        assert decision.location.form == form
        assert decision.action == action


def test_time_before_every_pack_is_refused(gate):
    with pytest.raises(NoPackInForce):
        decide(gate, "2.176.0.1", CHAT, dt.datetime(1999, 1, 1, tzinfo=dt.UTC))


def test_unknown_client_address_is_an_unknown_location(gate):
    decision = gate.decide(RequestFacts(client="", path=CRYPTO, client_error="obfuscated"), at=AFTER)
    assert (decision.action, decision.rule) == ("flag", "unknown-location")
    assert decision.location.unknown_reason == "client-address-unknown"


def test_fast_construction_equals_the_dataclass(gate):
    d = decide(gate, "2.176.0.1", CHAT)
    rebuilt = Decision(**{f.name: getattr(d, f.name) for f in dataclasses.fields(Decision)})
    assert rebuilt == d
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.action = "allow"  # type: ignore[misc]


def test_decision_ids_are_unique(gate):
    ids = {decide(gate, "8.8.8.8", CHAT).id for _ in range(1000)}
    assert len(ids) == 1000


def test_decide_records_nothing_and_needs_no_store(gate):
    with pytest.raises(ExportGateError, match="no record store"):
        gate.decide_and_record(RequestFacts(client="8.8.8.8", path=CHAT))


def test_decide_and_record_commits_before_returning(tmp_path):
    store = open_store(f"sqlite://{tmp_path / 'r.db'}")
    with Recorder(store, instance="t") as recorder:
        gate = Gate(locator=build_locator(), catalog=load_catalog(TEST_CATALOG), policies=load_packs([SHIPPED_DIR]),
                    recorder=recorder)
        decision = gate.decide_and_record(RequestFacts(client="2.176.0.1", path=CRYPTO, method="GET",
                                                       host="mirror.example", raw_path="/files/./crypto-1.0.tar.gz"))
        # Committed: another connection sees it now.
        other = open_store(f"sqlite://{tmp_path / 'r.db'}")
        record = other.get(decision.id)
        other.close()
    store.close()
    assert record is not None and record.kind == "decision"
    body = record.body
    assert body["action"] == "block" and body["rule"] == "ir-other-software"
    assert body["pack"]["id"] == "us-2022-02-21-covered-regions" and len(body["pack"]["sha256"]) == 64
    assert body["location"]["country"] == "IR" and body["location"]["source"].startswith("iptocc")
    assert body["classification"]["eccn"] == "5D002" and "catalog.yaml" in body["classification"]["rule"]
    assert body["request"]["raw_path"] == "/files/./crypto-1.0.tar.gz"
    assert record.at == format_time(decision.at)


def test_store_failure_is_an_error_never_a_silent_success(tmp_path):
    store = open_store(f"sqlite://{tmp_path / 'r.db'}?busy_timeout_ms=50")
    recorder = Recorder(store, instance="t")
    gate = Gate(locator=build_locator(), catalog=load_catalog(TEST_CATALOG), policies=load_packs([SHIPPED_DIR]),
                recorder=recorder)
    # A real failure: another connection holds the write lock longer than the store's busy timeout.
    import sqlite3

    blocker = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
    blocker.execute("PRAGMA busy_timeout=0")
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(RecordStoreError):
            gate.decide_and_record(RequestFacts(client="2.176.0.1", path=CHAT))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert not recorder.healthy
    gate.decide_and_record(RequestFacts(client="2.176.0.1", path=CHAT))  # recovers
    assert recorder.healthy
    recorder.close()
    store.close()


def test_format_time_refuses_naive_and_converts_offsets():
    with pytest.raises(ValueError, match="naive"):
        format_time(dt.datetime(2026, 1, 1))
    tz = dt.timezone(dt.timedelta(hours=-5))
    assert format_time(dt.datetime(2026, 1, 1, 19, tzinfo=tz)) == "2026-01-02T00:00:00.000000Z"


@given(st.lists(st.datetimes(min_value=dt.datetime(1, 1, 1, 0, 0, 1), timezones=st.just(dt.UTC)), min_size=1,
                max_size=20))
def test_format_time_is_isoformat_whatever_came_before(times: list[dt.datetime]) -> None:
    # The text of the last second is reused: consecutive times in the same or other seconds must not leak into
    # each other.
    for when in times:
        expected = when.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
        assert format_time(when) == expected
        assert format_time(when.replace(microsecond=(when.microsecond + 1) % 1_000_000)) == (
            when.replace(tzinfo=None, microsecond=(when.microsecond + 1) % 1_000_000)
            .isoformat(timespec="microseconds") + "Z")


def test_dry_run_pack_records_but_serves(tmp_path):
    text = (SHIPPED_DIR / "us-2010-03-08-internet-comms.yaml").read_text().replace("mode: enforce", "mode: dry-run")
    (tmp_path / "pack.yaml").write_text(text)
    gate = Gate(locator=build_locator(), catalog=load_catalog(TEST_CATALOG), policies=load_packs([tmp_path]))
    decision = decide(gate, "2.176.0.1", CRYPTO)
    assert (decision.action, decision.mode, decision.enforced_action, decision.served) == (
        "block", "dry-run", "flag", True)


def test_record_encoder_matches_canonical_json_of_the_record():
    from exportgate.authorization import AuthorizationBook, parse_authorization
    from exportgate.recordbody import RecordEncoder
    from exportgate.records.chain import canonical_text

    auth = parse_authorization({"id": "A-\u00e9", "basis": "BIS \"quoted\" license", "destinations": ["CU"],
                                "valid_from": "2000-01-01"}, file="t", line=None)
    gate = Gate(locator=build_locator(), catalog=load_catalog(TEST_CATALOG),
                policies=load_packs([SHIPPED_DIR], authorizations=AuthorizationBook([auth])))
    encoder = RecordEncoder(max_entries=8)  # small: exercise the clearing too
    clients = ["2.176.0.1", "::ffff:2.176.0.1", "152.206.0.1", "8.8.8.8", "10.0.0.1", "garbage\u2028", ""]
    paths = [CHAT, CRYPTO, OTHER, "/caf\u00e9/\u0000x"]
    for _ in range(3):
        for client in clients:
            for path in paths:
                request = RequestFacts(client=client, path=path, method="GET", host="h\"ost", raw_path=path + "?",
                                       address_chain=(client, "127.0.0.1"),
                                       client_error="obfuscated" if not client else None)
                decision = gate.decide(request, at=AFTER)
                expected = canonical_text(decision.to_record())
                assert encoder.encode(decision) == expected
                assert encoder.encode(decision) == expected  # from the caches


def test_runtime_writes_the_json_lines_sink_after_the_store(tmp_path):
    import json

    from conftest import IR_CLIENT, write_config

    from exportgate.config import load_config
    from exportgate.runtime import GateRuntime

    log = tmp_path / "decisions.jsonl"
    config = load_config(write_config(tmp_path, record_log=str(log)), env={})
    with GateRuntime(config, record=True) as runtime:
        first = runtime.gate.decide_and_record(RequestFacts(client=IR_CLIENT, path=CRYPTO))
        second = runtime.gate.decide_and_record(RequestFacts(client=IR_CLIENT, path=CHAT))
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["id"], x["body"]["action"]) for x in lines] == [(first.id, "block"), (second.id, "allow")]
    assert lines[1]["prev_hash"] == lines[0]["hash"] and lines[0]["chain"].startswith("test:")


def test_a_gate_started_from_loaded_files_decides_by_them_whatever_is_on_disk_now(tmp_path) -> None:
    """What a server's master hands its workers: the manifest and packs as loaded. A worker built from them
    decides as they say even when the manifest on disk has since been broken, and replays the store's
    authorizations itself."""
    from conftest import IR_CLIENT, write_config

    from exportgate.config import load_config
    from exportgate.runtime import GateRuntime, load_decision_files

    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(TEST_CATALOG.read_text(encoding="utf-8"), encoding="utf-8")
    config = load_config(write_config(tmp_path, catalog=str(catalog)), env={})
    files = load_decision_files(config)
    catalog.write_text("rules: [unclosed\n", encoding="utf-8")
    with GateRuntime(config, record=True, files=files) as runtime:
        assert runtime.gate.decide_and_record(RequestFacts(client=IR_CLIENT, path=CRYPTO)).action == "block"
        assert runtime.gate.decide_and_record(RequestFacts(client=IR_CLIENT, path=CHAT)).action == "allow"
        assert runtime.gate.policies.packs == files.packs


@pytest.mark.parametrize("broken", ["manifest", "pack", "store"])
def test_loading_the_files_fails_with_file_and_line_for_what_a_worker_could_not_open(tmp_path, broken) -> None:
    from conftest import write_config

    from exportgate.config import load_config
    from exportgate.errors import ConfigErrors
    from exportgate.policy import shipped_pack_paths
    from exportgate.runtime import load_decision_files

    catalog, pack = tmp_path / "catalog.yaml", tmp_path / "pack.yaml"
    catalog.write_text(TEST_CATALOG.read_text(encoding="utf-8"), encoding="utf-8")
    pack.write_text(next(iter(shipped_pack_paths())).read_text(encoding="utf-8"), encoding="utf-8")
    records = tmp_path / "records.db"
    if broken == "manifest":
        catalog.write_text("rules:\n  - path: [unclosed\n", encoding="utf-8")
    elif broken == "pack":
        pack.write_text("id: x\nrules: {\n", encoding="utf-8")
    else:
        records.write_bytes(b"this is not a SQLite database, and the worker could not open it" * 100)
    config = load_config(write_config(tmp_path, catalog=str(catalog), policies=[str(pack)],
                                      records=f"sqlite://{records}"), env={})
    with pytest.raises(ExportGateError) as caught:
        load_decision_files(config)
    where = {"manifest": f"{catalog}:", "pack": f"{pack}:", "store": f"{records}"}[broken]
    assert re.search(re.escape(where) + (r"\d+: " if broken != "store" else ""), str(caught.value))
    if broken != "store":
        assert isinstance(caught.value, ConfigErrors)

