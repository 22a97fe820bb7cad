"""Finding records: filters an auditor asks for, and cursor pagination by seq."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import Select, and_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from inspection.errors import ValidationError
from inspection.log.records import RecordKind, StoredRecord
from inspection.log.store import SqlInspectionLog, row_to_record
from inspection.log.tables import records

#: Filter fields matched exactly against their column.
_EXACT_FIELDS = ("station", "camera", "part_id", "decision", "defect_class", "model_name", "model_version", "kind",
                 "ref")

Order = Literal["asc", "desc"]
MAX_LIMIT = 1000


def model_notation(name: str | None, version: str | None) -> str | None:
    """The one notation for a model everywhere (API, CLI, pages): ``name/version``, which
    ``RecordFilter(model_version=...)`` also takes; the version alone when no name is known."""
    if name and version:
        return f"{name}/{version}"
    return version or None


#: The decisions records carry (``inspection.decisions.Verdict``; a disposition overrides to one).
DECISIONS = ("pass", "reject")


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """Every field is optional; set fields are ANDed. Times are inclusive-from, exclusive-to."""

    time_from: datetime | None = None
    time_to: datetime | None = None
    station: str | None = None
    camera: str | None = None
    part_id: str | None = None
    decision: str | None = None
    defect_class: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    kind: str | None = None
    ref: str | None = None

    def __post_init__(self) -> None:
        # One model notation everywhere: ``name/version`` (or ``name@version``) names both fields.
        given = self.model_version or ""
        for sep in ("/", "@"):
            if sep in given:
                name, _, version = given.partition(sep)
                if self.model_name not in (None, name):
                    raise ValidationError(f"model_version {given!r} names model {name!r} but model_name is "
                                          f"{self.model_name!r}")
                object.__setattr__(self, "model_name", name or None)  # frozen: set once, here
                object.__setattr__(self, "model_version", version or None)
                break
        for name in _EXACT_FIELDS:
            value = getattr(self, name)
            if value is not None and "\x00" in value:
                raise ValidationError(f"filter {name}={value!r} contains a NUL character")
        for name in ("time_from", "time_to"):
            value = getattr(self, name)
            if value is not None:
                try:
                    _aware(value)
                except OverflowError:
                    raise ValidationError(
                        f"filter {name}={value.isoformat()} is outside the representable UTC range") from None
        if self.kind is not None and self.kind not in get_args(RecordKind):
            raise ValidationError(f"kind {self.kind!r} is not one of {sorted(get_args(RecordKind))}")
        if self.decision is not None and self.decision not in DECISIONS:  # else an empty answer, as if none
            raise ValidationError(f"decision {self.decision!r} is not one of {list(DECISIONS)}")
        if self.time_from and self.time_to and _aware(self.time_from) >= _aware(self.time_to):
            raise ValidationError(f"time_from {self.time_from.isoformat()} must be before "
                                  f"time_to {self.time_to.isoformat()}")

    def where(self) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        if self.time_from is not None:
            clauses.append(records.c.time >= self.time_from)
        if self.time_to is not None:
            clauses.append(records.c.time < self.time_to)
        for name in _EXACT_FIELDS:
            value = getattr(self, name)
            if value is not None:
                clauses.append(records.c[name] == value)
        if self.decision is not None and self.kind is None:
            # "Rejected parts and frames": a disposition that overrides to reject is not one
            # (ask for kind=disposition to find those).
            clauses.append(records.c.kind.in_(("inspection", "part")))
        return clauses


def _aware(value: datetime) -> datetime:
    from inspection.log.tables import as_utc

    return as_utc(value)


@dataclass(frozen=True, slots=True)
class Page:
    records: list[StoredRecord]
    next_cursor: int | None  # pass back as ``cursor`` for the next page; None at the end


def select_records(flt: RecordFilter, *, cursor: int | None = None, order: Order = "desc") -> Select[Any]:
    """The SELECT for ``flt`` in seq order, starting after ``cursor`` (a seq)."""
    if order not in ("asc", "desc"):
        raise ValidationError(f"order {order!r} is not one of ['asc', 'desc']")
    clauses = flt.where()
    if cursor is not None:
        clauses.append(records.c.seq < cursor if order == "desc" else records.c.seq > cursor)
    q = select(records)
    if clauses:
        q = q.where(and_(*clauses))
    return q.order_by(records.c.seq.desc() if order == "desc" else records.c.seq.asc())


def query_records(
    log: SqlInspectionLog,
    flt: RecordFilter | None = None,
    *,
    cursor: int | None = None,
    limit: int = 100,
    order: Order = "desc",
) -> Page:
    """One page of records matching ``flt`` (newest first by default).

    Raises ValidationError on a limit outside 1..1000, a negative cursor or a bad order.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit {limit} must be between 1 and {MAX_LIMIT}")
    if cursor is not None and cursor < 0:
        raise ValidationError(f"cursor {cursor} must be a record seq (>= 0)")
    q = select_records(flt or RecordFilter(), cursor=cursor, order=order).limit(limit + 1)
    with log.read() as conn:
        rows = [row_to_record(r) for r in conn.execute(q).mappings()]
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(records=rows, next_cursor=rows[-1].seq if more and rows else None)


def count_records(log: SqlInspectionLog, flt: RecordFilter | None = None) -> int:
    """How many records match ``flt`` (the audit page's total; one indexed COUNT where the
    filter allows, a scan otherwise: asked once per search, not per page)."""
    from sqlalchemy import func

    clauses = (flt or RecordFilter()).where()
    q = select(func.count()).select_from(records)
    if clauses:
        q = q.where(and_(*clauses))
    with log.read() as conn:
        return int(conn.execute(q).scalar_one())


#: The ``event`` record a server appends when its frame store is new to the log (``data.event``).
FRAME_STORE_EVENT = "frame_store"


def recorded_frames_dir(log: SqlInspectionLog) -> str | None:
    """The frame store the newest server recorded in this log (``None``: none recorded, or the log
    cannot be read here: ``audit verify`` then reports what it finds).

    Servers append a ``frame_store`` event when the directory they keep frames in differs from
    the last one recorded, so a command reading the log later (``inspection audit show``) finds
    the frames without being told where the server kept them. One query for the newest such
    event: other events (one per labelled image imported) may be many more than a page, and a
    record other than the event may hold values that no longer read back.
    """
    pattern = '%"event":"' + FRAME_STORE_EVENT.replace("_", "\\_") + '"%'
    query = (select(records.c.data).where(records.c.kind == "event", records.c.data.like(pattern, escape="\\"))
             .order_by(records.c.seq.desc()).limit(1))
    try:
        with log.engine.connect() as conn:
            text = conn.execute(query).scalar()
        data = json.loads(text) if isinstance(text, str) else None
    except (SQLAlchemyError, ValueError):
        return None
    value = data.get("frames_dir") if isinstance(data, dict) and data.get("event") == FRAME_STORE_EVENT else None
    return value if isinstance(value, str) else None
