"""`inspection serve --workers 2` for real: two serving processes, one PostgreSQL log, two cameras per part."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from inspection.errors import ConfigError
from inspection.registry import ModelRegistry
from serving.settings import build_settings, worker_groups, worker_settings
from tests.conftest import REPO
from tests.helpers.logdb import PG_URL, pg_schema, pg_unreachable_reason
from tests.helpers.server import free_port
from tests.helpers.tiny_model import BRIGHT, DARK, frame_png, make_model_version
from tests.serving.conftest import settings_data

STATIONS = {"line-a": ["top", "side"], "line-b": ["top", "side"]}
#: Seconds of load (issue 18's target runs 60: INSPECTION_WORKERS_TEST_S=60).
LOAD_S = float(os.environ.get("INSPECTION_WORKERS_TEST_S", "6"))


def test_stations_are_split_round_robin_and_the_others_named(tmp_path: Path, keys: dict[str, str]) -> None:
    data = settings_data(tmp_path, tmp_path / "models", keys,
                         stations={s: {"cameras": ["c"]} for s in ("c1", "a1", "b1")})
    settings = build_settings(data)
    assert worker_groups(settings, 2) == [["a1", "c1"], ["b1"]]
    second = worker_settings(settings, 1, 2, host="127.0.0.1", port=9000)
    assert list(second.stations) == ["b1"] and second.port == 9001
    assert second.served_elsewhere == {"a1": "127.0.0.1:9000", "c1": "127.0.0.1:9000"}
    with pytest.raises(ConfigError, match=r"--workers 4: allowed 1\.\.3"):
        worker_groups(settings, 4)


def test_a_worker_asks_for_the_station_a_decision_query_left_out_as_the_line_pc_would(
        tmp_path: Path, keys: dict[str, str]) -> None:
    # A worker holding one station used to take a query without ?station= as its own: it opened
    # that part there and logged a fail-safe reject for it, where the one-process server answers 400.
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from tests.serving.conftest import auth

    root = tmp_path / "models"
    make_model_version(root, version="v1")
    ModelRegistry(root).promote("tiny", "v1")
    data = settings_data(tmp_path, root, keys, stations={s: {"cameras": cams} for s, cams in STATIONS.items()})
    worker = worker_settings(build_settings(data), 1, 2, host="127.0.0.1", port=9000)
    assert list(worker.stations) == ["line-b"]
    with TestClient(create_app(worker)) as client:
        r = client.get("/v1/parts/SN-1/decision", headers=auth(keys))
        assert r.status_code == 400 and "station is required" in r.json()["detail"]
        assert "line-a" in r.json()["detail"] and "line-b" in r.json()["detail"]
        assert client.app.state.service.parts.get("line-b", "SN-1") is None  # no part opened


def test_workers_refuse_a_sqlite_log(tmp_path: Path, keys: dict[str, str]) -> None:
    path = tmp_path / "serve.json"
    path.write_text(json.dumps(settings_data(tmp_path, tmp_path / "models", keys,
                                             stations={s: {"cameras": c} for s, c in STATIONS.items()})))
    run = subprocess.run([sys.executable, "-m", "inspection", "serve", "--settings", str(path), "--workers", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2
    assert "--workers 2 needs a log several processes can append to at once" in run.stderr


def _line_pc(tmp_path: Path, keys: dict[str, str], schema: str, **station: object) -> tuple[Path, str]:
    """The model active on both stations and a settings file whose log is a fresh PostgreSQL schema."""
    models = tmp_path / "models"
    make_model_version(models, version="v1")
    for name in STATIONS:
        ModelRegistry(models).promote("tiny", "v1", station=name)
    url = make_url(PG_URL).set(query={"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    path = tmp_path / "serve.json"
    path.write_text(json.dumps(settings_data(tmp_path, models, keys, log_url=url,
                                             stations={s: {"cameras": c, **station} for s, c in STATIONS.items()})))
    return path, url


@pytest.mark.postgres
@pytest.mark.skipif(bool(pg_unreachable_reason()), reason=str(pg_unreachable_reason()))
def test_two_processes_share_one_log_and_decide_parts_across_cameras(tmp_path: Path, keys: dict[str, str]) -> None:
    port = free_port()
    with pg_schema() as schema:
        path, url = _line_pc(tmp_path, keys, schema, part_deadline_ms=2000)
        out = (tmp_path / "serve.out").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "inspection", "serve", "--settings", str(path), "--port",
                                 str(port), "--workers", "2"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        ports = {"line-a": port, "line-b": port + 1}  # sorted names, round robin
        try:
            _wait_ready(proc, list(ports.values()), tmp_path / "serve.out")
            headers = {"Authorization": f"Bearer {keys['line']}", "content-type": "image/png"}
            # A frame sent to the other process: 421 naming the right one, nothing stored.
            wrong = httpx.post(f"http://127.0.0.1:{port + 1}/v1/inspections", content=frame_png(BRIGHT),
                               params={"station": "line-a", "camera": "top", "part_id": "lost"}, headers=headers)
            assert wrong.status_code == 421
            assert f"127.0.0.1:{port}" in wrong.json()["detail"]

            acked: list[tuple[str, str, str]] = []
            statuses: Counter[int] = Counter()
            lock = threading.Lock()

            def client(n: int) -> None:
                station = "line-a" if n % 2 == 0 else "line-b"
                with httpx.Client(base_url=f"http://127.0.0.1:{ports[station]}", headers=headers, timeout=30) as c:
                    deadline, i = time.monotonic() + LOAD_S, 0
                    while time.monotonic() < deadline:
                        part = f"p{n}-{i}"
                        for camera in STATIONS[station]:
                            body = frame_png(DARK if (i + n) % 3 else BRIGHT)
                            r = c.post("/v1/inspections", content=body,
                                       params={"station": station, "camera": camera, "part_id": part})
                            with lock:
                                statuses[r.status_code] += 1
                                if r.status_code == 200:
                                    acked.append((station, camera, r.json()["inspection_id"]))
                        i += 1

            threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            out.close()
        assert set(statuses) == {200} and statuses[200] > 100, statuses  # no 5xx, nothing refused

        from inspection.log.query import query_records
        from inspection.log.store import open_log

        with open_log(url, frames_dir=tmp_path / "var" / "frames") as store:
            records, cursor = [], None
            while True:
                page = query_records(store, None, cursor=cursor, limit=1000, order="asc")
                records += page.records
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            report = store.verify(check_frames=False)
        assert report.ok, report.detail  # one chain, appended by two processes
        views = {r.entry.inspection_id for r in records if r.entry.kind == "inspection"}
        assert {a[2] for a in acked} == views  # every acknowledged answer logged, nothing else
        assert len(views) == len(acked)
        parts = Counter((r.entry.station, r.entry.part_id) for r in records if r.entry.kind == "part")
        viewed = Counter((r.entry.station, r.entry.part_id) for r in records if r.entry.kind == "inspection")
        assert set(parts) == set(viewed)  # every part decided ...
        assert set(parts.values()) == {1} and set(viewed.values()) == {2}  # ... once, from both cameras
        print(f"\n{LOAD_S:g} s, 8 clients, 2 processes: {statuses[200]} answers, {len(views)} frame records, "
              f"{len(parts)} parts, chain of {report.records} records verified")
        failsafe = [r for r in records if r.entry.kind == "part" and r.entry.failsafe_reason]
        assert not failsafe, [r.entry.failsafe_reason for r in failsafe][:3]


def _wait_ready(proc: subprocess.Popen[bytes], ports: list[int], log_file: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(ports)
    while pending:
        for p in list(pending):
            try:
                if httpx.get(f"http://127.0.0.1:{p}/readyz", timeout=1).status_code == 200:
                    pending.discard(p)
            except httpx.TransportError:
                pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"not ready on {sorted(pending)}: {log_file.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


@pytest.mark.postgres
@pytest.mark.skipif(bool(pg_unreachable_reason()), reason=str(pg_unreachable_reason()))
def test_one_process_failing_stops_the_set(tmp_path: Path, keys: dict[str, str]) -> None:
    import socket

    port = free_port()
    taken = socket.create_server(("127.0.0.1", port + 1))  # process 1's port is someone else's
    with pg_schema() as schema, taken:
        path, _ = _line_pc(tmp_path, keys, schema)
        run = subprocess.run([sys.executable, "-m", "inspection", "serve", "--settings", str(path), "--port",
                              str(port), "--workers", "2"], cwd=REPO, capture_output=True, text=True, timeout=180,
                             check=False)
    assert run.returncode != 0
    assert "serving process 1" in run.stderr and "stopping the others" in run.stderr, run.stderr[-2000:]
    with pytest.raises(httpx.TransportError):  # process 0 did not outlive its sibling
        httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
