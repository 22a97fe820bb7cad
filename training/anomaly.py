"""Anomaly mode: learn from good parts alone (``inspection train --mode anomaly``).

A new line has thousands of good parts and a handful of defects, and the next defect type has
never been seen. Pretrained features cannot be downloaded onto a line PC, so the default learns
**from scratch** what a good part looks like by telling good frames from good frames with a
synthetic anomaly pasted in (the CutPaste / DRAEM family): a patch of the part moved elsewhere
with its grey level shifted, a thin scar, a brightness blob, a textured region, a small crisp pit,
a thin wandering crack, a large region of the part's own texture made rougher or smoother, and
on colour frames a region whose colour changes at the same brightness (a stain, a discolouration). None
of these is a real defect type; together they teach "anything that does not belong here", which
is what a reject gate needs for defects nobody has shown it.

The contract with the rest of training is a two-class dataset, the good class (under the
dataset's own name for it) / ``anomaly``: real defective images (any class) become ``anomaly``
and are **never fitted** — the split holds their groups out for validation and test
(``split_dataset(held_out=...)``); defective images
that share a group with training images are left out entirely. Model selection uses the
validation AUROC of real defects when there are enough, else of synthetic anomalies on the
validation's good frames; the threshold is calibrated on good validation frames alone to a
target overkill (``max_overkill``, 1% by default). Serving needs nothing new: the card says
``mode: anomaly`` and the classes are the good class and ``anomaly``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from inspection.dataset.layout import Dataset
from inspection.errors import DatasetError

log = logging.getLogger(__name__)

ANOMALY = "anomaly"
#: Fewer good images than this cannot describe a part's normal variation (and leave too few for
#: a 1% overkill calibration once split).
MIN_GOOD = 20
#: Real defective validation images needed before selection trusts them over synthetic ones.
MIN_REAL_VAL_DEFECTS = 10


def anomaly_view(ds: Dataset) -> Dataset:
    """``ds`` as its good class / ``anomaly``: every defect class becomes ``anomaly`` (for
    evaluation only); the good class keeps the dataset's name for it.

    Raises:
        DatasetError: no good class, a good class named ``anomaly``, no good images, or fewer
            than ``MIN_GOOD``.
    """
    if ds.good_class is None:
        raise DatasetError(f"--mode anomaly needs a good class to learn from; {ds.name!r} has none "
                           f"(classes {ds.classes}); set good_class in its manifest")
    if ds.good_class == ANOMALY:
        raise DatasetError(f"--mode anomaly names its defect class {ANOMALY!r}, which is {ds.name!r}'s good class; "
                           "rename the good class (manifest good_class and its labels)")
    good = sum(1 for s in ds.samples if s.label == ds.good_class)
    if good == 0:
        raise DatasetError(f"--mode anomaly learns from good images and {ds.name!r} has none of class "
                           f"{ds.good_class!r}")
    if good < MIN_GOOD:
        raise DatasetError(f"--mode anomaly needs at least {MIN_GOOD} good images to learn a part's normal "
                           f"variation; {ds.name!r} has {good} of class {ds.good_class!r}")
    # The card's classes are the ones the labelling page offers for the model's frames, and a
    # dataset build maps a label to a class by name: a good class renamed "good" here (magnetic
    # tile's is "Free") came back from the line as a new *defect* class "good".
    samples = [s if s.label == ds.good_class else replace(s, label=ANOMALY) for s in ds.samples]
    return replace(ds, classes=[ds.good_class, ANOMALY], samples=samples)


class Synthesizer:
    """Pastes one synthetic anomaly into a ``uint8[C, H, W]`` frame (a new array; the input is kept)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.kinds: list[Callable[[np.ndarray], None]] = [
            self._cutpaste, self._scar, self._blob, self._texture, self._pit, self._crack, self._region,
        ]

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, chw: np.ndarray) -> np.ndarray:
        out = chw.astype(np.float32)  # copy
        # Colour frames draw from one more kind; gray frames keep the stream they always had.
        kinds = [*self.kinds, self._discolour] if out.shape[0] == 3 else self.kinds
        kinds[int(self.rng.integers(len(kinds)))](out)
        return np.clip(out, 0, 255).astype(np.uint8)

    def _box(self, h: int, w: int, lo: float, hi: float) -> tuple[int, int, int, int]:
        area = self.rng.uniform(lo, hi) * h * w
        aspect = float(np.exp(self.rng.uniform(np.log(0.3), np.log(3.3))))
        bh = int(np.clip(round(np.sqrt(area / aspect)), 2, h - 1))
        bw = int(np.clip(round(np.sqrt(area * aspect)), 2, w - 1))
        return int(self.rng.integers(0, h - bh + 1)), int(self.rng.integers(0, w - bw + 1)), bh, bw

    def _shift(self, img: np.ndarray) -> float:
        # A visible but not glaring change of grey level, either sign, relative to the frame's spread.
        spread = max(float(img.std()), 4.0)
        return float(self.rng.choice([-1.0, 1.0]) * self.rng.uniform(0.5, 2.0) * spread)

    def _cutpaste(self, img: np.ndarray) -> None:
        _, h, w = img.shape
        y, x, bh, bw = self._box(h, w, 0.005, 0.05)
        patch = img[:, y : y + bh, x : x + bw].copy()
        if self.rng.random() < 0.5:
            patch = patch[:, :, ::-1]
        ty, tx = int(self.rng.integers(0, h - bh + 1)), int(self.rng.integers(0, w - bw + 1))
        img[:, ty : ty + bh, tx : tx + bw] = patch + self._shift(img) * self.rng.uniform(0.3, 1.0)

    def _scar(self, img: np.ndarray) -> None:
        _, h, w = img.shape
        mask = np.zeros((h, w), np.float32)
        length = self.rng.uniform(0.1, 0.4) * max(h, w)
        y0, x0 = self.rng.uniform(0, h), self.rng.uniform(0, w)
        angle = self.rng.uniform(0, np.pi)
        y1, x1 = y0 + length * np.sin(angle), x0 + length * np.cos(angle)
        thickness = int(self.rng.integers(1, max(2, min(h, w) // 40) + 1))
        cv2.line(mask, (int(x0), int(y0)), (int(x1), int(y1)), 1.0, thickness)
        img += mask[None] * self._shift(img)

    def _blob(self, img: np.ndarray) -> None:
        _, h, w = img.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cy, cx = self.rng.uniform(0, h), self.rng.uniform(0, w)
        ry, rx = (self.rng.uniform(0.02, 0.1, 2) * np.array([h, w])).tolist()
        mask = np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2))
        img += mask[None] * self._shift(img)

    # The two generic morphologies of surface defects the four kinds above left out: a point
    # (pit, pore, pinhole, inclusion) and a thin line that is not straight (crack, hairline,
    # fibre). Without them the network learnt soft blobs and straight scars, and real small
    # dark holes and hairline cracks did not look like either (magnetic tile, docs/training.md:
    # per-class AUROC of holes 0.61 -> 0.92 and cracks 0.66 -> 0.75 with them).
    def _pit(self, img: np.ndarray) -> None:
        # A small spot with a crisp edge, far smaller than the soft blob, and stronger, since
        # the whole defect is a few pixels.
        _, h, w = img.shape
        mask = np.zeros((h, w), np.float32)
        short = min(h, w)
        ry, rx = (max(1.0, self.rng.uniform(0.006, 0.04) * short) * np.exp(self.rng.uniform(-0.4, 0.4, 2))).tolist()
        centre = (int(self.rng.integers(0, w)), int(self.rng.integers(0, h)))
        cv2.ellipse(mask, centre, (max(1, round(rx)), max(1, round(ry))), float(self.rng.uniform(0, 180)), 0, 360,
                    1.0, -1, cv2.LINE_AA)
        soft = cv2.GaussianBlur(mask, (0, 0), float(self.rng.uniform(0.3, 1.0)))
        img += soft[None] * self._shift(img) * self.rng.uniform(1.0, 2.0)

    def _crack(self, img: np.ndarray) -> None:
        # A thin, wandering path one or two pixels wide, its direction drifting at every step.
        _, h, w = img.shape
        mask = np.zeros((h, w), np.float32)
        size = max(h, w)
        # It starts on a pixel of the frame, so its first step always draws (an "anomaly" with
        # nothing changed would be a wrong label).
        y, x = float(self.rng.integers(0, h)), float(self.rng.integers(0, w))
        angle = self.rng.uniform(0, 2 * np.pi)
        points = [(x, y)]
        for _ in range(int(self.rng.integers(4, 16))):
            angle += self.rng.normal(0, 0.45)
            step = self.rng.uniform(0.015, 0.04) * size
            x, y = x + step * np.cos(angle), y + step * np.sin(angle)
            points.append((x, y))
        path = np.round(np.array(points)).astype(np.int32)
        cv2.polylines(mask, [path], False, 1.0, int(self.rng.integers(1, 3)), cv2.LINE_AA)
        img += mask[None] * self._shift(img) * self.rng.uniform(1.0, 1.5)

    # The other end of the size scale: area defects (uneven surface, stain, discoloured or
    # unevenly coated region, mura) cover a tenth to half of the part with a faint change of its
    # texture or grey level. Every other kind stays under a tenth of the frame, so without this
    # one the network learnt that anomalies are small and contrasted.
    def _region(self, img: np.ndarray) -> None:
        _, h, w = img.shape
        mask = self._field_region(h, w, cells=(2, 5), area=(0.1, 0.5))
        mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, self.rng.uniform(0.01, 0.04) * min(h, w)))
        # The frame's own fine texture made rougher or smoother, and a faint shift of grey level:
        # a region that is the part's surface, changed, not something pasted on it.
        detail = img - np.stack([cv2.GaussianBlur(c, (0, 0), 2.0) for c in img])
        gain = float(np.exp(self.rng.choice([-1.0, 1.0]) * self.rng.uniform(np.log(1.5), np.log(3.0))))
        shift = self._shift(img) * self.rng.uniform(0.1, 0.4)
        shift = float(np.copysign(max(abs(shift), 2.0), shift))  # visible even on a featureless frame
        img += mask[None] * ((gain - 1.0) * detail + shift)

    def _field_region(self, h: int, w: int, *, cells: tuple[int, int], area: tuple[float, float]) -> np.ndarray:
        # Perlin-like: a coarse random grid (``cells`` drawn from [lo, hi)), smoothly upsampled and
        # thresholded at the quantile that leaves a share of the frame drawn from ``area``: a 0/1
        # region of irregular outline, one or several blobs.
        n = int(self.rng.integers(*cells))
        field = cv2.resize(self.rng.random((n, n)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        return (field > np.quantile(field, 1 - self.rng.uniform(*area))).astype(np.float32)

    #: The luma weights of the network's RGB input (ITU-R BT.601, as OpenCV's gray conversion).
    LUMA_RGB = np.array([0.299, 0.587, 0.114], np.float32)

    def _discolour(self, img: np.ndarray) -> None:
        # Every other kind changes all channels alike, i.e. brightness: a colour line's stain or
        # discolouration can keep the brightness of its surroundings. A region shifted along a
        # random colour direction orthogonal to the luma weights teaches the network that colour
        # belongs to "normal" too.
        _, h, w = img.shape
        mask = cv2.GaussianBlur(self._field_region(h, w, cells=(2, 6), area=(0.02, 0.2)), (0, 0), 1.5)
        direction = self.rng.normal(0, 1, 3).astype(np.float32)
        direction -= self.LUMA_RGB * (direction @ self.LUMA_RGB) / (self.LUMA_RGB @ self.LUMA_RGB)
        direction /= max(float(np.linalg.norm(direction)), 1e-6)
        amount = self.rng.uniform(0.5, 2.0) * max(float(img.std()), 8.0)
        img += mask[None] * (direction * amount)[:, None, None]

    def _texture(self, img: np.ndarray) -> None:
        _, h, w = img.shape
        mask = cv2.GaussianBlur(self._field_region(h, w, cells=(3, 8), area=(0.02, 0.1)), (0, 0), 1.0)
        noise = self.rng.normal(0, 1, (h, w)).astype(np.float32) * max(float(img.std()), 4.0)
        img += mask[None] * (noise + self._shift(img) * 0.5)


class AnomalyTrainSet(TorchDataset):
    """Each good frame twice an epoch: once as it is (``good``, 0), once with a synthetic anomaly (1)."""

    def __init__(self, good: np.ndarray, transform: Callable[[np.ndarray], np.ndarray] | None,
                 synth: Synthesizer) -> None:
        self.good, self.transform, self.synth = good, transform, synth
        self.labels = np.repeat(np.array([0, 1], dtype=np.int64), len(good))

    def __len__(self) -> int:
        return 2 * len(self.good)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self.good)
        img = self.good[i % n]
        if self.transform is not None:
            img = self.transform(img)
        if i >= n:
            img = self.synth(img)
        return torch.from_numpy(np.ascontiguousarray(img)), int(i >= n)


def validation_set(images: np.ndarray, labels: np.ndarray, *, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """What model selection judges on: the validation split, with synthetic anomalies on its good
    frames added when it holds fewer than ``MIN_REAL_VAL_DEFECTS`` real defects. Returns the
    images, the labels and a note for the log and the card."""
    real = int((labels == 1).sum())
    if real >= MIN_REAL_VAL_DEFECTS:
        return images, labels, f"{real} real defective validation images"
    good = images[labels == 0]
    synth = Synthesizer(seed)
    made = np.stack([synth(img) for img in good]) if len(good) else good
    note = (f"only {real} real defective validation image(s) (< {MIN_REAL_VAL_DEFECTS}): model selection also uses "
            f"{len(made)} synthetic anomalies on the validation's good frames")
    return (np.concatenate([images, made]), np.concatenate([labels, np.ones(len(made), dtype=labels.dtype)]), note)
