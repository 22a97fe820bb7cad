"""The hash chain: canonical serialisation of a record, its hash, and the walk that verifies it.

Each record's hash is ``sha256(prev_hash + canonical(record))`` where the canonical form is
compact, key-sorted JSON of every entry field *and* the record's ``seq``. Changing any field,
moving a record to another position, removing one or slipping one in therefore breaks the
chain at a place ``verify_rows`` can name, and (from which stored hash still matches which
position) it can usually tell what was done.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from inspection.errors import ValidationError

GENESIS = "0" * 64
#: Bumped if the canonical form ever changes; part of every hash.
CHAIN_VERSION = "v1"

Tampering = Literal["edited", "deleted", "inserted", "reordered", "unknown",
                    # found by ``inspection.log.verify`` (the whole log: rows, head, frames, checkpoints)
                    "duplicate", "unreadable", "head_missing", "frame_altered", "frame_missing",
                    "checkpoint_mismatch", "checkpoint_forged", "truncated"]


def canonical_time(value: datetime) -> str:
    """UTC ISO-8601 with microseconds and a ``Z``: one spelling per instant."""
    from inspection.log.tables import as_utc

    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


#: Built once: ``json.dumps`` with these options constructs a new encoder on every call, and
#: this runs several times for every frame served.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value: Any) -> str:
    """Compact, key-sorted JSON; NaN and infinities are refused (they have no JSON spelling)."""
    try:
        return _CANONICAL.encode(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"log record field is not plain JSON ({exc}); "
                              "allowed: str, finite numbers, bool, None, lists, dicts") from exc


def finite_float(name: str, value: Any) -> float | None:
    """``value`` as a float (ints become floats so both stores read back the same spelling)."""
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"log record field {name}={value!r} is not a number") from exc
    if not math.isfinite(out):
        raise ValidationError(f"log record field {name}={value!r} must be a finite number")
    # -0.0 hashes as "-0.0" but SQLite reads it back as 0.0: the record would fail verify untouched.
    return out + 0.0


def record_hash(seq: int, prev_hash: str, fields: Mapping[str, Any]) -> str:
    """The hash of a record from its stored column values (``time`` as datetime, JSON as text)."""
    body = {k: (canonical_time(v) if isinstance(v, datetime) else v) for k, v in fields.items()}
    body["seq"] = seq
    payload = CHAIN_VERSION + prev_hash + canonical_json(body)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainRow:
    """What verification needs from one stored row."""

    seq: int
    prev_hash: str
    hash: str
    fields: Mapping[str, Any]

    def hash_at(self, seq: int) -> str:
        return record_hash(seq, self.prev_hash, self.fields)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing found wrong, naming the record (``seq``, and its id when it could be read)."""

    kind: Tampering
    seq: int | None
    detail: str
    inspection_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seq": self.seq, "inspection_id": self.inspection_id, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of walking the chain (and, from ``inspection.log.verify``, frames and checkpoints).

    ``first_bad_seq``/``tampering``/``detail`` describe the first problem; ``problems`` lists
    every one found (the chain walk stops at its first break; frames and checkpoints are all
    checked). ``head_seq``/``head_hash`` are None when the chain-head row is missing.
    """

    ok: bool
    records: int  # rows checked before the first problem (all of them when ok)
    head_seq: int | None
    head_hash: str | None
    first_bad_seq: int | None = None
    tampering: Tampering | None = None
    detail: str = ""
    problems: tuple[Problem, ...] = ()
    frames_checked: int = 0
    checkpoints_checked: int = 0
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "records": self.records, "head_seq": self.head_seq, "head_hash": self.head_hash,
            "first_bad_seq": self.first_bad_seq, "tampering": self.tampering, "detail": self.detail,
            "problems": [p.as_dict() for p in self.problems], "frames_checked": self.frames_checked,
            "checkpoints_checked": self.checkpoints_checked, "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class UnreadableRow:
    """A stored row whose values cannot be read back (garbage in a typed column, a NULL seq, ...),
    or (``kind`` "edited") whose stored text reads back as values the chain cannot vouch for."""

    seq: int | None
    detail: str
    kind: Tampering = "unreadable"


#: How far from its position a moved record is looked for, and how many rows after the
#: first problem are read to tell a reorder from a deletion or an insertion.
WINDOW = 64


def verify_rows(
    rows: Iterable[ChainRow | UnreadableRow],
    *,
    head_seq: int | None,
    head_hash: str | None,
    window: Callable[[int, int], Sequence[ChainRow]],
) -> VerifyReport:
    """Walk ``rows`` (ascending seq) and report the first record that was tampered with.

    ``window(seq, n)`` returns up to ``n`` rows with seq >= ``seq`` (used only after a
    problem is found, to classify it). ``head_seq``/``head_hash`` come from the chain-head
    row and catch a removed or added tail; None (the row is missing) skips that check, and
    the caller reports the missing head.
    """
    expected_seq, prev_hash, checked = 1, GENESIS, 0
    for row in rows:
        if isinstance(row, UnreadableRow):
            at = row.seq if row.seq is not None else expected_seq
            if row.kind != "unreadable":
                return _bad(checked, head_seq, head_hash, at, row.kind, f"record {at}: {row.detail}")
            return _bad(checked, head_seq, head_hash, at, "unreadable",
                        f"record {row.seq if row.seq is not None else '(no seq)'} cannot be read: {row.detail}")
        if row.seq == expected_seq - 1 and expected_seq > 1:
            return _bad(checked, head_seq, head_hash, row.seq, "duplicate",
                        f"seq {row.seq} is stored twice: a record was slipped in under an existing number")
        try:
            own = row.hash_at(row.seq)
        except ValidationError as exc:  # bytes, NaN or infinity written into a column: a finding, not a crash
            return _bad(checked, head_seq, head_hash, row.seq, "unreadable", f"record {row.seq} cannot be read: {exc}")
        if row.seq != expected_seq or row.prev_hash != prev_hash or own != row.hash:
            return _classify(row, expected_seq, prev_hash, checked, head_seq, head_hash, window)
        expected_seq, prev_hash, checked = row.seq + 1, row.hash, checked + 1
    last_seq = expected_seq - 1
    if head_seq is None or head_hash is None:
        return VerifyReport(ok=True, records=checked, head_seq=None, head_hash=None)
    if last_seq < head_seq:
        return _bad(checked, head_seq, head_hash, last_seq + 1, "deleted",
                    f"the chain head says {head_seq} records but the log ends at seq {last_seq}: "
                    f"{_span(last_seq + 1, head_seq)} removed")
    if last_seq > head_seq:
        return _bad(checked, head_seq, head_hash, head_seq + 1, "inserted",
                    f"{_span(head_seq + 1, last_seq)} follow the chain head (seq {head_seq}) and were never appended")
    if prev_hash != head_hash:
        return _bad(checked, head_seq, head_hash, last_seq, "edited",
                    f"record {last_seq} does not hash to the chain head: it was rewritten (hash recomputed)")
    return VerifyReport(ok=True, records=checked, head_seq=head_seq, head_hash=head_hash)


def _span(first: int, last: int) -> str:
    return f"record {first}" if first == last else f"records {first}..{last}"


def _bad(checked: int, head_seq: int | None, head_hash: str | None, seq: int, kind: Tampering,
         detail: str) -> VerifyReport:
    return VerifyReport(ok=False, records=checked, head_seq=head_seq, head_hash=head_hash,
                        first_bad_seq=seq, tampering=kind, detail=detail, problems=(Problem(kind, seq, detail),))


def _hashes_to(row: ChainRow, seq: int) -> bool:
    """Whether ``row`` at ``seq`` hashes to its stored hash (False where its values cannot be hashed)."""
    try:
        return row.hash_at(seq) == row.hash
    except ValidationError:
        return False


def _original_seq(row: ChainRow, near: int) -> int | None:
    """The seq ``row``'s stored hash was computed for, if within WINDOW of ``near``."""
    if _hashes_to(row, row.seq):
        return row.seq
    for delta in range(1, WINDOW + 1):
        for seq in (near - delta, near + delta):
            if seq >= 1 and _hashes_to(row, seq):
                return seq
    return None


def _classify(
    row: ChainRow,
    expected_seq: int,
    prev_hash: str,
    checked: int,
    head_seq: int | None,
    head_hash: str | None,
    window: Callable[[int, int], Sequence[ChainRow]],
) -> VerifyReport:
    def bad(seq: int, kind: Tampering, detail: str) -> VerifyReport:
        return _bad(checked, head_seq, head_hash, seq, kind, detail)

    if row.seq > expected_seq:
        return bad(expected_seq, "deleted",
                   f"{_span(expected_seq, row.seq - 1)} missing (the next stored record is {row.seq})")
    self_ok = _hashes_to(row, row.seq)
    if self_ok:
        # Row intact, but its predecessor is not the record it was chained to.
        later = {r.hash: r.seq for r in window(row.seq + 1, WINDOW)}
        if row.prev_hash in later:
            return bad(expected_seq - 1, "reordered",
                       f"record {row.seq} was chained after the record now at seq {later[row.prev_hash]}: "
                       "records were reordered")
        if expected_seq == 1:
            return bad(1, "edited", "the first record does not start from the genesis hash")
        return bad(expected_seq - 1, "edited",
                   f"record {expected_seq - 1} was rewritten with a recomputed hash "
                   f"(record {row.seq} still references the original {row.prev_hash[:12]}...)")
    original = _original_seq(row, row.seq)
    rows_after = list(window(row.seq + 1, WINDOW))
    if original is None:
        # Content changed, or a forged row was slipped in: the latter if the next row is the
        # record that belonged here, shifted up by one.
        nxt = rows_after[0] if rows_after else None
        if (nxt is not None and nxt.seq == row.seq + 1 and nxt.prev_hash == prev_hash
                and _hashes_to(nxt, row.seq)):
            return bad(row.seq, "inserted", f"record {row.seq} was inserted (the records after it were renumbered)")
        return bad(row.seq, "edited", f"record {row.seq}'s contents no longer match its hash: it was edited")
    if original < row.seq:
        first = original
        return bad(first, "inserted",
                   f"record {row.seq} was at seq {original}: {row.seq - original} record(s) were inserted "
                   f"from seq {first}")
    if original > row.seq:
        for r in rows_after:
            if _original_seq(r, r.seq) == row.seq and r.prev_hash == prev_hash:
                return bad(row.seq, "reordered", f"record {row.seq} now holds the record that was at seq {original}, "
                                                  f"and the original record {row.seq} is now at seq {r.seq}: "
                                                  "records were reordered")
        return bad(row.seq, "deleted", f"record {row.seq} was at seq {original}: {_span(row.seq, original - 1)} "
                                        "removed and the rest renumbered")
    # Hash matches its seq but the link is broken (handled above) or only the seq differs.
    return bad(row.seq, "unknown", f"record {row.seq} does not chain to record {expected_seq - 1}")
