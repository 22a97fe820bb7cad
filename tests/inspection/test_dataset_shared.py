"""Importing the real line-camera datasets in ../shared/data (skipped when absent)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from inspection.cli import main
from inspection.dataset import read_dataset
from inspection.dataset.info import dataset_info

pytestmark = pytest.mark.shared_data


def test_magnetic_tile_imports_exactly_the_images_and_no_masks(shared_data: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    src = shared_data / "magnetic-tile"
    # The documented command (datasets/README.md).
    rc = main(["dataset", "import", "--layout", "folders", str(src), "--out", str(tmp_path / "mt"),
               "--exclude", "*.png", "--class-from-dir-pattern", "^MT_(?P<label>[^/]+)/", "--good", "Free"])
    assert rc == 0, capsys.readouterr().err
    ds = read_dataset(tmp_path / "mt")
    assert ds.counts() == {"Free": 952, "Blowhole": 115, "Break": 85, "Crack": 57, "Fray": 32, "Uneven": 103}
    assert ds.classes[0] == ds.good_class == "Free"
    assert not [s for s in ds.samples if not s.path.endswith(".jpg")]
    assert not list((tmp_path / "mt").rglob("*.png"))
    for s in ds.samples[::97]:  # bytes copied unchanged from the file named as source
        copied, original = ds.path_of(s).read_bytes(), (src / s.source).read_bytes()
        assert hashlib.sha256(copied).digest() == hashlib.sha256(original).digest()
    report = dataset_info(ds.root)
    assert report["channels"] == {"1": 1344}
    # Each tile under up to six lightings: 1,344 images of 583 units; fray's 32 images show 18 tiles.
    assert report["units"] == {"Free": 390, "Blowhole": 52, "Break": 55, "Crack": 30, "Fray": 18, "Uneven": 38}
    assert [(p["kind"], p["message"].split(":")[0]) for p in report["problems"]] == [("few_units", "class 'Fray'")]


def test_neu_det_imports_300_per_class_without_a_good_class(shared_data: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["dataset", "import", "--layout", "prefix", str(shared_data / "neu-det" / "IMAGES"),
               "--out", str(tmp_path / "neu")])
    assert rc == 0, capsys.readouterr().err
    ds = read_dataset(tmp_path / "neu")
    assert ds.counts() == {c: 300 for c in
                           ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]}
    assert ds.good_class is None
    assert all(s.path.endswith(".jpg") for s in ds.samples)
    report = dataset_info(ds.root)
    assert report["sizes"]["most_common"] == "200x200" and report["sizes"]["distinct"] == 1
    # NEU-DET holds one byte-identical pair within a class: reported, not refused.
    assert [p["kind"] for p in report["problems"]] == ["duplicate"]
