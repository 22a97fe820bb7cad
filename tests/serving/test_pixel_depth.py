"""A model trained on a 16-bit camera's frames serves them, through real HTTP, as its card says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from inspection.preprocess import decode_image, to_model_input
from inspection.registry import ModelRegistry
from serving.app import create_app
from serving.settings import build_settings
from tests.helpers.tiny_model import BRIGHT, DARK, frame_png, make_model_version, score
from tests.serving.conftest import SINGLE, decided, post_frame, settings_data

#: A 12-bit camera: values 0..4095 in a 16-bit container.
LEVELS = (0, 4095)


def frame16(level: int, ext: str = ".png") -> bytes:
    """``frame_png(level)``'s pixels as a 12-bit camera delivers them (x16), 16-bit PNG or TIFF."""
    eight = cv2.imdecode(np.frombuffer(frame_png(level), np.uint8), cv2.IMREAD_UNCHANGED)
    ok, buf = cv2.imencode(ext, eight.astype(np.uint16) * 16)
    assert ok
    return buf.tobytes()


@pytest.fixture
def client16(tmp_path: Path, keys: dict[str, str]) -> Iterator[TestClient]:
    models = tmp_path / "models"
    make_model_version(models, version="v1", levels=LEVELS)
    ModelRegistry(models).promote("tiny", "v1", station=SINGLE)
    with TestClient(create_app(build_settings(settings_data(tmp_path, models, keys)))) as client:
        yield client


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_sixteen_bit_frames_are_scored_through_the_cards_levels(client16: TestClient, keys, ext: str) -> None:
    version = ModelRegistry(client16.app.state.settings.models_dir).get("tiny", "v1")  # type: ignore[attr-defined]
    card = version.card
    for level, expected in ((BRIGHT, "pass"), (DARK, "reject")):
        body = frame16(level, ext)
        image = decode_image(body)
        assert image.dtype == np.uint16 and int(image.max()) > 255
        r = post_frame(client16, keys, body, part_id=f"p-{level}{ext}",
                       content_type="image/png" if ext == ".png" else "image/tiff")
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["decision"] == expected
        # What the server scored is the one preprocessing function's input, levels applied.
        pixels = to_model_input(image, card.input)
        probs = score(version.path / card.model_file, pixels[None])[0]
        assert answer["score"] == pytest.approx(float(1.0 - probs[0]), abs=1e-6)
        assert decided(client16, keys, f"p-{level}{ext}")["decision"] == expected


def test_an_eight_bit_frame_to_a_sixteen_bit_model_is_refused_with_its_reason(client16: TestClient, keys) -> None:
    r = post_frame(client16, keys, frame_png(BRIGHT), part_id="p-8bit")
    assert r.status_code == 422, r.text
    body = r.json()
    assert "8-bit frame, but the model takes 16-bit frames (pixel levels 0..4095)" in body["detail"]
    assert body["failsafe"]["decision"] == "reject"  # never a silent pass
    assert decided(client16, keys, "p-8bit")["decision"] == "reject"


def test_raw_frames_to_a_sixteen_bit_model_are_two_bytes_a_sample(client16: TestClient, keys) -> None:
    png = frame16(DARK)
    pixels = decode_image(png)
    raw = {"content_type": "application/octet-stream", "width": pixels.shape[1], "height": pixels.shape[0],
           "channels": 1}
    as_png = post_frame(client16, keys, png, part_id="p-png")
    as_raw = post_frame(client16, keys, pixels.astype("<u2").tobytes(), part_id="p-raw", **raw)
    assert as_raw.status_code == 200, as_raw.text
    assert (as_raw.json()["decision"], as_raw.json()["score"]) == (as_png.json()["decision"], as_png.json()["score"])
    # The same frame sent as 8-bit raw pixels is half the bytes the model's depth needs.
    eight = post_frame(client16, keys, (pixels // 16).astype(np.uint8).tobytes(), part_id="p-raw8", **raw)
    assert eight.status_code == 422
    assert "x 2 bytes (the model takes 16-bit frames) needs" in eight.json()["detail"]
    assert eight.json()["failsafe"]["decision"] == "reject"
