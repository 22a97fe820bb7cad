"""The labelling page in headless Chromium against a real uvicorn server: label frames with the
keyboard, skip one, undo two (u and ctrl+z), then build a dataset version and find exactly those
labels in it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from inspection import labels as L
from inspection.cli import main as cli
from inspection.dataset.layout import Sample, read_dataset, write_dataset
from inspection.log.store import open_log
from serving.settings import ServeSettings, build_settings
from tests.helpers.server import until
from tests.helpers.tiny_model import frame_png
from tests.serving.conftest import SINGLE, settings_data
from tests.serving.test_audit_page import browser, live  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

CLASSES = ["good", "scratch", "dent"]


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path, keys: dict[str, str]) -> ServeSettings:
    return build_settings(settings_data(tmp_path, models_dir, keys, frame_sample_rate=1.0,
                                        labelling={"classes": CLASSES}))


def test_keyboard_labelling_undo_and_the_built_dataset(live: str, keys: dict[str, str], browser: Any,  # noqa: F811
                                                       settings: ServeSettings, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with httpx.Client(base_url=live, headers={"Authorization": f"Bearer {keys['line']}"}) as http:
        for i, level in enumerate([20, 140, 160, 235, 60]):
            r = http.post("/v1/inspections", params={"station": SINGLE, "camera": "cam", "part_id": f"P{i}"},
                          content=frame_png(level, seed=i), headers={"Content-Type": "image/png"})
            assert r.status_code == 200, r.text

    page = browser.new_page()
    page.goto(f"{live}/label")
    expect(page.locator("#status")).to_contain_text("401")
    page.fill("#api-key", keys["engineer"])
    page.click("#save-key")
    frame_id = page.locator("[data-testid=frame-id]")
    expect(frame_id).not_to_have_text("")
    expect(page.locator("[data-testid=prediction]")).to_contain_text("tiny/v1")
    # what the model said and why, in the rule's words: no "good, P(defect) 0.601 → reject"
    prediction = page.locator("[data-testid=prediction]").inner_text()
    assert "model tiny/v1 now: " in prediction and "threshold" in prediction
    said_reject = "≥ threshold" in prediction and "→ reject" in prediction
    assert said_reject or ("< threshold" in prediction and "→ pass" in prediction)
    assert ": good," not in prediction
    decided = page.locator("[data-testid=decided]").inner_text()
    assert "P(defect)" in decided and " score " not in decided and "(threshold " not in decided
    # polled from here: the page's CSP forbids the eval behind wait_for_function's polling
    until(lambda: page.evaluate("() => document.getElementById('frame').naturalWidth > 0"), "the frame")
    # A 32 px frame is fitted to the large view (zoomed in) once it has loaded.
    until(lambda: page.evaluate("() => parseFloat(document.getElementById('zoom').value) > 1"), "the fitted zoom")
    fitted = float(page.input_value("[data-testid=zoom]"))
    page.keyboard.press("-")
    assert float(page.input_value("[data-testid=zoom]")) < fitted
    zoomed = float(page.input_value("[data-testid=zoom]"))
    assert page.evaluate("document.getElementById('frame').getBoundingClientRect().width") == pytest.approx(
        32 * zoomed, abs=1
    )

    def press(key: str, status: str = "") -> str:
        """Press a key on the frame shown now; return that frame's id once the page moved on."""
        shown = frame_id.inner_text()
        page.keyboard.press(key)
        expect(frame_id).not_to_have_text(shown)
        expect(page.locator("#status")).to_have_text(status)
        return shown

    expected: dict[str, str] = {}
    a = press("2")
    expected[a] = "scratch"
    b = press("3")
    expected[b] = "dent"
    skipped = press("s")
    labelled_before = len(expected)
    d = press("1")
    expected[d] = "good"
    # progress counted by the server over every queued frame, kept in step here
    expect(page.locator("#remaining")).to_contain_text(f"{labelled_before + 1} of ")
    expect(page.locator("#remaining")).to_contain_text("good ")
    assert "more in the queue" not in page.locator("#remaining").inner_text()
    press("u", status=f"undone: {d}")  # d comes back, unlabelled again
    expect(page.locator("#remaining")).to_contain_text(f"{labelled_before} of ")
    assert page.locator("#status").get_attribute("class") != "error"  # information, not an error
    del expected[d]
    assert frame_id.inner_text() == d
    expect(page.locator("[data-testid=current-label]")).to_have_text("unlabelled")
    expect(page.locator("[data-testid=history] li")).to_have_count(2)  # the label and its undo, kept
    assert press("3") == d
    expected[d] = "dent"
    e = press("2")
    press("Control+z", status=f"undone: {e}")
    assert press("2") == e
    expected[e] = "scratch"
    assert frame_id.inner_text() == skipped  # the skipped frame comes round again, left unlabelled
    assert len({a, b, d, e, skipped}) == 5
    expect(page.locator("#done li")).to_have_count(4)

    base = tmp_path / "base"
    write_dataset(base, name="base", classes=CLASSES, good_class="good",
                  items=[(Sample(f"images/{c}/0.png", c, "train"), frame_png(lv, seed=100 + i))
                         for i, (c, lv) in enumerate(zip(CLASSES, (240, 15, 90)))])
    out = tmp_path / "v2"
    assert cli(["dataset", "build", "--base", str(base), "--log-url", settings.log_url, "--out", str(out)]) == 0
    ds = read_dataset(out, verify=True)
    lineage = ds.manifest["lineage"]["labels"]
    assert {x["frame_id"]: x["label"] for x in lineage} == expected
    prod = {s.path: s.label for s in ds.samples if s.path.startswith("images/production/")}
    assert sorted(prod.values()) == sorted(expected.values())
    assert all(prod[x["path"]] == x["label"] for x in lineage)
    assert all(x["labelled_by"] == "engineer-key" for x in lineage)
    with open_log(settings.log_url) as log:
        assert [h.label for h in L.history(log, d).history] == ["good", None, "dent"]
        assert [h.label for h in L.history(log, e).history] == ["scratch", None, "scratch"]
        assert L.history(log, skipped).history == ()
