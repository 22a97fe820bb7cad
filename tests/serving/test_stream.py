"""WS /v1/stream: many frames on one connection, answered in order, errors answered not fatal."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse

from tests.helpers.tiny_model import BRIGHT, DARK, frame_png
from tests.serving.conftest import STATION, auth


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
