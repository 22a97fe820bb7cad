"""The log's schema in SQLAlchemy Core: one table of records, one row holding the chain head.

The same metadata serves SQLite and PostgreSQL; Alembic migrations in ``migrations/`` create
it (``open_log`` runs them), this module is what queries are written against.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData()

#: Name of Alembic's version table for this log (not ``alembic_version``, so the log can share
#: a PostgreSQL database with other applications' migrations).
VERSION_TABLE = "inspection_log_version"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    SQLite has no timezone type: values are stored as naive UTC and re-tagged on the way out,
    so both stores hand the same ``datetime`` to the hash chain.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return as_utc(value)


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


records = Table(
    "inspection_records",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("inspection_id", String(64), nullable=False, unique=True),
    Column("kind", String(32), nullable=False),
    Column("time", UTCDateTime(), nullable=False),
    Column("station", String(128)),
    Column("camera", String(128)),
    Column("part_id", String(256)),
    Column("frame_sha256", String(64)),
    Column("decision", String(32)),
    Column("defect_class", String(128)),
    Column("scores", Text),  # canonical JSON
    Column("threshold", Float),
    Column("model_name", String(128)),
    Column("model_version", String(128)),
    Column("model_sha256", String(64)),
    Column("latency_ms", Float),
    Column("failsafe_reason", Text),
    Column("ref", String(64)),
    Column("actor", String(128)),
    Column("data", Text),  # canonical JSON
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_records_time", "time"),
    Index("ix_records_station_time", "station", "time"),
    Index("ix_records_part_id", "part_id"),
    Index("ix_records_ref", "ref"),
    Index("ix_records_frame_sha256", "frame_sha256"),
    Index("ix_records_model_version", "model_version"),
)

#: A single row (id = 1): the seq and hash of the last record. Writers lock it while they
#: append (``SELECT ... FOR UPDATE`` on PostgreSQL), so several servers sharing one log
#: extend one chain instead of forking it; ``verify`` also uses it to notice a removed tail.
chain_head = Table(
    "inspection_chain_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("hash", String(64), nullable=False),
)

#: Entry fields stored in their own column, in the order of ``LogEntry``.
ENTRY_COLUMNS = (
    "kind", "inspection_id", "time", "station", "camera", "part_id", "frame_sha256", "decision",
    "defect_class", "scores", "threshold", "model_name", "model_version", "model_sha256",
    "latency_ms", "failsafe_reason", "ref", "actor", "data",
)
