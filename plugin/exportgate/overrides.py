"""Static network -> country entries that the gate consults before any database.

Operators write them in the gate config (``geo.overrides``) to place internal networks, test
clients, or a network a database gets wrong. Each names an IP network, an ISO 3166-1 country
and optionally an ISO 3166-2 subdivision of it; the most specific network holding an address
wins. They are checked when read — a misspelt country (``UK``, ``IRN``), a subdivision of another
country, a network listed twice, or an IPv6 range whose addresses are located by the IPv4 address
they embed is a :class:`~exportgate.errors.ConfigError` naming file:line.

Caveat: an override is trusted as written and beats every database, for private and loopback
addresses too — that is what it is for, and why a wrong one sends a sanctioned client's downloads
through as if they came from elsewhere. The answer's ``source`` names the override.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

from . import iso3166, yamlfile
from .address import ClientAddress
from .errors import ConfigError
from .location import Location
from .networktable import NetworkTable

_UNWRAPPED_V6 = tuple(
    ip_network(n) for n in ("::ffff:0:0/96", "64:ff9b::/96", "2002::/16", "2001::/32")
)
_COMPATIBLE_V6 = ip_network("::/96")


class Overrides:
    """Static network -> country (and subdivision) entries, consulted before anything else.

    From config as a list (``[{network: 10.0.0.0/8, country: US, subdivision: US-CA}]``) or a
    mapping (``{10.0.0.0/8: US}`` or ``{10.0.0.0/8: {country: US}}``). The most specific network
    wins. They match the normalised address (``::ffff:10.0.0.1`` is ``10.0.0.1``), and they apply
    to private and loopback addresses too: internal networks and tests are what they are for.
    """

    def __init__(
        self, entries: Iterable[Any] | Mapping[str, Any] = (), *, file: str | None = None
    ) -> None:
        self.file = file or getattr(entries, "file", None) or None
        self.networks: dict[IPv4Network | IPv6Network, tuple[str, str | None]] = {}
        if isinstance(entries, Mapping):
            for key, value in entries.items():
                line = entries.line_of(key) if isinstance(entries, yamlfile.Mapping) else None
                if isinstance(value, Mapping):
                    self._add_entry(value, f"override {key}", network=key, line=line)
                else:
                    self._add(key, value, None, file=self.file, line=line)
        else:
            for index, item in enumerate(entries):
                line = yamlfile.item_line(entries, index)
                self._add_entry(item, f"override #{index + 1}", line=line)
        # Filed most specific first, so the first network the table finds is the one that wins.
        self._table = NetworkTable()
        for network in sorted(self.networks, key=lambda n: n.prefixlen, reverse=True):
            country, subdivision = self.networks[network]
            self._table.add(
                network.version,
                int(network.network_address),
                network.prefixlen,
                (country, subdivision, str(network)),
            )

    def _add_entry(self, item: Any, what: str, *, network: Any = None, line: int | None) -> None:
        # Entries read by yamlfile carry their own file and line, even when the config hands them
        # over in a plain tuple.
        file = getattr(item, "file", None) or self.file
        fields = yamlfile.Fields(item, file=file or "<overrides>", what=what, line=line)
        if network is None:
            network = fields.str("network")
        country = fields.str("country")
        subdivision = fields.str("subdivision", required=False)
        fields.done()
        self._add(network, country, subdivision, file=file, line=fields.line() or line)

    def _add(
        self,
        text: object,
        country: object,
        subdivision: object,
        *,
        file: str | None,
        line: int | None,
    ) -> None:
        def error(message: str) -> ConfigError:
            return ConfigError(f"override {text}: {message}", file=file, line=line)

        if not isinstance(text, str):
            raise error("the network must be text like 10.0.0.0/8")
        try:
            network = ip_network(text)
        except ValueError as exc:
            raise error(f"not a network ({exc})") from None
        if network.version == 6 and (
            any(network.subnet_of(n) for n in _UNWRAPPED_V6)  # type: ignore[arg-type]
            or (network.subnet_of(_COMPATIBLE_V6) and int(network.broadcast_address) > 1)  # type: ignore[arg-type]
        ):
            raise error(
                "addresses there are located by the IPv4 address they embed; "
                "write the IPv4 network instead"
            )
        # A misspelt country (UK for GB, IRN for IR) would never match a rule: refuse it.
        if not isinstance(country, str) or not iso3166.is_country(country):
            problem = iso3166.check_code(country) if isinstance(country, str) else None
            raise error(f"country: {problem or f'expected a code like US, got {country!r}'}")
        if subdivision is not None:
            if not isinstance(subdivision, str) or not iso3166.is_subdivision(subdivision):
                problem = iso3166.check_code(subdivision) if isinstance(subdivision, str) else None
                raise error(f"subdivision: {problem}" if problem else
                            f"subdivision must be an ISO 3166-2 code like {country}-43, got {subdivision!r}")
            if not subdivision.startswith(country + "-"):
                raise error(f"subdivision {subdivision} is not in {country}")
        if network in self.networks:
            raise error(f"network {network} is listed twice")
        self.networks[network] = (country, subdivision)

    def __len__(self) -> int:
        return len(self.networks)

    def lookup(self, client: ClientAddress) -> Location | None:
        """The override covering ``client`` (most specific first), or None."""
        entry = self._table.find(client.ip.version, int(client.ip))
        if entry is None:
            return None
        country, subdivision, network = entry
        return Location(
            address=client.address,
            country=country,
            subdivision=subdivision,
            source=f"override {network}",
            form=client.form,
            network=network,
        )
