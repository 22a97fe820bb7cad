"""Inspection-log stores for tests: a SQLite file in tmp_path, or a fresh PostgreSQL schema.

Each PostgreSQL log lives in its own schema (``t_<random>``) dropped afterwards, so parallel
test runs against the shared server never see each other's records.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PG_URL = os.environ.get("INSPECTION_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pg_unreachable_reason() -> str | None:
    """None when the test PostgreSQL answers, else why not (for pytest.skip)."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 -- any failure to connect means: skip, with the reason
        return f"PostgreSQL at {PG_URL} unreachable: {type(exc).__name__}: {exc}"
    return None


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh schema on the test server, dropped (with its tables) on exit."""
    import sqlalchemy as sa

    name = "t_" + uuid.uuid4().hex[:16]
    engine = sa.create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    try:
        yield name
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        engine.dispose()


class LogFactory:
    """Opens logs on one store; every log it opens shares the same database."""

    def __init__(self, backend: str, tmp_path: Path, schema: str | None) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.schema = schema
        self.url = f"sqlite:///{tmp_path / 'log.db'}" if backend == "sqlite" else PG_URL
        self._opened: list[Any] = []

    def open(self, **kwargs: Any) -> Any:
        from inspection.log.store import open_log

        kwargs.setdefault("frames_dir", self.tmp_path / "frames")
        if self.backend == "postgresql":
            kwargs.setdefault("schema", self.schema)
        log = open_log(self.url, **kwargs)
        self._opened.append(log)
        return log

    def close_all(self) -> None:
        for log in self._opened:
            log.close()


@contextmanager
def log_factory(backend: str, tmp_path: Path) -> Iterator[LogFactory]:
    """A ``LogFactory`` on ``backend`` ("sqlite", or "postgresql" in a schema of its own, dropped
    afterwards); skips the test when PostgreSQL is unreachable. Every log opened is closed."""
    import pytest

    if backend == "postgresql" and (reason := pg_unreachable_reason()):
        pytest.skip(reason)
    with contextlib.ExitStack() as stack:
        schema = stack.enter_context(pg_schema()) if backend == "postgresql" else None
        factory = LogFactory(backend, tmp_path, schema)
        try:
            yield factory
        finally:
            factory.close_all()
