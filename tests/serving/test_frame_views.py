"""Frames a browser cannot show as sent (raw pixels, TIFF, 16-bit) reach the audit, labelling and
line pages as images, and raw production frames, labelled, become a dataset version: real app,
real log, real models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from inspection.dataset.build import build_dataset
from inspection.dataset.layout import Sample, read_dataset, write_dataset
from inspection.preprocess import decode_image
from inspection.registry import ModelRegistry
from serving.app import create_app
from serving.settings import build_settings
from tests.helpers.tiny_model import BRIGHT, DARK, frame_png, make_model_version
from tests.serving.conftest import SINGLE, auth, post_frame, settings_data

LABELLING = {"classes": ["good", "scratch", "dent"], "margin": 0.2, "pass_sample": 10}


def _pixels(level: int, seed: int = 0) -> np.ndarray:
    return decode_image(frame_png(level, seed=seed))


def _raw(client: TestClient, keys: dict[str, str], pixels: np.ndarray, part: str) -> dict:
    r = post_frame(client, keys, pixels.tobytes(), part_id=part, content_type="application/octet-stream",
                   width=pixels.shape[1], height=pixels.shape[0], channels=1 if pixels.ndim == 2 else 3)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def client(tmp_path: Path, models_dir: Path, keys: dict[str, str]) -> Iterator[TestClient]:
    data = settings_data(tmp_path, models_dir, keys, frame_sample_rate=1.0, labelling=LABELLING)
    with TestClient(create_app(build_settings(data))) as c:
        yield c


def test_a_raw_frame_is_shown_scored_and_downloadable_on_every_page(client: TestClient, keys: dict[str, str]) -> None:
    pixels = _pixels(DARK)
    answer = _raw(client, keys, pixels, "raw-1")
    assert answer["decision"] == "reject"
    fid = answer["inspection_id"]
    detail = client.get(f"/v1/audit/records/{fid}", headers=auth(keys, "auditor")).json()
    assert detail["record"]["data"]["raw"] == {"width": 32, "height": 32, "channels": 1}
    assert detail["frame"]["view_url"] == f"/v1/audit/records/{fid}/frame/view"
    # as sent: the bytes the record's sha256 names, the layout beside them
    sent = client.get(detail["frame"]["url"], headers=auth(keys, "auditor"))
    assert sent.status_code == 200 and sent.content == pixels.tobytes()
    assert sent.headers["content-type"] == "application/octet-stream"
    assert (sent.headers["x-frame-width"], sent.headers["x-frame-height"], sent.headers["x-frame-channels"]) == (
        "32", "32", "1")
    # shown: a PNG of the very pixels, on the audit, labelling and line pages alike
    views = [client.get(detail["frame"]["view_url"], headers=auth(keys, "auditor")),
             client.get(f"/v1/labelling/frames/{fid}/image", headers=auth(keys, "engineer")),
             client.get(f"/v1/line/{SINGLE}/rejects/{fid}/frame", headers=auth(keys, "viewer"))]
    for view in views:
        assert view.status_code == 200, view.text
        assert view.headers["content-type"] == "image/png"
        assert np.array_equal(decode_image(view.content), pixels)
    # the labelling page scores it with the station's model now: the very score it was decided by
    prediction = client.get(f"/v1/labelling/frames/{fid}", headers=auth(keys, "engineer")).json()["prediction"]
    assert "error" not in prediction and prediction["score"] == pytest.approx(answer["score"], abs=1e-6)


def test_encoded_frames_browsers_show_pass_unchanged_and_tiff_becomes_png(client: TestClient, keys) -> None:
    png = frame_png(BRIGHT, seed=3)
    ok, tif = cv2.imencode(".tif", decode_image(png))
    assert ok
    for body, media, shown in ((png, "image/png", "image/png"), (tif.tobytes(), "image/tiff", "image/png")):
        fid = post_frame(client, keys, body, part_id=f"enc-{media}", content_type=media).json()["inspection_id"]
        view = client.get(f"/v1/audit/records/{fid}/frame/view", headers=auth(keys, "auditor"))
        assert view.status_code == 200 and view.headers["content-type"] == shown
        assert np.array_equal(decode_image(view.content), decode_image(png))
        if media == "image/png":
            assert view.content == png  # byte for byte
        assert client.get(f"/v1/audit/records/{fid}/frame", headers=auth(keys, "auditor")).content == body


def test_a_frame_refused_as_undecodable_is_kept_but_its_view_says_why(client: TestClient, keys) -> None:
    r = post_frame(client, keys, bytes(100), part_id="short", content_type="application/octet-stream",
                   width=32, height=32, channels=1)
    assert r.status_code == 422
    fid = r.json()["failsafe"]["inspection_id"]
    detail = client.get(f"/v1/audit/records/{fid}", headers=auth(keys, "auditor")).json()
    assert detail["record"]["data"]["raw"] == {"width": 32, "height": 32, "channels": 1}
    assert client.get(detail["frame"]["url"], headers=auth(keys, "auditor")).content == bytes(100)
    view = client.get(detail["frame"]["view_url"], headers=auth(keys, "auditor"))
    assert view.status_code == 422
    assert "100 bytes of raw pixels do not fit their recorded layout 32 x 32 x 1" in view.json()["detail"]


def test_a_sixteen_bit_raw_frame_is_shown_through_the_deciding_models_levels(
    tmp_path: Path, keys: dict[str, str]
) -> None:
    models = tmp_path / "models"
    make_model_version(models, version="v1", levels=(0, 4095))
    ModelRegistry(models).promote("tiny", "v1", station=SINGLE)
    data = settings_data(tmp_path, models, keys, frame_sample_rate=1.0)
    with TestClient(create_app(build_settings(data))) as client:
        eight = _pixels(DARK)
        twelve = eight.astype(np.uint16) * 16
        r = post_frame(client, keys, twelve.astype("<u2").tobytes(), part_id="p16",
                       content_type="application/octet-stream", width=32, height=32, channels=1)
        assert r.status_code == 200, r.text
        view = client.get(f"/v1/audit/records/{r.json()['inspection_id']}/frame/view", headers=auth(keys, "auditor"))
        assert view.status_code == 200 and view.headers["content-type"] == "image/png"
        shown = decode_image(view.content)
        assert shown.dtype == np.uint8
        assert np.array_equal(shown, np.rint(twelve * (255 / 4095)).astype(np.uint8))


def test_labelled_raw_production_frames_become_png_samples_of_a_new_dataset_version(
    client: TestClient, keys: dict[str, str], tmp_path: Path
) -> None:
    sent = {}
    for i, level in enumerate((DARK, DARK + 10, BRIGHT)):
        pixels = _pixels(level, seed=i)
        fid = _raw(client, keys, pixels, f"raw-{i}")["inspection_id"]
        r = client.post(f"/v1/labelling/frames/{fid}/labels", json={"label": "scratch" if level < 128 else "good",
                                                                   "expected_revision": 0},
                        headers=auth(keys, "engineer"))
        assert r.status_code == 201, r.text
        sent[fid] = pixels
    # Other seeds than the frames': a frame already in the base is not added again (lineage in_base).
    base_items = [(Sample(f"images/{c}/{i}.png", c, "train"), frame_png(BRIGHT if c == "good" else DARK, seed=10 + i))
                  for c in ("good", "scratch") for i in range(3)]
    write_dataset(tmp_path / "base", name="base", classes=["good", "scratch"], good_class="good", items=base_items)
    build_dataset(tmp_path / "base", client.app.state.log, tmp_path / "v2")  # type: ignore[attr-defined]
    ds = read_dataset(tmp_path / "v2", verify=True)
    lineage = {entry["frame_id"]: entry for entry in ds.manifest["lineage"]["labels"]}
    assert set(lineage) == set(sent) and not ds.manifest["lineage"]["skipped"]
    for fid, pixels in sent.items():
        entry = lineage[fid]
        assert entry["path"].endswith(".png") and entry["sent_as"] == "raw 32x32x1, 8-bit; written as PNG"
        assert np.array_equal(decode_image((tmp_path / "v2" / entry["path"]).read_bytes()), pixels)
