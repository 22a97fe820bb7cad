"""Parts whose views are in the log but whose part record is not: what a crash leaves behind.

A frame is answered once its own inspection record is durable; the part record that its view
completes commits just after (often in the same transaction, but not always: a reject's frame
is written first, and a part decided at its deadline has its own commit). A process killed in
between, or while a part still waited for other cameras' views, leaves views without a part
decision. ``find_undecided`` finds them with one query; a server appends the fail-safe part
record for each before it serves again (``serving.parts.repair_undecided``).

A view counts as undecided when no part record of its station and part id follows it. Late
views (logged after their part was decided, ``failsafe_reason`` ``late_view: ...``) are not:
their part record precedes them. Only the newest ``window`` records are searched: a part is
open for at most its station's deadline, so its views are among the last records before a crash
(the default window covers hours of a busy line); the search stays one indexed query however
long the log is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import and_, exists, not_, or_, select

from inspection.log.records import StoredRecord
from inspection.log.rows import row_to_record
from inspection.log.store import SqlInspectionLog
from inspection.log.tables import records

LATE_VIEW_PREFIX = "late_view:"


@dataclass
class UndecidedPart:
    """A station's part with views in the log and no part record after them."""

    station: str
    part_id: str
    views: list[StoredRecord] = field(default_factory=list)


def find_undecided(log: SqlInspectionLog, *, stations: Iterable[str], window: int,
                   up_to_seq: int | None = None) -> list[UndecidedPart]:
    """The undecided parts of ``stations`` among the last ``window`` records (up to ``up_to_seq``),
    oldest first, each with its views in log order.

    Raises:
        LogUnavailableError: the log cannot be read.
    """
    names = sorted(set(stations))
    if not names or window <= 0:
        return []
    view, part = records.alias("v"), records.alias("p")
    with log.read() as conn:
        last = up_to_seq
        if last is None:
            last = conn.execute(select(records.c.seq).order_by(records.c.seq.desc()).limit(1)).scalar() or 0
        since = max(0, last - window)
        decided_after = exists().where(and_(part.c.kind == "part", part.c.station == view.c.station,
                                            part.c.part_id == view.c.part_id, part.c.seq > view.c.seq,
                                            part.c.seq <= last))
        query = (
            select(view)
            .where(view.c.kind == "inspection", view.c.seq > since, view.c.seq <= last,
                   view.c.station.in_(names), view.c.part_id.is_not(None),
                   or_(view.c.failsafe_reason.is_(None), not_(view.c.failsafe_reason.like(f"{LATE_VIEW_PREFIX}%"))),
                   ~decided_after)
            .order_by(view.c.seq)
        )
        rows = [row_to_record(r) for r in conn.execute(query).mappings()]
    parts: dict[tuple[str, str], UndecidedPart] = {}
    for rec in rows:
        station, part_id = rec.entry.station or "", rec.entry.part_id or ""
        parts.setdefault((station, part_id), UndecidedPart(station, part_id)).views.append(rec)
    return list(parts.values())
