"""Records as table rows: an entry's column values (validated and normalised), a row read back.

``normalise_entry`` is what the writer stores and what the hash chain is computed over, so a
record read back (``row_to_record``) hashes to the same value the writer stored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, get_args

from sqlalchemy import RowMapping

from inspection.errors import ValidationError
from inspection.log import chain
from inspection.log.records import LogEntry, RecordKind, StoredRecord
from inspection.log.tables import ENTRY_COLUMNS, as_utc

_KINDS = frozenset(get_args(RecordKind))
#: The longest text each column stores (characters); settings that feed a column stay within it.
STR_LIMITS = {
    "inspection_id": 64, "station": 128, "camera": 128, "part_id": 256, "frame_sha256": 64, "decision": 32,
    "defect_class": 128, "model_name": 128, "model_version": 128, "model_sha256": 64, "failsafe_reason": 4000,
    "ref": 64, "actor": 128,
}


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
        if name in STR_LIMITS and value is not None:
            if not isinstance(value, str):
                raise ValidationError(f"log record field {name}={value!r} must be a string")
            if len(value) > STR_LIMITS[name]:
                raise ValidationError(f"log record field {name} is {len(value)} characters; "
                                      f"at most {STR_LIMITS[name]} allowed")
            if "\x00" in value:
                raise ValidationError(f"log record field {name}={value!r} contains a NUL character")
            _check_utf8(name, value)
        fields[name] = value
    if not entry.inspection_id:
        raise ValidationError("log record inspection_id must not be empty")
    fields["time"] = as_utc(entry.time)
    for name in ("threshold", "latency_ms"):
        fields[name] = chain.finite_float(name, fields[name])
    if entry.scores is not None:
        scores = {str(k): chain.finite_float(f"scores[{k!r}]", v) for k, v in dict(entry.scores).items()}
        fields["scores"] = chain.canonical_json(scores)
        _check_utf8("scores", fields["scores"])
    if entry.data is not None:
        text_ = chain.canonical_json(entry.data)
        if "\\u0000" in text_:
            raise ValidationError("log record data contains a NUL character")
        _check_utf8("data", text_)
        fields["data"] = text_
    return fields


def _check_utf8(name: str, text: str) -> None:
    # A lone surrogate is a Python str but no UTF-8: refused here, it would otherwise fail the
    # database's write later, as a log failure (the log reported unready) for one bad value.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(f"log record field {name} is not valid text ({exc.reason} at {exc.start}): "
                              "only UTF-8 encodable text is stored") from None


def row_to_record(row: Mapping[str, Any] | RowMapping) -> StoredRecord:
    """A stored row as a ``StoredRecord`` (JSON columns parsed)."""
    values = {name: row[name] for name in ENTRY_COLUMNS}
    values["scores"] = json.loads(values["scores"]) if values["scores"] is not None else None
    values["data"] = json.loads(values["data"]) if values["data"] is not None else None
    return StoredRecord(seq=row["seq"], entry=LogEntry(**values), prev_hash=row["prev_hash"], hash=row["hash"])


def row_to_chain(row: Mapping[str, Any] | RowMapping) -> chain.ChainRow:
    """A stored row as the hash chain sees it (the stored column values, unparsed)."""
    return chain.ChainRow(seq=row["seq"], prev_hash=row["prev_hash"], hash=row["hash"],
                          fields={name: row[name] for name in ENTRY_COLUMNS})
