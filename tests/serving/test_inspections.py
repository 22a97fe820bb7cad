"""POST /v1/inspections on the real app, real tiny ONNX model and real SQLite log."""

from __future__ import annotations

import cv2
import numpy as np
from fastapi.testclient import TestClient

from serving.events import DecisionBus
from tests.helpers.tiny_model import BRIGHT, DARK, frame_png
from tests.serving.conftest import SINGLE, STATION, all_records, auth, decided, post_frame

ANSWER_FIELDS = {"inspection_id", "part_id", "station", "camera", "decision", "defect_class", "score", "threshold",
                 "model_version", "latency_ms"}


def test_bright_frame_passes_dark_frame_rejects_and_each_is_logged_before_the_answer(client: TestClient, keys) -> None:
    ok = post_frame(client, keys, frame_png(BRIGHT), part_id="A1")
    bad = post_frame(client, keys, frame_png(DARK), part_id="A2")
    assert ok.status_code == 200 and bad.status_code == 200
    assert set(ok.json()) == ANSWER_FIELDS
    assert ok.json()["decision"] == "pass" and bad.json()["decision"] == "reject"
    assert bad.json()["score"] >= bad.json()["threshold"] > ok.json()["score"]
    assert ok.json()["model_version"] == "tiny/v1"
    store = client.app.state.log
    for answer in (ok.json(), bad.json()):
        # The record is already durable when the answer arrives (no waiting, no retry).
        entry = store.get(answer["inspection_id"]).entry
        assert (entry.kind, entry.part_id, entry.decision, entry.model_version) == (
            "inspection", answer["part_id"], answer["decision"], "v1")
        assert entry.actor == "line-key" and entry.frame_sha256
    # A one-camera station decides the part with its only view.
    part = decided(client, keys, "A2")
    assert (part["status"], part["decision"], part["failsafe_reason"]) == ("decided", "reject", None)
    assert store.get(part["inspection_id"]).entry.kind == "part"


def test_raw_pixels_and_headers_instead_of_query(client: TestClient, keys) -> None:
    image = np.full((20, 30, 3), BRIGHT, dtype=np.uint8)
    r = client.post("/v1/inspections", content=image.tobytes(), headers={
        **auth(keys), "content-type": "application/octet-stream", "X-Station": STATION, "X-Camera": "side",
        "X-Part-Id": "Ü-raw-7".encode(), "X-Width": "30", "X-Height": "20", "X-Channels": "3",
        "X-Capture-Time": "2026-01-31T08:00:00.5Z"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["station"], body["camera"], body["part_id"], body["decision"]) == (STATION, "side", "Ü-raw-7", "pass")
    entry = client.app.state.log.get(body["inspection_id"]).entry
    assert entry.data["capture_time"].startswith("2026-01-31T08:00:00.5")


def test_jpeg_colour_frame_is_converted_as_the_card_says(client: TestClient, keys) -> None:
    ok, buf = cv2.imencode(".jpg", np.full((64, 48, 3), DARK, dtype=np.uint8))
    assert ok
    r = post_frame(client, keys, buf.tobytes(), content_type="image/jpeg", part_id="J1")
    assert r.status_code == 200 and r.json()["decision"] == "reject"


def test_decisions_are_published_on_the_bus_after_commit(settings, keys) -> None:
    from serving.app import create_app

    bus = DecisionBus()
    sub = bus.subscribe("test")
    with TestClient(create_app(settings, bus=bus)) as client:
        answer = post_frame(client, keys, frame_png(DARK), part_id="B1").json()
        decided(client, keys, "B1")
        kinds = []
        while not sub.queue.empty():
            event = sub.queue.get_nowait()
            kinds.append(event.kind)
            assert client.app.state.log.get(event.record.entry.inspection_id).seq == event.record.seq
    assert kinds == ["inspection", "part"]
    assert answer["decision"] == "reject"


def test_metrics_count_decisions_batches_and_latency(client: TestClient, keys) -> None:
    post_frame(client, keys, frame_png(BRIGHT), part_id="M1")
    post_frame(client, keys, frame_png(DARK), part_id="M2")
    post_frame(client, keys, b"\x89PNG\r\n\x1a\n broken", part_id="M3")
    text = client.get("/metrics", headers=auth(keys, "engineer")).text
    assert f'inspection_decisions_total{{decision="pass",predicted_class="good",station="{SINGLE}"}} 1.0' in text
    assert f'inspection_decisions_total{{decision="reject",predicted_class="dent",station="{SINGLE}"}} 1.0' in text
    assert f'inspection_failsafe_rejects_total{{reason="undecodable_frame",station="{SINGLE}"}} 1.0' in text
    assert "inspection_batch_size_count 2.0" in text
    assert f'inspection_request_latency_seconds_count{{station="{SINGLE}"}} 2.0' in text
    assert 'inspection_model_latency_seconds_count{model="tiny/v1"}' in text
    assert "inspection_queue_depth 0.0" in text


def test_health_and_readiness_are_open(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {STATION: "tiny/v1", SINGLE: "tiny/v1"}


def test_records_chain_verifies_after_traffic(client: TestClient, keys) -> None:
    for i in range(5):
        post_frame(client, keys, frame_png(BRIGHT if i % 2 else DARK, seed=i), part_id=f"C{i}")
    records = all_records(client)
    assert [r.entry.kind for r in records].count("inspection") == 5
    assert client.app.state.log.verify().ok


def test_the_frame_lane_and_the_router_answer_alike(client: TestClient, keys) -> None:
    # Frames are answered ahead of FastAPI's router (serving.intake.answer_frame); the route
    # behind it must give the same answers, errors included, should the lane be off.
    cases = [
        ({**auth(keys)}, frame_png(BRIGHT), "ok"),
        ({}, frame_png(BRIGHT), "no key"),
        ({**auth(keys, "auditor")}, frame_png(BRIGHT), "wrong role"),
        ({**auth(keys)}, b"\x89PNG\r\n\x1a\n broken", "corrupt"),
        ({**auth(keys)}, b"", "empty"),
    ]

    def answers(tag: str) -> list[tuple[int, dict]]:
        out = []
        for i, (headers, body, _) in enumerate(cases):
            r = client.post(f"/v1/inspections?station={SINGLE}&camera=cam&part_id={tag}-{i}", content=body,
                            headers={**headers, "content-type": "image/png"})
            data = r.json()
            for volatile in ("inspection_id", "latency_ms", "part_id"):
                data.pop(volatile, None)
                data.get("failsafe", {}).pop(volatile, None)
            data["detail"] = data.get("detail", "").replace(f"{tag}-{i}", "<part>")
            out.append((r.status_code, data))
        return out

    assert client.app.frame_lane
    lane = answers("lane")
    client.app.frame_lane = False
    routed = answers("routed")
    assert [s for s, _ in lane] == [200, 401, 403, 422, 422]
    assert lane == routed
