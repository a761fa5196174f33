"""Client address behind proxies: spoofed, garbled, oversized and disagreeing forwarding headers."""

from __future__ import annotations

import email.message
import importlib.util

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import Headers

from conftest import require
from exportgate import yamlfile
from exportgate.errors import ConfigError
from exportgate.web.clientaddr import (
    ERRORS,
    FORWARDED,
    MAX_HEADER_CHARS,
    MAX_HOPS,
    NO_PEER,
    OBFUSCATED,
    PEER,
    TOO_LARGE,
    UNPARSEABLE,
    X_FORWARDED_FOR,
    ClientOrigin,
    TrustedProxies,
)

PROXIES = ["10.0.0.0/8", "127.0.0.0/8", "2001:db8:ff::/48"]
CLIENT = "203.0.113.7"
ATTACKER = "6.6.6.6"

XFF = TrustedProxies(PROXIES)
FWD = TrustedProxies(PROXIES, header="forwarded")
NOBODY = TrustedProxies([])


def answer(address: str | None, source: str, hop: int, error: str | None = None) -> tuple[object, ...]:
    return address, source, hop, error


def summary(origin: ClientOrigin) -> tuple[object, ...]:
    return origin.address, origin.source, origin.hop, origin.error


X_FORWARDED_FOR_CASES = [
    # trust
    pytest.param(NOBODY, CLIENT, ATTACKER, answer(CLIENT, PEER, 0), id="no trusted proxies: spoofed XFF ignored"),
    pytest.param(NOBODY, "10.0.0.1", CLIENT, answer("10.0.0.1", PEER, 0), id="no trusted proxies: even a LAN peer"),
    pytest.param(XFF, ATTACKER, CLIENT, answer(ATTACKER, PEER, 0), id="untrusted peer: its XFF ignored"),
    pytest.param(XFF, "10.0.0.1", CLIENT, answer(CLIENT, X_FORWARDED_FOR, 1), id="trusted peer, one entry"),
    pytest.param(XFF, "10.0.0.1", None, answer("10.0.0.1", PEER, 0), id="trusted peer, no header: peer asks"),
    pytest.param(XFF, "::ffff:127.0.0.1", CLIENT, answer(CLIENT, X_FORWARDED_FOR, 1),
                 id="ipv4-mapped peer trusted as 127.0.0.0/8"),
    pytest.param(XFF, "2001:db8:ff::5", CLIENT, answer(CLIENT, X_FORWARDED_FOR, 1), id="ipv6 peer trusted"),
    pytest.param(XFF, "2001:db8:fe::5", CLIENT, answer("2001:db8:fe::5", PEER, 0), id="ipv6 peer outside the /48"),
    pytest.param(XFF, "10.0.0.1", f"{ATTACKER}, {CLIENT}", answer(CLIENT, X_FORWARDED_FOR, 1),
                 id="attacker-prepended entry ignored"),
    pytest.param(XFF, "10.0.0.1", f"1.1.1.1, {ATTACKER}, {CLIENT}, 10.9.9.9", answer(CLIENT, X_FORWARDED_FOR, 2),
                 id="more hops than trusted proxies"),
    pytest.param(XFF, "10.0.0.1", f"{ATTACKER},{CLIENT},10.9.9.9", answer(CLIENT, X_FORWARDED_FOR, 2),
                 id="header lines joined with ',' (gunicorn, werkzeug)"),
    pytest.param(XFF, "10.0.0.1", f"{ATTACKER}, {CLIENT}, 10.9.9.9", answer(CLIENT, X_FORWARDED_FOR, 2),
                 id="header lines joined with ', ' (nginx)"),
    pytest.param(XFF, "10.0.0.1", "10.1.1.1, 10.2.2.2", answer("10.1.1.1", X_FORWARDED_FOR, 2),
                 id="every entry trusted: leftmost"),
    pytest.param(XFF, "10.0.0.1", f"{CLIENT}, ::ffff:10.3.3.3", answer(CLIENT, X_FORWARDED_FOR, 2),
                 id="ipv4-mapped entry trusted"),
    pytest.param(XFF, "10.0.0.1", "::ffff:203.0.113.7", answer("::ffff:203.0.113.7", X_FORWARDED_FOR, 1),
                 id="ipv4-mapped client left for the locator to unwrap"),
    # entry forms
    pytest.param(XFF, "10.0.0.1", "203.0.113.7:5678", answer(CLIENT, X_FORWARDED_FOR, 1), id="ipv4 with port"),
    pytest.param(XFF, "10.0.0.1", "[2001:db8::1]", answer("2001:db8::1", X_FORWARDED_FOR, 1), id="bracketed ipv6"),
    pytest.param(XFF, "10.0.0.1", "[2001:db8::1]:443", answer("2001:db8::1", X_FORWARDED_FOR, 1),
                 id="bracketed ipv6 with port"),
    pytest.param(XFF, "10.0.0.1", "2001:DB8::1", answer("2001:DB8::1", X_FORWARDED_FOR, 1), id="bare ipv6"),
    pytest.param(XFF, "10.0.0.1", "fe80::1%eth0", answer("fe80::1%eth0", X_FORWARDED_FOR, 1),
                 id="zone id left for the locator"),
    pytest.param(XFF, "10.0.0.1", f"\t{CLIENT} ", answer(CLIENT, X_FORWARDED_FOR, 1), id="surrounding whitespace"),
    pytest.param(XFF, "10.0.0.1", f",{CLIENT}", answer(CLIENT, X_FORWARDED_FOR, 1),
                 id="empty client line before the proxy's"),
    pytest.param(XFF, "10.0.0.1", f"garbage, {CLIENT}", answer(CLIENT, X_FORWARDED_FOR, 1),
                 id="garbage left of the hop ignored"),
    # unusable at the hop
    pytest.param(XFF, "10.0.0.1", "", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE),
                 id="empty header from trusted proxy"),
    pytest.param(XFF, "10.0.0.1", "  ", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE), id="blank header"),
    pytest.param(XFF, "10.0.0.1", f"{CLIENT},", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE),
                 id="trailing comma"),
    pytest.param(XFF, "10.0.0.1", f"{CLIENT}, , 10.9.9.9", answer(None, X_FORWARDED_FOR, 2, UNPARSEABLE),
                 id="empty entry between proxies"),
    pytest.param(XFF, "10.0.0.1", "garbage", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE), id="garbage"),
    pytest.param(XFF, "10.0.0.1", f"{CLIENT}, garbage, 10.9.9.9", answer(None, X_FORWARDED_FOR, 2, UNPARSEABLE),
                 id="garbage between proxies: never the leftmost"),
    pytest.param(XFF, "10.0.0.1", "example.org", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE), id="host name"),
    pytest.param(XFF, "10.0.0.1", "203.0.113.7 198.51.100.1", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE),
                 id="space-separated list"),
    pytest.param(XFF, "10.0.0.1", "203.0.113.07", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE),
                 id="leading zero (octal to some parsers)"),
    pytest.param(XFF, "10.0.0.1", "203.0.113", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE),
                 id="three octets"),
    pytest.param(XFF, "10.0.0.1", "203.0.113.7:http", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE),
                 id="port not a number"),
    pytest.param(XFF, "10.0.0.1", "203.0.113.7:", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE),
                 id="empty port"),
    pytest.param(XFF, "10.0.0.1", "203.0.113.7:123456", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE),
                 id="port too long"),
    pytest.param(XFF, "10.0.0.1", "[203.0.113.7]", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE),
                 id="ipv4 in brackets"),
    pytest.param(XFF, "10.0.0.1", "[2001:db8::1", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE),
                 id="unclosed bracket"),
    pytest.param(XFF, "10.0.0.1", "[2001:db8::1]x", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE),
                 id="text after bracket"),
    pytest.param(XFF, "10.0.0.1", "fe80::1%", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE), id="empty zone"),
    pytest.param(XFF, "10.0.0.1", "fe80::1%e/th0", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE),
                 id="zone with slash"),
    pytest.param(XFF, "10.0.0.1", "203.0.113.7%eth0", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE),
                 id="zone on ipv4"),
    pytest.param(XFF, "10.0.0.1", "203.0.113.0/24", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE), id="network"),
    pytest.param(XFF, "10.0.0.1", "203.0.113.7\x00", answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE), id="NUL"),
    pytest.param(XFF, "10.0.0.1", "\uff12\uff10\uff13.\uff10.\uff11\uff11\uff13.\uff17",
                 answer(None, X_FORWARDED_FOR, 1, UNPARSEABLE), id="fullwidth digits"),
    pytest.param(XFF, "10.0.0.1", "unknown", answer(None, X_FORWARDED_FOR, 1, OBFUSCATED), id="unknown (squid)"),
    pytest.param(XFF, "10.0.0.1", "UNKNOWN", answer(None, X_FORWARDED_FOR, 1, OBFUSCATED), id="UNKNOWN"),
    pytest.param(XFF, "10.0.0.1", "_hidden", answer(None, X_FORWARDED_FOR, 1, OBFUSCATED), id="obfuscated"),
    pytest.param(XFF, "10.0.0.1", f"{CLIENT}, unknown, 10.9.9.9", answer(None, X_FORWARDED_FOR, 2, OBFUSCATED),
                 id="unknown between proxies"),
    pytest.param(XFF, "10.0.0.1", f"unknown, {CLIENT}", answer(CLIENT, X_FORWARDED_FOR, 1),
                 id="unknown left of the hop ignored"),
    # peers
    pytest.param(NOBODY, "", CLIENT, answer(None, PEER, 0, NO_PEER), id="no peer address"),
    pytest.param(NOBODY, "garbage", CLIENT, answer(None, PEER, 0, UNPARSEABLE), id="garbage peer"),
    pytest.param(XFF, "", CLIENT, answer(None, PEER, 0, NO_PEER), id="unix socket peer not trusted"),
    pytest.param(TrustedProxies(["unix"]), "", CLIENT, answer(CLIENT, X_FORWARDED_FOR, 1),
                 id="unix socket peer trusted"),
    pytest.param(TrustedProxies(["unix"]), "", None, answer(None, PEER, 0, NO_PEER),
                 id="unix socket peer, no header"),
    pytest.param(TrustedProxies(["unix"]), "10.0.0.1", CLIENT, answer("10.0.0.1", PEER, 0),
                 id="unix trusts no TCP peer"),
    pytest.param(TrustedProxies(["::ffff:10.0.0.0/104"]), "10.0.0.1", CLIENT, answer(CLIENT, X_FORWARDED_FOR, 1),
                 id="ipv4 network written ipv4-mapped"),
]


@pytest.mark.parametrize(("proxies", "peer", "value", "expected"), X_FORWARDED_FOR_CASES)
def test_x_forwarded_for(proxies: TrustedProxies, peer: str, value: str | None, expected: tuple[object, ...]) -> None:
    origin = proxies.resolve_value(peer, value)
    assert summary(origin) == expected
    assert origin.chain[-1] == peer
    assert (origin.error is None) == (origin.detail is None)
    assert origin.error is None or origin.error in ERRORS


FORWARDED_CASES = [
    pytest.param("10.0.0.1", f"for={CLIENT}", answer(CLIENT, FORWARDED, 1), id="one element"),
    pytest.param(ATTACKER, f"for={CLIENT}", answer(ATTACKER, PEER, 0), id="untrusted peer"),
    pytest.param("10.0.0.1", None, answer("10.0.0.1", PEER, 0), id="no header: peer asks"),
    pytest.param("10.0.0.1", f'for="{CLIENT}"', answer(CLIENT, FORWARDED, 1), id="quoted ipv4"),
    pytest.param("10.0.0.1", f'for="{CLIENT}:4711"', answer(CLIENT, FORWARDED, 1), id="quoted ipv4 with port"),
    pytest.param("10.0.0.1", 'for="[2001:db8:cafe::17]:4711"', answer("2001:db8:cafe::17", FORWARDED, 1),
                 id="quoted ipv6 with port (RFC 7239 example)"),
    pytest.param("10.0.0.1", 'for="[2001:db8:cafe::17]"', answer("2001:db8:cafe::17", FORWARDED, 1),
                 id="quoted ipv6"),
    pytest.param("10.0.0.1", f'for="{CLIENT}:_port"', answer(CLIENT, FORWARDED, 1), id="obfuscated port"),
    pytest.param("10.0.0.1", f"For={CLIENT}", answer(CLIENT, FORWARDED, 1), id="For= mixed case"),
    pytest.param("10.0.0.1", f"FOR={CLIENT};PROTO=https", answer(CLIENT, FORWARDED, 1), id="FOR= upper case"),
    pytest.param("10.0.0.1", f"proto=https;for={CLIENT};by=10.0.0.1", answer(CLIENT, FORWARDED, 1),
                 id="for= among other parameters"),
    pytest.param("10.0.0.1", f"for={CLIENT}; proto=https", answer(CLIENT, FORWARDED, 1), id="space after ';'"),
    pytest.param("10.0.0.1", f"for={ATTACKER}, for={CLIENT};proto=https", answer(CLIENT, FORWARDED, 1),
                 id="multiple elements: attacker's ignored"),
    pytest.param("10.0.0.1", f"for={ATTACKER},for={CLIENT},for=10.3.3.3", answer(CLIENT, FORWARDED, 2),
                 id="lines joined, one trusted hop"),
    pytest.param("10.0.0.1", 'for=10.3.3.3, for="[::ffff:10.4.4.4]"', answer("10.3.3.3", FORWARDED, 2),
                 id="every element trusted: leftmost"),
    pytest.param("10.0.0.1", f'for="{ATTACKER}, for={CLIENT}', answer(CLIENT, FORWARDED, 1),
                 id="client's unbalanced quote cannot swallow the proxy's element"),
    pytest.param("10.0.0.1", f'for={CLIENT};host="evil, for={ATTACKER}"', answer(CLIENT, FORWARDED, 1),
                 id="comma and for= inside a quoted host"),
    pytest.param("10.0.0.1", f'for={CLIENT};host="a\\"b\\\\", for=10.3.3.3', answer(CLIENT, FORWARDED, 2),
                 id="escaped quote and backslash in a quoted value"),
    pytest.param("10.0.0.1", f"garbage;;, for={CLIENT}", answer(CLIENT, FORWARDED, 1),
                 id="garbage left of the hop ignored"),
    # unusable at the hop
    pytest.param("10.0.0.1", "for=_hidden", answer(None, FORWARDED, 1, OBFUSCATED), id="obfuscated"),
    pytest.param("10.0.0.1", 'for="_hidden:_port"', answer(None, FORWARDED, 1, OBFUSCATED),
                 id="obfuscated with port"),
    pytest.param("10.0.0.1", "for=unknown", answer(None, FORWARDED, 1, OBFUSCATED), id="unknown"),
    pytest.param("10.0.0.1", 'for="unknown:8080"', answer(None, FORWARDED, 1, OBFUSCATED), id="unknown with port"),
    pytest.param("10.0.0.1", f"for={CLIENT}, for=_proxy, for=10.3.3.3", answer(None, FORWARDED, 2, OBFUSCATED),
                 id="obfuscated proxy between trusted ones"),
    pytest.param("10.0.0.1", f"for=_x, for={CLIENT}", answer(CLIENT, FORWARDED, 1),
                 id="obfuscated left of the hop ignored"),
    pytest.param("10.0.0.1", "for=[2001:db8::1]", answer(None, FORWARDED, 1, UNPARSEABLE),
                 id="unquoted ipv6"),
    pytest.param("10.0.0.1", 'for="2001:db8::1"', answer(None, FORWARDED, 1, UNPARSEABLE),
                 id="quoted ipv6 without brackets"),
    pytest.param("10.0.0.1", f"for={CLIENT}:80", answer(None, FORWARDED, 1, UNPARSEABLE), id="unquoted port"),
    pytest.param("10.0.0.1", "proto=https;by=10.0.0.1", answer(None, FORWARDED, 1, UNPARSEABLE),
                 id="element without for="),
    pytest.param("10.0.0.1", f"for={ATTACKER};for={CLIENT}", answer(None, FORWARDED, 1, UNPARSEABLE),
                 id="for= twice in one element"),
    pytest.param("10.0.0.1", f"for={CLIENT},", answer(None, FORWARDED, 1, UNPARSEABLE), id="trailing comma"),
    pytest.param("10.0.0.1", f"for={CLIENT};", answer(None, FORWARDED, 1, UNPARSEABLE), id="trailing semicolon"),
    pytest.param("10.0.0.1", "", answer(None, FORWARDED, 1, UNPARSEABLE), id="empty header"),
    pytest.param("10.0.0.1", "for=", answer(None, FORWARDED, 1, UNPARSEABLE), id="empty value"),
    pytest.param("10.0.0.1", 'for=""', answer(None, FORWARDED, 1, UNPARSEABLE), id="empty quoted value"),
    pytest.param("10.0.0.1", f'for="{CLIENT}', answer(None, FORWARDED, 1, UNPARSEABLE), id="unterminated quote"),
    pytest.param("10.0.0.1", f'for={CLIENT}"', answer(None, FORWARDED, 1, UNPARSEABLE), id="stray quote"),
    pytest.param("10.0.0.1", f"for = {CLIENT}", answer(None, FORWARDED, 1, UNPARSEABLE), id="spaces around ="),
    pytest.param("10.0.0.1", "garbage", answer(None, FORWARDED, 1, UNPARSEABLE), id="garbage"),
    pytest.param("10.0.0.1", CLIENT, answer(None, FORWARDED, 1, UNPARSEABLE), id="XFF syntax in Forwarded"),
    pytest.param("10.0.0.1", "for=example.org", answer(None, FORWARDED, 1, UNPARSEABLE), id="host name"),
    pytest.param("10.0.0.1", f'for="[{CLIENT}]"', answer(None, FORWARDED, 1, UNPARSEABLE),
                 id="ipv4 in brackets"),
    pytest.param("10.0.0.1", 'for="[2001:db8::1]:http"', answer(None, FORWARDED, 1, UNPARSEABLE),
                 id="port not a number"),
    pytest.param("10.0.0.1", f"for={CLIENT}, for=garbage, for=10.3.3.3", answer(None, FORWARDED, 2, UNPARSEABLE),
                 id="garbage between proxies: never the leftmost"),
]


@pytest.mark.parametrize(("peer", "value", "expected"), FORWARDED_CASES)
def test_forwarded(peer: str, value: str | None, expected: tuple[object, ...]) -> None:
    origin = FWD.resolve_value(peer, value)
    assert summary(origin) == expected
    assert origin.chain[-1] == peer
    assert (origin.error is None) == (origin.detail is None)


def test_chain_lists_every_entry_left_to_right_peer_last() -> None:
    origin = XFF.resolve_value("10.0.0.1", f"{ATTACKER}, {CLIENT}:99, 10.9.9.9")
    assert origin.chain == (ATTACKER, f"{CLIENT}:99", "10.9.9.9", "10.0.0.1")
    origin = FWD.resolve_value("10.0.0.1", f'for={ATTACKER}, for="[2001:db8::1]:443";proto=https, for=10.9.9.9')
    assert origin.address == "2001:db8::1"
    assert origin.chain == (ATTACKER, "[2001:db8::1]:443", "10.9.9.9", "10.0.0.1")
    assert NOBODY.resolve_value(CLIENT, ATTACKER).chain == (CLIENT,)


@pytest.mark.parametrize(("proxies", "expected"), [
    pytest.param(XFF, CLIENT, id="configured x-forwarded-for"),
    pytest.param(FWD, "198.51.100.9", id="configured forwarded"),
])
def test_only_the_configured_header_counts(proxies: TrustedProxies, expected: str) -> None:
    environ = {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": CLIENT, "HTTP_FORWARDED": "for=198.51.100.9"}
    assert proxies.resolve_environ(environ).address == expected
    # The other header alone is as good as no header: the peer is the requester.
    only_other = {"REMOTE_ADDR": "10.0.0.1",
                  ("HTTP_FORWARDED" if proxies is XFF else "HTTP_X_FORWARDED_FOR"): "for=198.51.100.9"}
    assert proxies.resolve_environ(only_other).source == PEER


def test_resolve_environ_without_remote_addr() -> None:
    assert summary(XFF.resolve_environ({"HTTP_X_FORWARDED_FOR": CLIENT})) == answer(None, PEER, 0, NO_PEER)


@pytest.mark.parametrize("make_headers", [
    pytest.param("werkzeug", id="werkzeug Headers"),
    pytest.param("email", id="email.message.Message"),
])
def test_resolve_reads_every_header_line(make_headers: str) -> None:
    lines = [("X-Forwarded-For", ATTACKER), ("x-forwarded-for", f"{CLIENT}, 10.9.9.9"), ("Forwarded", "for=1.1.1.1")]
    headers: Headers | email.message.Message
    if make_headers == "werkzeug":
        headers = Headers(lines)
    else:
        message = email.message.Message()
        for name, value in lines:
            message[name] = value
        headers = message
    origin = XFF.resolve("10.0.0.1", headers)
    assert (origin.address, origin.hop) == (CLIENT, 2)
    assert origin.chain == (ATTACKER, CLIENT, "10.9.9.9", "10.0.0.1")
    assert FWD.resolve("10.0.0.1", headers).address == "1.1.1.1"
    assert XFF.resolve("10.0.0.1", email.message.Message()).source == PEER


def test_gunicorn_environ_joins_header_lines_in_order() -> None:
    """The real gunicorn request parser, no server: several lines of one header become one environ value."""
    require(importlib.util.find_spec("gunicorn") is not None, "gunicorn", "pip install -e '.[web]'")
    from gunicorn.config import Config  # type: ignore[import-untyped]
    from gunicorn.http import wsgi  # type: ignore[import-untyped]
    from gunicorn.http.parser import RequestParser  # type: ignore[import-untyped]

    class Socket:
        def sendall(self, data: bytes) -> None:
            pass

    request = (b"GET /x HTTP/1.1\r\nHost: mirror\r\n"
               b"X-Forwarded-For: " + ATTACKER.encode() + b"\r\n"
               b"X-Forwarded-For: " + CLIENT.encode() + b", 10.9.9.9\r\n"
               b"Forwarded: for=" + ATTACKER.encode() + b"\r\nForwarded: for=" + CLIENT.encode() + b"\r\n\r\n")
    config = Config()
    parsed = next(RequestParser(config, iter([request]), ("10.0.0.1", 40000)))
    _, environ = wsgi.create(parsed, Socket(), ("10.0.0.1", 40000), ("127.0.0.1", 8000), config)
    origin = XFF.resolve_environ(environ)
    assert (origin.address, origin.hop) == (CLIENT, 2)
    assert origin.chain == (ATTACKER, CLIENT, "10.9.9.9", "10.0.0.1")
    assert FWD.resolve_environ(environ).address == CLIENT


# -- size limits: only the trusted part counts ---------------------------------------------------------------


def test_huge_client_prefix_cannot_make_the_client_unknown() -> None:
    junk = "A" * (4 * MAX_HEADER_CHARS)
    assert XFF.resolve_value("10.0.0.1", f"{junk}, {CLIENT}").address == CLIENT
    assert FWD.resolve_value("10.0.0.1", f'for="{junk}, for={CLIENT}').address == CLIENT
    many = ", ".join(["1.1.1.1"] * (5 * MAX_HOPS))
    assert XFF.resolve_value("10.0.0.1", f"{many}, {CLIENT}, 10.9.9.9").address == CLIENT
    assert FWD.resolve_value("10.0.0.1", f"for={many.replace(', ', ', for=')}, for={CLIENT}").address == CLIENT


@pytest.mark.parametrize(("proxies", "value"), [
    pytest.param(XFF, ", ".join(["10.9.9.9"] * (MAX_HOPS + 1)), id="xff: more trusted hops than the limit"),
    pytest.param(XFF, ", ".join([CLIENT] + ["10.9.9.9"] * MAX_HOPS), id="xff: client one hop beyond the limit"),
    pytest.param(XFF, CLIENT + "0" * MAX_HEADER_CHARS, id="xff: one entry over 8 KiB"),
    pytest.param(XFF, CLIENT + "," + ",".join([" " * 200 + "10.9.9.9"] * 50), id="xff: client beyond 8 KiB"),
    pytest.param(FWD, ", ".join(["for=10.9.9.9"] * (MAX_HOPS + 1)), id="forwarded: more trusted hops than the limit"),
    pytest.param(FWD, f"for={CLIENT};host=" + "h" * MAX_HEADER_CHARS, id="forwarded: one element over 8 KiB"),
    pytest.param(FWD, f"for={CLIENT}, " + ", ".join([f'for=10.9.9.9;host="{"h" * 200}"'] * 50),
                 id="forwarded: client beyond 8 KiB"),
    pytest.param(FWD, ", ".join([f'for=10.9.9.9;host="{"h" * 200}"'] * 50),
                 id="forwarded: every element trusted, leftmost beyond 8 KiB"),
])
def test_trusted_part_too_large(proxies: TrustedProxies, value: str) -> None:
    origin = proxies.resolve_value("10.0.0.1", value)
    assert (origin.address, origin.error) == (None, TOO_LARGE)
    assert origin.source == proxies.header
    assert len(origin.chain) <= MAX_HOPS + 1


def test_exactly_the_limits_is_fine() -> None:
    value = ", ".join([CLIENT] + ["10.9.9.9"] * (MAX_HOPS - 1))
    assert summary(XFF.resolve_value("10.0.0.1", value)) == answer(CLIENT, X_FORWARDED_FOR, MAX_HOPS)
    value = ", ".join(f"for={a}" for a in [CLIENT] + ["10.9.9.9"] * (MAX_HOPS - 1))
    assert summary(FWD.resolve_value("10.0.0.1", value)) == answer(CLIENT, FORWARDED, MAX_HOPS)
    padded = " " * (MAX_HEADER_CHARS - len(CLIENT) - len(", 10.9.9.9")) + CLIENT + ", 10.9.9.9"
    assert len(padded) == MAX_HEADER_CHARS
    assert XFF.resolve_value("10.0.0.1", padded).address == CLIENT


# -- configuration -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", [
    pytest.param("10.0.0.0/33", id="prefix too long"),
    pytest.param("10.0.0.1/8", id="host bits set"),
    pytest.param("10.0.0.0/8 ", id="trailing space"),
    pytest.param("localhost", id="host name"),
    pytest.param("", id="empty"),
    pytest.param("10.0.0.0/8,10.1.0.0/16", id="two in one"),
])
def test_bad_trusted_proxy_is_a_config_error_naming_it(entry: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TrustedProxies(["127.0.0.1", entry])
    assert repr(entry) in str(caught.value)


def test_config_error_names_file_and_line() -> None:
    data = yamlfile.loads("trusted_proxies:\n  - 10.0.0.0/8\n  - 10.0.0.300\n", "gate.yaml")
    with pytest.raises(ConfigError) as caught:
        TrustedProxies(data["trusted_proxies"], file="gate.yaml")
    assert str(caught.value).startswith("gate.yaml:3: ")


@pytest.mark.parametrize("header", ["x-real-ip", "X-Forwarded", ""])
def test_unknown_header_is_a_config_error(header: str) -> None:
    with pytest.raises(ConfigError):
        TrustedProxies(PROXIES, header=header)


def test_header_name_case_does_not_matter() -> None:
    assert TrustedProxies(PROXIES, header="X-Forwarded-For").header == X_FORWARDED_FOR
    assert TrustedProxies(PROXIES, header="Forwarded").header == FORWARDED


def test_single_addresses_and_unix() -> None:
    proxies = TrustedProxies(["192.0.2.1", "::1", "unix"])
    assert [proxies.is_trusted(a) for a in ("192.0.2.1", "192.0.2.2", "::1", "::ffff:192.0.2.1", "", "x")] == [
        True, False, True, True, True, False]
    assert not NOBODY.enabled and proxies.enabled


def test_answers_are_cached_but_bounded() -> None:
    proxies = TrustedProxies(PROXIES)
    first = proxies.resolve_value("10.0.0.1", CLIENT)
    assert proxies.resolve_value("10.0.0.1", CLIENT) is first
    for n in range(10_000):
        proxies.resolve_value("10.0.0.1", f"198.51.{n // 256 % 256}.{n % 256}")
    assert len(proxies._answers) <= 4096
    long_value = "1.1.1.1, " * 100 + CLIENT
    assert proxies.resolve_value("10.0.0.1", long_value).address == CLIENT
    assert ("10.0.0.1", long_value) not in proxies._answers


# -- properties ----------------------------------------------------------------------------------------------

PEERS = st.sampled_from(["10.0.0.1", "::ffff:127.0.0.1", "2001:db8:ff::1", "203.0.113.9", "", "garbage", "::1"])
HEADER_TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from([
        ",", ";", "=", '"', "\\", " ", "for", "For", "[", "]", ":", "_x", "unknown", "10.1.2.3", CLIENT,
        "2001:db8::1", "::ffff:10.0.0.1", "%eth0", "proto=https", "host=", "443", "\x00", "é",
    ]), max_size=30).map("".join),
)
PROPERTY_PROXIES = [XFF, FWD, NOBODY, TrustedProxies([*PROXIES, "unix"]), TrustedProxies(["0.0.0.0/0", "::/0"])]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(proxies=st.sampled_from(PROPERTY_PROXIES), peer=PEERS, value=st.one_of(st.none(), HEADER_TEXT))
def test_resolve_never_raises_and_answers_consistently(proxies: TrustedProxies, peer: str, value: str | None) -> None:
    origin = proxies.resolve_value(peer, value)
    assert origin.source in (PEER, X_FORWARDED_FOR, FORWARDED)
    assert (origin.address is None) == (origin.error is not None)
    assert origin.error is None or origin.error in ERRORS
    assert origin.chain[-1] == peer
    assert 0 <= origin.hop <= MAX_HOPS + 1
    if origin.address is not None:
        assert "," not in origin.address and " " not in origin.address and "]" not in origin.address
    if origin.source == PEER:
        assert origin.hop == 0
        assert origin.address in (peer, None)


@settings(max_examples=400, deadline=None)
@given(junk=HEADER_TEXT, client=st.sampled_from([CLIENT, "2001:db8::42", "198.51.100.200"]),
       proxies_after=st.integers(min_value=0, max_value=3), bracket=st.booleans())
def test_client_prefix_never_changes_the_answer(junk: str, client: str, proxies_after: int, bracket: bool) -> None:
    """Whatever the client put in front, the entry a trusted proxy appended wins (no self-chosen 'unknown')."""
    trusted_hops = ["10.7.7.7"] * proxies_after
    node = f"[{client}]:1234" if bracket and ":" in client else client
    xff = XFF.resolve_value("10.0.0.1", ", ".join([junk, node, *trusted_hops]))
    assert (xff.address, xff.hop) == (client, proxies_after + 1)
    quoted = f'"[{client}]"' if ":" in client else client
    fwd = FWD.resolve_value("10.0.0.1", ", ".join([junk] + [f"for={n}" for n in [quoted, *trusted_hops]]))
    assert (fwd.address, fwd.hop) == (client, proxies_after + 1)
