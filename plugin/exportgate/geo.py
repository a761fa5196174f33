"""Locate a client address: country (and subdivision where the data has it), with its source.

:func:`build_locator` makes what the gate uses, a :class:`GateLocator`: it normalises the address
once (:mod:`exportgate.address`), consults static :class:`Overrides` (:mod:`exportgate.overrides`),
answers special ranges (private, loopback, …) as unknown with their reason, asks the database — a
MaxMind-format file through :class:`MaxMindLocator`, or the embedded registry data
(:class:`EmbeddedLocator`, the ``iptocc`` package) when none is configured — adds anonymiser flags
from an :class:`AnonymousIPDatabase`, and caches the final :class:`~exportgate.location.Location`
per raw address text. ``locate`` never raises for bad input: an unparseable address is
``unknown("unparseable")``, and a lookup that fails is an unknown that says so (logged).

Databases are opened once, checked when opened (missing, truncated, corrupt or of the wrong type is
a :class:`~exportgate.errors.GeoDatabaseError` naming the file) and reloaded when geoipupdate
renames a new file over the old one (:mod:`exportgate.mmdbfile`); a broken new file leaves the old
one answering, and says so in the log and in ``describe()``. Every name the gate and its tests use
is importable from here; the parts live in :mod:`exportgate.sources` (source contract, embedded
default), :mod:`exportgate.maxmind` and :mod:`exportgate.mmdbfile` (MaxMind-format files) and
:mod:`exportgate.overrides`.

Caveat: geolocation is an estimate. The embedded default says where a network is *registered*,
which for mobile, satellite, VPN and multinational networks is often not where the user is; a
database past its staleness limit is still used (the gate must keep serving) but is flagged.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, Protocol, Self, runtime_checkable

from .address import MAX_LENGTH, normalise, special_reason
from .errors import AddressError, ConfigError, GeoDatabaseError
from .location import LOOKUP_FAILED, Location, unknown
from .maxmind import (
    ANONYMOUS_IP_DATABASE_TYPES,
    COUNTRY_DATABASE_TYPES,
    AnonymousIPDatabase,
    MaxMindLocator,
)
from .mmdbfile import DatabaseFile
from .overrides import Overrides
from .sources import SPECIAL_SOURCE, EmbeddedLocator
from .sources import UNPARSEABLE_LOCATION as _UNPARSEABLE

__all__ = [
    "ANONYMOUS_IP_DATABASE_TYPES",
    "COUNTRY_DATABASE_TYPES",
    "SPECIAL_SOURCE",
    "AnonymousIPDatabase",
    "EmbeddedLocator",
    "GateLocator",
    "Locator",
    "MaxMindLocator",
    "Overrides",
    "build_locator",
]

log = logging.getLogger("exportgate.geo")

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
        self._files: tuple[DatabaseFile, ...] = tuple(
            s for s in (source, anonymous_ip) if isinstance(s, DatabaseFile)
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
        before = self._current_generations()
        location = self._resolve(address)
        if type(address) is not str or len(address) > MAX_LENGTH:
            # Junk this long (or not text at all) is not kept: it would let a client fill memory.
            # lru_cache keeps no result when the call raises.
            raise _Uncached(location)
        if self._current_generations() != before:
            # A database was swapped in while this lookup ran (another thread's check): the answer may be the old
            # database's, and the cache was cleared for the new one. Kept, it would outlive the reload.
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
