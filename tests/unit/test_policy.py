"""Policy packs: the shipped packs decide the seed scenarios; bad packs are rejected with file:line."""

from __future__ import annotations

import datetime as dt
import re
import textwrap
from pathlib import Path

import pytest

from exportgate.authorization import AuthorizationBook, parse_authorization
from exportgate.classification import UNCLASSIFIED, Classification
from exportgate.errors import ConfigError, ConfigErrors, NoPackInForce
from exportgate.location import Location, unknown
from exportgate.policy import SHIPPED_DIR, load_packs

BEFORE = dt.datetime(2010, 3, 7, 23, 59, tzinfo=dt.UTC)
AFTER = dt.datetime(2010, 3, 8, 0, 0, tzinfo=dt.UTC)
TODAY = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)


def art(category: str = "personal-communications", eccn: str = "EAR99", price: str = "no-cost",
        public: bool = True, kinds: tuple[str, ...] = ("instant-messaging",)) -> Classification:
    return Classification(classified=True, category=category, eccn=eccn, price=price, publicly_available=public,
                          kinds=kinds if category == "personal-communications" else ())


FREE_EAR99 = art()
FREE_5D992 = art(eccn="5D992.c")
FREE_NOT_SUBJECT = art(eccn="not-subject-to-ear")
FEE = art(price="fee")
NOT_PUBLIC = art(public=False)
STRONG_CRYPTO = art(category="other", eccn="5D002")


def at(country: str, subdivision: str | None = None) -> Location:
    return Location(address="192.0.2.1", country=country, subdivision=subdivision, source="test")


@pytest.fixture(scope="module")
def shipped():
    return load_packs([SHIPPED_DIR])


SCENARIOS = [
    # destination, artifact, time, action, rule
    pytest.param("IR", FREE_EAR99, AFTER, "allow", "ir-personal-comms-software", id="IR free EAR99 after"),
    pytest.param("IR", FREE_EAR99, BEFORE, "block", "ir-embargo", id="IR free EAR99 before"),
    pytest.param("IR", FREE_5D992, AFTER, "allow", "ir-personal-comms-software", id="IR free 5D992 after"),
    pytest.param("IR", FREE_NOT_SUBJECT, AFTER, "allow", "ir-personal-comms-software", id="IR not subject after"),
    pytest.param("IR", FEE, AFTER, "block", "ir-other-software", id="IR fee after"),
    pytest.param("IR", NOT_PUBLIC, AFTER, "block", "ir-other-software", id="IR not public after"),
    pytest.param("IR", STRONG_CRYPTO, AFTER, "block", "ir-other-software", id="IR 5D002 after"),
    pytest.param("IR", UNCLASSIFIED, AFTER, "block", "unclassified-to-sanctioned", id="IR unclassified after"),
    pytest.param("IR", UNCLASSIFIED, BEFORE, "block", "unclassified-to-sanctioned", id="IR unclassified before"),
    pytest.param("SD", FREE_EAR99, AFTER, "allow", "sd-personal-comms-software", id="SD free EAR99 after"),
    pytest.param("SD", FREE_EAR99, BEFORE, "block", "sd-embargo", id="SD free EAR99 before"),
    pytest.param("SD", FREE_5D992, AFTER, "flag", "sd-personal-comms-5d992", id="SD free 5D992 after"),
    pytest.param("SD", FEE, AFTER, "block", "sd-other-software", id="SD fee after"),
    pytest.param("SD", STRONG_CRYPTO, AFTER, "block", "sd-other-software", id="SD 5D002 after"),
    pytest.param("SD", UNCLASSIFIED, AFTER, "block", "unclassified-to-sanctioned", id="SD unclassified"),
    pytest.param("CU", FREE_EAR99, AFTER, "block", "cu-software-pending-commerce", id="CU free EAR99 after"),
    pytest.param("CU", FREE_EAR99, BEFORE, "block", "cu-embargo", id="CU free EAR99 before"),
    pytest.param("CU", FEE, AFTER, "block", "cu-software-pending-commerce", id="CU fee after"),
    pytest.param("CU", STRONG_CRYPTO, AFTER, "block", "cu-software-pending-commerce", id="CU 5D002 after"),
    pytest.param("CU", FREE_NOT_SUBJECT, AFTER, "allow", "cu-not-subject-to-ear", id="CU not subject after"),
    pytest.param("CU", UNCLASSIFIED, AFTER, "block", "unclassified-to-sanctioned", id="CU unclassified"),
    pytest.param("US", STRONG_CRYPTO, AFTER, "allow", "not-a-sanctioned-destination", id="US 5D002"),
    pytest.param("US", UNCLASSIFIED, BEFORE, "allow", "not-a-sanctioned-destination", id="US unclassified before"),
    pytest.param("DE", FEE, TODAY, "allow", "not-a-sanctioned-destination", id="DE fee today"),
    pytest.param("IR", FREE_EAR99, TODAY, "allow", "ir-personal-comms-software", id="IR free EAR99 today"),
    # No general license reached North Korea or Syria: before this, other_destinations allowed them.
    pytest.param("KP", FREE_EAR99, AFTER, "block", "kp-embargo", id="KP free EAR99 after"),
    pytest.param("KP", FREE_NOT_SUBJECT, TODAY, "block", "kp-embargo", id="KP not subject today"),
    pytest.param("KP", STRONG_CRYPTO, BEFORE, "block", "kp-embargo", id="KP 5D002 before"),
    pytest.param("KP", UNCLASSIFIED, TODAY, "block", "unclassified-to-sanctioned", id="KP unclassified today"),
    pytest.param("SY", FREE_EAR99, AFTER, "block", "sy-embargo", id="SY free EAR99 after"),
    pytest.param("SY", FEE, BEFORE, "block", "sy-embargo", id="SY fee before"),
    pytest.param("SY", UNCLASSIFIED, TODAY, "block", "unclassified-to-sanctioned", id="SY unclassified today"),
]


@pytest.mark.parametrize(("country", "artifact", "when", "action", "rule"), SCENARIOS)
def test_seed_scenarios(shipped, country, artifact, when, action, rule):
    outcome = shipped.evaluate(at(country), artifact, when)
    assert (outcome.action, outcome.rule) == (action, rule)
    assert outcome.citation
    assert outcome.mode == "enforce"


def utc(day: str) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)


@pytest.mark.parametrize(("subdivision", "artifact", "when", "action", "rule"), [
    # ../shared/REGULATIONS.md: cr-2014 (block), cr-gl9 (no-cost personal communications, EAR99 or 5D992.c), dl-2022.
    pytest.param("UA-43", FREE_EAR99, utc("2014-12-18T23:59"), "allow", "not-a-sanctioned-destination",
                 id="Crimea the day before the embargo"),
    pytest.param("UA-43", FREE_EAR99, utc("2014-12-19"), "block", "crimea-embargo", id="Crimea embargo"),
    pytest.param("UA-40", FREE_EAR99, utc("2015-01-01"), "block", "sevastopol-embargo", id="Sevastopol embargo"),
    pytest.param("UA-43", FREE_EAR99, utc("2015-05-22"), "allow", "crimea-gl9-personal-comms", id="Crimea GL 9"),
    pytest.param("UA-43", FREE_5D992, TODAY, "allow", "crimea-gl9-personal-comms", id="Crimea GL 9 5D992.c today"),
    pytest.param("UA-43", FEE, TODAY, "block", "crimea-other-software", id="Crimea fee today"),
    pytest.param("UA-43", FREE_NOT_SUBJECT, TODAY, "block", "crimea-other-software", id="Crimea not EAR99 today"),
    pytest.param("UA-43", UNCLASSIFIED, TODAY, "block", "unclassified-to-sanctioned", id="Crimea unclassified"),
    pytest.param("UA-14", FREE_EAR99, utc("2022-02-20"), "allow", "not-a-sanctioned-destination",
                 id="Donetsk before EO 14065"),
    pytest.param("UA-14", FREE_EAR99, utc("2022-02-21"), "flag", "covered-regions-personal-comms",
                 id="Donetsk personal comms (OFAC side unconfirmed: review)"),
    pytest.param("UA-09", STRONG_CRYPTO, TODAY, "block", "luhansk-other-software", id="Luhansk 5D002 today"),
    pytest.param("UA-63", STRONG_CRYPTO, TODAY, "allow", "not-a-sanctioned-destination", id="Kharkiv 5D002 today"),
])
def test_regions_of_ukraine(shipped, subdivision, artifact, when, action, rule):
    outcome = shipped.evaluate(at("UA", subdivision), artifact, when)
    assert (outcome.action, outcome.rule) == (action, rule)


@pytest.mark.parametrize(("artifact", "when", "action", "rule"), [
    pytest.param(STRONG_CRYPTO, TODAY, "flag", "unknown-location", id="5D002 today: the region may be Crimea"),
    pytest.param(FREE_EAR99, TODAY, "flag", "unknown-location", id="chat today"),
    pytest.param(STRONG_CRYPTO, utc("2014-12-18"), "allow", "not-a-sanctioned-destination",
                 id="before any region of Ukraine was restricted"),
])
def test_a_country_whose_regions_the_pack_restricts_without_a_region_is_an_unknown_location(shipped, artifact, when,
                                                                                            action, rule):
    """Country-only geolocation (the embedded registry data, a Country database, a City record without a
    subdivision) located a client in Crimea as "UA": not a destination the pack restricts, so 5D002 software was
    allowed. Where the pack restricts regions of the country, no region is an unknown location, decided by the
    pack's rule for those."""
    outcome = shipped.evaluate(at("UA"), artifact, when)
    assert (outcome.action, outcome.rule) == (action, rule)
    if rule == "unknown-location":
        assert any("regions of UA" in reason for reason in outcome.reasons), outcome.reasons


@pytest.mark.parametrize("subdivision", ["UA-11", "UA-CR", "UA-4"])
def test_a_region_code_outside_iso_3166_2_in_a_country_with_restricted_regions_is_an_unknown_location(shipped,
                                                                                                      subdivision):
    """A database written with other codes (FIPS 10-4's 11 for Crimea) named a region, so "no region" did not
    apply, and the region was not one the pack restricts: 5D002 software was allowed."""
    outcome = shipped.evaluate(at("UA", subdivision), STRONG_CRYPTO, TODAY)
    assert (outcome.action, outcome.rule) == ("flag", "unknown-location")
    assert any("not an ISO 3166-2 code" in reason for reason in outcome.reasons), outcome.reasons


def test_a_region_unknown_never_weakens_what_the_country_gets(tmp_path):
    # Iran is restricted as a whole and one of its regions has a rule: without a region, Iran's block stands.
    text = GOOD.replace("  UA-43:\n    name: Crimea", "  IR:\n    name: Iran").replace(
        "destinations: [KP]", "destinations: [IR-07]")
    packs = load_packs([write(tmp_path, text)])
    outcome = packs.evaluate(at("IR"), UNCLASSIFIED, dt.datetime(2030, 6, 1, tzinfo=dt.UTC))
    assert (outcome.action, outcome.rule) == ("block", "unclassified")


def test_pack_changes_at_midnight_utc(shipped):
    assert shipped.pack_at(BEFORE).id == "us-pre-2010-baseline"
    assert shipped.pack_at(AFTER).id == "us-2010-03-08-internet-comms"


def test_citations_name_the_regulation(shipped):
    assert "560.540" in shipped.evaluate(at("IR"), FREE_EAR99, AFTER).citation
    assert "538.533" in shipped.evaluate(at("SD"), FREE_EAR99, AFTER).citation
    cuba = shipped.evaluate(at("CU"), FREE_EAR99, AFTER).citation
    assert "515.578" in cuba and "746.2" in cuba and "740.19" in cuba
    unclassified = shipped.evaluate(at("IR"), UNCLASSIFIED, AFTER).citation
    assert "31 CFR part 560" in unclassified


@pytest.mark.parametrize("reason", ["private", "not-found", "unparseable", "no-country", "loopback"])
def test_unknown_location_is_flagged_never_allowed(shipped, reason):
    for artifact in (FREE_EAR99, STRONG_CRYPTO, UNCLASSIFIED):
        outcome = shipped.evaluate(unknown(reason), artifact, AFTER)
        assert (outcome.action, outcome.rule) == ("flag", "unknown-location")
        assert reason in outcome.reasons[0]


def test_time_before_every_pack_is_an_error(shipped):
    with pytest.raises(NoPackInForce):
        shipped.evaluate(at("US"), FREE_EAR99, dt.datetime(1999, 12, 31, tzinfo=dt.UTC))


def test_cuba_setting_switches_to_flag():
    packs = load_packs([SHIPPED_DIR], {"cuba_software": "flag"})
    outcome = packs.evaluate(at("CU"), FREE_EAR99, AFTER)
    assert (outcome.action, outcome.rule) == ("flag", "cu-software-pending-commerce")
    # The setting does not touch the baseline pack, nor other destinations.
    assert packs.evaluate(at("CU"), FREE_EAR99, BEFORE).action == "block"
    assert packs.evaluate(at("IR"), FEE, AFTER).action == "block"


@pytest.mark.parametrize(("settings", "message"), [
    pytest.param({"cuba_software": "allow"}, "must be one of block, flag", id="choice not offered"),
    pytest.param({"cuba_sofware": "flag"}, "unknown policy setting 'cuba_sofware'", id="misspelt setting"),
])
def test_bad_settings_are_rejected(settings, message):
    with pytest.raises(ConfigErrors, match=message) as info:
        load_packs([SHIPPED_DIR], settings)
    # A value the setting does not allow is that, not also "unknown setting ... packs offer: none" (the packs
    # that offer it failed to load for that very value).
    assert all(message in str(e) or "must be one of" in str(e) for e in info.value.errors), info.value.errors


# ---------------------------------------------------------------------------------------- authorizations


def authorization(**overrides):
    body = {"id": "BIS-CU-2010-001", "basis": "BIS license D123456", "destinations": ["CU"],
            "when": {"class": ["personal-communications"]}, "valid_from": "2010-06-01",
            "valid_until": "2011-06-01", "note": "test"}
    body.update(overrides)
    return parse_authorization(body, file="test", line=None)


@pytest.mark.parametrize(("auth", "when", "action", "auth_id"), [
    pytest.param(authorization(), dt.datetime(2010, 7, 1, tzinfo=dt.UTC), "allow", "BIS-CU-2010-001", id="valid"),
    pytest.param(authorization(), dt.datetime(2011, 6, 1, tzinfo=dt.UTC), "block", None, id="expired"),
    pytest.param(authorization(), dt.datetime(2010, 5, 31, tzinfo=dt.UTC), "block", None, id="not yet valid"),
    pytest.param(authorization(destinations=["IR"]), dt.datetime(2010, 7, 1, tzinfo=dt.UTC), "block", None,
                 id="other destination"),
    pytest.param(authorization(when={"eccn": ["5D002"]}), dt.datetime(2010, 7, 1, tzinfo=dt.UTC), "block", None,
                 id="other artifact"),
])
def test_authorization_turns_pending_into_allow(auth, when, action, auth_id):
    packs = load_packs([SHIPPED_DIR], authorizations=AuthorizationBook([auth]))
    outcome = packs.evaluate(at("CU"), FREE_EAR99, when)
    assert (outcome.action, outcome.authorization) == (action, auth_id)
    if auth_id:
        assert "BIS license D123456" in outcome.citation and auth_id in outcome.citation


def test_revoked_authorization_stops_at_its_time():
    entries = [
        ("authorization", "2010-06-01T00:00:00.000000Z", authorization().to_dict()),
        ("revocation", "2010-08-01T00:00:00.000000Z", {"authorization": "BIS-CU-2010-001", "reason": "withdrawn"}),
    ]
    packs = load_packs([SHIPPED_DIR], authorizations=AuthorizationBook.from_entries(entries))
    assert packs.evaluate(at("CU"), FREE_EAR99, dt.datetime(2010, 7, 31, tzinfo=dt.UTC)).action == "allow"
    assert packs.evaluate(at("CU"), FREE_EAR99, dt.datetime(2010, 8, 1, tzinfo=dt.UTC)).action == "block"


def test_a_revocation_stays_when_the_authorization_is_added_again():
    """Re-adding replaced the revoked authorization whole, so its revoked period counted as valid again."""
    entries = [
        ("authorization", "2010-06-01T00:00:00.000000Z", authorization().to_dict()),
        ("revocation", "2010-08-01T00:00:00.000000Z", {"authorization": "BIS-CU-2010-001", "reason": "withdrawn"}),
        ("authorization", "2010-09-01T00:00:00.000000Z", authorization().to_dict()),
    ]
    book = AuthorizationBook.from_entries(entries)
    packs = load_packs([SHIPPED_DIR], authorizations=book)
    for day, action in (((2010, 7, 31), "allow"), ((2010, 8, 15), "block"), ((2010, 9, 1), "allow")):
        assert packs.evaluate(at("CU"), FREE_EAR99, dt.datetime(*day, tzinfo=dt.UTC)).action == action, day
    assert book.get("BIS-CU-2010-001").revoked_at is None  # the one in force now


def test_amending_an_authorization_keeps_its_earlier_terms_for_the_past():
    """Re-adding an id that was not revoked replaced it whole: ``explain --at`` a date before the amendment
    answered under the new terms, not the ones the gate decided with then."""
    entries = [
        ("authorization", "2010-06-01T00:00:00.000000Z", authorization().to_dict()),
        ("authorization", "2010-09-01T00:00:00.000000Z", authorization(when={"eccn": ["5D002"]}).to_dict()),
    ]
    book = AuthorizationBook.from_entries(entries)
    packs = load_packs([SHIPPED_DIR], authorizations=book)
    for day, action in (((2010, 8, 31), "allow"), ((2010, 9, 1), "block")):
        assert packs.evaluate(at("CU"), FREE_EAR99, dt.datetime(*day, tzinfo=dt.UTC)).action == action, day
    earlier, current = book.all
    assert earlier.status_at(dt.datetime(2010, 9, 2, tzinfo=dt.UTC)) == "replaced"
    assert book.get("BIS-CU-2010-001") is current
    assert current.status_at(dt.datetime(2010, 9, 2, tzinfo=dt.UTC)) == "valid"
    widened = AuthorizationBook.from_entries([  # and wider new terms do not reach back either
        ("authorization", "2010-06-01T00:00:00.000000Z", authorization(when={"eccn": ["5D002"]}).to_dict()),
        ("authorization", "2010-09-01T00:00:00.000000Z", authorization().to_dict()),
    ])
    packs = load_packs([SHIPPED_DIR], authorizations=widened)
    for day, action in (((2010, 8, 31), "block"), ((2010, 9, 1), "allow")):
        assert packs.evaluate(at("CU"), FREE_EAR99, dt.datetime(*day, tzinfo=dt.UTC)).action == action, day


# What every pack written for these tests starts with, after its id.
PACK_HEAD = """\
version: 1
effective: {from: 2030-01-01, until: null}
sources: ["test"]
disclaimer: "Example, not legal advice."
"""

REGION_PACK = "pack: region-pack\n" + PACK_HEAD + """\
jurisdictions:
  UA-43:
    name: Crimea
    program: "test program"
    otherwise: {id: crimea-pending, action: block, requires_authorization: true, citation: "c"}
  CU:
    name: Cuba
    program: "test program"
    otherwise: {id: cu-pending, action: block, requires_authorization: true, citation: "c"}
rules: []
defaults:
  unknown_location: {action: flag, citation: "c"}
  unclassified: {action: block, citation: "c"}
  other_destinations: {action: allow, citation: "c"}
"""


@pytest.mark.parametrize(("destinations", "where", "action"), [
    pytest.param(["UA"], ("UA", "UA-43"), "block", id="a license for Ukraine is not one for Crimea"),
    pytest.param(["UA-43"], ("UA", "UA-43"), "allow", id="a license naming Crimea"),
    pytest.param(["CU"], ("CU", "CU-03"), "allow", id="a license for Cuba covers a province of Cuba"),
])
def test_an_authorization_reaches_a_region_the_pack_restricts_only_by_naming_it(tmp_path, destinations, where,
                                                                                action):
    auth = authorization(destinations=destinations, when=None, valid_from="2030-01-01", valid_until=None)
    packs = load_packs([write(tmp_path, REGION_PACK)], authorizations=AuthorizationBook([auth]))
    outcome = packs.evaluate(at(*where), STRONG_CRYPTO, dt.datetime(2030, 6, 1, tzinfo=dt.UTC))
    assert outcome.action == action


def test_authorization_never_applies_where_no_rule_asks_for_one():
    # An authorization for Iran must not override the Iranian block: that rule does not require authorization.
    auth = authorization(destinations=["IR"], when=None)
    packs = load_packs([SHIPPED_DIR], authorizations=AuthorizationBook([auth]))
    assert packs.evaluate(at("IR"), FEE, dt.datetime(2010, 7, 1, tzinfo=dt.UTC)).action == "block"


# ------------------------------------------------------------------------------------------ pack errors

GOOD = "pack: test-pack\n" + PACK_HEAD + """\
jurisdictions:
  KP:
    name: North Korea
    program: "test program"
    otherwise: {id: kp-block, action: block, citation: "c"}
  UA-43:
    name: Crimea
    program: "test program"
    otherwise: {id: crimea-block, action: block, citation: "c"}
rules:
  - id: kp-free
    destinations: [KP]
    when: {price: no-cost}
    action: flag
    citation: "c"
  - id: tor
    destinations: ["*"]
    when: {anonymizer: [tor-exit-node]}
    action: flag
    citation: "c"
    mode: dry-run
defaults:
  unknown_location: {action: flag, citation: "c"}
  unclassified: {action: block, citation: "c"}
  other_destinations: {action: allow, citation: "c"}
"""


def write(tmp_path: Path, text: str, name: str = "pack.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_a_valid_custom_pack_with_subdivision_and_anonymizer_rules(tmp_path):
    packs = load_packs([write(tmp_path, GOOD)])
    when = dt.datetime(2030, 6, 1, tzinfo=dt.UTC)
    crimea = Location(address="x", country="UA", subdivision="UA-43", source="t")
    assert packs.evaluate(crimea, FREE_EAR99, when).rule == "crimea-block"
    assert packs.evaluate(at("UA", "UA-63"), FREE_EAR99, when).action == "allow"
    tor = Location(address="x", country="DE", source="t", anonymizer=frozenset({"tor-exit-node"}))
    outcome = packs.evaluate(tor, UNCLASSIFIED, when)
    assert (outcome.rule, outcome.action, outcome.mode) == ("tor", "flag", "dry-run")


BAD_PACKS = [
    pytest.param(GOOD.replace("version: 1\n", "version: 1\nversoin: 2\n"), 3, "unknown key 'versoin'",
                 id="unknown key"),
    pytest.param(GOOD.replace("action: flag\n    citation", "action: permit\n    citation"), 19,
                 "action must be one of", id="unknown action"),
    pytest.param(GOOD.replace("destinations: [KP]", "destinations: [IRN]"), 17, "alpha-3", id="alpha-3 code"),
    pytest.param(GOOD.replace("destinations: [KP]", "destinations: [XX]"), 17, "unknown country", id="unknown code"),
    pytest.param(GOOD.replace("destinations: [KP]", "destinations: [kp]"), 17, "upper case", id="lower case code"),
    pytest.param(GOOD.replace("{from: 2030-01-01, until: null}", "{from: 2030-01-01, until: 2020-01-01}"), 3,
                 "out of order", id="dates out of order"),
    pytest.param(GOOD.replace("{from: 2030-01-01, until: null}", "{from: 2030-13-01, until: null}"), 3,
                 "must be a date", id="bad date"),
    pytest.param(GOOD.replace("  unclassified: {action: block, citation: \"c\"}\n", ""), 28,
                 "missing required key 'unclassified'", id="missing default"),
    pytest.param(GOOD.replace('disclaimer: "Example, not legal advice."', 'disclaimer: "Example."'), 5,
                 "not legal advice", id="no disclaimer"),
    pytest.param(GOOD.replace("when: {price: no-cost}", "when: {price: free}"), 18, "price 'free'",
                 id="unknown price"),
    pytest.param(GOOD.replace("when: {price: no-cost}", "when: {eccn: [5X99]}"), 18, "is not an ECCN",
                 id="bad eccn"),
    pytest.param(GOOD.replace("when: {price: no-cost}", "when: {price: []}"), 18, "empty list",
                 id="empty condition list"),
    # Every condition commented out: read as none, the rule would allow anything, unclassified artifacts too.
    pytest.param(GOOD.replace("when: {price: no-cost}", "when:\n      # price: no-cost"), 18, "when is empty",
                 id="when with nothing under it"),
    pytest.param(GOOD.replace("{from: 2030-01-01, until: null}", "{from: 2030-01-01T00:00:00-05:00, until: null}"),
                 3, "not a date and time", id="date with a time and zone"),
    pytest.param(GOOD.replace("    when: {price: no-cost}\n    action: flag", "    action: flag")
                 .replace("destinations: [\"*\"]", "destinations: [KP]"), 20, "never reached",
                 id="shadowed rule"),
    pytest.param(GOOD.replace("destinations: [KP]", "destinations: [UA]").replace(
        "destinations: [\"*\"]\n    when: {anonymizer: [tor-exit-node]}",
        "destinations: [UA-43]\n    when: {price: no-cost}"), 21, "never reached",
        id="a country's rule hides a later one for its region"),
    pytest.param(GOOD + "rules: []\n", 31, "duplicate key 'rules'", id="rules key repeated"),
    pytest.param(GOOD.replace("  - id: tor\n", "  - id: kp-free\n"), 21, "duplicate rule id", id="duplicate id"),
    pytest.param(GOOD.replace("version: 1\n", "version: [1]\n"), 2, "must be text", id="wrong type"),
    pytest.param(GOOD.replace("rules:\n", "rules:\n  - [\n"), None, "YAML syntax error", id="syntax error"),
    pytest.param(GOOD.replace("citation: \"c\"\n  - id: tor", "\n  - id: tor"), 16, "missing required key 'citation'",
                 id="rule without citation"),
    # A jurisdiction's otherwise is what every artifact no rule matched gets: conditions on it were ignored, and
    # `when: {eccn: [EAR99]}` on an allow allowed 5D002 software to the country.
    pytest.param(GOOD.replace("otherwise: {id: kp-block, action: block,",
                              "otherwise: {id: kp-block, when: {eccn: [EAR99]}, action: block,"), 10,
                 "otherwise cannot have conditions", id="conditions on otherwise"),
    pytest.param(GOOD.replace("    action: flag\n    citation: \"c\"\n  - id: tor",
                              "    action: flag\n    citation: \" \"\n  - id: tor"), 20, "citation is empty",
                 id="blank citation"),
    pytest.param(GOOD.replace("otherwise: {id: kp-block, action: block, citation: \"c\"}",
                              "otherwise: {id: kp-block, action: block, citation: \"\"}"), 10, "citation is empty",
                 id="empty citation on otherwise"),
    pytest.param(GOOD.replace('sources: ["test"]', 'sources: ["test", ""]'), 4, "source is empty",
                 id="blank source"),
    # ISO 3166-2 codes are checked against the standard's list, not only their shape: a misspelt region never
    # matches a client, and its embargo is an allow.
    pytest.param(GOOD.replace("  UA-43:\n", "  UA-34:\n"), 11, "no region UA-34 in ISO 3166-2",
                 id="unknown region as a jurisdiction"),
    pytest.param(GOOD.replace("destinations: [KP]", "destinations: [KP, UA-99]"), 17, "no region UA-99",
                 id="unknown region in destinations"),
    # YAML 1.1 reads NO as false: the message said 'False' and nothing of Norway.
    pytest.param(GOOD.replace("destinations: [KP]", "destinations: [KP, NO]"), 17, r"got false: quote the code",
                 id="Norway unquoted in destinations"),
    pytest.param(GOOD.replace("  KP:\n", "  NO:\n"), 7, r"got false: quote the code", id="Norway unquoted as a key"),
    # A misspelt required key is named, on its own line, not reported as the right key missing at the parent's.
    pytest.param(GOOD.replace("effective:", "efective:"), 3, r"unknown key 'efective': did you mean 'effective'",
                 id="misspelt required key"),
    pytest.param(GOOD.replace("    destinations: [KP]\n", "    destination: [KP]\n"), 17,
                 r"unknown key 'destination': did you mean 'destinations'", id="misspelt destinations"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD_PACKS)
def test_bad_pack_is_rejected_with_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigErrors) as info:
        load_packs([path])
    errors = info.value.errors
    assert any(re.search(message, str(e)) for e in errors), [str(e) for e in errors]
    first = errors[0]
    assert first.file == str(path)
    if line is not None:
        assert first.line == line, str(first)


def test_overlapping_packs_are_rejected(tmp_path):
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD.replace("pack: test-pack", "pack: other").replace("2030-01-01", "2031-01-01"), "b.yaml")
    with pytest.raises(ConfigErrors, match="overlaps pack 'test-pack'"):
        load_packs([tmp_path])


def test_duplicate_keys_are_an_error_not_last_wins(tmp_path):
    text = GOOD.replace("    action: flag\n    citation: \"c\"\n  - id: tor",
                        "    action: flag\n    action: allow\n    citation: \"c\"\n  - id: tor")
    with pytest.raises(ConfigErrors, match="duplicate key 'action'"):
        load_packs([write(tmp_path, text)])


def test_empty_directory_and_missing_file(tmp_path):
    with pytest.raises(ConfigErrors, match="no policy pack"):
        load_packs([tmp_path])
    with pytest.raises(ConfigErrors, match="file not found"):
        load_packs([tmp_path / "nope.yaml"])


def test_a_pack_with_its_suffix_in_capitals_is_read(tmp_path):
    write(tmp_path, GOOD, "pack.YAML")
    assert [p.id for p in load_packs([tmp_path]).packs] == ["test-pack"]


def test_hidden_files_in_a_pack_directory_are_no_packs(tmp_path):
    """An editor's lock file (emacs: a dangling symlink '.#name.yaml') or hidden backup refused every reload."""
    from exportgate.policy import load_pack, shipped_pack_paths

    shipped = shipped_pack_paths()[0]
    (tmp_path / shipped.name).write_bytes(shipped.read_bytes())
    (tmp_path / f".#{shipped.name}").symlink_to("root@host.1234:1700000000")
    (tmp_path / f".{shipped.name}").write_text("not: [a pack\n", encoding="utf-8")
    assert [p.id for p in load_packs([tmp_path]).packs] == [load_pack(shipped).id]


def test_not_a_mapping(tmp_path):
    with pytest.raises(ConfigErrors, match="must be a mapping"):
        load_packs([write(tmp_path, "- just\n- a list\n")])


def test_config_error_str_has_file_and_line():
    assert str(ConfigError("bad", file="a.yaml", line=3)) == "a.yaml:3: bad"


@pytest.mark.parametrize(("written", "kept"), [("1.10", "1.10"), ("010", "010"), ("'2.0'", "2.0"), ("3", "3")])
def test_a_version_is_kept_as_written(tmp_path, written, kept):
    """YAML reads 1.10 as the number 1.1: records and `exportgate packs` named version 1.10 as "1.1"."""
    packs = load_packs([write(tmp_path, GOOD.replace("version: 1\n", f"version: {written}\n"))])
    assert packs.packs[0].ref.version == kept
