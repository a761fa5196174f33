"""`make run`: the demo gate starts on embedded defaults, shows the three outcomes, and stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from conftest import REPO

DEB = "/debian/pool/main/t/thunderbird/thunderbird_115.9.0-1_amd64.deb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, client: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"X-Forwarded-For": client})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_make_run_demo(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTGATE_")}
    env.update(EXPORTGATE_DEMO_PORT=str(port), EXPORTGATE_DEMO_DIR=str(tmp_path / "demo"))
    proc = subprocess.Popen([sys.executable, "-m", "exportgate.demo"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as r:  # noqa: S310
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "demo did not start"
            time.sleep(0.2)
        status, headers, body = fetch(base + DEB, "2.176.0.1")
        assert (status, headers["X-Exportgate-Decision"]) == (200, "allow")
        assert body.startswith(b"exportgate demo artifact")
        status, headers, body = fetch(base + "/downloads/vpn-pro/vpn-pro-2.4.exe", "2.176.0.1")
        assert status == 451 and b"ir-other-software" in body
        status, headers, _ = fetch(base + DEB, "152.206.0.1")
        assert (status, headers["X-Exportgate-Rule"]) == (451, "cu-software-pending-commerce")
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends to the foreground group
        try:
            output, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert proc.returncode == 0, output
    for line in ("curl -i -H 'X-Forwarded-For: 2.176.0.1'", "curl -i -H 'X-Forwarded-For: 152.206.0.1'",
                 "/downloads/vpn-pro/vpn-pro-2.4.exe"):
        assert line in output
    # The banner names the directory the demo really uses, and says why a request without the header is a 400.
    assert f"--config {tmp_path / 'demo'}/gate.yaml explain" in output and "var/demo" not in output
    assert "Every request needs the X-Forwarded-For header" in output
    assert "Traceback" not in output, output


def test_a_demo_port_that_is_no_port_is_said_plainly(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTGATE_")}
    env.update(EXPORTGATE_DEMO_PORT="abc", EXPORTGATE_DEMO_DIR=str(tmp_path / "demo"))
    done = subprocess.run([sys.executable, "-m", "exportgate.demo"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == "EXPORTGATE_DEMO_PORT must be a port number from 1 to 65535, got 'abc'"
