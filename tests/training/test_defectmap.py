"""Defect maps in the graph: the same forward pass gives the frame's logits and the map, for every
architecture, through the tile grid and the test-time mirror, and the exported ONNX graph gives
what torch gives (scores and maps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from inspection.card import InputSpec, TileGrid
from inspection.preprocess import tile_boxes
from training import export as onnx_export
from training.defectmap import logits_and_map, predict_maps
from training.models import Classifier, FlipAverage, TiledClassifier, get_model, list_models


@pytest.mark.parametrize("arch", list_models())
def test_every_architecture_gives_its_own_logits_and_a_map_in_0_1(arch: str) -> None:
    torch.manual_seed(0)
    model = Classifier(get_model(arch, num_classes=3), mean=[0.5], std=[0.25]).eval()
    x = torch.randint(0, 256, (2, 1, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        logits, heat = logits_and_map(model, x, good_index=0)
        assert torch.equal(logits, model(x))
    assert heat.ndim == 3 and heat.shape[0] == 2 and heat.shape[1] >= 1
    assert float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0


def test_the_map_is_one_minus_p_good_of_the_head_at_each_position() -> None:
    torch.manual_seed(1)
    model = Classifier(get_model("linecnn", num_classes=2), mean=[0.5], std=[0.25]).eval()
    x = torch.randint(0, 256, (1, 1, 32, 32), dtype=torch.uint8)
    backbone = model.backbone
    with torch.no_grad():
        feats = backbone.features(backbone.standardize(model.normalize(x)))  # [1, C, 2, 2]
        expected = 1.0 - torch.softmax(backbone.fc(feats[0, :, 1, 0]), dim=0)[1]  # good class = 1
        _, heat = logits_and_map(model, x, good_index=1)
    assert heat.shape == (1, 2, 2)
    assert float(heat[0, 1, 0]) == pytest.approx(float(expected), abs=1e-6)


def test_tiles_and_mirror_compose_as_the_frame_score_does() -> None:
    torch.manual_seed(2)
    spec = InputSpec(height=96, width=160, tiles=TileGrid(rows=2, cols=3, tile_height=64, tile_width=64))
    base = Classifier(get_model("linecnn", num_classes=2), mean=[0.5], std=[0.25]).eval()
    tiled = TiledClassifier(base, tile_boxes(spec), good_index=0).eval()
    mirrored = FlipAverage(base, hflip=True, vflip=False).eval()
    x = torch.randint(0, 256, (3, 1, 96, 160), dtype=torch.uint8)
    with torch.no_grad():
        logits, heat = logits_and_map(tiled, x, good_index=0)
        assert torch.allclose(logits, tiled(x), atol=1e-6)
        # Each tile's map lands at its place (cells of 16 px); overlaps keep the larger value.
        _, top_left = logits_and_map(base, x[:, :, :64, :64], good_index=0)
        _, bottom_right = logits_and_map(base, x[:, :, 32:, 96:], good_index=0)
        m_logits, m_heat = logits_and_map(mirrored, x, good_index=0)
        assert torch.allclose(m_logits, mirrored(x), atol=1e-6)
        _, plain = logits_and_map(base, x, good_index=0)
        _, flipped = logits_and_map(base, torch.flip(x, [3]), good_index=0)
    assert heat.shape == (3, 6, 10)
    assert torch.all(heat[:, :4, :4] >= top_left) and torch.all(heat[:, 2:, 6:] >= bottom_right)
    assert torch.equal(heat[:, 0, 0], top_left[:, 0, 0])  # a corner cell only one tile covers
    assert torch.equal(heat[:, 5, 9], bottom_right[:, 3, 3])
    # The mirror's map is mirrored back before averaging: it stays where the defect is.
    assert torch.allclose(m_heat, (plain + torch.flip(flipped, [2])) / 2, atol=1e-6)


def _exported_mirrored_linecnn(tmp_path: Path, spec: InputSpec, seed: int) -> tuple[FlipAverage, Any]:
    """A random 3-class linecnn with the test-time mirror, exported with its map: (model, session)."""
    torch.manual_seed(seed)
    model = FlipAverage(Classifier(get_model("linecnn", num_classes=3), mean=[0.4], std=[0.2]),
                        hflip=True, vflip=False).eval()
    path = tmp_path / "model.onnx"
    onnx_export.export_onnx(model, path, spec, map_output="defect_map", good_index=0)
    return model, onnx_export.ort_session(path)


def test_the_exported_graph_outputs_probabilities_and_maps_equal_to_torch(tmp_path: Path) -> None:
    spec = InputSpec(height=48, width=64)
    model, session = _exported_mirrored_linecnn(tmp_path, spec, seed=3)
    assert [o.name for o in session.get_outputs()] == ["probabilities", "defect_map"]
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 48, 64), dtype=np.uint8)
    probs, maps = onnx_export.ort_predict_maps(session, images, spec, "defect_map")
    torch_maps = predict_maps(model, images, good_index=0)
    assert maps.shape == (5, 3, 4)
    assert onnx_export.map_parity(torch_maps, maps, tolerance=1e-4) <= 1e-4
    with torch.no_grad():
        torch_probs = torch.softmax(model(torch.from_numpy(images)), dim=1).numpy()
    assert np.max(np.abs(torch_probs - probs)) <= 1e-4
    # Golden frames carry the maps and re-score them.
    onnx_export.write_golden(tmp_path / "golden.npz", images, probs, ["a"] * 5, maps=maps)
    assert onnx_export.check_golden(session, tmp_path / "golden.npz", spec, tolerance=1e-4) <= 1e-4
    with np.load(tmp_path / "golden.npz") as g:
        altered = {k: g[k] for k in g.files}
    altered["maps"] = altered["maps"] + 0.01
    np.savez(tmp_path / "golden.npz", **altered)
    with pytest.raises(Exception, match="golden frames"):
        onnx_export.check_golden(session, tmp_path / "golden.npz", spec, tolerance=1e-4)


def test_the_exported_map_is_as_hot_as_its_frame_is_suspicious_and_stays_in_place(tmp_path: Path) -> None:
    # A good-looking frame must not show a hot spot: the graph weights each frame's cells by its
    # own P(defect); one positive factor per frame leaves the peak and the box where they were.
    from inspection.defectmap import locate

    spec = InputSpec(height=64, width=80)
    model, session = _exported_mirrored_linecnn(tmp_path, spec, seed=4)
    images = np.random.default_rng(1).integers(0, 256, (6, 1, 64, 80), dtype=np.uint8)
    probs, maps = onnx_export.ort_predict_maps(session, images, spec, "defect_map")
    with torch.no_grad():
        raw = logits_and_map(model, torch.from_numpy(images), good_index=0)[1].numpy()
    frame = 1.0 - probs[:, 0]
    assert np.all(frame < 0.999)  # so an unweighted map could not pass for a weighted one
    np.testing.assert_allclose(maps, raw * frame[:, None, None], atol=1e-5)
    np.testing.assert_allclose(predict_maps(model, images, good_index=0), maps, atol=1e-4)
    for weighted, cells in zip(maps, raw, strict=True):
        a, b = locate(weighted, spec, 400, 320), locate(cells, spec, 400, 320)
        assert (a.peak, a.box) == (b.peak, b.box)
    # Without a good class (defect types only) the cells keep their own meaning.
    with torch.no_grad():
        _, plain = logits_and_map(model, torch.from_numpy(images), good_index=None)
    np.testing.assert_allclose(predict_maps(model, images, good_index=None), plain.numpy(), atol=1e-6)


def test_a_feature_density_map_fits_on_tiles_and_exports_under_the_mirror_equal_to_torch(tmp_path: Path) -> None:
    from inspection.errors import TrainingError
    from training.defectmap import FeatureDensity, map_cells, with_density_map

    torch.manual_seed(5)
    spec = InputSpec(height=96, width=160, tiles=TileGrid(rows=2, cols=3, tile_height=64, tile_width=64))
    base = Classifier(get_model("linecnn", num_classes=2), mean=[0.5], std=[0.25]).eval()
    tiled = TiledClassifier(base, tile_boxes(spec), good_index=0).eval()
    rng = np.random.default_rng(2)
    good = rng.normal(128, 12, (40, 1, 96, 160)).clip(0, 255).astype(np.uint8)
    fitted, info = with_density_map(tiled, good[:30], good[30:], good_index=0)
    # The network only sees tiles, so the Gaussian is fitted on the tiles' cells: 6 tiles of 4 x 4.
    assert fitted is tiled and isinstance(tiled.classifier, FeatureDensity)
    assert info["good_cells"] == 30 * 6 * 16 and info["val_good_cells"] == 10 * 6 * 16
    model = FlipAverage(tiled, hflip=True, vflip=False).eval()
    assert map_cells(model) == "feature_density" and map_cells(FlipAverage(base, hflip=True, vflip=False)) == \
        "class_activation"
    images = good[30:].copy()
    images[:, :, 2:12, 100:110] = 255  # a bright square on the good texture: far from good cells
    path = tmp_path / "model.onnx"
    onnx_export.export_onnx(model, path, spec, map_output="defect_map", good_index=0)
    session = onnx_export.ort_session(path)
    probs, maps = onnx_export.ort_predict_maps(session, images, spec, "defect_map")
    assert onnx_export.map_parity(predict_maps(model, images, good_index=0), maps, tolerance=1e-4) <= 1e-4
    head_only = FlipAverage(TiledClassifier(base, tile_boxes(spec), good_index=0), hflip=True, vflip=False).eval()
    with torch.no_grad():
        x = torch.from_numpy(images)
        assert torch.equal(model(x), head_only(x))  # the frame score is the tiled head's, untouched
        torch_probs = torch.softmax(model(x), dim=1).numpy()
        _, cells = logits_and_map(model, x, good_index=0)
    assert np.max(np.abs(torch_probs - probs)) <= 1e-4
    # Before the frame's weighting, the square's cell is among the hottest (cells of 16 px; a
    # random network's 46-px windows spread it to its neighbours) and the far rows are colder.
    assert all(c[0, 6] >= c.max() - 1e-3 and c[4:].max() < c[0, 6] for c in cells.numpy())
    with pytest.raises(TrainingError, match="good validation frames"):
        with_density_map(base, good[:30], good[:0], good_index=0)
