"""Where a requester is: the value the geolocation layer hands to policy.

A :class:`Location` is either *known* (it has a ``country``) or *unknown* with a reason. There is
no default country: private, loopback, unparseable, not-found and "record without a country" are
each an explicit unknown, and policy packs decide what an unknown location gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Why a location is unknown. Stable strings: they end up in decision records and metrics.
UNPARSEABLE = "unparseable"
PRIVATE = "private"
LOOPBACK = "loopback"
LINK_LOCAL = "link-local"
MULTICAST = "multicast"
RESERVED = "reserved"
UNSPECIFIED = "unspecified"
NOT_FOUND = "not-found"
NO_COUNTRY = "no-country"
# The record names a subdivision the gate cannot read: the country alone could be the wrong answer (Crimea is UA).
UNREADABLE_SUBDIVISION = "unreadable-subdivision"
LOOKUP_FAILED = "lookup-failed"
# The client address itself could not be established (behind trusted proxies): obfuscated identifier, an
# unreadable or oversize forwarding header, no peer address.
CLIENT_UNKNOWN = "client-address-unknown"

UNKNOWN_REASONS = (
    UNPARSEABLE, PRIVATE, LOOPBACK, LINK_LOCAL, MULTICAST, RESERVED, UNSPECIFIED, NOT_FOUND,
    NO_COUNTRY, UNREADABLE_SUBDIVISION, LOOKUP_FAILED, CLIENT_UNKNOWN,
)

# Anonymiser flags, as the GeoIP2 Anonymous-IP database names them (minus the ``is_`` prefix).
ANONYMIZER_FLAGS = (
    "anonymous", "anonymous-vpn", "hosting-provider", "public-proxy", "residential-proxy", "tor-exit-node",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Location:
    """The answer of a locator for one client address."""

    address: str | None
    """The address that was looked up, after normalisation (``None`` when unparseable)."""

    country: str | None = None
    """ISO 3166-1 alpha-2 code of the country the address is in; ``None`` means unknown."""

    subdivision: str | None = None
    """ISO 3166-2 code such as ``UA-43`` when the database has one (City databases)."""

    registered_country: str | None = None
    """Country the network is registered to, when the database says (may differ from ``country``)."""

    represented_country: str | None = None
    """Country represented by users of the address (e.g. a military base abroad), when present."""

    unknown_reason: str | None = None
    """Why ``country`` is ``None``: one of :data:`UNKNOWN_REASONS`."""

    source: str = ""
    """Which source answered: ``"GeoLite2-City 2026-11-24"``, ``"iptocc 3.3.170"``, ``"override 10.0.0.0/8"``."""

    form: str = "plain"
    """How the address was written: ``plain``, ``ipv4-mapped``, ``ipv4-compatible``, ``6to4``, ``nat64``,
    ``teredo`` (the embedded IPv4 address was looked up)."""

    network: str | None = None
    """The database network that matched, e.g. ``2.176.0.0/12``."""

    anonymizer: frozenset[str] = field(default_factory=frozenset)
    """Anonymiser flags from the Anonymous-IP database, e.g. ``{"tor-exit-node"}``."""

    @property
    def known(self) -> bool:
        return self.country is not None

    def to_dict(self) -> dict[str, object]:
        return {
            "address": self.address,
            "country": self.country,
            "subdivision": self.subdivision,
            "registered_country": self.registered_country,
            "represented_country": self.represented_country,
            "unknown_reason": self.unknown_reason,
            "source": self.source,
            "form": self.form,
            "network": self.network,
            "anonymizer": sorted(self.anonymizer),
        }


def unknown(reason: str, *, address: str | None = None, source: str = "", form: str = "plain") -> Location:
    """An unknown location with its reason."""
    return Location(address=address, unknown_reason=reason, source=source, form=form)
