"""Alembic migrations of the inspection log (run by ``inspection.log.store.open_log``).

There is deliberately no ``env.py``: ``inspection.log.migrate`` drives Alembic with the
log's own connection, inside the transaction that holds the log's write lock.
"""
