"""The real third-party index ``pypiserver`` behind GateMiddleware, asked by the real ``pip download``.

pypiserver's WSGI app (``pypiserver.app(roots=[…])``) is wrapped with ``GateMiddleware`` and served by a threaded
werkzeug server on 127.0.0.1, in a subprocess (its bundled bottle installs an import hook that makes later imports
in the same process warn); geo overrides make 127.0.0.1 an Iranian client. Only ``/packages/**`` (the files)
is gated: index pages pass undecided. pip (a subprocess, no config, no cache) downloads chatpkg (free personal
communications: allowed) and fails on cryptopkg (5D002: blocked) with the 451 in its output.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import importlib.util
import os
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, require, write_config
from exportgate.config import GateConfig, load_config
from exportgate.records import open_store


def build_wheel(directory: Path, name: str, version: str = "1.0") -> Path:
    """A minimal valid pure-Python wheel: a package, METADATA, WHEEL and RECORD with hashes."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f'"""{name} (exportgate test package)."""\n'.encode(),
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                 f"Summary: exportgate test package\n".encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: exportgate-tests\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


SERVER = textwrap.dedent("""
    import sys, warnings
    from pathlib import Path

    with warnings.catch_warnings():
        # pypiserver's bundled bottle trips ImportWarning/DeprecationWarning on import (not ours to fix).
        warnings.simplefilter("ignore")
        import pypiserver

        index = pypiserver.app(roots=[Path(sys.argv[2])], disable_fallback=True, authenticate=[], password_file=".")

    from werkzeug.serving import make_server

    from exportgate.config import load_config
    from exportgate.runtime import GateRuntime
    from exportgate.web.app import build_admission, operator_of
    from exportgate.web.metrics import Metrics
    from exportgate.web.middleware import GateMiddleware

    config = load_config(sys.argv[1], env={})
    runtime = GateRuntime(config, record=True)
    app = GateMiddleware(index, build_admission(runtime, config, Metrics()), operator=operator_of(config),
                         gated=config.serve.gated)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(server.server_port, flush=True)
    server.serve_forever()
""")


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, GateConfig, Path]]:
    """pypiserver behind the gate, in its own process (bottle hooks the importer of whoever imports it)."""
    require(importlib.util.find_spec("pypiserver") is not None, "pypiserver", "pip install pypiserver (dev extra)")
    tmp_path = tmp_path_factory.mktemp("pypiserver")
    packages = tmp_path / "packages"
    packages.mkdir()
    build_wheel(packages, "chatpkg")
    build_wheel(packages, "cryptopkg")
    path = write_config(tmp_path, geo={"overrides": [{"network": "127.0.0.1/32", "country": "IR"}]},
                        serve={"gated": ["/packages/**"]})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "plugin"), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(path), str(packages)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        if not port.isdigit():
            server.kill()
            pytest.fail("the gated pypiserver did not start: " + (server.communicate()[1] or "")[-2000:])
        yield f"http://127.0.0.1:{port}", load_config(path, env={}), packages
    finally:
        server.terminate()
        server.communicate(timeout=10)


def pip_download(base: str, name: str, dest: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INPUT="1")
    return subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check",
         "--retries", "0", "--timeout", "10", "--index-url", f"{base}/simple/", name, "-d", str(dest)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )


def decisions(config: GateConfig) -> list[dict[str, Any]]:
    with open_store(config.records) as store:
        return [r.body for r in store.iter_records("decision")]


def test_pip_downloads_the_allowed_package_and_is_refused_the_blocked_one(
        index: tuple[str, GateConfig, Path], tmp_path: Path) -> None:
    base, config, packages = index
    before = len(decisions(config))
    dest = tmp_path / "downloads"
    allowed = pip_download(base, "chatpkg", dest)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    wheel = dest / "chatpkg-1.0-py3-none-any.whl"
    assert wheel.read_bytes() == (packages / wheel.name).read_bytes()

    blocked = pip_download(base, "cryptopkg", dest)
    assert blocked.returncode != 0
    assert "451" in blocked.stdout + blocked.stderr, blocked.stdout + blocked.stderr
    assert not (dest / "cryptopkg-1.0-py3-none-any.whl").exists()

    # Only the package files were decided (index pages passed), each with its legal basis on record.
    new = {d["request"]["path"]: d for d in decisions(config)[before:]}
    assert set(new) == {"/packages/chatpkg-1.0-py3-none-any.whl", "/packages/cryptopkg-1.0-py3-none-any.whl"}
    assert new["/packages/chatpkg-1.0-py3-none-any.whl"]["enforced"] == "allow"
    assert new["/packages/cryptopkg-1.0-py3-none-any.whl"]["enforced"] == "block"
    assert new["/packages/cryptopkg-1.0-py3-none-any.whl"]["rule"] == "ir-other-software"


CRYPTO_WHEEL = "cryptopkg-1.0-py3-none-any.whl"


@pytest.mark.parametrize("raw, status", [
    pytest.param(f"/packages/{CRYPTO_WHEEL}", 451, id="plain"),
    pytest.param(f"/packages/./{CRYPTO_WHEEL}", 451, id="dot segment"),
    pytest.param(f"/packages//{CRYPTO_WHEEL}", 451, id="double slash"),
    pytest.param(f"/simple/../packages/{CRYPTO_WHEEL}", 451, id="from the ungated index"),
    pytest.param(f"/simple/%2e%2e/packages/{CRYPTO_WHEEL}", 451, id="encoded dot-dot"),
    pytest.param(f"/packages/chatpkg-1.0-py3-none-any.whl/../{CRYPTO_WHEEL}", 451, id="through the allowed one"),
    pytest.param(f"/%70ackages/{CRYPTO_WHEEL}", 451, id="encoded letter"),
    pytest.param(f"/packages/{CRYPTO_WHEEL}?x=1", 451, id="query"),
    pytest.param(f"/simple%2f..%2fpackages/{CRYPTO_WHEEL}", 400, id="encoded slash"),
    pytest.param(f"/PACKAGES/{CRYPTO_WHEEL}", 404, id="case: not a pypiserver route"),
    pytest.param("/packages/sub/../chatpkg-1.0-py3-none-any.whl", 200, id="allowed, resolved as decided"),
])
def test_path_variants_through_pypiserver(index: tuple[str, GateConfig, Path], raw: str, status: int) -> None:
    base, _, packages = index
    host, port = base[len("http://"):].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", raw)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == status
    assert body != (packages / CRYPTO_WHEEL).read_bytes()
