"""What every worker builds from ``config.serve`` (trusted proxies, gated globs, the mode's upstream or root),
checked once: by the server's master at start and at each reload, so that a typo in gate.yaml never leaves
workers that cannot start, and by ``exportgate check``.

Imported by the master before ``PROMETHEUS_MULTIPROC_DIR`` is set: nothing here may import prometheus_client
(:mod:`exportgate.web.app` does; prometheus_client reads that variable once, when first imported).
"""

from __future__ import annotations

from typing import Any

from ..config import GateConfig
from ..errors import ConfigError, ConfigErrors
from .clientaddr import Networks, TrustedProxies
from .middleware import compile_gated
from .proxy import checked_upstream
from .static import checked_root


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
    if serve.mode == "proxy":
        if serve.upstream:
            collect(checked_upstream, serve.upstream, serve.upstream_timeout)
        else:
            errors.append(ConfigError("proxy mode needs --upstream URL (or serve.upstream in the config)",
                                      file=config.file))
    elif serve.mode == "static":
        if serve.root:
            collect(checked_root, serve.root)
        else:
            errors.append(ConfigError("static mode needs --root DIR (or serve.root in the config)", file=config.file))
    if errors:
        raise ConfigErrors(errors)


__all__ = ["check_serving"]
