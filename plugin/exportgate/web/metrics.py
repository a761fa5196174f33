"""Prometheus metrics of a running gate: decisions by action and rule, refusals, record failures, geo age.

Under gunicorn every worker is a process; with ``PROMETHEUS_MULTIPROC_DIR`` set (``exportgate serve`` sets it to a
fresh directory) counters are shared through files and ``/metrics`` on any worker reports the sum.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("exportgate.web")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decisions = Counter("exportgate_decisions", "Downloads decided, by action (enforced), rule and mode.",
                                 ["action", "rule", "mode"], registry=r)
        self.record_failures = Counter("exportgate_record_failures",
                                       "Decisions whose record could not be committed (download refused unless "
                                       "fail_open).", registry=r)
        self.rejected = Counter("exportgate_rejected_requests",
                                "Requests refused without a decision (bad path, missing headers, geolocation "
                                "data unreadable).", ["reason"], registry=r)
        self.upstream_errors = Counter("exportgate_upstream_errors", "Proxy mode: upstream failures.", ["kind"],
                                       registry=r)
        self.record_log_failures = Counter("exportgate_record_log_failures",
                                           "Committed records that did not reach record_log (the JSON lines for log "
                                           "shippers; the store has them).", registry=r)
        multiproc = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.geo_age = Gauge("exportgate_geo_database_age_days", "Age of the geolocation data, in days.",
                             registry=r, multiprocess_mode="livemax" if multiproc else "all")
        self.geo_stale = Gauge("exportgate_geo_database_stale", "1 when the geolocation data is older than allowed.",
                               registry=r, multiprocess_mode="livemax" if multiproc else "all")
        self.geo_reload_failed = Gauge("exportgate_geo_database_reload_failed",
                                       "1 when the geolocation file on disk did not load and the data loaded before "
                                       "still answers.", registry=r,
                                       multiprocess_mode="livemax" if multiproc else "all")
        self.store_healthy = Gauge("exportgate_record_store_healthy", "1 when the last commit succeeded.",
                                   registry=r, multiprocess_mode="livemin" if multiproc else "all")
        self._decision_children: dict[tuple[str, str, str], Any] = {}

    def decided(self, decision: Any) -> None:
        self._decisions_child(self.decision_key(decision)).inc()

    @staticmethod
    def decision_key(decision: Any) -> tuple[str, str, str]:
        """The labels a decision is counted under, for :meth:`decided_many`."""
        return (decision.enforced_action, decision.rule, decision.mode)

    def decided_many(self, counts: dict[tuple[str, str, str], int]) -> None:
        """Count several decisions at once: ``{decision_key(d): how many}``."""
        for key, n in counts.items():
            self._decisions_child(key).inc(n)

    def _decisions_child(self, key: tuple[str, str, str]) -> Any:
        child = self._decision_children.get(key)
        if child is None:
            child = self._decision_children[key] = self.decisions.labels(*key)
        return child

    def record_failed(self) -> None:
        self.record_failures.inc()

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def observe_health(self, geo: dict[str, Any], recorder_healthy: bool | None) -> None:
        age = geo.get("age_days")
        # No build date (the embedded registry data): not a number, never a "fresh" 0.
        self.geo_age.set(age if isinstance(age, (int, float)) else float("nan"))
        self.geo_stale.set(1 if geo.get("stale") else 0)
        self.geo_reload_failed.set(1 if geo.get("last_reload_error") else 0)
        if recorder_healthy is not None:
            self.store_healthy.set(1 if recorder_healthy else 0)

    def exposition(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            ensure_directory()

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def reload_gauge() -> Gauge:
    """The server master's own gauge (``exportgate serve``): 0 while the files of the last ``SIGHUP`` did not load
    and the workers kept the ones they had, else 1. Only the master sets it; ``/metrics`` on any worker shows it."""
    return Gauge("exportgate_config_last_reload_successful",
                 "0 when the last SIGHUP was refused (a manifest, pack or geo database did not load), else 1.",
                 registry=CollectorRegistry(), multiprocess_mode="livemax")


def ensure_directory() -> None:
    """Make ``PROMETHEUS_MULTIPROC_DIR`` again if someone removed it (a cleaner of temporary files): without it a
    new worker could not start and ``/metrics`` would fail. What was counted in the removed one is lost."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and not os.path.isdir(directory):
        log.warning("the metrics directory %s was removed; making it again (what it counted is lost)", directory)
        os.makedirs(directory, exist_ok=True)
