"""Frame geometry in the one preprocessing function: letterbox, region of interest, tile grid,
and image sizes read from headers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspection.card import InputSpec, TileGrid
from inspection.errors import ImageError
from inspection.imageheader import header_size
from inspection.preprocess import letterbox_size, tile_boxes, to_model_input


def test_letterbox_keeps_the_aspect_ratio_and_mirrors_the_border() -> None:
    frame = np.tile(np.arange(100, dtype=np.uint8)[:, None], (1, 200))  # rows differ: mirroring is visible
    frame[40:60, 90:110] = 255  # a square defect must stay square
    spec = InputSpec(height=64, width=64, geometry="letterbox", resize="nearest")
    out = to_model_input(frame, spec)[0]
    assert out.shape == (64, 64)
    assert letterbox_size(100, 200, spec) == (32, 64)
    ys, xs = np.nonzero(out[16:48] == 255)
    assert np.ptp(ys) == pytest.approx(np.ptp(xs), abs=1)
    # the padding mirrors the frame: no constant band the network could learn as an edge
    for k in range(15):
        assert np.array_equal(out[15 - k], out[17 + k])


def test_stretch_squashes_as_old_cards_did() -> None:
    frame = np.zeros((100, 200), np.uint8)
    frame[40:60, 90:110] = 255
    out = to_model_input(frame, InputSpec(height=64, width=64, geometry="stretch", resize="nearest"))[0]
    ys, xs = np.nonzero(out == 255)
    assert np.ptp(ys) > 1.5 * np.ptp(xs)


def test_same_aspect_letterbox_equals_a_plain_resize() -> None:
    frame = np.random.default_rng(0).integers(0, 255, (90, 120), dtype=np.uint8)
    a = to_model_input(frame, InputSpec(height=48, width=64, geometry="letterbox"))
    b = to_model_input(frame, InputSpec(height=48, width=64, geometry="stretch"))
    assert np.array_equal(a, b)


def test_roi_is_cropped_first_and_a_small_frame_is_refused() -> None:
    frame = np.zeros((100, 100), np.uint8)
    frame[10:20, 30:40] = 200
    spec = InputSpec(height=10, width=10, roi=(30, 10, 10, 10), resize="nearest")
    assert (to_model_input(frame, spec) == 200).all()
    with pytest.raises(ImageError, match="region of interest"):
        to_model_input(np.zeros((15, 15), np.uint8), spec)
    # The file is named (training loads thousands of them), with its size and the region.
    with pytest.raises(ImageError, match=r"^images/good/007\.png \(15x15 px\) does not contain the model's region of "
                                         r"interest x=30 y=10 width=10 height=10$"):
        to_model_input(np.zeros((15, 15), np.uint8), spec, source="images/good/007.png")


def test_tile_boxes_cover_the_input_edge_to_edge() -> None:
    spec = InputSpec(height=96, width=160, tiles=TileGrid(rows=2, cols=3, tile_height=64, tile_width=64))
    boxes = tile_boxes(spec)
    assert len(boxes) == 6
    covered = np.zeros((96, 160), bool)
    for x, y, w, h in boxes:
        covered[y : y + h, x : x + w] = True
    assert covered.all()
    assert tile_boxes(InputSpec(height=32, width=32)) == [(0, 0, 32, 32)]


def test_a_tile_grid_that_leaves_gaps_is_refused() -> None:
    with pytest.raises(ValueError, match="uncovered"):
        InputSpec(height=96, width=160, tiles=TileGrid(rows=1, cols=2, tile_height=96, tile_width=64))


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tiff"])
@pytest.mark.parametrize("shape", [(37, 91), (300, 20), (64, 64, 3)])
def test_header_size_matches_the_decoded_image(ext: str, shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(1).integers(0, 255, shape, dtype=np.uint8)
    ok, buf = cv2.imencode(ext, image)
    assert ok
    assert header_size(buf.tobytes()) == (shape[1], shape[0])


def test_header_size_of_garbage_is_none() -> None:
    assert header_size(b"not an image at all") is None
    assert header_size(b"\x89PNG\r\n\x1a\n") is None
