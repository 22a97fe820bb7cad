"""Verifying a whole log: the chain, its head, the frames, the signed checkpoints. Never crashes.

``verify_log`` reads the log in one read snapshot and returns a ``VerifyReport`` for any state
the database is found in: a missing chain-head row, missing or duplicate records, rows whose
values cannot be read back, an empty log. Rows are read raw (the driver's values) and decoded
one by one with the columns' own result processors, so one garbled row is reported by its seq
instead of aborting the walk. Frames are re-hashed; signed checkpoints (``checkpoints``) are
checked against the records they name. Only a database that cannot be reached at all raises.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from inspection.errors import InspectionError, ValidationError
from inspection.log import chain
from inspection.log.faults import from_db_error
from inspection.log.framestore import FrameStore, check_sha
from inspection.log.tables import ENTRY_COLUMNS, chain_head, records

log = logging.getLogger(__name__)

#: Problems listed per category beyond the first (a report stays readable on a wrecked log).
MAX_PROBLEMS = 100
_COLUMNS = ("seq", *ENTRY_COLUMNS, "prev_hash", "hash")
_TIME = _COLUMNS.index("time")
#: How SQLAlchemy's SQLite DateTime writes a (naive UTC) time: the only spelling the log stores.
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


class _RowReader:
    """Decodes raw driver rows of ``inspection_records`` as ``select(records)`` would, row by row."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.sql = f"SELECT {', '.join(_COLUMNS)} FROM {records.name}"
        self._processors: list[Callable[[Any], Any] | None] | None = None

    def _set_processors(self, description: Sequence[Any] | None) -> None:
        # The columns' own result processors, for the type codes the driver reports (as a
        # select(records) would apply them), so the values hash exactly as the writer stored them.
        dialect = self.conn.dialect
        codes = [d[1] for d in description] if description else [None] * len(_COLUMNS)
        self._processors = [records.c[name].type.dialect_impl(dialect).result_processor(dialect, code)
                            for name, code in zip(_COLUMNS, codes, strict=True)]

    def decode(self, raw: Sequence[Any]) -> chain.ChainRow | chain.UnreadableRow:
        seq_raw = raw[0]
        seq = seq_raw if isinstance(seq_raw, int) and not isinstance(seq_raw, bool) else None
        try:
            assert self._processors is not None
            values = [p(v) if p is not None and v is not None else v
                      for p, v in zip(self._processors, raw, strict=True)]
        except Exception as exc:  # noqa: BLE001 -- any garbage in a typed column is a finding, not a crash
            return chain.UnreadableRow(seq, f"{type(exc).__name__}: {exc}"[:300])
        row = dict(zip(_COLUMNS, values, strict=True))
        if seq is None:
            return chain.UnreadableRow(None, f"its seq is {seq_raw!r}, not a whole number")
        if not isinstance(row["prev_hash"], str) or not isinstance(row["hash"], str):
            return chain.UnreadableRow(seq, "its prev_hash or hash is missing")
        stored_time = raw[_TIME]
        if isinstance(stored_time, str) and isinstance(row["time"], datetime):
            # SQLite keeps times as text, and filters and sorts compare that text; the chain hashes
            # the instant it parses to. Another spelling of the same instant (an offset, a "T")
            # hashes the same but drops the record out of every time window: only the writer's own
            # spelling is the record as appended.
            written = row["time"].replace(tzinfo=None).strftime(_SQLITE_TIME)
            if stored_time != written:
                return chain.UnreadableRow(seq, f"its time is stored as {stored_time!r}, which the log never "
                                                f"writes (it writes {written!r}): the text was edited", "edited")
        return chain.ChainRow(seq=seq, prev_hash=row["prev_hash"], hash=row["hash"],
                              fields={name: row[name] for name in ENTRY_COLUMNS})

    def rows(self, *, batch: int, where: str = "", params: dict[str, Any] | None = None,
             limit: int | None = None) -> Iterator[chain.ChainRow | chain.UnreadableRow]:
        sql = self.sql + (f" WHERE {where}" if where else "") + " ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        result = self.conn.execution_options(yield_per=batch).exec_driver_sql(sql, params or ())
        try:
            if self._processors is None:
                self._set_processors(result.cursor.description if result.cursor is not None else None)
            for raw in result:
                yield self.decode(tuple(raw))
        finally:
            result.close()

    def window(self, seq: int, n: int) -> list[chain.ChainRow]:
        mark = "?" if self.conn.dialect.paramstyle == "qmark" else "%s"
        rows = self.rows(batch=n, where=f"seq >= {mark}", params=(seq,), limit=n)  # type: ignore[arg-type]
        return [r for r in rows if isinstance(r, chain.ChainRow)]


def _head(conn: Connection) -> tuple[int | None, str | None, str | None]:
    """(seq, hash, problem): the chain head, or None and why not."""
    rows = conn.exec_driver_sql(f"SELECT seq, hash FROM {chain_head.name} WHERE id = 1").fetchall()
    if not rows:
        return None, None, "the chain-head row (inspection_chain_head, id 1) is missing"
    seq, hash_ = rows[0]
    if not isinstance(seq, int) or not isinstance(hash_, str):
        return None, None, f"the chain-head row is unreadable (seq {seq!r}, hash {hash_!r})"
    return seq, hash_, None


def verify_log(
    conn: Connection,
    *,
    frames: FrameStore | None = None,
    check_frames: bool = True,
    checkpoint_check: Callable[[Connection, int | None], tuple[list[chain.Problem], int, list[str]]] | None = None,
    batch: int = 2000,
) -> chain.VerifyReport:
    """Verify the log on ``conn`` (a read snapshot): chain, head, frames and checkpoints.

    ``checkpoint_check(conn, last_seq)`` (from ``inspection.log.checkpoints``) returns the
    checkpoint problems, how many checkpoints were checked, and notes. Raises
    LogUnavailableError only when the database cannot be read at all.
    """
    try:
        return _verify(conn, frames=frames if check_frames else None, checkpoint_check=checkpoint_check,
                       batch=batch, frames_skipped=frames is not None and not check_frames)
    except SQLAlchemyError as exc:
        raise from_db_error(exc, "reading the log to verify it") from exc


def _verify(conn: Connection, *, frames: FrameStore | None, frames_skipped: bool,
            checkpoint_check: Callable[[Connection, int | None], tuple[list[chain.Problem], int, list[str]]] | None,
            batch: int) -> chain.VerifyReport:
    notes: list[str] = []
    inspector = sa_inspect(conn)
    if not inspector.has_table(records.name):
        problem = chain.Problem("unreadable", None, f"the records table ({records.name}) is missing: "
                                                    "every record was removed with it")
        return _report(chain.VerifyReport(ok=True, records=0, head_seq=None, head_hash=None), [problem], 0, 0, notes)
    head_seq: int | None = None
    head_hash: str | None = None
    head_problem: str | None = "the chain-head table (inspection_chain_head) is missing"
    if inspector.has_table(chain_head.name):
        head_seq, head_hash, head_problem = _head(conn)
    reader = _RowReader(conn)
    walk = chain.verify_rows(reader.rows(batch=batch), head_seq=head_seq, head_hash=head_hash, window=reader.window)
    problems: list[chain.Problem] = list(walk.problems)
    if head_problem is not None:
        last = walk.records if walk.ok else None
        span = f"records 1..{last} chain correctly, but" if last else "and"
        problems.insert(0, chain.Problem("head_missing", None,
                                         f"{head_problem}: {span} a removed or added tail cannot be ruled out "
                                         "without it (signed checkpoints can)"))
    last_seq = walk.records if walk.ok else None
    frame_problems: list[chain.Problem] = []
    frames_checked = 0
    if frames is not None:
        frame_problems, frames_checked = _check_frames(conn, reader, frames, batch)
    elif frames_skipped:
        notes.append("frames were not re-hashed (skipped on request)")
    else:
        notes.append("frames were not checked: this log keeps no frames here (no frames directory)")
    cp_problems: list[chain.Problem] = []
    cp_checked = 0
    if checkpoint_check is not None:
        cp_problems, cp_checked, cp_notes = checkpoint_check(conn, last_seq)
        notes.extend(cp_notes)
    else:
        notes.append("signed checkpoints were not checked (no public key given)")
    return _report(walk, problems + frame_problems + cp_problems, frames_checked, cp_checked, notes)


def _report(walk: chain.VerifyReport, problems: list[chain.Problem], frames_checked: int, cp_checked: int,
            notes: list[str]) -> chain.VerifyReport:
    if not problems:
        return chain.VerifyReport(ok=True, records=walk.records, head_seq=walk.head_seq, head_hash=walk.head_hash,
                                  frames_checked=frames_checked, checkpoints_checked=cp_checked, notes=tuple(notes))
    first = problems[0]
    return chain.VerifyReport(ok=False, records=walk.records, head_seq=walk.head_seq, head_hash=walk.head_hash,
                              first_bad_seq=first.seq, tampering=first.kind, detail=first.detail,
                              problems=tuple(problems), frames_checked=frames_checked,
                              checkpoints_checked=cp_checked, notes=tuple(notes))


def _data(row: chain.ChainRow) -> dict[str, Any]:
    raw = row.fields.get("data")
    try:
        data = json.loads(raw) if raw else {}
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _blobs(row: chain.ChainRow) -> list[tuple[str, Any, bool]]:
    """(what, sha256, stored for sure) of every file a record names: its frame and, for a reject
    with a defect map, the map. "Stored for sure" (``frame_kept`` / ``map_kept``) is hashed into
    the record: a pass's frame is kept only at the sample rate, so only those can go missing."""
    data = _data(row)
    out = [("frame", row.fields.get("frame_sha256"), data.get("frame_kept") is True)]
    mapping = data.get("defect_map")
    if isinstance(mapping, dict) and "sha256" in mapping:
        out.append(("defect map", mapping.get("sha256"), data.get("map_kept") is True))
    return out


def _check_frames(conn: Connection, reader: _RowReader, frames: FrameStore,
                  batch: int) -> tuple[list[chain.Problem], int]:
    """Re-hash every frame (and defect map) a record names; a reject's file missing without a
    prune record is tampering."""
    problems: list[chain.Problem] = []
    checked = 0
    verdicts: dict[str, str | None] = {}  # sha256 -> problem, for files named by several records
    pruned: dict[str, int] | None = None
    for row in reader.rows(batch=batch, where="frame_sha256 IS NOT NULL"):
        if not isinstance(row, chain.ChainRow):
            continue  # reported by the chain walk
        rid = row.fields.get("inspection_id")
        for what, sha, kept in _blobs(row):
            try:
                check_sha(sha)
            except ValidationError:
                problems.append(chain.Problem("edited", row.seq, f"record {row.seq} names {what} {sha!r}, "
                                                                 "which is not a sha256", rid))
                continue
            assert isinstance(sha, str)
            if sha not in verdicts:
                try:
                    verdicts[sha] = frames.check(sha)
                except InspectionError as exc:
                    verdicts[sha] = f"unreadable ({exc})"
                if len(verdicts) > 200_000:  # bounded memory on a long log; a repeat is only re-hashed
                    verdicts.clear()
                checked += 1
            verdict = verdicts.get(sha)
            if verdict is None:
                continue
            if verdict == "missing":
                if not kept:
                    continue  # a pass's frame is kept only at the sample rate
                if pruned is None:
                    pruned = _pruned(conn)
                if pruned.get(sha, 0) > row.seq:
                    continue  # removed by retention after this record kept it
                problems.append(chain.Problem("frame_missing", row.seq,
                                              f"record {row.seq} ({rid}) names {what} {sha[:12]}..., which is not "
                                              "stored and no prune record removed it: it was deleted", rid))
            else:
                problems.append(chain.Problem("frame_altered", row.seq,
                                              f"record {row.seq} ({rid}) names {what} {sha[:12]}..., whose stored "
                                              f"bytes no longer hash to it ({verdict}): it was swapped or edited",
                                              rid))
        if len(problems) >= MAX_PROBLEMS:
            problems.append(chain.Problem("frame_altered", None, f"more than {MAX_PROBLEMS} frame problems; "
                                                                 "the rest are not listed"))
            break
    return problems, checked


def _pruned(conn: Connection, *, sha: str | None = None, after_seq: int = 0) -> dict[str, int]:
    """sha256 -> the seq of the latest ``prune`` record listing it (read only when a kept frame is
    missing; ``sha``/``after_seq`` narrow the read to one frame and to prunes after a record).

    Why the seq: a frame pruned once can be kept again by a later record (the same bytes, e.g. a
    black frame) and stored anew; only a prune *after* a record excuses that record's missing frame.
    """
    out: dict[str, int] = {}
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = f"SELECT seq, data FROM {records.name} WHERE kind = 'prune' AND seq > {mark}"
    params: tuple[Any, ...] = (after_seq,)
    if sha is not None:
        sql += f" AND data LIKE {mark}"
        params += (f"%{sha}%",)
    for seq, data in conn.exec_driver_sql(sql, params):
        try:
            removed = json.loads(data).get("removed", [])
        except (TypeError, ValueError, AttributeError):
            continue
        for r in removed:
            if isinstance(r, str) and isinstance(seq, int) and seq > out.get(r, 0):
                out[r] = seq
    return out


def pruned_after(conn: Connection, sha: str, seq: int) -> bool:
    """Whether a ``prune`` record after record ``seq`` removed frame ``sha`` (retention, not tampering)."""
    return sha in _pruned(conn, sha=sha, after_seq=seq)
