"""Build small MaxMind-format test databases from a YAML list of networks.

The project's own geolocation test data is built here, reproducibly, from ``geodata/networks.yaml``:
``build(networks, "City.mmdb", kind="City", build_epoch=...)`` writes a GeoIP2-City-shaped file,
``kind="Country"`` a GeoIP2-Country-shaped one, :func:`build_anonymous_ip` one shaped like
GeoIP2-Anonymous-IP. From a shell::

    python -m exportgate.geodata geodata/networks.yaml City.mmdb --kind City

Each network is a mapping: ``network`` (CIDR, IPv4 or IPv6), and optionally ``country``,
``subdivision`` (``UA-43``; City databases only), ``registered_country``, ``represented_country``
(with ``represented_type``, default ``military``), ``continent``, ``anonymizer`` (flags from
:data:`exportgate.location.ANONYMIZER_FLAGS`, for the Anonymous-IP database) and ``note``.

Caveats (mmdb-writer 0.2.7, a dev dependency imported only when building): IPv4 networks are stored
at ``::a.b.c.d`` in the IPv6 tree and no ``::ffff:``/6to4/Teredo aliases are written, which is why
the gate unwraps those forms itself; its value cache treats ``True``, ``1`` and ``1.0`` as one value
(so records hold no small integers next to booleans); integers are written as u32 (geoname ids); a
broad network inserted after a narrower one would overwrite it, so networks are inserted broadest
first; libmaxminddb refuses a file whose build epoch is 0. The files are test data, not
geolocation: they make no claim about where anyone is.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import iso3166, yamlfile
from .errors import ConfigError
from .location import ANONYMIZER_FLAGS

KINDS = ("Country", "City")

# Real GeoNames ids and English names for the countries the test data uses; other codes are
# written with their ISO code only, which GeoIP2 readers accept.
_COUNTRIES: dict[str, tuple[int, str]] = {
    "CU": (3562981, "Cuba"),
    "DE": (2921044, "Germany"),
    "GB": (2635167, "United Kingdom"),
    "IR": (130758, "Iran"),
    "KP": (1873107, "North Korea"),
    "PH": (1694008, "Philippines"),
    "RU": (2017370, "Russia"),
    "SD": (366755, "Sudan"),
    "SE": (2661886, "Sweden"),
    "SY": (163843, "Syria"),
    "UA": (690791, "Ukraine"),
    "US": (6252001, "United States"),
}
_CONTINENTS = {"AF", "AN", "AS", "EU", "NA", "OC", "SA"}
_KEYS = (
    "network",
    "country",
    "subdivision",
    "registered_country",
    "represented_country",
    "represented_type",
    "continent",
    "anonymizer",
    "note",
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def load_networks(path: str | Path) -> list[dict[str, Any]]:
    """Read a networks YAML file (a list of mappings), keeping line numbers for errors."""
    data = yamlfile.load(path)
    if not isinstance(data, list):
        raise ConfigError(
            "expected a list of networks", file=str(path), line=getattr(data, "line", None)
        )
    return data


def build(
    networks: Iterable[Mapping[str, Any]],
    out_path: str | Path,
    *,
    kind: str = "Country",
    build_epoch: int | None = None,
    database_type: str | None = None,
) -> Path:
    """Write a GeoIP2-``kind``-shaped database holding ``networks``; returns the path written.

    The file is written beside ``out_path`` and renamed over it, as geoipupdate does.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    database_type = database_type or f"GeoIP2-{kind}"
    if kind not in database_type:
        # geoip2's typed readers check the database type by substring.
        raise ValueError(f"database_type {database_type!r} must contain {kind!r}")
    entries = _validated(networks)
    rows = [(network, _place_record(entry, kind)) for network, entry in entries]
    return _write(
        rows,
        out_path,
        database_type=database_type,
        build_epoch=build_epoch,
        description=f"exportgate test data ({kind})",
    )


def build_anonymous_ip(
    networks: Iterable[Mapping[str, Any]],
    out_path: str | Path,
    *,
    build_epoch: int | None = None,
) -> Path:
    """Write a GeoIP2-Anonymous-IP-shaped database from the networks that have ``anonymizer`` flags.

    Only the flags listed are written (``is_anonymous`` is not implied by the others).
    """
    rows = []
    for network, entry in _validated(networks):
        flags = entry.get("anonymizer")
        if flags:
            rows.append((network, {"is_" + flag.replace("-", "_"): True for flag in flags}))
    return _write(
        rows,
        out_path,
        database_type="GeoIP2-Anonymous-IP",
        build_epoch=build_epoch,
        description="exportgate test data (Anonymous-IP)",
    )


def _validated(networks: Iterable[Mapping[str, Any]]) -> list[tuple[Network, dict[str, Any]]]:
    file = getattr(networks, "file", "") or "<networks>"
    items = list(networks)
    seen: dict[Network, int] = {}
    result = []
    for index, item in enumerate(items):
        line = yamlfile.item_line(networks, index)
        fields = yamlfile.Fields(item, file=file, what=f"network #{index + 1}", line=line)
        text = fields.str("network")
        try:
            network = ipaddress.ip_network(text)
        except ValueError as exc:
            raise fields.error(
                "network", f"network {text!r} is not a CIDR network ({exc})"
            ) from None
        if network in seen:
            raise fields.error(
                "network", f"network {network} is listed twice (first as #{seen[network]})"
            )
        seen[network] = index + 1
        entry: dict[str, Any] = {}
        for key in ("country", "registered_country", "represented_country"):
            code = fields.str(key, required=False)
            if code is not None:
                if not iso3166.is_country(code):
                    problem = iso3166.check_code(code) or "expected a country code like IR"
                    raise fields.error(key, f"{key}: {problem}")
                entry[key] = code
        subdivision = fields.str("subdivision", required=False)
        if subdivision is not None:
            country, _, local = subdivision.partition("-")
            if country != entry.get("country") or not _is_subdivision_code(local):
                raise fields.error(
                    "subdivision",
                    f"subdivision must look like {entry.get('country', 'UA')}-43 "
                    f"(the network's country, '-', 1-3 letters or digits), got {subdivision!r}",
                )
            entry["subdivision"] = local
        entry["represented_type"] = fields.str("represented_type", required=False) or "military"
        continent = fields.str("continent", required=False)
        if continent is not None:
            if continent not in _CONTINENTS:
                raise fields.error(
                    "continent", f"continent must be one of {', '.join(sorted(_CONTINENTS))}"
                )
            entry["continent"] = continent
        flags = fields.list("anonymizer", required=False)
        if flags is not None:
            unknown = [flag for flag in flags if flag not in ANONYMIZER_FLAGS]
            if unknown or not flags:
                raise fields.error(
                    "anonymizer",
                    f"anonymizer flags must be among {', '.join(ANONYMIZER_FLAGS)}; got {flags!r}",
                )
            entry["anonymizer"] = sorted(set(flags))
        fields.str("note", required=False)
        fields.done()
        result.append((network, entry))
    # Broadest first, by where each network sits in the database's one IPv6 tree (IPv4 is ::a.b.c.d/96+n there):
    # mmdb-writer lets a later, broader insert overwrite a narrower network, so an IPv6 network covering ::/96
    # written after the IPv4 ones would replace them all.
    result.sort(key=lambda row: (_tree_prefixlen(row[0]), int(row[0].network_address)))
    return result


def _tree_prefixlen(network: Any) -> int:
    return network.prefixlen + (96 if network.version == 4 else 0)


def _is_subdivision_code(code: str) -> bool:
    return 1 <= len(code) <= 3 and code.isascii() and code.isalnum() and code.upper() == code


def _country(code: str) -> dict[str, Any]:
    known = _COUNTRIES.get(code)
    if known is None:
        return {"iso_code": code}
    geoname_id, name = known
    return {"geoname_id": geoname_id, "iso_code": code, "names": {"en": name}}


def _place_record(entry: dict[str, Any], kind: str) -> dict[str, Any]:
    record: dict[str, Any] = {}
    if "continent" in entry:
        record["continent"] = {"code": entry["continent"]}
    if "country" in entry:
        record["country"] = _country(entry["country"])
    if "registered_country" in entry:
        record["registered_country"] = _country(entry["registered_country"])
    if "represented_country" in entry:
        record["represented_country"] = {
            **_country(entry["represented_country"]),
            "type": entry["represented_type"],
        }
    if kind == "City" and "subdivision" in entry:
        record["subdivisions"] = [{"iso_code": entry["subdivision"]}]
    return record


def _write(
    rows: list[tuple[Network, dict[str, Any]]],
    out_path: str | Path,
    *,
    database_type: str,
    build_epoch: int | None,
    description: str,
) -> Path:
    try:
        from mmdb_writer import MMDBWriter
        from netaddr import IPSet  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            f"building test databases needs the dev extra ({exc.name} is missing): "
            "pip install -e '.[dev]'"
        ) from None
    epoch = int(time.time()) if build_epoch is None else int(build_epoch)
    if epoch < 1:
        # libmaxminddb (the C reader maxminddb uses) refuses to open a file whose build_epoch is 0.
        raise ValueError(f"build_epoch must be a positive Unix time, got {build_epoch!r}")

    class Writer(MMDBWriter):
        def _build_meta(self) -> dict[str, Any]:
            # mmdb-writer stamps the current time; a fixed epoch makes the file reproducible.
            return {**super()._build_meta(), "build_epoch": epoch}

    writer = Writer(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description={"en": description},
        int_type="u32",
    )
    for network, record in rows:
        try:
            writer.insert_network(IPSet([str(network)]), record)
        except IndexError:  # mmdb-writer cannot write the whole address space as one network
            raise ValueError(f"network {network} cannot be written to a database; split it (e.g. ::/1 and 8000::/1)") \
                from None
    out = Path(out_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        writer.to_db_file(tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exportgate.geodata",
        description="Build a MaxMind-format test database from a YAML list of networks.",
    )
    parser.add_argument("networks", help="YAML list of networks, e.g. geodata/networks.yaml")
    parser.add_argument("out", help="the .mmdb file to write (replaced atomically)")
    parser.add_argument("--kind", choices=[*KINDS, "Anonymous-IP"], default="Country")
    parser.add_argument(
        "--build-epoch",
        type=int,
        default=None,
        help="build time as Unix seconds (default: $SOURCE_DATE_EPOCH, else now)",
    )
    args = parser.parse_args(argv)
    epoch = args.build_epoch
    if epoch is None and os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        networks = load_networks(args.networks)
        if args.kind == "Anonymous-IP":
            out = build_anonymous_ip(networks, args.out, build_epoch=epoch)
        else:
            out = build(networks, args.out, kind=args.kind, build_epoch=epoch)
    except (ConfigError, RuntimeError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    built = dt.datetime.fromtimestamp(epoch if epoch is not None else time.time(), dt.UTC)
    print(f"wrote {out} ({len(networks)} networks, {args.kind}, built {built:%Y-%m-%d})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
