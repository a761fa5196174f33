"""Locators (exportgate.geo): the embedded default, and test databases from networks.yaml."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exportgate import geodata, yamlfile
from exportgate.address import normalise
from exportgate.errors import ConfigError, GeoDatabaseError
from exportgate.geo import (
    SPECIAL_SOURCE,
    AnonymousIPDatabase,
    EmbeddedLocator,
    GateLocator,
    Locator,
    MaxMindLocator,
    Overrides,
    build_locator,
)
from exportgate.location import Location

NETWORKS_YAML = Path(__file__).parents[2] / "geodata" / "networks.yaml"
NETWORKS = geodata.load_networks(NETWORKS_YAML)
FRESH = int(time.time()) - 86400  # built yesterday
OLD = 1577836800  # 2020-01-01
LOCATORS = ("embedded", "country", "city")


@pytest.fixture(scope="module")
def dbs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("geo")
    return {
        "country": geodata.build(
            NETWORKS, folder / "Country.mmdb", kind="Country", build_epoch=FRESH
        ),
        "city": geodata.build(NETWORKS, folder / "City.mmdb", kind="City", build_epoch=FRESH),
        "anonymous": geodata.build_anonymous_ip(
            NETWORKS, folder / "Anonymous-IP.mmdb", build_epoch=FRESH
        ),
    }


@pytest.fixture(scope="module")
def locators(dbs: dict[str, Path]) -> dict[str, GateLocator]:
    return {
        "embedded": build_locator(),
        "country": build_locator(database=dbs["country"]),
        "city": build_locator(database=dbs["city"]),
    }


def _write_mmdb(
    path: Path, *, database_type: str, records: dict[str, Any], ip_version: int = 6
) -> Path:
    """A MaxMind DB of another shape than the builder makes (ASN, IPv4-only)."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet  # type: ignore[import-untyped]

    writer = MMDBWriter(
        ip_version=ip_version,
        ipv4_compatible=ip_version == 6,
        database_type=database_type,
        languages=["en"],
        description={"en": "test"},
        int_type="u32",
    )
    for network, record in records.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


def _replace(path: Path, data: bytes) -> None:
    """Write beside and rename over, as geoipupdate does."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --- every form of an Iranian address ---------------------------------------------------------

IRANIAN = [
    pytest.param("2.176.0.1", "2.176.0.1", "plain", id="plain"),
    pytest.param("::ffff:2.176.0.1", "2.176.0.1", "ipv4-mapped", id="mapped"),
    pytest.param("::2.176.0.1", "2.176.0.1", "ipv4-compatible", id="compatible"),
    pytest.param("2002:2b0:1::1", "2.176.0.1", "6to4", id="6to4"),
    pytest.param("64:ff9b::2.176.0.1", "2.176.0.1", "nat64", id="nat64"),
    pytest.param("2001:0:4136:e378:8000:63bf:fd4f:fffe", "2.176.0.1", "teredo", id="teredo"),
    pytest.param("2a01:5ec0::1", "2a01:5ec0::1", "plain", id="ipv6"),
    pytest.param("2A01:5EC0:0000::0001", "2a01:5ec0::1", "plain", id="ipv6 long upper"),
    pytest.param("2a01:5ec0::1%eth0", "2a01:5ec0::1", "plain", id="ipv6 zone id"),
]


@pytest.mark.parametrize("which", LOCATORS)
@pytest.mark.parametrize(("text", "address", "form"), IRANIAN)
def test_iranian_address_in_every_form(
    locators: dict[str, GateLocator], which: str, text: str, address: str, form: str
) -> None:
    location = locators[which].locate(text)
    assert (location.country, location.address, location.form) == ("IR", address, form)
    assert location.unknown_reason is None


@pytest.mark.parametrize(
    ("text", "country"),
    [
        pytest.param("2.176.0.1", "IR", id="ir"),
        pytest.param("2a01:5ec0::1", "IR", id="ir v6"),
        pytest.param("41.67.0.1", "SD", id="sd"),
        pytest.param("152.206.0.1", "CU", id="cu"),
        pytest.param("8.8.8.8", "US", id="us"),
    ],
)
def test_embedded_default(text: str, country: str) -> None:
    locator = EmbeddedLocator()
    location = locator.locate(text)
    assert location.country == country
    assert location.source == f"iptocc {locator.version}"
    assert location.network is None and location.subdivision is None


def test_database_source_and_network(locators: dict[str, GateLocator]) -> None:
    location = locators["city"].locate("::ffff:41.67.0.1")
    built = time.strftime("%Y-%m-%d", time.gmtime(FRESH))
    assert (location.country, location.source, location.network) == (
        "SD",
        f"GeoIP2-City {built}",
        "41.67.0.0/20",
    )


# --- what is not located ----------------------------------------------------------------------


@pytest.mark.parametrize("which", LOCATORS)
@pytest.mark.parametrize(
    ("text", "reason", "address"),
    [
        pytest.param("10.1.2.3", "private", "10.1.2.3", id="private"),
        pytest.param("100.64.0.1", "private", "100.64.0.1", id="cgnat"),
        pytest.param("fd00::1", "private", "fd00::1", id="ula"),
        pytest.param("::ffff:192.168.0.1", "private", "192.168.0.1", id="mapped private"),
        pytest.param("127.0.0.1", "loopback", "127.0.0.1", id="loopback"),
        pytest.param("::1", "loopback", "::1", id="v6 loopback"),
        pytest.param("169.254.0.1", "link-local", "169.254.0.1", id="link-local"),
        pytest.param("fe80::1%eth0", "link-local", "fe80::1", id="v6 link-local zone"),
        pytest.param("224.0.0.251", "multicast", "224.0.0.251", id="multicast"),
        pytest.param("ff02::fb", "multicast", "ff02::fb", id="v6 multicast"),
        pytest.param("198.51.100.7", "reserved", "198.51.100.7", id="documentation"),
        pytest.param("2001:db8::7", "reserved", "2001:db8::7", id="v6 documentation"),
        pytest.param("0.0.0.0", "unspecified", "0.0.0.0", id="unspecified"),
        pytest.param("::", "unspecified", "::", id="v6 unspecified"),
    ],
)
def test_special_ranges(
    locators: dict[str, GateLocator], which: str, text: str, reason: str, address: str
) -> None:
    location = locators[which].locate(text)
    assert not location.known
    assert (location.unknown_reason, location.address, location.source) == (
        reason,
        address,
        SPECIAL_SOURCE,
    )


UNPARSEABLE = [
    pytest.param("", id="empty"),
    pytest.param("2.176.0.1:80", id="port"),
    pytest.param("[2a01:5ec0::1]", id="brackets"),
    pytest.param("[2a01:5ec0::1]:443", id="brackets port"),
    pytest.param(" 2.176.0.1", id="space"),
    pytest.param("2.176.0.1, 8.8.8.8", id="list"),
    pytest.param("2.176.0.1\x00", id="nul"),
    pytest.param("02.176.0.1", id="leading zero"),
    pytest.param("2.176.0.1" * 8, id="oversize"),
    pytest.param("x" * 10000, id="huge"),
    pytest.param("unknown", id="word"),
    pytest.param(None, id="none"),
    pytest.param(b"2.176.0.1", id="bytes"),
    pytest.param(["2.176.0.1"], id="list object"),
    pytest.param(0x02B00001, id="int"),
]


@pytest.mark.parametrize("which", LOCATORS)
@pytest.mark.parametrize("text", UNPARSEABLE)
def test_unparseable(locators: dict[str, GateLocator], which: str, text: Any) -> None:
    location = locators[which].locate(text)
    assert (location.unknown_reason, location.address, location.country) == (
        "unparseable",
        None,
        None,
    )


@pytest.mark.parametrize("text", UNPARSEABLE)
def test_unparseable_without_the_cache(dbs: dict[str, Path], text: Any) -> None:
    with MaxMindLocator(dbs["city"]) as locator:
        assert locator.locate(text).unknown_reason == "unparseable"
    assert EmbeddedLocator().locate(text).unknown_reason == "unparseable"


@pytest.mark.parametrize("which", ["country", "city"])
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("1.1.1.1", "not-found", id="v4 not in the data"),
        pytest.param("2001:4860::8888", "not-found", id="v6 not in the data"),
        pytest.param("214.1.1.1", "no-country", id="record without anything"),
        pytest.param("2a02:d500::1", "no-country", id="continent only"),
    ],
)
def test_not_found_and_no_country(
    locators: dict[str, GateLocator], which: str, text: str, reason: str
) -> None:
    location = locators[which].locate(text)
    assert (location.country, location.unknown_reason) == (None, reason)
    assert location.network is not None and location.source.startswith("GeoIP2-")


# --- what a database record says --------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "text", "country", "subdivision"),
    [
        pytest.param("city", "176.104.32.1", "UA", "UA-43", id="city crimea"),
        pytest.param("city", "::ffff:176.104.32.1", "UA", "UA-43", id="city crimea mapped"),
        pytest.param("city", "176.104.200.1", "UA", None, id="city rest of ukraine"),
        pytest.param("country", "176.104.32.1", "UA", None, id="country db has no subdivisions"),
    ],
)
def test_subdivision(
    locators: dict[str, GateLocator], which: str, text: str, country: str, subdivision: str | None
) -> None:
    location = locators[which].locate(text)
    assert (location.country, location.subdivision) == (country, subdivision)


@pytest.mark.parametrize("which", ["country", "city"])
def test_registered_and_represented_country(locators: dict[str, GateLocator], which: str) -> None:
    located = locators[which].locate("89.160.20.112")
    assert (located.country, located.registered_country, located.represented_country) == (
        "SE",
        "DE",
        None,
    )
    base = locators[which].locate("202.196.224.1")
    assert (base.country, base.registered_country, base.represented_country) == ("PH", "PH", "US")


def test_ipv6_in_an_ipv4_only_database(tmp_path: Path) -> None:
    path = _write_mmdb(
        tmp_path / "v4.mmdb",
        database_type="GeoIP2-Country",
        ip_version=4,
        records={"2.176.0.0/12": {"country": {"iso_code": "IR"}}},
    )
    locator = build_locator(database=path)
    assert locator.locate("2.176.0.1").country == "IR"
    assert locator.locate("::ffff:2.176.0.1").country == "IR"
    assert locator.locate("2a01:5ec0::1").unknown_reason == "not-found"


def test_network_cache_answers_like_the_database(dbs: dict[str, Path]) -> None:
    with MaxMindLocator(dbs["city"]) as locator:
        first = [locator.locate(a) for a in ("176.104.32.1", "176.104.33.7", "1.1.1.1", "1.2.3.4")]
        again = [locator.locate(a) for a in ("176.104.32.1", "176.104.33.7", "1.1.1.1", "1.2.3.4")]
    assert first == again
    assert first[1].subdivision == "UA-43" and first[1].address == "176.104.33.7"
    assert first[3].unknown_reason == "not-found"


# --- anonymisers ------------------------------------------------------------------------------


@pytest.mark.parametrize("database", ["city", None])
@pytest.mark.parametrize(
    ("text", "country", "flags"),
    [
        pytest.param("185.220.101.1", "DE", {"anonymous", "tor-exit-node"}, id="tor"),
        pytest.param("::ffff:185.220.101.1", "DE", {"anonymous", "tor-exit-node"}, id="tor mapped"),
        pytest.param(
            "2.176.128.1",
            "IR",
            {"anonymous", "anonymous-vpn", "hosting-provider"},
            id="iranian vpn",
        ),
        pytest.param("2.176.0.1", "IR", set(), id="no flags"),
    ],
)
def test_anonymizer_flags(
    dbs: dict[str, Path], database: str | None, text: str, country: str, flags: set[str]
) -> None:
    locator = build_locator(
        database=dbs[database] if database else None, anonymous_ip_database=dbs["anonymous"]
    )
    location = locator.locate(text)
    assert (location.country, location.anonymizer) == (country, frozenset(flags))
    assert locator.describe()["anonymous_ip"]["database_type"] == "GeoIP2-Anonymous-IP"  # type: ignore[index]


def test_anonymous_database_alone(dbs: dict[str, Path]) -> None:
    with AnonymousIPDatabase(dbs["anonymous"]) as anonymous:
        assert anonymous.flags("185.220.101.1") == {"anonymous", "tor-exit-node"}
        assert anonymous.flags("8.8.8.8") == frozenset()
        assert anonymous.flags("not an address") == frozenset()


# --- overrides --------------------------------------------------------------------------------

OVERRIDES = [
    {"network": "10.0.0.0/8", "country": "US"},
    {"network": "10.1.0.0/16", "country": "IR"},
    {"network": "10.1.2.0/24", "country": "UA", "subdivision": "UA-43"},
    {"network": "127.0.0.1", "country": "CU"},
    {"network": "fd00::/8", "country": "SY"},
    {"network": "2.176.0.0/16", "country": "US"},
]


@pytest.mark.parametrize("which", [None, "city"])
@pytest.mark.parametrize(
    ("text", "country", "subdivision", "network"),
    [
        pytest.param("10.9.9.9", "US", None, "10.0.0.0/8", id="broad"),
        pytest.param("10.1.9.9", "IR", None, "10.1.0.0/16", id="more specific wins"),
        pytest.param("10.1.2.3", "UA", "UA-43", "10.1.2.0/24", id="most specific with subdivision"),
        pytest.param("::ffff:10.1.2.3", "UA", "UA-43", "10.1.2.0/24", id="mapped"),
        pytest.param("127.0.0.1", "CU", None, "127.0.0.1/32", id="loopback"),
        pytest.param("fd00::5", "SY", None, "fd00::/8", id="ula"),
        pytest.param("2.176.0.1", "US", None, "2.176.0.0/16", id="beats the database"),
    ],
)
def test_overrides(
    dbs: dict[str, Path],
    which: str | None,
    text: str,
    country: str,
    subdivision: str | None,
    network: str,
) -> None:
    locator = build_locator(database=dbs[which] if which else None, overrides=OVERRIDES)
    location = locator.locate(text)
    assert (location.country, location.subdivision, location.network) == (
        country,
        subdivision,
        network,
    )
    assert location.source == f"override {network}"
    assert locator.locate("2.177.0.1").country == "IR"  # outside the override: the data answers
    assert locator.locate("127.0.0.2").unknown_reason == "loopback"


def test_overrides_as_a_mapping() -> None:
    locator = build_locator(
        overrides={"10.0.0.0/8": "US", "172.16.0.0/12": {"country": "UA", "subdivision": "UA-43"}}
    )
    assert locator.locate("10.0.0.1").country == "US"
    assert locator.locate("172.16.0.1").subdivision == "UA-43"
    assert locator.describe()["overrides"] == 2


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        pytest.param(
            [{"network": "10.0.0.0/33", "country": "US"}], "not a network", id="bad prefix"
        ),
        pytest.param([{"network": "10.0.0.1/8", "country": "US"}], "host bits", id="host bits"),
        pytest.param([{"network": "10.0.0.0/8", "country": "us"}], "upper case", id="lowercase"),
        pytest.param([{"network": "10.0.0.0/8", "country": "USA"}], "alpha-2", id="alpha-3"),
        pytest.param(
            [{"network": "10.0.0.0/8", "country": "UK"}], "unknown country", id="UK is not ISO"
        ),
        pytest.param(
            [{"network": "10.0.0.0/8", "country": "UA-43"}], "a code like US", id="subdivision"
        ),
        pytest.param(
            [{"network": "10.0.0.0/8"}], "missing required key 'country'", id="no country"
        ),
        pytest.param(
            [{"network": "10.0.0.0/8", "country": "UA", "subdivision": "43"}],
            "ISO 3166-2",
            id="bare subdivision",
        ),
        pytest.param(
            [{"network": "10.0.0.0/8", "country": "UA", "subdivision": "RU-MOW"}],
            "RU-MOW is not in UA",
            id="subdivision of another country",
        ),
        pytest.param(
            [{"network": "10.0.0.0/8", "country": "UA", "subdivision": "UA-34"}],
            "no region UA-34 in ISO 3166-2",
            id="no such subdivision",
        ),
        pytest.param(
            [{"network": "10.0.0.0/8", "country": "US", "contry": "US"}], "unknown key", id="typo"
        ),
        pytest.param(
            [
                {"network": "10.0.0.0/8", "country": "US"},
                {"network": "10.0.0.0/8", "country": "IR"},
            ],
            "listed twice",
            id="duplicate",
        ),
        pytest.param(
            [{"network": "::ffff:10.0.0.0/104", "country": "US"}],
            "write the IPv4 network",
            id="mapped",
        ),
        pytest.param(
            [{"network": "2002::/16", "country": "US"}], "write the IPv4 network", id="6to4"
        ),
        pytest.param(["10.0.0.0/8"], "must be a mapping", id="bare string"),
        pytest.param({"10.0.0.0/8": "usa"}, "alpha-2", id="mapping bad country"),
        pytest.param({8: "US"}, "must be text", id="mapping non-text network"),
    ],
)
def test_invalid_overrides(entries: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_locator(overrides=entries)


def test_invalid_override_names_file_and_line() -> None:
    config = yamlfile.loads(
        "- network: 10.0.0.0/8\n  country: US\n- network: 10.2.0.0/16\n  country: Iran\n",
        "gate.yaml",
    )
    with pytest.raises(ConfigError) as info:
        Overrides(config)
    assert str(info.value).startswith("gate.yaml:3: override 10.2.0.0/16: country: unknown")
    # The config hands the entries over in a plain tuple: each entry still knows its file and line.
    with pytest.raises(ConfigError) as info:
        build_locator(overrides=tuple(config))
    assert (info.value.file, info.value.line) == ("gate.yaml", 3)


# --- databases that must be refused -----------------------------------------------------------


def _corrupt(source: Path, target: Path, needle: bytes) -> Path:
    """Copy ``source`` with the control byte before ``needle`` turned into an unknown data type."""
    data = bytearray(source.read_bytes())
    at = data.find(needle)
    assert at > 0 and data.find(needle, at + 1) == -1
    data[at] = 0x00  # "extended type", and the next byte makes it 7 + ord('S'): no such type
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(lambda d, t: t / "missing.mmdb", "file not found", id="missing"),
        pytest.param(lambda d, t: t, "is a directory", id="directory"),
        pytest.param(lambda d, t: (os.mkfifo(t / "fifo.mmdb"), t / "fifo.mmdb")[1], "not a regular file",
                     id="fifo (opened without waiting for a writer)"),
        pytest.param(lambda d, t: Path("/dev/zero"), "not a regular file", id="device"),
        pytest.param(
            lambda d, t: (t / "e.mmdb", (t / "e.mmdb").write_bytes(b""))[0],
            "empty file",
            id="empty",
        ),
        pytest.param(
            lambda d, t: (t / "g.mmdb", (t / "g.mmdb").write_bytes(os.urandom(4096)))[0],
            "not a valid MaxMind DB",
            id="garbage",
        ),
        pytest.param(
            lambda d, t: (t / "h.mmdb", (t / "h.mmdb").write_bytes(d["city"].read_bytes()[:2000]))[
                0
            ],
            "not a valid MaxMind DB",
            id="truncated half",
        ),
        pytest.param(
            lambda d, t: (t / "i.mmdb", (t / "i.mmdb").write_bytes(d["city"].read_bytes()[:-40]))[
                0
            ],
            "not a valid MaxMind DB",
            id="truncated metadata",
        ),
        pytest.param(
            lambda d, t: _write_mmdb(
                t / "asn.mmdb",
                database_type="GeoLite2-ASN",
                records={"2.176.0.0/12": {"autonomous_system_number": 58224}},
            ),
            "'GeoLite2-ASN' is not a Country or City database",
            id="asn",
        ),
        pytest.param(
            lambda d, t: d["anonymous"],
            "'GeoIP2-Anonymous-IP' is not a Country or City",
            id="anonymous-ip",
        ),
        pytest.param(
            lambda d, t: _corrupt(d["city"], t / "c.mmdb", b"\x44Iran"),
            "corrupt: looking up 2.176.0.1",
            id="corrupt record found at open",
        ),
    ],
)
def test_refused_database(dbs: dict[str, Path], tmp_path: Path, make: Any, reason: str) -> None:
    path = make(dbs, tmp_path)
    with pytest.raises(GeoDatabaseError) as info:
        build_locator(database=path)
    assert info.value.path == str(path)
    assert reason in info.value.reason


@pytest.mark.parametrize("kind", ["Country", "City"])
def test_a_map_key_that_is_not_text_is_refused_without_crashing(tmp_path: Path, kind: str) -> None:
    """The format allows only text as map keys. maxminddb's C reader dies of SIGSEGV on a number there (the
    iso_code key's control byte turned into a one-byte uint16); the file is refused before it gets that far. In a
    process of its own, so that a regression fails this test rather than killing pytest."""
    good = geodata.build(NETWORKS, tmp_path / "good.mmdb", kind=kind, build_epoch=FRESH)
    data = bytearray(good.read_bytes())
    at = data.find(b"\x48iso_code")
    assert at > 0 and data.find(b"\x48iso_code", at + 1) == -1
    data[at] = 0xC1
    path = tmp_path / f"{kind}.mmdb"
    path.write_bytes(bytes(data))
    script = (
        "import sys\n"
        "from exportgate.errors import GeoDatabaseError\n"
        "from exportgate.geo import build_locator\n"
        "try:\n"
        "    build_locator(database=sys.argv[1])\n"
        "except GeoDatabaseError as exc:\n"
        "    print(exc.reason)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], check=False, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"exit {done.returncode} (SIGSEGV is -11): {done.stderr[-1000:]}"
    assert "corrupt: looking up 8.8.8.8 found a map key that is not text" in done.stdout


def test_country_database_as_anonymous_ip_database(dbs: dict[str, Path]) -> None:
    with pytest.raises(GeoDatabaseError, match="is not an Anonymous-IP database"):
        build_locator(database=dbs["city"], anonymous_ip_database=dbs["country"])


def test_corrupt_record_is_lookup_failed(
    dbs: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _corrupt(dbs["city"], tmp_path / "City.mmdb", b"\x45Sudan")
    locator = build_locator(database=path)
    with caplog.at_level(logging.ERROR, logger="exportgate.geo"):
        failed = locator.locate("41.67.0.1")
    assert (failed.country, failed.unknown_reason, failed.address) == (
        None,
        "lookup-failed",
        "41.67.0.1",
    )
    assert "41.67.0.1" in caplog.text
    assert locator.locate("2.176.0.1").country == "IR"



def test_a_failed_anonymiser_lookup_is_lookup_failed_not_a_location_without_flags(
    dbs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Tor exit in Germany whose Anonymous-IP record cannot be read: not "Germany, no flags" (a rule about
    anonymisers would miss it), but ``lookup-failed``, on which the gate does not decide. (The file's reader is
    made to fail as maxminddb does on bad data: a corrupt key in a test file crashed maxminddb's C extension.)"""
    import maxminddb

    locator = build_locator(database=dbs["country"], anonymous_ip_database=dbs["anonymous"])
    assert locator.locate("185.220.101.1").anonymizer == {"anonymous", "tor-exit-node"}

    class BadData:
        def get(self, address: str) -> object:
            raise maxminddb.InvalidDatabaseError("The MaxMind DB file's data section contains bad data")

    assert locator.anonymous_ip is not None
    monkeypatch.setattr(locator.anonymous_ip._loaded, "reader", BadData())
    failed = locator.locate("185.220.101.2")  # the same network, not yet looked up
    assert (failed.country, failed.unknown_reason) == (None, "lookup-failed")

# --- reload and staleness ---------------------------------------------------------------------


def test_hot_reload_by_rename(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = geodata.build(NETWORKS, tmp_path / "City.mmdb", kind="City", build_epoch=FRESH)
    locator = build_locator(database=path, check_interval=0)
    assert locator.locate("2.176.0.1").country == "IR"

    geodata.build(
        [{"network": "2.176.0.0/12", "country": "SD"}], path, kind="City", build_epoch=FRESH + 86400
    )
    assert locator.locate("2.176.0.1").country == "SD"  # checked on the lookup path, cache cleared
    assert locator.describe()["last_reload_error"] is None

    with caplog.at_level(logging.ERROR, logger="exportgate.geo"):
        _replace(path, os.urandom(2048))
        for _ in range(3):
            assert locator.locate("2.176.0.1").country == "SD"  # the old file keeps answering
            assert locator.locate("2.176.0.2").country == "SD"
    error = locator.describe()["last_reload_error"]
    assert isinstance(error, str) and str(path) in error and "not a valid MaxMind DB" in error
    assert (
        len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    )  # said once per broken file

    path.unlink()
    assert locator.locate("2.176.0.3").country == "SD"
    assert "file not found" in str(locator.describe()["last_reload_error"])

    geodata.build(NETWORKS, path, kind="City", build_epoch=FRESH + 2 * 86400)
    assert locator.locate("2.176.0.1").country == "IR"
    assert locator.describe()["last_reload_error"] is None


def test_reload_while_other_threads_locate(tmp_path: Path) -> None:
    path = geodata.build(NETWORKS, tmp_path / "City.mmdb", kind="City", build_epoch=FRESH)
    locator = build_locator(database=path, check_interval=0)
    seen: set[str | None] = set()
    failures: list[BaseException] = []

    def client(worker: int) -> None:
        try:
            for i in range(1500):
                seen.add(locator.locate(f"2.176.{worker}.{i % 250 + 1}").country)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for round_ in range(6):
        country = "SD" if round_ % 2 == 0 else "IR"
        networks = [{"network": "2.176.0.0/12", "country": country}]
        geodata.build(networks, path, kind="City", build_epoch=FRESH + round_ + 1)
    for thread in threads:
        thread.join()
    assert not failures
    assert seen and seen <= {"IR", "SD"}  # never unknown, never another country
    assert locator.locate("2.176.9.9").country == "IR"  # the last file built


def test_explicit_reload(dbs: dict[str, Path], tmp_path: Path) -> None:
    path = geodata.build(NETWORKS, tmp_path / "Country.mmdb", kind="Country", build_epoch=FRESH)
    locator = build_locator(database=path, check_interval=3600)
    assert locator.locate("8.8.8.8").country == "US"
    geodata.build(
        [{"network": "8.8.8.0/24", "country": "CU"}], path, kind="Country", build_epoch=FRESH
    )
    assert locator.locate("8.8.8.8").country == "US"  # not checked yet, and cached
    assert locator.reload() is True
    assert locator.locate("8.8.8.8").country == "CU"

    _replace(path, dbs["anonymous"].read_bytes())  # the wrong edition renamed over it
    assert locator.reload() is False
    assert locator.locate("8.8.8.8").country == "CU"
    assert "is not a Country or City database" in str(locator.describe()["last_reload_error"])


def test_stale_database(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = geodata.build(NETWORKS, tmp_path / "Country.mmdb", kind="Country", build_epoch=OLD)
    with caplog.at_level(logging.WARNING, logger="exportgate.geo"):
        locator = build_locator(database=path, check_interval=0)
        for _ in range(3):
            assert locator.locate("2.176.0.1").country == "IR"  # stale data is still used
            info = locator.describe()
    assert info["stale"] is True and info["build_date"] == "2020-01-01"
    assert isinstance(info["age_days"], int) and info["age_days"] > 35
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2020-01-01" in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("epoch", "max_age_days", "stale"),
    [
        pytest.param(OLD, None, False, id="limit disabled"),
        pytest.param(FRESH, 35, False, id="fresh"),
        pytest.param(FRESH, 0, True, id="a day old with limit 0"),
    ],
)
def test_staleness_limit(tmp_path: Path, epoch: int, max_age_days: int | None, stale: bool) -> None:
    path = geodata.build(NETWORKS, tmp_path / "Country.mmdb", kind="Country", build_epoch=epoch)
    with MaxMindLocator(path, max_age_days=max_age_days) as locator:
        assert locator.describe()["stale"] is stale


# --- the locator as a whole -------------------------------------------------------------------


def test_describe(locators: dict[str, GateLocator], dbs: dict[str, Path]) -> None:
    keys = {
        "source",
        "database_type",
        "build_date",
        "age_days",
        "stale",
        "path",
        "last_reload_error",
    }
    embedded = locators["embedded"].describe()
    assert keys <= embedded.keys() and str(embedded["source"]).startswith("iptocc ")
    city = locators["city"].describe()
    assert keys <= city.keys()
    assert (city["database_type"], city["path"], city["stale"], city["age_days"]) == (
        "GeoIP2-City",
        str(dbs["city"]),
        False,
        1,
    )


def test_every_locator_is_a_locator(locators: dict[str, GateLocator], dbs: dict[str, Path]) -> None:
    for locator in (*locators.values(), EmbeddedLocator(), MaxMindLocator(dbs["country"])):
        assert isinstance(locator, Locator)


def test_cache(dbs: dict[str, Path]) -> None:
    locator = build_locator(database=dbs["city"], cache_size=2)
    first = locator.locate("176.104.32.1")
    assert locator.locate("176.104.32.1") is first
    junk: tuple[Any, ...] = ("x" * 100, None, b"2.176.0.1", ["2.176.0.1"])
    for text in junk:
        assert locator.locate(text).unknown_reason == "unparseable"
    cache: Any = locator.describe()["cache"]
    assert (cache["entries"], cache["hits"]) == (1, 1)  # junk is never kept
    for text in ("8.8.8.8", "2.176.0.1", "41.67.0.1"):
        locator.locate(text)
    cache = locator.describe()["cache"]
    assert (cache["entries"], cache["max_entries"]) == (2, 2)
    assert build_locator(cache_size=0).locate("2.176.0.1").country == "IR"


@pytest.mark.parametrize("size", [-1, None, "big", True])
def test_cache_size_must_be_a_whole_number(size: Any) -> None:
    with pytest.raises(ConfigError, match="cache size"):
        build_locator(cache_size=size)


def test_lookup_takes_a_normalised_address(dbs: dict[str, Path]) -> None:
    with MaxMindLocator(dbs["city"]) as locator:
        location = locator.lookup(normalise("2002:b068:2001::1"))  # 6to4 of 176.104.32.1
    assert location == Location(
        address="176.104.32.1",
        country="UA",
        subdivision="UA-43",
        source=location.source,
        form="6to4",
        network="176.104.32.0/19",
    )


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=70), st.ip_addresses().map(str)))
def test_locate_never_raises(locators: dict[str, GateLocator], text: str) -> None:
    for which in LOCATORS:
        location = locators[which].locate(text)
        assert isinstance(location, Location)
        assert location.known or location.unknown_reason


@pytest.mark.parametrize("code", ["EU", "AP", "ZZ"])
def test_a_registry_code_that_is_no_country_is_no_location(code: str) -> None:
    """Registry files write EU for networks used anywhere in the RIPE region (Iran and Syria included): taken as a
    country, no pack named it, and the download was allowed as 'not a restricted destination'."""
    locator = EmbeddedLocator()
    locator._country_code = lambda address: code  # what the registry data says for this network
    location = locator.locate("138.199.64.1")
    assert location.country is None and location.unknown_reason == "not-found"


@pytest.mark.parametrize(("written", "subdivision", "reason"), [
    pytest.param("43", "UA-43", None, id="as MaxMind writes it"),
    pytest.param("UA-43", "UA-43", None, id="with its country"),
    pytest.param("ua-43", "UA-43", None, id="lower case"),
    pytest.param(43, "UA-43", None, id="a number"),
    pytest.param("Crimea", None, "unreadable-subdivision", id="a name"),
    pytest.param("", None, "unreadable-subdivision", id="empty"),
    pytest.param(None, None, None, id="no code: the country alone"),
])
def test_a_subdivision_the_gate_cannot_read_is_no_location_rather_than_the_country(written: object,
                                                                                   subdivision: str | None,
                                                                                   reason: str | None) -> None:
    """Dropped silently, a Crimean network written 'Crimea' in a converted database was plain UA, and allowed."""
    from exportgate.maxmind import _place

    record = {"country": {"iso_code": "UA"}, "subdivisions": [{"iso_code": written}]}
    found_reason, country, found_subdivision, *_ = _place(record, 4, int(normalise("176.104.32.1").ip), 19)
    assert (found_reason, found_subdivision) == (reason, subdivision)
    assert country == (None if reason else "UA")


def test_the_first_subdivision_with_a_code_is_read() -> None:
    """A converted database with a first entry carrying only a name, then the code: the code was never read, and
    the client was Ukraine with no region."""
    from exportgate.maxmind import _place

    record = {"country": {"iso_code": "UA"}, "subdivisions": [{"names": {"en": "Crimea"}}, {"iso_code": "43"}]}
    reason, country, subdivision, *_ = _place(record, 4, int(normalise("176.104.32.1").ip), 19)
    assert (reason, country, subdivision) == (None, "UA", "UA-43")


def test_an_answer_from_a_database_swapped_out_during_its_lookup_is_not_kept(tmp_path: Path) -> None:
    """A lookup in flight on the old database, then stored in the cache the reload had just cleared, answered
    for that address until the next reload (a week, with geoipupdate)."""
    path = geodata.build([{"network": "5.0.0.0/8", "country": "US"}], tmp_path / "City.mmdb", kind="City",
                         build_epoch=FRESH)
    locator = build_locator(database=path, check_interval=3600)
    looked_up = locator.source.lookup

    def lookup_while_the_file_is_replaced(client: Any) -> Location:
        answer = looked_up(client)  # from the old file
        geodata.build([{"network": "5.0.0.0/8", "country": "IR"}], path, kind="City", build_epoch=FRESH + 1)
        locator.reload()  # another thread's check, between this lookup and its caching
        return answer

    locator.source.lookup = lookup_while_the_file_is_replaced  # type: ignore[method-assign]
    assert locator.locate("5.0.0.1").country == "US"  # in flight: the old file's answer
    locator.source.lookup = looked_up  # type: ignore[method-assign]
    assert locator.locate("5.0.0.1").country == "IR"
