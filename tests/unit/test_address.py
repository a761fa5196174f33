"""Client address normalisation and special-purpose ranges (exportgate.address)."""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exportgate.address import ClientAddress, normalise, special_reason
from exportgate.errors import AddressError

IR = IPv4Address("2.176.0.1")


@pytest.mark.parametrize(
    ("text", "ip", "form"),
    [
        pytest.param("2.176.0.1", IR, "plain", id="plain ipv4"),
        pytest.param("0.0.0.0", IPv4Address("0.0.0.0"), "plain", id="zero ipv4"),
        pytest.param("255.255.255.255", IPv4Address("255.255.255.255"), "plain", id="broadcast"),
        pytest.param("::ffff:2.176.0.1", IR, "ipv4-mapped", id="mapped dotted"),
        pytest.param("::ffff:2b0:1", IR, "ipv4-mapped", id="mapped hex"),
        pytest.param("0:0:0:0:0:FFFF:2.176.0.1", IR, "ipv4-mapped", id="mapped long upper"),
        pytest.param("::2.176.0.1", IR, "ipv4-compatible", id="compatible"),
        pytest.param("2002:2b0:1::1", IR, "6to4", id="6to4"),
        pytest.param("2002:2b0:1:abcd:1:2:3:4", IR, "6to4", id="6to4 any subnet and host"),
        pytest.param("64:ff9b::2.176.0.1", IR, "nat64", id="nat64 dotted"),
        pytest.param("64:ff9b::2b0:1", IR, "nat64", id="nat64 hex"),
        # Teredo: server 65.54.227.120, flags 0x8000, port 40000; the client 2.176.0.1 is stored
        # inverted (0xfd4ffffe), the server in the clear.
        pytest.param(
            "2001:0:4136:e378:8000:63bf:fd4f:fffe", IR, "teredo", id="teredo client not server"
        ),
        pytest.param("2a01:5ec0::1", IPv6Address("2a01:5ec0::1"), "plain", id="plain ipv6"),
        pytest.param(
            "2A01:5EC0:0:0::1", IPv6Address("2a01:5ec0::1"), "plain", id="ipv6 upper uncompressed"
        ),
        pytest.param(
            "2a01:5ec0::1%eth0", IPv6Address("2a01:5ec0::1"), "plain", id="ipv6 zone id dropped"
        ),
        pytest.param("fe80::1%12", IPv6Address("fe80::1"), "plain", id="link-local numeric zone"),
        pytest.param("::", IPv6Address("::"), "plain", id="unspecified is not compatible"),
        pytest.param("::1", IPv6Address("::1"), "plain", id="loopback is not compatible"),
        pytest.param(
            "64:ff9b:1::1", IPv6Address("64:ff9b:1::1"), "plain", id="local-use nat64 not unwrapped"
        ),
    ],
)
def test_normalise(text: str, ip: IPv4Address | IPv6Address, form: str) -> None:
    client = normalise(text)
    assert client == ClientAddress(text=text, ip=ip, form=form, address=str(ip))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("1.2.3.4:80", "port", id="ipv4 with port"),
        pytest.param("::ffff:1.2.3.4:80", "port", id="mapped with port"),
        pytest.param("[::1]", "brackets", id="brackets"),
        pytest.param("[::1]:443", "brackets", id="brackets and port"),
        pytest.param("[2.176.0.1]", "brackets", id="ipv4 in brackets"),
        pytest.param(" 2.176.0.1", "whitespace", id="leading space"),
        pytest.param("2.176.0.1 ", "whitespace", id="trailing space"),
        pytest.param("2.176.0.1\t", "whitespace", id="tab"),
        pytest.param("2.176.0.1\n", "whitespace", id="newline"),
        pytest.param("\u00a02.176.0.1", "whitespace", id="no-break space"),
        pytest.param("2.176.0.1\x00", "control", id="NUL"),
        pytest.param("2.176.0.1\x7f", "control", id="DEL"),
        pytest.param("2.176.0.1,8.8.8.8", "list", id="comma list"),
        pytest.param("2.176.0.1, 8.8.8.8", "whitespace", id="comma list with space"),
        pytest.param("1" * 65, "longer than 64", id="oversize"),
        pytest.param("2.176.0.1" + " " * 100, "longer than 64", id="oversize padding"),
        pytest.param("02.176.0.1", "Leading zeros", id="leading zero octet"),
        pytest.param("2.176.0.01", "Leading zeros", id="leading zero last octet"),
        pytest.param("::ffff:2.176.0.01", "not an IPv4 or IPv6", id="leading zero in mapped"),
        pytest.param("2.176.1", "not an IPv4", id="three octets"),
        pytest.param("2.176.0.1.5", "not an IPv4", id="five octets"),
        pytest.param("256.1.1.1", "not an IPv4", id="octet too big"),
        pytest.param("0x2.176.0.1", "not an IPv4", id="hex octet"),
        pytest.param("2.176.0.1/32", "network", id="cidr"),
        pytest.param("2.176.0.1%eth0", "zone id", id="zone on ipv4"),
        pytest.param("fe80::1%", "empty zone", id="empty zone"),
        pytest.param("fe80::1%eth0%1", "zone id", id="two zones"),
        pytest.param("fe80::1%eth*0", "zone id", id="zone with star"),
        pytest.param("\u0662.176.0.1", "non-ASCII", id="arabic-indic digit"),
        pytest.param("2a01:5ec0::1::1", "not an IPv4 or IPv6", id="two double colons"),
        pytest.param("2a01:5ec0:0:0:0:0:0:0:1", "not an IPv4 or IPv6", id="nine groups"),
        pytest.param("localhost", "not an IPv4", id="host name"),
        pytest.param("unknown", "not an IPv4", id="x-forwarded-for unknown"),
        pytest.param("-", "not an IPv4", id="dash"),
    ],
)
def test_normalise_rejects(text: str, reason: str) -> None:
    with pytest.raises(AddressError) as info:
        normalise(text)
    assert reason in info.value.reason
    assert info.value.text == text


@pytest.mark.parametrize("value", [None, 42, b"2.176.0.1", ["2.176.0.1"], IR])
def test_normalise_rejects_what_is_not_text(value: object) -> None:
    with pytest.raises(AddressError, match="expected text"):
        normalise(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("0.0.0.0", "unspecified", id="v4 unspecified"),
        pytest.param("::", "unspecified", id="v6 unspecified"),
        pytest.param("0.1.2.3", "reserved", id="this network"),
        pytest.param("10.1.2.3", "private", id="10/8"),
        pytest.param("172.16.0.1", "private", id="172.16/12"),
        pytest.param("172.31.255.255", "private", id="172.16/12 top"),
        pytest.param("192.168.1.1", "private", id="192.168/16"),
        pytest.param("100.64.0.1", "private", id="cgnat"),
        pytest.param("100.127.255.255", "private", id="cgnat top"),
        pytest.param("fc00::1", "private", id="ula fc"),
        pytest.param("fd12:3456::1", "private", id="ula fd"),
        pytest.param("fec0::1", "private", id="site-local"),
        pytest.param("64:ff9b:1::1", "private", id="local-use nat64"),
        pytest.param("127.0.0.1", "loopback", id="v4 loopback"),
        pytest.param("127.255.0.1", "loopback", id="v4 loopback /8"),
        pytest.param("::1", "loopback", id="v6 loopback"),
        pytest.param("169.254.10.1", "link-local", id="v4 link-local"),
        pytest.param("fe80::1", "link-local", id="v6 link-local"),
        pytest.param("224.0.0.1", "multicast", id="v4 multicast"),
        pytest.param("239.255.255.250", "multicast", id="ssdp"),
        pytest.param("ff02::1", "multicast", id="v6 multicast"),
        pytest.param("192.0.2.1", "reserved", id="test-net-1"),
        pytest.param("198.51.100.1", "reserved", id="test-net-2"),
        pytest.param("203.0.113.1", "reserved", id="test-net-3"),
        pytest.param("2001:db8::1", "reserved", id="v6 documentation"),
        pytest.param("3fff::1", "reserved", id="v6 documentation 3fff"),
        pytest.param("192.0.0.8", "reserved", id="ietf protocol assignments"),
        pytest.param("198.18.0.1", "reserved", id="benchmarking"),
        pytest.param("240.0.0.1", "reserved", id="class e"),
        pytest.param("255.255.255.255", "reserved", id="limited broadcast"),
        pytest.param("100::1", "reserved", id="discard-only"),
        pytest.param("2001:2::1", "reserved", id="v6 benchmarking"),
        pytest.param("4000::1", "reserved", id="outside 2000::/3"),
        pytest.param("::ffff:0:1.2.3.4", "reserved", id="siit translated"),
    ],
)
def test_special_reason(text: str, reason: str) -> None:
    assert special_reason(ipaddress.ip_address(text)) == reason


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("2.176.0.1", id="ir"),
        pytest.param("8.8.8.8", id="us"),
        pytest.param("1.0.0.1", id="low"),
        pytest.param("100.63.255.255", id="just below cgnat"),
        pytest.param("100.128.0.0", id="just above cgnat"),
        pytest.param("172.32.0.1", id="just above 172.16/12"),
        pytest.param("223.255.255.255", id="just below multicast"),
        pytest.param("2a01:5ec0::1", id="ir v6"),
        pytest.param("2001:4:112::1", id="as112 v6 is global"),
        pytest.param("2001:480::1", id="just above 2001::/23"),
        pytest.param("2c0f:f000::1", id="africa v6"),
    ],
)
def test_special_reason_none_for_global(text: str) -> None:
    assert special_reason(ipaddress.ip_address(text)) is None


def test_special_reason_of_normalised_embedding() -> None:
    # A private address is private in whatever IPv6 form it arrives.
    for text in ("::ffff:10.0.0.1", "2002:a00:1::1", "64:ff9b::10.0.0.1", "::10.0.0.1"):
        assert special_reason(normalise(text).ip) == "private", text
    assert special_reason(normalise("::ffff:127.0.0.1").ip) == "loopback"


# --- properties ---------------------------------------------------------------------------------


def _embeddings(ip: IPv4Address, subnet: int, host: int, server: int, port: int) -> dict[str, str]:
    value = int(ip)
    forms = {
        "plain": str(ip),
        "ipv4-mapped": f"::ffff:{ip}",
        "nat64": f"64:ff9b::{ip}",
        "6to4": str(IPv6Address((0x2002 << 112) | (value << 80) | (subnet << 64) | host)),
        "teredo": str(
            IPv6Address(
                (0x2001_0000 << 96)
                | (server << 64)
                | (0x8000 << 48)
                | (port << 32)
                | (~value & 0xFFFF_FFFF)
            )
        ),
    }
    if value > 1:  # ::0.0.0.0 and ::0.0.0.1 are :: and ::1
        forms["ipv4-compatible"] = f"::{ip}"
    return forms


@given(
    ip=st.ip_addresses(v=4),
    subnet=st.integers(0, 0xFFFF),
    host=st.integers(0, 2**64 - 1),
    server=st.integers(0, 2**32 - 1),
    port=st.integers(0, 0xFFFF),
)
def test_every_embedding_normalises_back(
    ip: IPv4Address, subnet: int, host: int, server: int, port: int
) -> None:
    for form, text in _embeddings(ip, subnet, host, server, port).items():
        client = normalise(text)
        assert (client.ip, client.form, client.address) == (ip, form, str(ip)), text
        assert normalise(text.upper()).ip == ip


@given(st.ip_addresses(v=6))
def test_any_ipv6_address_is_accepted(ip: IPv6Address) -> None:
    client = normalise(str(ip))
    if client.form == "plain":
        assert client.ip == ip
    else:
        assert client.ip.version == 4


_ADDRESSY = st.from_regex(r"[0-9a-fA-F:.%\[\], x/\x00]{0,70}", fullmatch=True)


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=80), _ADDRESSY))
def test_normalise_raises_only_address_error(text: str) -> None:
    try:
        client = normalise(text)
    except AddressError as exc:
        assert exc.reason
        return
    assert client.text == text
    assert client.form in ("plain", "ipv4-mapped", "ipv4-compatible", "6to4", "nat64", "teredo")


_IPV6_TEXTS = st.ip_addresses(v=6).flatmap(
    lambda ip: st.sampled_from([str(ip), ip.exploded, ip.exploded.upper(), str(ip).upper()])
)


def _embedded(ip: IPv6Address, form: str) -> IPv4Address | IPv6Address | None:
    """What ipaddress itself says the embedded IPv4 address is."""
    return {
        "plain": ip,
        "ipv4-mapped": ip.ipv4_mapped,
        "6to4": ip.sixtofour,
        "teredo": ip.teredo[1] if ip.teredo else None,
        "nat64": IPv4Address(int(ip) & 0xFFFF_FFFF),
        "ipv4-compatible": IPv4Address(int(ip) & 0xFFFF_FFFF),
    }[form]


@settings(max_examples=500)
@given(st.one_of(_ADDRESSY, st.ip_addresses().map(str), _IPV6_TEXTS))
def test_normalise_agrees_with_ipaddress(text: str) -> None:
    # The inet_pton fast paths must not widen or narrow what ipaddress accepts, nor the value.
    try:
        expected = ipaddress.ip_address(text)
    except ValueError:
        expected = None
    try:
        client = normalise(text)
    except AddressError:
        client = None
    if "%" in text:  # ipaddress keeps zone ids of any characters; normalise is stricter
        return
    assert (client is None) == (expected is None), text
    if client is not None and expected is not None:
        assert client.address == str(client.ip)
        if expected.version == 4:
            assert (client.ip, client.form) == (expected, "plain")
        else:
            assert client.ip == _embedded(expected, client.form), text


# An independent statement of the table (first match wins), to check the indexed lookup against.
_REFERENCE = [
    (ipaddress.ip_network(n), r)
    for n, r in [
        ("0.0.0.0/32", "unspecified"),
        ("0.0.0.0/8", "reserved"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "private"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"),
        ("192.0.2.0/24", "reserved"),
        ("192.88.99.0/24", "reserved"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "reserved"),
        ("198.51.100.0/24", "reserved"),
        ("203.0.113.0/24", "reserved"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "private"),
        ("100::/64", "reserved"),
        ("2001:1::1/128", None),
        ("2001:1::2/128", None),
        ("2001:1::3/128", None),
        ("2001:3::/32", None),
        ("2001:4:112::/48", None),
        ("2001:20::/28", None),
        ("2001:30::/28", None),
        ("2001::/23", "reserved"),
        ("2001:db8::/32", "reserved"),
        ("3fff::/20", "reserved"),
        ("5f00::/16", "reserved"),
        ("fc00::/7", "private"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "private"),
        ("ff00::/8", "multicast"),
        ("2000::/3", None),
        ("::/0", "reserved"),
    ]
]


def _reference_reason(ip: IPv4Address | IPv6Address) -> str | None:
    for network, reason in _REFERENCE:
        if network.version == ip.version and ip in network:
            return reason
    return None


_NEAR_SPECIAL = st.sampled_from([n for n, _ in _REFERENCE]).flatmap(
    lambda n: st.integers(int(n.network_address), int(n.broadcast_address)).map(
        lambda v: ipaddress.ip_address(v) if n.version == 4 else IPv6Address(v)
    )
)


@settings(max_examples=500)
@given(st.one_of(st.ip_addresses(), _NEAR_SPECIAL))
def test_special_reason_matches_the_reference_table(ip: IPv4Address | IPv6Address) -> None:
    assert special_reason(ip) == _reference_reason(ip)
