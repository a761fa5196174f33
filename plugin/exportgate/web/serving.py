"""What every worker builds from ``config.serve`` (trusted proxies, gated globs, the mode's upstream or root),
checked once: by the server's master at start and at each reload, so that a typo in gate.yaml never leaves
workers that cannot start, and by ``exportgate check``.

Imported by the master before ``PROMETHEUS_MULTIPROC_DIR`` is set: nothing here may import prometheus_client
(:mod:`exportgate.web.app` does; prometheus_client reads that variable once, when first imported).
"""

from __future__ import annotations

from typing import Any

from ..config import GateConfig, ServeConfig
from ..errors import ConfigError, ConfigErrors
from .clientaddr import Networks, TrustedProxies
from .middleware import compile_gated
from .mirrorfiles import checked_root
from .proxy import checked_upstream

MODE_SETTINGS: dict[str, tuple[str, ...]] = {
    "upstream": ("proxy",),
    "threads": ("proxy", "static"),
    "block_status": ("forward-auth",),
}
"""The ``serve`` settings only some modes read, and those modes. Not ``gated`` (the WSGI middleware reads it, in
an app whatever ``serve.mode`` says) nor ``upstream_timeout`` (it also sets gunicorn's worker timeout)."""


def unused_settings(serve: ServeConfig) -> list[str]:
    """What ``serve`` sets (other than to its default) that its mode does not read, one sentence each. A gate that
    quietly ignores an upstream or a root serves something other than what its operator meant: a mode typed wrong,
    or a setting left over from another mode."""
    defaults = ServeConfig()
    return [f"serve.{name} is read in {' and '.join(modes)} mode only; this gate runs in {serve.mode} mode and "
            f"ignores it" for name, modes in MODE_SETTINGS.items()
            if serve.mode not in modes and getattr(serve, name) != getattr(defaults, name)]


def check_serving(config: GateConfig) -> None:
    """Raise :class:`ConfigErrors` with every problem of ``config.serve`` that would stop a worker's
    :func:`~exportgate.web.app.create_app`, each with the config file."""
    serve = config.serve
    errors: list[ConfigError] = []

    def collect(check: Any, *args: Any, **kwargs: Any) -> None:
        try:
            check(*args, **kwargs)
        except ConfigError as exc:
            errors.append(exc if exc.file else ConfigError(exc.message, file=config.file, line=exc.line))

    collect(TrustedProxies, serve.trust_proxy, header=serve.forwarded_header, file=config.file)
    collect(Networks, serve.admin_from, what="serve.admin_from entry", file=config.file)
    collect(compile_gated, serve.gated)
    if serve.root:  # static mode's files; in the other modes, the front end's or upstream's (symlinks followed)
        collect(checked_root, serve.root)
    if serve.mode == "proxy":
        if serve.upstream:
            collect(checked_upstream, serve.upstream, serve.upstream_timeout)
        else:
            errors.append(ConfigError("proxy mode needs --upstream URL (or serve.upstream in the config)",
                                      file=config.file))
    elif serve.mode == "static" and not serve.root:
        errors.append(ConfigError("static mode needs --root DIR (or serve.root in the config)", file=config.file))
    if errors:
        raise ConfigErrors(errors)


__all__ = ["MODE_SETTINGS", "check_serving", "unused_settings"]
