"""The command line: the contract ops, release engineers and compliance script against."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import CU_CLIENT, IR_CLIENT, SHARED, require, write_config

from exportgate.cli import main
from exportgate.geodata import build


@pytest.fixture
def run(tmp_path, monkeypatch):
    """``run(*args, config=None)`` -> click Result; the state directory is the test's own."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for name in list(__import__("os").environ):
        if name.startswith("EXPORTGATE_"):
            monkeypatch.delenv(name)
    runner = CliRunner()

    def invoke(*args: str, config: Path | None = None, env: dict[str, str] | None = None):
        argv = (["--config", str(config)] if config else []) + list(args)
        return runner.invoke(main, argv, env=env, catch_exceptions=False)

    return invoke


@pytest.fixture
def config(tmp_path) -> Path:
    return write_config(tmp_path)


def test_explain_json_has_the_contract_fields(run, config):
    result = run("explain", "--ip", IR_CLIENT, "--path", "/files/chat-2.tar.gz", "--json", config=config)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for key in ("action", "mode", "rule", "citation", "authorization", "pack", "country", "subdivision",
                "classification", "geo_source", "reasons"):
        assert key in data, key
    assert (data["action"], data["country"], data["rule"]) == ("allow", "IR", "ir-personal-comms-software")
    assert data["geo_source"] == "override 192.0.2.10/32"


@pytest.mark.parametrize(("at", "action", "pack"), [
    pytest.param("2010-03-07", "block", "us-pre-2010-baseline@1", id="day before"),
    pytest.param("2010-03-08", "allow", "us-2010-03-08-internet-comms@1", id="the day"),
    pytest.param("2010-03-07T23:59:59Z", "block", "us-pre-2010-baseline@1", id="last second before"),
])
def test_explain_at_a_date(run, config, at, action, pack):
    result = run("explain", "--ip", IR_CLIENT, "--path", "/files/chat-2.tar.gz", "--at", at, "--json",
                 config=config)
    data = json.loads(result.output)
    assert (data["action"], data["pack"]) == (action, pack)


def test_explain_before_any_pack_fails(run, config):
    result = run("explain", "--ip", IR_CLIENT, "--path", "/x", "--at", "1990-01-01", config=config)
    assert result.exit_code == 1
    assert "no policy pack is in force" in result.output


def test_explain_text_output(run, config):
    result = run("explain", "--ip", IR_CLIENT, "--path", "/files/crypto-2.tar.gz", config=config)
    assert result.exit_code == 0
    assert "BLOCK" in result.output and "ir-other-software" in result.output and "because:" in result.output


def test_explain_without_any_config_uses_embedded_defaults(run):
    result = run("explain", "--ip", "2.176.0.1", "--path", "/anything.tar.gz", "--json")
    data = json.loads(result.output)
    assert data["country"] == "IR" and data["geo_source"].startswith("iptocc")
    assert data["action"] == "block" and data["classification"]["classified"] is False


def test_cuba_setting_from_the_environment(run, config):
    args = ("explain", "--ip", CU_CLIENT, "--path", "/files/chat-2.tar.gz", "--json")
    assert json.loads(run(*args, config=config).output)["action"] == "block"
    flagged = run(*args, config=config, env={"EXPORTGATE_POLICY_SETTINGS__CUBA_SOFTWARE": "flag"})
    assert json.loads(flagged.output)["action"] == "flag"


def test_classify(run, config):
    result = run("classify", "/files/chat-9.tar.gz", config=config)
    assert "personal-communications" in result.output and "catalog.yaml:5" in result.output
    data = json.loads(run("classify", "/files/chat-9.tar.gz", "--json", config=config).output)
    assert data["eccn"] == "EAR99"
    explained = run("classify", "/packages/cryptopkg-1.0-py3-none-any.whl", "--explain", config=config)
    assert "wins" in explained.output
    assert "unclassified" in run("classify", "/nothing/here", config=config).output


@pytest.mark.parametrize("asked", [
    pytest.param("/files/x/../crypto-1.tar.gz", id="dot-dot"),
    pytest.param("/files//crypto-1.tar.gz", id="double slash"),
    pytest.param("/files/%63rypto-1.tar.gz", id="encoded"),
])
def test_classify_and_explain_read_the_path_as_the_gate_does(run, config, asked):
    """A release engineer checking a spelling gets the artifact the gate would decide on, and is told so."""
    result = run("classify", asked, config=config)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("/files/crypto-1.tar.gz: other") and f"reads {asked!r}" in result.output
    explained = run("explain", "--ip", IR_CLIENT, "--path", asked, config=config)
    assert "BLOCK" in explained.output and "path:           /files/crypto-1.tar.gz" in explained.output
    data = json.loads(run("explain", "--ip", IR_CLIENT, "--path", asked, "--json", config=config).output)
    assert data["rule"] == "ir-other-software"


@pytest.mark.parametrize(("asked", "reason"), [
    pytest.param("/files/a%2Fcrypto-1.tar.gz", "an encoded '/'", id="encoded slash"),
    pytest.param("/../etc/passwd", "climbs above the root", id="escapes the root"),
])
def test_classify_refuses_a_path_the_gate_refuses(run, config, asked, reason):
    for args in (("classify", asked), ("explain", "--ip", IR_CLIENT, "--path", asked)):
        result = run(*args, config=config)
        assert result.exit_code == 1
        assert reason in result.output and "answers such a request with 400" in result.output


def test_check_passes_on_defaults_and_on_the_test_config(run, config):
    assert run("check").exit_code == 0
    result = run("check", config=config)
    assert result.exit_code == 0, result.output
    assert "test-mirror" in result.output


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


BAD_PACK = """pack: broken
version: 1
effective: {from: 2030-01-01, until: null}
sources: [x]
disclaimer: "not legal advice"
jurisdictions: {}
rules:
  - id: r1
    destinations: [IRN]
    action: block
    citation: c
defaults:
  unknown_location: {action: flag, citation: c}
  unclassified: {action: block, citation: c}
  other_destinations: {action: allow, citation: c}
"""


def test_check_reports_every_bad_file_with_file_and_line(run, tmp_path):
    policies = tmp_path / "packs"
    policies.mkdir()
    pack = write(policies / "broken.yaml", BAD_PACK)
    manifest = write(tmp_path / "catalog.yaml", "manifest: m\nversion: 1\nartifacts:\n  - path: /x\n    class: spam\n")
    config = write_config(tmp_path, policies=[str(policies)], catalog=str(manifest))
    result = run("check", config=config)
    assert result.exit_code == 1
    assert f"{pack}:9:" in result.output and "alpha-3" in result.output
    assert f"{manifest}:5" in result.output


@pytest.mark.parametrize(("text", "line", "message"), [
    pytest.param("geo: {database: [x]}\n", 1, "must be text", id="wrong type"),
    pytest.param("recods: x\n", 1, "unknown key 'recods'", id="unknown key"),
    pytest.param("geo:\n  overrides:\n    - {network: 10.0.0.0/8, country: XX}\n", 3, "XX", id="unknown country"),
    pytest.param("geo:\n  overrides:\n    - {network: 10.0.0.0/33, country: US}\n", 3, "10.0.0.0/33",
                 id="bad CIDR"),
    pytest.param("serve:\n  trust_proxy:\n    - 10.0.0.0/8\n    - nonsense\n", 4, "nonsense", id="bad trusted proxy"),
    pytest.param("serve:\n  gated:\n    - /a/**\n    - packages/**\n", 4, "serve.gated", id="gated glob not absolute"),
    pytest.param("serve: {gated: ['/a/x**.whl']}\n", 1, "whole segment", id="gated glob with ** in a segment"),
    # What `serve` refuses, `check` (run before a reload, as `nginx -t` is) reports too.
    pytest.param("serve: {mode: proxy}\n", None, "proxy mode needs --upstream", id="proxy mode without upstream"),
    pytest.param("serve: {mode: proxy, upstream: 'ftp://mirror'}\n", None, "is not an http:// or https:// URL",
                 id="proxy mode with a bad upstream"),
    pytest.param("serve: {mode: proxy, upstream: 'http://[::1'}\n", None, "is not a URL: Invalid IPv6 URL",
                 id="proxy mode with an unclosed IPv6 upstream"),
    pytest.param("serve: {mode: proxy, upstream: 'http://mirror:99999'}\n", None, "is not a URL: Port out of range",
                 id="proxy mode with an upstream port out of range"),
    pytest.param("serve: {mode: static}\n", None, "static mode needs --root", id="static mode without root"),
    pytest.param("serve: {mode: static, root: /nonexistent/mirror}\n", None, "is not a directory",
                 id="static mode with a missing root"),
])
def test_check_rejects_bad_config(run, tmp_path, text, line, message):
    config = write(tmp_path / "gate.yaml", text)
    result = run("check", config=config)
    assert result.exit_code == 1, result.output
    assert message in result.output
    if line is not None:
        assert f"{config}:{line}:" in result.output


def test_check_reports_every_serve_problem_at_once_with_the_config_file(run, tmp_path):
    config = write(tmp_path / "gate.yaml", "serve: {mode: proxy, trust_proxy: [nonsense], gated: ['packages/**']}\n")
    result = run("check", config=config)
    assert result.exit_code == 1, result.output
    for message in ("nonsense", "serve.gated", "proxy mode needs --upstream"):
        assert f"{config}:" in result.output.split(message)[0].rsplit("\n", 1)[-1], (message, result.output)


def test_check_rejects_bad_geo_databases(run, tmp_path):
    good = build([{"network": "2.176.0.0/12", "country": "IR"}], tmp_path / "good.mmdb", kind="Country",
                 build_epoch=1_700_000_000)
    truncated = write(tmp_path / "truncated.mmdb", "")
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = write(tmp_path / "garbage.mmdb", "not a database")
    for db, expected in ((tmp_path / "missing.mmdb", "missing.mmdb"), (truncated, "truncated.mmdb"),
                         (garbage, "garbage.mmdb")):
        result = run("check", config=write_config(tmp_path, geo={"database": str(db)}))
        assert result.exit_code == 1, (db, result.output)
        assert expected in result.output
    asn = SHARED / "testdata" / "maxmind" / "GeoLite2-ASN-Test.mmdb"
    require(asn.exists(), "MaxMind's test databases", "they ship in ../shared/testdata/maxmind")
    wrong = tmp_path / "asn.mmdb"
    shutil.copy(asn, wrong)
    result = run("check", config=write_config(tmp_path, geo={"database": str(wrong)}))
    assert result.exit_code == 1 and "asn.mmdb" in result.output


def test_check_names_every_bad_geo_file(run, tmp_path):
    """It named the country database and stopped: a wrong anonymous-IP path showed only at the next check."""
    config = write_config(tmp_path, geo={"database": str(tmp_path / "country.mmdb"),
                                         "anonymous_ip_database": str(tmp_path / "anonymous.mmdb")})
    result = run("check", config=config)
    assert result.exit_code == 1 and "country.mmdb" in result.output and "anonymous.mmdb" in result.output


def test_check_validates_an_authorization_file(run, config, tmp_path):
    bad = write(tmp_path / "auth.yaml", "authorizations:\n  - id: A\n    basis: b\n    destinations: [CU]\n"
                                       "    valid_from: 2011-01-01\n    valid_until: 2010-01-01\n")
    result = run("check", "--authorizations", str(bad), config=config)
    assert result.exit_code == 1
    assert f"{bad}:6:" in result.output and "not after" in result.output


def test_authorizations_lifecycle(run, config, tmp_path):
    args = ("explain", "--ip", CU_CLIENT, "--path", "/files/chat-2.tar.gz", "--json")
    assert json.loads(run(*args, config=config).output)["action"] == "block"
    added = run("authorize", "add", "--id", "BIS-CU-7", "--basis", "BIS license D777", "--destination", "CU",
                "--class", "personal-communications", "--valid-from", "2010-01-01", config=config)
    assert added.exit_code == 0, added.output
    assert f"in sqlite://{config.parent / 'records.db'}" in added.output  # which store: the gate reads its own
    assert "no conditions" not in added.output
    data = json.loads(run(*args, config=config).output)
    assert (data["action"], data["authorization"]) == ("allow", "BIS-CU-7")
    assert "BIS license D777" in data["citation"]
    listed = json.loads(run("authorize", "list", "--json", config=config).output)
    assert [(a["id"], a["status"]) for a in listed] == [("BIS-CU-7", "valid")]
    assert run("authorize", "revoke", "BIS-CU-7", "--reason", "license withdrawn", config=config).exit_code == 0
    assert json.loads(run(*args, config=config).output)["action"] == "block"
    listed = json.loads(run("authorize", "list", "--json", config=config).output)
    assert listed[0]["status"] == "revoked" and listed[0]["revoked_reason"] == "license withdrawn"
    again = run("authorize", "revoke", "BIS-CU-7", "--reason", "x", config=config)
    assert again.exit_code == 1 and "already revoked" in again.output
    missing = run("authorize", "revoke", "NOPE", "--reason", "x", config=config)
    assert missing.exit_code == 1 and "no authorization 'NOPE'" in missing.output
    # Expired: valid_until in the past.
    imported = write(tmp_path / "auth.yaml", "authorizations:\n  - id: OLD\n    basis: CCD\n    destinations: [CU]\n"
                                            "    valid_from: 2009-09-03\n    valid_until: 2011-01-01\n")
    assert run("authorize", "import", str(imported), config=config).exit_code == 0
    statuses = {a["id"]: a["status"] for a in json.loads(run("authorize", "list", "--json", config=config).output)}
    assert statuses == {"BIS-CU-7": "revoked", "OLD": "expired"}
    # A revocation takes effect at its time: decisions as of earlier dates still rely on the authorization.
    assert json.loads(run(*args, "--at", "2010-06-01", config=config).output)["authorization"] == "BIS-CU-7"
    late_2009 = json.loads(run(*args, "--at", "2009-12-01", config=config).output)
    assert (late_2009["action"], late_2009["authorization"], late_2009["pack"]) == (
        "allow", "OLD", "us-pre-2010-baseline@1")
    # A license's own dates cover 2009, though it was put on file today: explain says so.
    assert late_2009["authorization_on_file_since"] is not None
    said = run("explain", "--ip", CU_CLIENT, "--path", "/files/chat-2.tar.gz", "--at", "2009-12-01", config=config)
    assert "authorization:  OLD (on file since " in said.output and "did not rely on it" in said.output
    listed = {a["id"]: a for a in json.loads(run("authorize", "list", "--json", config=config).output)}
    assert listed["OLD"]["added_at"] == late_2009["authorization_on_file_since"]


@pytest.mark.parametrize(("args", "message"), [
    pytest.param(["--destination", "CUB"], "alpha-3", id="alpha-3 destination"),
    pytest.param(["--destination", "CU", "--eccn", "5Q999"], "is not an ECCN", id="bad eccn"),
    pytest.param(["--destination", "CU", "--valid-until", "2000-01-01"], "not after", id="dates out of order"),
])
def test_authorize_add_rejects_bad_input(run, config, args, message):
    result = run("authorize", "add", "--id", "X", "--basis", "b", "--valid-from", "2010-01-01", *args,
                 config=config)
    assert result.exit_code == 1 and message in result.output


def test_audit_verify_detects_tampering(run, config, tmp_path):
    run("authorize", "add", "--id", "A1", "--basis", "b", "--destination", "CU", "--valid-from", "2010-01-01",
        config=config)
    run("authorize", "add", "--id", "A2", "--basis", "b", "--destination", "CU", "--valid-from", "2010-01-01",
        config=config)
    ok = run("audit", "verify", config=config)
    assert ok.exit_code == 0 and ok.output.startswith("ok:")
    heads = tmp_path / "heads.json"
    assert run("audit", "verify", "--save-heads", str(heads), config=config).exit_code == 0
    db = sqlite3.connect(tmp_path / "records.db")
    db.execute("DROP TRIGGER records_no_update")
    db.execute("UPDATE records SET body = replace(body, '\"A1\"', '\"A9\"')")
    db.commit()
    db.close()
    bad = run("audit", "verify", "--json", config=config)
    assert bad.exit_code == 1
    report = json.loads(bad.output)
    assert report["counts"]["altered"] == 1 and "authorization:A1:" in report["problems"][0]["id"]


def _tamper(database, *statements):
    db = sqlite3.connect(database)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()


def test_a_store_truncated_to_nothing_does_not_verify(run, tmp_path):
    """explain wrote an empty schema into it, and audit verify then said ok: 0 records."""
    store = tmp_path / "records.db"
    store.write_bytes(b"")
    config = write_config(tmp_path, records=f"sqlite://{store}")
    for args in (("audit", "verify"), ("explain", "--ip", CU_CLIENT, "--path", "/files/chat-2.tar.gz")):
        result = run(*args, config=config)
        assert result.exit_code == 1 and "an empty file, not a record store" in result.output, (args, result.output)
    assert store.read_bytes() == b""


def test_an_authorization_without_conditions_says_it_covers_everything(run, config):
    broad = run("authorize", "add", "--id", "BROAD", "--basis", "b", "--destination", "SY", "--valid-from",
                "2010-01-01", config=config)
    assert broad.exit_code == 0 and "no conditions: it covers every artifact" in broad.output


def test_listing_authorizations_makes_no_store(run, tmp_path):
    config = write_config(tmp_path, records=f"sqlite://{tmp_path / 'typo' / 'records.db'}")
    listed = run("authorize", "list", config=config)
    assert listed.exit_code == 0 and "no authorizations on file" in listed.output, listed.output
    assert json.loads(run("authorize", "list", "--json", config=config).output) == []
    revoked = run("authorize", "revoke", "BIS-1", "--reason", "x", config=config)
    assert revoked.exit_code == 1 and "no authorization 'BIS-1' on file: no record store" in revoked.output
    assert not (tmp_path / "typo").exists()


def test_adding_an_authorization_again_lists_the_terms_it_replaced(run, config):
    for cls in ("personal-communications", "communications"):
        added = run("authorize", "add", "--id", "BIS-CU-9", "--basis", "BIS license D779", "--destination", "CU",
                    "--class", cls, "--valid-from", "2010-01-01", config=config)
        assert added.exit_code == 0, added.output
    listed = json.loads(run("authorize", "list", "--json", config=config).output)
    assert [(a["id"], a["status"], a["when"]["class"]) for a in listed] == [
        ("BIS-CU-9", "replaced", ["personal-communications"]), ("BIS-CU-9", "valid", ["communications"])]
    assert listed[0]["replaced_at"] and listed[1]["replaced_at"] is None


def test_explain_and_audit_find_a_store_whose_url_has_settings(run, tmp_path):
    """A query in the store URL (``?synchronous=full``) is a setting, not part of the file name: ``explain`` must
    still apply the store's authorizations and ``audit verify`` must still find the store."""
    config = write_config(tmp_path, records=f"sqlite://{tmp_path / 'records.db'}?synchronous=full")
    args = ("explain", "--ip", CU_CLIENT, "--path", "/files/chat-2.tar.gz", "--json")
    added = run("authorize", "add", "--id", "BIS-CU-8", "--basis", "BIS license D778", "--destination", "CU",
                "--class", "personal-communications", "--valid-from", "2010-01-01", config=config)
    assert added.exit_code == 0, added.output
    data = json.loads(run(*args, config=config).output)
    assert (data["action"], data["authorization"]) == ("allow", "BIS-CU-8")
    verified = run("audit", "verify", config=config)
    assert verified.exit_code == 0 and "no record store" not in verified.output, verified.output


def test_a_store_that_exists_but_does_not_open_is_an_error_not_no_store(run, tmp_path):
    store = tmp_path / "records.db"
    store.write_bytes(b"this is not a database file" * 100)
    config = write_config(tmp_path, records=f"sqlite://{store}")
    explained = run("explain", "--ip", CU_CLIENT, "--path", "/files/chat-2.tar.gz", config=config)
    assert explained.exit_code != 0 and "no record store" not in explained.output
    verified = run("audit", "verify", config=config)
    assert verified.exit_code != 0 and "no record store" not in verified.output
    assert store.read_bytes() == b"this is not a database file" * 100


def _two_authorizations(run, config):
    """A1 and A2, #1 and #2 of one chain."""
    file = write(config.parent / "two.yaml", "authorizations:\n"
                 + "".join(f"  - id: {i}\n    basis: b\n    destinations: [CU]\n    valid_from: 2010-01-01\n"
                           for i in ("A1", "A2")))
    assert run("authorize", "import", str(file), config=config).exit_code == 0


def _forged_authorization(database, at, chain_id="mirror-1:0123456789ab"):
    """A well-formed authorization in a chain of its own, hashed as exportgate would: what `authorize add` writes,
    written straight into the store by someone who can write it."""
    from exportgate.records import Chain, SQLiteStore

    body = {"id": "FORGED", "basis": "none", "destinations": ["CU"], "when": {}, "valid_from": "2010-01-01",
            "valid_until": None, "note": ""}
    with SQLiteStore(str(database)) as store:
        store.append([Chain(chain_id).seal("authorization", "FORGED", at, body)])


def test_audit_verify_with_saved_heads_sees_a_record_written_since_and_backdated(run, config, tmp_path):
    _two_authorizations(run, config)
    heads = tmp_path / "heads.json"
    assert run("audit", "verify", "--save-heads", str(heads), config=config).exit_code == 0
    saved = json.loads(heads.read_text())
    assert set(saved) == {"saved_at", "chains"} and len(saved["chains"]) == 1
    # An authorization made after the save is no problem: it is dated after it.
    assert run("authorize", "add", "--id", "LATER", "--basis", "b", "--destination", "CU", "--valid-from",
               "2010-01-01", config=config).exit_code == 0
    assert run("audit", "verify", "--heads", str(heads), config=config).exit_code == 0
    _forged_authorization(tmp_path / "records.db", "2026-01-01T00:00:00.000000Z")
    assert run("audit", "verify", config=config).exit_code == 0  # its hashes hold: alone it is invisible
    failed = run("audit", "verify", "--heads", str(heads), "--json", config=config)
    assert failed.exit_code == 1
    problems = json.loads(failed.output)["problems"]
    assert [(p["kind"], p["chain"], p["seq"], p["id"]) for p in problems] == [
        ("inserted", "mirror-1:0123456789ab", 1, "FORGED")]
    assert "backdated" in problems[0]["detail"]


def test_audit_verify_reads_heads_saved_without_their_time(run, config, tmp_path):
    _two_authorizations(run, config)
    saved = tmp_path / "new.json"
    assert run("audit", "verify", "--save-heads", str(saved), config=config).exit_code == 0
    old = tmp_path / "old.json"
    old.write_text(json.dumps(json.loads(saved.read_text())["chains"]))
    result = run("audit", "verify", "--heads", str(old), config=config)
    assert result.exit_code == 0 and "does not say when it was saved" in result.output
    for bad in ('{"saved_at": "yesterday", "chains": {}}', '{"saved_at": "2026-01-01T00:00:00Z"}', "[1, 2]",
                '{"saved_at": "0001-01-01T00:00:00Z", "chains": {}}', '{"saved_at": 5, "chains": {}}',
                '{"saved_at": "9999-12-31T23:59:59-01:00", "chains": {}}'):
        old.write_text(bad)
        refused = run("audit", "verify", "--heads", str(old), config=config)
        assert refused.exit_code == 1 and "not a chain-heads file" in refused.output, bad


@pytest.mark.parametrize(("statements", "kind"), [
    pytest.param(["INSERT INTO records SELECT chain, 0, kind, id, at, '{\"forged\":true}', 'x', 'y' FROM records "
                  "LIMIT 1"], "inserted", id="a row at seq 0 of a chain"),
    pytest.param(["INSERT INTO records VALUES ('attacker:000000000000', -1, 'decision', 'zzz', "
                  "'2026-01-01T00:00:00.000000Z', '{}', 'x', 'y')"], "inserted", id="a chain of its own at seq -1"),
    pytest.param(["DROP TRIGGER records_no_update",
                  "INSERT INTO records SELECT chain, 1.5, kind, 'junk', at, '{}', 'x', 'y' FROM records LIMIT 1",
                  "UPDATE records SET body = replace(body, '\"A2\"', '\"A9\"') WHERE seq = 2"],
                 "altered", id="an unreadable row does not hide a later edit"),
])
def test_audit_verify_reads_every_row(run, config, tmp_path, statements, kind):
    """Rows stored at seq 0 or below, or at a seq that is not an integer, were never read: verify said ok."""
    _two_authorizations(run, config)
    heads = tmp_path / "heads.json"
    assert run("audit", "verify", "--save-heads", str(heads), config=config).exit_code == 0
    _tamper(tmp_path / "records.db", *statements)
    for args in ((), ("--heads", str(heads))):
        result = run("audit", "verify", "--json", *args, config=config)
        assert result.exit_code == 1, result.output
        report = json.loads(result.output)
        assert report["counts"][kind] >= 1, report
    if "UPDATE" in statements[-1]:
        problems = json.loads(run("audit", "verify", "--json", config=config).output)["problems"]
        assert any(p["kind"] == "altered" and p["seq"] == 2 for p in problems), problems


def test_a_forged_row_at_seq_0_is_not_what_the_store_answers_for_its_id(config, tmp_path):
    from exportgate.config import load_config
    from exportgate.runtime import open_store

    store = open_store(load_config(config, env={}))
    try:
        from exportgate.records import Recorder

        with Recorder(store, instance="t") as recorder:
            real = recorder.record("decision", "d-1", "2026-01-01T00:00:00.000000Z", {"enforced": "block"})
        _tamper(tmp_path / "records.db", f"INSERT INTO records VALUES ('{real.chain}', 0, 'decision', 'd-1', "
                "'2026-01-01T00:00:00.000000Z', '{\"enforced\":\"allow\"}', 'x', 'y')")
        assert store.get("d-1").body == {"enforced": "block"}
    finally:
        store.close()


def test_audit_verify_saves_heads_only_of_a_store_that_verifies(run, config, tmp_path):
    _two_authorizations(run, config)
    heads = tmp_path / "heads.json"
    assert run("audit", "verify", "--save-heads", str(heads), config=config).exit_code == 0
    saved = heads.read_text()
    _tamper(tmp_path / "records.db", "DROP TRIGGER records_no_delete", "DELETE FROM records WHERE seq = 2")
    failed = run("audit", "verify", "--heads", str(heads), "--save-heads", str(heads), config=config)
    assert failed.exit_code == 1 and "heads not saved" in failed.output
    assert heads.read_text() == saved  # the truncation stays visible to the next run
    assert run("audit", "verify", "--heads", str(heads), config=config).exit_code == 1


def test_audit_verify_of_a_missing_store_fails_and_creates_nothing(run, tmp_path):
    config = write_config(tmp_path, records=f"sqlite://{tmp_path / 'moved.db'}")
    result = run("audit", "verify", config=config)
    assert result.exit_code == 1 and "no record store" in result.output
    assert not (tmp_path / "moved.db").exists()


def test_audit_verify_says_what_it_cannot_see_without_heads(run, config):
    _two_authorizations(run, config)
    result = run("audit", "verify", config=config)
    assert result.exit_code == 0 and "without --heads" in result.output
    assert json.loads(run("audit", "verify", "--json", config=config).output)["heads_checked"] is False


def test_audit_verify_with_a_bad_heads_file(run, config, tmp_path):
    _two_authorizations(run, config)
    heads = write(tmp_path / "heads.json", "not json")
    result = run("audit", "verify", "--heads", str(heads), config=config)
    assert result.exit_code == 1 and "chain-heads" in result.output


@pytest.mark.parametrize("command", [
    [], ["check"], ["explain"], ["classify"], ["serve"], ["packs"], ["authorize"], ["authorize", "add"],
    ["authorize", "list"], ["authorize", "revoke"], ["authorize", "import"], ["audit"], ["audit", "verify"],
])
def test_every_command_has_help(run, command):
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.output and len(result.output.splitlines()) > 3


@pytest.mark.parametrize("mode", ["proxy", "static"])
def test_serve_refuses_granian_where_it_would_weaken_path_checks(run, tmp_path, mode):
    config = write_config(tmp_path)
    where = ["--root", str(tmp_path)] if mode == "static" else ["--upstream", "http://127.0.0.1:9"]
    result = run("serve", "--mode", mode, "--server", "granian", *where, config=config)
    assert result.exit_code != 0
    assert "granian serves forward-auth mode only" in result.output and "%2F" in result.output


def test_packs_lists_settings(run):
    result = run("packs")
    assert "cuba_software" in result.output and "not legal advice" in result.output


def test_packs_shows_the_value_in_effect(run, tmp_path):
    """It listed the choices and the default only: the same output whatever this gate had set."""
    config = write_config(tmp_path, policy_settings={"cuba_software": "flag"})
    assert "setting cuba_software: flag (of block | flag; default block)" in run("packs", config=config).output
    data = json.loads(run("packs", "--json", config=config).output)
    assert {p["settings"]["cuba_software"]["value"] for p in data if "cuba_software" in p["settings"]} == {"flag"}


@pytest.mark.parametrize(("records", "message"), [
    pytest.param("sqlite:///{tmp}/afile/records.db", "afile", id="parent is a file"),
    pytest.param("sqlite:///{tmp}", "", id="a directory"),
    pytest.param("mysql://x/y", "mysql", id="unknown scheme"),
    pytest.param("records.db", "records.db", id="no scheme"),
])
def test_check_rejects_an_unusable_record_store(run, tmp_path, records, message):
    (tmp_path / "afile").write_text("x")
    config = write_config(tmp_path, records=records.format(tmp=tmp_path))
    result = run("check", config=config)
    assert result.exit_code == 1, result.output
    assert "record store" in result.output or "records" in result.output
    assert message in result.output


@pytest.mark.parametrize("bind", ["127.0.0.1:18461,", "", "127.0.0.1:70000"])
def test_serve_refuses_a_bind_gunicorn_would_read_as_another_address(run, config, bind):
    result = run("serve", "--bind", bind, config=config)
    assert result.exit_code == 1 and "bind" in result.output


@pytest.mark.parametrize(("args", "message"), [
    pytest.param(["--mode", "static", "--root", ".", "--upstream", "http://127.0.0.1:9"],
                 "--upstream is for proxy mode, and this gate would run in static mode", id="upstream in static"),
    pytest.param(["--upstream", "http://127.0.0.1:9"], "would run in forward-auth mode", id="mode left out"),
    pytest.param(["--threads", "8"], "--threads is for proxy and static mode", id="threads in forward auth"),
])
def test_serve_refuses_an_option_its_mode_would_ignore(run, tmp_path, args, message):
    """A gate that quietly ignored --upstream would serve something other than what was asked for."""
    result = run("serve", *args, config=write_config(tmp_path))
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_check_warns_of_settings_the_mode_ignores(run, tmp_path):
    config = write_config(tmp_path, serve={"mode": "forward-auth", "upstream": "http://127.0.0.1:9",
                                           "threads": 4, "gated": ["/files/**"]})  # gated: the middleware's too
    result = run("check", config=config)
    assert result.exit_code == 0, result.output
    for name in ("upstream", "threads"):
        assert f"warning: {config}: serve.{name} is read in " in result.output, result.output
    assert json.loads(run("check", "--json", config=config).output)["warnings"][:2] == [
        "serve.upstream is read in proxy mode only; this gate runs in forward-auth mode and ignores it",
        "serve.threads is read in proxy and static mode only; this gate runs in forward-auth mode and ignores it"]
    assert "ignores it" not in run("check", config=write_config(tmp_path)).output


def test_check_creates_no_store(run, tmp_path):
    """Run before a reload (as `nginx -t` is), often as root: it made the store, its directory and a root-owned lock
    file beside a gate that runs as another user."""
    store = tmp_path / "not" / "yet" / "records.db"
    config = write_config(tmp_path, records=f"sqlite://{store}")
    result = run("check", config=config)
    assert result.exit_code == 0, result.output
    assert "not created yet" in result.output
    assert not (tmp_path / "not").exists()
    assert json.loads(run("check", "--json", config=config).output)["records"]["exists"] is False
    # Once the gate made it, check reads it (authorizations on file).
    from exportgate.records import open_store

    open_store(f"sqlite://{store}").close()
    assert "(writable; 0 authorizations on file)" in run("check", config=config).output


@pytest.mark.parametrize(("record_log", "message"), [
    pytest.param("{tmp}/no-such-dir/decisions.jsonl", "is not a directory", id="directory missing"),
    pytest.param("{tmp}", "is a directory", id="a directory"),
    pytest.param("{tmp}/afile/decisions.jsonl", "is not a directory", id="parent is a file"),
])
def test_check_rejects_a_record_log_the_gate_could_not_open(run, tmp_path, record_log, message):
    """Under the shipped unit /var/log was read-only: check said ok, the port opened, and no worker ever started."""
    (tmp_path / "afile").write_text("x")
    config = write_config(tmp_path, record_log=record_log.format(tmp=tmp_path))
    result = run("check", config=config)
    assert result.exit_code == 1 and "record_log" in result.output and message in result.output, result.output


def test_check_accepts_a_record_log_the_gate_can_create_and_creates_nothing(run, tmp_path):
    config = write_config(tmp_path, record_log=str(tmp_path / "decisions.jsonl"))
    assert run("check", config=config).exit_code == 0
    assert not (tmp_path / "decisions.jsonl").exists()


def test_serve_refuses_to_start_with_a_record_log_it_could_not_open(run, tmp_path):
    config = write_config(tmp_path, record_log=str(tmp_path / "missing" / "decisions.jsonl"))
    result = run("serve", config=config)
    assert result.exit_code == 1 and "record_log" in result.output and "is not a directory" in result.output


def test_explain_in_static_mode_says_when_it_cannot_see_the_root(run, tmp_path):
    config = write_config(tmp_path, serve={"mode": "static", "root": str(tmp_path / "elsewhere")})
    result = run("explain", "--ip", IR_CLIENT, "--path", "/files/chat-2.tar.gz", config=config)
    assert result.exit_code == 0 and "is no directory here: answering for the path as asked" in result.output


def test_explain_in_forward_auth_mode_with_the_front_ends_root_answers_for_a_links_target(run, tmp_path):
    root = tmp_path / "mirror"
    (root / "files").mkdir(parents=True)
    (root / "files" / "crypto-1.tar.gz").write_bytes(b"crypto")
    (root / "files" / "chat-latest.tar.gz").symlink_to("crypto-1.tar.gz")
    config = write_config(tmp_path, serve={"mode": "forward-auth", "root": str(root)})
    result = run("explain", "--ip", IR_CLIENT, "--path", "/files/chat-latest.tar.gz", "--json", config=config)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["path"] == "/files/crypto-1.tar.gz" and answer["action"] == "block"
    assert "rule 4" in result.stderr  # the front end may not ask the gate about every name (index pages, metadata)
    (tmp_path / "other").mkdir()
    assert run("check", config=write_config(tmp_path / "other", serve={"root": str(tmp_path / "gone")})).exit_code == 1
    (root / "files" / "chat-2.tar.gz").symlink_to(tmp_path / "outside.tar.gz")
    (tmp_path / "outside.tar.gz").write_bytes(b"x")
    refused = run("explain", "--ip", IR_CLIENT, "--path", "/files/chat-2.tar.gz", config=config)
    assert refused.exit_code == 1 and "a symlink out of the mirror's root: the gate refuses it (403)" in refused.output


def test_classification_values_the_manifest_left_out_read_as_unknown(run, tmp_path):
    manifest = write(tmp_path / "m.yaml", "manifest: m\nversion: \"1\"\nartifacts:\n"
                                          "  - path: \"/e/**\"\n    class: other\n")
    config = write_config(tmp_path, catalog=str(manifest))
    classified = run("classify", "/e/f", config=config)
    assert classified.exit_code == 0, classified.output
    assert "eccn unknown, price unknown, availability unknown" in classified.output
    assert "None" not in classified.output
    explained = run("explain", "--ip", IR_CLIENT, "--path", "/e/f", config=config)
    assert "classification: other, eccn unknown, price unknown, availability unknown" in explained.output


def test_check_json_reports_problems_on_stdout(tmp_path):
    """With --json and a problem, stdout was empty: a CI job parsing it saw no document at all."""
    bad = write(tmp_path / "catalog.yaml", "manifest: m\nversion: 1\nartifacts:\n  - path: /x\n    class: nope\n")
    result = CliRunner().invoke(main, ["--config", str(write_config(tmp_path, catalog=str(bad))), "check", "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["errors"][0]["file"] == str(bad) and data["errors"][0]["line"] == 5
    broken = write(tmp_path / "broken.yaml", "geo: [\n")
    data = json.loads(CliRunner().invoke(main, ["--config", str(broken), "check", "--json"]).stdout)
    assert data["ok"] is False and data["errors"][0]["file"] == str(broken)
    fine = CliRunner().invoke(main, ["--config", str(write_config(tmp_path)), "check", "--json"])
    assert fine.exit_code == 0 and json.loads(fine.stdout)["ok"] is True


def test_a_refused_path_is_shown_as_written(run, tmp_path):
    config = write_config(tmp_path, case_insensitive_paths=True)
    result = run("classify", "/downloads/\u017ftuff.exe", config=config)
    assert result.exit_code == 1 and "'/downloads/\u017ftuff.exe'" in result.output, result.output


def pack_dir_with(tmp_path: Path, *packs: tuple[str, str, str, str]) -> Path:
    """A directory of packs, each ``(id, from, until, mode)`` made from the shipped pack in force today."""
    from exportgate.policy import shipped_pack_paths

    current = [p for p in shipped_pack_paths() if "covered-regions" in p.name][0].read_text(encoding="utf-8")
    directory = tmp_path / "packs"
    directory.mkdir(exist_ok=True)
    for pack_id, start, until, mode in packs:
        text = re.sub(r"(?m)^pack: .*$", f"pack: {pack_id}", current)
        text = re.sub(r"(?m)^effective:.*\n(?:  .*\n)*", f"effective: {{from: {start}, until: {until}}}\n", text)
        text = re.sub(r"(?m)^mode: .*$\n?", "", text) + f"mode: {mode}\n"
        write(directory / f"{pack_id}.yaml", text)
    return directory


@pytest.mark.parametrize(("packs", "message"), [
    pytest.param([("ended", "2022-02-21", "2023-01-01", "enforce")], "no policy pack is in force today",
                 id="the last pack ended"),
    pytest.param([("future", "2099-01-01", "null", "enforce")], "no policy pack is in force today",
                 id="only a future pack"),
])
def test_check_refuses_packs_with_none_in_force_today(run, tmp_path, packs, message):
    """Loaded and served, such a set refuses every download (503): check said ok, and a reload put it in force."""
    config = write_config(tmp_path, policies=[str(pack_dir_with(tmp_path, *packs))])
    result = run("check", config=config)
    assert result.exit_code == 1 and message in result.output, result.output


def test_check_warns_of_gaps_an_end_and_dry_run(run, tmp_path):
    packs = pack_dir_with(tmp_path, ("early", "2020-01-01", "2021-01-01", "enforce"),
                          ("now", "2022-01-01", "2099-01-01", "dry-run"))
    result = run("check", config=write_config(tmp_path, policies=[str(packs)]))
    assert result.exit_code == 0, result.output
    assert "no pack in force from 2021-01-01 until 2022-01-01" in result.output
    assert "no pack in force from 2099-01-01" in result.output
    assert "pack now is in dry-run mode: its blocks are recorded and served" in result.output
    assert "(6 rules, dry-run: blocks are served)" in result.output
    listed = run("packs", config=write_config(tmp_path, policies=[str(packs)]))
    assert "mode: dry-run (blocks are recorded and served)" in listed.output


def test_check_warns_when_packs_restrict_regions_and_the_geo_data_has_none(run, tmp_path):
    result = run("check")  # the embedded registry data: countries only; the shipped packs restrict regions of UA
    assert result.exit_code == 0, result.output
    assert "packs restrict regions of UA" in result.output and "City database" in result.output
    data = json.loads(run("check", "--json").output)
    assert any("regions of UA" in w for w in data["warnings"])


def test_explain_says_why_a_client_without_a_region_is_an_unknown_location(run, tmp_path):
    config = write_config(tmp_path, geo={"overrides": [{"network": "192.0.2.77/32", "country": "UA"}]})
    result = run("explain", "--ip", "192.0.2.77", "--path", "/files/crypto-2.tar.gz", "--json", config=config)
    data = json.loads(result.output)
    assert (data["country"], data["action"], data["rule"]) == ("UA", "flag", "unknown-location")
    assert any("regions of UA" in reason for reason in data["reasons"])
