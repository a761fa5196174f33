"""A running gate under each server, as ops run it: reload (SIGHUP), stop (SIGTERM), a worker killed, two workers.

* SIGHUP (``systemctl reload``): packs, manifest, authorizations and the geo database are re-read by fresh workers;
  the listening socket stays open; metrics keep working (a worker leaving must not take the shared metrics
  directory with it). A manifest, pack or geo database that does not load refuses the reload: the running
  workers go on, and the log says why with file:line.
* A worker started later (after a crash) decides by the manifest and packs the master loaded, not by files
  edited or broken since.
* SIGTERM under load: the gate stops within its grace period, and every download it said yes to has its record.
* A worker killed (OOM killer, a bug): the server starts another; the gate answers again by itself.
* The geo database written in place (``cp``, not geoipupdate's rename): no worker dies, and no decision is taken
  by half a file.
* Two workers: each writes its own chain into the one store; ``/metrics`` on either reports the sum.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import IR_CLIENT, TEST_CATALOG, TEST_OVERRIDES, require, write_config
from serverproc import (
    REPO,
    GateProcess,
    GunicornProcess,
    Response,
    decision_count,
    decision_record,
    free_port,
    request,
    wait_for_text,
    write_mirror,
)

CRYPTO = "/files/crypto-1.tar.gz"
CHAT = "/files/chat-1.tar.gz"
SERVERS = ["granian", "gunicorn"]


def workers_of(process: GateProcess) -> list[int]:
    assert process.proc is not None
    out = subprocess.run(["pgrep", "-P", str(process.proc.pid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def metric(process: GateProcess, sample: str) -> float:
    """The value of ``sample`` in ``/metrics``, summed over its labels."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(process.get("/metrics").text)
    return sum(s.value for f in families for s in f.samples if s.name == sample)


def decisions_counted(process: GateProcess) -> float:
    return metric(process, "exportgate_decisions_total")


def nginx_auth(gate: GateProcess, uri: str) -> Response:
    return gate.get("/auth", headers={"X-Original-URI": uri, "X-Forwarded-For": IR_CLIENT})


def metrics_dirs(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("exportgate-metrics-*")}


def retag_crypto_as_chat(catalog: Path) -> None:
    """A release engineer retags the crypto artifact: free, public, EAR99 chat software (allowed to Iran)."""
    text = catalog.read_text(encoding="utf-8")
    retagged = text.replace(
        '  - path: "/files/crypto-*.tar.gz"\n    class: other\n    eccn: 5D002\n    price: fee\n'
        '    publicly_available: false\n',
        '  - path: "/files/crypto-*.tar.gz"\n    class: personal-communications\n    kinds: [chat]\n'
        '    eccn: EAR99\n    price: no-cost\n    publicly_available: true\n')
    assert retagged != text
    catalog.write_text(retagged, encoding="utf-8")


def reload_until_crypto_is_allowed(process: GateProcess) -> Response:
    """SIGHUP, then ask until the gate decides by the retagged manifest; the listening socket never closes."""
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
            return r
        assert time.monotonic() < deadline, "SIGHUP did not reload the manifest"
        time.sleep(0.2)


def gate_with_own_files(tmp_path: Path, server: str) -> tuple[Any, dict[str, Path]]:
    """A gate whose manifest, pack and geo database are files of the test's own, to edit and break: under
    ``exportgate serve --server SERVER``, or (``gunicorn.conf.py``) under a gunicorn started with
    deploy/gunicorn.conf.py, which also reads gate.yaml again at a SIGHUP."""
    from exportgate.geodata import build, load_networks
    from exportgate.policy import shipped_pack_paths

    files = {"manifest": tmp_path / "catalog.yaml", "geo database": tmp_path / "Test-Country.mmdb"}
    files["manifest"].write_text(TEST_CATALOG.read_text(encoding="utf-8"), encoding="utf-8")
    packs = []
    for shipped in shipped_pack_paths():
        copy = tmp_path / shipped.name
        copy.write_text(shipped.read_text(encoding="utf-8"), encoding="utf-8")
        packs.append(str(copy))
    files["pack"] = Path(packs[0])
    build(load_networks(REPO / "geodata" / "networks.yaml"), files["geo database"], kind="Country")
    common = {"catalog": str(files["manifest"]), "policies": packs,
              "geo": {"database": str(files["geo database"]), "overrides": TEST_OVERRIDES}}
    if server != "gunicorn.conf.py":
        return GateProcess(workdir=tmp_path, config=write_config(tmp_path, **common), server=server), files
    port = free_port()
    files["gate.yaml"] = write_config(tmp_path, serve={"bind": f"127.0.0.1:{port}", "workers": 1,
                                                       "trust_proxy": ["127.0.0.1/32"]}, **common)
    files["trusted proxy"] = files["gate.yaml"]  # a typo in one of gate.yaml's values, not in its YAML
    return GunicornProcess(workdir=tmp_path / "gunicorn", config=files["gate.yaml"], port=port), files


BROKEN = {
    "manifest": b'rules:\n  - path: "/files/crypto-*.tar.gz"\n    class: [unclosed\n',
    "pack": b"id: us-2010-03-08-internet-comms\nrules: {\n",
    "geo database": b"\xab\xcd\xefMaxMind.com but cut short",
    "gate.yaml": b"serve:\n  workers: [unclosed\n",
    # Read by every new worker, which would fail to start (and gunicorn would stop the workers that ran).
    "trusted proxy": b"",  # gate.yaml with 127.0.0.1/33 for 127.0.0.1/32
}
GATE_YAML_ONLY = ("gate.yaml", "trusted proxy")


@pytest.mark.parametrize(("server", "broken"), [
    *[(server, broken) for server in SERVERS for broken in sorted(BROKEN) if broken not in GATE_YAML_ONLY],
    *[("gunicorn.conf.py", broken) for broken in sorted(BROKEN)],
])
def test_sighup_with_a_broken_file_keeps_the_running_workers(tmp_path: Path, server: str, broken: str) -> None:
    """A typo, then ``systemctl reload``: the gate goes on deciding as before and says what is wrong, with
    file:line; fixed and reloaded again, the new files are in force."""
    process, files = gate_with_own_files(tmp_path, server)
    with process:
        workers = workers_of(process)
        assert nginx_auth(process, CRYPTO).status == 403
        assert metric(process, "exportgate_config_last_reload_successful") == 1
        good = files[broken].read_bytes()
        files[broken].write_bytes(good.replace(b"127.0.0.1/32", b"127.0.0.1/33") if broken == "trusted proxy"
                                  else BROKEN[broken])
        assert process.proc is not None
        os.kill(process.proc.pid, signal.SIGHUP)
        log = wait_for_text(process.log, "reload refused", timeout=20)
        assert str(files[broken]) in log.split("reload refused", 1)[1]
        for _ in range(10):  # the workers that ran before the SIGHUP still answer, as before
            assert nginx_auth(process, CHAT).status == 200
            assert nginx_auth(process, CRYPTO).status == 403
            time.sleep(0.1)
        assert workers_of(process) == workers and process.running
        assert metric(process, "exportgate_config_last_reload_successful") == 0  # for an alert
        files[broken].write_bytes(good)
        retag_crypto_as_chat(files["manifest"])
        reload_until_crypto_is_allowed(process)
        assert metric(process, "exportgate_config_last_reload_successful") == 1


def test_sighup_with_no_pack_in_force_today_keeps_the_running_workers(tmp_path: Path) -> None:
    """The pack in force given an end date in the past: every file loads, and the reload put in force a set that
    refuses every download (503). Refused now, like a broken file."""
    process, files = gate_with_own_files(tmp_path, "gunicorn")
    current = next(Path(p) for p in yaml_policies(process.config) if "covered-regions" in p)
    with process:
        assert nginx_auth(process, CRYPTO).status == 403
        text = current.read_text(encoding="utf-8")
        current.write_text(text.replace("  until: null", "  until: 2023-01-01"), encoding="utf-8")
        assert text != current.read_text(encoding="utf-8")
        assert process.proc is not None
        os.kill(process.proc.pid, signal.SIGHUP)
        log = wait_for_text(process.log, "reload refused", timeout=20)
        assert "no policy pack is in force today" in log.split("reload refused", 1)[1]
        assert nginx_auth(process, CHAT).status == 200 and nginx_auth(process, CRYPTO).status == 403
        assert metric(process, "exportgate_config_last_reload_successful") == 0


def test_sighup_says_when_gate_yaml_changed_and_is_not_read_again(tmp_path: Path) -> None:
    """exportgate serve reads gate.yaml at start only: a trust_proxy edited, then a reload that succeeded (the
    manifest and packs reloaded), looked applied. The log now says to restart."""
    process, _ = gate_with_own_files(tmp_path, "gunicorn")
    with process:
        process.config.write_text(process.config.read_text(encoding="utf-8") + "contact: new@example.org\n",
                                  encoding="utf-8")
        assert process.proc is not None
        os.kill(process.proc.pid, signal.SIGHUP)
        log = wait_for_text(process.log, "changed since the gate started", timeout=20)
        assert f"{process.config} changed since the gate started" in log and "restart the gate" in log
        assert metric(process, "exportgate_config_last_reload_successful") == 1


def yaml_policies(config: Path) -> list[str]:
    import yaml

    return list(yaml.safe_load(config.read_text(encoding="utf-8"))["policies"])


@pytest.mark.parametrize("change", ["retagged", "broken"])
@pytest.mark.parametrize("server", SERVERS)
def test_a_worker_started_after_a_file_changed_decides_by_what_the_master_loaded(tmp_path: Path, server: str,
                                                                                 change: str) -> None:
    """A worker that replaces a dead one neither stops at a manifest broken since nor decides by one retagged
    since: every worker decides by what the master loaded, until a SIGHUP loads the files again."""
    process, files = gate_with_own_files(tmp_path, server)
    with process:
        if change == "retagged":  # edited on disk, not reloaded
            retag_crypto_as_chat(files["manifest"])
        else:
            files["manifest"].write_bytes(BROKEN["manifest"])
        (worker,) = workers_of(process)
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 30
        answered = None
        while answered is None:
            assert time.monotonic() < deadline, "no new worker answered"
            try:
                if worker not in workers_of(process):
                    answered = nginx_auth(process, CRYPTO)
            except OSError:
                pass  # between the old worker's death and the new one's start
            time.sleep(0.1)
        assert answered.status == 403, "a new worker read the manifest on disk instead of the master's"
        assert process.running


def crypto_for(process: GateProcess, client: str) -> int:
    """The status the nginx way for the 5D002 artifact asked from ``client``: 403 blocked, 200 served."""
    return process.get("/auth", headers={"X-Original-URI": CRYPTO, "X-Forwarded-For": client}).status


@pytest.mark.parametrize("server", SERVERS)
def test_a_geo_database_written_in_place_neither_kills_the_worker_nor_decides_by_half_a_file(
        tmp_path: Path, server: str) -> None:
    """``cp new.mmdb Country.mmdb`` (or ``curl -o``) under a running gate: the same file truncated and written
    again. A reader mapping that file dies of SIGBUS at its next lookup; the worker reads a private copy instead,
    goes on deciding by the old data while the file is half-written, and takes the new data once it is whole."""
    from exportgate.geodata import build

    process, files = gate_with_own_files(tmp_path, server)
    geo = files["geo database"]
    # The new data: Iran's test network is now American.
    new = build([{"network": "2.176.0.0/12", "country": "US"}, {"network": "8.8.8.0/24", "country": "US"}],
                tmp_path / "new.mmdb", kind="Country").read_bytes()
    check_interval = 5.0  # the gate's: how often a worker looks at the file
    with process:
        assert crypto_for(process, "2.176.0.1") == 403
        workers = workers_of(process)
        with open(geo, "r+b") as f:
            f.truncate(0)
            # Clients in networks not looked up yet, so each answer needs the reader: under a mapping of the file
            # itself the first of them kills the worker.
            assert crypto_for(process, "41.67.0.1") == 403  # Sudan
            f.write(new[: len(new) // 2])
            f.flush()
            time.sleep(check_interval + 0.5)  # seen, refused as half a file: the old data still decides
            assert crypto_for(process, "2.176.128.1") == 403  # Iran, in the old data
            assert crypto_for(process, "8.8.8.8") == 200
            f.write(new[len(new) // 2:])
        deadline = time.monotonic() + 3 * check_interval
        while crypto_for(process, "2.176.0.2") == 403:  # until the whole new file is in use
            assert time.monotonic() < deadline, "the file written in place was never taken"
            time.sleep(0.5)
        assert workers_of(process) == workers, "a worker died"
        assert process.running
    log = process.log.read_text(encoding="utf-8")
    assert "cannot reload" in log and str(geo) in log


@pytest.mark.parametrize("server", ["granian", "gunicorn"])
def test_sighup_rereads_the_manifest_without_dropping_the_socket(tmp_path: Path, server: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Release engineers retag an artifact; ``systemctl reload`` (SIGHUP) makes the running gate decide by it."""
    if server == "granian":
        require(importlib.util.find_spec("granian") is not None, "granian",
                "pip install -e . (granian is a dependency)")
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(TEST_CATALOG.read_text(encoding="utf-8"), encoding="utf-8")
    config = write_config(tmp_path, catalog=str(catalog))
    temporary = tmp_path / "tmp"  # where the gate makes its metrics directory (TMPDIR)
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    with GateProcess(workdir=tmp_path, config=config, server=server) as process:
        assert nginx_auth(process, CRYPTO).status == 403
        retag_crypto_as_chat(catalog)
        r = reload_until_crypto_is_allowed(process)
        record = decision_record(tmp_path / "records.db", r.header("X-Exportgate-Decision-Id") or "")
        assert record is not None and record["action"] == "allow"
        metrics = process.get("/metrics")
        assert metrics.status == 200 and b"exportgate_decisions_total" in metrics.body
        assert len(metrics_dirs(temporary)) == 1
    assert metrics_dirs(temporary) == set()  # the gate's own metrics directory is gone with it


@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_under_load_stops_and_every_yes_has_its_record(tmp_path: Path, server: str) -> None:
    process = GateProcess(workdir=tmp_path, config=write_config(tmp_path), server=server)
    process.start()
    answers: list[Response] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                r = nginx_auth(process, CHAT)
            except OSError:
                continue  # refused or reset once the gate is stopping: the front end refuses the download
            with lock:
                answers.append(r)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    assert process.proc is not None
    proc = process.proc
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == 0
    assert time.monotonic() - started < 20
    stop.set()
    for t in threads:
        t.join()
    process.proc = None
    served = [r for r in answers if r.status == 200]
    assert len(served) > 10
    for r in served:
        assert decision_record(tmp_path / "records.db", r.header("X-Exportgate-Decision-Id") or "") is not None


@pytest.mark.parametrize("server", SERVERS)
def test_a_killed_worker_is_replaced(tmp_path: Path, server: str) -> None:
    with GateProcess(workdir=tmp_path, config=write_config(tmp_path), server=server) as process:
        assert nginx_auth(process, CHAT).status == 200
        (worker,) = workers_of(process)
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            try:
                if nginx_auth(process, CHAT).status == 200 and worker not in workers_of(process):
                    break
            except OSError:
                pass  # between the old worker's death and the new one's start
            assert time.monotonic() < deadline, "no worker answered after one was killed"
            time.sleep(0.2)
        assert process.running


@pytest.mark.parametrize("server", SERVERS)
def test_two_workers_two_chains_one_sum(tmp_path: Path, server: str) -> None:
    with GateProcess(workdir=tmp_path, config=write_config(tmp_path), server=server,
                     extra_args=["--workers", "2"]) as process:
        deadline = time.monotonic() + 20
        while len(workers_of(process)) < 2:  # ready once one answers; the other may still be starting
            assert time.monotonic() < deadline, "the second worker never started"
            time.sleep(0.1)
        before = decisions_counted(process)
        answers: list[Response] = []
        lock = threading.Lock()

        def client() -> None:
            for _ in range(25):
                r = nginx_auth(process, CHAT)
                with lock:
                    answers.append(r)

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status for r in answers] == [200] * 100
        assert decisions_counted(process) == before + 100
        assert decision_count(tmp_path / "records.db") >= 100
        ids = [r.header("X-Exportgate-Decision-Id") or "" for r in answers]
        assert len(set(ids)) == 100
        # Each worker's decision ids carry its own prefix: both workers answered through the one store.
        prefixes = {i.rsplit("-", 1)[0] for i in ids}
        assert 1 <= len(prefixes) <= 2
    from exportgate.records import open_store, verify

    store = open_store(f"sqlite://{tmp_path / 'records.db'}")
    try:
        report = verify(store)
        assert report.ok, report
        assert len(store.chains()) >= len(prefixes)
    finally:
        store.close()


@pytest.mark.parametrize("hold", [3.0, 8.0], ids=["reload goes on", "reload refused"])
@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_during_a_slow_reload_still_stops_the_gate(tmp_path: Path, server: str, hold: float) -> None:
    """``systemctl restart`` while a reload is being checked: another program holds the store's write lock, so
    the master's check waits (SQLite's busy timeout is 5 s: a 3 s hold lets the reload go on, an 8 s hold refuses
    it); the SIGTERM that arrives meanwhile must still stop the gate."""
    database = tmp_path / "records.db"
    process = GateProcess(workdir=tmp_path, config=write_config(tmp_path), server=server)
    process.start()
    try:
        assert nginx_auth(process, CHAT).status == 200
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sqlite3, sys, time\n"
             "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
             "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(float(sys.argv[2]))\n"
             "c.execute('ROLLBACK')\n", str(database), str(hold)],
            stdout=subprocess.PIPE, text=True)
        with holder:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            assert process.proc is not None
            proc = process.proc
            os.kill(proc.pid, signal.SIGHUP)
            time.sleep(1.0)
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(hold + 25)
            except subprocess.TimeoutExpired:
                raise AssertionError("the gate did not stop after SIGTERM") from None
            process.proc = None
    finally:
        process.stop()


def kill_a_worker_and_wait_for_an_answer(process: GateProcess, timeout: float) -> Response:
    (worker, *_) = workers_of(process)
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while True:
        assert process.running, "the server stopped"
        try:
            if worker not in workers_of(process):
                return nginx_auth(process, CHAT)
        except OSError:
            pass  # no worker yet
        assert time.monotonic() < deadline, "no new worker answered"
        time.sleep(0.2)


@pytest.mark.parametrize("server", SERVERS)
def test_a_worker_that_cannot_open_the_store_yet_waits_instead_of_stopping_the_server(tmp_path: Path,
                                                                                      server: str) -> None:
    """Another program holds the store's write lock longer than SQLite waits (5 s) just as a worker is replaced:
    the new worker tries again until it can open the store. gunicorn would otherwise stop altogether ("worker
    failed to boot") and stay down after the lock was released."""
    database = tmp_path / "records.db"
    with GateProcess(workdir=tmp_path, config=write_config(tmp_path), server=server) as process:
        assert nginx_auth(process, CHAT).status == 200
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sqlite3, sys, time\n"
             "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
             "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(8)\n"
             "c.execute('ROLLBACK')\n", str(database)],
            stdout=subprocess.PIPE, text=True)
        with holder:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            answer = kill_a_worker_and_wait_for_an_answer(process, timeout=40)
        assert answer.status == 200
        assert decision_record(database, answer.header("X-Exportgate-Decision-Id") or "") is not None
        assert "cannot start yet" in process.log_text()


@pytest.mark.parametrize("server", SERVERS)
def test_the_metrics_directory_removed_does_not_stop_the_server(tmp_path: Path, server: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A cleaner of temporary files removes the gate's metrics directory: ``/metrics`` still answers, and the
    worker that replaces a dead one starts (gunicorn stopped altogether before)."""
    import shutil

    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    with GateProcess(workdir=tmp_path, config=write_config(tmp_path), server=server) as process:
        assert nginx_auth(process, CHAT).status == 200
        (directory,) = temporary.glob("exportgate-metrics-*")
        shutil.rmtree(directory)
        assert process.get("/metrics").status == 200
        assert kill_a_worker_and_wait_for_an_answer(process, timeout=30).status == 200
        assert process.get("/metrics").status == 200 and metric(process, "exportgate_decisions_total") >= 1
        assert "metrics directory" in process.log_text()


@pytest.mark.parametrize("server", ["gunicorn", "granian", "gunicorn.conf.py"])
def test_the_gate_logs_with_time_and_level_once_per_event(tmp_path: Path, server: str) -> None:
    """The gate's own lines reach the server's log with time and level, INFO included, from the master (a setting
    the mode ignores, said once) and from a worker (authorizations read again). Before, under
    gunicorn, only WARNING and up reached it, as bare text."""
    serve = {"upstream": "http://127.0.0.1:9", "trust_proxy": ["127.0.0.1/32"]}
    if server == "gunicorn.conf.py":
        port = free_port()
        process: Any = GunicornProcess(workdir=tmp_path / "gunicorn", port=port,
                                       config=write_config(tmp_path, serve={**serve, "bind": f"127.0.0.1:{port}"}))
    else:
        process = GateProcess(workdir=tmp_path, config=write_config(tmp_path, serve=serve), server=server)
    with process:
        assert nginx_auth(process, CHAT).status == 200
        # An authorization added from another process: the worker says, at INFO, that it read it.
        from click.testing import CliRunner

        from exportgate.cli import main

        added = CliRunner().invoke(main, ["--config", str(process.config), "authorize", "add", "--id", "T-1",
                                          "--basis", "test", "--destination", "CU", "--valid-from", "2024-01-01"],
                                   env={})
        assert added.exit_code == 0, added.output
        deadline = time.monotonic() + 15
        while "authorizations changed" not in process.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = process.log_text()
    [said] = [line for line in log.splitlines() if "serve.upstream is read in proxy mode only" in line]
    assert "[WARNING]" in said and said.startswith("[20"), said  # "[2026-12-04 16:40:00 +0000] [pid] [WARNING] ..."
    read = [line for line in log.splitlines() if "authorizations changed" in line]
    assert read, log
    assert all("[INFO]" in line and line.startswith("[20") for line in read), read


def test_a_unix_socket_is_made_under_the_gates_umask_and_serves(tmp_path: Path) -> None:
    """gunicorn made unix sockets with its own umask 0: writable by every local user, any of whom could then ask
    /auth with an X-Forwarded-For of their choosing. Now the process's umask (systemd's UMask=) applies."""
    import socket

    sock_path = tmp_path / "gate.sock"
    process = GateProcess(workdir=tmp_path, config=write_config(tmp_path), trust_proxy=("127.0.0.1/32", "unix"))
    process.extra_args = ["--bind", f"127.0.0.1:{process.port},unix:{sock_path}"]
    old = os.umask(0o077)
    try:
        process.start()
    finally:
        os.umask(old)
    try:
        assert sock_path.stat().st_mode & 0o077 == 0, oct(sock_path.stat().st_mode)
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(sock_path))
            s.sendall(b"GET /auth HTTP/1.1\r\nHost: gate\r\nX-Original-URI: " + CRYPTO.encode() +
                      b"\r\nX-Forwarded-For: " + IR_CLIENT.encode() + b"\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 403"), answer[:200]  # the trusted unix peer's client: Iran, blocked
    finally:
        process.stop()


def test_the_access_log_gives_a_static_files_length(tmp_path: Path) -> None:
    """A whole file goes out by sendfile, which gunicorn's byte count misses (0 for every download)."""
    root = write_mirror(tmp_path / "mirror")
    gate = GateProcess(workdir=tmp_path, config=write_config(tmp_path), extra_args=["--mode", "static", "--root",
                                                                                    str(root)])
    with gate:
        answer = request(gate.port, CHAT, headers={"X-Forwarded-For": IR_CLIENT})
        assert answer.status == 200
        deadline = time.monotonic() + 10
        while CHAT not in gate.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    [line] = [line for line in gate.log_text().splitlines() if f"GET {CHAT}" in line]
    assert f"length={len(answer.body)} decision=allow" in line, line


def test_an_upstream_cut_mid_body_is_one_log_line_not_a_traceback(tmp_path: Path) -> None:
    """Proxy mode aborts the client's connection when the upstream stops mid-body, and says so in one line; gunicorn
    added its own "Error handling request" with a traceback of the gate's internals to every such download."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))

    def cut_short() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)

    thread = threading.Thread(target=cut_short, daemon=True)
    thread.start()
    upstream = f"http://127.0.0.1:{listener.getsockname()[1]}"
    gate = GateProcess(workdir=tmp_path, config=write_config(tmp_path),
                       extra_args=["--mode", "proxy", "--upstream", upstream])
    try:
        with gate:
            with pytest.raises(http.client.IncompleteRead):
                request(gate.port, CHAT, headers={"X-Forwarded-For": IR_CLIENT})
            deadline = time.monotonic() + 10
            while "stopped after 10 of 1000 bytes" not in gate.log_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            log = gate.log_text()
    finally:
        listener.close()
        thread.join(5)
    assert "stopped after 10 of 1000 bytes" in log, log
    assert "Traceback" not in log and "Error handling request" not in log, log


def test_a_whole_file_cut_short_while_sent_aborts_the_connection(tmp_path: Path) -> None:
    """gunicorn sends a whole file with sendfile, which stops quietly at a truncated file's new end: the response
    then looked finished to the server, and the client, owed the rest of Content-Length, waited on the kept-alive
    connection until the keep-alive timeout (75 s). The connection is now aborted as soon as the file runs out."""
    import socket

    root = write_mirror(tmp_path / "mirror")
    big = root / "files" / "chat-big.tar.gz"
    size = 64 * 1024 * 1024
    with big.open("wb") as out:
        out.truncate(size)
    gate = GateProcess(workdir=tmp_path, config=write_config(tmp_path, serve={"gated": ["/files/chat-1.tar.gz"]}),
                       extra_args=["--mode", "static", "--root", str(root)])
    with gate, socket.create_connection(("127.0.0.1", gate.port), timeout=20) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.sendall(b"GET /files/chat-big.tar.gz HTTP/1.1\r\nHost: mirror\r\n\r\n")
        received = client.recv(64 * 1024)
        assert received.startswith(b"HTTP/1.1 200"), received[:200]
        time.sleep(0.5)  # the server's sendfile blocks on the full socket buffers
        os.truncate(big, 1024 * 1024)
        started = time.monotonic()
        while chunk := client.recv(1024 * 1024):
            received += chunk
        waited = time.monotonic() - started
    head, _, body = received.partition(b"\r\n\r\n")
    assert f"content-length: {size}".encode() in head.lower()
    assert len(body) < size and waited < 10, (len(body), waited)
    log = gate.log_text()
    assert "chat-big.tar.gz is shorter than when it was opened" in log and "Traceback" not in log, log
