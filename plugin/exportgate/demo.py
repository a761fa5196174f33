"""``make run``: the gate on its embedded defaults in front of a small demo mirror, with three requests to try.

Creates ``var/demo/`` (a mirror of a few tiny sample artifacts named in ``examples/catalog.yaml``, a gate.yaml and
the record store), then serves the mirror in static mode on 127.0.0.1 (``EXPORTGATE_DEMO_PORT``, default 8451).
Loopback is a trusted proxy here so that ``X-Forwarded-For`` lets you play a client in any country: never trust
a proxy you do not run in a real deployment. Ctrl-C stops it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

SAMPLES = {
    "debian/pool/main/t/thunderbird/thunderbird_115.9.0-1_amd64.deb": "personal communications (email), 5D992.c",
    "downloads/vpn-pro/vpn-pro-2.4.exe": "commercial VPN client, 5D002, sold for a fee",
    "downloads/docs/manual.pdf": "published documentation, not subject to the EAR",
    "packages/8b/02/matrix_nio-0.24.0-py3-none-any.whl": "Matrix chat library, 5D992.c",
}


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def prepare(base: Path, port: int) -> Path:
    """Write the demo mirror and its gate.yaml under ``base``; returns the config path."""
    mirror = base / "mirror"
    for rel, what in SAMPLES.items():
        target = mirror / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.write_text(f"exportgate demo artifact: {what}\n", encoding="utf-8")
    catalog = repo_root() / "examples" / "catalog.yaml"
    config = {
        "instance": "demo",
        "operator": "the exportgate demo mirror",
        "contact": "compliance@example.org",
        "catalog": str(catalog),
        "records": f"sqlite://{base / 'records.db'}",
        "serve": {
            "bind": f"127.0.0.1:{port}",
            "mode": "static",
            "root": str(mirror),
            "trust_proxy": ["127.0.0.0/8", "::1/128"],
            "workers": 1,
            "threads": 8,
        },
    }
    path = base / "gate.yaml"
    if path.exists():  # keep the user's edits (e.g. policy_settings); the port comes from the command line
        return path
    path.write_text("# Written by `make run` (exportgate.demo). Safe to delete.\n"
                    + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def banner(port: int, base: str = "var/demo") -> str:
    """What to try; ``base``: the demo's directory as the user should read it (relative to the repository when it
    is inside it)."""
    url = f"http://127.0.0.1:{port}"
    deb = "/debian/pool/main/t/thunderbird/thunderbird_115.9.0-1_amd64.deb"
    return f"""
exportgate demo: a gate on embedded defaults (registry geolocation, the shipped policy packs: today's is the
2010-03-08 general licenses as amended since) and the demo manifest (examples/catalog.yaml), in front of a small
mirror in {base}/mirror. Decisions are recorded in {base}/records.db.

Try, from another terminal:

  # Iran, free personal-communications software (31 CFR 560.540): allowed
  curl -i -H 'X-Forwarded-For: 2.176.0.1' {url}{deb}

  # Iran, a 5D002 VPN client sold for a fee: blocked, 451 Unavailable For Legal Reasons
  curl -i -H 'X-Forwarded-For: 2.176.0.1' {url}/downloads/vpn-pro/vpn-pro-2.4.exe

  # Cuba, the same email client: blocked pending Commerce authorization (set policy_settings.cuba_software: flag
  # in {base}/gate.yaml to flag instead)
  curl -i -H 'X-Forwarded-For: 152.206.0.1' {url}{deb}

Every request needs the X-Forwarded-For header: loopback is trusted here as a front end, and a front end that names
no client gets a 400 (a browser without it too).
Also: {url}/readyz  {url}/metrics   and   .venv/bin/exportgate --config {base}/gate.yaml explain --ip 41.67.0.1 --path {deb}
Ctrl-C stops the gate.
"""


def main() -> None:
    text = os.environ.get("EXPORTGATE_DEMO_PORT", "8451")
    if not (text.isascii() and text.isdigit() and 0 < int(text) < 65536):
        raise SystemExit(f"EXPORTGATE_DEMO_PORT must be a port number from 1 to 65535, got {text!r}")
    port = int(text)
    base = Path(os.environ.get("EXPORTGATE_DEMO_DIR", repo_root() / "var" / "demo"))
    base.mkdir(parents=True, exist_ok=True)
    config_path = prepare(base, port)
    try:
        shown = str(base.resolve().relative_to(repo_root().resolve()))
    except ValueError:  # EXPORTGATE_DEMO_DIR outside the repository
        shown = str(base)
    print(banner(port, shown), flush=True)
    from .cli import main as cli_main

    sys.argv = ["exportgate", "--config", str(config_path), "serve", "--bind", f"127.0.0.1:{port}"]
    try:
        cli_main()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
