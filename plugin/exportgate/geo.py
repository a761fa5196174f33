"""Locate a client address: country (and subdivision where the data has it), with its source.

:func:`build_locator` makes what the gate uses: it normalises the address once
(:mod:`exportgate.address`), consults static :class:`Overrides`, answers special ranges (private,
loopback, …) as unknown with their reason, asks the database — a MaxMind-format file through
:class:`MaxMindLocator`, or the embedded registry data (:class:`EmbeddedLocator`, the ``iptocc``
package) when none is configured — adds anonymiser flags from an :class:`AnonymousIPDatabase`, and
caches the final :class:`~exportgate.location.Location` per raw address text. ``locate`` never
raises for bad input: an unparseable address is ``unknown("unparseable")``.

Databases are opened once, checked when opened (missing, truncated, corrupt or of the wrong type is
a :class:`~exportgate.errors.GeoDatabaseError` naming the file) and reloaded when geoipupdate
renames a new file over the old one; a broken new file leaves the old one answering, and says so in
the log and in ``describe()``.

Caveat: geolocation is an estimate. The embedded default says where a network is *registered*,
which for mobile, satellite, VPN and multinational networks is often not where the user is; a
database past its staleness limit is still used (the gate must keep serving) but is flagged.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from importlib import metadata
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any, Protocol, Self, runtime_checkable

from . import iso3166, yamlfile
from .address import MAX_LENGTH, ClientAddress, normalise, special_reason
from .errors import AddressError, ConfigError, GeoDatabaseError
from .location import LOOKUP_FAILED, NO_COUNTRY, NOT_FOUND, UNPARSEABLE, Location, unknown

log = logging.getLogger("exportgate.geo")

SPECIAL_SOURCE = "special-purpose address"
"""``Location.source`` of the unknowns answered from the address alone (private, loopback, …)."""

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
# Addresses looked up when a file is opened, so a file whose data section is broken is refused
# then rather than failing request after request.
_PROBES_V4 = ("8.8.8.8", "2.176.0.1", "81.2.69.142")
_PROBES_V6 = ("2001:4860:4860::8888", "2a01:5ec0::1")
_NETWORK_CACHE_SIZE = 65536
_UNPARSEABLE = unknown(UNPARSEABLE)  # one shared value: junk is common and Location() is not free
_DAY = 86400.0
_monotonic = time.monotonic


@runtime_checkable
class Locator(Protocol):
    """What the gate asks where a client is."""

    def locate(self, address: str) -> Location:
        """Locate one raw client address; never raises for bad input."""
        ...

    def describe(self) -> dict[str, object]:
        """Source, database type, build date, age, staleness, path, last reload error."""
        ...


class _Source(Protocol):
    def lookup(self, client: ClientAddress) -> Location: ...

    def describe(self) -> dict[str, object]: ...


def _locate(source: _Source, address: str) -> Location:
    try:
        client = normalise(address)
    except AddressError:
        return _UNPARSEABLE
    reason = special_reason(client.ip)
    if reason is not None:
        return unknown(reason, address=client.address, source=SPECIAL_SOURCE, form=client.form)
    return source.lookup(client)


def _is_country_code(code: object) -> bool:
    return (
        isinstance(code, str)
        and len(code) == 2
        and code.isascii()
        and code.isalpha()
        and code.isupper()
    )


def _is_subdivision_code(code: object) -> bool:
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
        return _locate(self, address)

    def lookup(self, client: ClientAddress) -> Location:
        """Locate an already normalised, global address."""
        address = client.address
        try:
            code = self._country_code(address)
        except Exception:  # fail closed on anything the extension raises
            log.exception("iptocc failed to look up %s", address)
            return unknown(LOOKUP_FAILED, address=address, source=self.source, form=client.form)
        # "ZZ" is what registry files use for "unassigned"; anything not a code is not an answer.
        if not _is_country_code(code) or code == "ZZ":
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


class _Loaded:
    """One opened file: its reader, metadata and the caches that belong to that build only."""

    __slots__ = (
        "built",
        "entries",
        "metadata",
        "reader",
        "signature",
        "source",
        "tables",
        "warned_stale",
    )

    def __init__(self, reader: Any, signature: tuple[int, ...]) -> None:
        self.reader = reader
        self.metadata = reader.metadata()
        self.signature = signature
        self.built = dt.datetime.fromtimestamp(self.metadata.build_epoch, dt.UTC)
        self.source = f"{self.metadata.database_type} {self.built:%Y-%m-%d}"
        # Per IP version: [(shift, {address >> shift: entry})], one dict per prefix length seen.
        self.tables: dict[int, list[tuple[int, dict[int, Any]]]] = {4: [], 6: []}
        self.entries = 0
        self.warned_stale = False

    def cached(self, version: int, value: int) -> Any:
        for shift, table in self.tables[version]:
            entry = table.get(value >> shift)
            if entry is not None:
                return entry
        return None

    def remember(self, version: int, value: int, prefix_len: int, entry: Any) -> None:
        # Networks of one tree never overlap, so an address is in at most one cached network and
        # the order the prefix lengths are probed in does not matter.
        if self.entries >= _NETWORK_CACHE_SIZE:
            self.tables = {4: [], 6: []}
            self.entries = 0
        shift = (32 if version == 4 else 128) - prefix_len
        _table_for(self.tables[version], shift)[value >> shift] = entry
        self.entries += 1


def _table_for(rows: list[tuple[int, dict[int, Any]]], shift: int) -> dict[int, Any]:
    """The table of ``rows`` for one prefix length (as a shift), created when first needed."""
    for row_shift, table in rows:
        if row_shift == shift:
            return table
    table = {}
    rows.append((shift, table))
    return table


def _signature(path: str) -> tuple[int, ...]:
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _DatabaseFile:
    """A MaxMind-format file that is opened once, validated, and reloaded when it is replaced."""

    accepted_types: tuple[str, ...] = ()
    expected: str = ""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_age_days: int | None = 35,
        check_interval: float = 5.0,
    ) -> None:
        self.path = os.fspath(path)
        self.max_age_days = max_age_days
        self.check_interval = check_interval
        self.generation = 0
        """Incremented each time a new file is put in use (callers clear their caches)."""
        self.last_reload_error: str | None = None
        self._failed: object = None
        self._lock = threading.Lock()
        self._loaded = self._open()
        self._next_check = _monotonic() + check_interval
        self._warn_if_stale(self._loaded)

    def _open(self) -> _Loaded:
        import maxminddb

        path = self.path
        try:
            signature = _signature(path)
        except FileNotFoundError:
            raise GeoDatabaseError(path, "file not found") from None
        except IsADirectoryError:
            raise GeoDatabaseError(path, "is a directory, expected a .mmdb file") from None
        except OSError as exc:
            raise GeoDatabaseError(path, f"cannot read: {exc.strerror or exc}") from None
        if signature[2] == 0:
            raise GeoDatabaseError(path, "empty file (an interrupted download?)")
        try:
            reader = maxminddb.open_database(path)
        except maxminddb.InvalidDatabaseError as exc:
            raise GeoDatabaseError(
                path, f"not a valid MaxMind DB file, truncated or corrupt ({exc})"
            ) from None
        except OSError as exc:
            raise GeoDatabaseError(path, f"cannot read: {exc.strerror or exc}") from None
        except Exception as exc:  # the reader raises ValueError, TypeError… on junk
            raise GeoDatabaseError(path, f"not a valid MaxMind DB file ({exc})") from None
        try:
            loaded = _Loaded(reader, signature)
            database_type = loaded.metadata.database_type
            if not any(kind in database_type for kind in self.accepted_types):
                raise GeoDatabaseError(
                    path, f"database type {database_type!r} is not {self.expected}"
                )
            probes = _PROBES_V4 + (_PROBES_V6 if loaded.metadata.ip_version == 6 else ())
            for probe in probes:
                try:
                    reader.get_with_prefix_len(probe)
                except Exception as exc:  # fail closed
                    raise GeoDatabaseError(
                        path, f"corrupt: looking up {probe} failed ({exc})"
                    ) from None
        except GeoDatabaseError:
            reader.close()
            raise
        except Exception as exc:  # metadata of the wrong shape
            reader.close()
            raise GeoDatabaseError(path, f"not a valid MaxMind DB file ({exc})") from None
        return loaded

    @property
    def source(self) -> str:
        """``"GeoLite2-City 2026-11-24"``: database type and build date of the file in use."""
        return self._loaded.source

    def check_for_update(self) -> bool:
        """Reload if the file changed, at most once per ``check_interval``; True if reloaded."""
        now = _monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.check_interval
        return self._refresh(force=False)

    def reload(self) -> bool:
        """Reopen the file now; True if a new file is in use, False if broken (old one kept)."""
        return self._refresh(force=True)

    def _refresh(self, *, force: bool) -> bool:
        if not self._lock.acquire(blocking=force):
            return False  # another thread is reloading it right now
        try:
            current = self._loaded
            try:
                signature: tuple[int, ...] | None = _signature(self.path)
            except OSError:
                signature = None  # _open says why
            if not force:
                if signature == current.signature:
                    self._warn_if_stale(current)
                    return False
                if signature is not None and signature == self._failed:
                    return False  # the same broken file as last time: already said so
            try:
                loaded = self._open()
            except GeoDatabaseError as exc:
                failure = signature if signature is not None else str(exc)
                self.last_reload_error = str(exc)
                if force or failure != self._failed:
                    log.error("cannot reload %s; still answering from %s", exc, current.source)
                self._failed = failure
                return False
            self._loaded = loaded
            self.generation += 1
            self.last_reload_error = None
            self._failed = None
            log.info("%s: now answering from %s", self.path, loaded.source)
            self._warn_if_stale(loaded)
            return True
        finally:
            self._lock.release()

    def _age_days(self, loaded: _Loaded) -> float:
        return (time.time() - float(loaded.metadata.build_epoch)) / _DAY

    def _is_stale(self, loaded: _Loaded) -> bool:
        return self.max_age_days is not None and self._age_days(loaded) > self.max_age_days

    def _warn_if_stale(self, loaded: _Loaded) -> None:
        if not loaded.warned_stale and self._is_stale(loaded):
            loaded.warned_stale = True
            log.warning(
                "%s: %s is %d days old, past the limit of %d days; update it (geoipupdate)",
                self.path,
                loaded.source,
                self._age_days(loaded),
                self.max_age_days,
            )

    def describe(self) -> dict[str, object]:
        loaded = self._loaded
        self._warn_if_stale(loaded)
        return {
            "source": loaded.source,
            "database_type": loaded.metadata.database_type,
            "build_date": loaded.built.date().isoformat(),
            "age_days": int(self._age_days(loaded)),
            "max_age_days": self.max_age_days,
            "stale": self._is_stale(loaded),
            "path": self.path,
            "last_reload_error": self.last_reload_error,
        }

    def close(self) -> None:
        """Release the file. Only at shutdown: a lookup still running on it would fail."""
        self._loaded.reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MaxMindLocator(_DatabaseFile):
    """A MaxMind-format Country or City database: GeoLite2, GeoIP2, DB-IP Lite and the like.

    Only what the decision needs is read from a record (country, first subdivision, registered and
    represented country), once per database network: decoding a full City record costs ~10 µs.
    """

    accepted_types = COUNTRY_DATABASE_TYPES
    expected = "a Country or City database (GeoLite2-Country, GeoIP2-City, DBIP-Country-Lite…)"

    def locate(self, address: str) -> Location:
        self.check_for_update()
        return _locate(self, address)

    def lookup(self, client: ClientAddress) -> Location:
        """Locate an already normalised, global address."""
        loaded = self._loaded
        ip = client.ip
        version = ip.version
        value = int(ip)
        entry = loaded.cached(version, value)
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
    if country is not None:
        subdivisions = record.get("subdivisions")
        if isinstance(subdivisions, list) and subdivisions and isinstance(subdivisions[0], dict):
            code = subdivisions[0].get("iso_code")
            if _is_subdivision_code(code):
                subdivision = f"{country}-{code}"
    return (
        None if country is not None else NO_COUNTRY,
        country,
        subdivision,
        _iso_code(record.get("registered_country")),
        _iso_code(record.get("represented_country")),
        network,
    )


def _iso_code(part: object) -> str | None:
    if isinstance(part, dict):
        code = part.get("iso_code")
        if isinstance(code, str) and _is_country_code(code):
            return code
    return None


class AnonymousIPDatabase(_DatabaseFile):
    """A GeoIP2-Anonymous-IP (or Anonymous-Plus) database: VPN, proxy, hosting and Tor flags.

    A failed lookup gives no flags (and is logged): flags add to a location, never replace it.
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
        except Exception as exc:  # fail closed
            log.error("%s: looking up %s failed: %s", self.path, address, exc)
            return frozenset()
        if not isinstance(record, dict):
            return frozenset()
        return frozenset(flag for key, flag in _ANONYMIZER_KEYS if record.get(key))


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
        # Per IP version: [(shift, {network >> shift: (country, subdivision, network)})].
        self._tables: dict[int, list[tuple[int, dict[int, Any]]]] = {4: [], 6: []}
        if isinstance(entries, Mapping):
            for key, value in entries.items():
                line = entries.line_of(key) if isinstance(entries, yamlfile.Mapping) else None
                if isinstance(value, Mapping):
                    self._add_entry(value, f"override {key}", network=key, line=line)
                else:
                    self._add(key, value, None, file=self.file, line=line)
        else:
            for index, item in enumerate(entries):
                line = entries.line_of(index) if isinstance(entries, yamlfile.Sequence) else None
                self._add_entry(item, f"override #{index + 1}", line=line)
        for rows in self._tables.values():
            rows.sort(key=lambda row: row[0])  # most specific (smallest shift) first

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
                raise error(
                    f"subdivision must be an ISO 3166-2 code like {country}-43, got {subdivision!r}"
                )
            if not subdivision.startswith(country + "-"):
                raise error(f"subdivision {subdivision} is not in {country}")
        if network in self.networks:
            raise error(f"network {network} is listed twice")
        self.networks[network] = (country, subdivision)
        shift = network.max_prefixlen - network.prefixlen
        table = _table_for(self._tables[network.version], shift)
        table[int(network.network_address) >> shift] = (country, subdivision, str(network))

    def __len__(self) -> int:
        return len(self.networks)

    def lookup(self, client: ClientAddress) -> Location | None:
        """The override covering ``client`` (most specific first), or None."""
        value = int(client.ip)
        for shift, table in self._tables[client.ip.version]:
            entry = table.get(value >> shift)
            if entry is not None:
                country, subdivision, network = entry
                return Location(
                    address=client.address,
                    country=country,
                    subdivision=subdivision,
                    source=f"override {network}",
                    form=client.form,
                    network=network,
                )
        return None


class _Uncached(Exception):
    """Carries a result out of the cached call without it being cached."""

    def __init__(self, location: Location) -> None:
        self.location = location


class GateLocator:
    """What :func:`build_locator` returns: overrides, special ranges, database, flags, and a cache.

    ``locate`` on a cached address is one cache lookup plus a clock read (no clock read when no
    database file can change under it); a miss costs a normalisation and a database lookup. The
    cache is keyed by the raw address text, bounded (least recently used entries go first), holds
    no text longer than an address can be, and is cleared whenever a database file is reloaded.
    """

    def __init__(
        self,
        source: EmbeddedLocator | MaxMindLocator,
        *,
        overrides: Overrides | None = None,
        anonymous_ip: AnonymousIPDatabase | None = None,
        cache_size: int = 262144,
        check_interval: float = 5.0,
    ) -> None:
        self.source = source
        self.overrides = overrides if overrides is not None else Overrides()
        self.anonymous_ip = anonymous_ip
        self.check_interval = check_interval
        self._files: tuple[_DatabaseFile, ...] = tuple(
            s for s in (source, anonymous_ip) if isinstance(s, _DatabaseFile)
        )
        self._generations = self._current_generations()
        self._cached = functools.lru_cache(maxsize=cache_size)(self._resolve_cacheable)
        self._next_check = _monotonic() + check_interval
        if not self._files:
            self.locate = self._locate_unchanging  # type: ignore[method-assign]

    def _current_generations(self) -> tuple[int, ...]:
        return tuple(f.generation for f in self._files)

    def locate(self, address: str) -> Location:
        if _monotonic() >= self._next_check:
            self._check_files()
        try:
            return self._cached(address)
        except _Uncached as uncached:
            return uncached.location
        except TypeError:  # unhashable: certainly not an address
            return _UNPARSEABLE

    def _locate_unchanging(self, address: str) -> Location:
        # locate() without the clock read, for sources that are never reloaded.
        try:
            return self._cached(address)
        except _Uncached as uncached:
            return uncached.location
        except TypeError:
            return _UNPARSEABLE

    def _resolve_cacheable(self, address: str) -> Location:
        location = self._resolve(address)
        if type(address) is not str or len(address) > MAX_LENGTH:
            # Junk this long (or not text at all) is not kept: it would let a client fill memory.
            # lru_cache keeps no result when the call raises.
            raise _Uncached(location)
        return location

    def _resolve(self, address: str) -> Location:
        try:
            client = normalise(address)
        except AddressError:
            return _UNPARSEABLE
        try:
            location = self.overrides.lookup(client) if self.overrides else None
            if location is None:
                reason = special_reason(client.ip)
                if reason is not None:
                    return unknown(
                        reason, address=client.address, source=SPECIAL_SOURCE, form=client.form
                    )
                location = self.source.lookup(client)
            if self.anonymous_ip is not None:
                flags = self.anonymous_ip.flags(client.address)
                if flags:
                    location = replace(location, anonymizer=flags)
            return location
        except Exception:  # fail closed, never take the gate down
            log.exception("locating %s failed", client.address)
            return unknown(LOOKUP_FAILED, address=client.address, form=client.form)

    def _check_files(self) -> None:
        self._next_check = _monotonic() + self.check_interval
        for file in self._files:
            file.check_for_update()
        self._clear_if_reloaded()

    def _clear_if_reloaded(self) -> None:
        generations = self._current_generations()
        if generations != self._generations:
            self._generations = generations
            self._cached.cache_clear()

    def reload(self) -> bool:
        """Reopen the database files now; True if any new file is in use."""
        reloaded = False
        for file in self._files:
            reloaded = file.reload() or reloaded
        self._clear_if_reloaded()
        return reloaded

    def describe(self) -> dict[str, object]:
        info = dict(self.source.describe())
        info["overrides"] = len(self.overrides)
        info["anonymous_ip"] = (
            self.anonymous_ip.describe() if self.anonymous_ip is not None else None
        )
        cache = self._cached.cache_info()
        info["cache"] = {
            "entries": cache.currsize,
            "max_entries": cache.maxsize,
            "hits": cache.hits,
            "misses": cache.misses,
        }
        return info

    def close(self) -> None:
        for file in self._files:
            file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_locator(
    *,
    database: str | os.PathLike[str] | None = None,
    anonymous_ip_database: str | os.PathLike[str] | None = None,
    overrides: Iterable[Any] | Mapping[str, Any] | Overrides = (),
    max_age_days: int | None = 35,
    cache_size: int = 262144,
    check_interval: float = 5.0,
) -> GateLocator:
    """The locator the gate uses; raises ConfigError or GeoDatabaseError when it cannot be built."""
    if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
        raise ConfigError(f"geo cache size must be a whole number >= 0, got {cache_size!r}")
    rules = overrides if isinstance(overrides, Overrides) else Overrides(overrides)
    source: EmbeddedLocator | MaxMindLocator
    if database is None:
        source = EmbeddedLocator()
    else:
        source = MaxMindLocator(database, max_age_days=max_age_days, check_interval=check_interval)
    anonymous = None
    if anonymous_ip_database is not None:
        try:
            anonymous = AnonymousIPDatabase(
                anonymous_ip_database, max_age_days=max_age_days, check_interval=check_interval
            )
        except GeoDatabaseError:
            source.close()
            raise
    return GateLocator(
        source,
        overrides=rules,
        anonymous_ip=anonymous,
        cache_size=cache_size,
        check_interval=check_interval,
    )
