"""The SQL inspection log (SQLite or PostgreSQL) with group commit and a hash chain: the façade.

``SqlInspectionLog`` is what callers hold; it puts together the log's parts, one job each:

* ``rows``: an entry's column values, validated and normalised (what the chain hashes);
* ``framestore``: frames kept beside the log, content-addressed, fsynced before their record;
* ``writer``: the group-commit writer thread and inline commits (``statements``: its SQL);
* ``engines``: the SQLite/PostgreSQL engines and the migration to the newest schema;
* ``verify`` (the whole log: chain, head, frames, signed ``checkpoints``), ``faults`` (disk and
  database errors as domain errors);
* here: appending (frame sampling, the free-space floor, waiting for the commit), reads, health.

``append`` hands the record to the writer and returns only once it is durable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from inspection.errors import (
    ConfigError,
    InspectionError,
    LogIntegrityError,
    LogUnavailableError,
    NotFoundError,
    StorageError,
    ValidationError,
)
from inspection.log import chain, faults
from inspection.log.engines import backend_of, open_engine
from inspection.log.framestore import FrameStore, sha256_hex
from inspection.log.records import LogEntry, StoredRecord
from inspection.log.rows import normalise_entry, row_to_chain, row_to_record
from inspection.log.tables import chain_head, records
from inspection.log.writer import GroupCommitWriter, WriterStats

log = logging.getLogger(__name__)

# Where they lived before the store was split; callers keep importing them from here.
__all__ = ["SqlInspectionLog", "WriterStats", "normalise_entry", "open_log", "row_to_chain", "row_to_record"]


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
        min_free_bytes: int = 0,
    ) -> None:
        self.engine = engine
        #: Free-space floor of the frames' filesystem: below it passes' frames are not kept.
        self.min_free_bytes = min_free_bytes
        #: Frames that could not be stored (the record was committed without, saying why).
        self.frames_not_kept = 0
        self.last_frame_error: str | None = None
        self._free: tuple[float, int] = (0.0, 0)
        self.commit_timeout_s = commit_timeout_s
        self.dialect = engine.dialect.name
        self.frames = frames
        self.frame_sample_rate = frame_sample_rate
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._writer = GroupCommitWriter(engine, max_batch=max_batch)
        self.stats: WriterStats = self._writer.stats

    @property
    def inline_commit_when(self) -> Callable[[], bool] | None:
        """Set by a server: "nothing else is in flight", so a lone frame's records may commit
        on the event loop's thread (SQLite only; see ``GroupCommitWriter._commit_inline``)."""
        return self._writer.inline_commit_when

    @inline_commit_when.setter
    def inline_commit_when(self, when: Callable[[], bool] | None) -> None:
        self._writer.inline_commit_when = when

    # ------------------------------------------------------------------ appending
    def append(self, entry: LogEntry, *, frame: bytes | None = None, defect_map: bytes | None = None) -> StoredRecord:
        """Append durably; returns only after the transaction holding the record committed.

        ``frame`` (the encoded image) is stored content-addressed, fsynced before the record
        commits, when the record is not a pass, or for a pass at the sample rate.
        ``defect_map`` (the map's PNG, whose sha256 the entry's ``data.defect_map.sha256`` names)
        is stored the same way, with its frame.
        Raises ValidationError (bad entry, frame sha256 mismatch), ConflictError (duplicate
        inspection id, log closed) or InspectionError (the database failed).
        """
        fut = self._writer.submit(self._prepare(entry, frame, defect_map))
        try:
            return fut.result(timeout=self.commit_timeout_s)
        except TimeoutError:
            raise self._timeout_error() from None

    async def append_async(self, entry: LogEntry, *, frame: bytes | None = None,
                           defect_map: bytes | None = None) -> StoredRecord:
        """As ``append``, awaiting the commit without blocking the event loop."""
        if frame is not None:
            fields = await asyncio.to_thread(self._prepare, entry, frame, defect_map)
        else:
            fields = self._prepare(entry, None, defect_map)
        loop = asyncio.get_running_loop()
        waiter = self._writer.submit_from_loop(fields, loop)
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
        error = LogUnavailableError(f"the inspection log did not commit within {self.commit_timeout_s} s "
                                    "(database locked or unreachable)")
        self.stats.note_failure(error)
        return error

    def _prepare(self, entry: LogEntry, frame: bytes | None, defect_map: bytes | None = None) -> dict[str, Any]:
        if defect_map is not None:
            named = (entry.data or {}).get("defect_map")
            if not isinstance(named, dict) or named.get("sha256") != sha256_hex(defect_map):
                raise ValidationError("a defect map is stored only under the sha256 its entry names "
                                      "(data.defect_map.sha256)")
        if frame is not None:
            digest = sha256_hex(frame)
            if entry.frame_sha256 is not None and entry.frame_sha256 != digest:
                raise ValidationError(f"entry frame_sha256 {entry.frame_sha256!r} does not match "
                                      f"the frame's bytes ({digest})")
            if entry.frame_sha256 is None:
                entry = dataclasses.replace(entry, frame_sha256=digest)
        fields = normalise_entry(entry)
        if frame is not None and self.frames is not None and self._keep_frame(entry):
            try:
                self.frames.put(frame, fields["frame_sha256"])
            except StorageError as exc:
                # The decision is the evidence that must not be lost; the frame is secondary. The
                # record says why its frame is missing (and verify does not call it tampering).
                self.frames_not_kept += 1
                self.last_frame_error = f"{exc.failsafe_code}: {exc}"
                _mark(fields, "frame_not_kept", exc.failsafe_code)
            else:
                # Hashed into the record: a kept frame that later goes missing without a prune
                # record is tampering, which verify can then tell from a pass never sampled.
                _mark(fields, "frame_kept", True)
                if defect_map is not None:
                    self._keep_map(fields, defect_map)
        return fields

    def _keep_map(self, fields: dict[str, Any], defect_map: bytes) -> None:
        """Store a kept frame's defect map beside it (the same store, content-addressed)."""
        assert self.frames is not None
        try:
            self.frames.put(defect_map)
        except StorageError as exc:
            self.last_frame_error = f"{exc.failsafe_code}: {exc}"
            _mark(fields, "map_not_kept", exc.failsafe_code)
        else:
            _mark(fields, "map_kept", True)

    def _keep_frame(self, entry: LogEntry) -> bool:
        if entry.decision != "pass" or entry.failsafe_reason:
            return True
        if self.frame_sample_rate <= 0.0 or self.below_floor():
            return False
        with self._rng_lock:
            return self._rng.random() < self.frame_sample_rate

    def below_floor(self) -> bool:
        """Whether the frames' filesystem has less free space than ``min_free_bytes`` (checked at most
        every 0.5 s). False when there is no floor, no frame store, or the space cannot be read."""
        if self.min_free_bytes <= 0 or self.frames is None:
            return False
        return self.free_bytes() < self.min_free_bytes

    def free_bytes(self) -> int:
        """Free bytes on the frames' filesystem (cached for 0.5 s; -1 when unknown)."""
        at, free = self._free
        now = time.monotonic()
        if now - at > 0.5 and self.frames is not None:
            try:
                free = self.frames.free_bytes()
            except StorageError:
                free = -1
            self._free = (now, free)
        return free

    # ------------------------------------------------------------------ reading
    @contextmanager
    def _write_tx(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(log_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only snapshot: every query on it sees the log as of its first read.

        Raises LogUnavailableError (or StorageError) when the database fails.
        """
        try:
            with self.engine.connect() as conn:
                if self.dialect == "postgresql":
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            raise faults.from_db_error(exc, "reading the inspection log") from exc

    def get(self, inspection_id: str) -> StoredRecord:
        """The record with that id; NotFoundError when there is none."""
        with self.read() as conn:
            row = conn.execute(select(records).where(records.c.inspection_id == inspection_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"no log record has inspection id {inspection_id!r}")
        return row_to_record(row)

    def get_seq(self, seq: int) -> StoredRecord:
        """The record at position ``seq``; NotFoundError when there is none."""
        with self.read() as conn:
            row = conn.execute(select(records).where(records.c.seq == seq)).mappings().first()
        if row is None:
            raise NotFoundError(f"no log record has seq {seq}")
        return row_to_record(row)

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last committed record ((0, genesis) for an empty log).

        Raises LogIntegrityError when the chain-head row is missing.
        """
        with self.read() as conn:
            row = conn.execute(select(chain_head.c.seq, chain_head.c.hash).where(chain_head.c.id == 1)).first()
        if row is None:
            raise LogIntegrityError("the log's chain-head row is missing (altered outside the log); "
                                    "run `inspection audit verify`")
        return int(row.seq), str(row.hash)

    def verify(self, *, batch: int = 2000, check_frames: bool = True,
               checkpoint_check: Any = None) -> chain.VerifyReport:
        """Verify the whole log in one snapshot: the chain (streamed), its head, every frame a
        record names (re-hashed) and, given ``checkpoint_check`` (``checkpoints.make_check``),
        the signed checkpoints. Any state of the log gives a report; raises LogUnavailableError
        only when the database cannot be read.
        """
        from inspection.log.verify import verify_log

        with self.read() as conn:
            return verify_log(conn, frames=self.frames, check_frames=check_frames,
                              checkpoint_check=checkpoint_check, batch=batch)

    def probe_write(self) -> None:
        """A write transaction that changes nothing visible (the head row rewritten as it is), and a
        small file written, fsynced and removed in the frames directory: can the log commit now?

        Raises LogUnavailableError / StorageError / StorageFullError saying why not, LogIntegrityError
        when the chain-head row is gone.
        """
        # A probe waits at most a second for the lock (the writer waits 30 s): the health check
        # that calls it must not hang behind another process holding the database.
        try:
            with self.engine.connect() as conn:
                raw: Any = conn.connection.driver_connection
                if self.dialect == "sqlite":
                    raw.execute("PRAGMA busy_timeout=1000")  # on the driver: no SQLAlchemy autobegin
                try:
                    conn = conn.execution_options(log_write=True)
                    with conn.begin():
                        if self.dialect == "postgresql":
                            conn.exec_driver_sql("SET LOCAL lock_timeout = '1s'")
                        touched = conn.execute(text(f"UPDATE {chain_head.name} SET seq = seq WHERE id = 1")).rowcount
                finally:
                    if self.dialect == "sqlite":
                        raw.execute("PRAGMA busy_timeout=30000")
        except SQLAlchemyError as exc:
            raise faults.from_db_error(exc, "probing the inspection log") from exc
        if touched != 1:
            raise LogIntegrityError("the log's chain-head row is missing (altered outside the log); no record "
                                    "can be appended; run `inspection audit verify`")
        if self.frames is not None:
            self.frames.probe()

    def frame(self, sha256: str) -> bytes:
        """A stored frame's bytes, re-hashed; NotFoundError if frames are off, not sampled or pruned,
        LogIntegrityError when the stored file no longer hashes to ``sha256``."""
        if self.frames is None:
            raise NotFoundError("this log keeps no frames (no frames directory configured)")
        return self.frames.read(sha256)

    def has_frame(self, sha256: str | None) -> bool:
        """Whether the frame with that sha256 is kept (False for None, or when frames are off)."""
        return bool(sha256) and self.frames is not None and self.frames.has(sha256)  # type: ignore[arg-type]

    def close(self) -> None:
        """Commit what is queued, stop the writer and release the database."""
        if self._writer.close():
            self.engine.dispose()

    def __enter__(self) -> SqlInspectionLog:  # noqa: PYI034 -- not subclassed
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mark(fields: dict[str, Any], key: str, value: Any) -> None:
    data = json.loads(fields["data"]) if fields["data"] else {}
    data[key] = value
    fields["data"] = chain.canonical_json(data)


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
    min_free_bytes: int = 0,
) -> SqlInspectionLog:
    """Open (creating or migrating as needed) the inspection log at ``url``.

    ``url`` is ``sqlite:///path/log.db`` or ``postgresql+psycopg://user@host/db``. Frames go
    to ``frames_dir``; for SQLite it defaults to ``<log>.frames`` beside the database file,
    for PostgreSQL frames are kept only when ``frames_dir`` is given. ``schema`` puts a
    PostgreSQL log in that schema (which must exist). ``append`` gives up
    waiting for its commit after ``commit_timeout_s`` (None: wait forever). Below ``min_free_bytes``
    free on the frames' filesystem passes' frames are not kept. Raises ConfigError on a bad url or
    setting, InspectionError when the database cannot be reached, StorageError when the frames
    directory cannot be created.
    """
    if not 0.0 <= frame_sample_rate <= 1.0:
        raise ConfigError(f"frame_sample_rate {frame_sample_rate!r} must be between 0 and 1")
    if commit_timeout_s is not None and not commit_timeout_s > 0:
        raise ConfigError(f"commit_timeout_s {commit_timeout_s!r} must be positive (or None to wait forever)")
    if max_batch < 1:
        raise ConfigError(f"max_batch {max_batch!r} must be at least 1")
    if min_free_bytes < 0:
        raise ConfigError(f"min_free_bytes {min_free_bytes!r} must not be negative")
    if sqlite_synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
        raise ConfigError(f"sqlite_synchronous {sqlite_synchronous!r} is not one of FULL, NORMAL, EXTRA")
    engine = open_engine(url, schema=schema, sqlite_synchronous=sqlite_synchronous.upper())
    if frames_dir is None and backend_of(url) == "sqlite":
        db = Path(make_url(url).database or "log.db").expanduser()
        frames_dir = db.with_name(db.name + ".frames")
    frames = FrameStore(frames_dir) if frames_dir is not None else None
    return SqlInspectionLog(engine, frames=frames, frame_sample_rate=frame_sample_rate, max_batch=max_batch, rng=rng,
                            commit_timeout_s=commit_timeout_s, min_free_bytes=min_free_bytes)
