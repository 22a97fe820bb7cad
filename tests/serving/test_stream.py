"""WS /v1/stream: many frames on one connection, answered in order, errors answered not fatal."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from tests.helpers.tiny_model import BRIGHT, DARK, frame_png
from tests.serving.conftest import STATION, all_records, auth


def test_a_camera_streams_frames_and_gets_answers_in_order(client: TestClient, keys) -> None:
    levels = [BRIGHT, DARK, BRIGHT, DARK, BRIGHT, BRIGHT, DARK, BRIGHT, DARK, DARK]
    with client.websocket_connect(f"/v1/stream?station={STATION}&camera=top", headers=auth(keys)) as ws:
        for i, level in enumerate(levels):  # pipelined: send everything, then read
            ws.send_text(json.dumps({"part_id": f"s{i}", "content_type": "image/png"}))
            ws.send_bytes(frame_png(level, seed=i))
        answers = [ws.receive_json() for _ in levels]
        raw = np.full((8, 8), DARK, dtype=np.uint8)
        ws.send_text(json.dumps({"part_id": "raw", "content_type": "application/octet-stream",
                                 "width": 8, "height": 8, "channels": 1}))
        ws.send_bytes(raw.tobytes())
        raw_answer = ws.receive_json()
        ws.send_text(json.dumps({"part_id": "broken", "content_type": "image/png"}))
        ws.send_bytes(b"not an image")
        error = ws.receive_json()
        ws.send_text("{not json")
        ws.send_bytes(b"")
        bad_header = ws.receive_json()
        ws.send_text(json.dumps({"part_id": "after", "content_type": "image/png"}))
        ws.send_bytes(frame_png(BRIGHT))
        after = ws.receive_json()
    assert [a["part_id"] for a in answers] == [f"s{i}" for i in range(len(levels))]
    assert [a["decision"] for a in answers] == ["pass" if lv == BRIGHT else "reject" for lv in levels]
    assert all(a["camera"] == "top" and a["model_version"] == "tiny/v1" for a in answers)
    assert raw_answer["decision"] == "reject"
    assert (error["status"], error["error"], error["failsafe"]["reason"]) == (422, "invalid_image", "undecodable_frame")
    assert bad_header["status"] == 400 and "not JSON" in bad_header["detail"] and "failsafe" not in bad_header
    assert after["decision"] == "pass"
    for answer in answers:
        assert client.app.state.log.get(answer["inspection_id"]).entry.camera == "top"


def test_stream_refuses_bad_keys_and_unknown_cameras_before_accepting(client: TestClient, keys) -> None:
    for headers, status in [({}, 401), (auth(keys, "auditor"), 403)]:
        with (
            pytest.raises(WebSocketDenialResponse) as denied,
            client.websocket_connect(f"/v1/stream?station={STATION}&camera=top", headers=headers),
        ):
            pass
        assert denied.value.status_code == status
    with (
        pytest.raises(WebSocketDenialResponse) as denied,
        client.websocket_connect(f"/v1/stream?station={STATION}&camera=bottom", headers=auth(keys)),
    ):
        pass
    assert denied.value.status_code == 404


@pytest.mark.parametrize("wrong", ["a frame where the header is due", "text where the frame is due"])
def test_a_message_of_the_wrong_kind_is_answered_and_closes_the_stream(client: TestClient, keys, wrong: str) -> None:
    # Which message is a header and which a frame cannot be told any more: the server says why,
    # fail-safe rejects the part whose header it holds, and closes with 1003 (unsupported data).
    with client.websocket_connect(f"/v1/stream?station={STATION}&camera=top", headers=auth(keys)) as ws:
        ws.send_text(json.dumps({"part_id": "before", "content_type": "image/png"}))
        ws.send_bytes(frame_png(BRIGHT))
        if wrong.startswith("a frame"):
            ws.send_bytes(frame_png(BRIGHT))
        else:
            ws.send_text(json.dumps({"part_id": "cut", "content_type": "image/png"}))
            ws.send_text("this should have been the frame")
        before, error = ws.receive_json(), ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert before["decision"] == "pass"
    assert (error["status"], error["error"]) == (400, "invalid_request") and "out of step" in error["detail"]
    assert closed.value.code == 1003
    cut = [r.entry for r in all_records(client) if r.entry.part_id == "cut"]
    if wrong.startswith("a frame"):
        assert "failsafe" not in error and cut == []
    else:
        assert error["failsafe"]["reason"] == "invalid_request" and error["failsafe"]["stored"] is True
        assert [e.decision for e in cut if e.kind == "inspection"] == ["reject"]

