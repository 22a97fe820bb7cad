"""The retraining loop end to end, with real training, a real server app and a real log.

A model trained on good + scratch (no "streak" defects) serves a station; streak frames arrive and
mostly pass; an engineer labels them through the labelling API; ``dataset build`` makes a new
version; the retrained model is compared with the served one on that version's test split,
passes the promotion gate and is promoted; the server swaps to it without a restart, and the
promotion is in the log. Promoting the old model back is refused: it escapes more.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from inspection.cli import main as cli
from inspection.compare import compare_models
from inspection.dataset.layout import Sample, read_dataset, write_dataset
from inspection.registry import ModelRegistry
from serving.app import create_app
from serving.settings import build_settings, hash_key

pytestmark = pytest.mark.slow

SIZE = 32
STATION = "coater-1"
KEYS = {"line": "line-key-5a1f0c", "engineer": "engineer-key-93be21", "auditor": "auditor-key-7c0d44"}


def draw(label: str, rng: np.random.Generator) -> bytes:
    """Coating texture; scratches are dark lines, streaks (the new type) wide, slightly brighter bands."""
    img = rng.normal(128, 12, (SIZE, SIZE)).clip(0, 255).astype(np.uint8)
    c = int(rng.integers(SIZE // 4, 3 * SIZE // 4))
    if label == "scratch":
        cv2.line(img, (0, c), (SIZE - 1, int(rng.integers(0, SIZE))), 20, 2)
    elif label == "streak":
        img[:, c:c + 12] = np.clip(img[:, c:c + 12].astype(np.int16) + 30, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def base_dataset(dest: Path) -> Path:
    rng = np.random.default_rng(0)
    items = []
    for cls, n in (("good", 50), ("scratch", 25)):
        for i in range(n):
            split = ("train", "train", "train", "val", "test")[i % 5]
            items.append((Sample(f"images/{cls}/{i:03d}.png", cls, split), draw(cls, rng)))
    write_dataset(dest, name="coat", classes=["good", "scratch"], good_class="good", items=items)
    return dest


def train(data: Path, models: Path) -> str:
    from training.config import load_config
    from training.train import main

    # tinyres in fp32, pinned: the scenario needs a first model that misses the new defect type, and
    # the default linecnn (or tinyres in bf16, where this CPU picks it) already rejects this test's
    # streaks without having seen one.
    cfg = load_config(None, {
        "arch": "tinyres",
        "data": data, "models_dir": models, "name": "coat", "image_size": SIZE, "epochs": 10, "min_epochs": 10,
        "patience": 10, "lr": 0.01, "batch_size": 16, "progress": False, "pretrained": False, "max_overkill": 0.1,
        "threads": 1, "precision": "fp32",
    })
    return main(cfg).card.model_id


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


def inspect(client: TestClient, frame: bytes, part: str) -> dict[str, Any]:
    r = client.post("/v1/inspections", params={"station": STATION, "camera": "cam", "part_id": part}, content=frame,
                    headers={**auth("line"), "content-type": "image/png"})
    assert r.status_code == 200, r.text
    return r.json()


def test_label_build_retrain_compare_promote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    base = base_dataset(tmp_path / "datasets" / "coat")
    old = train(base, models)
    log_url = f"sqlite:///{tmp_path / 'var' / 'log.db'}"
    assert cli(["models", "promote", old, "--station", STATION, "--models-dir", str(models), "--log-url", log_url]) == 0
    settings = build_settings({
        "models_dir": str(models), "log_url": log_url, "log_sqlite_synchronous": "NORMAL", "frame_sample_rate": 1.0,
        "stations": {STATION: {"cameras": ["cam"]}}, "reload_poll_s": 0.05,
        "labelling": {"classes": ["good", "scratch", "streak"], "pass_sample": 100},
        "api_keys": [{"name": f"{r}-key", "role": r, "sha256": hash_key(k)} for r, k in KEYS.items()],
    })
    rng = np.random.default_rng(1)
    truth: dict[str, str] = {}
    with TestClient(create_app(settings)) as client:
        # Production: the line sees streaks (a defect type the model never saw) among ordinary parts.
        plan = ["streak"] * 30 + ["good"] * 6 + ["scratch"] * 4
        answers = {}
        for i, cls in enumerate(plan):
            a = inspect(client, draw(cls, rng), f"part-{i:03d}")
            assert a["model_version"] == old
            truth[a["inspection_id"]] = cls
            answers[a["inspection_id"]] = a
        streak_passed = sum(answers[f]["decision"] == "pass" for f, c in truth.items() if c == "streak")

        # The engineer works through the queue and labels every frame (the browser test drives the page).
        queue = client.get("/v1/labelling/queue", params={"limit": 200}, headers=auth("engineer")).json()["items"]
        assert {q["frame_id"] for q in queue} == set(truth)
        for q in queue:
            r = client.post(f"/v1/labelling/frames/{q['frame_id']}/labels", headers=auth("engineer"),
                            json={"label": truth[q["frame_id"]], "expected_revision": q["revision"]})
            assert r.status_code == 201, r.text

        out = tmp_path / "datasets" / "coat-v2"
        assert cli(["dataset", "build", "--base", str(base), "--log-url", log_url, "--out", str(out)]) == 0
        built = read_dataset(out, verify=True)
        assert built.classes == ["good", "scratch", "streak"]
        assert {e["frame_id"] for e in built.manifest["lineage"]["labels"]} == set(truth)

        new = train(out, models)
        reg = ModelRegistry(models)
        cmp = compare_models(reg.get(*old.split("/")), reg.get(*new.split("/")), out)
        streak = cmp.per_class["streak"]
        assert streak["n"] >= 4
        assert streak["b"]["rate"] > streak["a"]["rate"], streak  # recall on the new type rises
        assert streak["classified_b"]["rate"] > 0.0 and streak["classified_a"]["k"] == 0

        capsys.readouterr()
        promote = ["models", "promote", new, "--station", STATION, "--data", str(out), "--models-dir", str(models),
                   "--log-url", log_url, "--actor", "qe-anna", "--reason", "learned streaks"]
        assert cli(promote) == 0, capsys.readouterr().err
        assert "gate passed" in capsys.readouterr().out

        # The running server swaps to the new version (it polls active.json); no restart.
        deadline = time.monotonic() + 30
        while (a := inspect(client, draw("streak", rng), "after-1"))["model_version"] != new:
            assert time.monotonic() < deadline, "the server kept answering with the old model"
            time.sleep(0.05)
        recs = client.get("/v1/audit/records", params={"kind": "promotion", "order": "asc"},
                          headers=auth("auditor")).json()["records"]
        assert [(r["model_name"] + "/" + r["model_version"], r["actor"]) for r in recs] == [
            (old, "cli"),
            (new, "qe-anna"),
        ]
        assert recs[-1]["data"]["gate"]["status"] == "passed" and recs[-1]["data"]["previous"] == old

        # Back to the old model would raise the escape rate: refused, both rates named.
        assert cli(["models", "promote", old, "--station", STATION, "--data", str(out), "--models-dir", str(models),
                    "--log-url", log_url]) == 2
        err = capsys.readouterr().err
        assert f"escape rate of {old} is {cmp.escape['a']['rate']:.2%}" in err
        assert f"of the active {new} {cmp.escape['b']['rate']:.2%}" in err
        assert inspect(client, draw("good", rng), "after-2")["model_version"] == new
    print(
        f"streak recall {streak['a']['rate']:.2f} -> {streak['b']['rate']:.2f}; "
        f"escape {cmp.escape['a']['rate']:.3f} -> "
        f"{cmp.escape['b']['rate']:.3f}; streaks passed in production by the old model: {streak_passed}/30"
    )
