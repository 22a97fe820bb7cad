"""The audit trail a server keeps: frames checked when served, signed checkpoints, any log state reported,
and one set of files whatever directory the server was started from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient

from inspection.errors import ConfigError
from inspection.log import checkpoints
from serving.app import create_app
from serving.settings import build_settings
from tests.helpers.server import free_port, start_server, wait_ready
from tests.helpers.tiny_model import BRIGHT, DARK, frame_png
from tests.inspection.log.test_trust import _rewrite_from
from tests.serving.conftest import SINGLE, auth, decided, post_frame, settings_data


def _verify(client: TestClient, keys: dict[str, str]) -> dict[str, Any]:
    resp = client.post("/v1/audit/verify", headers=auth(keys, "auditor"))
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_verify_api_reports_a_missing_chain_head_with_200(client: TestClient, keys: dict[str, str]) -> None:
    post_frame(client, keys, frame_png(DARK), part_id="V1")
    decided(client, keys, "V1")
    with client.app.state.log.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(sa.text("DELETE FROM inspection_chain_head"))
    body = _verify(client, keys)
    assert body["ok"] is False and body["problems"][0]["kind"] == "head_missing"


def test_verify_api_reports_an_emptied_log_with_200(client: TestClient, keys: dict[str, str]) -> None:
    post_frame(client, keys, frame_png(DARK), part_id="V2")
    decided(client, keys, "V2")
    with client.app.state.log.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(sa.text("DELETE FROM inspection_records"))
    body = _verify(client, keys)
    assert (body["ok"], body["tampering"], body["first_bad_seq"]) == (False, "deleted", 1)


def test_a_frame_swapped_on_disk_is_not_served_and_verify_names_its_record(client: TestClient,
                                                                          keys: dict[str, str]) -> None:
    first = post_frame(client, keys, frame_png(DARK, seed=1), part_id="S1").json()
    other = frame_png(DARK, seed=2)
    store = client.app.state.log  # type: ignore[attr-defined]
    sha = store.get(first["inspection_id"]).entry.frame_sha256
    store.frames.path(sha).write_bytes(other)
    resp = client.get(f"/v1/audit/records/{first['inspection_id']}/frame", headers=auth(keys, "auditor"))
    assert resp.status_code == 500 and resp.json()["error"] == "log_integrity", resp.text
    body = _verify(client, keys)
    assert body["ok"] is False
    assert {(p["kind"], p["inspection_id"]) for p in body["problems"]} == {("frame_altered", first["inspection_id"])}



def test_a_records_detail_says_in_words_whether_its_frame_is_intact(client: TestClient, keys: dict[str, str]) -> None:
    swapped, deleted, intact = (post_frame(client, keys, frame_png(DARK, seed=i), part_id=f"F{i}").json()
                                for i in (1, 2, 3))
    passed = post_frame(client, keys, frame_png(BRIGHT), part_id="F4").json()
    store = client.app.state.log  # type: ignore[attr-defined]
    store.frames.path(store.get(swapped["inspection_id"]).entry.frame_sha256).write_bytes(frame_png(DARK, seed=9))
    store.frames.path(store.get(deleted["inspection_id"]).entry.frame_sha256).unlink()

    def frame(answer: dict[str, Any]) -> dict[str, Any]:
        r = client.get(f"/v1/audit/records/{answer['inspection_id']}", headers=auth(keys, "auditor"))
        assert r.status_code == 200, r.text
        return r.json()["frame"]

    assert frame(intact)["state"] == "intact" and "matches its sha256" in frame(intact)["text"]
    assert frame(swapped)["state"] == "altered" and frame(swapped)["tampering"] is True
    assert "TAMPERED" in frame(swapped)["text"] and "swapped or edited" in frame(swapped)["text"]
    assert frame(deleted)["state"] == "deleted" and "no prune record" in frame(deleted)["text"]
    assert frame(passed)["state"] == "not_kept" and frame(passed)["tampering"] is False


def _signed_settings(tmp_path: Path, models_dir: Path, keys: dict[str, str], **over: Any) -> Any:
    key = tmp_path / "keys" / "checkpoint.key"
    if not key.exists():
        checkpoints.generate_signing_key(key)
    cps = {"signing_key": str(key), "every_records": 4, "every_s": 0.2, "file": str(tmp_path / "cp.jsonl"), **over}
    return build_settings(settings_data(tmp_path, models_dir, keys, checkpoints=cps))


def test_server_checkpoints_reveal_a_rewrite_of_the_whole_chain(tmp_path: Path, models_dir: Path,
                                                                keys: dict[str, str]) -> None:
    settings = _signed_settings(tmp_path, models_dir, keys)
    with TestClient(create_app(settings)) as client:
        for i in range(6):
            post_frame(client, keys, frame_png(DARK, seed=i), part_id=f"C{i}")
            decided(client, keys, f"C{i}")
        store = client.app.state.log  # type: ignore[attr-defined]
        cp = client.app.state.checkpointer  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while cp.last_record_seq == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cp.last_record_seq > 0  # a checkpoint record was appended
        assert _verify(client, keys)["ok"]
        _rewrite_from(store, 1)  # record 1 (a reject) becomes a pass; every later hash recomputed
        assert store.verify().ok  # the chain alone cannot tell
        body = _verify(client, keys)
        assert body["ok"] is False and body["tampering"] == "checkpoint_mismatch", body
        settings.checkpoints.every_s = 3600.0  # (a copy's field: only this test's server) no periodic one now
        post_frame(client, keys, frame_png(DARK, seed=99), part_id="last")
        decided(client, keys, "last")
    lines = (tmp_path / "cp.jsonl").read_text().splitlines()
    assert len(lines) >= 2  # periodic, and the final one at shutdown (anchoring the last frame)
    assert checkpoints.Checkpoint.from_dict(json.loads(lines[-1])).seq == cp.last_record_seq - 1


def test_a_signing_key_others_can_read_stops_the_start(tmp_path: Path, models_dir: Path,
                                                      keys: dict[str, str]) -> None:
    settings = _signed_settings(tmp_path, models_dir, keys)
    os.chmod(settings.checkpoints.signing_key, 0o640)
    with pytest.raises(ConfigError, match="group or others may read it"), TestClient(create_app(settings)):
        pass


def test_server_started_from_another_directory_uses_the_settings_files_paths(tmp_path: Path, models_dir: Path,
                                                                            keys: dict[str, str]) -> None:
    conf = tmp_path / "conf"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    checkpoints.generate_signing_key(conf / "keys" / "cp.key")
    data = settings_data(tmp_path, models_dir, keys)
    data.update(log_url="sqlite:///var/log.db", models_dir=os.path.relpath(models_dir, conf),
                checkpoints={"signing_key": "keys/cp.key", "file": "cp/checkpoints.jsonl", "every_records": 2,
                             "every_s": 0.2})
    settings_file = conf / "serve.yaml"
    settings_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    port = free_port()
    proc = start_server(Path("../conf/serve.yaml"), port, capture=True, cwd=elsewhere)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        for i in range(4):
            r = httpx.post(f"{base}/v1/inspections", content=frame_png(DARK, seed=i),
                           params={"station": SINGLE, "camera": "cam", "part_id": f"W{i}"},
                           headers={**auth(keys), "content-type": "image/png"})
            assert r.status_code == 200, r.text
        running = httpx.get(f"{base}/v1/admin/settings", headers=auth(keys, "admin")).json()
        assert running["resolved_paths"]["log_file"] == str(conf / "var" / "log.db")
        assert running["resolved_paths"]["checkpoint_file"] == str(conf / "cp" / "checkpoints.jsonl")
        assert running["models_dir"] == str(models_dir.resolve()) or Path(running["models_dir"]).resolve() == \
            models_dir.resolve()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert (conf / "var" / "log.db").is_file() and not (elsewhere / "var").exists()
    assert f"log_file={conf / 'var' / 'log.db'}" in out, out  # the resolved paths are logged at start
    assert "Exception in ASGI application" not in out and "Traceback" not in out, out
    public = checkpoints.Signer.from_file(conf / "keys" / "cp.key").public_key
    done = subprocess.run([sys.executable, "-m", "inspection", "audit", "verify", "--log-url",
                           f"sqlite:///{conf / 'var' / 'log.db'}", "--public-key", public,
                           "--checkpoints", str(conf / "cp" / "checkpoints.jsonl")],
                          capture_output=True, text=True, check=False, cwd=elsewhere)
    assert done.returncode == 0 and "chain OK" in done.stdout, done.stdout + done.stderr


def test_audit_show_finds_the_frames_where_the_server_kept_them(tmp_path: Path, models_dir: Path,
                                                                 keys: dict[str, str],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from inspection.cli import main as cli

    frames = tmp_path / "elsewhere" / "frames"
    settings = build_settings(settings_data(tmp_path, models_dir, keys, frames_dir=str(frames)))
    with TestClient(create_app(settings)) as client:
        reject = post_frame(client, keys, frame_png(DARK), part_id="R1").json()
    with TestClient(create_app(settings)):
        pass  # a restart with the same store records nothing new
    url = settings.log_url
    capsys.readouterr()
    assert cli(["audit", "show", reject["inspection_id"], "--log-url", url]) == 0  # no --frames-dir
    shown = json.loads(capsys.readouterr().out)
    assert shown["frame_stored"] is True
    assert cli(["audit", "list", "--kind", "event", "--json", "--log-url", url]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["data"] for e in events] == [{"event": "frame_store", "frames_dir": str(frames.resolve())}]


def test_a_pruned_frame_stays_pruned_however_many_prunes_follow_and_only_prunes_after_count(
        client: TestClient, keys: dict[str, str]) -> None:
    from inspection.log.records import LogEntry
    from inspection.log.retention import prune_frames

    store = client.app.state.log  # type: ignore[attr-defined]
    first = post_frame(client, keys, frame_png(DARK, seed=1), part_id="P1").json()
    sha = store.get(first["inspection_id"]).entry.frame_sha256
    old = time.time() - 40 * 86400
    os.utime(store.frames.path(sha), (old, old))
    assert prune_frames(store, max_age=timedelta(days=30)).removed == [sha]
    for i in range(1001):  # hourly retention for six weeks: more prune records than one page holds
        store.append(LogEntry(kind="prune", data={"removed": [], "bytes": 0, "policy": f"hour {i}"}))

    def frame(answer: dict[str, Any]) -> dict[str, Any]:
        r = client.get(f"/v1/audit/records/{answer['inspection_id']}", headers=auth(keys, "auditor"))
        assert r.status_code == 200, r.text
        return r.json()["frame"]

    assert frame(first)["state"] == "pruned" and frame(first)["tampering"] is False
    # The same bytes kept again by a later reject, then deleted: the earlier prune does not excuse it.
    again = post_frame(client, keys, frame_png(DARK, seed=1), part_id="P2").json()
    store.frames.path(sha).unlink()
    assert frame(again)["state"] == "deleted" and frame(again)["tampering"] is True
