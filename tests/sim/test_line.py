"""The line simulator (demo and benchmarks) against a real `inspection serve` process."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sim.line import LinePart, run_line
from tests.helpers.server import free_port, start_server, wait_ready
from tests.helpers.tiny_model import BRIGHT, DARK, frame_png
from tests.serving.conftest import SINGLE, settings_data


def test_a_paced_line_sends_parts_on_their_slots_and_scores_them(tmp_path: Path, models_dir: Path, keys) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(settings_data(tmp_path, models_dir, keys)), encoding="utf-8")
    port = free_port()
    proc = start_server(path, port)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(proc, base)
        parts = []
        for i in range(8):
            image = tmp_path / f"p{i}.png"
            image.write_bytes(frame_png(DARK if i % 2 else BRIGHT))
            parts.append(LinePart(f"SIM-{i}", image, "scratch" if i % 2 else "good"))
        report = run_line(base, parts, station=SINGLE, cameras=["cam"], api_key=keys["line"], concurrency=3, rate_hz=20)
        # Eight parts 50 ms apart: the last one reached the camera no sooner than 350 ms in.
        assert report.wall_s >= 7 / 20
        assert [o.part_id for o in report.outcomes] == [p.part_id for p in parts]
        assert [o.decision for o in report.outcomes] == ["pass", "reject"] * 4
        with pytest.raises(ValueError, match="rate_hz=0"):
            run_line(base, parts, station=SINGLE, cameras=["cam"], api_key=keys["line"], rate_hz=0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
