"""Benchmark: the gate behind real nginx ``auth_request``, side by side with nginx alone, nginx's own geoip2
country block and the obvious Flask/gunicorn forward-auth endpoint, in one run with one load generator (issue #3).

Run by hand (about four minutes; needs nginx, wrk and libnginx-mod-http-geoip2)::

    .venv/bin/python bench/http_forward_auth.py [--seconds 10] [--gunicorn 1,2] [--granian 1] [--connections 128]
    .venv/bin/python bench/http_forward_auth.py --profile gunicorn [--workers 1]   # where a worker's time goes

Everything runs on 127.0.0.1 with ``wrk -t2 -c32 --latency`` for ``--seconds`` per run (after a 2 s warm-up), all
requests ``GET`` of 1 KiB files, each carrying ``X-Forwarded-For``, which nginx believes from 127.0.0.1
(``set_real_ip_from``), so every run sees a located client:

1. nginx alone serving the file;
2. nginx + ``ngx_http_geoip2_module`` blocking by country natively (a ``map`` of the embargoed countries to 451)
   against a Country database built by :mod:`exportgate.geodata` from geodata/networks.yaml; the client is a US
   address, served after the lookup (a country block has no notion of an artifact an Iranian client may have);
3. baseline: ``auth_request`` to a trivial Flask endpoint under gunicorn, 2 sync workers (no upstream keepalive:
   sync workers close every connection); and for scale, ``auth_request`` to nginx itself (``return 200``, upstream
   keepalive): what any auth_request gate costs nginx before it does any work;
4. ``deploy/nginx/exportgate.conf`` as shipped (rendered like tests/integration/test_nginx.py does) in front of
   ``exportgate serve`` (forward-auth, SQLite records, ``synchronous=FULL``), an Iranian client (2.176.0.1) and an
   artifact the shipped pack allows to Iran, so every request is a committed ``allow`` record: under gunicorn with
   the gate's event-loop worker (the default, ``--gunicorn WORKERS``) and under granian's RSGI interface
   (``--granian WORKERS``); for scale, the default once more without the recorder's commit delay
   (``commit_delay_ms=0``) and once with the record store in memory (not durable: what the commits cost);
5. the mixed workload, 90 % metadata (index page, ``.json``, ``.sha256``, ``.html``) and 10 % artifacts, through
   deploy/nginx with the fastest gate of (4), against nginx alone on the same workload;
6. with ``--connections 128,...``: (2), the baseline and the default gate again at each of those connection
   counts, where the gate's group commit gathers more records per commit.

After each gate run the store must hold one decision record per request the gate answered during the run (nginx's
access log: ``gate=200``), plus at most one per request wrk abandoned mid-decision when it stopped (``499``,
``gate=-``), and nginx must have served every artifact wrk counted; otherwise the run is reported as failed. CPU
per request is user+system time of the gate's (or the baseline's) processes and of nginx over the measured run.
Every nginx writes an access log (a mirror keeps one) and runs one worker process.

Caveat: load generator, nginx and the gate share the machine's cores. Compare figures within one run (the ratios),
not across machines or runs. Results go to stdout and to bench/RESULTS.md (section ``http``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "tests" / "integration"))
from exportgate.geodata import build, load_networks
from results import machine, write_section
from serverproc import (
    DEPLOY,
    GateProcess,
    NginxProcess,
    _Server,
    decision_count,
    free_port,
    render,
    request,
)

GEOIP2_MODULE = Path("/usr/lib/nginx/modules/ngx_http_geoip2_module.so")  # Debian's libnginx-mod-http-geoip2
CONNECTIONS = 32
WRK_THREADS = 2
WARMUP_SECONDS = 2
KiB = 1024

# Addresses of geodata/networks.yaml: a documentation range would be "reserved" to the gate (unknown location).
IR_CLIENT = "2.176.0.1"
US_CLIENT = "8.8.8.8"
ARTIFACT = "/files/chat-1.tar.gz"  # tests/data/catalog.yaml: free personal-communications software, allowed to IR
BLOCKED_ARTIFACT = "/files/crypto-1.tar.gz"  # 5D002, blocked to IR
METADATA = (
    "/simple/chatpkg/",  # an index page (index.html through nginx's index module)
    "/files/index.json",
    "/files/chat-1.tar.gz.sha256",
    "/simple/index.html",
    "/files/crypto-1.tar.gz.sha256",
)
MIXED = [METADATA[i % len(METADATA)] for i in range(9)] + [ARTIFACT]  # 90 % metadata, 10 % artifacts
EMBARGOED = ("CU", "IR", "KP", "SY")

NATIVE = "nginx + geoip2 country block (native)"
BASELINE = "baseline: auth_request -> Flask, gunicorn 2 sync workers"


# ------------------------------------------------------------------------------------------------------- servers


def BenchNginx(**kwargs: object) -> NginxProcess:  # noqa: N802 - reads like the class it builds
    """serverproc's nginx (the tests' own scaffolding), with room for the load generator's connections."""
    return NginxProcess(connections=1024, **kwargs)  # type: ignore[arg-type]


FLASK_APP = '''\
from flask import Flask

app = Flask(__name__)


@app.route("/auth")
def auth():
    return "", 200
'''


@dataclass(kw_only=True)
class FlaskGunicorn(_Server):
    """The baseline: a trivial Flask ``/auth`` under ``gunicorn -w 2`` (sync workers, gunicorn's defaults)."""

    ready_path = "/auth"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.log = self.workdir / "flask.log"
        (self.workdir / "baseline_auth.py").write_text(FLASK_APP, encoding="utf-8")

    def command(self) -> list[str]:
        gunicorn = Path(sys.executable).with_name("gunicorn")
        return [str(gunicorn), "--workers", "2", "--worker-class", "sync", "--bind", f"127.0.0.1:{self.port}",
                "--chdir", str(self.workdir), "baseline_auth:app"]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["XDG_RUNTIME_DIR"] = str(self.workdir)  # gunicorn >= 25's control socket
        return env


def _server_block(port: int, root: Path, log: Path, body: str) -> str:
    return f"""
server {{
    listen 127.0.0.1:{port};
    root {root};
    access_log {log};
    set_real_ip_from 127.0.0.1;
    real_ip_header X-Forwarded-For;
    real_ip_recursive on;
{body}
}}
"""


def nginx_alone_conf(port: int, root: Path, log: Path) -> str:
    return _server_block(port, root, log, "    location / { }\n    location ~ /$ { autoindex on; }")


def nginx_geoip2_conf(port: int, root: Path, log: Path, database: Path) -> str:
    countries = " ".join(f"{c} 1;" for c in EMBARGOED)
    return f"""
geoip2 {database} {{
    $bench_country_code default=ZZ country iso_code;
}}
map $bench_country_code $bench_embargoed {{ default 0; {countries} }}
""" + _server_block(port, root, log, "    location / { if ($bench_embargoed) { return 451; } }")


def nginx_auth_request_conf(port: int, root: Path, log: Path, upstream: str, *, keepalive: bool) -> str:
    """``auth_request`` to ``upstream`` (``host:port``), the obvious way (or with upstream keepalive)."""
    keep = """
        proxy_http_version 1.1;
        proxy_set_header Connection "";""" if keepalive else ""
    return f"upstream bench_auth {{ server {upstream};{' keepalive 32;' if keepalive else ''} }}" + _server_block(
        port, root, log, f"""    location / {{ auth_request /_auth; }}
    location = /_auth {{
        internal;
        proxy_pass http://bench_auth/auth;{keep}
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header X-Original-URI $request_uri;
        proxy_set_header X-Forwarded-For $remote_addr;
    }}""")


def nginx_return_200_conf(port: int) -> str:
    return f"server {{ listen 127.0.0.1:{port}; access_log off; location / {{ return 200; }} }}\n"


def deploy_conf(port: int, root: Path, log: Path, gate_port: int) -> str:
    """deploy/nginx/exportgate.conf with exactly the replacements tests/integration/test_nginx.py makes."""
    return render(DEPLOY / "nginx" / "exportgate.conf", {
        "listen 80;": f"listen 127.0.0.1:{port};",
        "server 127.0.0.1:8451;": f"server 127.0.0.1:{gate_port};",
        "root /srv/mirror;": f"root {root};",
        "/var/log/nginx/exportgate-access.log": str(log),
        "#set_real_ip_from  10.0.0.0/8;": "set_real_ip_from 127.0.0.1;",
        "#real_ip_header    X-Forwarded-For;": "real_ip_header X-Forwarded-For;",
        "#real_ip_recursive on;": "real_ip_recursive on;",
    })


# ----------------------------------------------------------------------------------------------------- test data


def write_mirror(root: Path) -> None:
    """1 KiB files at every path the workload asks for (content irrelevant, size equal)."""
    for path in (ARTIFACT, BLOCKED_ARTIFACT, "/simple/chatpkg/index.html",
                 *[p for p in METADATA if not p.endswith("/")]):
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(os.urandom(KiB))


def write_geo_database(path: Path) -> Path:
    """geodata/networks.yaml as a GeoIP2-Country-shaped file: read by nginx's geoip2 module and by the gate."""
    return build(load_networks(REPO / "geodata" / "networks.yaml"), path, kind="Country")


def write_gate_config(directory: Path, database: Path, records: str | None = None) -> Path:
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    data = {
        "instance": "bench",
        "operator": "Benchmark Mirror",
        "geo": {"database": str(database)},
        "catalog": str(REPO / "tests" / "data" / "catalog.yaml"),
        "records": records or f"sqlite://{directory / 'records.db'}",  # synchronous=FULL: the default
    }
    path = directory / "gate.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------- wrk


WRK_SCRIPT = """\
local paths = {paths}
local client = "{client}"
local requests = {{}}
local n = 0

init = function(args)
  for i, p in ipairs(paths) do
    requests[i] = wrk.format("GET", p, {{["Host"] = "mirror.example.org", ["X-Forwarded-For"] = client}})
  end
end

request = function()
  n = n + 1
  return requests[(n - 1) % #requests + 1]
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH {{\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d, " ..
    "\\"non2xx\\": %d, \\"socket_errors\\": %d}}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass(frozen=True, kw_only=True)
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def wrk(port: int, paths: Sequence[str], client: str, seconds: float, work: Path,
        connections: int = CONNECTIONS) -> Load:
    """``wrk -t2 -c32 --latency`` (``-c connections``), cycling through ``paths`` (each thread on its own), as
    ``client``."""
    script = work / "wrk.lua"
    lua_paths = "{" + ", ".join(json.dumps(p) for p in paths) + "}"
    script.write_text(WRK_SCRIPT.format(paths=lua_paths, client=client), encoding="utf-8")
    cmd = ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s", "--latency",
           "-s", str(script), f"http://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    match = re.search(r"^BENCH (\{.*\})$", out, re.MULTILINE)
    if match is None:
        raise SystemExit(f"wrk printed no summary:\n{out}")
    data = json.loads(match.group(1))
    return Load(requests=data["requests"], seconds=data["duration_us"] / 1e6, p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000, non2xx=data["non2xx"], socket_errors=data["socket_errors"])


# --------------------------------------------------------------------------------------------------- CPU account


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return pids


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process and its descendants (so far)."""
    if pid is None:
        return 0.0
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass(kw_only=True)
class Usage:
    """CPU microseconds per request, of the auth endpoint's processes and of nginx."""

    auth_us: float | None = None
    nginx_us: float | None = None


@contextmanager
def accounting(usage: Usage, nginx: _Server, auth: _Server | None) -> Iterator[None]:
    start_nginx = cpu_seconds(nginx.proc.pid if nginx.proc else None)
    start_auth = cpu_seconds(auth.proc.pid if auth is not None and auth.proc else None)
    yield
    usage.nginx_us = cpu_seconds(nginx.proc.pid if nginx.proc else None) - start_nginx
    if auth is not None:
        usage.auth_us = cpu_seconds(auth.proc.pid if auth.proc else None) - start_auth


# ------------------------------------------------------------------------------------------------------- running


@dataclass(kw_only=True)
class Row:
    label: str
    load: Load
    group: str
    check: str = ""
    ok: bool = True
    usage: Usage = field(default_factory=Usage)
    args: list[str] = field(default_factory=list)
    connections: int = CONNECTIONS

    def cpu(self) -> str:
        def per(value: float | None) -> str:
            return "-" if value is None else f"{value * 1e6 / max(self.load.requests, 1):.0f}"

        return f"{per(self.usage.auth_us)} / {per(self.usage.nginx_us)}"


def expect(port: int, path: str, client: str, status: int) -> None:
    """A precondition of a run: fail loudly rather than measure something else than intended."""
    got = request(port, path, headers={"X-Forwarded-For": client}).status
    if got != status:
        raise SystemExit(f"127.0.0.1:{port}{path} from {client}: expected {status}, got {got}")


def count_gate_lines(log: Path, artifact: str) -> tuple[int, int, int]:
    """From the deploy config's access log: requests the gate answered 200, artifacts nginx served (200), and
    requests the client abandoned while nginx waited for the gate (499, ``gate=-``: wrk stopping mid-request)."""
    answered = served = abandoned = 0
    with log.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if "gate=200" in line:
                answered += 1
                if f'"GET {artifact} HTTP/1.1" 200 ' in line:
                    served += 1
            elif '" 499 ' in line and "gate=-" in line:
                abandoned += 1
    return answered, served, abandoned


def settle(database: Path, expected: int, timeout: float = 5.0) -> int:
    """Decision records, once the commits of requests still in flight when wrk stopped have landed."""
    deadline = time.monotonic() + timeout
    count = decision_count(database)
    while count < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        count = decision_count(database)
    return count


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def plain_run(label: str, group: str, nginx: NginxProcess, paths: Sequence[str], client: str, seconds: float,
              work: Path, *, auth: _Server | None = None, blocked_client: str | None = None,
              connections: int = CONNECTIONS) -> Row:
    """nginx (and whatever it asks) under load with ``connections``; every response must be a 2xx."""
    with nginx:
        for path in dict.fromkeys(paths):
            expect(nginx.port, path, client, 200)
        if blocked_client is not None:
            expect(nginx.port, ARTIFACT, blocked_client, 451)
        wrk(nginx.port, paths, client, WARMUP_SECONDS, work, connections)
        usage = Usage()
        with accounting(usage, nginx, auth):
            load = wrk(nginx.port, paths, client, seconds, work, connections)
    ok = load.non2xx == 0 and load.socket_errors == 0
    return Row(label=label, load=load, group=group, ok=ok, usage=usage, connections=connections,
               check="" if ok else f"FAILED: {load.non2xx} non-2xx, {load.socket_errors} socket errors")


def gate_run(label: str, group: str, *, base: Path, root: Path, geo_database: Path, server_args: Sequence[str],
             paths: Sequence[str], seconds: float, in_memory: bool = False, records_query: str = "",
             connections: int = CONNECTIONS) -> Row:
    """deploy/nginx + ``exportgate serve ARGS`` under load, with the decision records counted before and after
    (``in_memory``: a store that is not durable, counted through the gate's metrics instead; ``records_query``:
    options of the SQLite store URL)."""
    work = base / slug(label)
    records = "sqlite::memory:" if in_memory else f"sqlite://{work / 'gate' / 'records.db'}{records_query}"
    config = write_gate_config(work / "gate", geo_database, records)
    gate = GateProcess(workdir=work / "gate", config=config, extra_args=list(server_args))
    log = work / "nginx" / "access.log"
    port = free_port()
    nginx = BenchNginx(workdir=work / "nginx", server_conf=deploy_conf(port, root, log, gate.port), port=port)
    database = work / "gate" / "records.db"
    usage = Usage()
    with gate, nginx:
        expect(port, ARTIFACT, IR_CLIENT, 200)
        expect(port, BLOCKED_ARTIFACT, IR_CLIENT, 451)
        wrk(port, paths, IR_CLIENT, WARMUP_SECONDS, work, connections)
        time.sleep(0.5)  # every warm-up request answered and logged: the count below is stable
        before = metric_decisions(gate.port) if in_memory else decision_count(database)
        log.write_text("")  # nginx appends (O_APPEND): the log restarts at 0 for the measured run
        with accounting(usage, nginx, gate):
            load = wrk(port, paths, IR_CLIENT, seconds, work, connections)
        time.sleep(0.5)
        answered, served, abandoned = count_gate_lines(log, ARTIFACT)
        after = metric_decisions(gate.port) if in_memory else settle(database, before + answered)
    new = after - before
    # wrk counts per thread, each cycling through ``paths`` from its start: allow one short cycle per thread. And
    # when wrk stops, the requests still in flight are mostly artifacts (they wait for the gate, metadata does
    # not), so wrk's completed requests hold fewer than their share of them: allow one per connection.
    slack = WRK_THREADS + (connections if len(paths) > 1 else 0)
    counted = paths.count(ARTIFACT) * load.requests // len(paths) - slack
    problems = []
    if load.non2xx or load.socket_errors:
        problems.append(f"{load.non2xx} non-2xx, {load.socket_errors} socket errors")
    # A request abandoned while the gate decided may or may not have been committed (the gate cannot know the
    # client left): at most one record each, and never fewer records than answers.
    if not answered <= new <= answered + abandoned:
        problems.append(f"{new:,} new records for {answered:,} gate answers (+{abandoned} abandoned)")
    if served < counted:
        problems.append(f"nginx served {served:,} artifacts, wrk counted {counted:,}")
    ok = not problems
    check = (f"ok: {new:,} records, {answered:,} answers + {abandoned} abandoned at the end; "
             f"{served:,} artifacts served" if ok else "FAILED: " + "; ".join(problems))
    return Row(label=label, load=load, group=group, check=check, ok=ok, usage=usage, args=list(server_args),
               connections=connections)


def metric_decisions(port: int) -> int:
    """Decisions the gate counted (``exportgate_decisions_total``), from its ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    body = request(port, "/metrics").text
    return int(sum(sample.value for family in text_string_to_metric_families(body)
                   if family.name == "exportgate_decisions" for sample in family.samples
                   if sample.name == "exportgate_decisions_total"))


def parse_counts(text: str) -> list[int]:
    """``1,2`` -> ``[1, 2]`` (worker processes, connections); empty -> none."""
    counts = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if not part.isdigit() or int(part) < 1:
            raise argparse.ArgumentTypeError(f"expected counts like 1,2, got {part!r}")
        counts.append(int(part))
    return counts


def say(row: Row) -> None:
    print(f"  {row.label}: {row.load.rate:,.0f} req/s, p99 {row.load.p99_ms:.1f} ms, CPU/req {row.cpu()} us"
          f"{', ' + row.check if row.check else ''}", file=sys.stderr)


def run(args: argparse.Namespace) -> list[Row]:
    base = Path(tempfile.mkdtemp(prefix="exportgate-bench-http-"))
    try:
        root = base / "mirror"
        write_mirror(root)
        geo_database = write_geo_database(base / "Bench-Country.mmdb")
        seconds = args.seconds
        rows: list[Row] = []

        def nginx(name: str, conf: Callable[[int], str], modules: Sequence[Path] = ()) -> NginxProcess:
            port = free_port()
            return BenchNginx(workdir=base / name, server_conf=conf(port), port=port, modules=modules)

        rows.append(plain_run("nginx alone", "file", nginx(
            "alone", lambda port: nginx_alone_conf(port, root, base / "alone.log")),
            [ARTIFACT], IR_CLIENT, seconds, base))
        say(rows[-1])
        rows.append(plain_run(NATIVE, "file", nginx(
            "geoip2", lambda port: nginx_geoip2_conf(port, root, base / "geoip2.log", geo_database),
            [GEOIP2_MODULE]), [ARTIFACT], US_CLIENT, seconds, base, blocked_client=IR_CLIENT))
        say(rows[-1])
        flask = FlaskGunicorn(workdir=base / "flask")
        with flask:
            rows.append(plain_run(BASELINE, "file", nginx("flask-nginx", lambda port: nginx_auth_request_conf(
                port, root, base / "flask.log", f"127.0.0.1:{flask.port}", keepalive=False)),
                [ARTIFACT], IR_CLIENT, seconds, base, auth=flask))
        say(rows[-1])
        upstream = free_port()
        rows.append(plain_run("scale: auth_request -> nginx `return 200` (keepalive)", "file", nginx(
            "ceiling", lambda port: nginx_return_200_conf(upstream) + nginx_auth_request_conf(
                port, root, base / "ceiling.log", f"127.0.0.1:{upstream}", keepalive=True)),
            [ARTIFACT], IR_CLIENT, seconds, base))
        say(rows[-1])

        gates: list[tuple[str, list[str]]] = []
        for workers in args.gunicorn:
            label = f"gate, gunicorn + event-loop worker, {workers} worker{'s' if workers > 1 else ''} (default)"
            gates.append((label, ["--workers", str(workers), "--server", "gunicorn"]))
        for workers in args.granian:
            gates.append((f"gate, granian RSGI {workers} worker{'s' if workers > 1 else ''} (event loop)",
                          ["--workers", str(workers), "--server", "granian"]))
        for label, server_args in gates:
            rows.append(gate_run(label, "gate", base=base, root=root, geo_database=geo_database,
                                 server_args=server_args, paths=[ARTIFACT], seconds=seconds))
            say(rows[-1])
        if args.gunicorn:
            default = ["--workers", str(args.gunicorn[0]), "--server", "gunicorn"]
            rows.append(gate_run(f"scale: the default, {args.gunicorn[0]} worker(s), commit_delay_ms=0", "scale",
                                 base=base, root=root, geo_database=geo_database, server_args=default,
                                 paths=[ARTIFACT], seconds=seconds, records_query="?commit_delay_ms=0"))
            say(rows[-1])
            rows.append(gate_run(f"scale: the default, {args.gunicorn[0]} worker(s), records in memory (not durable)",
                                 "scale", base=base, root=root, geo_database=geo_database, server_args=default,
                                 paths=[ARTIFACT], seconds=seconds, in_memory=True))
            say(rows[-1])

        rows.append(plain_run("mixed: nginx alone", "mixed", nginx(
            "mixed-alone", lambda port: nginx_alone_conf(port, root, base / "mixed-alone.log")), MIXED, IR_CLIENT,
            seconds, base))
        say(rows[-1])
        best = max((r for r in rows if r.group == "gate" and r.ok), key=lambda r: r.load.rate, default=None)
        if best is not None:
            rows.append(gate_run(f"mixed: deploy/nginx + {best.label.removeprefix('gate, ')}", "mixed", base=base,
                                 root=root, geo_database=geo_database, server_args=best.args, paths=MIXED,
                                 seconds=seconds))
            say(rows[-1])

        # The same three at more connections (option --connections): where group commit has more to gather.
        for count in args.connections:
            rows.append(plain_run(f"{NATIVE}, {count} connections", "connections", nginx(
                f"geoip2-{count}", lambda port, count=count: nginx_geoip2_conf(
                    port, root, base / f"geoip2-{count}.log", geo_database),
                [GEOIP2_MODULE]), [ARTIFACT], US_CLIENT, seconds, base, blocked_client=IR_CLIENT,
                connections=count))
            say(rows[-1])
            flask = FlaskGunicorn(workdir=base / f"flask-{count}")
            with flask:
                rows.append(plain_run(f"{BASELINE}, {count} connections", "connections", nginx(
                    f"flask-nginx-{count}", lambda port, count=count, flask=flask: nginx_auth_request_conf(
                        port, root, base / f"flask-{count}.log", f"127.0.0.1:{flask.port}", keepalive=False)),
                    [ARTIFACT], IR_CLIENT, seconds, base, auth=flask, connections=count))
            say(rows[-1])
            if args.gunicorn:
                rows.append(gate_run(
                    f"gate, gunicorn + event-loop worker, {args.gunicorn[0]} worker(s), {count} connections",
                    "connections", base=base, root=root, geo_database=geo_database,
                    server_args=["--workers", str(args.gunicorn[0]), "--server", "gunicorn"], paths=[ARTIFACT],
                    seconds=seconds, connections=count))
                say(rows[-1])
        return rows
    finally:
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


def markdown(rows: list[Row], args: argparse.Namespace, elapsed: float) -> str:
    by_label = {r.label: r for r in rows}
    native = by_label[NATIVE].load.rate
    baseline = by_label[BASELINE].load.rate
    alone_mixed = next((r.load.rate for r in rows if r.label == "mixed: nginx alone"), None)
    counts = lambda s: shlex.quote(",".join(str(w) for w in s))  # '' when none: the command still runs as shown
    out = [
        "## Forward auth behind nginx (issue #3)",
        "",
        (f"`.venv/bin/python bench/http_forward_auth.py --seconds {args.seconds:g} --gunicorn {counts(args.gunicorn)} "
        f"--granian {counts(args.granian)}"
        f"{' --connections ' + counts(args.connections) if args.connections else ''}` — {machine()}, "
        f"{os.cpu_count()} cores, {elapsed:.0f} s"),
        "",
        (f"`wrk -t{WRK_THREADS} -c{CONNECTIONS} -d{args.seconds:g}s --latency` on 127.0.0.1 (after a "
        f"{WARMUP_SECONDS} s warm-up), GET of a 1 KiB file, `X-Forwarded-For` believed from 127.0.0.1; nginx with "
        "one worker and an access log in every run. Gate runs: `deploy/nginx/exportgate.conf` as shipped (upstream "
        "keepalive 32) before `exportgate serve` (forward-auth, SQLite records, `synchronous=FULL`), an Iranian "
        f"client asking for `{ARTIFACT}`, allowed by the shipped pack: every request is a committed `allow` record. "
        "CPU/req: microseconds of CPU (user+system) per request of the auth endpoint's processes / of nginx."),
        "",
        "| run | req/s | p50 | p99 | vs geoip2 native | vs Flask baseline | CPU/req (auth / nginx) | records |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if r.group in ("mixed", "connections"):
            continue
        out.append(f"| {r.label} | {r.load.rate:,.0f} | {r.load.p50_ms:.2f} ms | {r.load.p99_ms:.2f} ms | "
                   f"{r.load.rate / native:.2f}x | {r.load.rate / baseline:.1f}x | {r.cpu()} µs | "
                   f"{r.check or '-'} |")
    gates = [r for r in rows if r.group == "gate" and r.ok]
    if gates:
        fastest = max(gates, key=lambda r: r.load.rate)
        verdict = (f"Fastest gate: {fastest.label}, {fastest.load.rate / native:.2f}x geoip2 native (target >= 0.25x: "
                   f"{'met' if fastest.load.rate >= 0.25 * native else 'not met'}), "
                   f"{fastest.load.rate / baseline:.1f}x the Flask baseline (target >= 3x: "
                   f"{'met' if fastest.load.rate >= 3 * baseline else 'not met'}), p99 {fastest.load.p99_ms:.1f} ms "
                   f"(target < 10 ms: {'met' if fastest.load.p99_ms < 10 else 'not met'}).")
        out += ["", verdict]
    out += [
        "",
        ("Mixed workload: 90 % metadata (index page, `.json`, `.sha256`, `.html`: nginx serves them without asking "
        f"the gate), 10 % artifacts (`{ARTIFACT}`: gated and recorded), all 1 KiB:"),
        "",
        "| run | req/s | p50 | p99 | vs nginx alone | CPU/req (gate / nginx) | records |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if r.group != "mixed":
            continue
        ratio = f"{r.load.rate / alone_mixed:.2f}x" if alone_mixed else "-"
        out.append(f"| {r.label} | {r.load.rate:,.0f} | {r.load.p50_ms:.2f} ms | {r.load.p99_ms:.2f} ms | "
                   f"{ratio} | {r.cpu()} µs | {r.check or '-'} |")
    if args.connections:
        out += [
            "",
            ("At more connections (`--connections`): the native block, the baseline and the gate (deploy/nginx, "
             "upstream keepalive 32: nginx opens more connections to the gate as it needs them), each compared "
             "with the native block and the baseline at the same count:"),
            "",
            "| run | req/s | p50 | p99 | vs geoip2 native | vs Flask baseline | CPU/req (auth / nginx) | records |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in rows:
            if r.group != "connections":
                continue
            same = [x for x in rows if x.group == "connections" and x.connections == r.connections]
            native_c = next((x.load.rate for x in same if x.label.startswith(NATIVE)), None)
            baseline_c = next((x.load.rate for x in same if x.label.startswith(BASELINE)), None)
            vs_native = f"{r.load.rate / native_c:.2f}x" if native_c else "-"
            vs_baseline = f"{r.load.rate / baseline_c:.1f}x" if baseline_c else "-"
            out.append(f"| {r.label} | {r.load.rate:,.0f} | {r.load.p50_ms:.2f} ms | {r.load.p99_ms:.2f} ms | "
                       f"{vs_native} | {vs_baseline} | {r.cpu()} µs | {r.check or '-'} |")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------------ profile


CATEGORIES = (
    ("recording (seal, store, wait for the commit)", ("exportgate/records/", "exportgate/recordbody.py")),
    ("decision (geo, catalog, policy, gate)", ("exportgate/gate.py", "exportgate/geo", "exportgate/catalog",
                                              "exportgate/globindex", "exportgate/policy", "exportgate/decision",
                                              "exportgate/networktable", "exportgate/overrides",
                                              "exportgate/maxmind", "exportgate/conditions")),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("forward-auth adapter (web/)", ("exportgate/web/",)),
    ("WSGI server (Python side)", ("gunicorn/", "granian/", "concurrent/futures", "selectors.py", "socket.py",
                                   "logging/")),
)


def profile(args: argparse.Namespace) -> None:
    """py-spy (``--gil``: the thread running Python) on one gate worker while wrk drives deploy/nginx."""
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    workers = args.workers
    rate = 500
    base = Path(tempfile.mkdtemp(prefix="exportgate-bench-profile-"))
    try:
        root = base / "mirror"
        write_mirror(root)
        config = write_gate_config(base / "gate", write_geo_database(base / "Bench-Country.mmdb"))
        gate = GateProcess(workdir=base / "gate", config=config, extra_args=[
            "--workers", str(workers), "--server", args.profile])
        port = free_port()
        nginx = BenchNginx(workdir=base / "nginx", port=port,
                           server_conf=deploy_conf(port, root, base / "nginx" / "access.log", gate.port))
        raw = base / "profile.txt"
        usage = Usage()
        with gate, nginx:
            expect(port, ARTIFACT, IR_CLIENT, 200)
            wrk(port, [ARTIFACT], IR_CLIENT, WARMUP_SECONDS, base)
            assert gate.proc is not None
            worker = _tree(gate.proc.pid)[1]
            spy = subprocess.Popen([str(py_spy), "record", "--pid", str(worker), "--duration",
                                    str(int(args.seconds)), "--rate", str(rate), "--format", "raw", "--gil",
                                    "--nonblocking", "--output", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            with accounting(usage, nginx, gate):
                load = wrk(port, [ARTIFACT], IR_CLIENT, args.seconds, base)
            _, err = spy.communicate(timeout=args.seconds + 60)
            if spy.returncode != 0:
                raise SystemExit(f"py-spy failed: {err.decode(errors='replace')}")
        row = Row(label="", load=load, group="", usage=usage)
        print(f"## Profile: gate under {args.profile}, {workers} worker(s), behind deploy/nginx\n")
        print(f"{load.rate:,.0f} req/s, p99 {load.p99_ms:.2f} ms while sampled (py-spy, {rate}/s, non-blocking); "
              f"CPU per request (gate / nginx): {row.cpu()} µs\n")
        print(summarise_profile(raw.read_text(encoding="utf-8"), top=args.top,
                                possible=rate * args.seconds))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def summarise_profile(text: str, *, top: int, possible: float) -> str:
    """Collapsed ``--gil`` stacks -> share of time the worker ran Python, by category and by function."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    category: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        own[_short(frames[-1])] += count
        for frame in dict.fromkeys(_short(f) for f in frames):
            total[frame] += count
        category[_category(frames)] += count
    lines = [(f"The worker held the GIL in {samples:,} of ~{possible:,.0f} samples ({100 * samples / possible:.0f} % "
             "of the time); shares below are of those samples, by the innermost project or server frame."), "",
             "| where | share |", "| --- | ---: |"]
    lines += [f"| {c} | {100 * n / samples:.1f} % |" for c, n in category.most_common()]
    lines += ["", "| self | function |", "| ---: | --- |"]
    lines += [f"| {100 * n / samples:.1f} % | `{f}` |" for f, n in own.most_common(top)]
    lines += ["", "| total | function |", "| ---: | --- |"]
    lines += [f"| {100 * n / samples:.1f} % | `{f}` |" for f, n in total.most_common(top)
              if not f.startswith(("Thread.", "_bootstrap", "<module>"))]
    return "\n".join(lines)


def _category(frames: Sequence[str]) -> str:
    for frame in reversed(frames):
        for name, markers in CATEGORIES:
            if any(m in frame for m in markers):
                return name
    return "other"


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``: lines vary within one function."""
    match = re.match(r"(.*) \((.*?):?(\d+)?\)$", frame)
    if not match:
        return frame
    name, path = match.group(1), match.group(2)
    for marker in ("site-packages/", "lib/python3.11/", "lib/python3.12/", "lib/python3.13/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path.split('plugin/', 1)[-1]})"


# --------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured wrk run")
    parser.add_argument("--gunicorn", type=parse_counts, default=parse_counts("1,2"),
                        help="gunicorn (event-loop worker, the default) worker counts, comma-separated (default 1,2)")
    parser.add_argument("--granian", type=parse_counts, default=parse_counts("1"),
                        help="granian (RSGI) worker counts, comma-separated (default 1; '' for none)")
    parser.add_argument("--connections", type=parse_counts, default=[],
                        help="also run the native block, the baseline and the default gate at these connection "
                             "counts, comma-separated (e.g. 128,256; default none)")
    parser.add_argument("--profile", choices=["gunicorn", "granian"],
                        help="instead: py-spy one gate worker under this server while under load")
    parser.add_argument("--workers", type=int, default=1, help="--profile: worker processes")
    parser.add_argument("--top", type=int, default=20, help="--profile: functions listed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, stores)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args(argv)
    for tool, install in (("nginx", "apt-get install nginx"), ("wrk", "apt-get install wrk")):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required: {install}")
    if args.profile:
        profile(args)
        return 0
    if not GEOIP2_MODULE.exists():
        raise SystemExit(f"{GEOIP2_MODULE} is required: apt-get install libnginx-mod-http-geoip2")
    started = time.monotonic()
    rows = run(args)
    text = markdown(rows, args, time.monotonic() - started)
    print(text)
    if not args.no_write:
        write_section("http", text)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
