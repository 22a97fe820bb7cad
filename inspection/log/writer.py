"""The group-commit writer: records queued by many callers, committed many per transaction.

Callers hand normalised records to one writer thread and wait. The writer takes every record
queued at that moment and commits them in ONE transaction (group commit): under load,
concurrent requests share an fsync instead of queueing on the disk one by one, and each
caller is answered only once its record is durable. Inside that transaction the writer locks
the chain-head row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` is
the database-wide write lock), so several servers sharing a PostgreSQL log extend one chain.

Records appended from an event loop are held until the end of that loop iteration and handed
over together; when the server says nothing else is in flight, SQLite commits them on the
loop's own thread (an inline commit), sparing the two thread hand-offs.

Why one module over 400 lines: the queue, the group-commit transaction, the chain-head lock and
the inline path share one invariant (each record is answered only after the commit that holds
it); split across modules, that invariant would have no single place to be read and checked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from inspection.errors import ConflictError, InspectionError
from inspection.log import chain, faults
from inspection.log.records import StoredRecord
from inspection.log.rows import row_to_record
from inspection.log.statements import WriterSql

log = logging.getLogger(__name__)

_STOP = object()
#: A waiting event loop's future and what it is settled with.
_Outcome = tuple[asyncio.Future[StoredRecord], StoredRecord | BaseException]


@dataclass(slots=True)
class Pending:
    """A queued record and who waits for it: a thread (``future``) or an event loop (``waiter``)."""

    fields: dict[str, Any]
    future: concurrent.futures.Future[StoredRecord] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    waiter: asyncio.Future[StoredRecord] | None = None


@dataclass
class WriterStats:
    """Counters of the group-commit writer (a test, /metrics and /readyz read these)."""

    commits: int = 0
    records: int = 0
    largest_batch: int = 0
    #: Records whose commit failed for the log's sake (database or disk), not the record's.
    failures: int = 0
    #: Failures by reason code (``storage_full``, ``log_unavailable``, ...).
    failures_by_code: dict[str, int] = field(default_factory=dict)
    #: Set at the first failure since the last successful commit (time.monotonic()); None while healthy.
    failing_since: float | None = None
    #: The last failure's message (what /readyz shows while failing).
    last_error: str | None = None

    def note_failure(self, exc: BaseException) -> None:
        code = getattr(exc, "failsafe_code", "server_error")
        self.failures += 1
        self.failures_by_code[code] = self.failures_by_code.get(code, 0) + 1
        self.last_error = f"{code}: {exc}"
        if self.failing_since is None:
            self.failing_since = time.monotonic()

    def note_success(self) -> None:
        self.failing_since = None
        self.last_error = None


class _StaleConnection(Exception):
    """The writer's kept connection was found dead before the transaction wrote anything."""


class GroupCommitWriter:
    """Appends normalised records to the chain on ``engine``: its own thread, or inline.

    ``submit`` (threads) and ``submit_from_loop`` (event loops) hand a record over and return
    what its caller waits on; ``close`` commits what was handed over and stops the thread.
    """

    def __init__(self, engine: Engine, *, max_batch: int) -> None:
        self.engine = engine
        self.stats = WriterStats()
        #: Set by a server: "nothing else is in flight" (see ``_commit_inline``). SQLite only.
        self.inline_commit_when: Callable[[], bool] | None = None
        self.closed = False
        self._sqlite = engine.dialect.name == "sqlite"
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._conn: Any = None  # the writer thread's own (pool-proxied DBAPI) connection, kept between batches
        self._inline_conn: Any = None
        self._sql = WriterSql(engine.dialect)
        self._dbapi = engine.dialect.loaded_dbapi
        #: records handed over during the current loop iteration, per event loop (see submit_from_loop)
        self._held: dict[asyncio.AbstractEventLoop, list[Pending]] = {}
        self._close_lock = threading.Lock()
        #: Queue entries handed to the thread and not yet settled, or 1 during an inline commit.
        self._in_flight = 0
        self._flight_lock = threading.Lock()
        self._thread = threading.Thread(target=self._writer_loop, name="inspection-log-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ handing over
    def submit(self, fields: dict[str, Any]) -> concurrent.futures.Future[StoredRecord]:
        """Queue one record for the writer thread; the future settles once it is committed.

        Raises ConflictError when the writer is closed.
        """
        if self.closed:
            raise ConflictError("the inspection log is closed; no record can be appended")
        fut: concurrent.futures.Future[StoredRecord] = concurrent.futures.Future()
        self._enqueue(Pending(fields, future=fut))
        return fut

    def submit_from_loop(self, fields: dict[str, Any], loop: asyncio.AbstractEventLoop) -> asyncio.Future[StoredRecord]:
        """Hold one record until the end of this iteration of ``loop``; the returned future of
        ``loop`` settles once it is committed. Raises ConflictError when the writer is closed.
        """
        # One hand-off each way: the writer settles this loop future with call_soon_threadsafe
        # (no concurrent Future wrapped, shielded and waited for). A caller giving up (timeout,
        # cancellation) only drops its waiter; the queued record commits regardless.
        waiter: asyncio.Future[StoredRecord] = loop.create_future()
        if self.closed:
            raise ConflictError("the inspection log is closed; no record can be appended")
        held = self._held.get(loop)
        if held is None:
            # Records handed over during this loop iteration go to the writer together, at its end:
            # one wake-up of the writer instead of one per record, and a frame's record and the
            # part record it completes (appended by the next task) share one transaction.
            held = self._held[loop] = []
            loop.call_soon(self._release_held, loop)
        held.append(Pending(fields, loop=loop, waiter=waiter))
        return waiter

    def close(self) -> bool:
        """Commit what was handed over, stop the writer thread and drop its connections.

        Returns False when the writer was already closed (by this call's predecessor).
        """
        with self._close_lock:
            if self.closed:
                return False
            self.closed = True
        for loop in list(self._held):
            self._release_held(loop)  # handed over this loop iteration: accepted, so committed
        self._queue.put(_STOP)
        self._thread.join()
        conn, self._inline_conn = self._inline_conn, None
        if conn is not None:
            _invalidate(conn)
        return True

    def _release_held(self, loop: asyncio.AbstractEventLoop) -> None:
        held = self._held.pop(loop, None)
        if held and not self._commit_inline(held):
            self._enqueue(held)

    def _enqueue(self, item: Any) -> None:
        with self._flight_lock:
            self._in_flight += 1
        self._queue.put(item)

    # ------------------------------------------------------------------ inline commits
    def _commit_inline(self, held: list[Pending]) -> bool:
        """Commit ``held`` on the event loop's own thread when the server is otherwise idle.

        A lone frame would otherwise pay two thread hand-offs (loop -> writer -> loop), about
        0.1 ms each on a 2-core line PC, more than the SQLite transaction itself. Only when
        ``inline_commit_when()`` says no other frame is in flight, nothing is queued for or
        being committed by the writer (so records keep their order), and only on SQLite, whose
        lock is taken without waiting (``busy_timeout=0``): if another process holds it, or
        anything else goes wrong, nothing was written and the records go to the writer as
        usual, which waits and reports errors properly. Returns True when committed here.
        """
        when = self.inline_commit_when
        if when is None or not self._sqlite or self.closed or not when():
            return False
        with self._flight_lock:
            if self._in_flight:
                return False
            self._in_flight = 1
        try:
            try:
                if self._inline_conn is None:
                    self._inline_conn = self.engine.raw_connection()
                    cur = self._inline_conn.cursor()
                    cur.execute("PRAGMA busy_timeout=0")
                    cur.close()
                rows = self._transaction(self._inline_conn, held, reused=False)
            except Exception as exc:  # noqa: BLE001 -- locked, or failed: the writer retries and reports
                if not _is_locked(exc):
                    conn, self._inline_conn = self._inline_conn, None
                    if conn is not None:
                        _invalidate(conn)
                return False
        finally:
            with self._flight_lock:
                self._in_flight -= 1
        _settle_waiters([(item.waiter, record) for item, record in zip(held, rows, strict=True)
                         if item.waiter is not None])
        return True

    # ------------------------------------------------------------------ the writer thread
    def _writer_loop(self) -> None:
        stop = False
        try:
            while not stop:
                item = self._queue.get()
                if item is _STOP:
                    break
                batch = list(item) if isinstance(item, list) else [item]
                taken = 1
                while len(batch) < self._max_batch:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stop = True
                        break
                    taken += 1
                    if isinstance(nxt, list):
                        batch.extend(nxt)
                    else:
                        batch.append(nxt)
                for start in range(0, len(batch), self._max_batch):
                    chunk = batch[start:start + self._max_batch]
                    _settle_all(chunk, self._commit_batch(chunk))
                with self._flight_lock:
                    self._in_flight -= taken
        finally:
            self._drop_conn()

    def _commit_batch(self, batch: list[Pending]) -> list[StoredRecord | BaseException]:
        """Each record's outcome: the stored record, or the error its caller gets."""
        try:
            return list(self._commit(batch))
        except Exception as exc:  # noqa: BLE001 -- every failure must reach the waiting callers
            if len(batch) > 1:
                # One bad record (e.g. a duplicate id) must not fail its neighbours.
                return [outcome for item in batch for outcome in self._commit_batch([item])]
            error = _as_domain_error(exc, batch[0].fields, self._dbapi)
            if not isinstance(error, ConflictError):
                self.stats.note_failure(error)
            return [error]

    def _writer_conn(self) -> Any:
        # The writer keeps one DBAPI connection: a pool check-out and check-in (with its reset
        # ROLLBACK) per transaction cost more CPU than the transaction itself.
        if self._conn is None:
            self._conn = self.engine.raw_connection()
        return self._conn

    def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _invalidate(conn)

    def _commit(self, batch: Sequence[Pending]) -> list[StoredRecord]:
        try:
            return self._commit_on(self._conn is not None, batch)
        except _StaleConnection:
            # The kept connection had died since the last transaction (database restart, idle
            # timeout) and nothing was written on it: start over once on a fresh, pre-pinged one.
            return self._commit_on(False, batch)

    def _commit_on(self, reused: bool, batch: Sequence[Pending]) -> list[StoredRecord]:
        conn = self._writer_conn()
        try:
            return self._transaction(conn, batch, reused=reused)
        except BaseException:
            # After a failed transaction the connection may be broken (server gone, disk
            # error): the next batch starts on a fresh one.
            self._drop_conn()
            raise

    def _transaction(self, conn: Any, batch: Sequence[Pending], *, reused: bool) -> list[StoredRecord]:
        """Append ``batch`` to the chain in one transaction on ``conn`` (rolled back on failure).

        The hot path of every decision: plain DBAPI calls on statements compiled once
        (``WriterSql``). Through SQLAlchemy's Connection the same transaction cost ~0.4 ms of
        CPU, more than SQLite's own commit; the schema and the bind processing still come from
        SQLAlchemy, so what is stored is byte for byte what the readers expect.
        """
        sql = self._sql
        try:
            cur = conn.cursor()
            try:
                try:
                    if sql.begin:
                        cur.execute(sql.begin)
                    cur.execute(sql.lock_head)
                    head = cur.fetchone()
                except self._dbapi.Error as exc:
                    if reused and self.engine.dialect.is_disconnect(exc, conn.dbapi_connection, cur):
                        raise _StaleConnection from exc
                    raise
                if head is None:
                    raise InspectionError("the inspection log could not commit the record: its chain-head row is "
                                          "missing (the database was altered outside the log; "
                                          "run `inspection audit verify`)")
                seq, prev = int(head[0]), str(head[1])
                rows: list[dict[str, Any]] = []
                for item in batch:
                    seq += 1
                    digest = chain.record_hash(seq, prev, item.fields)
                    rows.append({**item.fields, "seq": seq, "prev_hash": prev, "hash": digest})
                    prev = digest
                cur.executemany(sql.insert, [sql.insert_params(r) for r in rows])
                cur.execute(sql.advance_head, (seq, prev))
                conn.commit()
            finally:
                cur.close()
        except BaseException:
            try:
                conn.rollback()
            except Exception:  # noqa: BLE001,S110 -- the caller drops the connection anyway
                pass
            raise
        self.stats.commits += 1
        self.stats.records += len(rows)
        if self.stats.failing_since is not None:
            self.stats.note_success()
        self.stats.largest_batch = max(self.stats.largest_batch, len(rows))
        return [row_to_record(r) for r in rows]


def _is_locked(exc: BaseException) -> bool:
    """SQLite's SQLITE_BUSY / SQLITE_LOCKED (primary code): another connection holds the lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _invalidate(conn: Any) -> None:
    """Close a kept DBAPI connection for good (never back to the pool: it may be broken)."""
    try:
        conn.invalidate()
    except Exception as exc:  # noqa: BLE001 -- closing a broken connection may fail too
        log.warning("inspection log: closing a connection failed: %s", exc)


def _settle_all(batch: Sequence[Pending], outcomes: Sequence[StoredRecord | BaseException]) -> None:
    """Hand each caller its outcome: threads directly, event loops with ONE wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for item, outcome in zip(batch, outcomes, strict=True):
        if item.future is not None:
            _settle(item.future, outcome)
        elif item.loop is not None and item.waiter is not None:
            by_loop.setdefault(item.loop, []).append((item.waiter, outcome))
    for loop, waiters in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_waiters, waiters)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more; the records are committed


def _settle_waiters(waiters: Sequence[_Outcome]) -> None:
    for waiter, outcome in waiters:
        # The awaiting task may have given up (timeout, cancellation); the outcome stands regardless.
        if waiter.done():
            continue
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)


def _settle(fut: concurrent.futures.Future[StoredRecord], outcome: StoredRecord | BaseException) -> None:
    if fut.done():
        return
    try:
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)
    except concurrent.futures.InvalidStateError:
        pass


def _as_domain_error(exc: Exception, fields: Mapping[str, Any], dbapi: Any) -> Exception:
    """The caller's error for a failed commit: the writer runs plain DBAPI calls (``dbapi``'s
    errors), SQLAlchemy only when it (re)connects."""
    if isinstance(exc, InspectionError):
        return exc
    duplicate_id = "inspection_id" in str(getattr(exc, "orig", "")).lower() + str(exc).lower()
    if isinstance(exc, (IntegrityError, dbapi.IntegrityError)) and duplicate_id:
        return ConflictError(f"inspection id {fields['inspection_id']!r} is already in the log; ids must be unique")
    if isinstance(exc, (SQLAlchemyError, dbapi.Error)):
        return faults.from_db_error(exc, "committing the record to the inspection log")
    if isinstance(exc, OSError):
        return faults.from_os_error(exc, "committing the record to the inspection log")
    return exc
