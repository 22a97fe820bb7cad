"""Part decisions across a station's cameras: any reject rejects; missing or late views fail safe."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import build_settings
from tests.helpers.tiny_model import BRIGHT, DARK, frame_png
from tests.serving.conftest import SINGLE, STATION, all_records, auth, post_frame, settings_data


def _decision(client: TestClient, keys, part_id: str, wait_ms: float = 0) -> tuple[int, dict]:
    r = client.get(f"/v1/parts/{part_id}/decision", params={"station": STATION, "wait_ms": wait_ms}, headers=auth(keys))
    return r.status_code, r.json()


@pytest.fixture
def patient(tmp_path: Path, models_dir: Path, keys: dict[str, str]) -> Iterator[TestClient]:
    """The station with a 5 s part deadline: the tests of a verdict need every view in time,
    however slow the machine (on a busy 2-core one a view once came after the usual 400 ms)."""
    data = settings_data(tmp_path, models_dir, keys)
    data["stations"][STATION]["part_deadline_ms"] = 5000
    with TestClient(create_app(build_settings(data))) as c:
        yield c


def test_all_views_pass_means_the_part_passes(patient: TestClient, keys) -> None:
    client = patient
    for camera in ("top", "side"):
        assert (
            post_frame(client, keys, frame_png(BRIGHT), station=STATION, camera=camera, part_id="P1").status_code == 200
        )
    status, part = _decision(client, keys, "P1", wait_ms=5000)
    assert status == 200 and (part["decision"], part["failsafe_reason"]) == ("pass", None)
    assert sorted(v["camera"] for v in part["views"]) == ["side", "top"]
    assert client.app.state.log.get(part["inspection_id"]).entry.data["views"][0]["model_version"] == "tiny/v1"


def test_one_rejecting_view_rejects_the_part(patient: TestClient, keys) -> None:
    client = patient
    post_frame(client, keys, frame_png(BRIGHT), station=STATION, camera="top", part_id="P2")
    status, part = _decision(client, keys, "P2")
    assert status == 202 and part["status"] == "pending" and part["decision"] is None
    assert part["missing_cameras"] == ["side"]
    post_frame(client, keys, frame_png(DARK), station=STATION, camera="side", part_id="P2")
    status, part = _decision(client, keys, "P2", wait_ms=5000)
    assert (status, part["decision"], part["failsafe_reason"]) == (200, "reject", None)


def test_missing_view_is_a_failsafe_reject_at_the_deadline_and_a_late_view_stays_rejected(
    client: TestClient, keys
) -> None:
    post_frame(client, keys, frame_png(BRIGHT), station=STATION, camera="top", part_id="P3")
    # wait_ms beyond the station's 400 ms deadline: the answer comes at the deadline.
    status, part = _decision(client, keys, "P3", wait_ms=5000)
    assert (status, part["decision"]) == (200, "reject")
    assert part["failsafe_reason"].startswith("missing_view: no frame from camera(s) side within 400 ms")
    entry = client.app.state.log.get(part["inspection_id"]).entry
    assert (entry.kind, entry.decision, entry.failsafe_reason) == ("part", "reject", part["failsafe_reason"])
    late = post_frame(client, keys, frame_png(BRIGHT), station=STATION, camera="side", part_id="P3")
    assert late.status_code == 200 and late.json()["decision"] == "reject"
    record = client.app.state.log.get(late.json()["inspection_id"]).entry
    assert record.failsafe_reason.startswith("late_view") and record.data["model_decision"] == "pass"
    assert _decision(client, keys, "P3")[1]["decision"] == "reject"


@pytest.mark.asyncio
async def test_frames_of_one_part_racing_each_other_never_let_a_rejected_part_pass(settings, keys) -> None:
    # A camera triggered twice on one part: the rejecting frame is written to the log before its
    # view is reported, and the passing one, answered meanwhile, used to complete the part as a pass.
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        def post(level: int, part_id: str):  # type: ignore[no-untyped-def]
            return http.post("/v1/inspections", params={"station": SINGLE, "camera": "cam", "part_id": part_id},
                             content=frame_png(level), headers={**auth(keys), "content-type": "image/png"})

        for part_id, first, second in (("R1", DARK, BRIGHT), ("R2", BRIGHT, DARK)):
            answers = await asyncio.gather(post(first, part_id), post(second, part_id))
            assert sorted(a.json()["decision"] for a in answers) == ["pass", "reject"]
            part = (await http.get(f"/v1/parts/{part_id}/decision", params={"station": SINGLE, "wait_ms": 5000},
                                   headers=auth(keys))).json()
            assert (part["decision"], part["failsafe_reason"]) == ("reject", None)
            assert sorted(v["decision"] for v in part["views"]) == ["pass", "reject"]


def test_a_part_id_with_a_slash_can_be_asked_for(client: TestClient, keys) -> None:
    assert post_frame(client, keys, frame_png(BRIGHT), part_id="LOT-7/SN-42").status_code == 200
    for path in ("LOT-7/SN-42", "LOT-7%2FSN-42"):
        r = client.get(f"/v1/parts/{path}/decision", params={"station": SINGLE, "wait_ms": 5000}, headers=auth(keys))
        assert r.status_code == 200 and (r.json()["part_id"], r.json()["decision"]) == ("LOT-7/SN-42", "pass")


def test_asking_for_a_part_no_camera_saw_fails_safe_at_the_deadline(client: TestClient, keys) -> None:
    status, part = _decision(client, keys, "ghost", wait_ms=3000)
    assert (status, part["decision"], part["missing_cameras"]) == (200, "reject", ["top", "side"])


def test_part_decision_query_validates_its_inputs(client: TestClient, keys) -> None:
    r = client.get("/v1/parts/x/decision", params={"station": "nowhere"}, headers=auth(keys))
    assert r.status_code == 404 and "unknown station 'nowhere'" in r.json()["detail"]
    r = client.get("/v1/parts/x/decision", headers=auth(keys))
    assert r.status_code == 400 and "station is required" in r.json()["detail"]
    r = client.get("/v1/parts/x/decision", params={"station": STATION, "wait_ms": -1}, headers=auth(keys))
    assert r.status_code == 400 and "wait_ms" in r.json()["detail"]
    r = client.get(f"/v1/parts/{'y' * 200}/decision", params={"station": STATION}, headers=auth(keys))
    assert r.status_code == 400 and "at most 128" in r.json()["detail"]


class _FailingViewLog:
    """The real SQLite log, except that inspection records of part "boom" fail to commit
    (a disk or database failure injected at the log's boundary)."""

    def __init__(self, store) -> None:  # type: ignore[no-untyped-def]
        self.store = store
        self.frame_sample_rate = store.frame_sample_rate
        self.inline_commit_when = None  # the app sets it; the injected failures need the writer path

    async def append_async(self, entry, *, frame=None, defect_map=None):  # type: ignore[no-untyped-def]
        from inspection.errors import InspectionError

        if entry.kind == "inspection" and entry.part_id == "boom":
            raise InspectionError("database unavailable (injected)")
        return await self.store.append_async(entry, frame=frame, defect_map=defect_map)

    def __getattr__(self, name):  # type: ignore[no-untyped-def]
        return getattr(self.store, name)


def test_a_view_whose_record_cannot_be_stored_never_lets_its_part_pass(tmp_path, settings, keys) -> None:
    from inspection.log.store import open_log
    from serving.app import create_app
    from tests.serving.conftest import SINGLE

    store = open_log(f"sqlite:///{tmp_path / 'inj.db'}", sqlite_synchronous="NORMAL")
    try:
        with TestClient(create_app(settings, log_store=_FailingViewLog(store))) as client:
            r = post_frame(client, keys, frame_png(BRIGHT), part_id="boom")
            assert r.status_code == 500 and r.json()["failsafe"]["decision"] == "reject"
            part = client.get("/v1/parts/boom/decision", params={"station": SINGLE, "wait_ms": 5000},
                              headers=auth(keys)).json()
            assert (part["decision"], part["failsafe_reason"]) == (
                "reject",
                "log_error: a view's inspection record could not be stored",
            )
            assert store.get(part["inspection_id"]).entry.decision == "reject"
            # The view's record failed before its part was decided: no pass part record at all.
            parts = [r.entry.decision for r in all_records(client) if r.entry.part_id == "boom"]
            assert parts == ["reject"]
            assert post_frame(client, keys, frame_png(BRIGHT), part_id="fine").json()["decision"] == "pass"
            # A bad frame while its fail-safe record cannot be stored either: the answer names no record.
            r = post_frame(client, keys, b"not an image", part_id="boom")
            assert r.status_code == 422 and r.json()["failsafe"]["decision"] == "reject"
            assert (r.json()["failsafe"]["stored"], r.json()["failsafe"]["inspection_id"]) == (False, None)
    finally:
        store.close()


def test_a_remembered_part_keeps_no_view_records_alive(client: TestClient, keys) -> None:
    # Decided parts are remembered (parts_remembered) for late views and decision queries; they
    # must not hold each view's stored record (or a failed commit's traceback with the frame).
    for camera in ("top", "side"):
        post_frame(client, keys, frame_png(DARK), station=STATION, camera=camera, part_id="M1")
    status, _ = _decision(client, keys, "M1", wait_ms=5000)
    assert status == 200
    tracker = client.app.state.service.parts  # type: ignore[attr-defined]
    part = tracker.get(STATION, "M1")
    assert part is not None
    views = [v for vs in part.views.values() for v in vs]
    assert len(views) == 2 and all(v.committed is None for v in views)
