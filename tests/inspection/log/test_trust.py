"""The tamper suite beyond single records: frames on disk, and rewrites only signed checkpoints reveal.

Record edit/delete/insert/reorder are in ``test_chain_tamper``; here: a frame swapped,
truncated or deleted (every reader re-hashes, verify names the record), a truncated tail and
a whole-chain rewrite with every hash recomputed (found by signed checkpoints, in the log and
in the checkpoint file), a forged checkpoint, and the CLI with ``--public-key --checkpoints``.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from inspection.cli import main
from inspection.errors import ConfigError, LogIntegrityError
from inspection.log import chain, checkpoints
from inspection.log.records import LogEntry
from inspection.log.retention import prune_frames
from inspection.log.tables import ENTRY_COLUMNS, records

N = 12


def _fill(log: Any, n: int = N, start: int = 0) -> list[Any]:
    return [log.append(LogEntry(kind="inspection", station="s1", part_id=f"P{i}",
                                decision="reject" if i % 2 else "pass", scores={"ok": 0.5}, threshold=0.5),
                       frame=b"frame-%d" % i) for i in range(start, start + n)]


def _checkpoint(log: Any, signer: checkpoints.Signer, file: Path | None = None) -> checkpoints.Checkpoint:
    seq, head = log.head()
    cp = signer.sign(seq, head, datetime.now(UTC))
    log.append(LogEntry(kind="checkpoint", actor="server", data=cp.as_dict()))
    if file is not None:
        checkpoints.append_to_file(file, cp)
    return cp


def _rewrite_from(log: Any, k: int, *, drop_checkpoint_records: bool = False) -> None:
    """Edit record k and recompute every hash from it on, head row included: the chain verifies."""
    with log.engine.begin() as conn:
        if drop_checkpoint_records:
            conn.execute(sa.text("DELETE FROM inspection_records WHERE kind = 'checkpoint'"))
            rows = [dict(r) for r in conn.execute(sa.select(records).order_by(records.c.seq)).mappings()]
            conn.execute(sa.text("DELETE FROM inspection_records"))
            for i, row in enumerate(rows, 1):
                row["seq"] = i
            conn.execute(sa.insert(records), rows)
        rows = [dict(r) for r in conn.execute(sa.select(records).order_by(records.c.seq)).mappings()]
        prev = rows[k - 2]["hash"] if k > 1 else chain.GENESIS
        for row in rows[k - 1:]:
            fields = {c: row[c] for c in ENTRY_COLUMNS}
            if row["seq"] == k:
                fields["decision"] = "pass"
            digest = chain.record_hash(row["seq"], prev, fields)
            conn.execute(sa.update(records).where(records.c.seq == row["seq"]).values(
                decision=fields["decision"], prev_hash=prev, hash=digest))
            prev = digest
        conn.execute(sa.text("UPDATE inspection_chain_head SET seq = :s, hash = :h WHERE id = 1"),
                     {"s": rows[-1]["seq"], "h": prev})


@pytest.fixture
def signer(tmp_path: Path) -> checkpoints.Signer:
    key = tmp_path / "keys" / "checkpoint.key"
    checkpoints.generate_signing_key(key)
    return checkpoints.Signer.from_file(key)


def _check(signer: checkpoints.Signer, file: Path | None = None) -> Any:
    external, notes = checkpoints.read_file(file) if file is not None and file.exists() else ([], [])
    return checkpoints.make_check(checkpoints.load_public_key(signer.public_key), external, external_notes=notes)


# ------------------------------------------------------------------------------- frames
def _frame_path(log: Any, rec: Any) -> Path:
    return log.frames.path(rec.entry.frame_sha256)


@pytest.mark.parametrize("how", ["swap", "truncate", "delete"])
def test_frame_tampering_is_named_and_never_served(log: Any, how: str) -> None:
    recs = _fill(log)
    victim = recs[3]  # a reject: its frame is always kept
    path = _frame_path(log, victim)
    if how == "swap":
        path.write_bytes(_frame_path(log, recs[5]).read_bytes())
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[:3])
    else:
        path.unlink()
    report = log.verify()
    assert not report.ok
    [problem] = report.problems
    assert problem.seq == victim.seq and problem.inspection_id == victim.entry.inspection_id
    assert problem.kind == ("frame_missing" if how == "delete" else "frame_altered")
    if how != "delete":
        with pytest.raises(LogIntegrityError, match="altered on disk"):
            log.frame(victim.entry.frame_sha256)


def test_pruned_and_unsampled_frames_are_not_tampering(log: Any) -> None:
    recs = _fill(log)
    assert not log.has_frame(recs[0].entry.frame_sha256)  # a pass, sample rate 0: never kept
    result = prune_frames(log, max_bytes=0)
    assert result.removed and log.verify().ok


def test_a_swapped_frame_file_is_replaced_when_the_same_image_comes_again(log: Any) -> None:
    rec = _fill(log, 2)[1]
    path = _frame_path(log, rec)
    path.write_bytes(b"evil")
    log.append(LogEntry(kind="inspection", decision="reject"), frame=b"frame-1")
    assert log.frame(rec.entry.frame_sha256) == b"frame-1"


def test_below_the_free_space_floor_passes_frames_are_not_kept_but_rejects_are(logs: Any) -> None:
    log = logs.open(frame_sample_rate=1.0, min_free_bytes=1 << 62)  # a floor no disk meets
    passed = log.append(LogEntry(kind="inspection", decision="pass"), frame=b"pass-frame")
    rejected = log.append(LogEntry(kind="inspection", decision="reject"), frame=b"reject-frame")
    assert not log.has_frame(passed.entry.frame_sha256) and log.has_frame(rejected.entry.frame_sha256)
    assert passed.entry.data is None and rejected.entry.data == {"frame_kept": True}
    assert log.verify().ok


# ------------------------------------------------------------------------------- checkpoints
def test_rewrite_of_the_whole_chain_verifies_without_checkpoints_but_not_with(log: Any, signer: Any,
                                                                              tmp_path: Path) -> None:
    file = tmp_path / "cp.jsonl"
    _fill(log, 6)
    _checkpoint(log, signer, file)
    _fill(log, 6, start=6)
    _checkpoint(log, signer, file)
    assert log.verify(checkpoint_check=_check(signer, file)).ok
    _rewrite_from(log, 4)
    assert log.verify().ok  # the hash chain alone cannot see it
    report = log.verify(checkpoint_check=_check(signer, file))
    assert not report.ok and {p.kind for p in report.problems} == {"checkpoint_mismatch"}
    assert [p.seq for p in report.problems] == [6, 13]  # both signed heads disagree
    assert "rewritten after it was signed" in report.detail


def test_rewrite_that_removes_the_checkpoint_records_is_found_by_the_file(log: Any, signer: Any,
                                                                         tmp_path: Path) -> None:
    file = tmp_path / "cp.jsonl"
    _fill(log, 6)
    _checkpoint(log, signer, file)
    _fill(log, 6, start=6)
    _rewrite_from(log, 2, drop_checkpoint_records=True)
    assert log.verify().ok
    assert log.verify(checkpoint_check=_check(signer)).ok  # no checkpoint left in the log to disagree
    report = log.verify(checkpoint_check=_check(signer, file))
    assert not report.ok and report.problems[0].kind == "checkpoint_mismatch" and report.problems[0].seq == 6


def test_tail_truncation_is_found_by_a_checkpoint(log: Any, signer: Any, tmp_path: Path) -> None:
    file = tmp_path / "cp.jsonl"
    _fill(log)
    _checkpoint(log, signer, file)
    with log.engine.begin() as conn:  # cut the last 5 records and move the head back: the chain verifies
        conn.execute(sa.text(f"DELETE FROM inspection_records WHERE seq > {N - 5}"))
        head = conn.execute(sa.text(f"SELECT hash FROM inspection_records WHERE seq = {N - 5}")).scalar_one()
        conn.execute(sa.text("UPDATE inspection_chain_head SET seq = :s, hash = :h"), {"s": N - 5, "h": head})
    assert log.verify().ok
    report = log.verify(checkpoint_check=_check(signer, file))
    assert (report.ok, report.tampering, report.first_bad_seq) == (False, "truncated", N)
    assert f"the log ends at seq {N - 5}" in report.detail


def test_forged_checkpoint_is_named(log: Any, signer: Any, tmp_path: Path) -> None:
    _fill(log, 4)
    cp = _checkpoint(log, signer)
    with log.engine.begin() as conn:
        forged = {**cp.as_dict(), "hash": "f" * 64}
        conn.execute(sa.text("UPDATE inspection_records SET data = :d WHERE kind = 'checkpoint'"),
                     {"d": chain.canonical_json(forged)})
    report = log.verify(checkpoint_check=_check(signer))
    assert "checkpoint_forged" in {p.kind for p in report.problems}


def test_signing_key_permissions_are_checked(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    checkpoints.generate_signing_key(key)
    assert os.stat(key).st_mode & 0o777 == 0o600
    os.chmod(key, 0o644)
    with pytest.raises(ConfigError, match="mode 0644"):
        checkpoints.Signer.from_file(key)
    with pytest.raises(ConfigError, match="already exists"):
        checkpoints.generate_signing_key(key)
    with pytest.raises(ConfigError, match="not 64 hex digits"):
        checkpoints.load_public_key("abc")


def test_cli_checks_checkpoints_with_the_public_key(logs: Any, signer: Any, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "cp.jsonl"
    log = logs.open()
    _fill(log, 5)
    _checkpoint(log, signer, file)
    args = ["audit", "verify", "--log-url", logs.url, "--frames-dir", str(logs.tmp_path / "frames"),
            *(["--schema", logs.schema] if logs.backend == "postgresql" else []),
            "--public-key", signer.public_key, "--checkpoints", str(file)]
    assert main(args) == 0
    assert "2 signed checkpoint(s) checked" in capsys.readouterr().out
    _rewrite_from(log, 2)
    log.close()
    assert main([*args, "--json"]) == 1
    body = json.loads(capsys.readouterr().out)
    assert body["ok"] is False and body["problems"][0]["kind"] == "checkpoint_mismatch"
    assert main([a for a in args if a != signer.public_key and a != "--public-key"]) == 2  # file without a key
