"""`inspection serve` as users run it: a real uvicorn process, settings file + environment, real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import yaml

from tests.helpers.server import free_port, start_server, wait_ready
from tests.helpers.tiny_model import DARK, frame_png, tamper_weights
from tests.serving.conftest import SINGLE, auth, settings_data


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


async def _stream_one(port: int, keys: dict[str, str]) -> dict:
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{port}/v1/stream?station={SINGLE}&camera=cam"
    async with connect(url, additional_headers=auth(keys)) as ws:
        await ws.send(json.dumps({"part_id": "ws-1", "content_type": "image/png"}))
        await ws.send(frame_png(DARK))
        return json.loads(await ws.recv())


def test_cli_serves_over_real_http_and_stops_cleanly(tmp_path: Path, models_dir: Path, keys) -> None:
    port = free_port()
    path = _write(tmp_path, settings_data(tmp_path, models_dir, keys))
    proc = start_server(path, port, env={**os.environ, "INSPECTION_BATCHING__MAX_BATCH": "4"}, capture=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(proc, base)
        r = httpx.post(f"{base}/v1/inspections", content=frame_png(DARK),
                       params={"station": SINGLE, "camera": "cam", "part_id": "real-1"},
                       headers={**auth(keys), "content-type": "image/png"})
        assert r.status_code == 200 and r.json()["decision"] == "reject"
        running = httpx.get(f"{base}/v1/admin/settings", headers=auth(keys, "admin")).json()
        assert running["batching"]["max_batch"] == 4  # from the environment
        assert httpx.post(f"{base}/v1/inspections", headers=auth(keys)).status_code == 400
        assert asyncio.run(_stream_one(port, keys))["decision"] == "reject"  # WebSocket through uvicorn
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    # uvicorn finishes its shutdown (lifespan included), then re-raises the SIGTERM it caught.
    assert proc.returncode == -15 and "Traceback" not in out, out


def test_cli_on_an_untrusted_model_stays_up_not_ready_and_fail_safe_rejects(tmp_path: Path, models_dir: Path,
                                                                            keys) -> None:
    tamper_weights(models_dir / "tiny" / "v1")  # altered weights, card re-hashed: only the golden frames tell
    port = free_port()
    proc = start_server(_write(tmp_path, settings_data(tmp_path, models_dir, keys)), port, capture=True)
    base = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:  # up (answering), but not ready
            try:
                ready = httpx.get(f"{base}/readyz", timeout=1)
                if ready.json().get("status") != "starting":
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() - started < 60, "the server did not come up"
            time.sleep(0.1)
        assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
        assert "model_untrusted: tiny/v1 failed verification at start" in ready.json()["problems"][SINGLE]
        r = httpx.post(f"{base}/v1/inspections", content=frame_png(DARK),
                       params={"station": SINGLE, "camera": "cam", "part_id": "untrusted-1"},
                       headers={**auth(keys), "content-type": "image/png"})
        assert r.status_code == 503 and r.json()["failsafe"]["reason"] == "model_untrusted", r.text
        assert "golden frames re-scored" in r.json()["detail"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "failed verification at start" in out and "Traceback" not in out, out


def test_sigterm_stops_the_server_while_a_line_page_streams_its_events(tmp_path: Path, models_dir: Path,
                                                                      keys) -> None:
    # The /line page's event stream never ends by itself: uvicorn waited for it, and one wall
    # screen kept the server up after SIGTERM until it was killed (no clean stop of parts and log).
    import threading

    port = free_port()
    path = _write(tmp_path, {**settings_data(tmp_path, models_dir, keys), "shutdown_grace_s": 1})
    proc = start_server(path, port, capture=True)
    base = f"http://127.0.0.1:{port}"
    streaming = threading.Event()

    def watch() -> None:
        try:
            with httpx.stream("GET", f"{base}/v1/line/{SINGLE}/events", headers=auth(keys, "viewer"),
                              timeout=None) as r:
                for _ in r.iter_bytes():
                    streaming.set()
        except httpx.HTTPError:
            pass

    try:
        wait_ready(proc, base)
        threading.Thread(target=watch, daemon=True).start()
        assert streaming.wait(30), "the line page's stream sent nothing"
        stopping = time.monotonic()
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert time.monotonic() - stopping < 15 and proc.returncode == -15, out
