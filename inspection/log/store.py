"""The SQL inspection log (SQLite or PostgreSQL) with group commit and a hash chain.

``append`` hands the record to one writer thread and waits. The writer takes every record
queued at that moment and commits them in ONE transaction (group commit): under load,
concurrent requests share an fsync instead of queueing on the disk one by one, and each
caller returns only once its record is durable. Inside that transaction the writer locks the
chain-head row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` is the
database-wide write lock), so several servers sharing a PostgreSQL log extend one chain.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import operator
import queue
import random
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from sqlalchemy import RowMapping, bindparam, create_engine, event, insert, select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from inspection.errors import ConfigError, ConflictError, InspectionError, NotFoundError, ValidationError
from inspection.log import chain
from inspection.log.frames import FrameStore, sha256_hex
from inspection.log.migrate import upgrade_to_head
from inspection.log.records import LogEntry, RecordKind, StoredRecord
from inspection.log.tables import ENTRY_COLUMNS, as_utc, chain_head, records

log = logging.getLogger(__name__)

_KINDS = frozenset(get_args(RecordKind))
_STR_LIMITS = {
    "inspection_id": 64, "station": 128, "camera": 128, "part_id": 256, "frame_sha256": 64, "decision": 32,
    "defect_class": 128, "model_name": 128, "model_version": 128, "model_sha256": 64, "failsafe_reason": 4000,
    "ref": 64, "actor": 128,
}
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: pg_advisory_xact_lock key taken while migrating (any constant unique to this application).
_PG_MIGRATION_LOCK = 0x1A5E_C7_10


@dataclass(slots=True)
class _Pending:
    """A queued record and who waits for it: a thread (``future``) or an event loop (``waiter``)."""

    fields: dict[str, Any]
    future: concurrent.futures.Future[StoredRecord] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    waiter: asyncio.Future[StoredRecord] | None = None


class _WriterSql:
    """The writer's four statements as DBAPI SQL for one dialect, compiled once.

    The INSERT is compiled by SQLAlchemy from the table, and every column's bind processor
    (e.g. ``UTCDateTime`` -> SQLite's text spelling) is applied as SQLAlchemy would.
    """

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
            # SQLite's database-wide write lock, taken up front (see _sqlite_engine).
            self.begin: str | None = "BEGIN IMMEDIATE"
            self.lock_head = f"SELECT seq, hash FROM {head} WHERE id = 1"
        else:
            self.begin = None  # the DBAPI opens the transaction; the row lock serialises writers
            self.lock_head = f"SELECT seq, hash FROM {head} WHERE id = 1 FOR UPDATE"
        self.advance_head = f"UPDATE {head} SET seq = {mark}, hash = {mark} WHERE id = 1"

    def insert_params(self, row: dict[str, Any]) -> Any:
        if self._positional is not None:
            values = list(self._values(row))
            for index, process in self._at:
                values[index] = process(values[index])
            return values
        return {**row, **{name: process(row[name]) for name, process in self._processors}}

_STOP = object()


class _StaleConnection(Exception):
    """The writer's kept connection was found dead before the transaction wrote anything."""


@dataclass
class WriterStats:
    """Counters of the group-commit writer (a test and /metrics read these)."""

    commits: int = 0
    records: int = 0
    largest_batch: int = 0


def normalise_entry(entry: LogEntry) -> dict[str, Any]:
    """The column values of ``entry`` exactly as the stores read them back.

    Raises ValidationError on an unknown kind, over-long or NUL-containing text, a
    non-finite number or a payload that is not plain JSON.
    """
    if entry.kind not in _KINDS:
        raise ValidationError(f"log record kind {entry.kind!r} is not one of {sorted(_KINDS)}")
    fields: dict[str, Any] = {}
    for name in ENTRY_COLUMNS:
        value = getattr(entry, name)
        if name in _STR_LIMITS and value is not None:
            if not isinstance(value, str):
                raise ValidationError(f"log record field {name}={value!r} must be a string")
            if len(value) > _STR_LIMITS[name]:
                raise ValidationError(f"log record field {name} is {len(value)} characters; at most {_STR_LIMITS[name]} allowed")
            if "\x00" in value:
                raise ValidationError(f"log record field {name}={value!r} contains a NUL character")
        fields[name] = value
    if not entry.inspection_id:
        raise ValidationError("log record inspection_id must not be empty")
    fields["time"] = as_utc(entry.time)
    for name in ("threshold", "latency_ms"):
        fields[name] = chain.finite_float(name, fields[name])
    if entry.scores is not None:
        scores = {str(k): chain.finite_float(f"scores[{k!r}]", v) for k, v in dict(entry.scores).items()}
        fields["scores"] = chain.canonical_json(scores)
    if entry.data is not None:
        text_ = chain.canonical_json(entry.data)
        if "\\u0000" in text_:
            raise ValidationError("log record data contains a NUL character")
        fields["data"] = text_
    return fields


def row_to_record(row: Mapping[str, Any] | RowMapping) -> StoredRecord:
    """A stored row as a ``StoredRecord`` (JSON columns parsed)."""
    values = {name: row[name] for name in ENTRY_COLUMNS}
    values["scores"] = json.loads(values["scores"]) if values["scores"] is not None else None
    values["data"] = json.loads(values["data"]) if values["data"] is not None else None
    return StoredRecord(seq=row["seq"], entry=LogEntry(**values), prev_hash=row["prev_hash"], hash=row["hash"])


def row_to_chain(row: Mapping[str, Any] | RowMapping) -> chain.ChainRow:
    return chain.ChainRow(seq=row["seq"], prev_hash=row["prev_hash"], hash=row["hash"],
                          fields={name: row[name] for name in ENTRY_COLUMNS})


class SqlInspectionLog:
    """An ``InspectionLog`` on SQLite or PostgreSQL. Build it with ``open_log``."""

    def __init__(
        self,
        engine: Engine,
        *,
        frames: FrameStore | None,
        frame_sample_rate: float,
        max_batch: int,
        rng: random.Random | None,
        commit_timeout_s: float | None = 30.0,
    ) -> None:
        self.engine = engine
        self.commit_timeout_s = commit_timeout_s
        self.dialect = engine.dialect.name
        self.frames = frames
        self.frame_sample_rate = frame_sample_rate
        self.stats = WriterStats()
        self._max_batch = max_batch
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._conn: Any = None  # the writer thread's own (pool-proxied DBAPI) connection, kept between batches
        self._sql = _WriterSql(engine.dialect)
        self._dbapi = engine.dialect.loaded_dbapi
        #: async appends of the current loop iteration, per event loop (see append_async)
        self._held: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        self._closed = False
        self._close_lock = threading.Lock()
        #: Queue entries handed to the writer and not yet settled, or 1 during an inline commit.
        self._in_flight = 0
        self._flight_lock = threading.Lock()
        #: Set by a server: "nothing else is in flight" (see ``_release_held``). SQLite only.
        self.inline_commit_when: Callable[[], bool] | None = None
        self._inline_conn: Any = None
        self._writer = threading.Thread(target=self._writer_loop, name="inspection-log-writer", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ appending
    def append(self, entry: LogEntry, *, frame: bytes | None = None) -> StoredRecord:
        """Append durably; returns only after the transaction holding the record committed.

        ``frame`` (the encoded image) is stored content-addressed, fsynced before the record
        commits, when the record is not a pass, or for a pass at the sample rate.
        Raises ValidationError (bad entry, frame sha256 mismatch), ConflictError (duplicate
        inspection id, log closed) or InspectionError (the database failed).
        """
        fut: concurrent.futures.Future[StoredRecord] = concurrent.futures.Future()
        self._submit(_Pending(self._prepare(entry, frame), future=fut))
        try:
            return fut.result(timeout=self.commit_timeout_s)
        except concurrent.futures.TimeoutError:
            raise self._timeout_error() from None

    async def append_async(self, entry: LogEntry, *, frame: bytes | None = None) -> StoredRecord:
        """As ``append``, awaiting the commit without blocking the event loop."""
        if frame is not None:
            fields = await asyncio.to_thread(self._prepare, entry, frame)
        else:
            fields = self._prepare(entry, None)
        # One hand-off each way: the writer settles this loop future with call_soon_threadsafe
        # (no concurrent Future wrapped, shielded and waited for). A caller giving up (timeout,
        # cancellation) only drops its waiter; the queued record commits regardless.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[StoredRecord] = loop.create_future()
        if self._closed:
            raise ConflictError("the inspection log is closed; no record can be appended")
        held = self._held.get(loop)
        if held is None:
            # Records appended during this loop iteration go to the writer together, at its end:
            # one wake-up of the writer instead of one per record, and a frame's record and the
            # part record it completes (appended by the next task) share one transaction.
            held = self._held[loop] = []
            loop.call_soon(self._release_held, loop)
        held.append(_Pending(fields, loop=loop, waiter=waiter))
        if self.commit_timeout_s is None:
            return await waiter
        # A plain timer on the waiter (asyncio.timeout costs more, on every frame's path).
        timer = loop.call_later(self.commit_timeout_s, self._expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    def _expire(self, waiter: asyncio.Future[StoredRecord]) -> None:
        if not waiter.done():
            waiter.set_exception(self._timeout_error())

    def _timeout_error(self) -> InspectionError:
        # The record may still commit later: the log can hold a decision nobody was told, never
        # the reverse. The caller answers with a fail-safe reject.
        return InspectionError(f"the inspection log did not commit within {self.commit_timeout_s} s "
                               "(database locked or unreachable)")

    def _prepare(self, entry: LogEntry, frame: bytes | None) -> dict[str, Any]:
        if frame is not None:
            digest = sha256_hex(frame)
            if entry.frame_sha256 is not None and entry.frame_sha256 != digest:
                raise ValidationError(f"entry frame_sha256 {entry.frame_sha256!r} does not match the frame's bytes ({digest})")
            if entry.frame_sha256 is None:
                entry = dataclasses.replace(entry, frame_sha256=digest)
        fields = normalise_entry(entry)
        if frame is not None and self.frames is not None and self._keep_frame(entry):
            self.frames.put(frame, fields["frame_sha256"])
        return fields

    def _keep_frame(self, entry: LogEntry) -> bool:
        if entry.decision != "pass" or entry.failsafe_reason:
            return True
        if self.frame_sample_rate <= 0.0:
            return False
        with self._rng_lock:
            return self._rng.random() < self.frame_sample_rate

    def _release_held(self, loop: asyncio.AbstractEventLoop) -> None:
        held = self._held.pop(loop, None)
        if held and not self._commit_inline(held):
            self._enqueue(held)

    def _submit(self, pending: _Pending) -> None:
        if self._closed:
            raise ConflictError("the inspection log is closed; no record can be appended")
        self._enqueue(pending)

    def _enqueue(self, item: Any) -> None:
        with self._flight_lock:
            self._in_flight += 1
        self._queue.put(item)

    def _commit_inline(self, held: list[_Pending]) -> bool:
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
        if when is None or self.dialect != "sqlite" or self._closed or not when():
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

    def _commit_batch(self, batch: list[_Pending]) -> list[StoredRecord | BaseException]:
        """Each record's outcome: the stored record, or the error its caller gets."""
        try:
            return list(self._commit(batch))
        except Exception as exc:  # noqa: BLE001 -- every failure must reach the waiting callers
            if len(batch) > 1:
                # One bad record (e.g. a duplicate id) must not fail its neighbours.
                return [outcome for item in batch for outcome in self._commit_batch([item])]
            return [_as_domain_error(exc, batch[0].fields, self._dbapi)]

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

    def _commit(self, batch: Sequence[_Pending]) -> list[StoredRecord]:
        try:
            return self._commit_on(self._conn is not None, batch)
        except _StaleConnection:
            # The kept connection had died since the last transaction (database restart, idle
            # timeout) and nothing was written on it: start over once on a fresh, pre-pinged one.
            return self._commit_on(False, batch)

    def _commit_on(self, reused: bool, batch: Sequence[_Pending]) -> list[StoredRecord]:
        conn = self._writer_conn()
        try:
            return self._transaction(conn, batch, reused=reused)
        except BaseException:
            # After a failed transaction the connection may be broken (server gone, disk
            # error): the next batch starts on a fresh one.
            self._drop_conn()
            raise

    def _transaction(self, conn: Any, batch: Sequence[_Pending], *, reused: bool) -> list[StoredRecord]:
        """Append ``batch`` to the chain in one transaction on ``conn`` (rolled back on failure).

        The hot path of every decision: plain DBAPI calls on statements compiled once
        (``_WriterSql``). Through SQLAlchemy's Connection the same transaction cost ~0.4 ms of
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
                                          "missing (the database was altered outside the log; run `inspection audit verify`)")
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
        self.stats.largest_batch = max(self.stats.largest_batch, len(rows))
        return [row_to_record(r) for r in rows]

    # ------------------------------------------------------------------ reading
    @contextmanager
    def _write_tx(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(log_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only snapshot: every query on it sees the log as of its first read."""
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def get(self, inspection_id: str) -> StoredRecord:
        """The record with that id; NotFoundError when there is none."""
        with self.read() as conn:
            row = conn.execute(select(records).where(records.c.inspection_id == inspection_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"no log record has inspection id {inspection_id!r}")
        return row_to_record(row)

    def get_seq(self, seq: int) -> StoredRecord:
        with self.read() as conn:
            row = conn.execute(select(records).where(records.c.seq == seq)).mappings().first()
        if row is None:
            raise NotFoundError(f"no log record has seq {seq}")
        return row_to_record(row)

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last committed record ((0, genesis) for an empty log)."""
        with self.read() as conn:
            row = conn.execute(select(chain_head.c.seq, chain_head.c.hash).where(chain_head.c.id == 1)).one()
        return int(row.seq), str(row.hash)

    def verify(self, *, batch: int = 2000) -> chain.VerifyReport:
        """Walk the whole chain (streamed) and report the first tampered record."""
        with self.read() as conn:
            head = conn.execute(select(chain_head.c.seq, chain_head.c.hash).where(chain_head.c.id == 1)).one()

            def window(seq: int, n: int) -> list[chain.ChainRow]:
                q = select(records).where(records.c.seq >= seq).order_by(records.c.seq).limit(n)
                return [row_to_chain(r) for r in conn.execute(q).mappings()]

            result = conn.execution_options(yield_per=batch).execute(select(records).order_by(records.c.seq))
            try:
                rows = (row_to_chain(r) for r in result.mappings())
                return chain.verify_rows(rows, head_seq=int(head.seq), head_hash=str(head.hash), window=window)
            finally:
                result.close()

    def frame(self, sha256: str) -> bytes:
        """A stored frame's bytes; NotFoundError if frames are off, not sampled or pruned."""
        if self.frames is None:
            raise NotFoundError("this log keeps no frames (no frames directory configured)")
        return self.frames.read(sha256)

    def has_frame(self, sha256: str | None) -> bool:
        return bool(sha256) and self.frames is not None and self.frames.has(sha256)  # type: ignore[arg-type]

    def close(self) -> None:
        """Commit what is queued, stop the writer and release the database."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        for loop in list(self._held):
            self._release_held(loop)  # appended this loop iteration: accepted, so committed
        self._queue.put(_STOP)
        self._writer.join()
        conn, self._inline_conn = self._inline_conn, None
        if conn is not None:
            _invalidate(conn)
        self.engine.dispose()

    def __enter__(self) -> SqlInspectionLog:  # noqa: PYI034 -- not subclassed
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def _settle_all(batch: Sequence[_Pending], outcomes: Sequence[StoredRecord | BaseException]) -> None:
    """Hand each caller its outcome: threads directly, event loops with ONE wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[StoredRecord], StoredRecord | BaseException]]] = {}
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


def _settle_waiters(waiters: Sequence[tuple[asyncio.Future[StoredRecord], StoredRecord | BaseException]]) -> None:
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
    if isinstance(exc, (IntegrityError, dbapi.IntegrityError)) and "inspection_id" in str(getattr(exc, "orig", "")).lower() + str(exc).lower():
        return ConflictError(f"inspection id {fields['inspection_id']!r} is already in the log; ids must be unique")
    if isinstance(exc, (SQLAlchemyError, dbapi.Error)):
        log.error("inspection log commit failed: %s", exc)
        return InspectionError(f"the inspection log could not commit the record: {type(exc).__name__}: {exc}")
    return exc


def _sqlite_engine(url: str, synchronous: str) -> Engine:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise ConfigError(f"log url {url!r} names no SQLite file; use sqlite:///path/to/log.db (in-memory logs are not durable)")
    Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
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


def open_log(
    url: str,
    *,
    frames_dir: Path | None = None,
    frame_sample_rate: float = 0.0,
    schema: str | None = None,
    max_batch: int = 256,
    sqlite_synchronous: str = "FULL",
    rng: random.Random | None = None,
    commit_timeout_s: float | None = 30.0,
) -> SqlInspectionLog:
    """Open (creating or migrating as needed) the inspection log at ``url``.

    ``url`` is ``sqlite:///path/log.db`` or ``postgresql+psycopg://user@host/db``. Frames go
    to ``frames_dir``; for SQLite it defaults to ``<log>.frames`` beside the database file,
    for PostgreSQL frames are kept only when ``frames_dir`` is given. ``schema`` puts a
    PostgreSQL log in that schema (which must exist). ``append`` gives up
    waiting for its commit after ``commit_timeout_s`` (None: wait forever). Raises ConfigError on a bad url or
    setting, InspectionError when the database cannot be reached.
    """
    if not 0.0 <= frame_sample_rate <= 1.0:
        raise ConfigError(f"frame_sample_rate {frame_sample_rate!r} must be between 0 and 1")
    if commit_timeout_s is not None and not commit_timeout_s > 0:
        raise ConfigError(f"commit_timeout_s {commit_timeout_s!r} must be positive (or None to wait forever)")
    if max_batch < 1:
        raise ConfigError(f"max_batch {max_batch!r} must be at least 1")
    if sqlite_synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
        raise ConfigError(f"sqlite_synchronous {sqlite_synchronous!r} is not one of FULL, NORMAL, EXTRA")
    try:
        backend = make_url(url).get_backend_name()
    except Exception as exc:
        raise ConfigError(f"log url {url!r} is not a database url; allowed: sqlite:///path or postgresql+psycopg://...") from exc
    if backend == "sqlite":
        engine = _sqlite_engine(url, sqlite_synchronous.upper())
        if frames_dir is None:
            db = Path(make_url(url).database or "log.db").expanduser()
            frames_dir = db.with_name(db.name + ".frames")
    elif backend == "postgresql":
        engine = _postgres_engine(url, schema)
    else:
        raise ConfigError(f"log url {url!r} uses {backend!r}; allowed: sqlite, postgresql")
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(log_write=True)
            with conn.begin():
                if backend == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                upgrade_to_head(conn)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise InspectionError(f"cannot open the inspection log at {engine.url!r}: {type(exc).__name__}: {exc}") from exc
    frames = FrameStore(frames_dir) if frames_dir is not None else None
    return SqlInspectionLog(engine, frames=frames, frame_sample_rate=frame_sample_rate, max_batch=max_batch, rng=rng,
                            commit_timeout_s=commit_timeout_s)
