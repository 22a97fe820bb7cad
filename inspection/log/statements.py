"""The writer's statements as plain DBAPI SQL for one dialect, compiled once per log.

The writer runs on raw DBAPI connections (see ``inspection.log.writer``); its INSERT is still
compiled by SQLAlchemy from the table, and every column's bind processor (e.g. ``UTCDateTime``
-> SQLite's text spelling) is applied as SQLAlchemy would, so what is stored is byte for byte
what the readers expect.
"""

from __future__ import annotations

import operator
from typing import Any

from sqlalchemy import bindparam, insert

from inspection.log.tables import chain_head, records


class WriterSql:
    """BEGIN (SQLite only), lock the chain head, insert records, advance the chain head."""

    def __init__(self, dialect: Any) -> None:
        columns = list(records.c)
        compiled = insert(records).values({c.name: bindparam(c.name) for c in columns}).compile(dialect=dialect)
        self.insert = str(compiled)
        names = list(compiled.positiontup) if compiled.positional and compiled.positiontup else None
        processors = {c.name: c.type.dialect_impl(dialect).bind_processor(dialect) for c in columns}
        self._processors = [(n, f) for n, f in processors.items() if f is not None]
        self._positional = names
        if names is not None:
            self._values = operator.itemgetter(*names)
            self._at = [(names.index(n), f) for n, f in self._processors]
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        head = chain_head.name
        if dialect.name == "sqlite":
            # SQLite's database-wide write lock, taken up front (see inspection.log.engines).
            self.begin: str | None = "BEGIN IMMEDIATE"
            self.lock_head = f"SELECT seq, hash FROM {head} WHERE id = 1"
        else:
            self.begin = None  # the DBAPI opens the transaction; the row lock serialises writers
            self.lock_head = f"SELECT seq, hash FROM {head} WHERE id = 1 FOR UPDATE"
        self.advance_head = f"UPDATE {head} SET seq = {mark}, hash = {mark} WHERE id = 1"

    def insert_params(self, row: dict[str, Any]) -> Any:
        """The DBAPI parameters of ``insert`` for one row (column name -> value)."""
        if self._positional is not None:
            values = list(self._values(row))
            for index, process in self._at:
                values[index] = process(values[index])
            return values
        return {**row, **{name: process(row[name]) for name, process in self._processors}}
