"""Frames of any geometry: non-square, mixed sizes and channels, a huge frame, tiles, a rare
class; the exported graph and serving's preprocessing agree on every one."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from inspection.card import load_card, verify_files
from inspection.dataset.layout import Sample, write_dataset
from inspection.preprocess import prepare_frame
from tests.training.conftest import draw
from training.config import load_config
from training.train import main as train_main

FAST = {"epochs": 2, "min_epochs": 1, "batch_size": 16, "max_escape": 0.25, "progress": False, "threads": 1}


def _frames_dataset(
    dest: Path,
    *,
    sizes: list[tuple[int, int]],
    colour_every: int = 0,
    huge: int = 0,
    counts: dict[str, int] | None = None,
    deep_every: int = 0,
) -> Path:
    """Good/scratch/spot frames of the given (height, width) sizes, cycled; every
    ``colour_every``-th one stored as 3-channel BGR; one ``huge`` x ``huge`` frame if asked; every
    ``deep_every``-th one as a 12-bit camera's frame (x16 + 37, a 16-bit PNG, or TIFF every other)."""
    rng = np.random.default_rng(0)
    counts = counts or {"good": 30, "scratch": 14, "spot": 14}
    items, k = [], 0
    for label, n in counts.items():
        for i in range(n):
            h, w = sizes[k % len(sizes)]
            img = cv2.resize(draw(label, rng, 48), (w, h), interpolation=cv2.INTER_AREA)
            if colour_every and k % colour_every == 0:
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
                img[:, :, 2] = np.clip(img[:, :, 2].astype(int) + 9, 0, 255).astype(np.uint8)  # really colour
            if huge and label == "good" and i == 0:
                img = cv2.resize(img, (huge, huge), interpolation=cv2.INTER_NEAREST)
            ext = ".png"
            if deep_every and k % deep_every == 0:
                img = img.astype(np.uint16) * 16 + 37
                ext = ".tif" if k % (2 * deep_every) else ".png"
            ok, buf = cv2.imencode(ext, img)
            assert ok
            items.append((Sample(f"images/{label}/{i:03d}{ext}", label), buf.tobytes()))
            k += 1
    write_dataset(dest, name=dest.name, classes=list(counts), good_class="good", items=items)
    return dest


def _served_equals_golden(folder: Path, data: Path) -> None:
    import onnxruntime as ort

    card = load_card(folder)
    verify_files(card, folder)
    session = ort.InferenceSession(str(folder / card.model_file), providers=["CPUExecutionProvider"])
    with np.load(folder / card.golden.file) as g:
        inputs, expected, names = g["inputs"], g["probabilities"], [str(n) for n in g["names"]]
    for name, frame, probs in zip(names, inputs, expected, strict=True):
        _, served = prepare_frame((data / name).read_bytes(), card.input, content_type="image/png")
        assert np.array_equal(served, frame)  # serving's preprocessing == training's evaluation input
        got = session.run(["probabilities"], {"pixels": served[None]})[0][0]
        assert np.max(np.abs(got - probs)) <= card.golden.tolerance


@pytest.mark.slow
def test_tall_frames_keep_their_aspect_and_tiles_are_cut_in_the_graph(tmp_path: Path) -> None:
    data = _frames_dataset(tmp_path / "tall", sizes=[(96, 40), (100, 42), (90, 38)])
    result = train_main(
        load_config(None, {**FAST, "data": data, "models_dir": tmp_path / "m", "image_size": 32, "tiles": "2x1"})
    )
    spec = result.card.input
    assert spec.geometry == "letterbox" and spec.height > 2 * spec.width  # the frames' aspect, not a square
    assert spec.tiles is not None and (spec.tiles.rows, spec.tiles.cols) == (2, 1)
    assert result.card.parity.passed
    recipe = {c["setting"]: c for c in result.card.training["recipe"]}
    assert "aspect ratio" in recipe["input_shape"]["reason"]
    _served_equals_golden(result.path, data)


@pytest.mark.slow
def test_mixed_sizes_channels_and_a_huge_frame_are_adapted(tmp_path: Path) -> None:
    data = _frames_dataset(tmp_path / "mixed", sizes=[(40, 40), (64, 48), (30, 50)], colour_every=5, huge=4000)
    result = train_main(load_config(None, {**FAST, "data": data, "models_dir": tmp_path / "m", "image_size": 32}))
    assert result.card.input.channels == 1  # colour frames converted by the one preprocessing function
    assert max(result.card.input.height, result.card.input.width) <= 64  # the one huge frame did not drive it
    _served_equals_golden(result.path, data)


def _colour_dataset(dest: Path, *, good: int = 160, stain: int = 80) -> Path:
    """A colour camera's frames (each channel its own sensor noise) of a gray part; a ``stain`` is
    an 8 x 8 patch whose colour changes and whose brightness does not: its shift (B, G, R) =
    (+50, -30, +40) is orthogonal to the luma weights, so in gray it is gone."""
    rng = np.random.default_rng(0)
    items = []
    for label, n in (("good", good), ("stain", stain)):
        for i in range(n):
            img = rng.normal(rng.uniform(90, 160), 4.0, (32, 32, 3))
            if label == "stain":
                y, x = rng.integers(0, 24, 2)
                img[y : y + 8, x : x + 8] += (50.0, -30.0, 40.0)
            ok, buf = cv2.imencode(".png", np.clip(np.rint(img), 0, 255).astype(np.uint8))
            assert ok
            items.append((Sample(f"images/{label}/{i:03d}.png", label), buf.tobytes()))
    write_dataset(dest, name=dest.name, classes=["good", "stain"], good_class="good", items=items)
    return dest


@pytest.mark.slow
def test_colour_frames_train_a_colour_model_that_sees_a_defect_gray_cannot(tmp_path: Path) -> None:
    data = _colour_dataset(tmp_path / "colour")
    run = {**FAST, "epochs": 12, "min_epochs": 12, "max_escape": 0.5, "data": data, "image_size": 32}
    colour = train_main(load_config(None, {**run, "models_dir": tmp_path / "m"}))
    assert colour.card.input.channels == 3
    recipe = {c["setting"]: c for c in colour.card.training["recipe"]}
    assert recipe["channels"]["value"] == 3 and "training frames surveyed are colour" in recipe["channels"]["reason"]
    _served_equals_golden(colour.path, data)  # serving hands the graph the same three channels
    gray = train_main(load_config(None, {**run, "channels": 1, "models_dir": tmp_path / "g"}))
    assert gray.card.input.channels == 1 and "channels" not in {c["setting"] for c in gray.card.training["recipe"]}
    seen, unseen = colour.card.metrics["test"]["roc_auc"], gray.card.metrics["test"]["roc_auc"]
    assert seen >= 0.9 and seen - unseen >= 0.25, (seen, unseen)


@pytest.mark.slow
def test_a_class_with_one_image_trains_and_says_it_cannot_be_measured(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = _frames_dataset(tmp_path / "rare", sizes=[(32, 32)], counts={"good": 40, "scratch": 30, "spot": 1})
    result = train_main(load_config(None, {**FAST, "data": data, "models_dir": tmp_path / "m"}))
    counts = result.card.dataset.split_counts
    assert counts["train"]["spot"] == 1 and counts["val"]["spot"] == counts["test"]["spot"] == 0
    assert "'spot' has no validation or test images" in caplog.text


@pytest.mark.slow
def test_sixteen_bit_frames_train_with_their_own_levels_and_serve_alike(tmp_path: Path) -> None:
    data = _frames_dataset(tmp_path / "deep", sizes=[(40, 40), (48, 36)], deep_every=1)
    result = train_main(load_config(None, {**FAST, "data": data, "models_dir": tmp_path / "m", "image_size": 32}))
    levels = result.card.input.levels
    # The 12-bit frames' own range (37..4117 at most), not the container's 0..65535.
    assert levels is not None and 0 <= levels[0] < levels[1] <= 4400
    recipe = {c["setting"]: c for c in result.card.training["recipe"]}
    assert recipe["levels"]["value"] == list(levels) and "16-bit frames" in recipe["levels"]["reason"]
    assert result.card.parity.passed
    _served_equals_golden(result.path, data)  # serving maps 16-bit PNG and TIFF frames as training did


def test_a_dataset_mixing_8_and_16_bit_frames_is_refused_naming_one_of_each(tmp_path: Path) -> None:
    from inspection.errors import DatasetError

    data = _frames_dataset(tmp_path / "mixed-depth", sizes=[(32, 32)], deep_every=3)
    with pytest.raises(DatasetError, match=r"mixes 8-bit frames \(e\.g\. images/.*\) and 16-bit frames \(e\.g\. "):
        train_main(load_config(None, {**FAST, "data": data, "models_dir": tmp_path / "m", "image_size": 32}))
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").rglob("model.json"))
