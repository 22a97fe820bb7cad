"""Split, dataset checks, image cache (== serving preprocessing) and augmentation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspection.card import InputSpec
from inspection.dataset.layout import Sample, read_dataset, write_dataset
from inspection.errors import DatasetError
from inspection.preprocess import prepare_frame
from tests.training.conftest import make_dataset
from training import data as D
from training.config import AugmentConfig


def _samples(n_per: dict[str, int], sources: bool = False) -> list[Sample]:
    return [
        Sample(f"{c}/{i}.png", c, source=f"part{i // 3}-{c}" if sources else "")
        for c, n in n_per.items()
        for i in range(n)
    ]


def test_split_is_stratified_reproducible_and_seed_dependent() -> None:
    samples = _samples({"good": 100, "crack": 20, "dent": 5})
    a = D.make_split(samples, seed=1, val_fraction=0.2, test_fraction=0.2)
    assert a == D.make_split(samples, seed=1, val_fraction=0.2, test_fraction=0.2)
    assert a != D.make_split(samples, seed=2, val_fraction=0.2, test_fraction=0.2)
    counts = Counter((s.label, a[s.path]) for s in samples)
    assert counts[("good", "val")] == 20 and counts[("good", "test")] == 20
    assert counts[("crack", "val")] == 4 and counts[("crack", "test")] == 4
    assert counts[("dent", "val")] >= 1 and counts[("dent", "test")] >= 1 and counts[("dent", "train")] >= 1


def test_split_keeps_views_of_one_part_together_and_respects_given_splits() -> None:
    samples = _samples({"good": 30, "crack": 12}, sources=True)
    samples[0] = Sample(samples[0].path, "good", "test", samples[0].source)  # a given split wins for the whole part
    split = D.make_split(samples, seed=0, val_fraction=0.2, test_fraction=0.2)
    by_source: dict[str, set[str]] = {}
    for s in samples:
        by_source.setdefault(s.source, set()).add(split[s.path])
    assert all(len(v) == 1 for v in by_source.values())
    assert {split[s.path] for s in samples if s.source == samples[0].source} == {"test"}


def test_split_file_round_trips(tmp_path: Path) -> None:
    samples = _samples({"good": 6, "crack": 6})
    split = D.make_split(samples, seed=0, val_fraction=0.2, test_fraction=0.2)
    D.write_split(tmp_path / "split.csv", samples, split)
    assert D.read_split(tmp_path / "split.csv") == split


def test_a_dataset_with_one_class_is_refused(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "one", classes=("good",), counts={"good": 5})
    with pytest.raises(DatasetError, match=r"has 1 class\(es\) \['good'\]; a classifier needs at least 2"):
        D.check_dataset(ds)


def test_missing_image_file_is_named(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "d", counts={"good": 4, "scratch": 3, "spot": 3})
    (ds.root / ds.samples[2].path).unlink()
    with pytest.raises(DatasetError, match=f"image file {ds.samples[2].path} is missing"):
        D.check_dataset(ds)


def test_label_outside_the_class_list_is_named(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "d", counts={"good": 4, "scratch": 3, "spot": 3})
    ds.samples[0] = Sample(ds.samples[0].path, "rust")
    with pytest.raises(DatasetError, match=r"label 'rust' is not in the class list \['good', 'scratch', 'spot'\]"):
        D.check_dataset(ds)


@pytest.mark.parametrize(("channels", "workers"), [(1, 1), (3, 1), (1, 3)])
def test_cached_training_input_equals_serving_preprocessing(tmp_path: Path, channels: int, workers: int) -> None:
    ds = make_dataset(tmp_path / "d", size=40, counts={"good": 3, "scratch": 2, "spot": 2})
    spec = InputSpec(height=24, width=32, channels=channels, resize="area")
    cached = D.load_images(ds, ds.samples, spec, workers=workers)
    for sample, arr in zip(ds.samples, cached):
        _, served = prepare_frame((ds.root / sample.path).read_bytes(), spec, content_type="image/png")
        assert served.dtype == np.uint8 and np.array_equal(served, arr)


def test_channel_stats_and_class_weights() -> None:
    images = np.stack([np.full((1, 4, 4), 0, np.uint8), np.full((1, 4, 4), 255, np.uint8)])
    mean, std = D.channel_stats(images)
    assert mean == [0.5] and std == [0.5]
    w = D.class_weights(np.array([0, 0, 0, 1]), 3)
    assert w[1] == pytest.approx(3 * w[0]) and w[2] == 0.0


#: Every step on: the lossy ones are off by default but stay available for lines that need them.
EVERY_STEP = AugmentConfig(hflip=True, vflip=True, rot90=True, brightness_p=0.5, gamma_p=0.3, blur_p=0.2,
                           noise_p=0.2, shift_scale_p=0.3)


def test_augmentation_keeps_shape_dtype_and_is_reproducible_by_seed() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1, 32, 32), dtype=np.uint8)
    aug = D.LineAugment(EVERY_STEP, seed=3)
    first = [aug(img) for _ in range(5)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in first)
    assert any(not np.array_equal(o, img) for o in first)
    aug.reseed(3)
    assert all(np.array_equal(a, b) for a, b in zip(first, [aug(img) for _ in range(5)]))


def test_default_augmentation_only_moves_pixels() -> None:
    """By default (flips as the recipe allows them) no grey level is changed, clipped or resampled."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (1, 24, 24), dtype=np.uint8)
    aug = D.LineAugment(AugmentConfig(hflip=True, vflip=True, rot90=True), seed=0)
    outs = [aug(img) for _ in range(20)]
    assert any(not np.array_equal(o, img) for o in outs)
    flips = {np.flip(np.rot90(img[0], k), axis).tobytes() for k in range(4) for axis in (0, 1)}
    flips |= {np.rot90(img[0], k).tobytes() for k in range(4)}
    assert all(o[0].tobytes() in flips for o in outs)


def test_shifts_move_whole_pixels_and_mirror_the_border() -> None:
    """``shift_px``: every output is the input moved by whole pixels within the range (no grey
    level resampled), the uncovered border mirrored in."""
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (1, 40, 28), dtype=np.uint8)
    padded = cv2.copyMakeBorder(img[0], 4, 4, 4, 4, cv2.BORDER_REFLECT_101)
    aug = D.LineAugment(AugmentConfig(shift_px=4), seed=0)
    moves = set()
    for _ in range(40):
        out = aug(img)
        assert out.shape == img.shape and out.dtype == np.uint8
        found = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
                 if np.array_equal(out[0], padded[4 - dy : 44 - dy, 4 - dx : 32 - dx])]
        assert found, "not a whole-pixel shift of at most 4 px with a mirrored border"
        moves.add(found[0])
    assert len(moves) > 10  # the shifts are drawn, not one fixed offset


def test_load_images_names_an_undecodable_file(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "d", counts={"good": 3, "scratch": 2, "spot": 2})
    (ds.root / ds.samples[0].path).write_bytes(b"not an image")
    ds = read_dataset(ds.root)
    for workers in (1, 3):
        with pytest.raises(DatasetError, match=ds.samples[0].path):
            D.load_images(ds, ds.samples, InputSpec(height=16, width=16), workers=workers)


def test_the_frame_survey_counts_colour_frames_and_takes_r_g_b_frames_for_gray(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    items = []
    for i in range(D.SURVEY_FRAMES + 16):
        gray = rng.integers(0, 256, (12, 12), dtype=np.uint8)
        kind = ("colour", "rgb-gray", "gray")[i % 3]
        img = {"colour": np.dstack([gray, gray, 255 - gray]), "rgb-gray": np.dstack([gray] * 3), "gray": gray}[kind]
        ok, buf = cv2.imencode(".png", img)
        assert ok
        items.append((Sample(f"images/good/{kind}-{i:03d}.png", "good"), buf.tobytes()))
    ds = write_dataset(tmp_path / "ds", name="ds", classes=["good"], good_class="good", items=items)
    depths = D.frame_headers(ds).depths
    survey = D.survey_frames(ds, ds.samples, seed=0, depths=depths)
    assert survey.decoded == D.SURVEY_FRAMES and survey.pixel_values is None  # 8-bit frames: no range to take
    # a third of the frames are colour; the R=G=B ones are gray, as serving decodes them
    assert 0.2 < survey.colour / survey.decoded < 0.45
    assert survey.colour_example is not None and "/colour-" in survey.colour_example
    again = D.survey_frames(ds, ds.samples, seed=0, depths=depths)  # seeded: the same frames, the same choice
    assert (again.decoded, again.colour, again.colour_example) == (survey.decoded, survey.colour, survey.colour_example)


def test_the_frame_survey_reads_the_region_of_interest_alone(tmp_path: Path) -> None:
    # With --roi the model sees the region alone: a saturated fixture beside it set the 16-bit
    # levels (0..62990 for a part of ~1000..2000) and a coloured label the channels.
    rng = np.random.default_rng(0)
    items = []
    for i in range(12):
        frame = np.zeros((24, 48, 3), dtype=np.uint16)
        frame[:, :24] = rng.choice([0, 65535], (24, 24, 3))  # the fixture, outside the region
        frame[:, 24:] = rng.integers(1000, 2000, (24, 24))[:, :, None]  # the part: gray (R=G=B)
        ok, buf = cv2.imencode(".png", frame)
        assert ok
        items.append((Sample(f"images/good/{i:03d}.png", "good"), buf.tobytes()))
    ds = write_dataset(tmp_path / "ds", name="ds", classes=["good"], good_class="good", items=items)
    depths = D.frame_headers(ds).depths
    whole = D.survey_frames(ds, ds.samples, seed=0, depths=depths)
    assert whole.colour == whole.decoded and whole.pixel_values is not None and whole.pixel_values.max() == 65535
    region = D.survey_frames(ds, ds.samples, seed=0, depths=depths, roi=(24, 0, 24, 24))
    assert region.decoded == 12 and region.colour == 0 and region.colour_example is None
    assert region.pixel_values is not None and 1000 <= region.pixel_values.min() <= region.pixel_values.max() < 2000
    with pytest.raises(DatasetError, match=r"images/good/\d+\.png \(48x24 px\) does not contain the model's "
                                           r"region of interest x=24 y=0 width=32 height=24"):
        D.survey_frames(ds, ds.samples, seed=0, depths=depths, roi=(24, 0, 32, 24))
