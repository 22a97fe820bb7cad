"""The audit and labelling pages overlay the defect map on the frame, in headless Chromium against
a real uvicorn server: a generated frame with a black square at a known place is rejected, and
the drawn box and peak sit on that square on both pages (at the page's own scale)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from inspection.registry import ModelRegistry
from serving.settings import ServeSettings, build_settings
from tests.helpers.server import until
from tests.helpers.tiny_model import make_model_version
from tests.serving.conftest import SINGLE, settings_data
from tests.serving.test_audit_page import browser, live  # noqa: F401  (fixtures)
from tests.serving.test_defect_maps import SIZE, spot_frame

pytestmark = pytest.mark.browser

FRAME = (256, 128)
SPOT = (176, 32, 32, 32)  # x, y, w, h in the frame's pixels


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    make_model_version(root, name="mapped", version="v1", size=SIZE, map_cell=8)
    ModelRegistry(root).promote("mapped", "v1", station=SINGLE)
    return root


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path, keys: dict[str, str]) -> ServeSettings:
    return build_settings(settings_data(tmp_path, models_dir, keys, labelling={"classes": ["good", "scratch", "dent"]}))


def _rects(page: Any) -> dict[str, dict[str, float]]:
    return page.evaluate("""() => {
      const r = (el) => { const b = el.getBoundingClientRect(); return {x: b.x, y: b.y, w: b.width, h: b.height}; };
      const q = (t) => document.querySelector(`[data-testid=${t}]`);
      const img = q("defect-box").parentElement.querySelector("img");
      return {img: r(img), box: r(q("defect-box")), peak: r(q("defect-peak")), overlay: r(q("defect-overlay"))};
    }""")


def _assert_on_the_spot(rects: dict[str, dict[str, float]]) -> None:
    img = rects["img"]
    sx, sy = img["w"] / FRAME[0], img["h"] / FRAME[1]  # page px per frame px
    spot = {"x": img["x"] + SPOT[0] * sx, "y": img["y"] + SPOT[1] * sy, "w": SPOT[2] * sx, "h": SPOT[3] * sy}
    box, peak = rects["box"], rects["peak"]
    # The box holds the square (to a pixel), and is at most one map cell larger on each side.
    assert box["x"] <= spot["x"] + 1 and box["y"] <= spot["y"] + 1
    assert box["x"] + box["w"] >= spot["x"] + spot["w"] - 1 and box["y"] + box["h"] >= spot["y"] + spot["h"] - 1
    assert box["w"] <= spot["w"] + 2 * 32 * sx + 1 and box["h"] <= spot["h"] + 2 * 16 * sy + 1
    cx, cy = peak["x"] + peak["w"] / 2, peak["y"] + peak["h"] / 2
    assert spot["x"] - 1 <= cx <= spot["x"] + spot["w"] + 1 and spot["y"] - 1 <= cy <= spot["y"] + spot["h"] + 1
    # The map covers the whole frame (a stretched frame: the map's extent is the frame).
    assert rects["overlay"] == pytest.approx(img, abs=1)


def test_audit_and_labelling_pages_draw_the_map_where_the_defect_is(live: str, keys: dict[str, str],  # noqa: F811
                                                                    browser: Any) -> None:  # noqa: F811
    from playwright.sync_api import expect

    with httpx.Client(base_url=live, headers={"Authorization": f"Bearer {keys['line']}"}) as http:
        r = http.post("/v1/inspections", params={"station": SINGLE, "camera": "cam", "part_id": "S1"},
                      content=spot_frame(*FRAME, SPOT), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["decision"] == "reject", r.text

    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(f"{live}/audit")
    page.fill("#api-key", keys["auditor"])
    page.click("#save-key")
    page.locator(f"#rows tr[data-id='{r.json()['inspection_id']}']").click()
    expect(page.locator("[data-testid=defect-where]")).to_contain_text("Defect map: peak at")
    until(lambda: page.evaluate("() => !!document.querySelector('.defect-holder[data-placed]')"), "the audit overlay")
    _assert_on_the_spot(_rects(page))
    # Zoomed 4x, the overlay follows the frame.
    page.locator("[data-testid=frame]").click()
    until(lambda: page.evaluate("() => document.querySelector('[data-testid=frame]').classList.contains('zoomed')"),
          "the zoom")
    _assert_on_the_spot(_rects(page))

    page.goto(f"{live}/label")
    page.fill("#api-key", keys["engineer"])
    page.click("#save-key")
    expect(page.locator("[data-testid=prediction]")).to_contain_text("mapped/v1")
    until(lambda: page.evaluate("() => !!document.querySelector('.defect-holder[data-placed]')"), "the label overlay")
    _assert_on_the_spot(_rects(page))
    page.keyboard.press("-")  # zoomed out: the overlay scales with the frame
    _assert_on_the_spot(_rects(page))
