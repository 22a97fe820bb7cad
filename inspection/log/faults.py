"""Storage faults as domain errors: what went wrong with the log's disk or database, not where.

The frame store and the writer meet the operating system's and the database driver's errors
(``ENOSPC``, ``EROFS``, ``EACCES``, SQLite's ``SQLITE_FULL``, a refused PostgreSQL
connection, ...). Callers must get one of ``StorageFullError``, ``StorageError`` or
``LogUnavailableError`` instead, each with its fail-safe reason, so every path answers a
structured error. Paths, hosts and driver text go to the server's log only: the messages here
name the kind of fault and the operation.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from typing import Any

from inspection.errors import LogUnavailableError, StorageError, StorageFullError

log = logging.getLogger(__name__)

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DENIED_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
#: PostgreSQL SQLSTATEs: disk_full, insufficient_resources, out_of_memory.
_PG_FULL = frozenset({"53100", "53000", "53200"})
#: lock_not_available, query_canceled (statement/lock timeout), read_only_sql_transaction.
_PG_UNAVAILABLE = frozenset({"55P03", "57014", "25006"})


def from_os_error(exc: OSError, operation: str) -> StorageError:
    """The domain error for an ``OSError`` met while ``operation`` (e.g. "storing a frame")."""
    log.error("inspection log storage fault while %s: %s", operation, exc)
    if exc.errno in _FULL_ERRNOS:
        return StorageFullError(f"{operation} failed: no space left on the log's disk")
    if exc.errno == errno.EROFS:
        return StorageError(f"{operation} failed: the log's filesystem is read-only")
    if exc.errno in _DENIED_ERRNOS:
        return StorageError(f"{operation} failed: permission denied on the log's files")
    name = errno.errorcode.get(exc.errno or 0, "I/O error")
    return StorageError(f"{operation} failed: {name} on the log's disk")


def from_db_error(exc: BaseException, operation: str) -> LogUnavailableError:
    """The domain error for a database error (DBAPI or SQLAlchemy) met while ``operation``."""
    orig: Any = getattr(exc, "orig", None) or exc
    log.error("inspection log database fault while %s: %s: %s", operation, type(orig).__name__, orig)
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        primary = code & 0xFF
        if primary == sqlite3.SQLITE_FULL:
            return StorageFullError(f"{operation} failed: the log's disk is full")
        if primary == sqlite3.SQLITE_READONLY:
            return StorageError(f"{operation} failed: the log database is read-only")
        if primary in (sqlite3.SQLITE_PERM, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_AUTH):
            return StorageError(f"{operation} failed: the log database cannot be opened (permission denied?)")
        if primary == sqlite3.SQLITE_IOERR:
            return StorageError(f"{operation} failed: I/O error on the log database")
        if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return LogUnavailableError(f"{operation} failed: the log database is locked by another process")
        return LogUnavailableError(f"{operation} failed: database error ({type(orig).__name__})")
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate in _PG_FULL:
        return StorageFullError(f"{operation} failed: the log database server is out of disk or resources")
    if sqlstate == "42501":  # insufficient_privilege
        return StorageError(f"{operation} failed: permission denied on the log's tables")
    if sqlstate in _PG_UNAVAILABLE:
        return LogUnavailableError(f"{operation} failed: the log database is locked or read-only")
    if isinstance(orig, OSError):
        return from_os_error(orig, operation)
    return LogUnavailableError(f"{operation} failed: the log database is unreachable or refused "
                               f"the transaction ({type(orig).__name__})")
