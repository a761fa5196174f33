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
    pytest.skip(f"{what} not available: {install}")


@pytest.fixture
def repo() -> Path:
    return REPO
