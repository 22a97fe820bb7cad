"""A seeded generator of line-camera images of battery electrode coating (numpy/OpenCV only).

It is the embedded default dataset of the demo and the tests: grayscale frames with a fine
granular coating texture, low-frequency mottling, faint roller streaks along the scan
direction, uneven illumination (vignetting and a gradient across the line), line-to-line gain
jitter and sensor noise. Defective frames carry one of five defect types, drawn with random
size, position, orientation and contrast, some of them close to the noise level:

- ``scratch``: a thin, slightly curved line, darker (mostly) or brighter than the coating;
- ``particle``: a dark, irregular spot (a foreign particle or agglomerate);
- ``pinhole``: a small bright spot where the foil shows through, sometimes with a dark rim;
- ``bubble``: a shaded ring (a blister or dent lit from one side);
- ``edge_wrinkle``: wavy bands fading in from the left or right coating edge.

Every image is drawn from its own ``numpy.random.Generator`` seeded with ``(seed, index)``, so
the same arguments give byte-identical PNGs (and so the same dataset fingerprint) on the
same platform and library versions, whatever order or process the images are drawn in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from inspection.dataset.layout import Dataset, Sample, write_dataset
from inspection.errors import DatasetError

GOOD_CLASS = "good"
DEFECT_CLASSES = ("scratch", "particle", "pinhole", "bubble", "edge_wrinkle")
CLASSES = (GOOD_CLASS, *DEFECT_CLASSES)
#: Bumped whenever the drawing changes, so a fingerprint change is explained by the manifest.
GENERATOR_VERSION = 1
MIN_SIZE, MAX_SIZE = 32, 2048
MAX_SEED = 2**32 - 1

_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 6]


def _soft_disc(dist: np.ndarray, radius: float, edge: float = 0.6) -> np.ndarray:
    """1 inside ``radius``, 0 outside, with a smooth edge about ``edge`` px wide."""
    return 1.0 / (1.0 + np.exp(np.clip((dist - radius) / edge, -30.0, 30.0)))


def _f32(a: np.ndarray) -> np.ndarray:
    """OpenCV's float32 output, typed as such (a no-op at run time)."""
    return np.asarray(a, dtype=np.float32)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The coating's reflectance (float32, grey levels) and the illumination field (gain)."""
    level = rng.uniform(100.0, 150.0)
    # Fine granular texture: blurred white noise (active-material grains of about 1-2 px).
    grain = _f32(cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), rng.uniform(0.7, 1.1)))
    grain *= rng.uniform(9.0, 15.0)
    # Mottling: coating thickness varies slowly.
    cells = max(2, size // 16)
    low = _f32(cv2.resize(rng.standard_normal((cells, cells)).astype(np.float32), (size, size),
                          interpolation=cv2.INTER_CUBIC))
    low *= rng.uniform(1.5, 4.0)
    # Roller streaks run along the scan direction (image columns are fixed pixels of the line).
    streaks = _f32(cv2.GaussianBlur(rng.standard_normal((1, size)).astype(np.float32), (0, 0), rng.uniform(1.0, 3.0)))
    streaks *= rng.uniform(0.0, 5.0)
    surface = level + grain + low + streaks
    # Illumination: vignetting plus a gradient across the line, different for every frame.
    x = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    cx, cy = rng.uniform(-0.3, 0.3, size=2)
    vig = 1.0 - rng.uniform(0.05, 0.3) * (x[None, :] - cx) ** 2 - rng.uniform(0.0, 0.12) * (x[:, None] - cy) ** 2
    grad = 1.0 + rng.uniform(-0.15, 0.15) * x[None, :] + rng.uniform(-0.05, 0.05) * x[:, None]
    return surface.astype(np.float32), (vig * grad).astype(np.float32)


def _scratch(rng: np.random.Generator, surface: np.ndarray, scale: float) -> None:
    size = surface.shape[0]
    length = rng.uniform(0.2, 0.85) * size
    angle = rng.uniform(0.0, np.pi)
    start = rng.uniform(0.1, 0.9, size=2) * size
    bend = rng.uniform(-0.25, 0.25)  # curvature: heading change over the whole length (radians)
    steps = 12
    t = np.linspace(0.0, 1.0, steps)
    heading = angle + bend * t
    dx = np.cumsum(np.cos(heading)) * length / steps
    dy = np.cumsum(np.sin(heading)) * length / steps
    pts = np.stack([start[0] + dx, start[1] + dy], axis=1)
    mask = np.zeros(surface.shape, np.uint8)
    # Drawn at 8x sub-pixel precision so that thin lines stay smooth.
    thickness = 1 if rng.random() < 0.7 * min(1.0, 1.5 / scale) else max(1, round(rng.uniform(1.0, 2.5) * scale))
    cv2.polylines(mask, [np.round(pts * 8).astype(np.int32)], False, 255, thickness, cv2.LINE_AA, shift=3)
    profile = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 0.5)
    # Scratches fade in and out along their length (pressure of the scraping particle varies).
    fade = cv2.resize(rng.uniform(0.55, 1.0, size=(3, 3)).astype(np.float32), surface.shape[::-1],
                      interpolation=cv2.INTER_LINEAR)
    contrast = rng.uniform(18.0, 55.0) * (-1.0 if rng.random() < 0.75 else 1.0)
    surface += contrast * profile * fade


def _particle(rng: np.random.Generator, surface: np.ndarray, scale: float) -> None:
    size = surface.shape[0]
    yy, xx = _grid(size)
    cx, cy = rng.uniform(0.06, 0.94, size=2) * size
    radius = rng.uniform(1.6, 5.5) * scale
    contrast = rng.uniform(14.0, 70.0)
    for _ in range(1 + int(rng.random() < 0.35)):  # sometimes an agglomerate of two blobs
        ang = rng.uniform(0.0, np.pi)
        ratio = rng.uniform(0.55, 1.0)
        u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
        v = (-(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)) / ratio
        surface -= contrast * _soft_disc(np.hypot(u, v), radius)
        cx += rng.uniform(-1.0, 1.0) * radius
        cy += rng.uniform(-1.0, 1.0) * radius
        radius *= rng.uniform(0.5, 0.9)
        contrast *= 0.8


def _pinhole(rng: np.random.Generator, surface: np.ndarray, scale: float) -> None:
    size = surface.shape[0]
    yy, xx = _grid(size)
    cx, cy = rng.uniform(0.06, 0.94, size=2) * size
    radius = rng.uniform(0.8, 2.4) * scale
    dist = np.hypot(xx - cx, yy - cy)
    surface += rng.uniform(25.0, 90.0) * _soft_disc(dist, radius, edge=0.45)
    if rng.random() < 0.5:  # a dark rim of displaced material
        rim = np.exp(-((dist - radius - 1.2 * scale) ** 2) / (2 * (0.8 * scale) ** 2))
        surface -= rng.uniform(5.0, 15.0) * rim


def _bubble(rng: np.random.Generator, surface: np.ndarray, scale: float) -> None:
    size = surface.shape[0]
    yy, xx = _grid(size)
    radius = rng.uniform(5.0, 16.0) * scale
    cx, cy = rng.uniform(radius + 2, size - radius - 2, size=2)
    width = rng.uniform(0.18, 0.35) * radius
    light = rng.uniform(0.0, 2 * np.pi)
    dx, dy = xx - cx, yy - cy
    dist = np.hypot(dx, dy) + 1e-6
    rim = np.exp(-((dist - radius) ** 2) / (2 * width**2))
    # Slope of the rim lit from direction `light`: one side bright, the opposite side dark.
    facing = (dx * np.cos(light) + dy * np.sin(light)) / dist
    slope = -(dist - radius) / width
    amp = rng.uniform(15.0, 42.0)
    surface += amp * slope * rim * facing + rng.uniform(-0.4, 0.4) * amp * rim
    surface += rng.uniform(-0.3, 0.3) * amp * _soft_disc(dist, radius, edge=width)  # dome/dent interior


def _edge_wrinkle(rng: np.random.Generator, surface: np.ndarray, scale: float) -> None:
    size = surface.shape[0]
    yy, xx = _grid(size)
    from_edge = xx if rng.random() < 0.5 else (size - 1 - xx)
    reach = rng.uniform(0.1, 0.3) * size
    period = rng.uniform(5.0, 14.0) * scale
    tilt = rng.uniform(-0.6, 0.6)  # wrinkles run slanted away from the edge
    wobble = cv2.GaussianBlur(rng.standard_normal((size, 1)).astype(np.float32), (0, 0), 4.0 * scale)[:, 0]
    phase = 2 * np.pi * (yy + tilt * from_edge) / period + 6.0 * wobble[:, None] + rng.uniform(0, 2 * np.pi)
    envelope = np.exp(-from_edge / reach)
    # Often only part of the edge is wrinkled.
    y0, y1 = sorted(rng.uniform(0.0, 1.0, size=2) * size)
    if rng.random() < 0.5 or y1 - y0 < 0.3 * size:
        y0, y1 = -size, 2 * size
    span = 1.0 / (1.0 + np.exp(-(yy - y0) / 3.0)) / (1.0 + np.exp((yy - y1) / 3.0))
    surface += rng.uniform(6.0, 22.0) * np.sin(phase) * envelope * span


_DRAW: dict[str, Callable[[np.random.Generator, np.ndarray, float], None]] = {
    "scratch": _scratch,
    "particle": _particle,
    "pinhole": _pinhole,
    "bubble": _bubble,
    "edge_wrinkle": _edge_wrinkle,
}


def render_image(label: str, *, seed: int, index: int, size: int = 128) -> np.ndarray:
    """Draw one ``uint8[size, size]`` frame of class ``label`` from the generator ``(seed, index)``.

    Raises:
        DatasetError: ``label`` is not one of :data:`CLASSES`.
    """
    if label not in CLASSES:
        raise DatasetError(f"unknown synthetic class {label!r}; allowed: {list(CLASSES)}")
    # Separate streams for surface, defect and sensor: the good and a defective frame of the
    # same (seed, index) differ only by the defect, which the tests rely on.
    surface_rng, defect_rng, sensor_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), int(index)]).spawn(3)
    )
    scale = size / 128.0
    surface, gain = _background(surface_rng, size)
    if label != GOOD_CLASS:
        _DRAW[label](defect_rng, surface, scale)
    frame = surface * gain
    # Line camera: each row is one exposure, so the gain jitters from row to row.
    frame *= (1.0 + sensor_rng.normal(0.0, 0.006, size=(size, 1))).astype(np.float32)
    frame += sensor_rng.normal(0.0, sensor_rng.uniform(2.0, 4.5), size=frame.shape).astype(np.float32)
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def defect_footprint(label: str, *, seed: int, index: int, size: int = 128) -> np.ndarray:
    """Where frame ``(seed, index)`` of class ``label`` carries its defect: ``bool[size, size]``,
    the pixels that differ by more than 2 grey levels from the frame's good twin (same surface and
    sensor streams, no defect: see ``render_image``). All False for a good frame. Ground truth
    for where a defect map should point."""
    if label == GOOD_CLASS:
        return np.zeros((size, size), bool)
    frame = render_image(label, seed=seed, index=index, size=size).astype(np.int16)
    twin = render_image(GOOD_CLASS, seed=seed, index=index, size=size).astype(np.int16)
    return np.abs(frame - twin) > 2


def plan_labels(seed: int, n_good: int, n_per_defect: int) -> list[str]:
    """The class of every frame, by index, in the order ``generate_dataset`` draws them."""
    labels = [GOOD_CLASS] * n_good + [d for d in DEFECT_CLASSES for _ in range(n_per_defect)]
    # Parts come down the line in random order; serials must not give the class away.
    order = np.random.default_rng([int(seed), 0x5EED]).permutation(len(labels))
    return [labels[i] for i in order]


def _items(labels: list[str], seed: int, size: int) -> Iterator[tuple[Sample, bytes]]:
    for index, label in enumerate(labels):
        image = render_image(label, seed=seed, index=index, size=size)
        ok, buf = cv2.imencode(".png", image, _PNG_PARAMS)
        if not ok:  # pragma: no cover - OpenCV never fails on a uint8 gray image
            raise DatasetError(f"could not encode synthetic image {index}")
        source = f"P{index:06d}"
        yield Sample(path=f"images/{label}/{source}.png", label=label, source=source), buf.tobytes()


def generate_dataset(
    out: Path,
    *,
    seed: int = 0,
    n_good: int = 500,
    n_per_defect: int = 100,
    size: int = 128,
    overwrite: bool = False,
) -> Dataset:
    """Generate the synthetic electrode-coating dataset into ``out`` (standard layout, atomic).

    Classes are ``good`` (the good class) and :data:`DEFECT_CLASSES`; ``n_good`` good frames and
    ``n_per_defect`` of each defect type, each with a part serial (``P000123``) as its source.

    Raises:
        DatasetError: a count below 1, ``size`` outside 32..2048, ``seed`` outside 0..2**32-1, or ``out`` refused
            (``layout.check_dest``: exists without ``overwrite``, or is no dataset).
    """
    for name, value in (("n_good", n_good), ("n_per_defect", n_per_defect)):
        if int(value) < 1:
            raise DatasetError(f"{name}={value} is not allowed; every class needs at least 1 image")
    if not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise DatasetError(f"size={size} is out of range {MIN_SIZE}..{MAX_SIZE}")
    # numpy's SeedSequence refuses a negative seed; the upper bound is training's (32 bits).
    if not 0 <= int(seed) <= MAX_SEED:
        raise DatasetError(f"seed={seed} is out of range 0..{MAX_SEED}")
    out = Path(out)
    labels = plan_labels(seed, int(n_good), int(n_per_defect))
    lineage = {
        "kind": "synthetic",
        "generator": "inspection.dataset.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "n_good": int(n_good),
        "n_per_defect": int(n_per_defect),
        "size": int(size),
    }
    return write_dataset(
        out,
        name=out.name,
        classes=list(CLASSES),
        good_class=GOOD_CLASS,
        items=_items(labels, int(seed), int(size)),
        extra_manifest={"lineage": lineage},
        overwrite=overwrite,
    )
