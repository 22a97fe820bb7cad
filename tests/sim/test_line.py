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


def test_located_counts_rejected_defective_parts_whose_box_covers_the_defect() -> None:
    import numpy as np

    from sim.line import PartOutcome, located

    truth = np.zeros((40, 40), bool)
    truth[10:14, 20:24] = True

    def part(pid: str, label: str, decision: str, box: list[float] | None) -> PartOutcome:
        return PartOutcome(pid, label, decision, None, None, "m/v1", 1.0, 1.0, box)

    outcomes = [
        part("hit", "scratch", "reject", [18.0, 8.0, 4.0, 4.0]),      # overlaps x 20..22, y 10..12
        part("miss", "scratch", "reject", [0.0, 0.0, 8.0, 8.0]),
        part("edge", "scratch", "reject", [23.5, 13.5, 2.0, 2.0]),    # touches pixel (23, 13)
        part("escape", "scratch", "pass", None),                       # passed: nothing to judge
        part("good", "good", "reject", [0.0, 0.0, 40.0, 40.0]),        # overkill: not a defect
        part("nomap", "scratch", "reject", None),                      # an older model: no box
    ]
    assert located(outcomes, lambda o: truth) == (2, 3)
