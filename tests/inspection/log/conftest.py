"""The same log tests run against SQLite and PostgreSQL (``store`` parameter)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.logdb import LogFactory, log_factory


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def logs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogFactory]:
    with log_factory(request.param, tmp_path) as factory:
        yield factory


@pytest.fixture
def log(logs: LogFactory):  # type: ignore[no-untyped-def]
    return logs.open()
