"""inspection.defectmap: a map over the model input placed back on the camera frame, through the
card's own geometry (stretch, letterbox, region of interest), and the half-maximum box."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspection.card import InputSpec
from inspection.defectmap import encode_png, frame_heat, locate
from inspection.errors import ModelError
from inspection.preprocess import to_model_input


def _hot(rows: int, cols: int, cells: list[tuple[int, int]], *, background: float = 0.3) -> np.ndarray:
    heat = np.full((rows, cols), background, dtype=np.float32)
    for r, c in cells:
        heat[r, c] = 0.9
    return heat


def test_stretch_maps_cells_to_frame_pixels() -> None:
    spec = InputSpec(height=64, width=64)
    where = locate(_hot(4, 4, [(1, 2), (1, 3)]), spec, frame_width=400, frame_height=200)
    assert where.peak == (250.0, 75.0)  # cell (1, 2): centre 40, 24 of the input, x 400/64, y 200/64
    assert where.box == (200.0, 50.0, 200.0, 50.0)
    assert where.extent == (0.0, 0.0, 400.0, 200.0)


def test_the_box_is_measured_above_the_background_and_keeps_to_the_peaks_blob() -> None:
    spec = InputSpec(height=80, width=80)
    heat = _hot(5, 5, [(0, 0), (4, 4)], background=0.6)
    heat[4, 4] = 0.95  # the peak; (0, 0) is hot too but not connected to it
    where = locate(heat, spec, frame_width=80, frame_height=80)
    assert where.peak == (72.0, 72.0) and where.box == (64.0, 64.0, 16.0, 16.0)


def test_letterbox_and_roi_follow_the_preprocessing() -> None:
    """The cell a bright square lands in after ``to_model_input`` maps back onto that square."""
    spec = InputSpec(height=64, width=64, geometry="letterbox", roi=(30, 10, 300, 150))
    frame = np.zeros((200, 400), dtype=np.uint8)
    frame[100:130, 230:260] = 255  # x 230..260, y 100..130
    model_input = to_model_input(frame, spec)[0].astype(np.float32)
    cells = cv2.resize(model_input, (8, 8), interpolation=cv2.INTER_AREA) / 255.0
    where = locate(cells, spec, frame_width=400, frame_height=200)
    assert 230 <= where.peak[0] <= 260 and 100 <= where.peak[1] <= 130
    # 300 x 150 scaled by 64/300 is 64 x 32, centred: the map reaches 75 frame px above and below.
    assert where.extent == pytest.approx((30.0, -65.0, 300.0, 300.0))
    x, y, w, h = where.box
    assert x >= 0 and y >= 0 and x + w <= 400 and y + h <= 200  # clipped to the frame


def test_a_defect_at_the_edge_of_a_letterboxed_roi_is_placed_inside_it_not_on_its_mirror() -> None:
    # The letterbox pads with a mirror of the content's edge: a defect there shows twice in the
    # input. The copy in the padding is nothing the camera framed: it maps outside the region.
    spec = InputSpec(height=64, width=64, geometry="letterbox", roi=(0, 100, 300, 150))  # y 100..250
    frame = np.zeros((400, 400), dtype=np.uint8)
    frame[100:106, 140:160] = 255  # a defect on the region's top edge
    model_input = to_model_input(frame, spec)[0].astype(np.float32)
    assert model_input[:16].max() > 0  # mirrored into the top padding (rows 0..15)
    cells = cv2.resize(model_input, (16, 16), interpolation=cv2.INTER_AREA) / 255.0
    cells[3, 7] = cells.max() + 0.1  # the padding's copy a little hotter: the first maximum before
    where = locate(cells, spec, frame_width=400, frame_height=400)
    assert 140 <= where.peak[0] <= 160 and 100 <= where.peak[1] <= 110
    x, y, w, h = where.box
    assert x >= 0 and y >= 100 and x + w <= 300 and y + h <= 250  # within the region the model saw


@pytest.mark.parametrize("bad", [np.zeros((0, 3)), np.zeros((2, 2, 2)), np.array([[0.1, np.nan]])])
def test_a_broken_map_places_nothing(bad: np.ndarray) -> None:
    with pytest.raises(ModelError, match="not a finite 2-D grid"):
        locate(bad, InputSpec(height=8, width=8), frame_width=8, frame_height=8)


def test_the_png_keeps_every_cell_to_one_level_in_255() -> None:
    heat = np.random.default_rng(0).random((7, 9)).astype(np.float32)
    back = cv2.imdecode(np.frombuffer(encode_png(heat), np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.shape == (7, 9) and np.max(np.abs(back / 255.0 - heat)) <= 0.5 / 255 + 1e-6


def test_frame_heat_puts_each_cell_on_its_frame_pixels() -> None:
    spec = InputSpec(height=64, width=64, geometry="letterbox", roi=(30, 10, 300, 150))
    heat = np.zeros((8, 8), dtype=np.float32)
    heat[4, 6] = 1.0  # input x 48..56, y 32..40 -> frame x 30 + 48 * 300/64 = 255, y 10 + (32 - 16) * 300/64 = 85
    full = frame_heat(heat, spec, frame_width=400, frame_height=200)
    assert full.shape == (200, 400)
    y, x = np.unravel_index(int(np.argmax(full)), full.shape)
    assert 255 <= x <= 255 + 300 / 8 and 85 <= y <= 85 + 300 / 8
    assert full[y, x] == pytest.approx(1.0, abs=0.05) and full[:60].max() == 0.0
