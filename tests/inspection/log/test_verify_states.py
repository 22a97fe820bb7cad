"""Verify never crashes: any state the database is found in gives a report naming the records.

Missing chain-head row (and table), missing first record, gaps, duplicate seq numbers, rows
whose values cannot be read back, an emptied log, a dropped records table: each a report
with ``ok: false`` from ``log.verify()`` and exit code 1 from ``inspection audit verify``.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from inspection.cli import main
from inspection.log.records import LogEntry

N = 6


def _fill(log: Any, n: int = N) -> list[Any]:
    return [log.append(LogEntry(kind="inspection", station="s1", part_id=f"P{i}", decision="pass",
                                scores={"ok": 0.9}, threshold=0.5)) for i in range(n)]


def _cli(logs: Any, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    extra = ["--schema", logs.schema] if logs.backend == "postgresql" else []
    code = main(["audit", "verify", "--json", "--log-url", logs.url, "--frames-dir", str(logs.tmp_path / "frames"),
                 *extra])
    return code, json.loads(capsys.readouterr().out)


def _sql(log: Any, *statements: str) -> None:
    with log.engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))


def _duplicate_seq(log: Any, seq: int) -> None:
    """Slip a second row in under an existing seq (the primary key dropped first, as a forger would)."""
    if log.dialect == "sqlite":
        cols = ", ".join(c.name for c in sa.Table("inspection_records", sa.MetaData(), autoload_with=log.engine).c)
        _sql(log, "ALTER TABLE inspection_records RENAME TO old_records",
             "CREATE TABLE inspection_records AS SELECT * FROM old_records",  # CTAS: no primary key
             "DROP TABLE old_records")
    else:
        _sql(log, "ALTER TABLE inspection_records DROP CONSTRAINT inspection_records_pkey")
        cols = ", ".join(c.name for c in sa.Table("inspection_records", sa.MetaData(), autoload_with=log.engine).c)
    copy = cols.replace("inspection_id", "inspection_id || 'x'")
    _sql(log, f"INSERT INTO inspection_records ({cols}) SELECT {copy} FROM inspection_records WHERE seq = {seq}")


def test_missing_chain_head_row(log: Any, logs: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(log)
    _sql(log, "DELETE FROM inspection_chain_head")
    report = log.verify()
    assert not report.ok and report.tampering == "head_missing" and report.head_seq is None
    assert f"records 1..{N} chain correctly" in report.detail
    code, body = _cli(logs, capsys)
    assert code == 1 and body["problems"][0]["kind"] == "head_missing"


def test_missing_chain_head_table(log: Any) -> None:
    _fill(log)
    _sql(log, "DROP TABLE inspection_chain_head")
    report = log.verify()
    assert not report.ok and "inspection_chain_head" in report.detail


def test_missing_first_record(log: Any, logs: Any, capsys: pytest.CaptureFixture[str]) -> None:
    recs = _fill(log)
    _sql(log, "DELETE FROM inspection_records WHERE seq = 1")
    report = log.verify()
    assert (report.ok, report.first_bad_seq, report.tampering) == (False, 1, "deleted")
    assert "record 1 missing" in report.detail and recs[0].seq == 1
    assert _cli(logs, capsys)[0] == 1


def test_gap(log: Any, logs: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(log)
    _sql(log, "DELETE FROM inspection_records WHERE seq IN (3, 4)")
    report = log.verify()
    assert (report.first_bad_seq, report.tampering) == (3, "deleted") and "records 3..4 missing" in report.detail
    assert _cli(logs, capsys)[0] == 1


def test_duplicate_sequence_numbers(log: Any, logs: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(log)
    log.close()
    log = logs.open()
    _duplicate_seq(log, 4)
    report = log.verify()
    assert (report.ok, report.first_bad_seq, report.tampering) == (False, 4, "duplicate"), report.detail
    code, body = _cli(logs, capsys)
    assert code == 1 and body["problems"][0]["seq"] == 4


def test_unparseable_row(log: Any, logs: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(log)
    if log.dialect == "sqlite":
        _sql(log, "UPDATE inspection_records SET time = 'not a time' WHERE seq = 3")
    else:  # PostgreSQL's types refuse garbage: a hash column emptied (its NOT NULL dropped) instead
        _sql(log, "ALTER TABLE inspection_records ALTER COLUMN hash DROP NOT NULL",
             "UPDATE inspection_records SET hash = NULL WHERE seq = 3")
    report = log.verify()
    assert (report.ok, report.first_bad_seq, report.tampering) == (False, 3, "unreadable"), report.detail
    assert "record 3 cannot be read" in report.detail
    assert _cli(logs, capsys)[0] == 1


def test_fresh_empty_log_verifies(log: Any, logs: Any, capsys: pytest.CaptureFixture[str]) -> None:
    report = log.verify()
    assert report.ok and report.records == 0
    assert _cli(logs, capsys)[0] == 0


def test_emptied_log_names_every_removed_record(log: Any, logs: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(log)
    _sql(log, "DELETE FROM inspection_records")
    report = log.verify()
    assert (report.ok, report.first_bad_seq, report.tampering) == (False, 1, "deleted")
    assert f"records 1..{N} removed" in report.detail
    assert _cli(logs, capsys)[0] == 1


def test_dropped_records_table(log: Any) -> None:
    _fill(log)
    _sql(log, "DROP TABLE inspection_records")
    report = log.verify()
    assert not report.ok and "records table" in report.detail


def test_values_the_chain_cannot_hash_are_reported_not_raised(log: Any, logs: Any,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # Garbage a typed column still holds (an infinite float; on SQLite also bytes in a text
    # column) used to make the hash raise: verify, and `audit verify`, crashed instead of reporting.
    _fill(log)
    infinity = "9e999" if log.dialect == "sqlite" else "'Infinity'"
    _sql(log, f"UPDATE inspection_records SET threshold = {infinity} WHERE seq = 3")
    if log.dialect == "sqlite":
        _sql(log, "UPDATE inspection_records SET station = X'7331' WHERE seq = 5")
    report = log.verify()
    assert (report.ok, report.first_bad_seq, report.tampering) == (False, 3, "unreadable"), report.detail
    assert "record 3 cannot be read" in report.detail
    assert _cli(logs, capsys)[0] == 1


def test_another_spelling_of_a_stored_time_is_an_edit(log: Any, logs: Any, capsys: pytest.CaptureFixture[str]) -> None:
    # SQLite keeps times as text and filters compare the text: the same instant spelt with an
    # offset hashes the same but drops the record out of every time window.
    if log.dialect != "sqlite":
        pytest.skip("PostgreSQL stores a timestamp, not its spelling")
    _fill(log)
    with log.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT time FROM inspection_records WHERE seq = 2").scalar()
    moved = (datetime.fromisoformat(stored) - timedelta(hours=12)).strftime("%Y-%m-%d %H:%M:%S.%f") + "-12:00"
    _sql(log, f"UPDATE inspection_records SET time = '{moved}' WHERE seq = 2")
    report = log.verify()
    assert (report.ok, report.first_bad_seq, report.tampering) == (False, 2, "edited"), report.detail
    assert "the text was edited" in report.detail
    assert _cli(logs, capsys)[0] == 1

