"""The same log tests run against SQLite and PostgreSQL (``store`` parameter)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.logdb import LogFactory, pg_schema, pg_unreachable_reason


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def logs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogFactory]:
    if request.param == "sqlite":
        factory = LogFactory("sqlite", tmp_path, None)
        yield factory
        factory.close_all()
        return
    reason = pg_unreachable_reason()
    if reason:
        pytest.skip(reason)
    with pg_schema() as schema:
        factory = LogFactory("postgresql", tmp_path, schema)
        yield factory
        factory.close_all()


@pytest.fixture
def log(logs: LogFactory):  # type: ignore[no-untyped-def]
    return logs.open()
