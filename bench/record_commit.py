"""Micro-benchmark: committed decision records per second, Recorder (group commit) vs a baseline.

Run by hand::

    .venv/bin/python bench/record_commit.py [--threads 32 64] [--seconds 3] [--dir DIR]

Both sides write the same records (same body, same seal, same schema, same SQLite file system,
``synchronous=FULL``) in the same run:

* baseline: one thread, one ``BEGIN; INSERT; COMMIT`` per record (what a naive gate would do);
* recorder: N caller threads each calling ``Recorder.record()`` in a loop; each call returns
  only once its record is committed (group commit).

Also prints the per-record cost of the pure parts (canonical body, seal) with timeit.
Results are recorded in bench/RESULTS.md by whoever runs it; figures depend on the disk's
fsync latency and the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import timeit
from datetime import UTC, datetime

from exportgate.records import Chain, Recorder, SQLiteStore, canonical_text, format_time

BODY: dict[str, object] = {
    "action": "allow",
    "rule": "ofac-iran-general-license-d1",
    "citation": "31 CFR 560.540",
    "pack": "us-2010-03-08",
    "location": {"country": "DE", "subdivision": None, "source": "iptocc 3.3.170", "form": "plain"},
    "classification": {"tag": "EAR99", "rule": "default"},
    "artifact": "/pypi/packages/source/f/foo/foo-1.0.tar.gz",
    "authorization": None,
    "instance": "gate-1",
}
SMALL_BODY: dict[str, object] = {"action": "allow", "rule": "r-1"}
AT = "2026-11-29T03:04:05.000006Z"


def bench_pure(body: dict[str, object], number: int = 20000) -> None:
    chain = Chain("bench:000000000000")
    body_json = canonical_text(body)
    items = [("decision", f"d-{i}", AT, body, body_json) for i in range(64)]
    for label, stmt, per_call in (
        ("canonical_text(body)", lambda: canonical_text(body), 1),
        ("Chain.seal (check+encode+hash)", lambda: chain.seal("decision", "d-1", AT, body), 1),
        ("Chain.seal_many, per record", lambda: chain.seal_many(items), len(items)),
    ):
        calls = max(1, number // per_call)
        best = min(timeit.repeat(stmt, number=calls, repeat=5)) / (calls * per_call)
        print(f"  {label:34s} {best * 1e6:6.2f} us")


def bench_baseline(directory: str, seconds: float, body: dict[str, object]) -> float:
    store = SQLiteStore(os.path.join(directory, "baseline.db"))
    chain = Chain("baseline:000000000000")
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            store.append([chain.seal("decision", f"b-{n}", AT, body)])  # one transaction each
            n += 1
    elapsed = time.perf_counter() - start
    store.close()
    return n / elapsed


def bench_recorder(
    directory: str, threads: int, seconds: float, body: dict[str, object]
) -> tuple[float, float]:
    store = SQLiteStore(os.path.join(directory, f"recorder-{threads}-{time.monotonic_ns()}.db"))
    recorder = Recorder(store, instance="bench")
    stop = threading.Event()
    counts = [0] * threads

    def caller(index: int) -> None:
        record = recorder.record
        n = 0
        prefix = f"t{index}-"
        while not stop.is_set():
            record("decision", prefix + str(n), AT, body)
            n += 1
        counts[index] = n

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    stats = recorder.stats()
    recorder.close()
    assert stats.committed == sum(counts) == store.count(), (stats, sum(counts))
    store.close()
    return sum(counts) / elapsed, stats.mean_batch_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--dir", default=None, help="where the databases go (default: temp)")
    parser.add_argument(
        "--small-body", action="store_true",
        help="record a 2-field body instead of a realistic decision (shows the fixed cost)",
    )
    args = parser.parse_args(argv)
    body = SMALL_BODY if args.small_body else BODY
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"body {len(canonical_text(body))} bytes"
    )
    print("pure parts (best of 5):")
    bench_pure(body)
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        base = bench_baseline(directory, args.seconds, body)
        print(f"baseline  INSERT+COMMIT per record          {base:9.0f} records/s")
        for threads in args.threads:
            rate, mean = bench_recorder(directory, threads, args.seconds, body)
            print(
                f"recorder  {threads:3d} threads (mean batch {mean:6.1f})   {rate:9.0f} records/s"
                f"   x{rate / base:.1f}"
            )
    print(f"(synchronous=FULL, WAL; {format_time(datetime.now(UTC))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
