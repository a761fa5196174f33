"""A server's master and its workers (:mod:`exportgate.reloading`): the parts that need no running server (the
rest runs under real servers in tests/integration/test_serve_operations.py)."""

from __future__ import annotations

import pytest


def test_a_worker_that_cannot_start_tries_again_then_leaves_with_a_plain_exit(monkeypatch) -> None:
    """gunicorn stops altogether when a worker fails to boot (exit status 3); a worker of the gate tries again for
    a while, then exits with status 1, after which the server simply starts another."""
    from exportgate import reloading
    from exportgate.records.store import StoreOpenError

    clock = [0.0]
    monkeypatch.setattr(reloading, "_monotonic", lambda: clock[0])
    monkeypatch.setattr(reloading, "_sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    tries: list[float] = []

    def locked() -> str:
        tries.append(clock[0])
        if len(tries) < 3:
            raise StoreOpenError("records.db", "database is locked")
        return "app"

    assert reloading.start_worker(locked) == "app" and tries == [0.0, 0.5, 1.5]

    def never() -> str:
        raise StoreOpenError("records.db", "database is locked")

    clock[0] = 0.0
    with pytest.raises(SystemExit) as left:
        reloading.start_worker(never)
    assert left.value.code == 1 and clock[0] <= reloading.WORKER_START_TIMEOUT
