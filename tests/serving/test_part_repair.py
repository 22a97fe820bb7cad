"""No part without its record: a server appends the fail-safe part record of every part a crash
left undecided before it serves (prepared log), and kill -9 under 8 clients leaves none behind."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from inspection.log.records import LogEntry
from inspection.log.store import open_log
from serving.app import create_app
from serving.parts import RESTART_REASON
from serving.settings import build_settings
from tests.helpers.server import free_port, start_logged, stop_server
from tests.helpers.tiny_model import BRIGHT, DARK, frame_png
from tests.serving.conftest import SINGLE, STATION, auth, settings_data

CLIENTS = 8
#: kill -9 rounds; the issue's target is 10 (INSPECTION_TEST_KILL_ROUNDS=10), 2 keep the suite short.
ROUNDS = int(os.environ.get("INSPECTION_TEST_KILL_ROUNDS", "2"))
LOAD_S = 1.5


def _view(station: str, camera: str, part: str, decision: str = "pass", reason: str | None = None) -> LogEntry:
    return LogEntry(kind="inspection", station=station, camera=camera, part_id=part, decision=decision,
                    model_name="tiny", model_version="v1", failsafe_reason=reason)


def _undecided(db: Path) -> list[tuple[str, str]]:
    """(station, part) pairs with a view and no part record after it (late views excepted)."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT DISTINCT v.station, v.part_id FROM inspection_records v WHERE v.kind = 'inspection' "
            "AND (v.failsafe_reason IS NULL OR v.failsafe_reason NOT LIKE 'late_view:%') AND NOT EXISTS ("
            "SELECT 1 FROM inspection_records p WHERE p.kind = 'part' AND p.station = v.station "
            "AND p.part_id = v.part_id AND p.seq > v.seq)").fetchall()
    finally:
        con.close()
    return [(str(s), str(p)) for s, p in rows]


def test_start_appends_a_failsafe_part_record_for_each_part_left_undecided(tmp_path: Path, models_dir: Path,
                                                                           keys: dict[str, str]) -> None:
    db = tmp_path / "var" / "log.db"
    db.parent.mkdir(parents=True)
    with open_log(f"sqlite:///{db}") as log:
        log.append(_view(STATION, "top", "half"))  # one of two cameras, then the crash
        log.append(_view(SINGLE, "cam", "whole", "reject", "undecodable_frame: truncated PNG"))
        log.append(_view(SINGLE, "cam", "done"))
        log.append(LogEntry(kind="part", station=SINGLE, part_id="done", decision="pass"))
        log.append(_view(SINGLE, "cam", "done", "reject", "late_view: the part was decided before this frame"))
        log.append(_view("elsewhere", "cam", "other"))  # another server's station: not ours to decide
    assert sorted(_undecided(db)) == sorted([("elsewhere", "other"), (SINGLE, "whole"), (STATION, "half")])
    settings = build_settings(settings_data(tmp_path, models_dir, keys))
    with TestClient(create_app(settings)) as client:
        assert client.app.state.parts_repaired == 2  # type: ignore[attr-defined]
        half = client.get("/v1/audit/records", params={"kind": "part", "part_id": "half"},
                          headers=auth(keys, "auditor")).json()["records"]
        assert len(half) == 1 and half[0]["decision"] == "reject"
        assert half[0]["failsafe_reason"] == f"{RESTART_REASON}; missing_view: no frame from camera(s) side"
        assert [v["camera"] for v in half[0]["data"]["views"]] == ["top"]
        assert half[0]["data"]["missing_cameras"] == ["side"]
        whole = client.get("/v1/audit/records", params={"kind": "part", "part_id": "whole"},
                           headers=auth(keys, "auditor")).json()["records"]
        assert whole[0]["failsafe_reason"] == RESTART_REASON
        assert whole[0]["data"]["views"][0]["failsafe_reason"] == "undecodable_frame"
        assert client.post("/v1/audit/verify", headers=auth(keys, "auditor")).json()["ok"] is True
    assert _undecided(db) == [("elsewhere", "other")]
    with TestClient(create_app(settings)) as client:  # a second start finds nothing more
        assert client.app.state.parts_repaired == 0  # type: ignore[attr-defined]


@pytest.mark.slow
def test_kill_9_under_8_clients_leaves_no_part_without_its_record(tmp_path: Path, models_dir: Path,
                                                                  keys: dict[str, str]) -> None:
    data = settings_data(tmp_path, models_dir, keys)
    data["log_sqlite_synchronous"] = "FULL"
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(data), encoding="utf-8")
    db = tmp_path / "var" / "log.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server_log = tmp_path / "server.log"
    frames = [frame_png(DARK, seed=1), frame_png(BRIGHT, seed=2), frame_png(DARK, seed=3)]
    answered: list[dict[str, Any]] = []
    lock = threading.Lock()
    for round_no in range(ROUNDS):
        proc = start_logged(settings_file, port, server_log)
        assert _undecided(db) == [], "the restarted server left parts undecided"
        stop = threading.Event()

        def client(n: int, round_no: int = round_no, stop: threading.Event = stop) -> None:
            line = {"Authorization": f"Bearer {keys['line']}", "Content-Type": "image/png"}
            with httpx.Client(base_url=base, headers=line, timeout=10) as http:
                i = 0
                while not stop.is_set():
                    part = f"r{round_no}-c{n}-{i}"
                    # Half the clients feed the two-camera station (the second view sometimes never
                    # comes), half the one-camera station (mostly rejects: their frames are kept).
                    views = [(SINGLE, "cam")] if n % 2 else [(STATION, "top"), (STATION, "side")][: 1 + i % 2]
                    for station, camera in views:
                        try:
                            r = http.post("/v1/inspections", content=frames[(n + i) % len(frames)],
                                          params={"station": station, "camera": camera, "part_id": part})
                        except httpx.HTTPError:
                            return
                        if r.status_code == 200:
                            with lock:
                                answered.append(r.json())
                    i += 1

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for th in threads:
            th.start()
        time.sleep(LOAD_S)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        stop.set()
        for th in threads:
            th.join(timeout=30)
    assert len(answered) >= CLIENTS * ROUNDS, server_log.read_text(errors="replace")[-2000:]
    left_by_crashes = len(_undecided(db))
    assert left_by_crashes > 0, "the kill left no part open: the test would prove nothing"
    proc = start_logged(settings_file, port, server_log)
    try:
        assert _undecided(db) == [], "parts left without their part record after the restart"
        con = sqlite3.connect(db)
        try:
            ids = {row[0] for row in con.execute("SELECT inspection_id FROM inspection_records")}
            repaired = con.execute("SELECT COUNT(*) FROM inspection_records WHERE kind = 'part' AND "
                                   "failsafe_reason LIKE ?", (f"{RESTART_REASON}%",)).fetchone()[0]
        finally:
            con.close()
        assert all(a["inspection_id"] in ids for a in answered), "an answered frame has no inspection record"
        assert repaired >= left_by_crashes, (repaired, left_by_crashes)
        print(f"{ROUNDS} kill -9 rounds: {len(answered)} answered frames, {left_by_crashes} part(s) left undecided "
              f"by the last crash, {repaired} repaired in all")
        audit = {"Authorization": f"Bearer {keys['auditor']}"}
        assert httpx.post(f"{base}/v1/audit/verify", headers=audit, timeout=60).json()["ok"] is True
    finally:
        stop_server(proc)

