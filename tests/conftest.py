"""Fixtures shared by every test package: paths to the real datasets and service URLs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """../shared/data beside the checkout (CI lays a copy there); overridable for other set-ups."""
    return Path(os.environ.get("INSPECTION_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real datasets not found at {path} (set INSPECTION_SHARED_DATA); CI has them")
    return path
