"""Reloading a running gate (SIGHUP, ``systemctl reload``) under each server: new data, same socket, still up.

Packs, manifest, authorizations and the geo database are re-read by fresh workers; the listening socket stays
open; metrics keep working (a worker leaving must not take the shared metrics directory with it).
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from conftest import IR_CLIENT, TEST_CATALOG, require, write_config
from serverproc import GateProcess, Response, decision_record

CRYPTO = "/files/crypto-1.tar.gz"


def nginx_auth(gate: GateProcess, uri: str) -> Response:
    return gate.get("/auth", headers={"X-Original-URI": uri, "X-Forwarded-For": IR_CLIENT})


def metrics_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("exportgate-metrics-*")}


@pytest.mark.parametrize("server", ["granian", "gunicorn"])
def test_sighup_rereads_the_manifest_without_dropping_the_socket(tmp_path: Path, server: str) -> None:
    """Release engineers retag an artifact; ``systemctl reload`` (SIGHUP) makes the running gate decide by it."""
    if server == "granian":
        require(importlib.util.find_spec("granian") is not None, "granian", "pip install 'exportgate[granian]'")
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(TEST_CATALOG.read_text(encoding="utf-8"), encoding="utf-8")
    config = write_config(tmp_path, catalog=str(catalog))
    dirs_before = metrics_dirs()
    with GateProcess(workdir=tmp_path, config=config, server=server) as process:
        assert nginx_auth(process, CRYPTO).status == 403
        # Retagged: free, public, EAR99 chat software (the pack allows it to Iran).
        text = catalog.read_text(encoding="utf-8").replace(
            '  - path: "/files/crypto-*.tar.gz"\n    class: other\n    eccn: 5D002\n    price: fee\n'
            '    publicly_available: false\n',
            '  - path: "/files/crypto-*.tar.gz"\n    class: personal-communications\n    kinds: [chat]\n'
            '    eccn: EAR99\n    price: no-cost\n    publicly_available: true\n')
        catalog.write_text(text, encoding="utf-8")
        assert process.proc is not None
        os.kill(process.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while True:
            try:
                r = nginx_auth(process, CRYPTO)
            except ConnectionRefusedError:
                raise AssertionError("the listening socket was closed during the reload") from None
            except (ConnectionResetError, http.client.RemoteDisconnected):
                # gunicorn: a connection the old worker accepted as it was told to stop is closed unanswered
                # (the front end refuses that one download); never an answer from a half-loaded gate.
                continue
            assert r.status in (200, 403)
            if r.status == 200:
                break
            assert time.monotonic() < deadline, "SIGHUP did not reload the manifest"
            time.sleep(0.2)
        record = decision_record(tmp_path / "records.db", r.header("X-Exportgate-Decision-Id") or "")
        assert record is not None and record["action"] == "allow"
        metrics = process.get("/metrics")
        assert metrics.status == 200 and b"exportgate_decisions_total" in metrics.body
    assert metrics_dirs() == dirs_before  # the gate's own metrics directory is gone with it
