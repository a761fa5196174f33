"""MaxMind-format databases as the gate reads them: country and subdivision, or anonymiser flags.

:class:`MaxMindLocator` answers from a Country or City database (GeoLite2, GeoIP2, DB-IP Lite and
other MaxMind-format files): country, first subdivision, registered and represented country, and
the database network the answer came from. :class:`AnonymousIPDatabase` answers VPN, proxy,
hosting and Tor flags from a GeoIP2-Anonymous-IP file. Both are
files of :class:`~exportgate.mmdbfile.DatabaseFile`: opened once, checked, reloaded when replaced.

Speed: decoding a full City record (names in eight languages) costs ~10 µs, so only the fields the
decision needs are extracted, once per database network, and kept in the build's network cache
(keyed by the prefix the reader returns); a later address in the same network costs a few dict
lookups.

Caveat: these are fed *normalised* addresses (:mod:`exportgate.address`): files written without
IPv4 aliases (mmdb-writer's) know nothing of ``::ffff:a.b.c.d``, 6to4 or Teredo forms. A record
without a usable country is an explicit unknown (``no-country``), never a guess; a lookup that
fails, country or anonymiser flags, is ``lookup-failed``, and is logged.
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Network, IPv6Network

from .address import ClientAddress
from .location import LOOKUP_FAILED, NO_COUNTRY, NOT_FOUND, UNREADABLE_SUBDIVISION, Location, unknown
from .mmdbfile import DatabaseFile
from .sources import is_country_code, is_subdivision_code, locate_with

# The gate's geolocation modules share one logger, so one logging setting covers all of them.
log = logging.getLogger("exportgate.geo")

COUNTRY_DATABASE_TYPES: tuple[str, ...] = ("Country", "City", "Enterprise")
"""A country database's ``database_type`` contains one of these (GeoLite2-City, DBIP-City-Lite…)."""

ANONYMOUS_IP_DATABASE_TYPES: tuple[str, ...] = ("Anonymous-IP", "Anonymous-Plus")

_ANONYMIZER_KEYS = (
    ("is_anonymous", "anonymous"),
    ("is_anonymous_vpn", "anonymous-vpn"),
    ("is_hosting_provider", "hosting-provider"),
    ("is_public_proxy", "public-proxy"),
    ("is_residential_proxy", "residential-proxy"),
    ("is_tor_exit_node", "tor-exit-node"),
)


class MaxMindLocator(DatabaseFile):
    """A MaxMind-format Country or City database: GeoLite2, GeoIP2, DB-IP Lite and the like.

    Only what the decision needs is read from a record (country, first subdivision, registered and
    represented country), once per database network: decoding a full City record costs ~10 µs.
    """

    accepted_types = COUNTRY_DATABASE_TYPES
    expected = "a Country or City database (GeoLite2-Country, GeoIP2-City, DBIP-Country-Lite…)"

    def locate(self, address: str) -> Location:
        self.check_for_update()
        return locate_with(self, address)

    def lookup(self, client: ClientAddress) -> Location:
        """Locate an already normalised, global address."""
        loaded = self._loaded
        ip = client.ip
        version = ip.version
        value = int(ip)
        entry = loaded.networks.find(version, value)
        if entry is None:
            if version == 6 and loaded.metadata.ip_version == 4:
                return unknown(
                    NOT_FOUND, address=client.address, source=loaded.source, form=client.form
                )
            try:
                record, prefix_len = loaded.reader.get_with_prefix_len(client.address)
                entry = _place(record, version, value, prefix_len)
            except Exception as exc:  # a corrupt record must not take the gate down
                log.error("%s: looking up %s failed: %s", self.path, client.address, exc)
                return unknown(
                    LOOKUP_FAILED, address=client.address, source=loaded.source, form=client.form
                )
            loaded.remember(version, value, prefix_len, entry)
        reason, country, subdivision, registered, represented, network = entry
        return Location(
            address=client.address,
            country=country,
            subdivision=subdivision,
            registered_country=registered,
            represented_country=represented,
            unknown_reason=reason,
            source=loaded.source,
            form=client.form,
            network=network,
        )


def _place(record: object, version: int, value: int, prefix_len: int) -> tuple[str | None, ...]:
    """``(unknown_reason, country, subdivision, registered, represented, network)`` of a record."""
    bits = 32 if version == 4 else 128
    shift = bits - prefix_len
    network_cls = IPv4Network if version == 4 else IPv6Network
    network = str(network_cls(((value >> shift) << shift, prefix_len)))
    if record is None:
        return (NOT_FOUND, None, None, None, None, network)
    if not isinstance(record, dict):
        raise TypeError(f"record for {network} is a {type(record).__name__}, expected a map")
    country = _iso_code(record.get("country"))
    subdivision = None
    unreadable = False
    if country is not None:
        subdivisions = record.get("subdivisions")
        # MaxMind lists regions from the largest down: the first that has a code (a converted database may put an
        # entry with only a name before it).
        code = next((entry.get("iso_code") for entry in subdivisions if isinstance(entry, dict)
                     and entry.get("iso_code") is not None), None) if isinstance(subdivisions, list) else None
        if code is not None:
            subdivision = _subdivision(country, code)
            unreadable = subdivision is None
    if unreadable:
        # Dropped, the country alone would decide: a Crimean network written "Crimea" in a converted database
        # would be plain UA. No location at all, then (the pack's rule for unknown locations).
        reason: str | None = UNREADABLE_SUBDIVISION
        country = None
    else:
        reason = None if country is not None else NO_COUNTRY
    return (
        reason,
        country,
        subdivision,
        _iso_code(record.get("registered_country")),
        _iso_code(record.get("represented_country")),
        network,
    )


def _subdivision(country: str, code: object) -> str | None:
    """``UA-43`` from MaxMind's ``43``; also from ``UA-43``, ``ua-43`` and the number 43 that converted databases
    write. ``None``: nothing readable."""
    text = str(code).strip().upper() if isinstance(code, (str, int)) and not isinstance(code, bool) else ""
    text = text.removeprefix(f"{country}-")
    return f"{country}-{text}" if is_subdivision_code(text) else None


def _iso_code(part: object) -> str | None:
    if isinstance(part, dict):
        code = part.get("iso_code")
        if isinstance(code, str) and is_country_code(code):
            return code
    return None


class AnonymousIPDatabase(DatabaseFile):
    """A GeoIP2-Anonymous-IP (or Anonymous-Plus) database: VPN, proxy, hosting and Tor flags.

    A lookup that fails on the file's data raises: the client's location is then ``lookup-failed`` as when the
    country lookup fails (the gate does not decide), never a location without flags that a rule about anonymisers
    would have caught.
    """

    accepted_types = ANONYMOUS_IP_DATABASE_TYPES
    expected = "an Anonymous-IP database (GeoIP2-Anonymous-IP)"

    def flags(self, address: str) -> frozenset[str]:
        """Flags (from :data:`~exportgate.location.ANONYMIZER_FLAGS`) of a normalised address."""
        loaded = self._loaded
        try:
            record = loaded.reader.get(address)
        except ValueError:
            return frozenset()  # an IPv6 address in an IPv4-only file, or not an address at all
        if not isinstance(record, dict):
            return frozenset()
        return frozenset(flag for key, flag in _ANONYMIZER_KEYS if record.get(key))
