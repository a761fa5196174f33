"""Client addresses: parse one bare IP address and unwrap the IPv4 address it embeds.

:func:`normalise` is what the locator runs on a cache miss. It accepts exactly one bare IPv4 or
IPv6 address (an IPv6 zone id such as ``fe80::1%eth0`` is dropped) and rejects everything else
with :class:`~exportgate.errors.AddressError`: ports, brackets, lists, whitespace, control
characters, IPv4 octets with leading zeros. IPv6 addresses that carry an IPv4 address
(IPv4-mapped, IPv4-compatible, 6to4, the NAT64 well-known prefix, Teredo) are unwrapped so the
IPv4 address is what gets located: geolocation databases, the embedded registry data and the
project's own test databases do not reliably alias those forms.

:func:`special_reason` says why an address cannot be located at all (private, loopback, …).
It uses the project's own table of special-purpose ranges (RFC 6890 and successors) instead of
``ipaddress``'s ``is_private``/``is_global``, whose answers changed between Python patch releases.

Caveat: the address is whatever the web layer decided the client is. Behind proxies that is only
as trustworthy as the proxies the deployment trusts; nothing here can tell a forged
``X-Forwarded-For`` from a real one.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from .errors import AddressError
from .location import LINK_LOCAL, LOOPBACK, MULTICAST, PRIVATE, RESERVED, UNSPECIFIED

MAX_LENGTH = 64
"""Longest text accepted. The longest bare IPv6 address with an embedded IPv4 address is 45
characters; the rest leaves room for a zone id. Longer text is rejected before any parsing."""

PLAIN = "plain"
IPV4_MAPPED = "ipv4-mapped"
IPV4_COMPATIBLE = "ipv4-compatible"
SIX_TO_FOUR = "6to4"
NAT64 = "nat64"
TEREDO = "teredo"
FORMS = (PLAIN, IPV4_MAPPED, IPV4_COMPATIBLE, SIX_TO_FOUR, NAT64, TEREDO)

_inet_pton = socket.inet_pton
_inet_ntop = socket.inet_ntop
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_ZONE_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientAddress:
    """One client address, parsed and unwrapped."""

    text: str
    """The text as it was given."""

    ip: IPv4Address | IPv6Address
    """The address to locate: the embedded IPv4 address when ``form`` is not ``plain``."""

    form: str
    """How the address was written: one of :data:`FORMS`."""

    address: str
    """``ip`` as canonical text (equal to ``str(ip)``), what lookups and decision records use.
    Computed once, here: ``str()`` of an IPv6 address costs more than the rest of a lookup."""


def normalise(text: str) -> ClientAddress:
    """Parse ``text`` as one bare address and unwrap an embedded IPv4 address.

    Raises :class:`AddressError` (with a reason a person can act on) for anything else.
    """
    if not isinstance(text, str):
        raise AddressError(repr(text), f"expected text, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise AddressError(text, f"longer than {MAX_LENGTH} characters")
    if ":" not in text:
        # Fast path for the common case, a plain dotted IPv4 address: inet_pton is C, and the
        # round trip through inet_ntop accepts exactly the canonical text ipaddress accepts
        # (no leading zeros, no shorthand like "1.2" that inet_aton would take).
        try:
            packed = _inet_pton(_AF_INET, text)
        except (OSError, ValueError):
            pass
        else:
            if _inet_ntop(_AF_INET, packed) == text:
                # A plain IPv4 text that parsed is canonical already: no leading zeros, no spaces.
                ip = IPv4Address(int.from_bytes(packed, "big"))
                return ClientAddress(text=text, ip=ip, form=PLAIN, address=text)
    _check_characters(text)
    if ":" not in text:
        try:
            ip = IPv4Address(text)
        except ValueError as exc:
            raise AddressError(text, f"not an IPv4 address ({exc})") from None
        return ClientAddress(text=text, ip=ip, form=PLAIN, address=str(ip))
    bare, percent, zone = text.partition("%")
    if percent:
        if not zone:
            raise AddressError(text, "empty zone id after '%'")
        if not _ZONE_CHARACTERS.issuperset(zone):
            raise AddressError(text, "zone id may only contain letters, digits, '.', '_' and '-'")
    try:
        # inet_pton is ~10x faster than ipaddress here and, with glibc and musl, accepts exactly
        # the same texts (tests/unit/test_address.py checks that on the platform it runs on).
        value = int.from_bytes(_inet_pton(_AF_INET6, bare), "big")
    except (OSError, ValueError):
        try:
            value = int(IPv6Address(bare))  # never narrower than ipaddress, and its reason text
        except ValueError as exc:
            raise AddressError(text, f"not an IPv4 or IPv6 address ({exc})") from None
    return _unwrap(text, value)


def _check_characters(text: str) -> None:
    if not text:
        raise AddressError(text, "empty")
    if text.isascii() and text.isprintable():
        if " " in text:
            raise AddressError(text, "contains whitespace")
    else:
        if any(c.isspace() for c in text):
            raise AddressError(text, "contains whitespace")
        if not text.isprintable():
            raise AddressError(text, "contains a control character")
        raise AddressError(text, "contains a non-ASCII character")
    if "[" in text or "]" in text:
        raise AddressError(text, "has brackets: give the bare address, without [ ] or a port")
    if "," in text:
        raise AddressError(text, "is a list: give exactly one address")
    if "/" in text:
        raise AddressError(text, "is a network, not an address")
    if "." in text and ":" in text and text.rfind(":") > text.rfind("."):
        # "1.2.3.4:80"; an IPv6 address only has dots in a trailing IPv4 part.
        raise AddressError(text, "has a port: give the bare address")
    if "%" in text and ":" not in text:
        raise AddressError(text, "a zone id only goes with an IPv6 address")


# IPv6 prefixes that embed an IPv4 address, as integers shifted right by the prefix's host bits.
_MAPPED_HIGH = 0xFFFF  # ::ffff:0:0/96, value >> 32
_NAT64_HIGH = 0x0064_FF9B_0000_0000_0000_0000  # 64:ff9b::/96, value >> 32
_SIX_TO_FOUR_HIGH = 0x2002  # 2002::/16, value >> 112
_TEREDO_HIGH = 0x2001_0000  # 2001::/32, value >> 96
_LOW32 = 0xFFFF_FFFF


def _unwrap(text: str, value: int) -> ClientAddress:
    high96 = value >> 32
    if high96 == _MAPPED_HIGH:
        return _embedded(text, value & _LOW32, IPV4_MAPPED)
    if high96 == 0 and value > 1:
        # ::a.b.c.d (deprecated, RFC 4291); :: and ::1 are the unspecified and loopback addresses.
        return _embedded(text, value & _LOW32, IPV4_COMPATIBLE)
    if high96 == _NAT64_HIGH:
        return _embedded(text, value & _LOW32, NAT64)
    if value >> 112 == _SIX_TO_FOUR_HIGH:
        return _embedded(text, (value >> 80) & _LOW32, SIX_TO_FOUR)
    if value >> 96 == _TEREDO_HIGH:
        # RFC 4380: the client's own IPv4 address is the last 32 bits, bitwise inverted; the 32
        # bits after the prefix are the Teredo *server*, which says nothing about the client.
        return _embedded(text, ~value & _LOW32, TEREDO)
    # inet_ntop writes the same RFC 5952 text as str(IPv6Address) for every address that reaches
    # here (it differs only for the IPv4-mapped and -compatible forms, unwrapped above) at a
    # fraction of the cost; tests/unit/test_address.py checks that on the platform it runs on.
    address = _inet_ntop(_AF_INET6, value.to_bytes(16, "big"))
    return ClientAddress(text=text, ip=IPv6Address(value), form=PLAIN, address=address)


def _embedded(text: str, value: int, form: str) -> ClientAddress:
    address = _inet_ntop(_AF_INET, value.to_bytes(4, "big"))  # dotted decimal, as str() gives
    return ClientAddress(text=text, ip=IPv4Address(value), form=form, address=address)


def _table(bits: int, entries: list[tuple[str, str]]) -> tuple[tuple[int, int, str], ...]:
    """``(shift, value >> shift, reason)`` rows so a check is one shift and one compare."""
    cls = IPv4Address if bits == 32 else IPv6Address
    rows = []
    for cidr, reason in entries:
        base, _, length = cidr.partition("/")
        shift = bits - int(length)
        rows.append((shift, int(cls(base)) >> shift, reason))
    return tuple(rows)


# Order matters: the first matching row wins (0.0.0.0 is unspecified before 0.0.0.0/8 is
# reserved; ::1 is loopback before ::/8 is reserved).
_SPECIAL_V4 = _table(
    32,
    [
        ("0.0.0.0/32", UNSPECIFIED),
        ("0.0.0.0/8", RESERVED),  # "this network"
        ("10.0.0.0/8", PRIVATE),
        ("100.64.0.0/10", PRIVATE),  # carrier-grade NAT (RFC 6598): the subscriber is behind it
        ("127.0.0.0/8", LOOPBACK),
        ("169.254.0.0/16", LINK_LOCAL),
        ("172.16.0.0/12", PRIVATE),
        ("192.0.0.0/24", RESERVED),  # IETF protocol assignments
        ("192.0.2.0/24", RESERVED),  # documentation (TEST-NET-1)
        ("192.88.99.0/24", RESERVED),  # deprecated 6to4 relay anycast
        ("192.168.0.0/16", PRIVATE),
        ("198.18.0.0/15", RESERVED),  # benchmarking
        ("198.51.100.0/24", RESERVED),  # documentation (TEST-NET-2)
        ("203.0.113.0/24", RESERVED),  # documentation (TEST-NET-3)
        ("224.0.0.0/4", MULTICAST),
        ("240.0.0.0/4", RESERVED),  # includes 255.255.255.255
    ],
)

_SPECIAL_V6 = _table(
    128,
    [
        ("::/128", UNSPECIFIED),
        ("::1/128", LOOPBACK),
        ("64:ff9b:1::/48", PRIVATE),  # local-use NAT64 (RFC 8215): the operator's own translator
        ("100::/64", RESERVED),  # discard-only
        ("2001::/23", RESERVED),  # IETF protocol assignments (Teredo was unwrapped before)
        ("2001:db8::/32", RESERVED),  # documentation
        ("3fff::/20", RESERVED),  # documentation (RFC 9637)
        ("5f00::/16", RESERVED),  # SRv6 SIDs
        ("fc00::/7", PRIVATE),  # unique local
        ("fe80::/10", LINK_LOCAL),
        ("fec0::/10", PRIVATE),  # deprecated site-local
        ("ff00::/8", MULTICAST),
    ],
)
_IETF_V6 = int(IPv6Address("2001::")) >> 105  # 2001::/23, value >> 105
_GLOBAL_IETF_V6 = _table(
    128,
    [
        # Inside 2001::/23 but globally reachable (IANA special-purpose registry).
        ("2001:1::1/128", ""),
        ("2001:1::2/128", ""),
        ("2001:1::3/128", ""),
        ("2001:3::/32", ""),
        ("2001:4:112::/48", ""),
        ("2001:20::/28", ""),
        ("2001:30::/28", ""),
    ],
)


def _covers_octet(row: tuple[int, int, str], octet: int) -> bool:
    shift, prefix, _ = row
    if shift >= 24:
        return octet >> (shift - 24) == prefix
    return prefix >> (24 - shift) == octet


# The rows that can match, per first IPv4 octet (in table order), so most global addresses are
# answered after one index; and the IPv6 rows inside global unicast 2000::/3 versus outside it.
_SPECIAL_V4_BY_OCTET = tuple(
    tuple(row for row in _SPECIAL_V4 if _covers_octet(row, octet)) for octet in range(256)
)
_SPECIAL_V6_GLOBAL_UNICAST = tuple(row for row in _SPECIAL_V6 if row[1] >> (125 - row[0]) == 1)
_SPECIAL_V6_OTHER = tuple(row for row in _SPECIAL_V6 if row[1] >> (125 - row[0]) != 1)


def special_reason(ip: IPv4Address | IPv6Address) -> str | None:
    """Why ``ip`` cannot be located (``private``, ``loopback``, …), or ``None`` when it is global.

    Give it the unwrapped address from :func:`normalise`; an IPv6 address that still embeds an
    IPv4 address (``::ffff:a.b.c.d`` and the like) is ``reserved`` here.
    """
    value = int(ip)
    if ip.version == 4:
        for shift, prefix, reason in _SPECIAL_V4_BY_OCTET[value >> 24]:
            if value >> shift == prefix:
                return reason
        return None
    if value >> 125 == 1:  # global unicast 2000::/3
        if value >> 105 == _IETF_V6:
            for shift, prefix, _ in _GLOBAL_IETF_V6:
                if value >> shift == prefix:
                    return None
        for shift, prefix, reason in _SPECIAL_V6_GLOBAL_UNICAST:
            if value >> shift == prefix:
                return reason
        return None
    for shift, prefix, reason in _SPECIAL_V6_OTHER:
        if value >> shift == prefix:
            return reason
    # Everything else outside 2000::/3 is reserved by the IETF (RFC 4291), including
    # ::ffff:0:0/96 and the other IPv4-embedding forms when not unwrapped.
    return RESERVED
