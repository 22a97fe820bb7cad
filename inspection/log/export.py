"""Streaming export of records as CSV or JSON Lines.

Rows come through a server-side cursor (PostgreSQL) or SQLite's stepping cursor, ``yield_per``
at a time, and are written out chunk by chunk: exporting a month of records holds one chunk
in memory, not the month.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any, Literal, TextIO

from inspection.errors import ValidationError
from inspection.log.chain import canonical_time
from inspection.log.query import RecordFilter, select_records
from inspection.log.records import StoredRecord
from inspection.log.store import SqlInspectionLog
from inspection.log.tables import ENTRY_COLUMNS

ExportFormat = Literal["csv", "jsonl"]
FORMATS: tuple[str, ...] = ("csv", "jsonl")
COLUMNS = ("seq", *ENTRY_COLUMNS, "prev_hash", "hash")
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
#: A spreadsheet runs a cell starting with one of these as a formula (CWE-1236).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name == "time":
        return canonical_time(value)
    return value


def _csv_cell(name: str, value: Any) -> Any:
    """``_cell`` for CSV: text from the line (a part id, a failure reason) that a spreadsheet would
    run as a formula gets a leading apostrophe, shown as text, as OWASP advises. Only in CSV, which
    auditors open in spreadsheets; JSON Lines stays byte-exact to the hashed values."""
    value = _cell(name, value)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def record_dict(rec: StoredRecord) -> dict[str, Any]:
    """A stored record as plain JSON-ready values (times as UTC ISO-8601 with ``Z``)."""
    out: dict[str, Any] = {"seq": rec.seq}
    for name in ENTRY_COLUMNS:
        out[name] = _cell(name, getattr(rec.entry, name))
    out["prev_hash"] = rec.prev_hash
    out["hash"] = rec.hash
    return out


def iter_export(
    log: SqlInspectionLog,
    fmt: str,
    flt: RecordFilter | None = None,
    *,
    chunk_rows: int = 500,
) -> Iterator[str]:
    """Yield the export of the records matching ``flt`` (ascending seq) in text chunks.

    JSON columns (scores, data) are embedded as JSON in JSON Lines and as JSON text in CSV. In CSV a
    text cell that a spreadsheet would run as a formula starts with an apostrophe (``_csv_cell``).
    Raises ValidationError on an unknown format (before anything is read).
    """
    if fmt not in FORMATS:
        raise ValidationError(f"export format {fmt!r} is not one of {list(FORMATS)}")
    q = select_records(flt or RecordFilter(), order="asc")
    return _generate(log, fmt, q, chunk_rows)


def _generate(log: SqlInspectionLog, fmt: str, q: Any, chunk_rows: int) -> Iterator[str]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(COLUMNS)
    n = 0
    with log.read() as conn:
        result = conn.execution_options(yield_per=chunk_rows).execute(q)
        try:
            for row in result.mappings():
                if writer is not None:
                    writer.writerow([_csv_cell(c, row[c]) for c in COLUMNS])
                else:
                    obj = {c: _cell(c, row[c]) for c in COLUMNS}
                    for c in ("scores", "data"):
                        if obj[c] is not None:
                            obj[c] = json.loads(obj[c])
                    buf.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
                    buf.write("\n")
                n += 1
                if n % chunk_rows == 0:
                    yield buf.getvalue()
                    buf.seek(0)
                    buf.truncate()
        finally:
            result.close()
    if buf.tell():
        yield buf.getvalue()


def export_records(log: SqlInspectionLog, fmt: str, out: TextIO, flt: RecordFilter | None = None) -> int:
    """Write the export to ``out``; returns the number of characters written."""
    written = 0
    for chunk in iter_export(log, fmt, flt):
        out.write(chunk)
        written += len(chunk)
    return written
