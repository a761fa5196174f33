"""Location sources: what answers for one normalised, global address — and the embedded default.

A source has ``lookup(client)`` (a :class:`~exportgate.address.ClientAddress` already normalised
and not in a special-purpose range) and ``describe()``. Two kinds exist: :class:`EmbeddedLocator`
here, used when no database is configured, and the MaxMind-format files of
:mod:`exportgate.maxmind`. The gate does not use a source on its own: its
:class:`~exportgate.geo.GateLocator` puts overrides, special ranges, anonymiser flags and a cache
around it. A source's own ``locate(address)`` goes through :func:`locate_with`, which normalises
and answers special ranges the same way the gate does, without overrides or cache.

Caveat: the embedded data (the ``iptocc`` package, registry allocations) says where a network is
*registered*, which for mobile, satellite, VPN and multinational networks is often not where the
user is. It is country only, and as current as the installed ``iptocc`` release.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from importlib import metadata
from typing import Protocol

from .address import ClientAddress, normalise, special_reason
from .errors import AddressError
from .iso3166 import is_country
from .location import LOOKUP_FAILED, NOT_FOUND, UNPARSEABLE, Location, unknown

# The gate's geolocation modules share one logger, so one logging setting covers all of them.
log = logging.getLogger("exportgate.geo")

SPECIAL_SOURCE = "special-purpose address"
"""``Location.source`` of the unknowns answered from the address alone (private, loopback, …)."""

UNPARSEABLE_LOCATION = unknown(UNPARSEABLE)
"""The one shared answer for junk: junk is common and building a Location is not free."""


class Source(Protocol):
    """What answers for an already normalised, global address."""

    def lookup(self, client: ClientAddress) -> Location: ...

    def describe(self) -> dict[str, object]: ...


def locate_with(source: Source, address: str) -> Location:
    """Normalise ``address``, answer special ranges as unknown, else ask ``source``; never raises
    for bad input."""
    try:
        client = normalise(address)
    except AddressError:
        return UNPARSEABLE_LOCATION
    reason = special_reason(client.ip)
    if reason is not None:
        return unknown(reason, address=client.address, source=SPECIAL_SOURCE, form=client.form)
    return source.lookup(client)


def is_country_code(code: object) -> bool:
    """An ISO 3166-1 alpha-2 country. Registry files also use two-letter codes that are no country: "EU" (anywhere
    in the RIPE region, Iran and Syria included), "AP", "ZZ"; such an answer is no location, never "a destination
    no pack restricts"."""
    return (
        isinstance(code, str)
        and len(code) == 2
        and code.isascii()
        and code.isalpha()
        and code.isupper()
        and is_country(code)
    )


def is_subdivision_code(code: object) -> bool:
    """One to three upper-case ASCII letters or digits: the part of ISO 3166-2 after the dash."""
    return (
        isinstance(code, str)
        and 1 <= len(code) <= 3
        and code.isascii()
        and code.isalnum()
        and code.upper() == code
    )


class EmbeddedLocator:
    """The default with no database configured: registry allocation data (the ``iptocc`` package).

    Country only (no subdivision, no network), and it says where a network is registered, not where
    its user is. Always fed the normalised address: it does not know IPv4-mapped or 6to4 forms.
    """

    def __init__(self) -> None:
        import iptocc

        self._country_code: Callable[[str], str | None] = iptocc.country_code
        self.version = metadata.version("iptocc")
        self.source = f"iptocc {self.version}"
        self.path = os.path.dirname(iptocc.__file__)

    def locate(self, address: str) -> Location:
        return locate_with(self, address)

    def lookup(self, client: ClientAddress) -> Location:
        """Locate an already normalised, global address."""
        address = client.address
        try:
            code = self._country_code(address)
        except Exception:  # fail closed on anything the extension raises
            log.exception("iptocc failed to look up %s", address)
            return unknown(LOOKUP_FAILED, address=address, source=self.source, form=client.form)
        # "ZZ" is what registry files use for "unassigned"; anything not a code is not an answer.
        if not is_country_code(code) or code == "ZZ":
            return unknown(NOT_FOUND, address=address, source=self.source, form=client.form)
        return Location(address=address, country=code, source=self.source, form=client.form)

    def describe(self) -> dict[str, object]:
        return {
            "source": self.source,
            "database_type": "registry allocations (iptocc)",
            "build_date": None,
            "age_days": None,
            "max_age_days": None,
            "stale": False,
            "path": self.path,
            "last_reload_error": None,
        }

    def close(self) -> None:
        """Nothing to release; here so every source closes alike."""
