"""A record that ``record()`` returned for survives SIGKILL of the process (SQLite WAL recovery).

A child process records decisions from several threads (so commits are grouped) and prints each
id only after ``record()`` returned. The parent reads some ids, kills the child with SIGKILL
mid-stream, then opens the store: every printed id must be there and every chain must verify.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from exportgate.records import SQLiteStore, verify

CHILD = textwrap.dedent(
    """
    import sys, threading
    from exportgate.records import Recorder, open_store

    store = open_store("sqlite://" + sys.argv[1])
    recorder = Recorder(store, instance="durability")
    print("chain", recorder.chain_id, flush=True)
    lock = threading.Lock()

    def work(t):
        i = 0
        while True:
            record = recorder.record(
                "decision", f"t{t}-{i}", "2026-11-29T03:04:05.000006Z",
                {"action": "allow", "thread": t, "i": i, "pad": "x" * 200},
            )
            with lock:  # one whole line per id, printed only after the commit returned
                sys.stdout.write(record.id + "\\n")
                sys.stdout.flush()
            i += 1

    for t in range(4):
        threading.Thread(target=work, args=(t,), daemon=True).start()
    threading.Event().wait()
    """
)


@pytest.mark.parametrize(
    "kill_after", [pytest.param(50, id="early"), pytest.param(1500, id="later")]
)
def test_every_acknowledged_record_survives_sigkill(tmp_path: Path, kill_after: int) -> None:
    path = tmp_path / "records.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        assert child.stdout is not None
        header = child.stdout.readline()
        assert header.startswith("chain "), header + (child.stderr.read() if child.stderr else "")
        acknowledged: list[str] = []
        deadline = time.monotonic() + 30
        while len(acknowledged) < kill_after and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line.endswith("\n"):
                break
            acknowledged.append(line[:-1])
        assert len(acknowledged) == kill_after, child.stderr.read() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        # Ids printed before the kill but not read yet are still in the pipe: they count too
        # (all but a last line without its newline, which was never acknowledged).
        acknowledged.extend(child.stdout.read().split("\n")[:-1])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    assert child.returncode == -signal.SIGKILL

    assert len(acknowledged) >= kill_after
    with SQLiteStore(str(path)) as store:
        stored = {r.id for r in store.iter_records()}
        report = verify(store)
    missing = [i for i in acknowledged if i not in stored]
    assert not missing, f"{len(missing)} acknowledged record(s) lost, e.g. {missing[:5]}"
    assert report.ok, report.problems
    assert report.records == len(stored) >= len(acknowledged)
