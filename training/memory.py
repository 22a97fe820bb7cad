"""Anomaly mode with pretrained features: a memory of good-part patches (PatchCore-style).

Where ImageNet weights exist on the machine (``--pretrained-path``, or the torch hub cache) and
the architecture is a torchvision ResNet, ``--mode anomaly`` can skip gradient training: every
position of a good training frame is described by the pretrained network's mid-level features
(``layer2`` and ``layer3``, each averaged over its 3 x 3 neighbourhood, ``layer3`` brought to
``layer2``'s grid), a greedy k-centre coreset keeps a few thousand of them as the memory of
"what good surface looks like", and a frame is scored by how far each of its positions is from
the nearest remembered patch (Roth et al., "Towards Total Recall in Industrial Anomaly Detection",
2022). The distance grid *is* the anomaly map; the frame score is its maximum.

Everything goes into the exported graph, so nothing can be lost beside it (anomalib's users
report exports that lose the threshold or the normalisation): the memory is a constant, the
distances are one matrix product, and the normalisation ``z = (d - mu) / sigma`` (``mu``,
``sigma``: the good validation frames' scores) turns them into logits ``[0, z]``, i.e. P(anomaly)
= sigmoid(z) per position and per frame. The threshold is then calibrated on good validation
frames like every other model's, and the card, parity, golden frames and defect maps work as
for a classifier (``training.defectmap`` asks ``position_logits``).

Cost: no training epochs (a pass over the good frames and the coreset, seconds to a few
minutes on two cores), but a heavier graph than ``linecnn`` at serving (ResNet-18 up to
``layer3`` plus a [positions x memory] product): see docs/training.md.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inspection.errors import TrainingError
from training.models import Normalize

log = logging.getLogger(__name__)

#: Patches kept in the memory: enough to cover a part's normal variation at these grids (the
#: PatchCore paper keeps 1-10% of all patches; a few thousand is what a line PC's CPU can search
#: per frame in milliseconds).
MEMORY_SIZE = 4096
#: Candidate patches the coreset is chosen from (a random sample when the good frames hold more).
CANDIDATES = 60_000
#: Random projection used only to choose the coreset (distances are preserved to a few percent).
PROJECTION = 128


class FeatureMemory(nn.Module):
    """uint8 pixels -> logits ``[0, z]`` of the frame, and per position (``position_logits``)."""

    bank: torch.Tensor
    bank_sq: torch.Tensor
    center: torch.Tensor
    mu: torch.Tensor
    sigma: torch.Tensor

    def __init__(self, resnet: nn.Module, *, mean: list[float], std: list[float]) -> None:
        super().__init__()
        from torchvision.models import ResNet

        if not isinstance(resnet, ResNet):
            raise TrainingError(f"the feature-memory anomaly model needs a torchvision ResNet backbone, "
                                f"not {type(resnet).__name__}; use --arch resnet18")
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1)
        self.layer2, self.layer3 = resnet.layer2, resnet.layer3
        self.register_buffer("bank", torch.zeros((1, self.dims)))
        self.register_buffer("bank_sq", torch.zeros(1))
        self.register_buffer("center", torch.zeros(self.dims))
        self.register_buffer("mu", torch.zeros(()))
        self.register_buffer("sigma", torch.ones(()))

    @property
    def dims(self) -> int:
        return int(self.layer2[-1].conv2.out_channels + self.layer3[-1].conv2.out_channels)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch features ``[N, D, h, w]`` on ``layer2``'s grid (stride 8)."""
        f2 = self.layer2(self.stem(self.normalize(x)))
        f3 = self.layer3(f2)
        f2 = F.avg_pool2d(f2, 3, 1, 1)
        f3 = F.interpolate(F.avg_pool2d(f3, 3, 1, 1), size=f2.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([f2, f3], dim=1)

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, h, w]``: each position's distance to its nearest remembered good patch."""
        e = self.embed(x)
        n, d, h, w = e.shape
        # Centred on the memory's mean: |q|^2 - 2 q.b + |b|^2 then cancels far less (ReLU features
        # share a large common part), so torch and ONNX Runtime agree to the parity tolerance.
        q = e.permute(0, 2, 3, 1).reshape(-1, d) - self.center
        d2 = (q * q).sum(dim=1, keepdim=True) - 2.0 * (q @ self.bank.t()) + self.bank_sq
        return torch.sqrt(torch.clamp(d2.min(dim=1).values, min=0.0)).reshape(n, h, w)

    def position_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(frame logits ``[N, 2]``, per-position logits ``[N, 2, h, w]``): ``[0, z]``, z the
        normalised distance; the frame's z is its highest position's."""
        z = (self.distances(x) - self.mu) / self.sigma
        positions = torch.stack([torch.zeros_like(z), z], dim=1)
        top = z.amax(dim=(1, 2))
        return torch.stack([torch.zeros_like(top), top], dim=1), positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.position_logits(x)[0]


@torch.no_grad()
def _embed_all(model: FeatureMemory, images: np.ndarray, batch: int = 32) -> torch.Tensor:
    out = [model.embed(torch.from_numpy(np.ascontiguousarray(images[i : i + batch])))
           for i in range(0, len(images), batch)]
    e = torch.cat(out)
    return e.permute(0, 2, 3, 1).reshape(-1, e.shape[1])


def _coreset(features: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Greedy k-centre: each pick the candidate farthest from everything picked so far, on a
    random projection (the same choice at a fraction of the cost)."""
    if len(features) <= size:
        return features
    generator = torch.Generator().manual_seed(seed)
    projection = torch.randn((features.shape[1], PROJECTION), generator=generator) / PROJECTION**0.5
    z = features @ projection
    nearest = torch.full((len(z),), float("inf"))
    picked = [int(torch.randint(len(z), (1,), generator=generator))]
    for _ in range(size - 1):
        nearest = torch.minimum(nearest, ((z - z[picked[-1]]) ** 2).sum(dim=1))
        picked.append(int(torch.argmax(nearest)))
    return features[torch.tensor(picked)]


@torch.no_grad()
def fit_memory(model: FeatureMemory, good_train: np.ndarray, good_val: np.ndarray, *, seed: int) -> dict[str, Any]:
    """Fill ``model``'s memory from the good training frames and its normalisation from the good
    validation frames; returns what the card records.

    Raises:
        TrainingError: no good validation frames to normalise the scores on.
    """
    model.eval()
    if len(good_val) == 0:
        raise TrainingError("the feature-memory anomaly model needs good validation frames to normalise its "
                            "scores; add good images or raise --val-fraction")
    features = _embed_all(model, good_train)
    patches = len(features)
    rng = np.random.default_rng(seed)
    if patches > CANDIDATES:
        features = features[torch.from_numpy(rng.choice(patches, CANDIDATES, replace=False))]
    bank = _coreset(features, MEMORY_SIZE, seed)
    model.center = bank.mean(dim=0)
    centred = (bank - model.center).contiguous()
    model.bank = centred
    model.bank_sq = (centred * centred).sum(dim=1)
    scores = torch.cat([model.distances(torch.from_numpy(good_val[i : i + 32])).amax(dim=(1, 2))
                        for i in range(0, len(good_val), 32)])
    mu = float(scores.mean())
    sigma = max(float(scores.std()) if len(scores) > 1 else 0.0, 1e-3 * max(mu, 1e-6), 1e-6)
    model.mu = torch.tensor(mu)
    model.sigma = torch.tensor(sigma)
    log.info("feature memory: %d of %d good patches kept (k-centre coreset); good validation scores %.3g +- %.3g",
             len(bank), patches, mu, sigma)
    return {"method": "feature memory (PatchCore-style, pretrained ResNet layer2+layer3)",
            "memory_patches": len(bank), "candidate_patches": min(patches, CANDIDATES), "good_patches": patches,
            "feature_dims": int(bank.shape[1]), "score_mean": mu, "score_std": sigma,
            "good_train_images": len(good_train)}
