"""Rows edited, deleted, inserted or reordered directly in the database: verify names the record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from inspection.log import chain
from inspection.log.records import LogEntry
from inspection.log.store import normalise_entry
from inspection.log.tables import ENTRY_COLUMNS

N = 10
T0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)


def _fill(log: Any, n: int = N) -> None:
    for i in range(n):
        log.append(LogEntry(
            kind="inspection", time=T0 + timedelta(seconds=i), station="st1", camera="cam0", part_id=f"P{i:03d}",
            decision="reject" if i % 3 == 0 else "pass", defect_class="scratch" if i % 3 == 0 else None,
            scores={"ok": 0.1 + i / 100, "scratch": 0.9 - i / 100}, threshold=0.5, model_name="m", model_version="1",
            latency_ms=3.25, data={"i": i},
        ))


def _rows(conn: sa.Connection) -> dict[int, dict[str, Any]]:
    out = {}
    for r in conn.execute(sa.text("SELECT * FROM inspection_records ORDER BY seq")).mappings():
        out[r["seq"]] = dict(r)
    return out


def _set_seq(conn: sa.Connection, old: int, new: int) -> None:
    conn.execute(sa.text("UPDATE inspection_records SET seq = :new WHERE seq = :old"), {"new": new, "old": old})


def _shift(conn: sa.Connection, from_seq: int, delta: int) -> None:
    # One row at a time, in an order that never collides with the primary key.
    query = sa.text("SELECT seq FROM inspection_records WHERE seq >= :s ORDER BY seq")
    seqs = [s for (s,) in conn.execute(query, {"s": from_seq})]
    for s in (reversed(seqs) if delta > 0 else seqs):
        _set_seq(conn, s, s + delta)


def _forged(seq: int, prev_hash: str) -> dict[str, Any]:
    fields = normalise_entry(LogEntry(kind="inspection", time=T0, station="st1", part_id="FORGED", decision="pass"))
    return {**fields, "seq": seq, "prev_hash": prev_hash, "hash": chain.record_hash(seq, prev_hash, fields)}


def _insert(conn: sa.Connection, row: dict[str, Any]) -> None:
    from inspection.log.tables import records

    conn.execute(sa.insert(records), [row])


def edit(conn: sa.Connection, k: int) -> None:
    conn.execute(sa.text(
        "UPDATE inspection_records SET decision = CASE WHEN decision = 'pass' THEN 'reject' ELSE 'pass' END "
        "WHERE seq = :k"
    ), {"k": k})


def edit_scores(conn: sa.Connection, k: int) -> None:
    conn.execute(sa.text("UPDATE inspection_records SET scores = :s WHERE seq = :k"),
                 {"k": k, "s": '{"ok":0.99,"scratch":0.01}'})


def edit_and_rehash(conn: sa.Connection, k: int) -> None:
    # A careful forger recomputes the edited record's own hash; its successor still disagrees.
    row = _rows(conn)[k]
    fields = {c: row[c] for c in ENTRY_COLUMNS}
    from inspection.log.tables import records

    fields_typed = conn.execute(sa.select(records).where(records.c.seq == k)).mappings().one()
    fields = {c: fields_typed[c] for c in ENTRY_COLUMNS}
    fields["decision"] = "pass" if fields["decision"] == "reject" else "reject"
    digest = chain.record_hash(k, row["prev_hash"], fields)
    conn.execute(sa.text("UPDATE inspection_records SET decision = :d, hash = :h WHERE seq = :k"),
                 {"d": fields["decision"], "h": digest, "k": k})


def delete(conn: sa.Connection, k: int) -> None:
    conn.execute(sa.text("DELETE FROM inspection_records WHERE seq = :k"), {"k": k})


def delete_and_renumber(conn: sa.Connection, k: int) -> None:
    delete(conn, k)
    _shift(conn, k + 1, -1)


def insert_and_renumber(conn: sa.Connection, k: int) -> None:
    prev = _rows(conn)[k - 1]["hash"] if k > 1 else chain.GENESIS
    _shift(conn, k, +1)
    _insert(conn, _forged(k, prev))


def insert_garbage(conn: sa.Connection, k: int) -> None:
    _shift(conn, k, +1)
    _insert(conn, {**_forged(k, "f" * 64), "hash": "e" * 64})


def reorder(conn: sa.Connection, k: int) -> None:
    _set_seq(conn, k, -1)
    _set_seq(conn, k + 1, k)
    _set_seq(conn, -1, k + 1)


def swap_far(conn: sa.Connection, k: int) -> None:
    _set_seq(conn, k, -1)
    _set_seq(conn, k + 4, k)
    _set_seq(conn, -1, k + 4)


TAMPERS = [
    (edit, 5, 5, "edited"),
    (edit, 1, 1, "edited"),
    (edit_scores, 7, 7, "edited"),
    (edit_and_rehash, 4, 4, "edited"),
    (edit_and_rehash, N, N, "edited"),
    (delete, 5, 5, "deleted"),
    (delete, N, N, "deleted"),
    (delete, 1, 1, "deleted"),
    (delete_and_renumber, 3, 3, "deleted"),
    (insert_and_renumber, 6, 6, "inserted"),
    (insert_and_renumber, 1, 1, "inserted"),
    (insert_garbage, 6, 6, "inserted"),
    (reorder, 5, 5, "reordered"),
    (reorder, 1, 1, "reordered"),
    (swap_far, 3, 3, "reordered"),
]


@pytest.mark.parametrize(("tamper", "k", "bad_seq", "kind"), TAMPERS,
                         ids=[f"{t.__name__}@{k}" for t, k, _, _ in TAMPERS])
def test_verify_names_the_first_tampered_record(log: Any, tamper: Any, k: int, bad_seq: int, kind: str) -> None:
    _fill(log)
    assert log.verify().ok
    with log.engine.begin() as conn:
        tamper(conn, k)
    report = log.verify()
    assert not report.ok
    assert (report.first_bad_seq, report.tampering) == (bad_seq, kind), report.detail


def test_appended_tail_beyond_head_is_inserted(log: Any) -> None:
    _fill(log)
    head_seq, head_hash = log.head()
    with log.engine.begin() as conn:
        _insert(conn, _forged(head_seq + 1, head_hash))  # a perfectly chained forgery, but never appended
    report = log.verify()
    assert (report.ok, report.first_bad_seq, report.tampering) == (False, N + 1, "inserted")


def test_only_the_first_of_two_tamperings_is_reported(log: Any) -> None:
    _fill(log)
    with log.engine.begin() as conn:
        edit(conn, 8)
        edit(conn, 3)
    report = log.verify()
    assert (report.first_bad_seq, report.records) == (3, 2)


def test_untampered_log_verifies_and_reports_head(log: Any) -> None:
    _fill(log)
    report = log.verify()
    assert report.ok and report.records == N
    assert (report.head_seq, report.head_hash) == log.head()
    assert report.head_hash == log.get_seq(N).hash


def test_empty_log_verifies(log: Any) -> None:
    report = log.verify()
    assert report.ok and report.records == 0 and report.head_hash == chain.GENESIS


def test_hash_covers_seq_and_every_field() -> None:
    fields = normalise_entry(LogEntry(kind="inspection", station="a", scores={"x": 1.0}))
    base = chain.record_hash(1, chain.GENESIS, fields)
    assert chain.record_hash(2, chain.GENESIS, fields) != base
    assert chain.record_hash(1, "1" * 64, fields) != base
    for name in ENTRY_COLUMNS:
        changed = dict(fields)
        changed[name] = "something else" if name != "time" else fields["time"] + timedelta(microseconds=1)
        assert chain.record_hash(1, chain.GENESIS, changed) != base, name
