"""Who is asking: the client address behind trusted reverse proxies.

When the gate sits behind nginx, Traefik, Caddy, Envoy or a load balancer, the TCP peer is the proxy and the
client's address travels in a header the proxy appends to: ``X-Forwarded-For`` (a comma-separated list) or
``Forwarded`` (RFC 7239, ``for=`` in each element). :class:`TrustedProxies` reads exactly one of them, chosen in
the config, and answers a :class:`ClientOrigin`:

* no trusted proxies configured, or the peer is not one of them: the peer is the client; headers are ignored;
* the peer is trusted: walk the header from the right (the last entry is what the peer saw), skip entries that
  are trusted proxies and take the first that is not; if every entry is trusted, take the leftmost;
* the peer is trusted but sent no such header at all: the peer itself is the requester (a health check, a
  proxy fetching for itself);
* the entry the walk stops at is ``unknown`` or an obfuscated ``_name`` -> unknown (``obfuscated``); it cannot be
  read -> unknown (``unparseable``); more than :data:`MAX_HOPS` trusted hops or more than
  :data:`MAX_HEADER_CHARS` to get there -> unknown (``too-large``). Never the leftmost entry as a fallback.

Only entries written by trusted proxies are ever parsed: everything left of the entry the walk stops at came
from the client and is ignored, so a client cannot make itself "unknown" (which a pack may treat more leniently
than its real country) by sending garbage, a huge header or hundreds of entries. ``X-Forwarded-For`` entries may
carry ports (``1.2.3.4:5678``, ``[2001:db8::1]:443``); several header lines, which WSGI servers join with ``,``
(gunicorn and werkzeug both do), are read as one list in order. Peers and entries are compared with the trusted
networks after unwrapping IPv4-mapped IPv6 (``::ffff:10.0.0.1`` is in ``10.0.0.0/8``). The keyword ``unix``
trusts a peer without an address: gunicorn behind nginx on a unix socket sets an empty ``REMOTE_ADDR``.

Security caveat (as for werkzeug's ProxyFix): these headers are written by whoever sent the request. Trusting
them is only safe when every trusted proxy *appends* to the header it forwards (nginx
``$proxy_add_x_forwarded_for``, Traefik/Caddy/Envoy defaults) and the gate cannot be reached except through
them. A proxy that passes the client's header on unchanged lets any client choose its own country.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, ip_network
from typing import Any, Protocol

from ..errors import ConfigError
from ..yamlfile import item_line

X_FORWARDED_FOR = "x-forwarded-for"
FORWARDED = "forwarded"
PEER = "peer"
HEADERS = (X_FORWARDED_FOR, FORWARDED)
"""The headers a deployment may choose to trust (exactly one)."""

UNIX = "unix"
"""Keyword in the trusted list: a peer without an address (a unix-socket connection) is a trusted proxy."""

# Why ClientOrigin.address is None. Stable strings: they end up in decision records and metrics.
OBFUSCATED = "obfuscated"
UNPARSEABLE = "unparseable"
TOO_LARGE = "too-large"
NO_PEER = "no-peer"
ERRORS = (OBFUSCATED, UNPARSEABLE, TOO_LARGE, NO_PEER)

MAX_HEADER_CHARS = 8192
"""Only the last 8 KiB of a header are read; an entry the walk needs beyond them is ``too-large``."""
MAX_HOPS = 64
"""At most this many entries are walked; needing more is ``too-large``."""

_MAX_NODE = 80  # longest bracketed IPv6 address with zone id and port, with room to spare
_MAPPED_FIRST = 0xFFFF << 32
_MAPPED_LAST = _MAPPED_FIRST | 0xFFFF_FFFF
_CACHE_SIZE = 4096
_MAX_CACHED = 256  # characters of header value; longer ones are rare and would make the cache large
_ENVIRON_KEYS = {X_FORWARDED_FOR: "HTTP_X_FORWARDED_FOR", FORWARDED: "HTTP_FORWARDED"}
_inet_pton = socket.inet_pton
_inet_ntop = socket.inet_ntop
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_ZONE = re.compile(r"[A-Za-z0-9._-]+")
_PORT = re.compile(r"[0-9]{1,5}")
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._-]+")
_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_OWS = " \t"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOrigin:
    """Who the client is, as far as the trusted proxies say."""

    address: str | None
    """The address to locate (bare: no brackets, no port; a zone id is left for the locator), ``None`` = unknown."""

    source: str
    """Where it came from: ``peer``, ``x-forwarded-for`` or ``forwarded``."""

    hop: int
    """Which entry, counted from the right, the answer (or the failure) is about: 0 is the peer, 1 the last
    header entry; for ``too-large``, the first entry beyond the limits."""

    chain: tuple[str, ...]
    """The entries read, left to right as written (ports and all), the peer last. Entries left of the one used
    were sent by the client: evidence of what it claimed, never a location."""

    error: str | None = None
    """Why ``address`` is ``None``: one of :data:`ERRORS`."""

    detail: str | None = None
    """The same for a person: which entry, and what is wrong with it."""


class HeaderSource(Protocol):
    """Request headers: werkzeug ``Headers``, ``email.message.Message``, ``http.client.HTTPMessage``."""

    def get_all(self, name: str) -> Any: ...


class _Unusable(Exception):
    """An entry the walk stopped at cannot give an address (internal: becomes ClientOrigin.error)."""

    def __init__(self, error: str, detail: str) -> None:
        self.error = error
        self.detail = detail


class Networks:
    """A set of IP networks or single addresses (``10.0.0.0/8``, ``::1``), and optionally :data:`UNIX` (a peer
    without an address), that addresses are compared with after unwrapping IPv4-mapped IPv6.

    A malformed entry is a :class:`ConfigError` naming it as ``what`` (with the line when ``entries`` is a list from
    :mod:`exportgate.yamlfile`). Host bits set (``10.0.0.1/8``) are an error too: probably a typo.
    """

    def __init__(self, entries: Iterable[str], *, what: str, file: str | None = None) -> None:
        self.unix = False
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        items = list(entries) if not isinstance(entries, str) else [entries]
        for index, entry in enumerate(items):
            line = item_line(entries, index)
            if entry == UNIX:
                self.unix = True
                continue
            if not isinstance(entry, str):
                raise ConfigError(f"{what} {entry!r} is not a network such as 10.0.0.0/8", file=file, line=line)
            try:
                network = ip_network(entry)
            except ValueError as exc:
                raise ConfigError(f"{what} {entry!r} is not a network such as 10.0.0.0/8 ({exc})",
                                  file=file, line=line) from None
            first, last = int(network.network_address), int(network.broadcast_address)
            if isinstance(network, IPv4Network):
                v4.append((first, last))
                continue
            v6.append((first, last))
            # Addresses are compared unmapped, so the part of an IPv6 network inside ::ffff:0:0/96
            # (``::ffff:10.0.0.0/104``, or all of it for ``::/0``) is an IPv4 network too.
            low, high = max(first, _MAPPED_FIRST), min(last, _MAPPED_LAST)
            if low <= high:
                v4.append((low & 0xFFFF_FFFF, high & 0xFFFF_FFFF))
        self.v4 = tuple(v4)
        self.v6 = tuple(v6)

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6 or self.unix)

    def __contains__(self, address: str) -> bool:
        """Whether ``address`` (a bare address, or ``""`` for a peer without one) is in the set."""
        if not address:
            return self.unix
        value = _ip_value(address)
        return value is not None and self.contains_value(value)

    def contains_value(self, value: tuple[int, int]) -> bool:
        """The same for an address already parsed: ``(version, integer)``, IPv4-mapped IPv6 unwrapped."""
        version, number = value
        for first, last in self.v4 if version == 4 else self.v6:  # noqa: SIM110 - faster than any(generator)
            if first <= number <= last:
                return True
        return False


class TrustedProxies:
    """The reverse proxies whose forwarding header the gate believes, and how to read it.

    ``cidrs`` holds networks or single addresses (``10.0.0.0/8``, ``::1``) and optionally :data:`UNIX`
    (:class:`Networks`: a malformed entry is a :class:`ConfigError` naming it).
    """

    def __init__(self, cidrs: Iterable[str], *, header: str = X_FORWARDED_FOR, file: str | None = None) -> None:
        header_name = header.lower() if isinstance(header, str) else header
        if header_name not in HEADERS:
            raise ConfigError(f"trusted proxy header must be one of {', '.join(HEADERS)}, not {header!r}", file=file)
        self.header: str = header_name
        self.networks = Networks(cidrs, what="trusted proxy", file=file)
        self._enabled = bool(self.networks)
        self._contains = self.networks.contains_value
        # Answers by (peer, header value): a handful of proxies and returning clients make most requests hits.
        # Per instance and bounded (emptied when full); long headers are not cached at all.
        self._answers: dict[tuple[str, str | None], ClientOrigin] = {}
        self._environ_key = _ENVIRON_KEYS[self.header]
        self._http_name = "X-Forwarded-For" if self.header == X_FORWARDED_FOR else "Forwarded"

    @property
    def enabled(self) -> bool:
        """Whether any proxy is trusted (otherwise headers are never read)."""
        return self._enabled

    def __repr__(self) -> str:
        n = self.networks
        return f"TrustedProxies(v4={len(n.v4)}, v6={len(n.v6)}, unix={n.unix}, header={self.header!r})"

    def sent_no_client(self, environ: Mapping[str, Any]) -> str | None:
        """The header a trusted proxy should have sent and did not (WSGI ``environ``), or ``None``. A front end
        asking on a client's behalf always names the client: without the header the gate would locate the front
        end itself (an unknown location), so forward auth refuses such a request."""
        if environ.get(self._environ_key) is not None or not self.is_trusted(environ.get("REMOTE_ADDR") or ""):
            return None
        return self._http_name

    def ignored_header(self, environ: Mapping[str, Any]) -> str | None:
        """The header a peer that is no trusted proxy sent and the gate ignored (WSGI ``environ``), or ``None``:
        a front end missing from ``trust_proxy`` (every client located at its address), or a client reaching the
        gate directly."""
        if environ.get(self._environ_key) is None or self.is_trusted(environ.get("REMOTE_ADDR") or ""):
            return None
        return self._http_name

    def is_trusted(self, address: str) -> bool:
        """Whether ``address`` (a bare address, or ``""`` for a unix-socket peer) is a trusted proxy."""
        return address in self.networks

    # -- entry points -------------------------------------------------------------------------------------

    def resolve_environ(self, environ: Mapping[str, Any]) -> ClientOrigin:
        """Resolve a WSGI request: ``REMOTE_ADDR`` and the configured header's ``HTTP_*`` key."""
        key = (environ.get("REMOTE_ADDR") or "", environ.get(self._environ_key))
        answer = self._answers.get(key)
        if answer is None:
            answer = self._remember(key)
        return answer

    def resolve(self, peer: str, headers: HeaderSource) -> ClientOrigin:
        """Resolve from the TCP peer and request headers with ``get_all(name)`` (all lines of one header)."""
        lines = headers.get_all(self._http_name)
        return self.resolve_value(peer, ",".join(lines) if lines else None)

    def resolve_value(self, peer: str, value: str | None) -> ClientOrigin:
        """Resolve from the TCP peer and the header's value (its lines joined with ``,``; ``None`` if absent)."""
        answer = self._answers.get((peer, value))
        if answer is None:
            answer = self._remember((peer, value))
        return answer

    def _remember(self, key: tuple[str, str | None]) -> ClientOrigin:
        answer = self._resolve(*key)
        peer, value = key
        if isinstance(peer, str) and (value is None or (isinstance(value, str) and len(value) <= _MAX_CACHED)):
            if len(self._answers) >= _CACHE_SIZE:
                self._answers.clear()
            self._answers[key] = answer
        return answer

    def _resolve(self, peer: str, value: str | None) -> ClientOrigin:
        if value is None or not self._enabled or not self.is_trusted(peer):
            return _peer_origin(peer)
        if self.header == X_FORWARDED_FOR:
            return self._walk_x_forwarded_for(peer, value)
        return self._walk_forwarded(peer, value)

    # -- X-Forwarded-For ----------------------------------------------------------------------------------

    def _walk_x_forwarded_for(self, peer: str, value: str) -> ClientOrigin:
        truncated = len(value) > MAX_HEADER_CHARS
        if truncated:
            value = value[-MAX_HEADER_CHARS:]
        entries = value.rsplit(",", MAX_HOPS)
        # The leftmost piece is partial when the header was cut, or holds every entry beyond MAX_HOPS.
        partial = truncated or len(entries) > MAX_HOPS
        chain = (*(e.strip(_OWS) for e in (entries[1:] if partial else entries)), peer)
        count = len(entries)
        address = None
        for hop in range(1, count + 1):
            if hop == count and partial:
                return _too_large(X_FORWARDED_FOR, chain, hop)
            try:
                address, number = _x_forwarded_for_node(entries[-hop])
            except _Unusable as exc:
                return ClientOrigin(address=None, source=X_FORWARDED_FOR, hop=hop, chain=chain, error=exc.error,
                                    detail=f"X-Forwarded-For entry {hop} from the right: {exc.detail}")
            if not self._contains(number):
                return ClientOrigin(address=address, source=X_FORWARDED_FOR, hop=hop, chain=chain)
        # Every entry is a trusted proxy (an internal request): the leftmost is as far as anyone can see.
        return ClientOrigin(address=address, source=X_FORWARDED_FOR, hop=count, chain=chain)

    # -- Forwarded (RFC 7239) -----------------------------------------------------------------------------

    def _walk_forwarded(self, peer: str, value: str) -> ClientOrigin:
        truncated = len(value) > MAX_HEADER_CHARS
        if truncated:
            value = value[-MAX_HEADER_CHARS:]
        nodes: list[str] = []  # for= values read, right to left
        address: str | None = None
        error: str | None = None
        detail: str | None = None
        end = len(value)
        hop = 0
        while True:
            hop += 1
            if hop > MAX_HOPS:
                error, detail = TOO_LARGE, _too_large_detail(hop)
                break
            try:
                params, start = _element_before(value, end)
            except _Unusable as exc:
                # In a cut header the element may be cut too: that is the size's fault, not the proxy's.
                error, detail = (TOO_LARGE, _too_large_detail(hop)) if truncated else (
                    exc.error, f"Forwarded element {hop} from the right: {exc.detail}")
                break
            if start < 0 and truncated:
                error, detail = TOO_LARGE, _too_large_detail(hop)
                break
            node = params.get("for")
            nodes.append("" if node is None else node)
            try:
                if node is None:
                    raise _Unusable(UNPARSEABLE, "has no for= parameter")
                address, number = _forwarded_node(node)
            except _Unusable as exc:
                error, detail = exc.error, f"Forwarded element {hop} from the right: {exc.detail}"
                break
            end = start
            if start < 0 or not self._contains(number):
                # The first element that is not a trusted proxy, or the leftmost when all of them are.
                break
        if error is None and end > 0:
            # The chain goes on to the left as far as it reads: what the client claimed, for the record.
            nodes.extend(_nodes_before(value, end, MAX_HOPS - len(nodes), truncated))
        return ClientOrigin(address=None if error else address, source=FORWARDED, hop=hop,
                            chain=(*reversed(nodes), peer), error=error, detail=detail)


def written_address(text: str) -> ClientOrigin:
    """An address as a person writes it (``exportgate explain --ip``), read as the gate reads an X-Forwarded-For
    entry: ``2.176.0.1:443``, ``[2001:db8::1]:80`` and ``fe80::1%eth0`` are addresses, ``_hidden`` is obfuscated,
    anything else unparseable; so explain answers what the gate answers for the client an access log shows."""
    try:
        address, _ = _x_forwarded_for_node(text)
    except _Unusable as exc:
        return ClientOrigin(address=None, source="cli", hop=0, chain=(text,), error=exc.error, detail=exc.detail)
    return ClientOrigin(address=address, source="cli", hop=0, chain=(text,))


def _peer_origin(peer: str) -> ClientOrigin:
    if not peer:
        return ClientOrigin(address=None, source=PEER, hop=0, chain=("",), error=NO_PEER,
                            detail="the connection has no peer address (unix socket?)")
    if _ip_value(peer) is None:
        return ClientOrigin(address=None, source=PEER, hop=0, chain=(peer,), error=UNPARSEABLE,
                            detail="the peer address is not an IP address")
    return ClientOrigin(address=peer, source=PEER, hop=0, chain=(peer,))


def _too_large(source: str, chain: tuple[str, ...], hop: int) -> ClientOrigin:
    return ClientOrigin(address=None, source=source, hop=hop, chain=chain, error=TOO_LARGE,
                        detail=_too_large_detail(hop))


def _too_large_detail(hop: int) -> str:
    return (f"entry {hop} from the right is needed but only the last {MAX_HOPS} entries and "
            f"{MAX_HEADER_CHARS} characters of the header are read")


def _ip_value(text: str) -> tuple[int, int] | None:
    """``(version, integer)`` of one bare address, IPv4-mapped IPv6 unwrapped; ``None`` if it is not one."""
    if len(text) > _MAX_NODE:
        return None
    if ":" not in text:
        try:
            packed = _inet_pton(_AF_INET, text)
        except (OSError, ValueError):
            return None
        # Only the canonical dotted quad: "010.1.1.1" is octal to some parsers and decimal to others.
        if _inet_ntop(_AF_INET, packed) != text:
            return None
        return 4, int.from_bytes(packed, "big")
    bare, percent, zone = text.partition("%")
    if percent and not _ZONE.fullmatch(zone):
        return None
    try:
        number = int.from_bytes(_inet_pton(_AF_INET6, bare), "big")
    except (OSError, ValueError):
        return None
    if number >> 32 == 0xFFFF:
        return 4, number & 0xFFFF_FFFF
    return 6, number


def _x_forwarded_for_node(entry: str) -> tuple[str, tuple[int, int]]:
    """The bare address in one X-Forwarded-For entry, and its value for the trust check."""
    text = entry.strip(_OWS)
    number = _ip_value(text)
    if number is not None:  # the common case: a bare address
        return text, number
    if not text:
        raise _Unusable(UNPARSEABLE, "empty entry")
    if len(text) > _MAX_NODE:
        raise _Unusable(UNPARSEABLE, f"{len(text)} characters is too long for an address")
    if text.lower() == "unknown" or _OBFUSCATED.fullmatch(text):
        raise _Unusable(OBFUSCATED, f"{text!r} hides the client")
    return _node_address(text, obfuscated_ports=False, bare_ipv6=True)


def _forwarded_node(node: str) -> tuple[str, tuple[int, int]]:
    """The bare address in one RFC 7239 ``for=`` value (already unquoted)."""
    if len(node) > _MAX_NODE:
        raise _Unusable(UNPARSEABLE, f"for= value of {len(node)} characters is too long for an address")
    host = node[: node.index("]") + 1] if node.startswith("[") and "]" in node else node.partition(":")[0]
    if host.lower() == "unknown" or _OBFUSCATED.fullmatch(host):
        raise _Unusable(OBFUSCATED, f"for={node!r} hides the client")
    return _node_address(node, obfuscated_ports=True, bare_ipv6=False)


def _node_address(text: str, *, obfuscated_ports: bool, bare_ipv6: bool) -> tuple[str, tuple[int, int]]:
    """Split ``[v6]:port``, ``v4:port`` or a bare address; check the port's form and the address."""
    shown = repr(text)
    port: str | None = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise _Unusable(UNPARSEABLE, f"{shown} has '[' without ']'")
        host, rest = text[1:close], text[close + 1:]
        if rest:
            if rest[0] != ":":
                raise _Unusable(UNPARSEABLE, f"{shown} has text after ']'")
            port = rest[1:]
        if ":" not in host:
            raise _Unusable(UNPARSEABLE, f"{shown}: only IPv6 addresses go in brackets")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host = text
        if ":" in host and not bare_ipv6:
            raise _Unusable(UNPARSEABLE, f"{shown}: an IPv6 address must be in brackets, as RFC 7239 requires")
    if port is not None and not (_PORT.fullmatch(port) or (obfuscated_ports and _OBFUSCATED.fullmatch(port))):
        raise _Unusable(UNPARSEABLE, f"{shown} has a port that is not a number")
    number = _ip_value(host)
    if number is None:
        raise _Unusable(UNPARSEABLE, f"{shown} is not an IP address")
    return host, number


def _element_before(text: str, end: int) -> tuple[dict[str, str], int]:
    """Parse the Forwarded element that ends at ``end``, reading right to left.

    Returns its parameters (names lower-cased, values unquoted) and the index of the ``,`` before it, or -1 when
    it is the first element. Reading right to left means only what the proxies appended is parsed: a client's
    unbalanced quote or junk further left cannot change how the elements to its right read.
    """
    params: dict[str, str] = {}
    i = end
    while True:
        while i > 0 and text[i - 1] in _OWS:
            i -= 1
        if i == 0 or text[i - 1] in ",;":
            raise _Unusable(UNPARSEABLE, "empty element or parameter")
        if text[i - 1] == '"':
            j = i - 2
            while True:
                j = text.rfind('"', 0, j + 1)
                if j < 0:
                    raise _Unusable(UNPARSEABLE, "quoted string without its opening quote")
                k = j
                while k > 0 and text[k - 1] == "\\":
                    k -= 1
                if (j - k) % 2 == 0:
                    break
                j -= 1
            raw_value = text[j + 1: i - 1]
            value = re.sub(r"\\(.)", r"\1", raw_value, flags=re.DOTALL) if "\\" in raw_value else raw_value
            start = j
        else:
            start = i
            while start > 0 and text[start - 1] in _TCHARS:
                start -= 1
            value = text[start:i]
            if not value:
                raise _Unusable(UNPARSEABLE, f"unexpected {text[i - 1]!r} (IPv6 and ports must be quoted)")
        if start == 0:
            raise _Unusable(UNPARSEABLE, "parameter without '='")
        if text[start - 1] != "=":
            raise _Unusable(UNPARSEABLE, f"unexpected {text[start - 1]!r} in a parameter value "
                                         "(an IPv6 address or a port must be quoted)")
        name_end = start - 1
        name_start = name_end
        while name_start > 0 and text[name_start - 1] in _TCHARS:
            name_start -= 1
        if name_start == name_end:
            raise _Unusable(UNPARSEABLE, "parameter without a name")
        name = text[name_start:name_end].lower()
        if name in params:
            raise _Unusable(UNPARSEABLE, f"parameter {name}= twice in one element")
        params[name] = value
        i = name_start
        while i > 0 and text[i - 1] in _OWS:
            i -= 1
        if i == 0:
            return params, -1
        if text[i - 1] == ";":
            i -= 1
            continue
        if text[i - 1] == ",":
            return params, i - 1
        raise _Unusable(UNPARSEABLE, f"unexpected {text[i - 1]!r} between parameters")


def _nodes_before(text: str, end: int, limit: int, truncated: bool) -> list[str]:
    """The for= values of the elements left of ``end``, right to left, as far as they read (for the chain)."""
    nodes: list[str] = []
    while end > 0 and len(nodes) < limit:
        try:
            params, start = _element_before(text, end)
        except _Unusable:
            break
        if start < 0 and truncated:
            break
        nodes.append(params.get("for", ""))
        if start < 0:
            break
        end = start
    return nodes
