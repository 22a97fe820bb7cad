"""Honest splits: duplicates, sources and groups never cross train/val/test (inspection.dataset.split)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspection.cli import main
from inspection.dataset import Sample, read_dataset, write_dataset
from inspection.dataset.duplicates import find_duplicates, read_signatures
from inspection.dataset.importers import import_dataset
from inspection.dataset.info import dataset_info, format_info
from inspection.dataset.layout import LABELS, compute_fingerprint
from inspection.dataset.split import (
    crossing_groups,
    make_split,
    read_split,
    read_units,
    split_dataset,
    write_split,
)
from inspection.errors import DatasetError


def _texture(seed: int, size: int = 64) -> np.ndarray:
    """A smooth random texture with a few blobs: what a part surface looks like at thumbnail scale."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.normal(128, 40, (size, size)), (0, 0), 3)
    for _ in range(3):
        c = (int(rng.integers(8, size - 8)), int(rng.integers(8, size - 8)))
        cv2.circle(img, c, int(rng.integers(3, 8)), float(rng.integers(0, 256)), -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _enc(img: np.ndarray, ext: str = ".png", *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


#: The groups the dataset below plants, each of which must land in one split.
PLANTED = {
    "bytes": ["images/good/dup-a.png", "images/good/dup-b.png"],
    "pixels": ["images/good/pix.png", "images/good/pix.bmp"],
    "near": ["images/dent/near.png", "images/dent/near-noised.png", "images/dent/near-jpeg.jpg"],
    "group": ["images/good/lot-1.png", "images/good/lot-2.png", "images/dent/lot-3.png"],
    "source": ["images/good/view-1.png", "images/good/view-2.png"],
}


def _planted_dataset(root: Path, *, given: dict[str, str] | None = None) -> None:
    rng = np.random.default_rng(7)
    items: list[tuple[Sample, bytes]] = []
    seed = iter(range(1000, 2000))
    for i in range(30):
        items.append((Sample(f"images/good/g{i:02d}.png", "good"), _enc(_texture(next(seed)))))
    for i in range(15):
        items.append((Sample(f"images/dent/d{i:02d}.png", "dent"), _enc(_texture(next(seed)))))
    dup = _enc(_texture(next(seed)))
    items += [(Sample(p, "good"), dup) for p in PLANTED["bytes"]]
    pix = _texture(next(seed))
    items += [(Sample(PLANTED["pixels"][0], "good"), _enc(pix)),
              (Sample(PLANTED["pixels"][1], "good"), _enc(pix, ".bmp"))]
    near = _texture(next(seed))
    noised = np.clip(near + rng.normal(0, 3, near.shape), 0, 255).astype(np.uint8)
    items += [(Sample(PLANTED["near"][0], "dent"), _enc(near)), (Sample(PLANTED["near"][1], "dent"), _enc(noised)),
              (Sample(PLANTED["near"][2], "dent"), _enc(near, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 70))]
    items += [(Sample(p, p.split("/")[1], group="LOT-7"), _enc(_texture(next(seed)))) for p in PLANTED["group"]]
    items += [(Sample(p, "good", source="P42"), _enc(_texture(next(seed)))) for p in PLANTED["source"]]
    given = given or {}
    items = [(Sample(s.path, s.label, given.get(s.path, ""), s.source, s.group), data) for s, data in items]
    write_dataset(root, name="planted", classes=["good", "dent"], good_class="good", items=items)


def test_no_planted_group_crosses_splits_over_several_seeds(tmp_path: Path) -> None:
    _planted_dataset(tmp_path / "d")
    ds = read_dataset(tmp_path / "d")
    dups = find_duplicates(read_signatures(ds))
    assert dups.exact == [PLANTED["bytes"], sorted(PLANTED["pixels"])]
    assert dups.near == [sorted(PLANTED["near"])]  # the noised and the JPEG copy; nothing else is near
    plain = make_split(ds.samples, seed=0, val_fraction=0.25, test_fraction=0.25)
    crossed_without_grouping = 0
    for seed in range(8):
        result = split_dataset(ds, seed=seed, val_fraction=0.25, test_fraction=0.25)
        assert set(result.split) == {s.path for s in ds.samples} and result.moved == []
        for name, paths in PLANTED.items():
            assert len({result.split[p] for p in paths}) == 1, (seed, name, {p: result.split[p] for p in paths})
        assert {"train", "val", "test"} == set(result.split.values())
        assert result.groups == len(ds.samples) - sum(len(g) - 1 for g in PLANTED.values())
        assert result == split_dataset(ds, seed=seed, val_fraction=0.25, test_fraction=0.25)  # reproducible
        dup_only = make_split(ds.samples, seed=seed, val_fraction=0.25, test_fraction=0.25)
        crossed_without_grouping += len(crossing_groups(dup_only, [PLANTED[k] for k in ("bytes", "pixels", "near")]))
        assert crossing_groups(result.split, [*PLANTED.values(), *result.duplicates.together()]) == []
    # The test can fail: without the duplicate grouping, copies do land in different splits.
    assert crossed_without_grouping > 0
    # A dataset without duplicates or groups splits exactly as before grouping existed.
    assert plain == make_split(ds.samples, seed=0, val_fraction=0.25, test_fraction=0.25, together=[])


def test_split_file_numbers_the_units_and_reads_them_back(tmp_path: Path) -> None:
    _planted_dataset(tmp_path / "d")
    ds = read_dataset(tmp_path / "d")
    result = split_dataset(ds, seed=0, val_fraction=0.25, test_fraction=0.25)
    # Each planted group is one unit, every other image a unit of its own, none spans two splits.
    for paths in PLANTED.values():
        assert len({result.units[p] for p in paths}) == 1
    assert len(set(result.units.values())) == result.groups
    assert all(len({result.split[p] for p, u in result.units.items() if u == unit}) == 1
               for unit in set(result.units.values()))
    write_split(tmp_path / "split.csv", ds.samples, result.split, result.units)
    assert read_units(tmp_path / "split.csv") == result.units
    assert read_split(tmp_path / "split.csv") == result.split
    write_split(tmp_path / "old.csv", ds.samples, result.split)  # as versions before units were kept
    assert read_units(tmp_path / "old.csv") is None and read_split(tmp_path / "old.csv") == result.split


def test_a_given_split_that_a_copy_crosses_moves_the_group_to_the_held_out_split(tmp_path: Path) -> None:
    given = {PLANTED["pixels"][0]: "train", PLANTED["pixels"][1]: "test", PLANTED["group"][0]: "val"}
    _planted_dataset(tmp_path / "d", given=given)
    ds = read_dataset(tmp_path / "d")
    result = split_dataset(ds, seed=3, val_fraction=0.25, test_fraction=0.25)
    assert {result.split[p] for p in PLANTED["pixels"]} == {"test"}
    assert {result.split[p] for p in PLANTED["group"]} == {"val"}  # a given split wins for the whole group
    assert result.moved == ["images/good/pix.png"]
    assert "1 given split(s) changed" in result.summary()
    report = dataset_info(ds.root)
    leaks = [p for p in report["problems"] if p["kind"] == "split_leak"]
    assert len(leaks) == 1 and leaks[0]["paths"] == sorted(PLANTED["pixels"]) and leaks[0]["severity"] == "warning"
    assert "crosses the given splits ['test', 'train']" in leaks[0]["message"]
    assert "warning: split_leak" in format_info(report)


def test_info_reports_exact_and_near_duplicates_with_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _planted_dataset(tmp_path / "d")
    report = dataset_info(tmp_path / "d")
    assert report["duplicates"]["exact"] == [PLANTED["bytes"], sorted(PLANTED["pixels"])]
    assert report["duplicates"]["near"] == [sorted(PLANTED["near"])]
    assert report["groups"] == 1
    # No split given: nothing leaks. The planted copies make dent's 19 images 16 parts, under 30.
    assert [p["kind"] for p in report["problems"]] == ["duplicate", "duplicate", "few_units"]
    assert report["units"] == {"good": 34, "dent": 16}
    assert main(["dataset", "info", str(tmp_path / "d")]) == 0
    text = capsys.readouterr().out
    assert "exact duplicates (same bytes or pixels): 2 group(s), 4 images - kept in one split each" in text
    assert "near duplicates (pHash <= 10 bits, thumbnail correlation >= 0.97): 1 group(s), 3 images" in text
    assert ", ".join(sorted(PLANTED["near"])) in text
    assert main(["dataset", "info", str(tmp_path / "d"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["duplicates"]["near"] == [sorted(PLANTED["near"])]


def test_duplicates_across_labels_are_refused_with_the_whole_list(tmp_path: Path) -> None:
    a, b = _texture(1), _texture(2)
    items = [
        (Sample("images/good/a.png", "good"), _enc(a)), (Sample("images/dent/a-copy.png", "dent"), _enc(a)),
        (Sample("images/good/b.png", "good"), _enc(b)), (Sample("images/dent/b.bmp", "dent"), _enc(b, ".bmp")),
        (Sample("images/good/c.png", "good"), _enc(_texture(3))),
    ]
    with pytest.raises(DatasetError) as err:
        write_dataset(tmp_path / "d", name="d", classes=["good", "dent"], good_class="good", items=items)
    msg = str(err.value)
    assert "4 images in 2 group(s)" in msg
    assert "images/dent/a-copy.png (label 'dent') = images/good/a.png (label 'good')" in msg
    assert "images/dent/b.bmp (label 'dent') = images/good/b.png (label 'good')" in msg
    assert not (tmp_path / "d").exists()
    # Training is refused too when the files became copies behind the manifest's back.
    distinct = [(s, _enc(_texture(10 + i), Path(s.path).suffix)) for i, (s, _) in enumerate(items)]
    ds = write_dataset(tmp_path / "d", name="d", classes=["good", "dent"], good_class="good", items=distinct)
    for s, data in items:
        ds.path_of(s).write_bytes(data)
    with pytest.raises(DatasetError, match=r"(?s)have the same image content.*a-copy\.png.*a\.png.*b\.bmp.*b\.png"):
        split_dataset(read_dataset(ds.root), seed=0, val_fraction=0.2, test_fraction=0.2)


def test_an_unreadable_image_is_named_before_splitting(tmp_path: Path) -> None:
    items = [(Sample(f"images/{c}/{i}.png", c), _enc(_texture(10 * i + (c == "dent"))))
             for c in ("good", "dent") for i in range(3)]
    ds = write_dataset(tmp_path / "d", name="d", classes=["good", "dent"], good_class="good", items=items)
    data = (ds.root / "images/dent/1.png").read_bytes()
    (ds.root / "images/dent/1.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"(?s)1 image\(s\) cannot be used.*images/dent/1\.png: truncated PNG"):
        split_dataset(ds, seed=0, val_fraction=0.2, test_fraction=0.2)


def test_group_column_round_trips_and_leaves_fingerprints_of_ungrouped_datasets_alone(tmp_path: Path) -> None:
    items = [(Sample(f"images/good/{i}.png", "good"), _enc(_texture(i))) for i in range(3)]
    plain = write_dataset(tmp_path / "plain", name="p", classes=["good"], good_class="good", items=items)
    assert (plain.root / LABELS).read_text().splitlines()[0] == "path,label,split,source"
    # The fingerprint formula from before the group column existed.
    import hashlib

    h = hashlib.sha256()
    for s in sorted(plain.samples, key=lambda s: s.path):
        h.update(f"{s.path}\t{hashlib.sha256(plain.path_of(s).read_bytes()).hexdigest()}\t{s.label}\t{s.split}\n".encode())
    assert plain.fingerprint == h.hexdigest()
    grouped_items = [(Sample(s.path, s.label, group="L1" if i < 2 else ""), d) for i, (s, d) in enumerate(items)]
    grouped = write_dataset(tmp_path / "grouped", name="g", classes=["good"], good_class="good", items=grouped_items)
    with open(grouped.root / LABELS, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["group"] for r in rows] == ["L1", "L1", ""]
    assert [s.group for s in read_dataset(grouped.root, verify=True).samples] == ["L1", "L1", ""]
    assert grouped.fingerprint != plain.fingerprint == compute_fingerprint(plain.root, plain.samples)
    split = make_split(grouped.samples, seed=0, val_fraction=0.3, test_fraction=0.3)
    write_split(tmp_path / "split.csv", grouped.samples, split)
    assert read_split(tmp_path / "split.csv") == split
    assert (tmp_path / "split.csv").read_text().splitlines()[0] == "path,label,split,source,group"


def _serial_tree(root: Path) -> Path:
    for cls, n in (("good", 6), ("dent", 4)):
        for i in range(n):
            path = root / cls / f"SN{i // 2:03d}_{cls}_view{i % 2}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_enc(_texture((100 if cls == "good" else 200) + i)))
    return root


def test_import_fills_the_group_from_a_path_pattern(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _serial_tree(tmp_path / "src")
    ds = import_dataset(src, tmp_path / "out", layout="folders", group_pattern=r"(?P<group>SN\d+)_")
    groups = Counter(s.group for s in ds.samples)
    assert groups == {"SN000": 4, "SN001": 4, "SN002": 2}  # a serial seen as good and as dent is one item
    assert ds.manifest["lineage"]["options"]["group_from_pattern"] == r"(?P<group>SN\d+)_"
    for seed in range(5):
        split = split_dataset(ds, seed=seed, val_fraction=0.3, test_fraction=0.3).split
        for g in groups:
            assert len({split[s.path] for s in ds.samples if s.group == g}) == 1
    rc = main(["dataset", "import", "--layout", "folders", str(src), "--out", str(tmp_path / "cli"),
               "--group-from-pattern", r"(?P<group>SN\d+)_"])
    assert rc == 0 and "; 3 groups" in capsys.readouterr().out


@pytest.mark.parametrize(("pattern", "expected"), [
    ("(?P<group>SN[0-9+", "--group-from-pattern '(?P<group>SN[0-9+' is not a valid regular expression"),
    ("(SN[0-9]+)_", "--group-from-pattern '(SN[0-9]+)_' needs a named group (?P<group>...)"),
    ("(?P<group>LOT[0-9]+)", "10 image path(s) do not match --group-from-pattern '(?P<group>LOT[0-9]+)'"),
])
def test_a_bad_group_pattern_is_a_clear_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], pattern: str,
                                                  expected: str) -> None:
    src = _serial_tree(tmp_path / "src")
    rc = main(["dataset", "import", "--layout", "folders", str(src), "--out", str(tmp_path / "out"),
               "--group-from-pattern", pattern])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err
    assert not (tmp_path / "out").exists()


def test_a_csv_group_column_is_imported(tmp_path: Path) -> None:
    src = _serial_tree(tmp_path / "src")
    lines = ["path,label,group"] + [f"{p.relative_to(src).as_posix()},{p.parent.name},{'A' if '000' in p.name else ''}"
                                    for p in sorted(src.rglob("*.png"))]
    (src / "labels.csv").write_text("\n".join(lines) + "\n")
    ds = import_dataset(src / "labels.csv", tmp_path / "out", layout="csv")
    assert Counter(s.group for s in ds.samples) == {"A": 4, "": 6}
    with pytest.raises(DatasetError,
                       match=r"labels\.csv has a group column and --group-from-pattern '\(\?P<group>SN.*' was given"):
        import_dataset(src / "labels.csv", tmp_path / "out2", layout="csv", group_pattern=r"(?P<group>SN[0-9]+)")


def test_the_split_module_is_torch_free() -> None:
    import subprocess
    import sys

    code = "import sys, inspection.dataset.split, inspection.dataset.info; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
