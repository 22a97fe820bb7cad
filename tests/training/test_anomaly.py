"""Anomaly mode: good images alone are fitted; real defects only validate and test."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from inspection.card import load_card
from inspection.dataset.layout import Sample, read_dataset, write_dataset
from inspection.dataset.split import split_dataset
from inspection.errors import DatasetError
from inspection.golden import verify_version
from tests.training.conftest import draw, make_dataset
from training import anomaly
from training.config import load_config
from training.train import main as train_main

FAST = {"image_size": 32, "epochs": 3, "min_epochs": 1, "batch_size": 16, "progress": False, "threads": 1,
        "mode": "anomaly", "max_overkill": 0.1}


def test_every_synthetic_anomaly_changes_the_frame_and_keeps_the_input() -> None:
    rng = np.random.default_rng(0)
    frame = rng.normal(128, 12, (1, 48, 64)).clip(0, 255).astype(np.uint8)
    before = frame.copy()
    synth = anomaly.Synthesizer(3)
    for kind in synth.kinds:
        out = frame.astype(np.float32)
        kind(out)
        assert np.abs(out - frame).max() > 5, kind.__name__  # a visible change ...
        assert (np.abs(out - frame) > 1).mean() < 0.5, kind.__name__  # ... of a part of the frame
    made = synth(frame)
    assert made.dtype == np.uint8 and made.shape == frame.shape and np.array_equal(frame, before)
    a, b = anomaly.Synthesizer(5), anomaly.Synthesizer(5)
    assert np.array_equal(a(frame), b(frame))  # reproducible by seed (resumed runs repeat epochs)


def test_pits_are_small_points_and_cracks_thin_wandering_lines() -> None:
    """The point and line morphologies: a pit touches a few pixels of the frame; a crack is long
    and thin (its changed pixels lie along a path, far fewer than its extent squared) and, over
    many draws, typically not straight (a straight scar keeps within its own width of one line)."""
    frame = np.full((1, 160, 192), 120, np.uint8)
    synth = anomaly.Synthesizer(11)
    pit_areas, pit_extents, crack_areas, crack_fill, crack_bends = [], [], [], [], []
    for _ in range(40):
        out = frame.astype(np.float32)
        synth._pit(out)
        changed = np.abs(out - frame)[0] > 1
        pit_areas.append(changed.mean())
        rows, cols = np.nonzero(changed)
        pit_extents.append(max(np.ptp(rows), np.ptp(cols)) + 1)
        out = frame.astype(np.float32)
        synth._crack(out)
        ys, xs = np.nonzero(np.abs(out - frame)[0] > 1)
        crack_areas.append(len(ys) / frame[0].size)
        extent = max(np.ptp(ys), np.ptp(xs)) + 1
        crack_fill.append(len(ys) / extent**2)
        # How far the changed pixels stray from the straight line through them (principal axis).
        points = np.stack([ys, xs], axis=1).astype(float)
        points -= points.mean(axis=0)
        minor = np.linalg.svd(points, full_matrices=False)[2][1]
        crack_bends.append(float(np.abs(points @ minor).max()))
    assert max(pit_areas) < 0.01 and min(pit_areas) > 0  # a point: under 1% of the frame, never nothing,
    assert max(pit_extents) < 0.2 * 160  # ... and compact
    assert max(crack_areas) < 0.02 and min(crack_areas) > 0  # a line, not a region; never nothing
    assert float(np.median(crack_fill)) < 0.15  # ... and not a compact patch
    assert float(np.median(crack_bends)) > 3.0  # typically strays several pixels off one straight line


def test_regions_are_large_faint_changes_of_the_frames_own_texture() -> None:
    """The area morphology (uneven surface, stain, mura): a tenth to half of the frame changes,
    faintly, and what changes inside is the frame's own texture (rougher or smoother), not a
    pasted patch or noise of its own: a featureless frame still gets a visible change of level."""
    rng = np.random.default_rng(0)
    frame = np.clip(rng.normal(120, 12, (1, 160, 192)), 0, 255).astype(np.uint8)
    synth = anomaly.Synthesizer(4)
    areas, rough, smooth, levels = [], 0, 0, []
    for _ in range(40):
        out = frame.astype(np.float32)
        synth._region(out)
        diff = (out - frame)[0]
        changed = np.abs(diff) > 3
        areas.append(changed.mean())
        # Inside the region the pixel-to-pixel texture is scaled; outside it is left alone.
        grain_in = np.abs(np.diff(out[0], axis=1))[changed[:, 1:]].mean()
        grain_out = np.abs(np.diff(out[0], axis=1))[~changed[:, 1:]].mean()
        rough += grain_in > 1.3 * grain_out
        smooth += grain_in < 0.8 * grain_out
        levels.append(abs(float(diff[changed].mean())) / frame.std())
    assert min(areas) > 0.05 and float(np.median(areas)) > 0.15 and max(areas) < 0.7  # large, not the frame
    assert rough >= 10 and smooth >= 10  # both directions drawn
    assert float(np.median(levels)) < 0.5  # faint: the level shifts by a fraction of the frame's spread
    flat = np.full((1, 64, 80), 120, np.uint8)
    out = flat.astype(np.float32)
    synth._region(out)
    assert (np.abs(out - flat) >= 1.5).mean() > 0.05  # never an "anomaly" that changed nothing


def test_colour_frames_also_get_stains_of_the_same_brightness() -> None:
    rng = np.random.default_rng(0)
    frame = np.clip(rng.normal(120, 6, (3, 64, 80)), 0, 255).astype(np.uint8)
    synth = anomaly.Synthesizer(7)
    luma = anomaly.Synthesizer.LUMA_RGB
    peaks = []
    for _ in range(20):
        out = frame.astype(np.float32)
        synth._discolour(out)
        diff = out - frame
        changed = np.abs(diff).max(axis=0) > 3
        assert 0.01 < changed.mean() < 0.5  # a region of the frame
        colour_change = np.abs(diff[:, changed]).max(axis=0).mean()
        brightness_change = np.abs(np.tensordot(luma, diff, axes=1)[changed]).mean()
        assert brightness_change < 0.05 * colour_change  # a change of colour, not of brightness
        peaks.append(float(np.abs(diff).max()))
    assert float(np.median(peaks)) > 6  # visible: as strong as the gray kinds' level shifts
    # Drawn among the kinds for colour frames.
    colour = anomaly.Synthesizer(1)
    drawn = [colour(frame) for _ in range(60)]
    assert any(np.abs(np.tensordot(luma, d.astype(np.float32) - frame, axes=1)).max() < 2
               and np.abs(d.astype(np.float32) - frame).max() > 8 for d in drawn)


def test_the_training_set_is_balanced_good_and_synthetic() -> None:
    good = np.full((5, 1, 16, 16), 120, np.uint8)
    train = anomaly.AnomalyTrainSet(good, None, anomaly.Synthesizer(0))
    labels = [train[i][1] for i in range(len(train))]
    assert labels == [0] * 5 + [1] * 5 and train.labels.tolist() == labels
    assert np.array_equal(train[0][0].numpy(), good[0])


def test_the_view_refuses_what_cannot_be_learnt(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "few", counts={"good": 12, "scratch": 10, "spot": 10})
    with pytest.raises(DatasetError, match="needs at least 20 good images .* has 12 of class 'good'"):
        anomaly.anomaly_view(ds)
    none = make_dataset(tmp_path / "none", classes=("scratch", "spot"), good_class=None)
    with pytest.raises(DatasetError, match="needs a good class to learn from"):
        anomaly.anomaly_view(none)
    view = anomaly.anomaly_view(make_dataset(tmp_path / "ok", counts={"good": 25, "scratch": 3, "spot": 4}))
    assert view.classes == ["good", "anomaly"] and sum(s.label == "anomaly" for s in view.samples) == 7


def test_the_view_keeps_the_datasets_name_for_its_good_class(tmp_path: Path) -> None:
    # The card's classes come from the view, the labelling page offers them and a dataset build
    # maps labels to classes by name: a good class renamed "good" came back as a new defect class.
    ds = make_dataset(tmp_path / "tile", classes=("Free", "scratch", "spot"), good_class="Free",
                      counts={"Free": 25, "scratch": 3, "spot": 4})
    view = anomaly.anomaly_view(ds)
    assert view.classes == ["Free", "anomaly"] and view.good_class == "Free"
    assert sorted({s.label for s in view.samples}) == ["Free", "anomaly"]
    assert sum(s.label == "Free" for s in view.samples) == 25
    named = make_dataset(tmp_path / "named", classes=("anomaly", "scratch"), good_class="anomaly",
                         counts={"anomaly": 25, "scratch": 3})
    with pytest.raises(DatasetError, match="names its defect class 'anomaly', which is 'named''s good class"):
        anomaly.anomaly_view(named)


@pytest.mark.slow
def test_an_anomaly_model_of_a_good_class_named_otherwise_carries_that_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    items = [(Sample(f"images/Free/{i:03d}.png", "Free"), cv2.imencode(".png", draw("good", rng, 32))[1].tobytes())
             for i in range(150)]
    ds = write_dataset(tmp_path / "tile", name="tile", classes=["Free"], good_class="Free", items=items)
    result = train_main(load_config(None, {**FAST, "epochs": 1, "data": ds.root, "models_dir": tmp_path / "models"}))
    assert result.card.classes == ["Free", "anomaly"] and result.card.good_class == "Free"
    verify_version(result.card, result.path)


def test_defects_are_held_out_of_training(tmp_path: Path) -> None:
    view = anomaly.anomaly_view(make_dataset(tmp_path / "d", counts={"good": 60, "scratch": 20, "spot": 21}))
    split = split_dataset(view, seed=0, val_fraction=0.15, test_fraction=0.15, held_out=["anomaly"]).split
    where = {s.path: split[s.path] for s in view.samples if s.label == "anomaly"}
    assert "train" not in where.values()
    assert sum(v == "val" for v in where.values()) == 21 and sum(v == "test" for v in where.values()) == 20


@pytest.mark.slow
def test_anomaly_mode_trains_on_good_images_and_serves_as_a_classifier(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "parts", counts={"good": 160, "scratch": 20, "spot": 20})
    result = train_main(load_config(None, {**FAST, "data": ds.root, "models_dir": tmp_path / "models"}))
    card = load_card(result.path)
    verify_version(card, result.path)  # hashes, then the golden frames through onnxruntime
    assert card.mode == "anomaly" and card.classes == ["good", "anomaly"] and card.good_class == "good"
    assert card.thresholds.target == {"max_overkill": 0.1}
    assert "real defective validation images" in card.training["anomaly"]["selection"]
    # The map is the density of the network's own features (parity and golden maps verified above).
    assert card.defect_map is not None and card.defect_map.cells == "feature_density"
    assert card.training["anomaly"]["map"]["good_cells"] > 0
    with (result.path / "split.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    labels = {s.path: s.label for s in read_dataset(ds.root).samples}
    assert not [r for r in rows if r["split"] == "train" and labels[r["path"]] != "good"]
    assert card.metrics["test"]["operating_point"]["escape"]["n"] == 20  # every held-out defect of test


@pytest.mark.slow
def test_good_images_alone_are_enough_and_mixed_sizes_are_letterboxed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    items = []
    for i in range(150):
        size = (32, 32) if i % 2 else (40, 28)  # two frame sizes in the good class
        img = cv2.resize(draw("good", rng, 40), size[::-1])
        items.append((Sample(f"images/good/{i:03d}.png", "good"), cv2.imencode(".png", img)[1].tobytes()))
    ds = write_dataset(tmp_path / "line", name="line", classes=["good"], good_class="good", items=items)
    result = train_main(load_config(None, {**FAST, "data": ds.root, "models_dir": tmp_path / "models"}))
    assert result.card.mode == "anomaly" and result.card.input.geometry == "letterbox"
    assert "synthetic anomalies" in result.card.training["anomaly"]["selection"]



@pytest.mark.slow
def test_a_sixteen_bit_cameras_good_frames_train_an_anomaly_model_that_serves_them(tmp_path: Path) -> None:
    from inspection.preprocess import prepare_frame

    rng = np.random.default_rng(1)
    items = []
    for i in range(150):
        img = draw("good", rng, 32).astype(np.uint16) * 16 + 37  # a 12-bit camera's values
        items.append((Sample(f"images/good/{i:03d}.png", "good"), cv2.imencode(".png", img)[1].tobytes()))
    ds = write_dataset(tmp_path / "deep", name="deep", classes=["good"], good_class="good", items=items)
    result = train_main(load_config(None, {**FAST, "data": ds.root, "models_dir": tmp_path / "models"}))
    levels = result.card.input.levels
    assert result.card.mode == "anomaly" and levels is not None and levels[1] <= 4400  # the frames' range
    with np.load(result.path / result.card.golden.file) as golden:
        for name, frame in zip(golden["names"], golden["inputs"], strict=True):
            _, served = prepare_frame((ds.root / str(name)).read_bytes(), result.card.input)
            assert np.array_equal(served, frame)  # serving maps the 16-bit frame as training did


@pytest.mark.slow
def test_a_station_moves_from_an_anomaly_model_to_a_classifier_through_the_gate(tmp_path: Path) -> None:
    from inspection.promotion import promote_gated
    from inspection.registry import ModelRegistry

    ds = make_dataset(tmp_path / "parts", counts={"good": 160, "scratch": 20, "spot": 20})
    models = tmp_path / "models"
    first = train_main(load_config(None, {**FAST, "data": ds.root, "models_dir": models, "name": "gate"}))
    classify = {**FAST, "mode": "classify", "max_overkill": None, "max_escape": 0.2}
    second = train_main(load_config(None, {**classify, "data": ds.root, "models_dir": models, "name": "gate"}))
    reg = ModelRegistry(models)
    promote_gated(reg, "gate", first.card.version, station="line1")
    # --force: whichever escapes more on these few images, the comparison itself is what is checked.
    result = promote_gated(reg, "gate", second.card.version, station="line1", data=ds.root, split="all",
                           force=True, reason="test")
    gate = result.gate
    assert gate["basis"] == "comparison set" and gate["status"] in ("passed", "overridden")
    # Both models were judged on the very same defective images of the dataset.
    assert gate["active_escape"]["n"] == gate["candidate_escape"]["n"] == 40
    assert reg.active("line1").card.mode == "classify"  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision ResNet-18 state dict as ImageNet weights are stored (random here: no downloads)."""
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


@pytest.mark.slow
def test_with_pretrained_weights_a_memory_of_good_patches_is_the_model(tmp_path: Path, resnet_weights: Path) -> None:
    """The feature-memory method: no epochs, the memory and normalisation inside the graph, parity,
    golden frames and maps as for every model, and the defects it never saw score above good parts."""
    import onnxruntime as ort

    ds = make_dataset(tmp_path / "parts", counts={"good": 120, "scratch": 20, "spot": 20}, size=64)
    cfg = {**FAST, "image_size": 64, "arch": "resnet18", "pretrained_path": resnet_weights,
           "data": ds.root, "models_dir": tmp_path / "models"}
    result = train_main(load_config(None, cfg))
    card = load_card(result.path)
    verify_version(card, result.path)  # hashes, golden probabilities and golden maps
    memory = card.training["anomaly"]
    assert memory["method"].startswith("feature memory") and 0 < memory["memory_patches"] <= 4096
    assert card.training["epochs_run"] == 0 and card.training["pretrained"] == str(resnet_weights)
    # No epochs, so no training step was timed to choose a precision.
    assert "precision" not in {c["setting"] for c in card.training["recipe"]}
    assert card.parity.passed and card.defect_map is not None and card.defect_map.height == 8
    assert card.defect_map.cells == "memory_distance"
    # The normalisation is inside the graph: good validation frames score around P = 0.5 (z ~ 0).
    assert 0.2 < memory["score_mean"] and memory["score_std"] > 0
    test = card.metrics["test"]
    assert test["roc_auc"] > 0.7, test["roc_auc"]  # random features still tell a big blob from texture
    session = ort.InferenceSession(str(result.path / card.model_file), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities", "defect_map"]


def test_the_memory_method_is_refused_without_weights_or_a_resnet(tmp_path: Path, resnet_weights: Path) -> None:
    from inspection.errors import TrainingError

    ds = make_dataset(tmp_path / "parts", counts={"good": 80, "scratch": 4, "spot": 4})
    base = {**FAST, "data": ds.root, "models_dir": tmp_path / "models", "anomaly_method": "memory"}
    with pytest.raises(TrainingError, match="needs a torchvision ResNet architecture and its pretrained weights"):
        train_main(load_config(None, {**base, "arch": "resnet18", "pretrained": False}))
    with pytest.raises(TrainingError, match="arch 'linecnn'"):
        train_main(load_config(None, {**base, "pretrained_path": resnet_weights}))
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").glob("*/v*"))


@pytest.mark.slow
def test_the_map_of_a_model_trained_on_frames_alone_finds_where_anomalies_are() -> None:
    """Trained only on "this frame has an anomaly somewhere", the map's hottest cell lands on new
    synthetic anomalies far more often than chance: the class-activation map localises without
    position labels. (Supervising the positions too, DRAEM-style, with a focal loss on each cell's
    anomaly cover, was tried here and found *fewer*: 40 of 60 against 52 of 60; not adopted.)

    The mechanism is checked with the four area-like kinds this test was built on. With the pits
    and cracks in the mix too (the default since the twelfth session) this toy localised worse
    when they were added: 21 of 60 (chance ~9 of 60) -- on 64 frames of pure noise a one-pixel pit
    looks like noise; 43 of 60 with the network as it is since (the next test). On magnetic
    tile the same change left the pixel AUROC where it was (0.706 against 0.707) and raised the
    image AUROC from 0.761 to 0.875 (docs/training.md), so the real data decided."""
    frames = _noise_frames()
    model = _trained_on_noise(frames, _area_kinds)
    hits, trials, chance = _hottest_cell_hits(model, frames, _area_kinds(99))
    assert hits / trials > max(0.7, 3 * chance), (hits, trials, chance)


@pytest.mark.slow
def test_the_feature_density_map_finds_anomalies_and_leaves_the_frame_score_alone() -> None:
    """The synthetic method's exported map is the density of the network's own features over good
    surface (``FeatureDensity``): normalised on the good cells it was given, its hottest cell lands
    on new synthetic anomalies of every default kind far more often than chance, and the frame's
    logits are the head's to the bit. On this toy of pure noise both maps find them equally often
    (43 of 60 each); where the density wins is on real surfaces, whose cracks, breaks and edge
    wrinkles the head's per-cell view placed barely (docs/training.md: within-frame pixel AUROC
    0.64 -> 0.93 for magnetic tile's cracks, 0.70 -> 0.89 for the coating set's edge wrinkles)."""
    import torch

    from training.defectmap import FeatureDensity, logits_and_map, with_density_map

    frames = _noise_frames()
    model = _trained_on_noise(frames, anomaly.Synthesizer)
    density, info = with_density_map(model, frames[:48], frames[48:], good_index=0)
    assert isinstance(density, FeatureDensity) and info["good_cells"] == 48 * 16 and info["channels"] == 128
    x = torch.from_numpy(frames[:8])
    with torch.no_grad():
        assert torch.equal(density(x), model(x)) and torch.equal(logits_and_map(density, x, 0)[0], model(x))
        z = density.position_logits(torch.from_numpy(frames[48:]))[1][:, 1]
    assert abs(float(z.mean())) < 1e-3 and abs(float(z.std()) - 1) < 0.02  # normalised on these good cells
    cam, trials, chance = _hottest_cell_hits(model, frames, anomaly.Synthesizer(99))
    found, _, _ = _hottest_cell_hits(density, frames, anomaly.Synthesizer(99))
    assert found / trials > max(0.6, 2.5 * chance) and found >= cam - 5, (found, cam, trials, chance)


def _noise_frames() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(128, 10, (64, 1, 64, 64)).clip(0, 255).astype(np.uint8)


def _area_kinds(seed: int) -> anomaly.Synthesizer:
    synth = anomaly.Synthesizer(seed)
    synth.kinds = [synth._cutpaste, synth._scar, synth._blob, synth._texture]
    return synth


def _trained_on_noise(frames: np.ndarray, synthesizer: Callable[[int], anomaly.Synthesizer]) -> Any:
    """``linecnn`` trained 40 epochs on good noise frames vs their synthetic anomalies."""
    import torch
    from torch import nn

    from training.models import Classifier, get_model

    torch.manual_seed(0)
    model = Classifier(get_model("linecnn", num_classes=2), mean=[0.5], std=[0.05])
    data = anomaly.AnomalyTrainSet(frames, None, synthesizer(0))
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    opt, loss = torch.optim.AdamW(model.parameters(), lr=3e-3), nn.CrossEntropyLoss()
    model.train()
    for _ in range(40):
        for images, labels in loader:
            opt.zero_grad()
            loss(model(images), labels).backward()
            opt.step()
    return model.eval()


def _hottest_cell_hits(model: Any, frames: np.ndarray, synth: anomaly.Synthesizer,
                       trials: int = 60) -> tuple[int, int, float]:
    """(how often the map's hottest cell touches a new synthetic anomaly, trials, chance)."""
    import torch

    from training.defectmap import logits_and_map

    hits, covered = 0, []
    for k in range(trials):
        good = frames[k % len(frames)]
        img = synth(good)
        changed = np.abs(img.astype(int) - good.astype(int))[0] > 1  # where the anomaly is
        with torch.no_grad():
            _, heat = logits_and_map(model, torch.from_numpy(img[None]), good_index=0)
        r, c = np.unravel_index(int(heat[0].argmax()), heat.shape[1:])  # 4 x 4 cells of 16 px
        hits += bool(changed[16 * r : 16 * r + 16, 16 * c : 16 * c + 16].any())
        covered.append(changed.reshape(4, 16, 4, 16).any(axis=(1, 3)).mean())
    return hits, trials, float(np.mean(covered))  # chance: a cell drawn at random touches it this often
