"""Data for training: the split, the image cache and augmentation.

Every image goes through ``inspection.preprocess.read_image`` + ``to_model_input`` with the
card's ``InputSpec`` — the very function serving calls on a camera frame — so the evaluation
input in training is byte-for-byte the serving input. The resized ``uint8[C, H, W]`` arrays
are cached in memory once; augmentation works on those arrays (train split only).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from inspection.card import InputSpec
from inspection.dataset.layout import Dataset, Sample
from inspection.dataset.split import (  # noqa: F401 -- the split moved to inspection (torch-free); re-exported
    SPLIT_FILE,
    make_split,
    read_split,
    split_counts,
    split_dataset,
    write_split,
)
from inspection.errors import DatasetError, ImageError
from inspection.imageheader import bit_depth, file_head, header_size
from inspection.preprocess import crop_roi, read_image, to_model_input
from training.config import AugmentConfig

log = logging.getLogger(__name__)


@dataclass
class SplitData:
    """One split's cached model inputs and integer labels."""

    name: str
    samples: list[Sample]
    images: np.ndarray  # uint8[N, C, H, W]
    labels: np.ndarray  # int64[N]


def check_dataset(ds: Dataset, *, may_be_empty: Collection[str] = ()) -> None:
    """Refuse a dataset training cannot use (``may_be_empty``: classes allowed no images).

    Raises:
        DatasetError: fewer than two classes, a label outside the class list, a missing image,
            or a class without images.
    """
    if len(ds.classes) < 2:
        raise DatasetError(
            f"dataset {ds.name!r} has {len(ds.classes)} class(es) {ds.classes}; a classifier needs at least 2 "
            "(e.g. good + one defect type)"
        )
    allowed = set(ds.classes)
    for s in ds.samples:
        if s.label not in allowed:
            raise DatasetError(f"{s.path}: label {s.label!r} is not in the class list {ds.classes}")
        if not ds.path_of(s).is_file():
            raise DatasetError(f"{ds.root}: image file {s.path} is missing")
    counts = Counter(s.label for s in ds.samples)
    empty = [c for c in ds.classes if counts.get(c, 0) == 0 and c not in may_be_empty]
    if empty:
        raise DatasetError(f"class(es) {empty} of {ds.classes} have no images; every class needs some")


@dataclass(frozen=True)
class FrameHeaders:
    """What every image's file header says, in the order of ``ds.samples``."""

    heights: np.ndarray  # int64[N]
    widths: np.ndarray  # int64[N]
    depths: dict[str, int]  # sample path -> 8 or 16, for the images whose format declares it


def frame_headers(ds: Dataset) -> FrameHeaders:
    """Every image's size and, where its format declares it, pixel depth: one read of each file's
    header (decoding only images whose size the header does not give).

    Raises:
        DatasetError: an image cannot be read or decoded (names the file).
    """
    heights = np.empty(len(ds.samples), dtype=np.int64)
    widths = np.empty(len(ds.samples), dtype=np.int64)
    depths: dict[str, int] = {}
    for i, s in enumerate(ds.samples):
        path = ds.path_of(s)
        try:
            head = file_head(path)
            size = header_size(head)
            if size is None:
                h, w = read_image(path).shape[:2]
                size = (w, h)
        except OSError as exc:
            raise DatasetError(f"dataset {ds.name!r}: {s.path}: cannot read ({exc.strerror})") from None
        except ImageError as exc:
            raise DatasetError(f"dataset {ds.name!r}: {exc}") from None
        widths[i], heights[i] = size
        depth = bit_depth(head)
        if depth is not None:
            depths[s.path] = depth
    return FrameHeaders(heights, widths, depths)


def check_roi(ds: Dataset, headers: FrameHeaders, roi: tuple[int, int, int, int]) -> None:
    """Refuse frames smaller than the region of interest (x, y, width, height), from their
    headers' sizes: at start, not when the images load after the start-up probe.

    Raises:
        DatasetError: names the first such frame, its size and how many there are.
    """
    x, y, w, h = roi
    small = np.flatnonzero((headers.widths < x + w) | (headers.heights < y + h))
    if small.size:
        i = int(small[0])
        raise DatasetError(
            f"dataset {ds.name!r}: {ds.samples[i].path} ({headers.widths[i]}x{headers.heights[i]} px) does not "
            f"contain the region of interest --roi {x},{y},{w},{h} ({small.size} of {len(ds.samples)} frames are "
            "smaller); give a region inside every frame")


#: Training frames decoded before the recipe runs (seeded): enough to tell whether the frames carry
#: colour and, for 16-bit frames, for their range's percentiles (4,096 pixels each); a second or
#: two. Every training frame's header is read for its pixel depth where the format tells it.
SURVEY_FRAMES = 64
DEPTH_PIXELS = 4096


@dataclass(frozen=True)
class FrameSurvey:
    """What a seeded sample of the training frames' pixels says (``training.recipe`` reads it)."""

    decoded: int  # frames decoded
    colour: int  # of those, frames that decode to colour (R=G=B frames count as gray)
    colour_example: str | None  # one colour frame's path, for the recipe's reason
    pixel_values: np.ndarray | None  # 16-bit frames: sampled pixel values; None for 8-bit frames


def survey_frames(
    ds: Dataset, samples: list[Sample], *, seed: int, depths: dict[str, int],
    roi: tuple[int, int, int, int] | None = None,
) -> FrameSurvey:
    """Decode up to ``SURVEY_FRAMES`` of ``samples`` (seeded): how many are colour, and a sample of
    their pixel values when they are 16-bit, both inside ``roi`` (x, y, width, height) where one is
    given. ``depths`` are the headers' (``frame_headers``): every sample's depth is checked, the
    decoded ones' by their pixels too.

    Raises:
        DatasetError: an image cannot be read or does not contain ``roi``, or 8-bit and 16-bit
            frames are mixed (a model takes frames of one depth; one of each is named).
    """
    rng = np.random.default_rng(seed)
    by_depth: dict[int, str] = {}
    values = []
    decoded = colour = 0
    colour_example = None
    region = InputSpec(height=1, width=1, roi=roi)  # crop_roi reads the region alone
    for i in rng.permutation(len(samples)).tolist():
        depth = depths.get(samples[i].path)
        if depth is not None:
            by_depth.setdefault(depth, samples[i].path)
        if decoded >= SURVEY_FRAMES:
            continue  # enough frames decoded; the headers still tell every frame's depth
        try:
            image = read_image(ds.path_of(samples[i]))
        except OSError as exc:
            raise DatasetError(f"dataset {ds.name!r}: {samples[i].path}: cannot read ({exc.strerror})") from None
        except ImageError as exc:
            raise DatasetError(f"dataset {ds.name!r}: {exc}") from None
        decoded += 1
        by_depth.setdefault(8 * image.dtype.itemsize, samples[i].path)
        if roi is not None:
            # The model sees the region alone (inspection.preprocess.crop_roi): a bright fixture or
            # a coloured label beside the part must set neither its levels nor its channels.
            try:
                image = crop_roi(image, region, source=samples[i].path)
            except ImageError as exc:
                raise DatasetError(f"dataset {ds.name!r}: {exc}") from None
            if image.ndim == 3 and all(np.array_equal(image[:, :, 0], image[:, :, c]) for c in (1, 2)):
                image = image[:, :, 0]  # R=G=B inside the region: gray there, as the whole frame would be
        if image.ndim == 3:
            colour += 1
            colour_example = colour_example or samples[i].path
        if image.dtype == np.uint16:
            flat = image.reshape(-1)
            values.append(flat[rng.integers(0, flat.size, size=min(flat.size, DEPTH_PIXELS))])
    if len(by_depth) > 1:
        raise DatasetError(
            f"dataset {ds.name!r} mixes 8-bit frames (e.g. {by_depth[8]}) and 16-bit frames (e.g. {by_depth[16]}); "
            "a model takes frames of one pixel depth: convert the dataset's images to one depth")
    return FrameSurvey(decoded, colour, colour_example, np.concatenate(values) if values else None)


def load_images(ds: Dataset, samples: list[Sample], spec: InputSpec, *, workers: int = 1) -> np.ndarray:
    """Read and preprocess ``samples`` exactly as serving would: ``uint8[N, C, H, W]``.

    ``workers`` threads read and decode at once (OpenCV decodes and resizes without the GIL): a
    line's large frames take tens of milliseconds each, and this time comes out of the
    training's budget.

    Raises:
        DatasetError: an image is missing or cannot be decoded (names the file).
    """
    out = np.empty((len(samples), spec.channels, spec.height, spec.width), dtype=np.uint8)

    def one(i: int) -> None:
        try:
            out[i] = to_model_input(read_image(ds.path_of(samples[i])), spec, source=samples[i].path)
        except ImageError as exc:
            raise DatasetError(f"dataset {ds.name!r}: {exc}") from None

    if workers <= 1 or len(samples) < 2:
        for i in range(len(samples)):
            one(i)
        return out
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(one, range(len(samples))):  # re-raises the first failure, in order
            pass
    return out


def load_splits(ds: Dataset, split: dict[str, str], spec: InputSpec, *, workers: int = 1) -> dict[str, SplitData]:
    """The cached train/val/test arrays (images read once, by ``workers`` threads)."""
    index = {c: i for i, c in enumerate(ds.classes)}
    out: dict[str, SplitData] = {}
    for name in ("train", "val", "test"):
        samples = sorted((s for s in ds.samples if split[s.path] == name), key=lambda s: s.path)
        images = load_images(ds, samples, spec, workers=workers)
        labels = np.array([index[s.label] for s in samples], dtype=np.int64)
        out[name] = SplitData(name, samples, images, labels)
    return out


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``uint8[N, C, H, W]`` scaled to 0..1 (for the Normalize layer)."""
    x = images.astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 2, 3))
    std = np.maximum(x.std(axis=(0, 2, 3)), 1e-3)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


class LineAugment:
    """Albumentations preset for line-camera images, on ``uint8[C, H, W]`` arrays."""

    def __init__(self, cfg: AugmentConfig, *, seed: int) -> None:
        import albumentations as A
        import cv2

        steps: list = []
        # None (not resolved by training.recipe) means "not known to be safe": off.
        if cfg.hflip:
            steps.append(A.HorizontalFlip(p=0.5))
        if cfg.vflip:
            steps.append(A.VerticalFlip(p=0.5))
        if cfg.rot90:
            steps.append(A.RandomRotate90(p=0.5))
        if cfg.shift_px:
            # A pure integer translation with nearest-neighbour sampling: every pixel is copied,
            # none interpolated; the border is mirrored in, as the letterbox pads.
            steps.append(A.Affine(translate_px=(-cfg.shift_px, cfg.shift_px), interpolation=cv2.INTER_NEAREST,
                                  border_mode=cv2.BORDER_REFLECT_101, p=1.0))
        if cfg.shift_scale_p > 0:
            steps.append(
                A.Affine(translate_percent=(-0.05, 0.05), scale=(0.93, 1.07), border_mode=4, p=cfg.shift_scale_p)
            )
        if cfg.brightness_p > 0 and (cfg.brightness > 0 or cfg.contrast > 0):
            steps.append(
                A.RandomBrightnessContrast(
                    brightness_limit=cfg.brightness, contrast_limit=cfg.contrast, p=cfg.brightness_p
                )
            )
        if cfg.gamma_p > 0:
            steps.append(A.RandomGamma(gamma_limit=cfg.gamma, p=cfg.gamma_p))
        if cfg.blur_p > 0:
            steps.append(A.GaussianBlur(blur_limit=(3, 5), sigma_limit=cfg.blur_sigma, p=cfg.blur_p))
        if cfg.noise_p > 0:
            steps.append(A.GaussNoise(std_range=cfg.noise_std, p=cfg.noise_p))
        self.compose = A.Compose(steps, seed=seed)

    def reseed(self, seed: int) -> None:
        """Restart the random stream (once per epoch, so a resumed run repeats the same epochs)."""
        self.compose.set_random_seed(seed)

    def __call__(self, chw: np.ndarray) -> np.ndarray:
        hwc = np.ascontiguousarray(chw.transpose(1, 2, 0))
        out = self.compose(image=hwc)["image"]
        if out.ndim == 2:
            out = out[:, :, None]
        return np.ascontiguousarray(out.transpose(2, 0, 1))


class ArrayDataset(TorchDataset):
    """Cached arrays as a torch dataset, augmenting each draw when a transform is given."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: LineAugment | None = None) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]
        if self.transform is not None:
            img = self.transform(img)
        return torch.from_numpy(np.ascontiguousarray(img)), int(self.labels[i])


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights per class, normalised to mean 1 (absent classes get 0)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    present = counts > 0
    return w / w[present].mean() if present.any() else w
