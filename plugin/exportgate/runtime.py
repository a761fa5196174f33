"""Open what a running gate needs, once, from a :class:`~exportgate.config.GateConfig`.

The geolocation reader, the manifest, the policy packs, the record store and its writer are long-lived: opened
here, reused for every request, closed by :meth:`GateRuntime.close` (or the ``with`` block). Commands that only
evaluate (``explain``, ``classify``, ``check``) open no store.

A server's master loads the manifest and the packs once (:func:`load_decision_files`) and each worker it starts
decides by that copy (:class:`DecisionFiles`): a worker started later (after a crash, at ``max_requests``)
never depends on files that were edited, or broken, since. ``SIGHUP`` loads them again, and only a set that
loads without a problem replaces the one in force (:mod:`exportgate.serve`).

Authorizations are records in the store, added and revoked by ``exportgate authorize`` in another process: a
recording runtime watches for them (:class:`AuthorizationWatch`), so a revocation reaches running workers within
:data:`AUTHORIZATION_POLL` seconds instead of at their next restart.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import catalog as catalog_mod
from . import geo
from .authorization import AuthorizationBook
from .config import GateConfig
from .errors import ConfigError, ConfigErrors, ExportGateError
from .gate import Gate
from .policy import PolicyPack, PolicySet, load_packs, shipped_pack_paths


def open_locator(config: GateConfig) -> Any:
    return geo.build_locator(
        database=config.geo.database,
        anonymous_ip_database=config.geo.anonymous_ip_database,
        overrides=config.geo.overrides,
        max_age_days=config.geo.max_age_days,
    )


def open_catalog(config: GateConfig) -> Any:
    if config.catalog is None:
        return catalog_mod.Catalog.empty()
    return catalog_mod.load_catalog(config.catalog, case_sensitive=not config.case_insensitive_paths)


def open_policies(config: GateConfig, authorizations: AuthorizationBook | None = None) -> PolicySet:
    paths: list[str | Path] = list(config.policies) or [*shipped_pack_paths()]
    return load_packs(paths, config.policy_settings, authorizations)


def open_store(config: GateConfig) -> Any:
    from .records import open_store as _open_store

    return _open_store(config.records)


log = logging.getLogger("exportgate.runtime")

AUTHORIZATION_POLL = 1.0
"""Seconds between two looks at the store's authorization and revocation records."""


def authorization_book(store: Any) -> AuthorizationBook:
    """Replay authorization and revocation entries from every chain in time order."""
    entries = [(r.kind, r.at, r.body) for kind in ("authorization", "revocation") for r in store.iter_records(kind)]
    entries.sort(key=lambda e: (e[1], e[0] == "revocation"))
    return AuthorizationBook.from_entries(entries)


def authorizations_on_file(config: GateConfig) -> AuthorizationBook | None:
    """The authorizations in the record store if it exists (:func:`existing_store`), else ``None``: for read-only
    commands, which make no store."""
    store = existing_store(config)
    if store is None:
        return None
    try:
        return authorization_book(store)
    finally:
        store.close()


@dataclass(frozen=True)
class DecisionFiles:
    """The manifest and the policy packs as loaded from their files: plain data, which a forked worker inherits."""

    catalog: Any
    packs: tuple[PolicyPack, ...]


def load_decision_files(config: GateConfig) -> DecisionFiles:
    """Load the manifest and the packs, and open and close everything else a worker opens (the geolocation data,
    the record store and its authorizations), so that a worker started from the result does not fail to start;
    :class:`~exportgate.errors.ConfigErrors` lists every problem found, each with its file and line."""
    with GateRuntime(config, record=False) as runtime:
        files = DecisionFiles(catalog=runtime.gate.catalog, packs=runtime.gate.policies.packs)
    store = open_store(config)
    try:
        PolicySet(files.packs, authorization_book(store))
    finally:
        store.close()
    return files


class GateRuntime:
    """A gate with its resources open; ``with GateRuntime(config, record=True) as rt: rt.gate.decide(...)``.

    ``files``: decide by these (loaded by the server's master) instead of reading the manifest and packs again.
    """

    def __init__(self, config: GateConfig, *, record: bool = True, clock: Any = None,
                 files: DecisionFiles | None = None) -> None:
        self.config = config
        self.store: Any = None
        self.recorder: Any = None
        self.locator: Any = None
        errors: list[ConfigError] = []
        locator = catalog = None
        try:
            locator = self.locator = open_locator(config)
        except ConfigError as exc:
            errors.append(exc)
        if files is not None:
            catalog = files.catalog
        else:
            try:
                catalog = open_catalog(config)
            except ConfigError as exc:
                errors.append(exc)
            except ConfigErrors as exc:
                errors.extend(exc.errors)
        book = None
        if record:
            from .records import JsonLinesSink, Recorder

            self.store = open_store(config)
            book = authorization_book(self.store)
            sinks = [JsonLinesSink(config.record_log)] if config.record_log else []
            self.recorder = Recorder(self.store, instance=config.instance, sinks=sinks)
        self.authorization_watch: AuthorizationWatch | None = None
        try:
            policies = PolicySet(files.packs, book) if files is not None else open_policies(config, book)
        except ConfigErrors as exc:
            errors.extend(exc.errors)
        if errors:
            self.close()
            raise ConfigErrors(errors)
        kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
        self.gate = Gate(locator=locator, catalog=catalog, policies=policies, recorder=self.recorder,
                         instance=config.instance, **kwargs)
        if self.store is not None:
            self.authorization_watch = AuthorizationWatch(self)

    def reload_authorizations(self) -> None:
        if self.store is None:
            raise ExportGateError("no record store open")
        self.gate.policies = self.gate.policies.with_authorizations(authorization_book(self.store))

    def close(self) -> None:
        watch, self.authorization_watch = getattr(self, "authorization_watch", None), None
        if watch is not None:
            watch.stop()
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.locator is not None:
            self.locator.close()
            self.locator = None

    def __enter__(self) -> GateRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def record_log_problem(record_log: str | None) -> str | None:
    """Why the gate could not append to ``record_log`` (the JSON-lines sink), or ``None``; nothing is created.
    Asked by ``exportgate check`` and before ``serve`` starts: each worker opens the sink as it starts, and one
    that cannot never starts, while the server's port is open all the same."""
    if record_log in (None, "-"):
        return None
    assert record_log is not None
    if os.path.exists(record_log):
        if os.path.isdir(record_log):
            return f"record_log {record_log} is a directory"
        if not os.access(record_log, os.W_OK):
            return f"record_log {record_log} is not writable"
        return None
    parent = os.path.dirname(record_log) or "."
    if not os.path.isdir(parent):
        return f"record_log {record_log}: {parent} is not a directory (systemd: LogsDirectory=, deploy/systemd)"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"record_log {record_log} does not exist, and {parent} is not writable: the gate could not create it"
    return None


def existing_store(config: GateConfig) -> Any:
    """The record store if it already exists (for read-only uses like ``explain`` and ``audit``), else ``None``.

    Whether it exists is asked of the file the URL names, read as :func:`open_store` reads it (a query such as
    ``?synchronous=full`` is no part of the file name). A store that exists but does not open is an error, not
    "no store": ``explain`` would drop its authorizations in silence and ``audit verify`` would call it missing.
    A store in memory never exists before it is opened.
    """
    from .records.store import store_file

    file = store_file(config.records)
    if file is None or not Path(file).exists():
        return None
    if Path(file).is_file() and Path(file).stat().st_size == 0:
        # Opening it would write an empty schema, and an empty store verifies: a store truncated to nothing would
        # pass `audit verify`.
        raise ExportGateError(f"{file}: an empty file, not a record store the gate wrote (truncated, or made by "
                              "hand and not opened by the gate yet)")
    return open_store(config)


class AuthorizationWatch:
    """Keeps a running gate's authorizations in step with its store (module docstring).

    Every :data:`AUTHORIZATION_POLL` seconds a thread lists the authorization and revocation records (a handful,
    read through the store's index of non-decision kinds) and, when the list changed, gives the gate a new book.
    A store that cannot be read keeps the book in force and says so in the log.
    """

    def __init__(self, runtime: GateRuntime, interval: float | None = None) -> None:
        self._runtime = runtime
        self._interval = AUTHORIZATION_POLL if interval is None else interval
        self._stopped = threading.Event()
        self._seen = self._listed()
        self._thread = threading.Thread(target=self._run, name="exportgate-authorizations", daemon=True)
        self._thread.start()

    def _listed(self) -> tuple[tuple[str, str, int], ...]:
        store = self._runtime.store
        return tuple((r.kind, r.chain, r.seq) for kind in ("authorization", "revocation")
                     for r in store.iter_records(kind))

    def _run(self) -> None:
        failing = False
        while not self._stopped.wait(self._interval):
            try:
                listed = self._listed()
                if listed != self._seen:
                    self._runtime.reload_authorizations()
                    self._seen = listed
                    log.info("authorizations changed in the record store: %d authorization and revocation "
                             "record(s) now in force", len(listed))
            except Exception as exc:  # noqa: BLE001 - the thread must outlive a store that is briefly unreadable
                if self._stopped.is_set():
                    return
                if not failing:
                    log.warning("cannot read the authorizations from the record store (the ones read before stay "
                                "in force): %s", exc)
                failing = True
            else:
                failing = False

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5)
