"""The line watch through the real app: the frame-quality gate on the decision path, alarms as
hash-chained log records and metrics, the ``/v1/line`` API for the line roles (``viewer``
included), the event stream's bounded buffer, and the ``/line`` page live in Chromium."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from inspection.registry import ModelRegistry
from serving.app import create_app
from serving.monitoring.page import EVENT_BUFFER, AlarmSubscriber
from serving.settings import ServeSettings, build_settings
from tests.helpers.server import free_port, start_logged, stop_server, until, uvicorn_in_thread
from tests.helpers.tiny_model import BRIGHT, DARK, frame_png, make_model_version
from tests.serving.conftest import SINGLE, STATION, all_records, auth, post_frame, settings_data
from tests.serving.test_audit_page import browser, live  # noqa: F401  (fixtures)


def _reference_frames(count: int = 64) -> np.ndarray:
    """Frames like the line's good parts: bright, a little noise (what the reference is built from)."""
    rng = np.random.default_rng(1)
    levels = rng.uniform(200, 235, size=count)
    frames = levels[:, None, None, None] + rng.integers(-10, 11, size=(count, 1, 32, 32))
    return np.clip(frames, 0, 255).astype(np.uint8)


@pytest.fixture
def watched_models(tmp_path: Path) -> Path:
    """A registry whose active model's card carries a monitoring reference (SINGLE), and one
    without (STATION: cards exported before monitoring existed)."""
    root = tmp_path / "models"
    make_model_version(root, version="v1")
    make_model_version(root, version="v2", reference_frames=_reference_frames())
    registry = ModelRegistry(root)
    registry.promote("tiny", "v1", station=STATION)
    registry.promote("tiny", "v2", station=SINGLE)
    return root


def _settings(tmp_path: Path, models: Path, keys: dict[str, str], **monitoring: Any) -> ServeSettings:
    data = settings_data(tmp_path, models, keys)
    for station in data["stations"].values():
        station["monitoring"] = dict(monitoring)
    return build_settings(data)


def test_a_frame_outside_the_reference_is_a_fail_safe_reject_never_scored(
    tmp_path: Path, watched_models: Path, keys: dict[str, str]
) -> None:
    with TestClient(create_app(_settings(tmp_path, watched_models, keys))) as client:
        good = post_frame(client, keys, frame_png(BRIGHT), part_id="ok-1")
        assert good.status_code == 200, good.text
        black = post_frame(client, keys, frame_png(0), part_id="black-1")
        assert black.status_code == 422, black.text
        body = black.json()
        assert body["failsafe"]["reason"] == "frame_quality" and body["failsafe"]["decision"] == "reject"
        assert "brightness" in body["detail"] and "reference range" in body["detail"]
        record = next(r for r in all_records(client) if r.entry.part_id == "black-1" and r.entry.kind == "inspection")
        assert record.entry.decision == "reject" and record.entry.failsafe_reason.startswith("frame_quality")
        assert record.entry.scores is None  # not scored as if it were fine
        # The station without a reference scores the same black frame, and says why it cannot judge it.
        other = post_frame(client, keys, frame_png(0), station=STATION, camera="top", part_id="black-2")
        assert other.status_code == 200
        snap = client.get(f"/v1/line/{STATION}", headers=auth(keys, "viewer")).json()
        assert any("no monitoring reference" in n for n in snap["notes"])
        snap = client.get(f"/v1/line/{SINGLE}", headers=auth(keys, "viewer")).json()
        assert snap["shift"]["failsafe"] == 1 and snap["shift"]["failsafe_by_reason"] == {"frame_quality": 1}
        assert snap["model_version"] == "tiny/v2" and snap["gate"] == "reject"


def test_warn_mode_scores_the_frame_and_counts_it(tmp_path: Path, watched_models: Path, keys: dict[str, str]) -> None:
    with TestClient(create_app(_settings(tmp_path, watched_models, keys, gate="warn"))) as client:
        assert post_frame(client, keys, frame_png(0), part_id="black-1").status_code == 200
        snap = client.get(f"/v1/line/{SINGLE}", headers=auth(keys, "engineer")).json()
        assert snap["gate_warned"] == 1 and snap["shift"]["failsafe"] == 0 and snap["shift"]["frames"] == 1


def test_a_station_with_the_watch_off_scores_everything_and_says_so(
    tmp_path: Path, watched_models: Path, keys: dict[str, str]
) -> None:
    with TestClient(create_app(_settings(tmp_path, watched_models, keys, enabled=False))) as client:
        assert post_frame(client, keys, frame_png(0), part_id="black-1").status_code == 200
        snap = client.get(f"/v1/line/{SINGLE}", headers=auth(keys, "viewer")).json()
        assert snap["model_version"] == "tiny/v2" and snap["shift"]["frames"] == 0
        assert any("monitoring is off" in n for n in snap["notes"])


def test_a_fail_safe_rate_alarm_is_a_chained_record_and_a_metric(
    tmp_path: Path, watched_models: Path, keys: dict[str, str]
) -> None:
    settings = _settings(tmp_path, watched_models, keys, failsafe_window=10, failsafe_rate_limit=0.2)
    with TestClient(create_app(settings)) as client:
        for i in range(4):
            post_frame(client, keys, frame_png(BRIGHT, seed=i), part_id=f"ok-{i}")
        for i in range(6):
            assert post_frame(client, keys, frame_png(0, seed=i), part_id=f"black-{i}").status_code == 422
        deadline = time.monotonic() + 10
        alarms: list[Any] = []
        while not alarms and time.monotonic() < deadline:
            time.sleep(0.2)  # the watch evaluates every second, off the decision path
            alarms = [r for r in all_records(client) if r.entry.kind == "alarm"]
        assert len(alarms) == 1, "exactly one alarm record expected"
        data = alarms[0].entry.data
        assert alarms[0].entry.station == SINGLE
        assert data["alarm"] == "failsafe_rate" and data["state"] == "raised" and data["model_version"] == "tiny/v2"
        assert data["detail"]["rate"] == pytest.approx(0.6) and data["detail"]["limit"] == 0.2
        assert client.app.state.log.verify().ok  # type: ignore[attr-defined]
        metrics = client.get("/metrics", headers=auth(keys, "admin")).text
        assert f'inspection_line_alarm_active{{alarm="failsafe_rate",station="{SINGLE}"}} 1.0' in metrics
        assert f'inspection_line_failsafe_rate{{station="{SINGLE}"}} 0.6' in metrics
        snap = client.get(f"/v1/line/{SINGLE}", headers=auth(keys, "viewer")).json()
        assert "failsafe_rate" in snap["alarms"]


def test_a_dead_camera_counts_its_missing_views_as_fail_safe_and_raises_the_alarm(
    tmp_path: Path, watched_models: Path, keys: dict[str, str]
) -> None:
    # STATION has cameras top and side; side is dead. Every part is rejected at its deadline, and
    # before, the page said "fail-safe rejects 0" and no alarm rose: no frame had failed.
    settings = _settings(tmp_path, watched_models, keys, failsafe_window=10, failsafe_rate_limit=0.2)
    with TestClient(create_app(settings)) as client:
        for i in range(6):
            post_frame(client, keys, frame_png(BRIGHT, seed=i), station=STATION, camera="top", part_id=f"D{i}")
        deadline = time.monotonic() + 15
        alarms: list[Any] = []
        while not alarms and time.monotonic() < deadline:
            time.sleep(0.2)
            alarms = [r for r in all_records(client) if r.entry.kind == "alarm" and r.entry.station == STATION]
        assert alarms and alarms[0].entry.data["alarm"] == "failsafe_rate", "no fail-safe alarm for a dead camera"
        snap = client.get(f"/v1/line/{STATION}", headers=auth(keys, "viewer")).json()
        assert snap["shift"]["failsafe_by_reason"] == {"missing_view": 6} and snap["shift"]["failsafe"] == 6
        assert snap["shift"]["reject"] == 6 and "failsafe_rate" in snap["alarms"]


def test_the_line_api_admits_the_line_roles_and_names_bad_stations(client: TestClient, keys: dict[str, str]) -> None:
    for role in ("viewer", "engineer", "auditor", "admin"):
        r = client.get("/v1/line", headers=auth(keys, role))
        assert r.status_code == 200, (role, r.text)
        assert {s["station"] for s in r.json()["stations"]} == {STATION, SINGLE}
    assert client.get("/v1/line", headers=auth(keys, "line")).status_code == 403
    # a viewer sees the line and nothing else
    assert client.get("/v1/audit/records", headers=auth(keys, "viewer")).status_code == 403
    assert post_frame(client, keys, frame_png(BRIGHT), role="viewer").status_code == 403
    missing = client.get("/v1/line/no-such-station", headers=auth(keys, "viewer"))
    assert missing.status_code == 404 and "no-such-station" in missing.json()["detail"]
    # before any frame: a snapshot that says so
    snap = client.get(f"/v1/line/{SINGLE}", headers=auth(keys, "viewer")).json()
    assert snap["shift"]["frames"] == 0 and snap["notes"]


def test_the_recent_rejects_frames_are_served_to_the_line_roles_and_nothing_else(
    client: TestClient, keys: dict[str, str]
) -> None:
    passed = post_frame(client, keys, frame_png(BRIGHT), part_id="ok-1").json()
    reject = post_frame(client, keys, frame_png(DARK), part_id="bad-1").json()
    assert reject["decision"] == "reject"
    snap = client.get(f"/v1/line/{SINGLE}", headers=auth(keys, "viewer")).json()
    assert [r["inspection_id"] for r in snap["recent_rejects"]] == [reject["inspection_id"]]
    url = f"/v1/line/{SINGLE}/rejects/{{}}/frame"
    frame = client.get(url.format(reject["inspection_id"]), headers=auth(keys, "viewer"))
    assert frame.status_code == 200 and frame.headers["content-type"] == "image/png"
    assert frame.content == frame_png(DARK)
    # a pass (or any record the page does not show) is not readable with a wall-screen key
    other = client.get(url.format(passed["inspection_id"]), headers=auth(keys, "viewer"))
    assert other.status_code == 404 and "most recent rejects" in other.json()["detail"]
    assert client.get(url.format(reject["inspection_id"]), headers=auth(keys, "line")).status_code == 403


def test_a_client_that_never_reads_the_stream_costs_a_bounded_buffer(client: TestClient, keys: dict[str, str]) -> None:
    alarms = client.app.state.line_alarms  # type: ignore[attr-defined]
    with client.stream("GET", f"/v1/line/{SINGLE}/events", headers=auth(keys, "viewer")) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first.removeprefix("data: "))["station"] == SINGLE
        subscribers = [s for s in alarms.listeners if isinstance(s, AlarmSubscriber)]
        assert len(subscribers) == 1

        def flood() -> None:
            for i in range(10 * EVENT_BUFFER):
                for listener in list(alarms.listeners):
                    listener({"type": "alarm", "station": SINGLE, "alarm": "drift", "state": "raised", "n": i})

        client.portal.call(flood)  # type: ignore[union-attr]  # in the app's event loop, as the watch does
        sub = subscribers[0]
        assert sub.queue.qsize() <= EVENT_BUFFER and sub.dropped >= 9 * EVENT_BUFFER - EVENT_BUFFER


def test_the_page_updates_live_while_frames_flow(tmp_path: Path, watched_models: Path, keys: dict[str, str],
                                                 browser: Any) -> None:  # noqa: F811
    from playwright.sync_api import expect

    # Its own server: the shared ``live`` fixture serves the default settings, this one a model
    # with a reference and a chart point every 10 parts.
    settings = _settings(tmp_path, watched_models, keys, subgroup_parts=10)
    with uvicorn_in_thread(create_app(settings)) as url:
        for width, height in ((1920, 1080), (1366, 768)):
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"{url}/line?station={SINGLE}")
            page.get_by_placeholder("paste your key").fill(keys["viewer"])
            page.get_by_role("button", name="Use key").click()
            expect(page.get_by_test_id("model")).to_contain_text("tiny/v2")
            before = int(page.get_by_test_id("pass").inner_text().replace(",", "") or 0)
            with httpx.Client(base_url=url, headers=auth(keys, "line")) as http:
                for i in range(24):  # 16 bright parts reach the chart (10 a point); dark ones are fail-safe
                    level = BRIGHT if i % 3 else 30  # dark frames are rejected by the tiny model
                    r = http.post("/v1/inspections", params={"station": SINGLE, "camera": "cam",
                                                             "part_id": f"{width}-{i}"},
                                  content=frame_png(level, seed=i), headers={"Content-Type": "image/png"})
                    assert r.status_code in (200, 422), r.text
            # no reload: the stream brings the new counts and a chart point
            expect(page.get_by_test_id("pass")).not_to_have_text(str(before), timeout=10_000)
            expect(page.locator("#chart circle").first).to_be_attached(timeout=10_000)
            expect(page.get_by_test_id("alarms")).to_contain_text("No alarm")
            # readable without horizontal scrolling
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            page.close()


@pytest.mark.parametrize(("now", "start"), [
    ((2026, 12, 4, 5, 0), (2026, 12, 3, 22, 0)),   # before the first shift of the day: last night's
    ((2026, 12, 4, 6, 0), (2026, 12, 4, 6, 0)),
    ((2026, 12, 4, 14, 30), (2026, 12, 4, 14, 0)),
    ((2026, 12, 4, 23, 59), (2026, 12, 4, 22, 0)),
])
def test_the_shift_counts_start_at_the_latest_shift_start(now: tuple[int, ...], start: tuple[int, ...]) -> None:
    from datetime import datetime

    from serving.monitoring.live import shift_start

    assert shift_start(datetime(*now), ["06:00", "14:00", "22:00"]) == datetime(*start)


def test_the_server_runs_opencv_on_the_calling_thread(settings: ServeSettings) -> None:
    import cv2

    cv2.setNumThreads(2)
    with TestClient(create_app(settings)):
        # an OpenCV pool competing with onnxruntime's threads stalled the event loop (RuntimeSettings)
        assert cv2.getNumThreads() == settings.runtime.opencv_threads == 1


def test_the_page_shows_the_recent_rejects_as_thumbnails(live: str, keys: dict[str, str],  # noqa: F811
                                                         browser: Any) -> None:  # noqa: F811
    from playwright.sync_api import expect

    with httpx.Client(base_url=live, headers=auth(keys, "line")) as http:
        r = http.post("/v1/inspections", params={"station": SINGLE, "camera": "cam", "part_id": "dark-1"},
                      content=frame_png(DARK), headers={"Content-Type": "image/png"})
        assert r.json()["decision"] == "reject"
    page = browser.new_page(viewport={"width": 1920, "height": 1080})
    page.goto(f"{live}/line?station={SINGLE}")
    page.get_by_placeholder("paste your key").fill(keys["viewer"])
    page.get_by_role("button", name="Use key").click()
    thumb = page.get_by_test_id("rejects").locator("img")
    expect(thumb).to_have_count(1)
    # polled from here: the page's CSP forbids the eval behind wait_for_function's polling
    until(lambda: page.locator("#rejects img").evaluate("i => i.naturalWidth") > 0, "the thumbnail")
    expect(page.get_by_test_id("rejects")).to_contain_text("part dark-1")
    # the link leads to the record on the audit page (for a role that may read the log)
    href = page.get_by_test_id("rejects").locator("a").get_attribute("href") or ""
    assert href.startswith("/audit?inspection_id=")
    page.goto(f"{live}/audit")
    page.fill("#api-key", keys["auditor"])
    page.click("#save-key")
    page.goto(f"{live}{href}")
    expect(page.get_by_test_id("chain-status")).to_contain_text("verify")
    page.close()


# Counts the page's object URLs (made, revoked) from before its own script runs.
_COUNT_OBJECT_URLS = """
  window.__made = 0; window.__revoked = 0;
  const make = URL.createObjectURL, revoke = URL.revokeObjectURL;
  URL.createObjectURL = function (b) { window.__made++; return make.call(URL, b); };
  URL.revokeObjectURL = function (u) { window.__revoked++; return revoke.call(URL, u); };
"""


def test_the_reject_thumbnails_are_fetched_once_and_let_go_when_they_leave(
    live: str, keys: dict[str, str], browser: Any  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    from serving.monitoring.live import RECENT_REJECTS

    def reject(http: httpx.Client, part: str, seed: int) -> None:
        r = http.post("/v1/inspections", params={"station": SINGLE, "camera": "cam", "part_id": part},
                      content=frame_png(DARK, seed=seed), headers={"Content-Type": "image/png"})
        assert r.json()["decision"] == "reject", r.text

    with httpx.Client(base_url=live, headers=auth(keys, "line")) as http:
        for i in range(2):
            reject(http, f"old-{i}", i)
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        page.add_init_script(_COUNT_OBJECT_URLS)
        fetched: list[str] = []
        page.on("request", lambda req: fetched.append(req.url) if "/rejects/" in req.url else None)
        page.goto(f"{live}/line?station={SINGLE}")
        page.get_by_placeholder("paste your key").fill(keys["viewer"])
        page.get_by_role("button", name="Use key").click()
        thumbs = page.locator("#rejects img")
        expect(thumbs).to_have_count(2)
        until(lambda: page.evaluate("[...document.querySelectorAll('#rejects img')].every(i => i.naturalWidth > 0)"),
              "the thumbnails")
        page.evaluate("document.querySelector('#rejects li').dataset.kept = 'yes'")
        updated = page.get_by_test_id("updated").inner_text()
        for _ in range(3):  # three more snapshots: nothing fetched again, the same tiles (no flicker)
            expect(page.get_by_test_id("updated")).not_to_have_text(updated)
            updated = page.get_by_test_id("updated").inner_text()
        assert len(fetched) == 2 and page.evaluate("window.__made") == 2
        expect(page.locator("#rejects li[data-kept=yes]")).to_have_count(1)
        # newer rejects push the two oldest out: their tiles go and their object URLs are revoked
        for i in range(RECENT_REJECTS):
            reject(http, f"new-{i}", 100 + i)
    expect(page.get_by_test_id("rejects")).not_to_contain_text("part old-")
    expect(thumbs).to_have_count(RECENT_REJECTS)
    expect(page.get_by_test_id("rejects").locator("li").first).to_contain_text(f"part new-{RECENT_REJECTS - 1}")
    until(lambda: page.evaluate("window.__made") == 2 + RECENT_REJECTS, "the new thumbnails")
    assert page.evaluate("window.__revoked") == 2
    assert len(fetched) == 2 + RECENT_REJECTS
    page.close()


def test_the_page_says_when_the_server_is_gone_and_comes_back_on_the_station_chosen_meanwhile(
    tmp_path: Path, models_dir: Path, keys: dict[str, str], browser: Any  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    # A real ``inspection serve`` process, killed and started again on the same port (a restart).
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(settings_data(tmp_path, models_dir, keys)), encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_log = tmp_path / "server.log"
    proc = start_logged(settings_file, port, server_log)
    try:
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        streams: list[str] = []
        page.on("request", lambda req: streams.append(req.url) if req.url.endswith("/events") else None)
        page.goto(f"{url}/line?station={SINGLE}")
        page.get_by_placeholder("paste your key").fill(keys["viewer"])
        page.get_by_role("button", name="Use key").click()
        with httpx.Client(base_url=url, headers=auth(keys, "line")) as http:
            for i in range(3):
                http.post("/v1/inspections", params={"station": SINGLE, "camera": "cam", "part_id": f"a-{i}"},
                          content=frame_png(BRIGHT, seed=i), headers={"Content-Type": "image/png"})
        expect(page.get_by_test_id("pass")).to_have_text("3")
        expect(page.get_by_test_id("alarms")).to_have_text("No alarm")

        proc.kill()  # the stream breaks off mid-read
        proc.wait()
        status = page.get_by_test_id("status")
        expect(status).to_contain_text("Connection lost — reconnecting…")
        # no snapshot for a few seconds: old counts are not shown under "No alarm"
        expect(page.get_by_test_id("alarms")).to_contain_text("NO LIVE DATA since")
        expect(page.get_by_test_id("alarms")).not_to_contain_text("No alarm")
        # switched while the server is down: the page comes back on this station, never the old one
        page.get_by_test_id("station").select_option(STATION)
        switched = len(streams)

        proc = start_logged(settings_file, port, server_log)
        expect(status).to_have_text("", timeout=30_000)  # reconnected
        expect(page.get_by_test_id("alarms")).to_have_text("No alarm")
        expect(page.get_by_test_id("pass")).to_have_text("0")  # the restarted server's shift, this station
        after = streams[switched:]
        assert after and all(u.endswith(f"/v1/line/{STATION}/events") for u in after), after
        page.close()
    finally:
        stop_server(proc)
