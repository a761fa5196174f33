"""`pip install .` (not editable) into a fresh venv gives a working `exportgate` with the packs inside the wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv

import pytest
from conftest import REPO


@pytest.mark.slow
def test_fresh_install_explains_with_no_config(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(REPO)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )
    assert install.returncode == 0, install.stderr[-2000:]
    work = tmp_path / "elsewhere"  # not the repo: nothing may be read from the source tree
    work.mkdir()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8"}
    exportgate = env_dir / "bin" / "exportgate"
    result = subprocess.run([str(exportgate), "explain", "--ip", "2.176.0.1", "--path", "/pool/x.deb", "--json"],
                            capture_output=True, text=True, cwd=work, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["country"] == "IR" and data["geo_source"].startswith("iptocc")
    assert data["pack"] == "us-2022-02-21-covered-regions@1"  # the pack in force today
    check = subprocess.run([str(exportgate), "check"], capture_output=True, text=True, cwd=work, env=env,
                           timeout=120)
    assert check.returncode == 0, check.stderr
    assert "us-pre-2010-baseline" in check.stdout
    where = subprocess.run([str(python), "-c", "import exportgate, sys; print(exportgate.__file__)"],
                           capture_output=True, text=True, cwd=work, env=env, timeout=60)
    assert str(env_dir) in where.stdout, "the installed copy must be used, not the source tree"
    assert sys.version_info >= (3, 11)
