"""Defect maps computed inside the exported graph: *where* a frame looks defective.

A reject that says only "P(defect) 0.93" leaves the engineer and the auditor guessing. Every
architecture here ends in a spatial feature map followed by global pooling and a small head
(linear, or a per-position MLP). Applying that same head at *every position* of the feature map
(a class-activation map, Zhou et al. 2016, generalised from average pooling to any pooling with
a position-wise head) gives per-position class logits at the feature map's resolution; their
softmax gives, per cell, the classifier's own P(defect) = 1 - P(good). The map therefore costs
one position-wise head over a small grid (no second pass, no gradient) and means the same thing
as the frame score. Anomaly mode's classifier (good vs synthetic anomaly) yields the anomaly map
the same way.

The map is computed from the very features that give the frame's logits, in one forward pass:
``MapOutputs(model)`` returns ``(logits, map)`` where ``logits`` are exactly what ``model``
returns. The wrappers of ``training.models`` compose as the frame score does: a test-time
mirror averages the mirrored frame's map (mirrored back); a tile grid pastes each tile's map
at its place, overlaps taking the maximum (the frame is as suspicious as its worst tile).

Without a good class (defect-type classifiers) a cell's value is its most confident class
probability, as the frame's score is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inspection.card import MapCells
from inspection.errors import TrainingError
from training.memory import FeatureMemory
from training.models import (
    Classifier,
    FlipAverage,
    LineCNN,
    TiledClassifier,
    TinyResNet,
    frames_per_batch,
    scoring_frames,
)


def grid_outputs(backbone: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(frame logits [N, K], last feature grid [N, C, h, w], per-position logits [N, K, h, w]) of a
    registered architecture, from one pass."""
    from torchvision.models import EfficientNet, MobileNetV3, ResNet

    if isinstance(backbone, LineCNN):
        feats = backbone.features(backbone.standardize(x))
        logits = backbone.fc(backbone.drop(torch.flatten(backbone.pool(feats), 1)))
        return logits, feats, _per_position(backbone.fc, feats)
    if isinstance(backbone, TinyResNet):
        feats = backbone.features(backbone.stem(backbone.standardize(x)))
        pooled = torch.cat([torch.flatten(backbone.avg(feats), 1), torch.flatten(backbone.max(feats), 1)], dim=1)
        logits = backbone.fc(backbone.drop(pooled))
        # The head reads [average, max] of each channel; at one position both are that position's value.
        return logits, feats, _per_position(backbone.fc, torch.cat([feats, feats], dim=1))
    if isinstance(backbone, ResNet):
        b = backbone
        feats = b.layer4(b.layer3(b.layer2(b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x))))))))
        return b.fc(torch.flatten(b.avgpool(feats), 1)), feats, _per_position(b.fc, feats)
    if isinstance(backbone, MobileNetV3 | EfficientNet):
        feats = backbone.features(x)
        logits = backbone.classifier(torch.flatten(backbone.avgpool(feats), 1))
        return logits, feats, _per_position(backbone.classifier, feats)
    raise TrainingError(f"no defect map for architecture {type(backbone).__name__}: "
                        "its head cannot be applied per position")


def position_logits(backbone: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(frame logits [N, K], per-position logits [N, K, h, w]) of a registered architecture."""
    logits, _, positions = grid_outputs(backbone, x)
    return logits, positions


def _per_position(head: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """``head`` (acting on the last axis) applied at every position of ``feats`` [N, C, h, w]."""
    return head(feats.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _suspicion(position_logits: torch.Tensor, good_index: int | None) -> torch.Tensor:
    """Per-position logits [N, K, h, w] -> the map [N, h, w] in 0..1, meaning as the frame score."""
    probs = torch.softmax(position_logits.float(), dim=1)
    if good_index is None:
        return probs.max(dim=1).values
    return 1.0 - probs[:, good_index]


#: Shrinkage of the good cells' covariance towards its mean variance (a fraction of the trace):
#: keeps the inverse stable where channels are nearly collinear or rarely active (ReLU features of
#: a small network), without changing the distance's scale.
SHRINKAGE = 0.01


class FeatureDensity(nn.Module):
    """A from-scratch anomaly model whose map says how unlike good surface each cell looks.

    The class-activation map of a network trained on good vs synthetic anomalies is trained only
    through the frame's strongest cell (global max pooling), so its other cells' P(anomaly) means
    little: on magnetic tile it placed blowholes well but cracks and breaks poorly within their
    frames (pixel AUROC within the frame 0.64 for both, against 0.93 and 0.87 for this map on the
    same exported network; docs/training.md). Every cell's features describe its surface: the map is the
    Mahalanobis distance of each cell's last-stage features to one Gaussian fitted on every cell of
    the good training frames (position-free: parts need not be aligned), a PaDiM-style density
    (Defard et al. 2021) on the network's own features instead of pretrained ones. Per cell the
    logits are ``[0, z]`` with ``z = (d - mu) / sigma`` over the good validation frames' cells, so
    the cell's value is P(anomaly) = sigmoid(z), as the feature memory's is.

    The frame's logits are exactly the classifier's (``forward``): the reject gate, its threshold
    and every figure of the frame are untouched; only the map changes. In the graph the distance is
    one 1 x 1 convolution (the whitening ``L^-1 (x - mean)``, ``Sigma = L L^T``) and a sum of
    squares over the small grid, computed from the features the frame score already needs.
    """

    whiten: torch.Tensor
    shift: torch.Tensor
    mu: torch.Tensor
    sigma: torch.Tensor

    def __init__(self, classifier: Classifier, channels: int, good_index: int) -> None:
        super().__init__()
        self.classifier = classifier
        self.good_index = good_index
        # L^-1 as a 1 x 1 convolution's weight and -L^-1 mean as its bias (set by with_density_map).
        self.register_buffer("whiten", torch.eye(channels)[:, :, None, None])
        self.register_buffer("shift", torch.zeros(channels))
        self.register_buffer("mu", torch.zeros(()))
        self.register_buffer("sigma", torch.ones(()))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(frame logits, last feature grid) of pixels ``x``."""
        logits, feats, _ = grid_outputs(self.classifier.backbone, self.classifier.normalize(x))
        return logits, feats

    def distances(self, feats: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance [N, h, w] of each cell's features to the good cells' Gaussian."""
        return torch.sqrt(F.conv2d(feats.float(), self.whiten, self.shift).square().sum(dim=1) + 1e-12)

    def position_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(frame logits [N, 2], per-position logits [N, 2, h, w]: ``[0, z]`` in class order)."""
        logits, feats = self.features(x)
        z = (self.distances(feats) - self.mu) / self.sigma
        zero = torch.zeros_like(z)
        cells = [zero, z] if self.good_index == 0 else [z, zero]
        return logits, torch.stack(cells, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


@torch.no_grad()
def _feature_grids(density: FeatureDensity, images: np.ndarray, boxes: Sequence[tuple[int, ...]] | None,
                   batch_size: int) -> Iterator[torch.Tensor]:
    """The last feature grid ``[n, C, h, w]`` of ``images``, a batch at a time (cut into ``boxes``
    first when the model scores tiles: the network only ever sees tiles). Streamed: a few thousand
    frames' cells at float64 would otherwise hold hundreds of MB at once."""
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size]))
        if boxes is not None:
            x = torch.cat([x[:, :, y : y + h, xx : xx + w] for xx, y, w, h in boxes], dim=0)
        yield density.features(x)[1]


@torch.no_grad()
def with_density_map(model: nn.Module, good_train: np.ndarray, good_val: np.ndarray, good_index: int, *,
                     batch_size: int = 64) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` (a ``Classifier``, or a ``TiledClassifier`` of one) with its map replaced by the
    density of its own features (``FeatureDensity``), fitted on the good training frames' cells and
    normalised on the good validation frames' cells; and what was fitted, for the card.

    Raises:
        TrainingError: no good validation frame to normalise on, or an architecture without a
            feature grid (``grid_outputs``).
    """
    tiled = model if isinstance(model, TiledClassifier) else None
    classifier = tiled.classifier if tiled is not None else model
    if not isinstance(classifier, Classifier):
        raise TrainingError(f"no feature density map for {type(classifier).__name__}")
    if len(good_val) == 0:
        raise TrainingError("the feature density map is normalised on good validation frames; the split has none")
    classifier.eval()
    boxes = tiled.boxes if tiled is not None else None
    probe = grid_outputs(classifier.backbone, classifier.normalize(torch.from_numpy(good_train[:1])))[1]
    channels = int(probe.shape[1])
    density = FeatureDensity(classifier, channels, good_index).eval()
    cells, total, outer = 0, torch.zeros(channels, dtype=torch.float64), torch.zeros((channels, channels),
                                                                                      dtype=torch.float64)
    for grid in _feature_grids(density, good_train, boxes, batch_size):
        flat = grid.double().permute(0, 2, 3, 1).reshape(-1, channels)
        cells, total, outer = cells + len(flat), total + flat.sum(dim=0), outer + flat.T @ flat
    mean = total / cells
    cov = (outer - cells * torch.outer(mean, mean)) / max(1, cells - 1)
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * torch.trace(cov) / channels * torch.eye(channels, dtype=cov.dtype)
    # Sigma = L L^T, so (x - mean)^T Sigma^-1 (x - mean) = |L^-1 (x - mean)|^2.
    lower = torch.linalg.cholesky(cov)
    whiten = torch.linalg.solve_triangular(lower, torch.eye(channels, dtype=cov.dtype), upper=False)
    density.whiten.copy_(whiten.float()[:, :, None, None])
    density.shift.copy_((-whiten @ mean).float())
    val = torch.cat([density.distances(grid).flatten() for grid in _feature_grids(density, good_val, boxes,
                                                                                     batch_size)])
    density.mu.fill_(float(val.mean()))
    density.sigma.fill_(max(float(val.std()), 1e-6))
    info = {"good_cells": cells, "channels": channels, "shrinkage": SHRINKAGE,
            "val_good_cells": int(val.numel()), "mu": float(density.mu), "sigma": float(density.sigma)}
    if tiled is not None:
        tiled.classifier = density
        return tiled, info
    return density, info


def map_cells(model: nn.Module) -> MapCells:
    """What the map's cells are for a model built by ``training.train`` (the card's
    ``defect_map.cells``)."""
    while isinstance(model, FlipAverage | TiledClassifier):
        model = model.classifier
    if isinstance(model, FeatureDensity):
        return "feature_density"
    if isinstance(model, FeatureMemory):
        return "memory_distance"
    return "class_activation"


def logits_and_map(model: nn.Module, x: torch.Tensor, good_index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, K], defect map [N, h, w]) of a model built by ``training.train``."""
    if isinstance(model, FlipAverage):
        # One pass over the frames and their flips (FlipAverage.views), as the frame score does.
        n, views = x.shape[0], model.n_views
        all_logits, all_heat = logits_and_map(model.classifier, model.views(x), good_index)
        heat = all_heat[:n]
        for i, dims in enumerate(model.dims, start=1):
            heat = heat + torch.flip(all_heat[i * n : (i + 1) * n], [d - 1 for d in dims])  # map axes are (N, h, w)
        return all_logits.reshape(views, n, -1).mean(dim=0), heat / views
    if isinstance(model, TiledClassifier):
        return _tiled(model, x, good_index)
    if isinstance(model, FeatureMemory | FeatureDensity):
        logits, positions = model.position_logits(x)
        return logits, _suspicion(positions, good_index)
    if isinstance(model, Classifier):
        logits, positions = position_logits(model.backbone, model.normalize(x))
        return logits, _suspicion(positions, good_index)
    raise TrainingError(f"no defect map for {type(model).__name__}")


def _tiled(model: TiledClassifier, x: torch.Tensor, good_index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0]
    boxes = model.boxes
    tiles = torch.cat([x[:, :, y : y + h, xx : xx + w] for xx, y, w, h in boxes], dim=0)
    logits, heat = logits_and_map(model.classifier, tiles, good_index)
    frame_logits = model.frame_logits(logits.reshape(len(boxes), n, -1))  # the tile grid's own rule
    # The frame's map: each tile's map pasted at its place on one canvas, overlaps taking the max.
    th, tw = heat.shape[1], heat.shape[2]
    cell_y, cell_x = boxes[0][3] / th, boxes[0][2] / tw
    height, width = round(x.shape[2] / cell_y), round(x.shape[3] / cell_x)
    heat = heat.reshape(len(boxes), n, th, tw)
    canvas = heat.new_zeros((n, height, width))
    for i, (bx, by, _, _) in enumerate(boxes):
        top, left = min(round(by / cell_y), height - th), min(round(bx / cell_x), width - tw)
        placed = F.pad(heat[i], (left, width - tw - left, top, height - th - top))
        canvas = torch.maximum(canvas, placed)
    return frame_logits, canvas


def weighted_by_frame(logits: torch.Tensor, heat: torch.Tensor, good_index: int | None) -> torch.Tensor:
    """The map [N, h, w] times each frame's own P(defect) = 1 - P(good) (unchanged without a good class).

    Why: a cell's P(defect) is the head's view of one window, and on a frame the model calls good
    some window always looks a little odd: unweighted, a good frame's map had hot cells, so the
    map told the audit and labelling pages "here" where the decision said "nothing". Weighted, the
    map is as hot as the frame is suspicious, and within a frame nothing moves (the peak and the
    half-maximum box are unchanged by one positive factor). Pixel AUROC against the true masks:
    magnetic tile's anomaly models 0.639 -> 0.719 and 0.671 -> 0.762, the generated coating set
    0.798 -> 0.767 (most of its normal pixels lie on defective frames; docs/training.md)."""
    if good_index is None:
        return heat
    frame = 1.0 - torch.softmax(logits.float(), dim=1)[:, good_index]
    return heat * frame[:, None, None]


class MapOutputs(nn.Module):
    """``model`` returning ``(logits, defect map)``; the logits are exactly ``model(x)``, the map is
    ``logits_and_map``'s weighted by the frame's P(defect) (``weighted_by_frame``)."""

    def __init__(self, model: nn.Module, good_index: int | None) -> None:
        super().__init__()
        self.model = model
        self.good_index = good_index

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, heat = logits_and_map(self.model, x, self.good_index)
        return logits, weighted_by_frame(logits, heat, self.good_index)


@torch.no_grad()
def predict_maps(model: nn.Module, images: np.ndarray, good_index: int | None, *,
                 batch_size: int = 128) -> np.ndarray:
    """Torch's defect maps ``float32[N, h, w]`` for cached ``uint8[N, C, H, W]`` inputs (eval mode), as
    the exported graph outputs them (``MapOutputs``)."""
    model.eval()
    device = next(model.parameters()).device
    batch_size = frames_per_batch(model, scoring_frames(batch_size, images.shape))
    mapped = MapOutputs(model, good_index)
    out = [mapped(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device))[1]
           .float().cpu().numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0, 0), np.float32)
