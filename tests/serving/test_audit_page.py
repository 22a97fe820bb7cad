"""The audit web page in headless Chromium against a real uvicorn server: paste the key,
filter by part id and by decision, and see exactly the expected rows; open a record; verify."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.settings import ServeSettings
from tests.helpers.server import free_port, until, uvicorn_in_thread
from tests.serving.conftest import SINGLE
from tests.serving.test_audit_api import png

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]

pytestmark = pytest.mark.browser


@pytest.fixture
def live(settings: ServeSettings) -> Iterator[str]:
    """The real app under uvicorn on a free port (in a thread of this process)."""
    from serving.app import create_app

    with uvicorn_in_thread(create_app(settings)) as url:
        yield url


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (Debian package 'chromium')")
    from playwright.sync_api import expect, sync_playwright

    # Playwright's 5 s default for an expectation is about the page, not the assertion: on a
    # 2-core machine saturated by a training run beside the suite, a filter round-trip was seen
    # to take longer. A longer wait changes no assertion; a wrong page still fails, only later.
    expect.set_options(timeout=20_000)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def test_filter_by_part_and_decision_shows_exactly_the_expected_rows(
    live: str, keys: dict[str, str], browser: Any
) -> None:
    from playwright.sync_api import expect

    plan = {"A1": 250, "A2": 5, "B1": 250, "B2": 5, "B3": 5, "C1": 250}
    answers: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=live, headers={"Authorization": f"Bearer {keys['line']}"}) as http:
        for part, brightness in plan.items():
            r = http.post("/v1/inspections", params={"station": SINGLE, "camera": "cam", "part_id": part},
                          content=png(brightness, seed=brightness), headers={"Content-Type": "image/png"})
            assert r.status_code == 200, r.text
            answers[part] = r.json()
    rejected = {a["inspection_id"] for a in answers.values() if a["decision"] == "reject"}
    assert len(rejected) == 3  # the dark frames

    page = browser.new_page()
    page.goto(f"{live}/audit")
    expect(page.locator("#status")).to_contain_text("401")  # no key yet: the API refuses, the page says so
    page.fill("#api-key", keys["auditor"])
    page.click("#save-key")
    rows = page.locator("#rows tr")
    kind = page.locator("select[name=kind]")
    kind.select_option("inspection")

    page.fill("[data-testid=filter-part]", "B1")
    page.click("[data-testid=apply]")
    expect(rows).to_have_count(1)
    assert rows.first.get_attribute("data-id") == answers["B1"]["inspection_id"]
    expect(rows.first.locator("td.part-id")).to_have_text("B1")

    page.fill("[data-testid=filter-part]", "")
    page.select_option("[data-testid=filter-decision]", "reject")
    page.click("[data-testid=apply]")
    expect(rows).to_have_count(3)
    assert {rows.nth(i).get_attribute("data-id") for i in range(3)} == rejected
    expect(page.locator("#rows td.decision")).to_have_text(["reject"] * 3)

    page.fill("[data-testid=filter-part]", "B2")
    page.click("[data-testid=apply]")
    expect(rows).to_have_count(1)
    assert rows.first.get_attribute("data-id") == answers["B2"]["inspection_id"]

    # Export uses the same filters and the same key (downloaded as a file).
    with page.expect_download() as download:
        page.click("#export-csv")
    exported = Path(download.value.path()).read_text(encoding="utf-8").splitlines()
    assert exported[0].startswith("seq,kind,inspection_id") and len(exported) == 2
    assert answers["B2"]["inspection_id"] in exported[1]

    # The row's thumbnail and the detail's frame load (fetched with the key, shown as blobs).
    rows.first.click()
    expect(page.locator("[data-testid=chain-status]")).to_have_class("ok")
    # polled from here: the page's CSP forbids the eval behind wait_for_function's polling
    until(lambda: page.evaluate(
        "() => [...document.querySelectorAll('#detail img')].some(i => i.complete && i.naturalWidth > 0)"), "the frame")
    until(lambda: page.evaluate(
        "() => [...document.querySelectorAll('#rows img.thumb')].every(i => i.complete && i.naturalWidth > 0)"),
        "the thumbnails")

    # An override is recorded as a new record that references this one; the chain still verifies.
    page.select_option("#detail select[name=action]", "override")
    page.select_option("#detail select[name=decision]", "pass")
    page.fill("#detail input[name=note]", "glare, part is fine")
    page.click("[data-testid=dispose]")
    expect(page.locator("#detail")).to_contain_text("glare, part is fine")
    expect(page.locator("#detail")).to_contain_text("auditor-key")

    page.click("[data-testid=verify]")
    expect(page.locator("[data-testid=verify-result]")).to_contain_text("chain OK")
    # The key lives in sessionStorage only, never in the page's URL.
    assert page.evaluate("sessionStorage.getItem('inspection.audit.key')") == keys["auditor"]
    assert keys["auditor"] not in page.url


def test_a_record_linked_before_the_key_is_given_shows_once_the_key_is(
    live: str, keys: dict[str, str], browser: Any
) -> None:
    from playwright.sync_api import expect

    with httpx.Client(base_url=live, headers={"Authorization": f"Bearer {keys['line']}"}) as http:
        ids = [http.post("/v1/inspections", params={"station": SINGLE, "camera": "cam", "part_id": part},
                         content=png(level, seed=level), headers={"Content-Type": "image/png"}).json()["inspection_id"]
               for part, level in (("L1", 5), ("L2", 250))]
    page = browser.new_page()
    page.goto(f"{live}/audit?inspection_id={ids[0]}")  # the line page's link to a reject, on a fresh tab
    expect(page.locator("#detail")).to_contain_text("401")
    page.fill("#api-key", keys["auditor"])
    page.click("#save-key")
    expect(page.get_by_test_id("count")).to_contain_text(" of ")  # the rows load
    expect(page.get_by_test_id("chain-status")).to_contain_text("verify")  # the linked record, not the 401
    expect(page.locator("#detail h2")).to_have_count(1)
    expect(page.locator("#detail")).to_contain_text(ids[0])
    assert "401" not in page.locator("#detail h2").inner_text()
    page.close()


def test_the_detail_says_whether_the_frame_is_intact_and_shows_undecodable_frames_as_such(
    live: str, keys: dict[str, str], browser: Any, settings: ServeSettings
) -> None:
    from playwright.sync_api import expect

    from inspection.log.framestore import FrameStore

    line = {"Authorization": f"Bearer {keys['line']}"}
    with httpx.Client(base_url=live, headers=line) as http:
        ids = {}
        raw = {"width": 32, "height": 24, "channels": 1}
        for part, body, kind in (("T1", png(5, seed=1), "image/png"), ("T2", png(5, seed=2), "image/png"),
                                 ("T3", b"\x89PNG\r\n\x1a\nnot a png", "image/png"),
                                 # raw pixels (a browser cannot show them as sent) and raw bytes too short
                                 ("T4", bytes(range(256)) * 3, "application/octet-stream"),
                                 ("T5", bytes(100), "application/octet-stream")):
            r = http.post("/v1/inspections", params={"station": SINGLE, "camera": "cam", "part_id": part,
                                                     **(raw if kind != "image/png" else {})},
                          content=body, headers={"Content-Type": kind})
            ids[part] = (r.json().get("inspection_id") or r.json()["failsafe"]["inspection_id"])
        detail = http.get(f"/v1/audit/records/{ids['T2']}", headers={"Authorization": f"Bearer {keys['auditor']}"})
    db = Path(settings.log_url.removeprefix("sqlite:///"))
    frames = settings.frames_dir or db.with_name(db.name + ".frames")  # the SQLite log's default
    FrameStore(frames).path(detail.json()["frame"]["sha256"]).write_bytes(png(5, seed=7))
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(f"{live}/audit")
    page.fill("#api-key", keys["auditor"])
    page.click("#save-key")
    for part, expected in (("T1", "Frame matches its sha256"), ("T2", "TAMPERED"), ("T3", "cannot be shown"),
                           ("T4", "Frame matches its sha256"), ("T5", "cannot be shown")):
        page.goto(f"{live}/audit?inspection_id={ids[part]}")
        if part == "T4":  # drawn from the server's PNG of the raw pixels, at their size
            page.wait_for_function("() => { const i = document.querySelector('[data-testid=frame]');"
                                   " return i && i.naturalWidth > 0; }")
            assert page.evaluate("() => { const i = document.querySelector('[data-testid=frame]');"
                                 " return [i.naturalWidth, i.naturalHeight]; }") == [32, 24]
            with page.expect_download() as download:
                page.get_by_test_id("frame-download").click()
            assert Path(download.value.path()).read_bytes() == bytes(range(256)) * 3  # the evidence as sent
            assert download.value.suggested_filename.endswith(".raw")
        if part in ("T3", "T5"):
            expect(page.get_by_test_id("frame-undecodable")).to_contain_text(expected)
            expect(page.get_by_test_id("frame-status")).to_contain_text("Frame matches its sha256")
        else:
            expect(page.get_by_test_id("frame-status")).to_contain_text(expected)
        # the chain of the record itself is fine in every case: the frame status is what tells
        expect(page.get_by_test_id("chain-status")).to_contain_text("verify")
    page.close()


@pytest.mark.parametrize("viewport", [(1366, 768), (1920, 1080)])
def test_an_auditor_reaches_a_parts_frame_decision_and_plc_ack_in_three_clicks(
    tmp_path: Path, models_dir: Path, keys: dict[str, str], browser: Any, viewport: tuple[int, int]
) -> None:
    from playwright.sync_api import expect
    from pymodbus.client import ModbusTcpClient

    from serving.app import create_app
    from serving.line import registers as reg
    from serving.settings import build_settings
    from tests.serving.conftest import settings_data

    modbus = free_port()
    data = settings_data(tmp_path, models_dir, keys)
    data["stations"][SINGLE]["line"] = {"plc": {"ack_deadline_s": 60}, "modbus": {"enabled": True, "port": modbus}}
    with uvicorn_in_thread(create_app(build_settings(data))) as url:
        with httpx.Client(base_url=url) as http:
            for part, level in (("SER-41", 250), ("SER-42", 5), ("SER-43", 250)):
                r = http.post("/v1/inspections", params={"station": SINGLE, "camera": "cam", "part_id": part},
                              content=png(level, seed=level), headers={"Content-Type": "image/png",
                                                                       "Authorization": f"Bearer {keys['line']}"})
                assert r.status_code == 200, r.text
            plc = ModbusTcpClient("127.0.0.1", port=modbus, timeout=5)
            assert plc.connect()
            try:
                for _ in range(3):  # the PLC acknowledges the three part results in order
                    w = plc.read_holding_registers(0, count=reg.REGISTER_COUNT).registers
                    seq = reg.join_u32(w[reg.RESULT_SEQ], w[reg.RESULT_SEQ + 1])
                    assert not plc.write_register(reg.RESULT_ACK, seq & 0xFFFF).isError()
                    assert not plc.write_register(reg.RESULT_ACK, 0).isError()
            finally:
                plc.close()
            auditor = {"Authorization": f"Bearer {keys['auditor']}"}
            end = time.monotonic() + 10
            while len(http.get("/v1/audit/records", params={"kind": "plc_ack"}, headers=auditor).json()["records"]) < 3:
                assert time.monotonic() < end, "plc_ack records not written"
                time.sleep(0.1)
        page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        page.goto(f"{url}/audit")
        page.fill("#api-key", keys["auditor"])
        page.click("#save-key")
        expect(page.get_by_test_id("count")).to_contain_text(" of ")
        # the columns fit without horizontal scrolling, model and frame included
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert page.evaluate("[...document.querySelectorAll('section')].every(s => s.scrollWidth <= s.clientWidth)")
        page.get_by_test_id("filter-part").fill("SER-42")
        page.get_by_test_id("filter-part").press("Enter")
        expect(page.locator("#rows tr")).to_have_count(3)  # the frame, the part, the PLC's acknowledgement
        models = page.locator("#rows td.model").all_inner_texts()
        assert "tiny/v1" in models and not any("@" in m for m in models)  # one notation: name/version
        expect(page.get_by_test_id("count")).to_have_text("3 of 3 record(s) shown")
        page.locator("#rows tr").filter(has=page.locator("td.kind", has_text="part")).click()  # click 1: the part
        expect(page.get_by_test_id("decision-summary")).to_contain_text("part reject: rejected by cam")
        expect(page.get_by_test_id("related")).to_contain_text("PLC acknowledged")
        # and back: the acknowledgement links to the part it acknowledges
        page.get_by_test_id("related").get_by_role("link").first.click()
        expect(page.get_by_test_id("links")).to_contain_text("the record it refers to")
        page.get_by_test_id("links").get_by_role("link").first.click()
        expect(page.get_by_test_id("decision-summary")).to_contain_text("part reject: rejected by cam")
        page.get_by_test_id("links").get_by_role("link").first.click()  # click 2: its frame's record
        expect(page.get_by_test_id("decision-summary")).to_contain_text("P(defect)")
        expect(page.get_by_test_id("decision-summary")).to_contain_text("→ reject")
        expect(page.get_by_test_id("frame-status")).to_contain_text("Frame matches its sha256")
        # polled from here: the page's CSP forbids the eval behind wait_for_function's polling
        until(lambda: page.locator("#detail img[data-testid=frame]").evaluate("i => i.naturalWidth") > 0, "the frame")
        frame = page.locator("#detail img[data-testid=frame]")
        fitted = frame.bounding_box()["width"]  # type: ignore[index]
        frame.click()  # zoom: 4x the frame's own pixels
        expect(frame).to_have_class("zoomed")
        assert frame.bounding_box()["width"] == pytest.approx(4 * frame.evaluate("i => i.naturalWidth"), abs=3)  # type: ignore[index]  # + border
        frame.click()
        assert frame.bounding_box()["width"] == pytest.approx(fitted, abs=1)  # type: ignore[index]
        expect(page.get_by_test_id("links")).to_contain_text("part SER-42: reject")
        page.close()
