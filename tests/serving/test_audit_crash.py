"""Crash test: a real uvicorn server under load from 8 concurrent clients is killed with SIGKILL
and restarted. Every inspection a client got an answer for is in the log, the chain verifies,
no record is partial, and every kept frame a record names was on disk before the record."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.server import free_port, start_logged, stop_server
from tests.serving.conftest import SINGLE, settings_data
from tests.serving.test_audit_api import png

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_infrastructure_details")]

CLIENTS = 8
LOAD_S = 3.0          # load before the kill (bounded in time ...)
MAX_REQUESTS = 2000   # ... and in count

def test_sigkill_under_load_loses_no_answered_inspection(
    tmp_path: Path, models_dir: Path, keys: dict[str, str]
) -> None:
    data = settings_data(tmp_path, models_dir, keys)
    data["log_sqlite_synchronous"] = "FULL"
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(data), encoding="utf-8")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server_log = tmp_path / "server.log"
    proc = start_logged(settings_file, port, server_log)

    answered: list[dict[str, Any]] = []
    lock = threading.Lock()
    stop = threading.Event()
    frames = [png(250, seed=1), png(5, seed=2), png(250, seed=3), png(5, seed=4)]
    sent = [0]

    def client(n: int) -> None:
        line = {"Authorization": f"Bearer {keys['line']}", "Content-Type": "image/png"}
        with httpx.Client(base_url=base, headers=line, timeout=10) as http:
            i = 0
            while not stop.is_set():
                with lock:
                    if sent[0] >= MAX_REQUESTS:
                        return
                    sent[0] += 1
                part = f"c{n}-{i}"
                frame = frames[(n + i) % len(frames)]
                i += 1
                try:
                    r = http.post(
                        "/v1/inspections", params={"station": SINGLE, "camera": "cam", "part_id": part}, content=frame
                    )
                except httpx.HTTPError:
                    if stop.is_set():
                        return
                    continue
                if r.status_code == 200:
                    with lock:
                        answered.append(r.json())

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for th in threads:
        th.start()
    time.sleep(LOAD_S)
    os.kill(proc.pid, signal.SIGKILL)  # mid-load: requests are in flight and batches half-formed
    proc.wait(timeout=30)
    stop.set()
    for th in threads:
        th.join(timeout=30)
    assert len(answered) >= CLIENTS, (
        f"too little load got through before the kill: {server_log.read_text(errors='replace')[-2000:]}"
    )

    proc = start_logged(settings_file, port, server_log)
    try:
        audit = {"Authorization": f"Bearer {keys['auditor']}"}
        with httpx.Client(base_url=base, headers=audit, timeout=60) as http:
            report = http.post("/v1/audit/verify").json()
            assert report["ok"] is True, report
            assert report["records"] >= len(answered)
            for ans in answered:
                r = http.get(f"/v1/audit/records/{ans['inspection_id']}")
                assert r.status_code == 200, (ans, r.text)
                rec = r.json()["record"]
                assert (rec["part_id"], rec["decision"]) == (ans["part_id"], ans["decision"])
            # No partial record: every stored record is complete, and every reject names a frame on disk.
            export = http.get("/v1/audit/export", params={"format": "jsonl", "kind": "inspection"}).text.splitlines()
            records = [json.loads(line) for line in export]
            assert len(records) >= len(answered)
            for rec in records:
                assert rec["decision"] in ("pass", "reject") and rec["hash"] and rec["station"] == SINGLE
                if rec["decision"] == "reject" and rec["frame_sha256"]:
                    assert (
                        tmp_path / "var" / "log.db.frames" / rec["frame_sha256"][:2] / rec["frame_sha256"]
                    ).is_file()
            # The restarted server keeps appending to the same chain.
            r = httpx.post(
                f"{base}/v1/inspections",
                params={"station": SINGLE, "camera": "cam", "part_id": "after"},
                content=frames[1],
                headers={"Authorization": f"Bearer {keys['line']}", "Content-Type": "image/png"},
            )
            assert r.status_code == 200
            assert http.post("/v1/audit/verify").json()["ok"] is True
    finally:
        stop_server(proc)
