"""Compatibility with databases the project did not write: MaxMind's own test databases.

They are read from ../shared/testdata/maxmind/ (MIT/Apache-2.0, from the MaxMind-DB repository's
test-data/) and never copied into the repository. Absent, the tests skip with a message; in CI
(CI=true) they fail, because then the compatibility claim would go untested.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import require

from exportgate.address import normalise
from exportgate.errors import GeoDatabaseError
from exportgate.geo import GateLocator, MaxMindLocator, build_locator

TESTDATA = Path(__file__).parents[2].parent / "shared/testdata/maxmind"


def maxmind_file(name: str) -> Path:
    path = TESTDATA / name
    require(path.is_file(), f"MaxMind test database {name} (in {TESTDATA})",
            "put the MaxMind-DB repository's test-data/ files there (https://github.com/maxmind/MaxMind-DB)")
    return path


@pytest.mark.parametrize(
    "name",
    [
        "GeoIP2-Country-Test.mmdb",
        "GeoLite2-Country-Test.mmdb",
        "GeoIP2-City-Test.mmdb",
        "GeoLite2-City-Test.mmdb",
    ],
)
@pytest.mark.parametrize(
    ("text", "country", "registered", "represented", "form"),
    [
        pytest.param("81.2.69.142", "GB", "US", None, "plain", id="gb registered us"),
        pytest.param("::ffff:81.2.69.142", "GB", "US", None, "ipv4-mapped", id="gb mapped"),
        pytest.param("2002:5102:458e::1", "GB", "US", None, "6to4", id="gb 6to4"),
        pytest.param("89.160.20.112", "SE", "DE", None, "plain", id="se registered de"),
        pytest.param("216.160.83.56", "US", "GB", None, "plain", id="us registered gb"),
        pytest.param("67.43.156.1", "BT", "RO", None, "plain", id="bt registered ro"),
        pytest.param("202.196.224.1", "PH", "PH", "US", "plain", id="ph represented us"),
        pytest.param("2a02:d2c0::1", "IR", "IR", None, "plain", id="ir ipv6"),
    ],
)
def test_country_records(
    name: str, text: str, country: str, registered: str, represented: str | None, form: str
) -> None:
    locator = build_locator(database=maxmind_file(name), max_age_days=None)
    location = locator.locate(text)
    assert (
        location.country,
        location.registered_country,
        location.represented_country,
        location.form,
    ) == (country, registered, represented, form)
    assert location.source.startswith(name.removesuffix("-Test.mmdb") + " ")


def test_ipv4_network_is_reported_in_ipv4_terms() -> None:
    # MaxMind aliases ::ffff:0:0/96 to the IPv4 tree; the gate looks up the IPv4 address itself.
    locator = build_locator(database=maxmind_file("GeoIP2-Country-Test.mmdb"), max_age_days=None)
    assert locator.locate("::ffff:81.2.69.142").network == "81.2.69.142/31"


@pytest.mark.parametrize("name", ["GeoIP2-Country-Test.mmdb", "GeoIP2-City-Test.mmdb"])
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("214.1.1.1", "no-country", id="anycast without country"),
        pytest.param("2a02:d500::1", "no-country", id="continent only"),
        pytest.param("1.1.1.1", "not-found", id="not in the test data"),
        pytest.param("10.0.0.1", "private", id="private"),
    ],
)
def test_records_without_a_country(name: str, text: str, reason: str) -> None:
    location = build_locator(database=maxmind_file(name), max_age_days=None).locate(text)
    assert (location.country, location.unknown_reason) == (None, reason)


@pytest.mark.parametrize("name", ["GeoIP2-City-Test.mmdb", "GeoLite2-City-Test.mmdb"])
@pytest.mark.parametrize(
    ("text", "country", "subdivision"),
    [
        pytest.param("81.2.69.142", "GB", "GB-ENG", id="england"),
        pytest.param("2.125.160.216", "GB", "GB-ENG", id="first of two subdivisions"),
        pytest.param("89.160.20.112", "SE", "SE-E", id="one-letter code"),
        pytest.param("216.160.83.56", "US", "US-WA", id="us state"),
        pytest.param("175.16.199.1", "CN", "CN-22", id="numeric code"),
        pytest.param("67.43.156.1", "BT", None, id="no subdivision"),
    ],
)
def test_city_subdivisions(name: str, text: str, country: str, subdivision: str | None) -> None:
    location = build_locator(database=maxmind_file(name), max_age_days=None).locate(text)
    assert (location.country, location.subdivision) == (country, subdivision)


@pytest.mark.parametrize(
    ("text", "flags"),
    [
        pytest.param(
            "81.2.69.1",
            {
                "anonymous",
                "anonymous-vpn",
                "hosting-provider",
                "public-proxy",
                "residential-proxy",
                "tor-exit-node",
            },
            id="every flag",
        ),
        pytest.param(
            "::ffff:81.2.69.1",
            {
                "anonymous",
                "anonymous-vpn",
                "hosting-provider",
                "public-proxy",
                "residential-proxy",
                "tor-exit-node",
            },
            id="every flag mapped",
        ),
        pytest.param("65.0.0.1", {"anonymous", "tor-exit-node"}, id="tor"),
        pytest.param("186.30.236.1", {"anonymous", "public-proxy"}, id="public proxy"),
        pytest.param("2001:480::1", set(), id="empty record"),
        pytest.param("89.160.20.112", set(), id="not listed"),
    ],
)
def test_anonymous_ip(text: str, flags: set[str]) -> None:
    locator = build_locator(
        database=maxmind_file("GeoIP2-Country-Test.mmdb"),
        anonymous_ip_database=maxmind_file("GeoIP2-Anonymous-IP-Test.mmdb"),
        max_age_days=None,
    )
    assert locator.locate(text).anonymizer == frozenset(flags)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        pytest.param(
            "GeoLite2-ASN-Test.mmdb", "'GeoLite2-ASN' is not a Country or City database", id="asn"
        ),
        pytest.param(
            "GeoIP2-Anonymous-IP-Test.mmdb", "is not a Country or City database", id="anonymous-ip"
        ),
        pytest.param(
            "MaxMind-DB-test-broken-pointers-24.mmdb",
            "'Test' is not a Country or City",
            id="broken pointers",
        ),
        pytest.param(
            "MaxMind-DB-test-broken-search-tree-24.mmdb",
            "'Test' is not a Country or City",
            id="broken search tree",
        ),
        pytest.param(
            "GeoIP2-City-Test-Invalid-Node-Count.mmdb",
            "not a valid MaxMind DB file",
            id="invalid node count",
        ),
    ],
)
def test_refused_at_open(name: str, reason: str) -> None:
    path = maxmind_file(name)
    with pytest.raises(GeoDatabaseError) as info:
        build_locator(database=path)
    assert info.value.path == str(path)
    assert reason in info.value.reason


def test_country_database_is_not_an_anonymous_ip_database() -> None:
    with pytest.raises(GeoDatabaseError, match="is not an Anonymous-IP database"):
        build_locator(anonymous_ip_database=maxmind_file("GeoIP2-Country-Test.mmdb"))


class AnyTypeLocator(MaxMindLocator):
    """Accepts MaxMind's "Test" database type, so the broken records reach the lookup path."""

    accepted_types = ("Test",)


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        pytest.param(
            "MaxMind-DB-test-broken-pointers-24.mmdb", "1.1.1.1", "no-country", id="good record"
        ),
        pytest.param(
            "MaxMind-DB-test-broken-pointers-24.mmdb",
            "1.1.1.16",
            "lookup-failed",
            id="bad data pointer",
        ),
        pytest.param(
            "MaxMind-DB-test-broken-pointers-24.mmdb",
            "1.1.1.32",
            "lookup-failed",
            id="bad tree pointer",
        ),
        pytest.param(
            "MaxMind-DB-test-broken-pointers-24.mmdb",
            "::ffff:1.1.1.20",
            "lookup-failed",
            id="bad data pointer mapped",
        ),
        pytest.param(
            "MaxMind-DB-test-broken-pointers-24.mmdb",
            "2a02:d2c0::1",
            "not-found",
            id="ipv6 in ipv4 file",
        ),
        pytest.param(
            "MaxMind-DB-test-broken-search-tree-24.mmdb",
            "1.1.1.16",
            "no-country",
            id="tree good part",
        ),
    ],
)
def test_broken_records_never_give_a_country(name: str, text: str, reason: str) -> None:
    source = AnyTypeLocator(maxmind_file(name), max_age_days=None)
    location = GateLocator(source).locate(text)
    assert (location.country, location.unknown_reason) == (None, reason)


def test_broken_search_tree_in_a_reserved_range() -> None:
    source = AnyTypeLocator(
        maxmind_file("MaxMind-DB-test-broken-search-tree-24.mmdb"), max_age_days=None
    )
    # The broken nodes lie under 255.0.0.0/8: the gate answers "reserved" before asking the file...
    assert GateLocator(source).locate("255.1.1.1").unknown_reason == "reserved"
    # ...and asked anyway, the file's error is a lookup failure, not a crash.
    assert source.lookup(normalise("255.1.1.1")).unknown_reason == "lookup-failed"


def test_describe_and_staleness() -> None:
    path = maxmind_file("GeoIP2-City-Test.mmdb")
    info = build_locator(database=path).describe()
    assert (info["database_type"], info["path"]) == ("GeoIP2-City", str(path))
    assert isinstance(info["build_date"], str) and info["last_reload_error"] is None
    assert info["stale"] is (int(info["age_days"]) > 35)  # type: ignore[call-overload]
