"""The test-database builder (exportgate.geodata) and geodata/networks.yaml."""

from __future__ import annotations

import random
from pathlib import Path

import geoip2.database
import maxminddb
import pytest

from exportgate import geodata, yamlfile
from exportgate.errors import ConfigError

NETWORKS_YAML = Path(__file__).parents[2] / "geodata" / "networks.yaml"
EPOCH = 1767225600  # 2026-01-01T00:00:00Z


@pytest.fixture(scope="module")
def networks() -> list[dict[str, object]]:
    return geodata.load_networks(NETWORKS_YAML)


@pytest.fixture(scope="module")
def city(networks: list[dict[str, object]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return geodata.build(
        networks, tmp_path_factory.mktemp("geodata") / "City.mmdb", kind="City", build_epoch=EPOCH
    )


def test_metadata(city: Path) -> None:
    with maxminddb.open_database(str(city)) as reader:
        meta = reader.metadata()
        assert (meta.database_type, meta.build_epoch, meta.ip_version) == ("GeoIP2-City", EPOCH, 6)
        assert meta.languages == ["en"]


@pytest.mark.parametrize(
    ("address", "country", "subdivisions", "registered", "represented"),
    [
        pytest.param("2.176.0.1", "IR", [], "IR", None, id="ir v4"),
        pytest.param("2a01:5ec0::1", "IR", [], "IR", None, id="ir v6"),
        pytest.param("176.104.32.1", "UA", ["43"], None, None, id="crimea narrower network"),
        pytest.param("176.104.200.1", "UA", [], None, None, id="ukraine broader network"),
        pytest.param("89.160.20.112", "SE", [], "DE", None, id="registered elsewhere"),
        pytest.param("202.196.224.1", "PH", [], "PH", "US", id="represented"),
        pytest.param("214.1.1.1", None, [], None, None, id="no country"),
    ],
)
def test_geoip2_reads_city_records(
    city: Path,
    address: str,
    country: str | None,
    subdivisions: list[str],
    registered: str | None,
    represented: str | None,
) -> None:
    # MaxMind's own typed reader accepts the files: the records have GeoIP2's shape.
    with geoip2.database.Reader(str(city)) as reader:
        answer = reader.city(address)
    assert answer.country.iso_code == country
    assert [s.iso_code for s in answer.subdivisions] == subdivisions
    assert answer.registered_country.iso_code == registered
    assert answer.represented_country.iso_code == represented
    if country == "IR":
        assert (answer.country.geoname_id, answer.country.name) == (130758, "Iran")


def test_country_database_has_no_subdivisions(
    networks: list[dict[str, object]], tmp_path: Path
) -> None:
    path = geodata.build(networks, tmp_path / "Country.mmdb", kind="Country", build_epoch=EPOCH)
    with geoip2.database.Reader(str(path)) as reader:
        assert reader.metadata().database_type == "GeoIP2-Country"
        answer = reader.country("176.104.32.1")
        assert answer.country.iso_code == "UA"
        with pytest.raises(TypeError):
            reader.city("176.104.32.1")


def test_ipv4_is_stored_without_aliases(city: Path) -> None:
    # The mmdb-writer quirk the gate's own normalisation exists for.
    with maxminddb.open_database(str(city)) as reader:
        assert reader.get("::2.176.0.1") is not None
        assert reader.get("::ffff:2.176.0.1") is None
        assert reader.get("2002:2b0:1::1") is None


def test_anonymous_ip_database(networks: list[dict[str, object]], tmp_path: Path) -> None:
    path = geodata.build_anonymous_ip(networks, tmp_path / "Anonymous-IP.mmdb", build_epoch=EPOCH)
    with geoip2.database.Reader(str(path)) as reader:
        tor = reader.anonymous_ip("185.220.101.1")
        assert (tor.is_anonymous, tor.is_tor_exit_node, tor.is_anonymous_vpn) == (True, True, False)
        vpn = reader.anonymous_ip("2.176.128.1")
        assert (vpn.is_anonymous_vpn, vpn.is_hosting_provider, vpn.is_public_proxy) == (
            True,
            True,
            False,
        )
    with maxminddb.open_database(str(path)) as reader:
        assert reader.get("2.176.0.1") is None


def test_build_is_reproducible_and_order_independent(
    networks: list[dict[str, object]], tmp_path: Path
) -> None:
    first = geodata.build(networks, tmp_path / "a.mmdb", kind="City", build_epoch=EPOCH)
    shuffled = list(networks)
    random.Random(7).shuffle(shuffled)
    second = geodata.build(shuffled, tmp_path / "b.mmdb", kind="City", build_epoch=EPOCH)
    assert first.read_bytes() == second.read_bytes()


def test_narrow_network_survives_broad_one_listed_after_it(tmp_path: Path) -> None:
    networks = [
        {"network": "176.104.32.0/19", "country": "UA", "subdivision": "UA-43"},
        {"network": "176.104.0.0/16", "country": "UA"},
    ]
    path = geodata.build(networks, tmp_path / "c.mmdb", kind="City", build_epoch=EPOCH)
    with maxminddb.open_database(str(path)) as reader:
        crimea, rest = reader.get("176.104.32.1"), reader.get("176.104.0.1")
    assert isinstance(crimea, dict) and isinstance(rest, dict)
    assert crimea["subdivisions"] == [{"iso_code": "43"}]
    assert "subdivisions" not in rest


def test_build_replaces_the_file_atomically(
    networks: list[dict[str, object]], tmp_path: Path
) -> None:
    out = tmp_path / "City.mmdb"
    out.write_bytes(b"old")
    geodata.build(networks, out, kind="City", build_epoch=EPOCH)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["City.mmdb"]
    with maxminddb.open_database(str(out)) as reader:
        assert reader.metadata().database_type == "GeoIP2-City"


@pytest.mark.parametrize(
    ("yaml_text", "message", "line"),
    [
        pytest.param(
            "- network: 2.176.0.0/33\n  country: IR\n", "not a CIDR network", 1, id="bad prefix"
        ),
        pytest.param(
            "- network: 2.176.0.1/12\n  country: IR\n", "host bits set", 1, id="host bits"
        ),
        pytest.param("- country: IR\n", "missing required key 'network'", 1, id="no network"),
        pytest.param("- network: 2.176.0.0/12\n  country: ir\n", "upper case", 2, id="lowercase"),
        pytest.param("- network: 2.176.0.0/12\n  country: IRN\n", "alpha-2", 2, id="alpha-3"),
        pytest.param(
            "- network: 10.0.0.0/8\n  country: UA\n  subdivision: RU-43\n",
            "UA-43",
            3,
            id="subdivision of another country",
        ),
        pytest.param(
            "- network: 10.0.0.0/8\n  subdivision: UA-43\n",
            "subdivision",
            2,
            id="subdivision without country",
        ),
        pytest.param(
            "- network: 10.0.0.0/8\n  country: US\n  contry: US\n",
            "unknown key 'contry'",
            3,
            id="typo key",
        ),
        pytest.param(
            "- network: 10.0.0.0/8\n  anonymizer: [vpn]\n", "anonymizer flags", 2, id="bad flag"
        ),
        pytest.param(
            "- network: 10.0.0.0/8\n  continent: XX\n", "continent", 2, id="bad continent"
        ),
        pytest.param(
            "- network: 10.0.0.0/8\n- network: 10.0.0.0/8\n", "listed twice", 2, id="duplicate"
        ),
        pytest.param("- 10.0.0.0/8\n", "must be a mapping", 1, id="not a mapping"),
        pytest.param("network: 10.0.0.0/8\n", "expected a list", 1, id="not a list"),
    ],
)
def test_invalid_networks_name_file_and_line(
    tmp_path: Path, yaml_text: str, message: str, line: int
) -> None:
    source = tmp_path / "networks.yaml"
    source.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        geodata.build(geodata.load_networks(source), tmp_path / "x.mmdb", build_epoch=EPOCH)
    assert message in str(info.value)
    assert (info.value.file, info.value.line) == (str(source), line)
    assert not (tmp_path / "x.mmdb").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"kind": "ASN"}, "kind must be", id="unknown kind"),
        pytest.param({"build_epoch": 0}, "positive Unix time", id="epoch zero"),
        pytest.param(
            {"kind": "City", "database_type": "Test"}, "must contain 'City'", id="type without kind"
        ),
    ],
)
def test_build_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        geodata.build([], tmp_path / "x.mmdb", **kwargs)  # type: ignore[arg-type]


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "City.mmdb"
    assert (
        geodata.main([str(NETWORKS_YAML), str(out), "--kind", "City", "--build-epoch", str(EPOCH)])
        == 0
    )
    assert "2026-01-01" in capsys.readouterr().out
    with maxminddb.open_database(str(out)) as reader:
        assert reader.metadata().database_type == "GeoIP2-City"


def test_command_line_reports_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "bad.yaml"
    source.write_text("- network: nowhere\n")
    assert geodata.main([str(source), str(tmp_path / "x.mmdb")]) == 2
    assert f"{source}:1:" in capsys.readouterr().err


def test_source_date_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    out = tmp_path / "Country.mmdb"
    assert geodata.main([str(NETWORKS_YAML), str(out)]) == 0
    with maxminddb.open_database(str(out)) as reader:
        assert reader.metadata().build_epoch == EPOCH


def test_networks_yaml_keeps_lines() -> None:
    data = yamlfile.load(NETWORKS_YAML)
    assert isinstance(data, yamlfile.Sequence) and data.line_of(0) > 1


def test_a_broad_ipv6_network_does_not_overwrite_the_ipv4_ones(tmp_path: Path) -> None:
    """IPv4 sits at ::a.b.c.d in the database's tree: ::/64, written after the IPv4 networks, replaced them all."""
    from exportgate.geo import build_locator

    path = geodata.build([{"network": "2.176.0.0/12", "country": "IR"}, {"network": "::/64", "country": "US"}],
                         tmp_path / "Country.mmdb", kind="Country")
    assert build_locator(database=path).locate("2.176.0.1").country == "IR"
    with pytest.raises(ValueError, match="cannot be written"):
        geodata.build([{"network": "::/0", "country": "US"}], tmp_path / "All.mmdb", kind="Country")
