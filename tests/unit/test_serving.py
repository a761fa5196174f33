"""The master's check of what every worker builds from ``config.serve`` (exportgate.web.serving)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from exportgate.errors import ConfigErrors
from exportgate.web.serving import check_serving


def test_every_problem_is_reported_at_once_with_the_config_file(gate_config: Any, tmp_path: Any) -> None:
    config = gate_config(serve={"mode": "static", "root": str(tmp_path / "missing"),
                                "trust_proxy": ["127.0.0.1/33"], "gated": ["files/**"]})
    with pytest.raises(ConfigErrors) as caught:
        check_serving(config)
    messages = [str(e) for e in caught.value.errors]
    assert len(messages) == 3, messages
    # file:line where the value has one in gate.yaml (an item of a list), the file alone otherwise.
    assert messages[0].startswith(f"{config.file}:") and messages[1].startswith(f"{config.file}:"), messages
    assert messages[2].startswith(f"{config.file}: "), messages
    assert "127.0.0.1/33" in messages[0] and "serve.gated" in messages[1] and "is not a directory" in messages[2]


def test_a_good_configuration_passes(gate_config: Any, tmp_path: Any) -> None:
    check_serving(gate_config(serve={"mode": "static", "root": str(tmp_path), "trust_proxy": ["10.0.0.0/8"]}))
    check_serving(gate_config(serve={"mode": "proxy", "upstream": "http://mirror.internal:8080/base"}))


def test_the_check_leaves_prometheus_client_unimported() -> None:
    """The master runs the check before it sets PROMETHEUS_MULTIPROC_DIR, which prometheus_client reads once, when
    first imported: imported earlier, every worker's counts stayed in its own memory and /metrics lost them."""
    code = ("import sys; import exportgate.cli; from exportgate.web.serving import check_serving; "
            "print('prometheus_client' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "False"


def test_the_gates_log_lines_join_gunicorns_log_only_where_nothing_else_is_configured() -> None:
    """With an operator's logging config (gunicorn's logconfig_dict sending everything to the root logger, say),
    taking gunicorn's error handlers over would have sent the gate's lines around it, bare."""
    import logging
    from types import SimpleNamespace

    from exportgate.serve import log_to_server_log

    gate = logging.getLogger("exportgate")
    root = logging.getLogger()
    ours = logging.StreamHandler()
    gunicorns = logging.StreamHandler()
    error_log = logging.getLogger("test.gunicorn.error")  # gunicorn's error_log is a plain logger
    error_log.handlers = [gunicorns]
    arbiter = SimpleNamespace(log=SimpleNamespace(error_log=error_log))
    saved = (gate.handlers[:], gate.propagate, gate.level, root.handlers[:])
    try:
        root.handlers = [ours]
        gate.handlers, gate.propagate = [], True
        log_to_server_log(arbiter)
        assert gate.handlers == [] and gate.propagate  # the root logger's handler gets them, as configured
        root.handlers = []
        log_to_server_log(arbiter)
        assert gate.handlers == [gunicorns] and not gate.propagate and gate.level == logging.INFO
    finally:
        gate.handlers, gate.propagate, gate.level, root.handlers = saved[0], saved[1], saved[2], saved[3]


def test_a_metrics_directory_named_but_not_made_is_made(tmp_path, monkeypatch):
    """A supervisor that sets PROMETHEUS_MULTIPROC_DIR without making it stopped the gate at start."""
    from exportgate.serve import _metrics_dir

    named = tmp_path / "run" / "metrics"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(named))
    assert _metrics_dir() is None  # not the gate's to remove at exit
    assert named.is_dir()
