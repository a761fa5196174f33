"""Real servers for integration tests: ``exportgate serve``, nginx and Caddy as subprocesses on free ports.

Importing it: tests/ has no ``__init__.py``, and with pytest's default ("prepend") import mode the directory of
each test module and of tests/conftest.py are on ``sys.path``. So modules next to this one write ``from serverproc
import ...`` and modules elsewhere under tests/ write ``from integration.serverproc import ...``.

What it gives:

* :func:`free_port` — a TCP port nobody listens on right now (bind to port 0, read it, close);
* :func:`render` — a deploy file with a few exact strings replaced (ports, upstream, root, paths): the tests run
  the file ``deploy/`` ships, not a second copy of it, and a replacement that no longer matches fails loudly;
* :class:`GateProcess` — ``exportgate --config F serve --mode forward-auth`` in its own session, waited for on
  ``/healthz``, stopped by its process group; its output (gunicorn's access log) goes to a file;
* :class:`NginxProcess` and :class:`CaddyProcess` — the front ends in the foreground, everything (pid, temp
  paths, logs) under a temporary prefix;
* :class:`GunicornProcess` — ``gunicorn -c deploy/gunicorn.conf.py`` for a config;
* :func:`write_mirror`, :class:`StoreFault`, :func:`decision_record` — a tiny mirror tree, a real SQLite record
  store made to refuse writes (and healed), and a committed decision read back;
* :func:`request` — one HTTP request with ``http.client``: the request target is sent exactly as given (no
  normalisation of ``..``, ``//`` or percent-escapes), and the client can bind a source address such as
  ``127.0.0.2`` to play an untrusted peer on one machine.

Caveat: processes are started with ``start_new_session=True`` and stopped by their own process group id, never
by name. ``free_port`` is racy in principle (another process may take the port before the server binds it);
:meth:`_Server.start` reports a server that exits early with its log, so such a race shows as a clear failure.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEPLOY = REPO / "deploy"

START_TIMEOUT = 20.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def render(template: str | Path, replacements: Mapping[str, str]) -> str:
    """The text of ``template`` (a path, or text) with each key replaced by its value.

    Every key must occur exactly once: a deploy file edited so that a replacement silently stops matching would
    otherwise leave the test running something else than intended.
    """
    text = Path(template).read_text(encoding="utf-8") if isinstance(template, Path) else template
    for old, new in replacements.items():
        count = text.count(old)
        if count != 1:
            raise AssertionError(f"{template}: expected {old!r} exactly once, found it {count} times")
        text = text.replace(old, new)
    return text


@dataclass(frozen=True, kw_only=True)
class Response:
    status: int
    headers: dict[str, str]
    """Lower-case names; repeated headers joined with ``, ``."""
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def request(port: int, target: str, *, method: str = "GET", headers: Mapping[str, str] | Sequence[tuple[str, str]]
            = (), host: str = "127.0.0.1", source: str | None = None, timeout: float = 10.0) -> Response:
    """Send one request with the request target exactly as given; ``source`` binds the client's address."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        conn.putrequest(method, target, skip_host=False, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in items:
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
        merged: dict[str, str] = {}
        for name, value in resp.getheaders():
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        return Response(status=resp.status, headers=merged, body=body)
    finally:
        conn.close()


def wait_for(port: int, path: str, *, proc: subprocess.Popen[bytes] | None, log: Path | None,
             timeout: float = START_TIMEOUT, host: str = "127.0.0.1") -> None:
    """Until ``GET path`` answers at all (any status), or fail with the server's log."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering:\n{_tail(log)}")
        try:
            request(port, path, host=host, timeout=2.0)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer {path} on port {port} within {timeout}s:\n"
                                   f"{_tail(log)}") from None
            time.sleep(0.05)


def _tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.exists():
        return "(no log)"
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


@dataclass(kw_only=True)
class _Server:
    """A subprocess in its own session, stopped by its process group."""

    workdir: Path
    port: int = 0
    log: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    ready_path = "/"

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command(), cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.environment(), start_new_session=True)
        wait_for(self.port, self.ready_path, proc=self.proc, log=self.log)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(kw_only=True)
class GateProcess(_Server):
    """``exportgate --config CONFIG serve --mode forward-auth --workers 1`` on ``127.0.0.1:port``."""

    config: Path
    trust_proxy: Sequence[str] = ("127.0.0.1/32",)
    server: str = "gunicorn"
    """``--server``: gunicorn (the default server) unless a test is about another."""
    extra_args: Sequence[str] = ()
    ready_path = "/healthz"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.log = self.workdir / "gate.log"

    def command(self) -> list[str]:
        exe = Path(sys.executable).with_name("exportgate")
        base = [str(exe)] if exe.exists() else [sys.executable, "-m", "exportgate.cli"]
        trust = [arg for cidr in self.trust_proxy for arg in ("--trust-proxy", cidr)]
        return [*base, "--config", str(self.config), "serve", "--bind", f"127.0.0.1:{self.port}",
                "--mode", "forward-auth", *trust, "--workers", "1", "--server", self.server, *self.extra_args]

    def environment(self) -> dict[str, str]:
        env = gate_environment(self.workdir)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # exportgate serve makes its own
        return env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, target: str, **kwargs: object) -> Response:
        return request(self.port, target, **kwargs)  # type: ignore[arg-type]


MIRROR_FILES = {
    "files/chat-1.tar.gz": b"chat client 1.0, free personal communications software\n",
    "files/crypto-1.tar.gz": b"crypto toolkit 1.0, ECCN 5D002\n",
    "files/crypto-1.tar.gz.sha256": b"0123456789abcdef  crypto-1.tar.gz\n",
    "files/index.json": b'{"files": ["chat-1.tar.gz", "crypto-1.tar.gz"]}\n',
    "simple/chatpkg/index.html": b"<!doctype html><a href='/files/chat-1.tar.gz'>chat-1.tar.gz</a>\n",
}
"""A tiny mirror: one artifact free to Iran, one 5D002 artifact blocked to Iran (tests/data/catalog.yaml), an
index page and metadata that must be served without asking the gate."""


def write_mirror(root: Path) -> Path:
    for name, content in MIRROR_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


class StoreFault:
    """Make the SQLite record store refuse every new record, then heal it: a real failure of the real store.

    A trigger that aborts every INSERT into ``records`` is what a full disk or a read-only file system looks like
    to the gate: its commits fail (and its next commit after ``heal`` succeeds). Adding and dropping a trigger is
    a schema change SQLite's prepared statements notice on their next step, so the running gate sees it at once.
    """

    TRIGGER = "exportgate_test_store_fault"

    def __init__(self, database: Path) -> None:
        self.database = database

    def _execute(self, sql: str) -> None:
        import sqlite3

        conn = sqlite3.connect(self.database, timeout=10)
        try:
            conn.execute(sql)
            conn.commit()
        finally:
            conn.close()

    def fail(self) -> None:
        self._execute(f"CREATE TRIGGER IF NOT EXISTS {self.TRIGGER} BEFORE INSERT ON records "
                      f"BEGIN SELECT RAISE(ABORT, 'test: the record store refuses writes'); END")

    def heal(self) -> None:
        self._execute(f"DROP TRIGGER IF EXISTS {self.TRIGGER}")

    def __enter__(self) -> StoreFault:
        self.fail()
        return self

    def __exit__(self, *exc: object) -> None:
        self.heal()


def decision_count(database: Path) -> int:
    """Decision records committed so far (read-only)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM records WHERE kind = 'decision'").fetchone()[0])
    finally:
        conn.close()


def decision_record(database: Path, decision_id: str) -> dict[str, object] | None:
    """The body of the decision record ``decision_id`` (read-only), or ``None``."""
    import json
    import sqlite3

    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT body FROM records WHERE kind = 'decision' AND id = ?", (decision_id,)).fetchone()
    finally:
        conn.close()
    return None if row is None else dict(json.loads(row[0]))


def gate_answers(gate: GateProcess) -> float:
    """Forward-auth requests the gate answered (decided or refused), from its ``/metrics``: whichever server it
    runs under, every ``/auth`` answer counts in one of these."""
    text = gate.get("/metrics").body.decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(("exportgate_decisions_total{", "exportgate_rejected_requests_total{")))


def check_only_downloads_ask_the_gate(get: Callable[..., Response], gate: GateProcess, database: Path,
                                      root_listing: bytes, client: str) -> None:
    """Through a front end from ``deploy/``: index pages and metadata are served without asking the gate (no
    record, and no answer counted in its metrics), a download asks it once. ``client``: a sanctioned
    destination, so that anything unclassified the gate were asked about would be refused."""
    before, asked = decision_count(database), gate_answers(gate)
    for target, content in [
        ("/", root_listing),
        ("/files/", b"crypto-1.tar.gz"),
        ("/simple/chatpkg/", MIRROR_FILES["simple/chatpkg/index.html"]),
        ("/simple/chatpkg/index.html", MIRROR_FILES["simple/chatpkg/index.html"]),
        ("/files/index.json", MIRROR_FILES["files/index.json"]),
        ("/files/crypto-1.tar.gz.sha256", MIRROR_FILES["files/crypto-1.tar.gz.sha256"]),
    ]:
        r = get(target, client=client)
        assert r.status == 200, target
        assert content in r.body, target
    assert decision_count(database) == before
    assert gate_answers(gate) == asked
    # ...whereas a download does ask it, once.
    assert get("/files/chat-1.tar.gz", client=client).status == 200
    assert decision_count(database) == before + 1
    assert gate_answers(gate) == asked + 1


# ------------------------------------------------------------------- what every front end in deploy/ must do

UNTRUSTED_PEER = "127.0.0.2"
"""A peer the front ends in deploy/ do not trust as a proxy (the tests' geo overrides place it in Iran)."""

FRONT_END_PATH_VARIANTS = [
    ("/files/crypto-1.tar.gz", 451, "plain"),
    ("/files/%2e%2e/files/crypto-1.tar.gz", 451, "encoded dot-dot"),
    ("/files/%2E%2E/files/crypto-1.tar.gz", 451, "encoded dot-dot upper case"),
    ("/files/a/../crypto-1.tar.gz", 451, "dot-dot"),
    ("/files//crypto-1.tar.gz", 451, "double slash"),
    ("//files/crypto-1.tar.gz", 451, "leading double slash"),
    ("/files/./crypto-1.tar.gz", 451, "dot segment"),
    ("/files/%63rypto-1.tar.gz", 451, "encoded letter"),
    ("/%66iles/%63rypto-1.tar.%67z", 451, "several encoded letters"),
    ("/files/crypto-1.tar.gz?x=/files/chat-1.tar.gz", 451, "query naming another file"),
    ("/files/crypto-1.tar.gz#/files/chat-1.tar.gz", 451, "fragment"),
]
"""``(target, status, case)``: encoding, dot-segment, slash, query and fragment variants of a restricted artifact, which
every front end must refuse (451) to an Iranian client; each front end's tests add the cases where they differ."""

TRUSTED_PROXY_CASES = [
    # 127.0.0.2 is not a proxy the front end trusts: its X-Forwarded-For is ignored, it is located itself (Iran).
    (UNTRUSTED_PEER, "192.0.2.40", 451, "untrusted peer claims US"),
    (UNTRUSTED_PEER, "192.0.2.40, 127.0.0.1", 451, "untrusted peer claims a trusted chain"),
    # The trusted load balancer (127.0.0.1) is believed: the same claim gets the file.
    ("127.0.0.1", "192.0.2.40", 200, "trusted proxy says US"),
]
"""``(source, claimed X-Forwarded-For, status, case)`` for a download of the 5D002 artifact."""


def check_forwarded_for_only_from_trusted_proxies(get: Callable[..., Response], database: Path, source: str,
                                                  claimed: str, status: int) -> None:
    crypto = MIRROR_FILES["files/crypto-1.tar.gz"]
    r = get("/files/crypto-1.tar.gz", client=claimed, source=source)
    assert r.status == status
    if status == 451:
        assert crypto not in r.body
        record = decision_record(database, r.header("x-exportgate-decision-id") or "")
        assert record is not None
        assert record["request"]["client"] == UNTRUSTED_PEER  # type: ignore[index]
        assert record["location"]["country"] == "IR"  # type: ignore[index]
    else:
        assert r.body == crypto


def wait_for_text(path: Path, needle: str, timeout: float = 5.0) -> str:
    """The content of ``path`` once it contains ``needle`` (servers write access logs after answering)."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        if needle in text:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} never appeared in {path}:\n{text[-2000:]}")
        time.sleep(0.02)


def gate_environment(workdir: Path) -> dict[str, str]:
    """This environment without the tester's ``EXPORTGATE_*`` settings, for a gate of its own in ``workdir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTGATE_")}
    # gunicorn >= 25 opens a control socket under $XDG_RUNTIME_DIR or ~/.gunicorn: one per test gate.
    env["XDG_RUNTIME_DIR"] = str(workdir)
    return env


@dataclass(kw_only=True)
class GunicornProcess(_Server):
    """``gunicorn -c deploy/gunicorn.conf.py`` with ``EXPORTGATE_CONFIG=config`` (bind and mode from the config)."""

    config: Path
    ready_path = "/healthz"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.log = self.workdir / "gunicorn.log"

    def command(self) -> list[str]:
        exe = Path(sys.executable).with_name("gunicorn")
        base = [str(exe)] if exe.exists() else [sys.executable, "-m", "gunicorn"]
        return [*base, "-c", str(DEPLOY / "gunicorn.conf.py")]

    def get(self, target: str, **kwargs: object) -> Response:
        return request(self.port, target, **kwargs)  # type: ignore[arg-type]

    def environment(self) -> dict[str, str]:
        env = gate_environment(self.workdir)
        env["EXPORTGATE_CONFIG"] = str(self.config)
        metrics = self.workdir / "metrics"
        metrics.mkdir(exist_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
        return env


NGINX_MAIN = """\
# Test scaffolding only: the main and http contexts a distribution's nginx.conf provides.
# The server block under test is deploy/nginx/exportgate.conf, included below.
{modules}
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
{user}
events {{ worker_connections {connections}; }}
http {{
    default_type application/octet-stream;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    access_log off;
    include {prefix}/exportgate.conf;
}}
"""


@dataclass(kw_only=True)
class NginxProcess(_Server):
    """nginx in the foreground (``daemon off``) with ``server_conf`` included inside ``http {}``."""

    server_conf: str
    modules: Sequence[Path] = ()
    """Dynamic modules to load (``load_module``), e.g. the geoip2 module for the benchmark's native baseline."""
    connections: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        self.log = self.workdir / "error.log"

    def command(self) -> list[str]:
        nginx = shutil.which("nginx") or "nginx"
        return [nginx, "-p", str(self.workdir), "-c", str(self.workdir / "nginx.conf"), "-e",
                str(self.workdir / "error.log")]

    def write_config(self) -> None:
        # As root, workers would switch to "nobody", which cannot read pytest's 0700 temporary directories.
        user = "user root;" if os.geteuid() == 0 else ""
        modules = "\n".join(f"load_module {m};" for m in self.modules)
        (self.workdir / "nginx.conf").write_text(
            NGINX_MAIN.format(prefix=self.workdir, user=user, modules=modules, connections=self.connections),
            encoding="utf-8")
        (self.workdir / "exportgate.conf").write_text(self.server_conf, encoding="utf-8")

    def check(self) -> None:
        """``nginx -t`` on the written config; raises with nginx's message."""
        self.write_config()
        result = subprocess.run([*self.command(), "-t"], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{result.stderr}")

    def start(self) -> None:
        self.check()
        super().start()


@dataclass(kw_only=True)
class CaddyProcess(_Server):
    """``caddy run`` with ``caddyfile`` (admin endpoint off, storage under the work directory)."""

    caddyfile: str

    def __post_init__(self) -> None:
        super().__post_init__()
        self.log = self.workdir / "caddy.log"

    def command(self) -> list[str]:
        caddy = shutil.which("caddy") or "caddy"
        return [caddy, "run", "--config", str(self.workdir / "Caddyfile"), "--adapter", "caddyfile"]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # Caddy keeps certificates and autosaved config under $XDG_DATA_HOME / $XDG_CONFIG_HOME.
        env["XDG_DATA_HOME"] = str(self.workdir / "data")
        env["XDG_CONFIG_HOME"] = str(self.workdir / "config")
        env["HOME"] = str(self.workdir)
        return env

    def start(self) -> None:
        (self.workdir / "Caddyfile").write_text(self.caddyfile, encoding="utf-8")
        super().start()


__all__ = ["DEPLOY", "MIRROR_FILES", "REPO", "CaddyProcess", "GateProcess", "GunicornProcess", "NginxProcess",
           "Response", "StoreFault", "decision_count", "decision_record", "free_port", "render", "request",
           "wait_for", "wait_for_text", "write_mirror"]
