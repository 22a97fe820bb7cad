"""The synthetic electrode-coating generator: deterministic, well-formed, all classes present."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspection.dataset import read_dataset
from inspection.dataset.synthetic import (
    CLASSES,
    DEFECT_CLASSES,
    GOOD_CLASS,
    defect_footprint,
    generate_dataset,
    render_image,
)
from inspection.errors import DatasetError


def _small(out: Path, seed: int = 0, **kw: object):
    return generate_dataset(out, seed=seed, n_good=6, n_per_defect=3, size=64, **kw)


def test_same_seed_gives_identical_fingerprint_and_bytes(tmp_path: Path) -> None:
    a = _small(tmp_path / "a", seed=7)
    b = _small(tmp_path / "b", seed=7)
    assert a.fingerprint == b.fingerprint
    assert [s.path for s in a.samples] == [s.path for s in b.samples]
    for s in a.samples:
        assert a.path_of(s).read_bytes() == b.path_of(s).read_bytes()
    assert read_dataset(a.root, verify=True).fingerprint == a.fingerprint


def test_different_seed_gives_different_fingerprint(tmp_path: Path) -> None:
    a = _small(tmp_path / "a", seed=1)
    b = _small(tmp_path / "b", seed=2)
    assert a.fingerprint != b.fingerprint


def test_images_are_gray_uint8_of_the_requested_size_with_every_class(tmp_path: Path) -> None:
    ds = _small(tmp_path / "d")
    assert ds.classes == list(CLASSES)
    assert ds.good_class == GOOD_CLASS == "good"
    assert len(DEFECT_CLASSES) >= 5
    assert ds.counts() == {"good": 6, **{d: 3 for d in DEFECT_CLASSES}}
    for s in ds.samples:
        assert s.path.endswith(".png")
        raw = cv2.imread(str(ds.path_of(s)), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint8 and raw.shape == (64, 64)
        assert s.source.startswith("P") and len(s.source) == 7
    assert len({s.source for s in ds.samples}) == len(ds.samples)
    assert ds.manifest["lineage"]["seed"] == 0 and ds.manifest["lineage"]["kind"] == "synthetic"


def test_images_look_like_a_lit_textured_surface() -> None:
    img = render_image("good", seed=3, index=0, size=128).astype(np.float32)
    assert 60 < img.mean() < 190
    # granular texture and noise: neighbouring pixels differ, but the frame is not saturated
    assert np.abs(np.diff(img, axis=1)).mean() > 1.5
    assert (img == 0).mean() < 0.01 and (img == 255).mean() < 0.01


@pytest.mark.parametrize("defect", DEFECT_CLASSES)
def test_each_defect_is_a_local_change_to_the_same_part(defect: str) -> None:
    # Surface, defect and sensor noise are separate streams of (seed, index): the good and the
    # defective frame of one part differ by the defect alone, and the defect is local.
    for index in range(5):
        good = render_image("good", seed=5, index=index).astype(np.int16)
        assert np.array_equal(good, render_image("good", seed=5, index=index))
        diff = np.abs(render_image(defect, seed=5, index=index).astype(np.int16) - good)
        assert diff.max() >= 5, (defect, index)
        assert (diff > 2).mean() < 0.4, (defect, index)


def test_defect_classes_do_not_dominate_good(tmp_path: Path) -> None:
    ds = generate_dataset(tmp_path / "d", seed=0, n_good=10, n_per_defect=2, size=32)
    counts = Counter(s.label for s in ds.samples)
    assert counts["good"] == 10 and all(counts[d] == 2 for d in DEFECT_CLASSES)
    # serials are assigned in line order, not grouped by class
    by_serial = [s.label for s in sorted(ds.samples, key=lambda s: s.source)]
    assert by_serial != sorted(by_serial, key=lambda c: CLASSES.index(c))


def test_existing_output_is_refused_unless_overwrite(tmp_path: Path) -> None:
    first = _small(tmp_path / "d", seed=1)
    with pytest.raises(DatasetError, match="already exists"):
        _small(tmp_path / "d", seed=2)
    assert read_dataset(tmp_path / "d").fingerprint == first.fingerprint
    second = _small(tmp_path / "d", seed=2, overwrite=True)
    assert second.fingerprint != first.fingerprint
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temp folders left behind


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_good": 0}, "n_good=0"), ({"n_per_defect": 0}, "n_per_defect=0"), ({"size": 8}, "size=8")],
)
def test_bad_arguments_name_the_value(tmp_path: Path, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        generate_dataset(tmp_path / "d", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "d").exists()


def test_unknown_class_is_refused() -> None:
    with pytest.raises(DatasetError, match="'crack'.*allowed"):
        render_image("crack", seed=0, index=0)


@pytest.mark.parametrize("defect", DEFECT_CLASSES)
def test_the_footprint_is_where_the_frame_differs_from_its_good_twin(defect: str) -> None:
    frame = render_image(defect, seed=4, index=9).astype(int)
    twin = render_image(GOOD_CLASS, seed=4, index=9).astype(int)
    where = defect_footprint(defect, seed=4, index=9)
    assert where.shape == (128, 128) and 0 < where.mean() < 0.5  # a part of the frame (a wrinkle: an edge band)
    assert np.array_equal(where, np.abs(frame - twin) > 2)
    assert not defect_footprint(GOOD_CLASS, seed=4, index=9).any()
