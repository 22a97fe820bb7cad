"""Cheap statistics of one frame, as the model sees it (uint8 ``[C, H, W]``, the graph's input).

They are what a camera's health changes first: ``brightness`` (mean grey level: a lamp ageing,
a darker coil), ``contrast`` (standard deviation of the grey levels), ``sharpness`` (variance of
the Laplacian: a lens out of focus or dirty) and ``saturated`` (fraction of pixels at >= 250:
overexposure, glare). Computed on one channel (the only one, or green for RGB: closest to
luma without a conversion) sampled on a grid of at most ``MAX_SIDE`` x ``MAX_SIDE`` pixels, so the
cost does not grow with the input size (~20-40 µs); training's reference uses the same function,
so the sampling is the same on both sides.
"""

from __future__ import annotations

import cv2
import numpy as np

#: The statistics, in the order ``frame_stats`` returns them.
STAT_NAMES: tuple[str, ...] = ("brightness", "contrast", "sharpness", "saturated")
#: Longest side sampled; larger inputs are read on a strided grid.
MAX_SIDE = 128
#: Grey level from which a pixel counts as saturated.
SATURATED_LEVEL = 250


def frame_stats(pixels: np.ndarray) -> tuple[float, float, float, float]:
    """``(brightness, contrast, sharpness, saturated)`` of one uint8 frame ``[C, H, W]`` or ``[H, W]``.

    Raises:
        ValueError: not a 2-D or 3-D uint8 array, or an empty one.
    """
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or pixels.size == 0:
        raise ValueError(f"frame statistics need a non-empty uint8 [C, H, W] or [H, W] array, "
                         f"got {pixels.dtype} of shape {pixels.shape}")
    img = pixels if pixels.ndim == 2 else pixels[0 if pixels.shape[0] == 1 else 1]
    step = -(-max(img.shape) // MAX_SIDE)
    if step > 1:
        img = img[::step, ::step]
    img = np.ascontiguousarray(img)
    mean, std = cv2.meanStdDev(img)
    _, lap_std = cv2.meanStdDev(cv2.Laplacian(img, cv2.CV_16S, ksize=1))
    saturated = np.count_nonzero(img >= SATURATED_LEVEL) / img.size
    return float(mean[0, 0]), float(std[0, 0]), float(lap_std[0, 0]) ** 2, float(saturated)


def batch_stats(inputs: np.ndarray) -> np.ndarray:
    """``float64[N, len(STAT_NAMES)]``: ``frame_stats`` of each frame of ``uint8[N, C, H, W]``.

    Raises:
        ValueError: ``inputs`` is not a uint8 4-D array.
    """
    if inputs.dtype != np.uint8 or inputs.ndim != 4:
        raise ValueError(f"expected uint8 [N, C, H, W] inputs, got {inputs.dtype} of shape {inputs.shape}")
    return np.array([frame_stats(x) for x in inputs], dtype=np.float64).reshape(len(inputs), len(STAT_NAMES))
