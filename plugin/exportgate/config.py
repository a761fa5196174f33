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
# Variables that share the prefix but are not settings: the config path itself, and the demo's (`make run`).
ENV_NOT_SETTINGS = {"EXPORTGATE_CONFIG", "EXPORTGATE_DEMO_PORT", "EXPORTGATE_DEMO_DIR"}


def bind_addresses(text: str) -> list[str]:
    """The addresses of ``serve.bind`` / ``--bind`` (comma-separated), each checked; ``ValueError`` says what is
    wrong. gunicorn reads an empty entry as 0.0.0.0:8000 (every interface), so one is refused, not skipped."""
    entries = [entry.strip() for entry in text.split(",")]
    for entry in entries:
        if not entry:
            raise ValueError(f"bind {text!r} has an empty address (gunicorn would listen on 0.0.0.0:8000)")
        if entry.startswith("unix:"):
            if not entry[len("unix:"):]:
                raise ValueError(f"bind {entry!r}: no socket path after unix:")
            continue
        if entry.startswith("fd://"):
            if not (entry[len("fd://"):].isascii() and entry[len("fd://"):].isdigit()):
                raise ValueError(f"bind {entry!r}: fd:// takes a file descriptor number")
            continue
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            if rest and not rest.startswith(":"):
                raise ValueError(f"bind {entry!r}: expected [IPv6]:port")
            port = rest[1:] if rest else None
        elif entry.count(":") > 1:
            raise ValueError(f"bind {entry!r}: write an IPv6 address in brackets, e.g. [::1]:8451")
        else:
            host, _, port_text = entry.partition(":")
            port = port_text if ":" in entry else None
        if not host:
            raise ValueError(f"bind {entry!r}: no host (write 0.0.0.0:PORT to listen on every interface)")
        if port is None:
            # gunicorn would listen on its own default, 8000, where neither the docs nor the front end look.
            raise ValueError(f"bind {entry!r}: no port (e.g. {entry}:8451)")
        if not (port.isascii() and port.isdigit() and int(port) <= 65535):
            raise ValueError(f"bind {entry!r}: the port must be a number from 0 to 65535")
    return entries


def default_records_url(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return f"sqlite://{Path(state) / 'exportgate' / 'records.db'}"


@dataclass(frozen=True, kw_only=True)
class GeoConfig:
    database: str | None = None
    """A MaxMind-format Country or City database; ``None`` uses the embedded registry data (iptocc)."""
    anonymous_ip_database: str | None = None
    overrides: Any = ()
    """``{network, country, subdivision?}`` entries (or a mapping network -> country) checked before any
    database; passed to :class:`exportgate.geo.Overrides` as written, so its errors keep their file:line."""
    max_age_days: int | None = 35
    """A database older than this is stale (a warning; health checks report it); ``None`` (``null``): no limit."""


SERVE_MODES = ("forward-auth", "proxy", "static")
DEFAULT_BIND = "127.0.0.1:8451"
DEFAULT_ADMIN_FROM = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "unix")
"""Who may read ``/readyz`` and ``/metrics`` unless ``serve.admin_from`` says otherwise: loopback, private networks
and a unix socket's peer (where probes and Prometheus usually are), not the internet a proxy or static gate faces."""


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """How ``exportgate serve`` runs (every key also a ``serve`` command-line option)."""

    bind: str = DEFAULT_BIND
    mode: str = "forward-auth"
    """``forward-auth`` (behind nginx/Traefik/Caddy/Envoy), ``proxy`` (in front of an upstream) or ``static``."""
    upstream: str | None = None
    """Proxy mode: the mirror to forward allowed downloads to, e.g. ``http://127.0.0.1:8080``."""
    root: str | None = None
    """Static mode: the directory to serve."""
    trust_proxy: tuple[str, ...] = ()
    """CIDRs of proxies whose client-address headers are believed; empty = only the TCP peer counts."""
    admin_from: tuple[str, ...] = DEFAULT_ADMIN_FROM
    """CIDRs (and ``unix``) of the clients, located as for a decision, that may read ``/readyz`` and ``/metrics``.
    Anyone else asking those paths gets what the mode serves there: the mirror's file in proxy and static modes."""
    forwarded_header: str = "x-forwarded-for"
    """``x-forwarded-for`` or ``forwarded`` (RFC 7239): which header trusted proxies set."""
    workers: int = 2
    threads: int = 16
    """Threads per gunicorn worker in proxy and static modes: concurrent requests share one group commit of their
    decision records. Forward auth needs none: its worker's event loop keeps every request."""
    fail_open: bool = False
    """Serve downloads when the record store cannot commit (logged and counted). Default: refuse (503)."""
    block_status: str = "auto"
    """Forward-auth status for a block: ``auto`` (403 for nginx ``X-Original-URI``, else 451), ``451`` or ``403``."""
    gated: tuple[str, ...] = ()
    """Proxy/static modes: path globs that are downloads to decide on; empty = every path. Index pages and
    metadata outside them are served without a decision."""
    upstream_timeout: float = 30.0
    """Proxy mode: connect and read timeout in seconds."""
    server: str = "auto"
    """``auto`` (gunicorn), ``gunicorn`` or ``granian``. gunicorn runs forward auth on the gate's event-loop worker
    and proxy and static modes on threads; granian serves forward auth only (it gives no raw request target, which
    the other modes need to refuse ``%2F``). See :mod:`exportgate.serve`."""


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
    contact: str | None = None
    """Contact for questions and appeals, shown on the 451 page."""
    policy_url: str | None = None
    """URL of the operator's policy page, sent as ``Link: <…>; rel="blocked-by"`` (RFC 7725)."""
    serve: ServeConfig = field(default_factory=ServeConfig)


_TOP_KEYS = {"instance", "operator", "geo", "catalog", "policies", "policy_settings", "records", "record_log",
             "case_insensitive_paths", "contact", "policy_url", "serve"}
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
            # Emptied by a failed deploy, or every line commented out: read as the embedded defaults it would drop
            # trust_proxy, the manifest and the operator's packs, and a reload would put that in force.
            raise ConfigError("the config file has no settings (empty, or every line a comment): write them, or "
                              "give no config file to run on the embedded defaults", file=str(path))
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
        copy.key_sources = dict(value.key_sources)
        return copy
    return yamlfile.Mapping(value if isinstance(value, dict) else {})


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
        target.key_lines.pop(keys[-1], None)
        target.key_sources[keys[-1]] = f"the environment variable {name}"
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
        if overrides is not None and not isinstance(overrides, (dict, list)):
            raise g.error("overrides", "geo: overrides must be a list of {network, country} or a mapping "
                                       "network -> country")
        max_age = g.int("max_age_days", required=False, minimum=1)
        if max_age is None and not g.has("max_age_days"):
            max_age = GeoConfig.max_age_days  # left out: the default; written `null`: no limit (geodata/README)
        geo = GeoConfig(database=path_of(g.str("database", required=False)),
                        anonymous_ip_database=path_of(g.str("anonymous_ip_database", required=False)),
                        overrides=overrides if overrides is not None else (), max_age_days=max_age)
        g.done()
    for name, meaning in (("policies", "the shipped packs"), ("catalog", "no manifest")):
        # Left out, the default; set to nothing (a template's emptied list, an empty environment variable), an
        # error: an operator's own packs, and the jurisdictions only they restrict, must not vanish silently.
        if f.has(name) and f.raw(name) in (None, "", []):
            raise f.error(name, f"config: {name} is empty: name what to read, or leave {name} out for {meaning}")
    policies = f.list("policies", required=False) or []
    for i, p in enumerate(policies):
        if not isinstance(p, str):
            raise f.error("policies", f"config: policies[{i}] must be a file or directory path, got {p!r}")
    settings = f.mapping("policy_settings", required=False) or {}
    for k, v in settings.items():
        if not isinstance(v, str):
            where = yamlfile.Fields(settings, file=file, what="policy_settings")
            raise where.error(k, f"config: policy_settings.{k} must be text, got {v!r} (quote it: YAML reads "
                                 "no, off, yes and on as true/false)")
    records = f.str("records", required=False) or default_records_url(env)
    if records.startswith("sqlite:") and not records.startswith(("sqlite://", "sqlite::memory:")):
        # sqlite:relative/path.db is relative to the config file, like every other path in it.
        records = f"sqlite://{path_of(records[len('sqlite:'):])}"
    record_log = f.str("record_log", required=False)
    serve = _parse_serve(f.mapping("serve", required=False), file=file, path_of=path_of)
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
        contact=f.str("contact", required=False),
        policy_url=_policy_url(f),
        serve=serve,
    )
    f.done()
    return config


def _policy_url(f: yamlfile.Fields) -> str | None:
    """The ``Link: <…>; rel="blocked-by"`` target of every 451: an http(s) URL that cannot break out of the ``<>``
    (a CR or LF would make every block answer fail; ``>`` or ``,`` would add links of its own)."""
    url = f.str("policy_url", required=False)
    if url is None:
        return None
    if not url.startswith(("https://", "http://", "/")) or any(c in url for c in '<>", ') \
            or not url.isprintable() or not url.isascii():
        raise f.error("policy_url", f"config: policy_url must be an http(s) URL or a path without spaces, quotes, "
                                    f"<, > or commas (percent-encode them), got {url!r}")
    return url


def _parse_serve(raw: Any, *, file: str, path_of: Any) -> ServeConfig:
    if raw is None:
        return ServeConfig()
    s = yamlfile.Fields(raw, file=file, what="serve")
    defaults = ServeConfig()
    trust = s.list("trust_proxy", required=False) or []
    admin_from = s.list("admin_from", required=False)
    gated = s.list("gated", required=False) or []
    timeout = s.raw("upstream_timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise s.error("upstream_timeout", f"serve: upstream_timeout must be a positive number of seconds, "
                                          f"got {timeout!r}")
    bind = s.str("bind", required=False)
    if bind is not None:
        try:
            bind_addresses(bind)
        except ValueError as exc:
            raise s.error("bind", f"serve: {exc}") from None
    serve = ServeConfig(
        bind=bind or defaults.bind,
        mode=s.str("mode", required=False, choices=SERVE_MODES) or defaults.mode,
        upstream=s.str("upstream", required=False),
        root=path_of(s.str("root", required=False)),
        trust_proxy=yamlfile.Located.of(trust),
        admin_from=defaults.admin_from if admin_from is None else yamlfile.Located.of(admin_from),
        forwarded_header=s.str("forwarded_header", required=False, choices=("x-forwarded-for", "forwarded"))
        or defaults.forwarded_header,
        workers=s.int("workers", required=False, minimum=1) or defaults.workers,
        threads=s.int("threads", required=False, minimum=1) or defaults.threads,
        fail_open=bool(s.bool("fail_open", required=False)),
        block_status=str(s.str("block_status", required=False, choices=("auto", "451", "403"))
                         or defaults.block_status),
        gated=yamlfile.Located.of(gated),
        upstream_timeout=float(timeout) if timeout is not None else defaults.upstream_timeout,
        server=s.str("server", required=False, choices=("auto", "gunicorn", "granian")) or defaults.server,
    )
    s.done()
    return serve
