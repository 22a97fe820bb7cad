"""Bad input: a 4xx with a reason, the server stays healthy, no stored record is touched.

A request naming a valid station, camera and part still fail-safe rejects that part (a new
record with the reason); a request that names no valid part records nothing at all.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.helpers.tiny_model import BRIGHT, DARK, frame_png
from tests.serving.conftest import SINGLE, all_records, auth, decided, post_frame

# Errors say what, not where: every answer is checked for infrastructure details (tests/helpers/leaks.py).
pytestmark = pytest.mark.usefixtures("no_infrastructure_details")

PNG = frame_png(BRIGHT)
# The same frame from a 16-bit camera: the default model was trained on 8-bit frames.
PNG16 = cv2.imencode(".png", cv2.imdecode(np.frombuffer(PNG, np.uint8), cv2.IMREAD_UNCHANGED).astype(np.uint16)
                     * 257)[1].tobytes()

# (id, request kwargs for post_frame, expected status, text the reason must contain, part fail-safe rejected?)
VALID_PART_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("corrupt", {"body": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4}, 422, "PNG"),
    ("truncated", {"body": PNG[: len(PNG) // 2]}, 422, "truncated PNG"),
    ("zero-bytes", {"body": b""}, 422, "0 bytes"),
    ("not-an-image", {"body": b"hello world"}, 422, "not a PNG"),
    ("raw-wrong-dims", {"body": bytes(100), "content_type": "application/octet-stream",
                        "width": 10, "height": 11, "channels": 1}, 422, "needs 110"),
    ("raw-missing-dims", {"body": bytes(100), "content_type": "application/octet-stream", "width": 10}, 400,
     "missing ['height', 'channels']"),
    ("raw-bad-channels", {"body": bytes(200), "content_type": "application/octet-stream",
                          "width": 10, "height": 10, "channels": 2}, 422, "channels=2"),
    ("raw-non-integer", {"body": bytes(100), "content_type": "application/octet-stream",
                         "width": "ten", "height": 10, "channels": 1}, 400, "'ten' is not an integer"),
    ("media-type", {"body": PNG, "content_type": "text/plain"}, 415, "text/plain"),
    ("16-bit-to-an-8-bit-model", {"body": PNG16}, 422, "16-bit frame, but the model takes 8-bit frames"),
    ("capture-time", {"body": PNG, "capture_time": "yesterday"}, 400, "'yesterday'"),
    ("over-limit", {"body": bytes(4096)}, 413, "over the limit of 2048 bytes"),
]

NO_PART_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("unknown-station", {"station": "nowhere"}, 404, "unknown station 'nowhere'"),
    ("unknown-camera", {"camera": "bottom"}, 404, "unknown camera 'bottom'"),
    ("missing-station", {"station": None}, 400, "station is required"),
    ("empty-part-id", {"part_id": ""}, 400, "must not be empty"),
    ("blank-part-id", {"part_id": "   "}, 400, "must not be empty"),
    ("over-long-part-id", {"part_id": "x" * 129}, 400, "129 characters; at most 128"),
    ("control-chars", {"part_id": "a\x07b"}, 400, "control characters"),
]


@pytest.fixture
def small_limit_client(tmp_path, models_dir, keys):
    from serving.app import create_app
    from serving.settings import build_settings
    from tests.serving.conftest import settings_data

    settings = build_settings(settings_data(tmp_path, models_dir, keys, max_body_bytes=2048))
    with TestClient(create_app(settings)) as client:
        yield client


def _snapshot(client: TestClient) -> list[tuple[int, str]]:
    return [(r.seq, r.hash) for r in all_records(client)]


def _still_healthy(client: TestClient, keys: dict[str, str], part_id: str) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    good = post_frame(client, keys, frame_png(DARK), part_id=part_id)
    assert good.status_code == 200 and good.json()["decision"] == "reject"


@pytest.mark.parametrize("case", VALID_PART_CASES, ids=[c[0] for c in VALID_PART_CASES])
def test_bad_frame_for_a_valid_part_is_4xx_and_failsafe_rejects_the_part(
    small_limit_client: TestClient, keys, case
) -> None:
    name, kwargs, status, reason = case
    client = small_limit_client
    post_frame(client, keys, frame_png(BRIGHT), part_id="before")
    decided(client, keys, "before")
    before = _snapshot(client)
    kwargs = dict(kwargs)
    r = post_frame(client, keys, kwargs.pop("body"), part_id=f"bad-{name}", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert reason in body["detail"], body
    assert body["failsafe"]["decision"] == "reject" and body["failsafe"]["part_id"] == f"bad-{name}"
    decision = decided(client, keys, f"bad-{name}")
    assert (decision["decision"], decision["status"]) == ("reject", "decided")
    after = _snapshot(client)
    assert after[: len(before)] == before  # nothing already stored changed
    view, part = (client.app.state.log.get(x.entry.inspection_id).entry for x in all_records(client)[len(before):])
    assert (view.kind, view.decision, view.part_id) == ("inspection", "reject", f"bad-{name}")
    assert view.failsafe_reason and body["failsafe"]["reason"] in view.failsafe_reason
    assert (part.kind, part.decision) == ("part", "reject") and part.failsafe_reason
    assert client.app.state.log.verify().ok
    _still_healthy(client, keys, f"after-{name}")


@pytest.mark.parametrize("case", NO_PART_CASES, ids=[c[0] for c in NO_PART_CASES])
def test_request_naming_no_valid_part_is_4xx_and_records_nothing(client: TestClient, keys, case) -> None:
    name, target, status, reason = case
    post_frame(client, keys, frame_png(BRIGHT), part_id="before")
    decided(client, keys, "before")
    before = _snapshot(client)
    r = post_frame(client, keys, PNG, **target)
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"]
    assert "failsafe" not in r.json()
    assert _snapshot(client) == before
    _still_healthy(client, keys, f"after-{name}")


@pytest.mark.asyncio
async def test_non_utf8_headers_are_refused_with_a_reason(settings, keys) -> None:
    # httpx's ASGI transport passes header bytes through untouched (TestClient re-encodes them).
    import httpx

    from serving.app import create_app

    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        store = app.state.log
        before = store.head()
        base = {**auth(keys), "content-type": "image/png"}
        r = await http.post("/v1/inspections", content=PNG, headers={
            **base, "X-Station": SINGLE, "X-Camera": "cam", "X-Part-Id": b"\xff\xfe-bad"})
        assert r.status_code == 400 and "X-Part-Id is not valid UTF-8" in r.json()["detail"]
        assert store.head() == before  # nothing recorded
        # A valid part with a non-UTF-8 capture time: 400, and the part is fail-safe rejected.
        r = await http.post("/v1/inspections", content=PNG, headers={
            **base, "X-Station": SINGLE, "X-Camera": "cam", "X-Part-Id": "U1", "X-Capture-Time": b"\xc3\x28"})
        assert r.status_code == 400 and "X-Capture-Time is not valid UTF-8" in r.json()["detail"]
        assert r.json()["failsafe"]["reason"] == "invalid_request"
        assert store.get(r.json()["failsafe"]["inspection_id"]).entry.decision == "reject"
        good = await http.post("/v1/inspections", content=frame_png(DARK), headers={
            **base, "X-Station": SINGLE, "X-Camera": "cam", "X-Part-Id": "U2"})
        assert good.status_code == 200 and (await http.get("/healthz")).status_code == 200
        assert store.verify().ok


def test_over_limit_body_without_content_length_is_refused_while_streaming(
    small_limit_client: TestClient, keys
) -> None:
    def chunks():
        for _ in range(8):
            yield bytes(512)

    r = small_limit_client.post("/v1/inspections", params={"station": SINGLE, "camera": "cam", "part_id": "S1"},
                                content=chunks(), headers={**auth(keys), "content-type": "image/png"})
    assert r.status_code == 413 and "over the limit of 2048 bytes" in r.json()["detail"]
    _still_healthy(small_limit_client, keys, "after-stream")


@pytest.mark.asyncio
async def test_a_body_cut_off_by_the_client_going_away_is_logged_as_a_failsafe_reject(settings, keys) -> None:
    # No answer reaches a client that left, but its part must not wait for a view that never
    # comes without a record saying why (before, the disconnect escaped as a server error).
    from serving.app import create_app

    app = create_app(settings)
    body = frame_png(BRIGHT)
    messages = [{"type": "http.request", "body": body[:100], "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = {**auth(keys), "content-type": "image/png", "content-length": str(len(body))}
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/inspections", "raw_path": b"/v1/inspections", "root_path": "",
             "query_string": f"station={SINGLE}&camera=cam&part_id=CUT-1".encode(),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "server": ("test", 80), "client": ("client", 1), "state": {}}
    async with app.router.lifespan_context(app):
        await app(scope, receive, send)
        assert sent[0]["status"] == 400
        part = await app.state.service.parts.wait(SINGLE, "CUT-1", 5.0)
        assert part.decision == "reject"
        [view] = part.views["cam"]
        entry = app.state.log.get(view.inspection_id).entry
        assert entry.decision == "reject"
        assert "cut off: the client disconnected after 100 bytes" in entry.failsafe_reason
