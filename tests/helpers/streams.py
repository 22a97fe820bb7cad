"""Generated line streams for the monitoring tests: coating-like frames whose lamp dims, whose
lens loses focus, or whose defect rate changes, from a seed (no files, no model needed).

A frame is a 64x64 uint8 texture (grey level ``level`` plus smoothed noise) as the model would
see it (``[1, H, W]``); ``score`` draws P(defect) as a mix of good (mostly near 0) and defective
(mostly near 1) frames at a given defect rate.
"""

from __future__ import annotations

import cv2
import numpy as np

from inspection.monitoring.build import build_reference

SIZE = 64
CLASSES = ["good", "scratch"]


def frame(rng: np.random.Generator, *, gain: float = 1.0, blur: float = 0.0, level: float = 150.0) -> np.ndarray:
    """One frame ``uint8[1, SIZE, SIZE]``: lamp ``gain`` (1 = nominal), Gaussian ``blur`` sigma (0 = in focus)."""
    noise = rng.normal(0.0, 28.0, size=(SIZE, SIZE)).astype(np.float32)
    texture = cv2.blur(noise, (2, 2))
    img = (level + rng.normal(0.0, 2.0)) + texture
    if blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    return np.clip(img * gain, 0, 255).astype(np.uint8)[None]


def score(rng: np.random.Generator, defect_rate: float) -> tuple[float, bool]:
    """(P(defect), whether the part is really defective)."""
    defective = bool(rng.random() < defect_rate)
    return (float(rng.beta(12, 2)) if defective else float(rng.beta(1, 25))), defective


def reference(seed: int = 1, n: int = 600, defect_rate: float = 0.05):  # type: ignore[no-untyped-def]
    """A card reference from ``n`` stable frames (as training's export builds it)."""
    rng = np.random.default_rng(seed)
    inputs = np.stack([frame(rng) for _ in range(n)])
    p_defect = np.array([score(rng, defect_rate)[0] for _ in range(n)])
    probs = np.stack([1.0 - p_defect, p_defect], axis=1)
    return build_reference(inputs, probs, classes=CLASSES, good_class="good", threshold=0.5)
