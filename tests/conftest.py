"""Shared fixtures. A test that needs a real component calls ``require(...)``: it fails in CI, skips elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, what: str, install: str) -> None:
    """Fail in CI when a component is missing; skip elsewhere, naming what to install."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{what} is required in CI but missing ({install})")
    pytest.skip(f"{what} not available: {install} (in CI this fails instead)")


@pytest.fixture
def repo() -> Path:
    return REPO


# Test client addresses (documentation ranges), pinned to countries by geo overrides so tests do not depend on
# registry data that changes between iptocc releases.
IR_CLIENT, SD_CLIENT, CU_CLIENT, US_CLIENT, CRIMEA_CLIENT = (
    "192.0.2.10", "192.0.2.20", "192.0.2.30", "192.0.2.40", "192.0.2.50")
TEST_OVERRIDES = [
    {"network": "192.0.2.10/32", "country": "IR"},
    {"network": "192.0.2.20/32", "country": "SD"},
    {"network": "192.0.2.30/32", "country": "CU"},
    {"network": "192.0.2.40/32", "country": "US"},
    {"network": "192.0.2.50/32", "country": "UA", "subdivision": "UA-43"},
]
TEST_CATALOG = REPO / "tests" / "data" / "catalog.yaml"


def write_config(directory: Path, **extra: object) -> Path:
    """A gate.yaml in ``directory``: test overrides, test manifest, shipped packs, SQLite store in ``directory``.

    Keyword arguments replace or add top-level keys (``serve={...}``, ``policy_settings={...}``).
    """
    import yaml

    data: dict[str, object] = {
        "instance": "test",
        "operator": "Test Mirror Operator",
        "contact": "compliance@example.org",
        "geo": {"overrides": TEST_OVERRIDES},
        "catalog": str(TEST_CATALOG),
        "records": f"sqlite://{directory / 'records.db'}",
    }
    data.update(extra)
    path = directory / "gate.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def gate_config(tmp_path: Path):
    """Factory: ``gate_config(serve={...})`` -> a loaded GateConfig for a fresh directory."""
    from exportgate.config import load_config

    def make(**extra: object):
        return load_config(write_config(tmp_path, **extra), env={})

    return make
