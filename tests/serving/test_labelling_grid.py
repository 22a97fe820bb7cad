"""The labelling page's grid view (20 frames at a time, labelled by keyboard) and any number of
classes (keys for the first nine, a picker for the rest), in Chromium against a real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.settings import ServeSettings, build_settings
from tests.helpers.tiny_model import frame_png
from tests.serving.conftest import SINGLE, auth, settings_data
from tests.serving.test_audit_page import browser, live  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

CLASSES = ["good", "scratch", "dent", *(f"defect-{i}" for i in range(4, 12))]  # 11 classes


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path, keys: dict[str, str]) -> ServeSettings:
    return build_settings(settings_data(tmp_path, models_dir, keys, frame_sample_rate=1.0,
                                        labelling={"classes": CLASSES}))


def _labels(base: str, keys: dict[str, str]) -> dict[str, Any]:
    r = httpx.get(f"{base}/v1/labelling/queue", params={"include_labelled": "true", "limit": 100},
                  headers=auth(keys, "engineer"))
    return r.json()


@pytest.mark.parametrize("viewport", [(1366, 768), (1920, 1080)])
def test_the_grid_labels_twenty_frames_by_keyboard_and_the_picker_offers_every_class(
    live: str, keys: dict[str, str], browser: Any, viewport: tuple[int, int]  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    with httpx.Client(base_url=live, headers=auth(keys, "line")) as http:
        for i in range(25):
            r = http.post("/v1/inspections", params={"station": SINGLE, "camera": "cam", "part_id": f"G{i}"},
                          content=frame_png(30 + 8 * i, seed=i), headers={"Content-Type": "image/png"})
            assert r.status_code == 200, r.text
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.goto(f"{live}/label")
    page.fill("#api-key", keys["engineer"])
    page.click("#save-key")
    expect(page.get_by_test_id("frame-id")).not_to_have_text("")
    # nine keys, and a picker with the other two classes
    expect(page.locator("#classes button")).to_have_count(9)
    expect(page.get_by_test_id("more-classes").locator("option")).to_have_count(2)

    page.keyboard.press("g")
    tiles = page.get_by_test_id("tile")
    expect(tiles).to_have_count(20)
    page.keyboard.press("a")  # select the twenty
    expect(page.locator(".tile.selected")).to_have_count(20)
    page.keyboard.press("2")  # scratch, for all of them
    expect(page.locator(".tile.done")).to_have_count(20)
    expect(page.get_by_test_id("status")).to_have_text("20 frame(s) labelled scratch")
    assert page.get_by_test_id("status").get_attribute("class") != "error"
    expect(page.locator("#remaining")).to_contain_text("20 of 25 labelled (scratch 20)")
    # correct one by moving to it and pressing another key
    page.keyboard.press("ArrowRight")
    page.keyboard.press("3")
    expect(page.locator("#remaining")).to_contain_text("(scratch 19, dent 1)")
    # the next page of the grid has the five left; the picker labels one with the eleventh class
    page.keyboard.press("n")
    expect(tiles).to_have_count(5)
    page.get_by_test_id("more-classes").select_option("defect-11")
    page.click("#label-more")
    expect(page.locator(".tile.done")).to_have_count(1)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    body = _labels(live, keys)
    given = {item["frame_id"]: item["label"] for item in body["items"] if item["label"]}
    assert len(given) == 21 and sorted(set(given.values())) == ["defect-11", "dent", "scratch"]
    assert body["progress"]["labelled"] == 21 and body["progress"]["total"] == 25
    page.close()


def test_grid_labels_are_undone_by_u_and_ctrl_z_key_press_by_key_press(
    live: str, keys: dict[str, str], browser: Any  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    with httpx.Client(base_url=live, headers=auth(keys, "line")) as http:
        for i in range(6):
            r = http.post("/v1/inspections", params={"station": SINGLE, "camera": "cam", "part_id": f"U{i}"},
                          content=frame_png(30 + 30 * i, seed=i), headers={"Content-Type": "image/png"})
            assert r.status_code == 200, r.text

    def labels() -> dict[str, str | None]:
        return {item["frame_id"]: item["label"] for item in _labels(live, keys)["items"]}

    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(f"{live}/label")
    page.fill("#api-key", keys["engineer"])
    page.click("#save-key")
    frame_id = page.get_by_test_id("frame-id")
    expect(frame_id).not_to_have_text("")
    single = frame_id.inner_text()
    page.keyboard.press("1")  # single view: good
    expect(frame_id).not_to_have_text(single)

    page.keyboard.press("g")
    tiles = page.get_by_test_id("tile")
    expect(tiles).to_have_count(5)
    ids = [tiles.nth(i).get_attribute("data-frame-id") for i in range(5)]
    page.keyboard.press("a")
    expect(page.locator(".tile.selected")).to_have_count(5)  # as the grid test above: selected, then labelled
    page.keyboard.press("2")  # a slip: scratch on all five
    expect(page.get_by_test_id("status")).to_have_text("5 frame(s) labelled scratch")  # (or the error, if not)
    expect(page.locator(".tile.done")).to_have_count(5)
    # u undoes that key press, all five, and gives the tiles back as they were (still selected)
    page.keyboard.press("u")
    expect(page.get_by_test_id("status")).to_have_text("undone: 5 frames labelled scratch")
    assert page.get_by_test_id("status").get_attribute("class") != "error"
    expect(page.locator(".tile.done")).to_have_count(0)
    expect(page.locator(".tile.selected")).to_have_count(5)
    expect(page.locator("#done li")).to_have_count(1)  # the single view's label stays
    expect(page.locator("#remaining")).to_contain_text("1 of 6 labelled (good 1)")
    assert labels() == {single: "good", **dict.fromkeys(ids)}

    page.keyboard.press("a")  # unselect: keys now label the focused tile and move on
    expect(page.locator(".tile.selected")).to_have_count(0)
    page.keyboard.press("3")  # dent on the first
    expect(tiles.nth(0)).to_contain_text("labelled dent")
    page.keyboard.press("Control+z")  # ctrl+z undoes this one, not the single view's older label
    expect(page.get_by_test_id("status")).to_have_text(f"undone: {ids[0]}")
    expect(tiles.nth(0)).to_contain_text("unlabelled")
    expect(tiles.nth(0)).to_have_class("tile focus")  # the focus is back on it
    assert labels() == {single: "good", **dict.fromkeys(ids)}

    # labelled twice: undo gives back the first label, then the next undo is the older key press
    page.keyboard.press("2")
    expect(tiles.nth(0)).to_contain_text("labelled scratch")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("3")
    expect(tiles.nth(0)).to_contain_text("labelled dent")
    page.keyboard.press("u")
    expect(tiles.nth(0)).to_contain_text("labelled scratch")
    expect(page.get_by_test_id("status")).to_have_text(f"undone: {ids[0]}")
    page.keyboard.press("u")
    expect(page.get_by_test_id("status")).to_have_text(f"undone: {single}")
    expect(tiles.nth(0)).to_contain_text("labelled scratch")
    expect(page.locator("#done li")).to_have_count(1)  # scratch on the first tile
    assert labels() == {single: None, ids[0]: "scratch", **dict.fromkeys(ids[1:])}
    page.keyboard.press("u")
    expect(page.get_by_test_id("status")).to_have_text("nothing to undo")
    # a grid label undone from the single view shows that frame again, unlabelled
    page.keyboard.press("ArrowRight")
    page.keyboard.press("3")
    expect(tiles.nth(1)).to_contain_text("labelled dent")
    page.keyboard.press("g")
    expect(frame_id).not_to_have_text("")
    page.keyboard.press("u")
    expect(page.get_by_test_id("status")).to_have_text(f"undone: {ids[1]}")
    expect(frame_id).to_have_text(ids[1] or "")
    expect(page.get_by_test_id("current-label")).to_have_text("unlabelled")
    assert labels() == {single: None, ids[0]: "scratch", **dict.fromkeys(ids[1:])}
    page.close()
