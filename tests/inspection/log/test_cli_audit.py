"""`inspection audit list | show | export | verify | prune` on a real log (the CLI's main)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from inspection.cli import main
from inspection.log.records import LogEntry


def _args(logs: Any, *rest: str) -> list[str]:
    extra = ["--schema", logs.schema] if logs.backend == "postgresql" else []
    return [*rest, "--log-url", logs.url, "--frames-dir", str(logs.tmp_path / "frames"), *extra]


@pytest.fixture
def filled(logs: Any) -> list[Any]:
    log = logs.open()
    recs = [log.append(LogEntry(kind="inspection", station="s1", part_id=f"P{i}",
                                decision="reject" if i == 2 else "pass", model_version="7"), frame=b"img%d" % i)
            for i in range(5)]
    log.close()
    return recs


def test_list_filters_and_prints_json(logs: Any, filled: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(logs, "audit", "list", "--decision", "reject", "--json")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["part_id"] for line in lines] == ["P2"]


def test_list_refuses_a_decision_no_record_can_have(logs: Any, filled: list[Any],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(logs, "audit", "list", "--decision", "maybe")) == 2
    assert "error: decision 'maybe' is not one of ['pass', 'reject']" in capsys.readouterr().err


def test_list_table_pages_with_cursor(logs: Any, filled: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(logs, "audit", "list", "--limit", "2")) == 0
    out = capsys.readouterr()
    assert "P4" in out.out and "P3" in out.out and "P2" not in out.out
    assert "--cursor 4" in out.err


def test_show_prints_record_with_dispositions(logs: Any, filled: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    log = logs.open()
    log.append(LogEntry(kind="disposition", ref=filled[2].entry.inspection_id, decision="reject", actor="qa"))
    log.close()
    assert main(_args(logs, "audit", "show", filled[2].entry.inspection_id)) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["hash"] == filled[2].hash and shown["frame_stored"] is True
    assert [r["actor"] for r in shown["related"]] == ["qa"]


def test_show_unknown_id_exits_2(logs: Any, filled: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(logs, "audit", "show", "missing")) == 2
    assert "error: no log record has inspection id 'missing'" in capsys.readouterr().err


def test_export_csv_to_file(logs: Any, filled: list[Any], tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    assert main(_args(logs, "audit", "export", "--format", "csv", "-o", str(out), "--station", "s1")) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [r["hash"] for r in rows] == [r.hash for r in filled]
    assert not (tmp_path / "out.csv.part").exists()


@pytest.mark.parametrize(("output", "message"), [
    ("nodir/out.csv", "-o {tmp}/nodir/out.csv: folder {tmp}/nodir does not exist"),
    ("", "-o '.' is a folder; give a file to write"),
    ("folder", "-o '{tmp}/folder' is a folder"),
])
def test_export_to_a_path_that_is_no_file_exits_2(
        logs: Any, filled: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], output: str, message: str) -> None:
    (tmp_path / "folder").mkdir()
    monkeypatch.chdir(tmp_path)
    target = str(tmp_path / output) if output else output
    assert main(_args(logs, "audit", "export", "-o", target)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.format(tmp=tmp_path) in err
    assert list((tmp_path / "folder").iterdir()) == [] and not (tmp_path / "nodir").exists()


def test_export_jsonl_to_stdout(logs: Any, filled: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(logs, "audit", "export", "--format", "jsonl", "--part-id", "P1")) == 0
    assert [json.loads(x)["seq"] for x in capsys.readouterr().out.splitlines()] == [2]


def test_verify_ok_then_tampered(logs: Any, filled: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(logs, "audit", "verify")) == 0
    assert "chain OK: 5 records" in capsys.readouterr().out
    log = logs.open()
    with log.engine.begin() as conn:
        conn.execute(sa.text("UPDATE inspection_records SET part_id = 'X' WHERE seq = 3"))
    log.close()
    assert main(_args(logs, "audit", "verify")) == 1
    assert "record 3: edited: record 3's contents no longer match its hash" in capsys.readouterr().out


def test_verify_refuses_a_frames_dir_that_does_not_exist(logs: Any, filled: list[Any], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(logs, "audit", "verify")
    args[args.index("--frames-dir") + 1] = str(tmp_path / "nonexistent")
    assert main(args) == 2
    assert f"error: --frames-dir {tmp_path / 'nonexistent'} is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "nonexistent").exists()


def test_prune_needs_a_limit_and_records_the_pruning(logs: Any, filled: list[Any],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(logs, "audit", "prune")) == 2
    assert "--max-age-days" in capsys.readouterr().err
    assert main(_args(logs, "audit", "prune", "--max-bytes", "0")) == 0
    assert "removed 1 frame(s)" in capsys.readouterr().out  # only the reject's frame was kept
    assert main(_args(logs, "audit", "list", "--kind", "prune", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["data"]["removed"] == [filled[2].entry.frame_sha256]


@pytest.mark.parametrize("days", ["nan", "inf", "1e12", "-1", "36500.5", "week"])
def test_prune_refuses_an_age_outside_0_to_36500_days(logs: Any, filled: list[Any], days: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    frames = sorted((logs.tmp_path / "frames").rglob("*"))
    assert frames
    with pytest.raises(SystemExit) as exc:
        main(_args(logs, "audit", "prune", f"--max-age-days={days}"))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --max-age-days: {days!r} is not allowed; give a number of days from 0 to 36500" in err
    assert sorted((logs.tmp_path / "frames").rglob("*")) == frames


def test_missing_sqlite_log_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", "--log-url", f"sqlite:///{tmp_path}/nope.db"]) == 2
    assert "no inspection log at" in capsys.readouterr().err


def test_list_names_models_as_name_slash_version_and_filters_by_it(
    logs: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    log = logs.open()
    for i, (name, version) in enumerate((("coat", "v1"), ("coat", "v2"), ("other", "v1"))):
        log.append(LogEntry(kind="inspection", station="s1", part_id=f"M{i}", decision="pass", model_name=name,
                            model_version=version))
    log.close()
    assert main(_args(logs, "audit", "list", "--model-version", "coat/v1")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[8] == "model" and len(out) == 2 and "coat/v1" in out[1] and "M0" in out[1]
    assert main(_args(logs, "audit", "list", "--model-version", "v1", "--json")) == 0
    assert sorted(json.loads(line)["part_id"] for line in capsys.readouterr().out.splitlines()) == ["M0", "M2"]
    assert main(_args(logs, "audit", "list", "--model-version", "coat/v1", "--model-name", "other")) == 2
    assert "names model 'coat' but model_name is 'other'" in capsys.readouterr().err


def test_verify_finds_the_servers_frames_behind_many_other_events_and_garbled_rows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `audit verify` without --frames-dir reads where the server kept its frames from the log's
    # newest frame_store event. It used to page through at most 10,000 events (a labelling import
    # appends one per image) and then check the default folder: every kept frame "deleted".
    from inspection.log.query import FRAME_STORE_EVENT
    from inspection.log.store import open_log

    url, frames = f"sqlite:///{tmp_path / 'log.db'}", tmp_path / "server-frames"
    log = open_log(url, frames_dir=frames, sqlite_synchronous="NORMAL")
    log.append(LogEntry(kind="event", data={"event": FRAME_STORE_EVENT, "frames_dir": str(frames.resolve())}))
    log.append(LogEntry(kind="inspection", decision="reject"), frame=b"kept")
    for i in range(10_001):
        log.append(LogEntry(kind="event", data={"event": "label_import", "n": i}))
    log.close()
    assert main(["audit", "verify", "--log-url", url]) == 0, capsys.readouterr()
    assert "1 frame(s) re-hashed" in capsys.readouterr().out
    # A garbled row (a time that no longer parses) is verify's finding, not a crash of the lookup.
    with sa.create_engine(url).begin() as conn:
        conn.execute(sa.text("UPDATE inspection_records SET time = 'not a time' WHERE seq = 5"))
    assert main(["audit", "verify", "--log-url", url]) == 1
    assert "record 5 cannot be read" in capsys.readouterr().out
