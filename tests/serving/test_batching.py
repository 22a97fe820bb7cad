"""Micro-batching, overload (503 + Retry-After + fail-safe) and model errors (fail-safe), through HTTP."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from inspection.registry import ModelRegistry
from serving.app import create_app
from serving.settings import build_settings
from tests.helpers.tiny_model import BRIGHT, DARK, frame_png, make_model_version
from tests.serving.conftest import SINGLE, auth, settings_data


async def _burst(app, keys, n: int, *, level: int = BRIGHT, prefix: str = "b") -> list[httpx.Response]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        async def one(i: int) -> httpx.Response:
            return await http.post("/v1/inspections", content=frame_png(level, seed=i),
                                   params={"station": SINGLE, "camera": "cam", "part_id": f"{prefix}{i}"},
                                   headers={**auth(keys), "content-type": "image/png"})

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def _metric(text: str, pattern: str) -> float:
    match = re.search(pattern + r" ([0-9.e+-]+)", text)
    assert match, pattern
    return float(match.group(1))


@pytest.mark.asyncio
async def test_concurrent_frames_share_model_calls_and_batches_are_capped(tmp_path, models_dir, keys) -> None:
    settings = build_settings(settings_data(tmp_path, models_dir, keys,
                                            batching={"max_delay_ms": 5, "max_batch": 4, "queue_size": 64}))
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        answers = await _burst(app, keys, 24)
        text = app.state.metrics.render().decode()
        records = [app.state.log.get(r.json()["inspection_id"]).entry for r in answers]
    assert [r.status_code for r in answers] == [200] * 24
    assert all(r.json()["decision"] == "pass" for r in answers)
    calls = _metric(text, "inspection_batch_size_count")
    assert _metric(text, "inspection_batch_size_sum") == 24
    assert calls < 24  # some frames shared a call
    assert _metric(text, r'inspection_batch_size_bucket\{le="4.0"\}') == calls  # none above max_batch
    assert {e.part_id for e in records} == {f"b{i}" for i in range(24)}


@pytest.mark.asyncio
async def test_full_queue_answers_503_with_retry_after_and_failsafe_rejects_the_part(
    tmp_path, models_dir, keys
) -> None:
    settings = build_settings(settings_data(tmp_path, models_dir, keys,
                                            batching={"max_delay_ms": 0, "max_batch": 1, "queue_size": 1,
                                                      "retry_after_s": 2}))
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        answers = await _burst(app, keys, 16)
        overloaded = [r for r in answers if r.status_code == 503]
        assert overloaded and len(overloaded) < 16
        assert {r.status_code for r in answers} == {200, 503}
        for r in overloaded:
            body: dict[str, Any] = r.json()
            assert r.headers["Retry-After"] == "2" and body["error"] == "overloaded"
            assert "queue_size=1" in body["detail"]
            entry = app.state.log.get(body["failsafe"]["inspection_id"]).entry
            assert (entry.decision, entry.part_id) == ("reject", body["failsafe"]["part_id"])
            assert entry.failsafe_reason.startswith("overload")
            part = await app.state.service.parts.wait(SINGLE, body["failsafe"]["part_id"], 5.0)
            assert part.decision == "reject"
        text = app.state.metrics.render().decode()
        assert _metric(text, rf'inspection_failsafe_rejects_total\{{reason="overload",station="{SINGLE}"\}}') == len(
            overloaded
        )
        # The server recovers at once.
        assert all(r.status_code == 200 for r in await _burst(app, keys, 1, prefix="after"))


def _single_station_app(tmp_path, keys, **model):  # type: ignore[no-untyped-def]
    """The app with one station (SINGLE) serving a tiny model built with ``model``."""
    models_dir = tmp_path / "models"
    make_model_version(models_dir, **model)
    ModelRegistry(models_dir).promote("tiny", "v1", station=SINGLE)
    data = settings_data(tmp_path, models_dir, keys)
    data["stations"] = {SINGLE: data["stations"][SINGLE]}
    return create_app(build_settings(data))


@pytest.mark.asyncio
async def test_model_error_is_a_failsafe_reject_and_the_next_frame_is_scored(tmp_path, keys) -> None:
    app = _single_station_app(tmp_path, keys, nan_when_black=True, conv=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        r = await http.post(
            "/v1/inspections",
            content=frame_png(0),
            params={"station": SINGLE, "camera": "cam", "part_id": "black"},
            headers={**auth(keys), "content-type": "image/png"},
        )
        assert r.status_code == 503 and r.json()["error"] == "model_error"
        assert "NaN" in r.json()["detail"] and r.json()["failsafe"]["reason"] == "model_error"
        assert r.json()["failsafe"]["model_version"] == "tiny/v1"
        entry = app.state.log.get(r.json()["failsafe"]["inspection_id"]).entry
        assert (entry.decision, entry.model_version) == ("reject", "v1")
        ok = await http.post(
            "/v1/inspections",
            content=frame_png(DARK),
            params={"station": SINGLE, "camera": "cam", "part_id": "dark"},
            headers={**auth(keys), "content-type": "image/png"},
        )
        assert ok.status_code == 200 and ok.json()["decision"] == "reject"


@pytest.mark.asyncio
async def test_a_frame_that_failed_is_logged_under_the_model_that_handled_it_not_one_promoted_meanwhile(
        tmp_path, keys) -> None:
    from inspection.registry import ModelRegistry as Registry
    from serving.model import load_model

    app = _single_station_app(tmp_path, keys, nan_when_black=True, conv=False)
    make_model_version(tmp_path / "models", version="v2")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        service = app.state.service
        handling = service.models.current(SINGLE)
        promoted = load_model(Registry(tmp_path / "models").get("tiny", "v2"), app.state.settings.runtime)
        calls = iter([handling])
        # A promotion lands while the frame is scored: every later lookup finds v2.
        service.models.current = lambda station: next(calls, promoted)
        r = await http.post("/v1/inspections", content=frame_png(0),
                            params={"station": SINGLE, "camera": "cam", "part_id": "swap"},
                            headers={**auth(keys), "content-type": "image/png"})
        assert r.status_code == 503 and "tiny/v1" in r.json()["detail"]
        assert r.json()["failsafe"]["model_version"] == "tiny/v1"
        entry = app.state.log.get(r.json()["failsafe"]["inspection_id"]).entry
        assert (entry.model_name, entry.model_version) == ("tiny", "v1")


@pytest.mark.asyncio
async def test_a_defect_map_with_nan_is_a_failsafe_reject_like_nan_probabilities(tmp_path, keys) -> None:
    # The probabilities are finite; only the map is not. It used to fail after scoring, where the
    # reject's box is placed: 503 with no fail-safe record and the part left without its view.
    app = _single_station_app(tmp_path, keys, map_cell=8, nan_map_when_black=True)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        r = await http.post("/v1/inspections", content=frame_png(0),
                            params={"station": SINGLE, "camera": "cam", "part_id": "black"},
                            headers={**auth(keys), "content-type": "image/png"})
        assert r.status_code == 503 and r.json()["error"] == "model_error" and "defect map" in r.json()["detail"]
        assert r.json()["failsafe"]["reason"] == "model_error" and r.json()["failsafe"]["stored"] is True
        assert app.state.log.get(r.json()["failsafe"]["inspection_id"]).entry.decision == "reject"
        part = await app.state.service.parts.wait(SINGLE, "black", 5.0)
        assert part.decision == "reject" and [v.failsafe_reason for v in part.views["cam"]] == ["model_error"]
        part = (await http.get("/v1/parts/black/decision", params={"wait_ms": 5000}, headers=auth(keys))).json()
        assert part["decision"] == "reject" and "model_error" in part["failsafe_reason"]
