"""`inspection serve` as users run it: a real uvicorn process, settings file + environment, real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from tests.conftest import REPO
from tests.helpers.server import free_port, start_server, wait_ready
from tests.helpers.tiny_model import DARK, frame_png
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


def test_cli_refuses_to_start_on_an_untrusted_model_with_a_clear_error(tmp_path: Path, models_dir: Path, keys) -> None:
    card_path = models_dir / "tiny" / "v1" / "model.json"
    card = json.loads(card_path.read_text())
    (models_dir / "tiny" / "v1" / "golden.npz").write_bytes(b"tampered")
    card_path.write_text(json.dumps(card))
    path = _write(tmp_path, settings_data(tmp_path, models_dir, keys))
    out = subprocess.run([sys.executable, "-m", "inspection", "serve", "--settings", str(path), "--port",
                          str(free_port())], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2
    assert "error: tiny/v1: file 'golden.npz' has sha256" in out.stderr
