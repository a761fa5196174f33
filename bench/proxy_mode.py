"""Benchmark: proxy mode throughput and memory, against fetching from the upstream directly, in one run.

Run by hand (about a minute)::

    .venv/bin/python bench/proxy_mode.py [--seconds 3] [--workers 2] [--threads 16]

What it does, all on 127.0.0.1:

* an upstream serving a temp directory: nginx if installed (``sendfile``, like a real mirror), else Python's
  ``http.server``; files: 1 KiB (random), 100 MiB and 1 GiB (sparse: zeros, no disk space needed);
* the gate as ``exportgate serve --mode proxy`` (gunicorn, gthread) in a subprocess, with a config placing
  127.0.0.1 in the US (every download allowed and recorded, SQLite ``synchronous=FULL``);
* 1 KiB: requests/s over ``--seconds`` from 8 keep-alive client threads, directly from the upstream, through the
  gate on a gated path (decision + committed record) and on an ungated path (plain proxying);
* 100 MiB: MiB/s of one download with curl (a C client, so the client is not the bottleneck), direct vs gate,
  best of 3;
* 1 GiB through the gate: the peak RSS growth of each gunicorn worker (``VmHWM`` after minus ``VmRSS`` before,
  and sampled every 20 ms), target < 20 MiB: the body is streamed in 64 KiB chunks, never buffered.

Prints a markdown table on stdout (for bench/RESULTS.md). Client, gate and upstream share the machine's cores, so
compare the gate with the direct figures of the same run, not across machines.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MiB = 1024 * 1024
EXPORTGATE = Path(sys.executable).with_name("exportgate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(port: int, path: str = "/", deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", path)
            connection.getresponse().read()
            connection.close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing answered on 127.0.0.1:{port}{path} within {deadline:.0f} s")


def make_files(root: Path) -> None:
    files = root / "files"
    files.mkdir()
    (files / "small.bin").write_bytes(os.urandom(1024))
    (root / "open").mkdir()
    (root / "open" / "small.bin").write_bytes(os.urandom(1024))
    for name, size in (("100m.bin", 100 * MiB), ("1g.bin", 1024 * MiB)):
        with open(files / name, "wb") as f:
            f.truncate(size)  # sparse


def start_upstream(root: Path, work: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    port = free_port()
    nginx = shutil.which("nginx")
    if nginx:
        conf = work / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 100000;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
""")
        process = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work), "-g", "daemon off;"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kind = "nginx"
    else:
        process = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                    "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kind = "python http.server"
    wait_until_up(port, "/files/small.bin")
    return process, port, kind


def start_gate(upstream_port: int, work: Path, workers: int, threads: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = work / "gate.yaml"
    config.write_text(f"""
instance: bench
geo:
  overrides:
    - {{network: 127.0.0.1/32, country: US}}
records: sqlite://{work}/records.db
serve:
  gated: ["/files/**"]
""")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with open(work / "gate.log", "wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [str(EXPORTGATE), "--config", str(config), "serve", "--mode", "proxy",
             "--upstream", f"http://127.0.0.1:{upstream_port}", "--bind", f"127.0.0.1:{port}",
             "--workers", str(workers), "--threads", str(threads)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    wait_until_up(port, "/healthz")
    return process, port


def requests_per_second(port: int, path: str, seconds: float, clients: int = 8) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * clients
    errors: list[str] = []

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        n = 0
        while time.monotonic() < stop:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                errors.append(f"{path}: {response.status}")
                break
            n += 1
        connection.close()
        counts[index] = n

    started = time.monotonic()
    workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise SystemExit(errors[0])
    return sum(counts) / (time.monotonic() - started)


def curl_mib_per_second(port: int, path: str, expected: int, repeat: int = 3) -> float:
    best = 0.0
    for _ in range(repeat):
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
                              f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True)
        size, seconds = out.stdout.split()
        if int(size) != expected:
            raise SystemExit(f"{path}: got {size} bytes, expected {expected}")
        best = max(best, expected / MiB / float(seconds))
    return best


def python_mib_per_second(port: int, path: str, expected: int) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.monotonic()
    connection.request("GET", path)
    response = connection.getresponse()
    got = 0
    while chunk := response.read(256 * 1024):
        got += len(chunk)
    connection.close()
    if got != expected:
        raise SystemExit(f"{path}: got {got} bytes, expected {expected}")
    return expected / MiB / (time.monotonic() - started)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_growth_during(gate_pid: int, run: object) -> tuple[float, float]:
    """(max VmHWM growth, max sampled VmRSS growth) over the gate's workers, in MiB, while ``run()`` runs."""
    workers = children(gate_pid)
    before = {pid: status_kib(pid, "VmRSS") for pid in workers}
    peak = dict(before)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid in workers:
                try:
                    peak[pid] = max(peak[pid], status_kib(pid, "VmRSS"))
                except (OSError, KeyError):
                    pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        run()  # type: ignore[operator]
    finally:
        done.set()
        sampler.join()
    hwm = max(status_kib(pid, "VmHWM") - before[pid] for pid in workers)
    sampled = max(peak[pid] - before[pid] for pid in workers)
    return hwm / 1024, sampled / 1024


sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine, write_section  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each requests/s run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args(argv)
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the large-file figures (apt-get install curl)")
    with tempfile.TemporaryDirectory(prefix="exportgate-bench-") as tmp:
        work, root = Path(tmp) / "work", Path(tmp) / "root"
        work.mkdir()
        root.mkdir()
        os.chmod(tmp, 0o755)  # nginx workers run as nobody when started by root
        make_files(root)
        upstream, upstream_port, upstream_kind = start_upstream(root, work)
        gate, gate_port = start_gate(upstream_port, work, args.workers, args.threads)
        try:
            # Warm up every worker (imports, store, connection pool) before the memory baseline.
            requests_per_second(gate_port, "/files/small.bin", 0.5)
            hwm, sampled = rss_growth_during(
                gate.pid, lambda: curl_mib_per_second(gate_port, "/files/1g.bin", 1024 * MiB, repeat=1))
            rows = []
            direct = requests_per_second(upstream_port, "/files/small.bin", args.seconds)
            gated = requests_per_second(gate_port, "/files/small.bin", args.seconds)
            ungated = requests_per_second(gate_port, "/open/small.bin", args.seconds)
            rows.append(("1 KiB, 8 keep-alive clients", f"{direct:,.0f} req/s",
                         f"{gated:,.0f} req/s (gated: decided + recorded)", f"{gated / direct:.2f}"))
            rows.append(("1 KiB, ungated path", f"{direct:,.0f} req/s", f"{ungated:,.0f} req/s (proxied only)",
                         f"{ungated / direct:.2f}"))
            big_direct = curl_mib_per_second(upstream_port, "/files/100m.bin", 100 * MiB)
            big_gate = curl_mib_per_second(gate_port, "/files/100m.bin", 100 * MiB)
            rows.append(("100 MiB, curl, best of 3", f"{big_direct:,.0f} MiB/s", f"{big_gate:,.0f} MiB/s",
                         f"{big_gate / big_direct:.2f}"))
            py_direct = python_mib_per_second(upstream_port, "/files/100m.bin", 100 * MiB)
            py_gate = python_mib_per_second(gate_port, "/files/100m.bin", 100 * MiB)
            rows.append(("100 MiB, Python http.client", f"{py_direct:,.0f} MiB/s", f"{py_gate:,.0f} MiB/s",
                         f"{py_gate / py_direct:.2f}"))
        finally:
            os.killpg(gate.pid, signal.SIGTERM)
            gate.wait(timeout=20)
            upstream.terminate()
            upstream.wait(timeout=10)
    lines = [
        "## Proxy mode (issue #3)",
        "",
        f"`.venv/bin/python bench/proxy_mode.py` — {machine()}. Upstream {upstream_kind}, gate `exportgate serve "
        f"--mode proxy` (gunicorn gthread, {args.workers} workers x {args.threads} threads), {os.cpu_count()} CPUs "
        "shared by client, gate and upstream.",
        "",
        "| case | direct from upstream | through the gate | gate/direct |",
        "| --- | ---: | ---: | ---: |",
        *("| " + " | ".join(row) + " |" for row in rows),
        f"| 1 GiB through the gate: worker peak RSS growth | | {hwm:.1f} MiB (VmHWM), {sampled:.1f} MiB sampled "
        f"| {'meets' if hwm < 20 else 'MISSES'} < 20 MiB |",
    ]
    markdown = "\n".join(lines)
    print(markdown)
    write_section("proxy", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
