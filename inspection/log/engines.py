"""The log's database engines (SQLite or PostgreSQL), set up for its locking, and migrated.

SQLite: WAL, the chosen ``synchronous`` level, and ``BEGIN IMMEDIATE`` for write
transactions (the database-wide write lock taken up front). PostgreSQL: pre-pinged pooled
connections, optionally in one schema. ``open_engine`` returns the engine with the schema at
the newest revision, migrated under the log's write lock.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from inspection.errors import ConfigError, InspectionError
from inspection.log import faults
from inspection.log.migrate import upgrade_to_head

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: pg_advisory_xact_lock key taken while migrating (any constant unique to this application).
_PG_MIGRATION_LOCK = 0x1A5E_C7_10


def backend_of(url: str) -> str:
    """The database kind ``url`` names: ``"sqlite"`` or ``"postgresql"``.

    Raises ConfigError when ``url`` is not a database url, or names another database.
    """
    try:
        backend = make_url(url).get_backend_name()
    except Exception as exc:
        raise ConfigError(f"log url {url!r} is not a database url; "
                          "allowed: sqlite:///path or postgresql+psycopg://...") from exc
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"log url {url!r} uses {backend!r}; allowed: sqlite, postgresql")
    return backend


def open_engine(url: str, *, schema: str | None, sqlite_synchronous: str) -> Engine:
    """The engine for ``url``, its schema created or migrated to the newest revision.

    Raises ConfigError on a bad url or schema name, InspectionError when the database
    cannot be reached or migrated.
    """
    backend = backend_of(url)
    engine = _sqlite_engine(url, sqlite_synchronous) if backend == "sqlite" else _postgres_engine(url, schema)
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(log_write=True)
            with conn.begin():
                if backend == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                upgrade_to_head(conn)
    except SQLAlchemyError as exc:
        engine.dispose()
        cause = faults.from_db_error(exc, "opening the log")
        raise InspectionError(f"cannot open the inspection log at {engine.url!r}: {cause} "
                              f"({type(exc).__name__}: {getattr(exc, 'orig', None) or exc})") from exc
    return engine


def _sqlite_engine(url: str, synchronous: str) -> Engine:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise ConfigError(f"log url {url!r} names no SQLite file; "
                          "use sqlite:///path/to/log.db (in-memory logs are not durable)")
    folder = Path(database).expanduser().resolve().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InspectionError(f"cannot create the inspection log's directory {folder}: "
                              f"{exc.strerror or type(exc).__name__}") from exc
    if not os.access(folder, os.W_OK):
        # SQLite could still open an existing file read-only and fail on the first decision.
        raise InspectionError(f"cannot open the inspection log at {url!r}: its directory {folder} is not "
                              "writable (permission denied); the log, its WAL and its frames are written there")
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below): pysqlite's implicit transactions would not take
        # the write lock up front, and two writers could then deadlock on upgrade.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: in WAL mode every commit syncs the WAL, so an acknowledged record survives a
        # power cut too (NORMAL survives only a process crash). Group commit pays for it.
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("log_write") else "BEGIN")

    return engine


def _postgres_engine(url: str, schema: str | None) -> Engine:
    connect_args: dict[str, Any] = {}
    if schema is not None:
        if not _SCHEMA_NAME.match(schema):
            raise ConfigError(f"PostgreSQL schema {schema!r} is not a plain identifier (letters, digits, _)")
        connect_args["options"] = f"-csearch_path={schema}"
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
