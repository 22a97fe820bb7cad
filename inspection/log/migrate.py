"""Run the log's Alembic migrations on an open connection (no ``env.py`` needed)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Connection

from inspection.log.tables import VERSION_TABLE, metadata

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def upgrade_to_head(conn: Connection) -> None:
    """Bring the schema on ``conn`` to the newest revision, inside the caller's transaction.

    The caller holds the log's write lock (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL advisory
    lock), so servers starting together do not race to create the tables.
    """
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    script = ScriptDirectory.from_config(cfg)

    def _upgrade(rev, context):  # type: ignore[no-untyped-def]
        return script._upgrade_revs("head", rev)

    with EnvironmentContext(cfg, script, fn=_upgrade, destination_rev="head") as env:
        env.configure(connection=conn, target_metadata=metadata, version_table=VERSION_TABLE)
        with env.begin_transaction():
            env.run_migrations()


def current_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
