"""`dataset_info`: counts, sizes, channels and the problems a dataset can have."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from inspection.dataset import Sample, write_dataset
from inspection.dataset.info import dataset_info, format_info
from inspection.dataset.synthetic import generate_dataset


def _png(seed: int, shape: tuple[int, ...]) -> bytes:
    ok, buf = cv2.imencode(".png", np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8))
    assert ok
    return buf.tobytes()


def _mixed(root: Path, *, dup_same_label: bool = False):
    items = [
        (Sample("images/good/a.png", "good"), _png(1, (20, 30))),
        (Sample("images/good/b.png", "good"), _png(2, (20, 30))),
        (Sample("images/good/c.png", "good"), _png(3, (10, 40, 3))),
        (Sample("images/dent/d.png", "dent"), _png(4, (20, 30))),
    ]
    if dup_same_label:
        items.append((Sample("images/good/a2.png", "good"), items[0][1]))
    return write_dataset(root, name="mixed", classes=["good", "dent"], good_class="good", items=items)


def test_counts_sizes_channels_of_a_clean_dataset(tmp_path: Path) -> None:
    ds = generate_dataset(tmp_path / "gen", seed=1, n_good=12, n_per_defect=10, size=48)
    report = dataset_info(ds.root)
    assert report["counts"] == ds.counts() and report["count"] == 62
    assert report["good_class"] == "good" and report["fingerprint"] == ds.fingerprint
    assert report["sizes"]["most_common"] == "48x48" and report["sizes"]["distinct"] == 1
    assert report["channels"] == {"1": 62} and report["formats"] == {"png": 62} and report["bits"] == {"8": 62}
    assert report["problems"] == []
    assert "problems: none" in format_info(report)


def test_mixed_sizes_channels_and_tiny_classes(tmp_path: Path) -> None:
    report = dataset_info(_mixed(tmp_path / "d").root, min_per_class=2)
    assert report["sizes"]["width"] == {"min": 30, "max": 40}
    assert report["sizes"]["height"] == {"min": 10, "max": 20}
    assert report["sizes"]["most_common"] == "30x20" and report["sizes"]["most_common_count"] == 3
    assert report["channels"] == {"1": 3, "3": 1}
    assert [(p["kind"], p["severity"]) for p in report["problems"]] == [("tiny_class", "warning")]
    assert "'dent' has only 1 image(s), fewer than 2" in report["problems"][0]["message"]
    text = format_info(report)
    assert "width 30..40, height 10..20" in text and "warning: tiny_class" in text


def test_duplicates_unreadable_files_and_changed_data_are_reported(tmp_path: Path) -> None:
    ds = _mixed(tmp_path / "d", dup_same_label=True)
    report = dataset_info(ds.root, min_per_class=1, min_units_per_class=1)
    assert [p["kind"] for p in report["problems"]] == ["duplicate"]
    assert report["problems"][0]["paths"] == ["images/good/a.png", "images/good/a2.png"]
    # Damage the stored dataset behind the manifest's back.
    (ds.root / "images/dent/d.png").write_bytes((ds.root / "images/good/b.png").read_bytes())
    data = (ds.root / "images/good/c.png").read_bytes()
    (ds.root / "images/good/c.png").write_bytes(data[: len(data) // 2])
    report = dataset_info(ds.root, min_per_class=1, min_units_per_class=1)
    kinds = {p["kind"]: p for p in report["problems"]}
    assert set(kinds) == {"conflicting_duplicate", "unreadable", "fingerprint_mismatch", "duplicate"}
    assert kinds["unreadable"]["paths"] == ["images/good/c.png"] and "truncated PNG" in kinds["unreadable"]["message"]
    assert kinds["conflicting_duplicate"]["paths"] == ["images/dent/d.png", "images/good/b.png"]
    assert [p["severity"] for p in report["problems"]][-1] == "warning"  # errors listed first
    assert "error: unreadable" in format_info(report)


def test_a_class_whose_images_are_views_of_few_parts_is_flagged_with_its_units(tmp_path: Path) -> None:
    # 12 images of 'dent' taken of 3 parts (group column), 12 good images of 12 parts.
    items = [(Sample(f"images/good/g{i}.png", "good"), _png(100 + i, (20, 30))) for i in range(12)]
    items += [(Sample(f"images/dent/d{i}.png", "dent", group=f"P{i % 3}"), _png(200 + i, (20, 30))) for i in range(12)]
    ds = write_dataset(tmp_path / "d", name="views", classes=["good", "dent"], good_class="good", items=items)
    report = dataset_info(ds.root, min_units_per_class=5)
    assert report["units"] == {"good": 12, "dent": 3}
    assert [(p["kind"], p["severity"]) for p in report["problems"]] == [("few_units", "warning")]
    assert "'dent': 12 images but 3 independent units" in report["problems"][0]["message"]
    text = format_info(report)
    assert "in      3 units" in text and "in     12 units" in text
    # The same images as 12 independent parts: nothing to flag, and no units column.
    plain = write_dataset(tmp_path / "p", name="parts", classes=["good", "dent"], good_class="good",
                          items=[(Sample(s.path, s.label), data) for s, data in items])
    report = dataset_info(plain.root, min_units_per_class=5)
    assert report["units"] == {"good": 12, "dent": 12} and report["problems"] == []
    assert " units" not in format_info(report)


def test_a_dataset_mixing_8_and_16_bit_images_is_an_error_naming_the_fewer(tmp_path: Path) -> None:
    deep = [cv2.imencode(".png", np.full((20, 30), 1000 + 10 * i, np.uint16))[1].tobytes() for i in range(2)]
    items = [(Sample(f"images/good/{i}.png", "good"), _png(i, (20, 30))) for i in range(3)]
    items += [(Sample(f"images/dent/{i}.png", "dent"), data) for i, data in enumerate(deep)]
    ds = write_dataset(tmp_path / "depths", name="depths", classes=["good", "dent"], good_class="good", items=items)
    report = dataset_info(ds.root)
    assert report["bits"] == {"8": 3, "16": 2}
    (problem,) = [p for p in report["problems"] if p["kind"] == "mixed_depth"]
    assert problem["severity"] == "error" and problem["paths"] == ["images/dent/0.png", "images/dent/1.png"]
    assert "3 8-bit and 2 16-bit images" in problem["message"]
    assert "pixel depth: 8-bit 3, 16-bit 2" in format_info(report)
