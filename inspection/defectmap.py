"""From a model's defect map to a place on the camera frame: peak, box, and the PNG the log keeps.

The graph's ``defect_map`` (``ModelCard.defect_map``) is a coarse grid over the *model input*.
People look at the *camera frame*, so every location here is mapped back through the card's own
preprocessing (``inspection.preprocess``: region of interest, then stretch or letterbox) into
frame pixels; serving, the audit page and the labelling page therefore agree on where a defect
is, whatever the geometry.

* ``peak``: centre of the hottest cell, in frame pixels (x, y).
* ``box``: bounding box, in frame pixels (x, y, width, height), of the cells connected to the
  peak (8-neighbourhood) that rise at least half-way from the map's background (its median)
  to the peak: the "half maximum" blob around the peak, measured above the background because
  a classifier's map is rarely 0 on good surface. One defect gives one box, and faint texture
  elsewhere does not stretch it. Clipped to the part of the frame the model saw (its region of
  interest, else the whole frame); cells of a letterbox's padding (a mirror of the frame's edge,
  not the frame) are never the peak nor part of the box.
* ``extent``: the frame rectangle the whole map covers (x, y, width, height); under letterbox it
  reaches beyond the frame (the padding). Pages stretch the map PNG over it.
* ``png``: the map as an 8-bit grayscale PNG (value x 255), a few hundred bytes: stored
  content-addressed beside the frame for every reject.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from inspection.card import InputSpec
from inspection.errors import ModelError
from inspection.preprocess import letterbox_size

#: Cells connected to the peak that rise this fraction of the way from background to peak make up the box.
BOX_FRACTION = 0.5


@dataclass(frozen=True, slots=True)
class MapLocation:
    peak: tuple[float, float]
    peak_value: float
    box: tuple[float, float, float, float]
    extent: tuple[float, float, float, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "peak": [round(v, 1) for v in self.peak],
            "peak_value": round(self.peak_value, 6),
            "box": [round(v, 1) for v in self.box],
            "extent": [round(v, 1) for v in self.extent],
        }


def _seen(spec: InputSpec, frame_width: int, frame_height: int) -> tuple[int, int, int, int]:
    """The frame rectangle the model sees (x, y, width, height): its region of interest, else the frame."""
    return spec.roi if spec.roi is not None else (0, 0, frame_width, frame_height)


def _content(spec: InputSpec, frame_width: int, frame_height: int) -> tuple[int, int, int, int]:
    """Where that rectangle lies in the model input (left, top, width, height): all of it, but
    for a letterbox's padding."""
    _, _, width, height = _seen(spec, frame_width, frame_height)
    if spec.geometry == "letterbox" and (height, width) != (spec.height, spec.width):
        h, w = letterbox_size(height, width, spec)
        return (spec.width - w) // 2, (spec.height - h) // 2, w, h
    return 0, 0, spec.width, spec.height


def _input_to_frame(spec: InputSpec, frame_width: int, frame_height: int) -> tuple[float, float, float, float]:
    """(scale x, scale y, offset x, offset y): frame = input * scale + offset, for this card."""
    ox, oy, width, height = _seen(spec, frame_width, frame_height)
    left, top, w, h = _content(spec, frame_width, frame_height)
    sx, sy = width / w, height / h
    return sx, sy, ox - left * sx, oy - top * sy


def locate(heat: np.ndarray, spec: InputSpec, frame_width: int, frame_height: int) -> MapLocation:
    """Peak, box and extent of one frame's map ``float32[h, w]`` in the frame's pixels.

    Raises:
        ModelError: the map is not a finite 2-D array (a broken model must not place a defect).
    """
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2 or heat.size == 0 or not np.isfinite(heat).all():
        raise ModelError(f"defect map of shape {heat.shape} is not a finite 2-D grid")
    rows, cols = heat.shape
    cell_w, cell_h = spec.width / cols, spec.height / rows  # in model-input pixels
    sx, sy, ox, oy = _input_to_frame(spec, frame_width, frame_height)
    # Cells whose centre lies on the frame's content: a letterbox's padding mirrors the frame's
    # edge, so a defect near it shows there too, outside anything the camera framed for the model.
    left, top, w, h = _content(spec, frame_width, frame_height)
    cx, cy = (np.arange(cols) + 0.5) * cell_w, (np.arange(rows) + 0.5) * cell_h
    inside = ((cy >= top) & (cy < top + h))[:, None] & ((cx >= left) & (cx < left + w))[None, :]
    if not inside.any():  # a map coarser than the content: every cell straddles it
        inside[:] = True
    r, c = np.unravel_index(int(np.argmax(np.where(inside, heat, -np.inf))), heat.shape)
    peak_value = float(heat[r, c])
    background = float(np.median(heat[inside]))
    hot = ((heat >= background + BOX_FRACTION * (peak_value - background)) & inside).astype(np.uint8)
    _, labels = cv2.connectedComponents(hot, connectivity=8)
    ys, xs = np.nonzero(labels == labels[r, c])
    x0, x1 = xs.min() * cell_w * sx + ox, (xs.max() + 1) * cell_w * sx + ox
    y0, y1 = ys.min() * cell_h * sy + oy, (ys.max() + 1) * cell_h * sy + oy
    rx, ry, rw, rh = _seen(spec, frame_width, frame_height)
    x0, y0 = max(float(rx), x0), max(float(ry), y0)
    x1, y1 = min(float(rx + rw), x1), min(float(ry + rh), y1)
    peak_x = min(max((c + 0.5) * cell_w * sx + ox, float(rx)), float(rx + rw))
    peak_y = min(max((r + 0.5) * cell_h * sy + oy, float(ry)), float(ry + rh))
    extent = (ox, oy, spec.width * sx, spec.height * sy)
    return MapLocation((peak_x, peak_y), peak_value, (x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0)), extent)


def frame_heat(heat: np.ndarray, spec: InputSpec, frame_width: int, frame_height: int) -> np.ndarray:
    """The map resampled onto the frame's own pixel grid, ``float32[frame_height, frame_width]``
    (bilinear between cell centres, edges held): for comparing a map with a pixel mask, or
    drawing it at full resolution."""
    heat = np.asarray(heat, dtype=np.float32)
    rows, cols = heat.shape
    sx, sy, ox, oy = _input_to_frame(spec, frame_width, frame_height)
    # Frame pixel centre (X + 0.5) -> input (X + 0.5 - ox) / sx -> cell coordinate, centres at integers.
    ax, ay = 1.0 / (sx * spec.width / cols), 1.0 / (sy * spec.height / rows)
    affine = np.array([[ax, 0.0, (0.5 - ox) * ax - 0.5], [0.0, ay, (0.5 - oy) * ay - 0.5]], dtype=np.float64)
    return cv2.warpAffine(heat, affine, (frame_width, frame_height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def encode_png(heat: np.ndarray) -> bytes:
    """The map as an 8-bit grayscale PNG (0..1 -> 0..255)."""
    cells = np.clip(np.rint(np.asarray(heat, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", cells)
    if not ok:  # pragma: no cover -- OpenCV encodes any 2-D uint8 array
        raise ModelError("the defect map could not be encoded as PNG")
    return buf.tobytes()
