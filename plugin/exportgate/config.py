"""The gate's configuration: one YAML file, environment overrides, embedded defaults.

Order (later wins): embedded defaults -> the file (``--config`` or ``EXPORTGATE_CONFIG``) -> environment variables
with the ``EXPORTGATE_`` prefix, ``__`` separating nested keys (``EXPORTGATE_GEO__DATABASE=/var/lib/GeoIP/x.mmdb``,
``EXPORTGATE_POLICY_SETTINGS__CUBA_SOFTWARE=flag``); values are read as YAML scalars. No file at all means the
embedded defaults: the iptocc registry data for geolocation, the shipped policy packs, no manifest (every artifact
unclassified) and a SQLite store under ``$XDG_STATE_HOME/exportgate/``.

Relative paths in the file are relative to the file's directory, so a config works from any working directory.
An unknown key, in the file or the environment, is an error: a typo must not silently drop a setting.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import yamlfile
from .errors import ConfigError

ENV_PREFIX = "EXPORTGATE_"
ENV_NOT_SETTINGS = {"EXPORTGATE_CONFIG"}


def default_records_url(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return f"sqlite://{Path(state) / 'exportgate' / 'records.db'}"


@dataclass(frozen=True, kw_only=True)
class GeoConfig:
    database: str | None = None
    """A MaxMind-format Country or City database; ``None`` uses the embedded registry data (iptocc)."""
    anonymous_ip_database: str | None = None
    overrides: tuple[Mapping[str, Any], ...] = ()
    """``{network, country, subdivision?}`` entries checked before any database."""
    max_age_days: int = 35
    """A database older than this is stale (a warning; health checks report it)."""


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    file: str | None = None
    instance: str = field(default_factory=socket.gethostname)
    """Label of this gate in decision records (one hash chain per running instance)."""
    operator: str = "the operator of this mirror"
    """Who blocks, for the 451 page (RFC 7725: the entity implementing the block)."""
    geo: GeoConfig = field(default_factory=GeoConfig)
    catalog: str | None = None
    policies: tuple[str, ...] = ()
    """Pack files or directories; empty uses the shipped packs."""
    policy_settings: Mapping[str, str] = field(default_factory=dict)
    records: str = field(default_factory=default_records_url)
    record_log: str | None = None
    """A JSON-lines sink in addition to the store: a path, or ``-`` for stdout."""
    case_insensitive_paths: bool = False
    """Match manifest rules without regard to case (for case-insensitive origins)."""


_TOP_KEYS = {"instance", "operator", "geo", "catalog", "policies", "policy_settings", "records", "record_log",
             "case_insensitive_paths"}
_GEO_KEYS = {"database", "anonymous_ip_database", "overrides", "max_age_days"}


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> GateConfig:
    """Read the config file (if any), apply environment overrides, validate. Raises ConfigError (file:line)."""
    env = os.environ if env is None else env
    if path is None and env.get("EXPORTGATE_CONFIG"):
        path = env["EXPORTGATE_CONFIG"]
    data: dict[str, Any] = {}
    file = None
    base = Path.cwd()
    if path is not None:
        file = str(path)
        loaded = yamlfile.load(path)
        if loaded is None:
            loaded = yamlfile.Mapping()
        if not isinstance(loaded, dict):
            raise ConfigError("config must be a mapping of settings", file=file, line=getattr(loaded, "line", 1))
        data = loaded
        base = Path(path).resolve().parent
    data = _apply_env(data, env)
    return _parse(data, file=file or "<defaults>", base=base, env=env)


def _copy(value: Any) -> dict[str, Any]:
    """A shallow copy that keeps the line numbers of a :class:`yamlfile.Mapping`."""
    if isinstance(value, yamlfile.Mapping):
        copy = yamlfile.Mapping(value)
        copy.line, copy.file, copy.key_lines = value.line, value.file, dict(value.key_lines)
        return copy
    return dict(value) if isinstance(value, dict) else {}


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    merged: dict[str, Any] = _copy(data)
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in ENV_NOT_SETTINGS:
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__")]
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if keys[0] not in _TOP_KEYS:
            raise ConfigError(f"environment variable {name}: unknown setting {keys[0]!r}")
        target = merged
        for key in keys[:-1]:
            child = _copy(target.get(key))
            target[key] = child
            target = child
        target[keys[-1]] = value
    return merged


def _parse(data: dict[str, Any], *, file: str, base: Path, env: Mapping[str, str]) -> GateConfig:
    f = yamlfile.Fields(data, file=file, what="config")

    def path_of(value: str | None) -> str | None:
        if value is None:
            return None
        p = Path(os.path.expanduser(value))
        return str(p if p.is_absolute() else base / p)

    geo = GeoConfig()
    raw_geo = f.mapping("geo", required=False)
    if raw_geo is not None:
        g = yamlfile.Fields(raw_geo, file=file, what="geo")
        overrides = g.raw("overrides")
        if overrides is None:
            overrides_t: tuple[Mapping[str, Any], ...] = ()
        elif isinstance(overrides, dict):  # {"10.0.0.0/8": "US"} shorthand
            overrides_t = tuple({"network": str(k), "country": v} for k, v in overrides.items())
        elif isinstance(overrides, list):
            overrides_t = tuple(overrides)
        else:
            raise g.error("overrides", "geo: overrides must be a list of {network, country} or a mapping "
                                       "network -> country")
        max_age = g.int("max_age_days", required=False, minimum=1)
        geo = GeoConfig(database=path_of(g.str("database", required=False)),
                        anonymous_ip_database=path_of(g.str("anonymous_ip_database", required=False)),
                        overrides=overrides_t, max_age_days=max_age if max_age is not None else 35)
        g.done()
    policies = f.list("policies", required=False) or []
    for i, p in enumerate(policies):
        if not isinstance(p, str):
            raise f.error("policies", f"config: policies[{i}] must be a file or directory path, got {p!r}")
    settings = f.mapping("policy_settings", required=False) or {}
    for k, v in settings.items():
        if not isinstance(v, str):
            raise f.error("policy_settings", f"config: policy_settings.{k} must be text, got {v!r}")
    records = f.str("records", required=False) or default_records_url(env)
    if records.startswith("sqlite:") and not records.startswith("sqlite://"):
        # sqlite:relative/path.db is relative to the config file, like every other path in it.
        records = f"sqlite://{path_of(records[len('sqlite:'):])}"
    record_log = f.str("record_log", required=False)
    config = GateConfig(
        file=None if file == "<defaults>" else file,
        instance=f.str("instance", required=False) or socket.gethostname(),  # noqa: E501
        operator=f.str("operator", required=False) or "the operator of this mirror",
        geo=geo,
        catalog=path_of(f.str("catalog", required=False)),
        policies=tuple(path_of(p) or p for p in policies),
        policy_settings={str(k): str(v) for k, v in settings.items()},
        records=records,
        record_log=record_log if record_log in (None, "-") else path_of(record_log),
        case_insensitive_paths=bool(f.bool("case_insensitive_paths", required=False)),
    )
    f.done()
    return config
