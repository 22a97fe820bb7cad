"""Model verification on load, and live swaps on promote/rollback without failing in-flight frames."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from inspection.card import hash_files, load_card, save_card
from inspection.registry import ModelRegistry
from serving.app import create_app
from serving.settings import ServeSettings, build_settings
from tests.helpers.tiny_model import BRIGHT, frame_png, make_model_version
from tests.serving.conftest import SINGLE, STATION, auth, settings_data

# Errors say what, not where: every answer of these fault tests is checked (tests/helpers/leaks.py).
pytestmark = pytest.mark.usefixtures("no_infrastructure_details")


def _skew_golden(folder: Path, delta: float) -> None:
    """Change the expected golden probabilities and re-hash the card (hashes stay consistent)."""
    with np.load(folder / "golden.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["probabilities"] = arrays["probabilities"] + delta
    np.savez(folder / "golden.npz", **arrays)
    card = load_card(folder)
    save_card(card.model_copy(update={"files": hash_files(folder, list(card.files))}), folder)


def _untrusted_start(app, keys, match: str) -> None:
    """The server starts not ready, names the reason on /readyz, and fail-safe rejects every frame."""
    with TestClient(app) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text
        problem = ready.json()["problems"][SINGLE]
        assert problem.startswith("model_untrusted: tiny/v1 failed verification at start") and re.search(match, problem)
        r = client.post("/v1/inspections", params={"station": SINGLE, "camera": "cam", "part_id": "P-1"},
                        content=frame_png(BRIGHT), headers={**auth(keys), "Content-Type": "image/png"})
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["error"] == "model_untrusted" and body["failsafe"]["reason"] == "model_untrusted"
        assert body["failsafe"]["decision"] == "reject" and body["incident"]
        record = client.get(f"/v1/audit/records/{body['failsafe']['inspection_id']}", headers=auth(keys, "auditor"))
        reason = record.json()["record"]["failsafe_reason"]
        assert reason.startswith("model_untrusted: station 'press-2' cannot score frames: tiny/v1 failed verification")


def test_start_on_a_model_whose_golden_frames_disagree_is_not_ready_and_rejects(tmp_path, models_dir, keys) -> None:
    _skew_golden(models_dir / "tiny" / "v1", 0.01)
    app = create_app(build_settings(settings_data(tmp_path, models_dir, keys)))
    _untrusted_start(app, keys, r"golden frames re-scored with max abs difference 0\.01.*tolerance 0\.0001")


def test_start_on_a_model_whose_file_hash_differs_is_not_ready_and_rejects(tmp_path, models_dir, keys) -> None:
    onnx_file = models_dir / "tiny" / "v1" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\x00")
    app = create_app(build_settings(settings_data(tmp_path, models_dir, keys)))
    _untrusted_start(app, keys, "file 'model.onnx' has sha256")


def test_golden_tolerance_comes_from_the_card(tmp_path, models_dir, keys) -> None:
    folder = models_dir / "tiny" / "v1"
    _skew_golden(folder, 1e-6)  # within the card's 1e-4
    with TestClient(create_app(build_settings(settings_data(tmp_path, models_dir, keys)))) as client:
        status = client.get("/v1/models", headers=auth(keys, "engineer")).json()["stations"]
        assert {s["model_version"] for s in status} == {"tiny/v1"}
        assert all(0 < s["golden_max_diff"] <= 1e-4 for s in status)


@pytest.mark.asyncio
async def test_promote_and_rollback_swap_live_without_failing_in_flight_frames(tmp_path, models_dir, keys) -> None:
    # v2 rejects everything (large bias towards the defect classes), so answers show which model decided.
    make_model_version(models_dir, version="v2", bias=50.0)
    make_model_version(models_dir, version="v3")
    _skew_golden(models_dir / "tiny" / "v3", 0.05)  # hashes fine, golden frames wrong: must be refused
    registry = ModelRegistry(models_dir)
    app = create_app(build_settings(settings_data(tmp_path, models_dir, keys)))
    answers: list[dict] = []
    stop = asyncio.Event()

    async def line(http: httpx.AsyncClient, worker: int) -> None:
        n = 0
        while not stop.is_set():
            r = await http.post("/v1/inspections", content=frame_png(BRIGHT, seed=n),
                                params={"station": SINGLE, "camera": "cam", "part_id": f"w{worker}-{n}"},
                                headers={**auth(keys), "content-type": "image/png"})
            assert r.status_code == 200, r.text
            answers.append(r.json())
            n += 1

    async def active_version(http: httpx.AsyncClient, want: str) -> None:
        for _ in range(200):
            status = (await http.get("/v1/models", headers=auth(keys, "engineer"))).json()["stations"]
            if {s["model_version"] for s in status if s["station"] == SINGLE} == {want}:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"station never switched to {want}")

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        workers = [asyncio.create_task(line(http, i)) for i in range(4)]
        await asyncio.sleep(0.2)
        await asyncio.to_thread(registry.promote, "tiny", "v2", station=SINGLE)
        await active_version(http, "tiny/v2")
        await asyncio.sleep(0.2)
        await asyncio.to_thread(registry.promote, "tiny", "v3", station=SINGLE)
        for _ in range(100):  # the watcher polls every 50 ms
            status = (await http.get("/v1/models", headers=auth(keys, "engineer"))).json()["stations"]
            single = next(s for s in status if s["station"] == SINGLE)
            if single["error"]:
                break
            await asyncio.sleep(0.02)
        assert single["model_version"] == "tiny/v2" and "refused tiny/v3" in single["error"]
        assert "golden frames re-scored" in single["error"]
        await asyncio.to_thread(registry.rollback, station=SINGLE)  # v3 -> v2: no change needed
        await asyncio.to_thread(registry.rollback, station=SINGLE)  # v2 -> v1
        await active_version(http, "tiny/v1")
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*workers)
        metrics = (await http.get("/metrics", headers=auth(keys, "admin"))).text
        for answer in answers:  # the log names the same version as the answer
            entry = app.state.log.get(answer["inspection_id"]).entry
            assert f"{entry.model_name}/{entry.model_version}" == answer["model_version"]
        ready = await http.get("/readyz")
    versions = [a["model_version"] for a in answers]
    assert set(versions) == {"tiny/v1", "tiny/v2"}
    for answer in answers:  # every answer names the model that decided it
        assert answer["decision"] == ("pass" if answer["model_version"] == "tiny/v1" else "reject")
    assert versions[0] == "tiny/v1" and versions[-1] == "tiny/v1" and "tiny/v2" in versions
    assert 'inspection_model_load_failures_total{model="tiny/v3"} 1.0' in metrics
    assert ready.status_code == 200


def test_the_busy_session_scores_like_the_lone_frame_session_and_is_verified(models_dir) -> None:
    # Under load batches run on a second session with fewer intra-op threads; it is the same
    # file, checked against the golden frames too, and gives the same probabilities.
    from serving.model import load_model
    from serving.settings import RuntimeSettings

    version = ModelRegistry(models_dir).get("tiny", "v1")
    model = load_model(version, RuntimeSettings(intra_op_threads=2, busy_intra_op_threads=1))
    assert model.busy_session is not None
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 1, 32, 32), dtype=np.uint8)
    np.testing.assert_allclose(model.run(pixels, busy=True), model.run(pixels), atol=1e-6)
    one = load_model(version, RuntimeSettings(intra_op_threads=2, busy_intra_op_threads=2))
    assert one.busy_session is None  # same thread count: one session serves both


def test_start_refuses_a_model_when_the_busy_session_disagrees_with_the_golden_frames(
    tmp_path, models_dir, keys, monkeypatch
) -> None:
    import serving.model as serving_model

    real = serving_model.LoadedModel.score

    def skewed(self, pixels, *, busy=False):  # the busy session's runtime misbehaves
        probs, maps = real(self, pixels, busy=busy)
        return (probs + 0.01 if busy else probs), maps

    monkeypatch.setattr(serving_model.LoadedModel, "score", skewed)
    data = settings_data(tmp_path, models_dir, keys)
    data["runtime"] = {"intra_op_threads": 2, "busy_intra_op_threads": 1}
    _untrusted_start(create_app(build_settings(data)), keys, "golden frames re-scored")


def test_batches_under_load_keep_every_core_unless_inference_is_short() -> None:
    from serving.model import SHORT_INFERENCE_MS, _busy_threads
    from serving.settings import RuntimeSettings

    four = RuntimeSettings(intra_op_threads=4)
    assert _busy_threads(four, SHORT_INFERENCE_MS / 4) == 3  # decoding and HTTP weigh: leave the loop a core
    assert _busy_threads(four, SHORT_INFERENCE_MS * 5) == 4  # the model dominates: all cores, one session
    assert _busy_threads(RuntimeSettings(intra_op_threads=1), 0.1) == 1
    assert _busy_threads(RuntimeSettings(intra_op_threads=4, busy_intra_op_threads=2), 100.0) == 2  # as configured


def test_promotion_time_is_read_once_per_change_of_active_json(settings: ServeSettings, models_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The /line streams ask for it every second each: active.json is read only when it changed."""
    from serving.lifecycle import ModelManager
    from serving.telemetry import ServingMetrics

    manager = ModelManager(settings, ServingMetrics())
    registry = ModelRegistry(models_dir)
    first = manager.promoted_at(SINGLE)
    assert first == registry.history(SINGLE)[-1]["at"]
    reads = []
    real = manager.registry.read_state
    monkeypatch.setattr(manager.registry, "read_state", lambda: reads.append(1) or real())
    assert [manager.promoted_at(SINGLE) for _ in range(5)] == [first] * 5 and reads == []
    make_model_version(models_dir, version="v2")
    registry.promote("tiny", "v2", station=SINGLE)
    assert manager.promoted_at(SINGLE) == registry.history(SINGLE)[-1]["at"] and len(reads) == 1
    assert manager.promoted_at("no-such-station") is None


def _reload(client: TestClient, keys: dict[str, str]) -> list[str]:
    r = client.post("/v1/models/reload", headers=auth(keys, "engineer"))
    assert r.status_code == 200, r.text
    return r.json()["changed"]


def test_a_station_whose_version_cannot_be_read_on_reload_keeps_its_model_alone_and_is_retried(
    tmp_path, models_dir, keys
) -> None:
    # One station's promoted version with a broken card must not hold back the other's swap,
    # and is tried again without a further change of active.json once the card is readable.
    make_model_version(models_dir, version="v2")
    make_model_version(models_dir, version="v4")
    registry = ModelRegistry(models_dir)
    data = settings_data(tmp_path, models_dir, keys, reload_poll_s=60)  # reloads only when asked
    with TestClient(create_app(build_settings(data))) as client:
        registry.promote("tiny", "v4", station=STATION)
        card = models_dir / "tiny" / "v4" / "model.json"
        good = card.read_text()
        card.write_text("{")
        registry.promote("tiny", "v2", station=SINGLE)
        assert _reload(client, keys) == [SINGLE]
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text  # the station still scores with its verified model
        body = ready.json()
        assert body["models"] == {STATION: "tiny/v1", SINGLE: "tiny/v2"}
        assert set(body["refused"]) == {STATION} and "not valid JSON" in body["refused"][STATION]
        assert "active.json unreadable" not in body["refused"][STATION]
        card.write_text(good)
        assert _reload(client, keys) == [STATION]  # active.json did not change again
        body = client.get("/readyz").json()
        assert body["models"] == {STATION: "tiny/v4", SINGLE: "tiny/v2"} and body["refused"] == {}


def test_a_station_whose_version_folder_is_gone_at_start_is_untrusted_alone(tmp_path, models_dir, keys) -> None:
    make_model_version(models_dir, version="v0")
    ModelRegistry(models_dir).promote("tiny", "v0", station=STATION)
    away = tmp_path / "away"
    (models_dir / "tiny" / "v0").rename(away)
    data = settings_data(tmp_path, models_dir, keys, reload_poll_s=60)
    with TestClient(create_app(build_settings(data))) as client:  # the server starts
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text
        problems = ready.json()["problems"]
        assert set(problems) == {STATION} and "model_untrusted: its active version cannot be read" in problems[STATION]
        assert "no model tiny/v0" in problems[STATION]
        r = client.post("/v1/inspections", params={"station": SINGLE, "camera": "cam", "part_id": "P-1"},
                        content=frame_png(BRIGHT), headers={**auth(keys), "Content-Type": "image/png"})
        assert r.status_code == 200, r.text  # the other station scores
        r = client.post("/v1/inspections", params={"station": STATION, "camera": "top", "part_id": "P-2"},
                        content=frame_png(BRIGHT), headers={**auth(keys), "Content-Type": "image/png"})
        assert r.status_code == 503 and r.json()["failsafe"]["reason"] == "model_untrusted", r.text
        away.rename(models_dir / "tiny" / "v0")
        assert _reload(client, keys) == [STATION]  # retried though active.json did not change
        assert client.get("/readyz").status_code == 200


def test_a_refusal_is_cleared_by_the_rollback_that_returns_to_the_model_kept(tmp_path, models_dir, keys) -> None:
    make_model_version(models_dir, version="v3")
    _skew_golden(models_dir / "tiny" / "v3", 0.05)
    registry = ModelRegistry(models_dir)
    data = settings_data(tmp_path, models_dir, keys, reload_poll_s=60)  # reloads only when asked
    with TestClient(create_app(build_settings(data))) as client:
        registry.promote("tiny", "v3", station=SINGLE)
        assert _reload(client, keys) == []
        assert "refused tiny/v3" in client.get("/readyz").json()["refused"][SINGLE]
        registry.rollback(station=SINGLE)  # back to tiny/v1, which the station never left
        assert _reload(client, keys) == []
        status = client.get("/v1/models", headers=auth(keys, "engineer")).json()["stations"]
        assert {(s["model_version"], s["error"]) for s in status} == {("tiny/v1", None)}
        assert client.get("/readyz").json()["refused"] == {}
