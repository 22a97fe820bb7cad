"""Importing class-per-folder, file-name-prefix and CSV layouts into the standard layout."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspection.dataset import read_dataset
from inspection.dataset.importers import import_dataset
from inspection.dataset.synthetic import generate_dataset
from inspection.errors import DatasetError, ImageError


def _image(seed: int, ext: str = ".jpg", size: tuple[int, int] = (24, 16)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0]), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, pixels)
    assert ok
    return buf.tobytes()


def _put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _magnetic_tile_like(root: Path) -> Path:
    """MT_<Class>/Imgs/<name>.jpg with a same-named .png mask beside every image."""
    seed = 0
    for cls, n in (("Free", 4), ("Blowhole", 2), ("Crack", 1)):
        for i in range(n):
            seed += 1
            _put(root / f"MT_{cls}" / "Imgs" / f"exp1_num_{seed}.jpg", _image(seed))
            _put(root / f"MT_{cls}" / "Imgs" / f"exp1_num_{seed}.png", _image(1000 + seed, ".png"))
    (root / "README.md").write_text("not an image")
    return root


def test_generated_image_folders_import_to_the_same_fingerprint(tmp_path: Path) -> None:
    gen = generate_dataset(tmp_path / "gen", seed=4, n_good=5, n_per_defect=2, size=32)
    ds = import_dataset(tmp_path / "gen" / "images", tmp_path / "imp", layout="folders", good_class="good",
                        classes=gen.classes)
    assert ds.counts() == gen.counts()
    # same relative paths, same bytes, same labels -> the same content fingerprint
    assert ds.fingerprint == gen.fingerprint
    assert read_dataset(ds.root, verify=True).fingerprint == gen.fingerprint


def test_folders_with_masks_beside_images(tmp_path: Path) -> None:
    src = _magnetic_tile_like(tmp_path / "mt")
    ds = import_dataset(src, tmp_path / "out", layout="folders", exclude=["*.png"],
                        class_pattern=r"^MT_(?P<label>[^/]+)/", good_class="Free")
    assert ds.classes == ["Free", "Blowhole", "Crack"]  # good first, then sorted
    assert ds.counts() == {"Free": 4, "Blowhole": 2, "Crack": 1}
    assert all(s.path.endswith(".jpg") for s in ds.samples)
    for s in ds.samples:  # bytes copied unchanged, source names the original file
        assert _sha(ds.path_of(s)) == _sha(src / s.source)
        assert s.source.startswith(f"MT_{s.label}/Imgs/")
    lineage = ds.manifest["lineage"]
    assert lineage["layout"] == "folders" and lineage["source"] == str(src.resolve())
    assert lineage["options"]["exclude"] == ["*.png"] and lineage["skipped"] == {"not_image": 1, "excluded": 7}


def test_include_keeps_only_matching_images(tmp_path: Path) -> None:
    src = _magnetic_tile_like(tmp_path / "mt")
    ds = import_dataset(src, tmp_path / "out", layout="folders", include=["*.JPG"],
                        class_pattern=r"MT_(?P<label>[^/]+)/")
    assert len(ds.samples) == 7 and ds.good_class is None


def test_mask_beside_image_is_refused_without_a_filter(tmp_path: Path) -> None:
    src = _magnetic_tile_like(tmp_path / "mt")
    with pytest.raises(DatasetError,
                       match=r"exp1_num_\d+\.jpg and .*exp1_num_\d+\.png have the same name.*--exclude '\*\.png'"):
        import_dataset(src, tmp_path / "out", layout="folders", class_pattern=r"MT_(?P<label>[^/]+)/")
    assert not (tmp_path / "out").exists()


def test_folder_names_are_classes_by_default(tmp_path: Path) -> None:
    for i, cls in enumerate(["ok", "dent", "dent", "scratch"]):
        _put(tmp_path / "src" / cls / f"{i}.png", _image(i, ".png"))
    ds = import_dataset(tmp_path / "src", tmp_path / "out", layout="folders", good_class="ok")
    assert ds.classes == ["ok", "dent", "scratch"] and ds.counts() == {"ok": 1, "dent": 2, "scratch": 1}
    ordered = import_dataset(tmp_path / "src", tmp_path / "out2", layout="folders",
                             classes=["scratch", "dent", "ok"])
    assert ordered.classes == ["scratch", "dent", "ok"]
    # a folder whose files are all excluded is not a class
    _put(tmp_path / "src" / "docs" / "overview.png", _image(50, ".png"))
    _put(tmp_path / "src" / "docs" / "notes.txt", b"x")
    skipped = import_dataset(tmp_path / "src", tmp_path / "out3", layout="folders", exclude=["docs/*"])
    assert skipped.classes == ["dent", "ok", "scratch"]


def test_prefix_layout_takes_everything_before_the_last_number(tmp_path: Path) -> None:
    src = tmp_path / "neu"
    names = ["rolled-in_scale_1", "rolled-in_scale_20", "pitted_surface_3", "crazing_300"]
    for i, stem in enumerate(names):
        _put(src / "IMAGES" / f"{stem}.jpg", _image(i))
        _put(src / "ANNOTATIONS" / f"{stem}.xml", b"<annotation/>")
    ds = import_dataset(src, tmp_path / "out", layout="prefix")
    assert ds.classes == ["crazing", "pitted_surface", "rolled-in_scale"]
    assert ds.counts() == {"crazing": 1, "pitted_surface": 1, "rolled-in_scale": 2}
    assert ds.good_class is None
    s = next(s for s in ds.samples if s.source == "IMAGES/rolled-in_scale_20.jpg")
    assert s.path == "images/rolled-in_scale/rolled-in_scale_20.jpg"
    assert _sha(ds.path_of(s)) == _sha(src / "IMAGES" / "rolled-in_scale_20.jpg")  # JPEG stays JPEG


def test_prefix_layout_names_a_file_without_a_class_prefix(tmp_path: Path) -> None:
    _put(tmp_path / "src" / "crazing_1.jpg", _image(1))
    _put(tmp_path / "src" / "photo.jpg", _image(2))
    with pytest.raises(DatasetError, match=r"photo\.jpg.*<class>_<number>"):
        import_dataset(tmp_path / "src", tmp_path / "out", layout="prefix")
    assert not (tmp_path / "out").exists()


def test_csv_layout_paths_relative_to_the_csv(tmp_path: Path) -> None:
    base = tmp_path / "cam"
    _put(base / "a" / "1.png", _image(1, ".png"))
    _put(base / "b" / "1.png", _image(2, ".png"))  # same file name, other class
    _put(base / "a" / "2.bmp", _image(3, ".bmp"))
    (base / "labels.csv").write_text(
        "path,label,split,source\na/1.png,good,train,S1\nb/1.png,dent,test,S2\na/2.bmp,dent,,\n"
    )
    ds = import_dataset(base / "labels.csv", tmp_path / "out", layout="csv", good_class="good")
    assert ds.classes == ["good", "dent"] and ds.counts() == {"good": 1, "dent": 2}
    by_source = {s.source: s for s in ds.samples}
    assert by_source["S1"].split == "train" and by_source["S2"].split == "test"
    assert by_source["a/2.bmp"].path.endswith(".bmp")
    assert {s.path for s in ds.samples} == {"images/good/1.png", "images/dent/1.png", "images/dent/2.bmp"}


def test_csv_names_a_missing_file_and_a_bad_header(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("path,label\nmissing.png,good\n")
    with pytest.raises(DatasetError, match=r"l\.csv:2: image missing\.png does not exist"):
        import_dataset(tmp_path / "l.csv", tmp_path / "out", layout="csv")
    (tmp_path / "h.csv").write_text("file,class\nx.png,good\n")
    with pytest.raises(DatasetError, match="needs columns path and label"):
        import_dataset(tmp_path / "h.csv", tmp_path / "out", layout="csv")
    assert not (tmp_path / "out").exists()


# --- bad input: a clear error naming the file, nothing half-written ---------------------------

def _two_class_tree(root: Path) -> Path:
    for i in range(3):
        _put(root / "good" / f"g{i}.png", _image(i, ".png"))
        _put(root / "dent" / f"d{i}.png", _image(10 + i, ".png"))
    return root


def test_truncated_image_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    src = _two_class_tree(tmp_path / "src")
    data = _image(99, ".png")
    _put(src / "dent" / "broken.png", data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"dent/broken\.png: truncated PNG.*--exclude"):
        import_dataset(src, tmp_path / "out", layout="folders")
    assert list(tmp_path.iterdir()) == [src]  # no dest, no temp folder


def test_file_that_is_not_an_image_is_named(tmp_path: Path) -> None:
    src = _two_class_tree(tmp_path / "src")
    _put(src / "good" / "notes.jpg", b"hello, this is text")
    with pytest.raises(ImageError, match=r"good/notes\.jpg: not a PNG, JPEG, BMP or TIFF"):
        import_dataset(src, tmp_path / "out", layout="folders")
    assert not (tmp_path / "out").exists()


def test_empty_class_folder_is_refused(tmp_path: Path) -> None:
    src = _two_class_tree(tmp_path / "src")
    (src / "crack").mkdir()
    _put(src / "crack" / "readme.txt", b"todo")
    with pytest.raises(DatasetError, match=r"crack'\] have no images.*every class needs at least one"):
        import_dataset(src, tmp_path / "out", layout="folders")
    assert not (tmp_path / "out").exists()


def test_class_listed_but_without_images_is_refused(tmp_path: Path) -> None:
    src = _two_class_tree(tmp_path / "src")
    with pytest.raises(DatasetError, match=r"\['crack'\] have no images"):
        import_dataset(src, tmp_path / "out", layout="folders", classes=["good", "dent", "crack"])
    assert not (tmp_path / "out").exists()


def test_label_outside_the_class_list_names_the_file_and_the_allowed_classes(tmp_path: Path) -> None:
    src = _two_class_tree(tmp_path / "src")
    with pytest.raises(DatasetError, match=r"d0\.png: label 'dent' is not in the class list \['good', 'scratch'\]"):
        import_dataset(src, tmp_path / "out", layout="folders", classes=["good", "scratch"])
    with pytest.raises(DatasetError, match=r"--good 'ok' is not one of the classes \['good', 'dent'\]"):
        import_dataset(src, tmp_path / "out", layout="folders", classes=["good", "dent"], good_class="ok")
    assert not (tmp_path / "out").exists()


def test_same_image_under_two_labels_is_refused_with_every_conflict_listed(tmp_path: Path) -> None:
    src = _two_class_tree(tmp_path / "src")
    _put(src / "dent" / "copy.png", (src / "good" / "g1.png").read_bytes())
    # Same pixels in another format: not the same bytes, still the same image.
    pixels = cv2.imread(str(src / "good" / "g2.png"), cv2.IMREAD_UNCHANGED)
    _put(src / "dent" / "g2-again.bmp", cv2.imencode(".bmp", pixels)[1].tobytes())
    with pytest.raises(DatasetError) as err:
        import_dataset(src, tmp_path / "out", layout="folders")
    msg = str(err.value)
    assert "4 images in 2 group(s) have the same image content" in msg and "one image can have only one label" in msg
    assert "images/dent/copy.png (label 'dent') = images/good/g1.png (label 'good')" in msg
    assert "images/dent/g2-again.bmp (label 'dent') = images/good/g2.png (label 'good')" in msg
    assert not (tmp_path / "out").exists()


def test_same_image_twice_under_one_label_is_kept(tmp_path: Path) -> None:
    src = _two_class_tree(tmp_path / "src")
    _put(src / "good" / "copy.png", (src / "good" / "g1.png").read_bytes())
    assert import_dataset(src, tmp_path / "out", layout="folders").counts()["good"] == 4


def test_failed_overwrite_leaves_the_existing_dataset_untouched(tmp_path: Path) -> None:
    src = _two_class_tree(tmp_path / "src")
    first = import_dataset(src, tmp_path / "out", layout="folders")
    before = {p.relative_to(first.root): p.read_bytes() for p in first.root.rglob("*") if p.is_file()}
    _put(src / "good" / "bad.png", b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageError, match=r"bad\.png"):
        import_dataset(src, tmp_path / "out", layout="folders", overwrite=True)
    after = {p.relative_to(first.root): p.read_bytes() for p in first.root.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
    with pytest.raises(DatasetError, match="already exists.*--overwrite"):
        import_dataset(src, tmp_path / "out", layout="folders")


def test_bad_options_are_named(tmp_path: Path) -> None:
    src = _two_class_tree(tmp_path / "src")
    with pytest.raises(DatasetError,
                       match=r"layout 'tree' is not supported; use one of \['folders', 'prefix', 'csv'\]"):
        import_dataset(src, tmp_path / "out", layout="tree")
    with pytest.raises(DatasetError, match=r"needs a named group \(\?P<label>"):
        import_dataset(src, tmp_path / "out", layout="folders", class_pattern="(good|dent)/")
    with pytest.raises(DatasetError, match="not a valid regular expression"):
        import_dataset(src, tmp_path / "out", layout="folders", class_pattern="(?P<label>[")
    with pytest.raises(DatasetError, match=r"d0\.png.*does not match --class-from-dir-pattern"):
        import_dataset(src, tmp_path / "out", layout="folders", class_pattern="^(?P<label>good)/")
    with pytest.raises(DatasetError, match="inside the source"):
        import_dataset(src, src / "ds", layout="folders")
    with pytest.raises(DatasetError, match="no images to import"):
        import_dataset(src, tmp_path / "out", layout="folders", exclude=["*"])
    with pytest.raises(DatasetError, match="does not exist"):
        import_dataset(tmp_path / "nope", tmp_path / "out", layout="prefix")
    assert not (tmp_path / "out").exists() and not (src / "ds").exists()
