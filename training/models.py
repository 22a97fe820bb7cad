"""Model registry: ``register_model`` / ``get_model`` / ``list_models``.

Every architecture is built for the card's channel count *deliberately*: line cameras are
grayscale, so a 1-channel model gets a 1-channel first convolution (pretrained 3-channel
weights, when used, are summed over the colour axis — the exact response of the RGB filter to
a gray image replicated into three channels). Nothing converts gray to fake RGB at run time.

Architectures (``inspection train --list-archs``):

* ``linecnn`` (default) — a plain stride-1 CNN with max pooling, ~0.1 M parameters: sees every
  pixel, so 2–3 px defects survive, and is cheap enough that the recipe can afford a large
  input on two CPU cores. Measured against ``tinyres`` under the same compute budget on
  magnetic tile (grouped split): test AUROC 0.983 vs 0.571 (docs/training.md; tinyres then
  sized with an overstated cost).
* ``linecnn_wide`` — linecnn at twice the width with a second convolution in the deeper stages.
* ``tinyres`` — a compact ResNet (widths 24-48-96-192), ~0.9 M parameters.
* ``resnet18`` — torchvision's ResNet-18 (11 M parameters).
* ``resnet18_half`` — ResNet-18 layout at half width (2.8 M parameters).
* ``mobilenet_v3_small`` — torchvision's MobileNetV3-Small.
* ``efficientnet_b0`` — torchvision's EfficientNet-B0 (the largest choice here).

Why one module over 400 lines: every architecture the recipe may choose, with its measured cost
(``cost_128``) beside its definition, so a new architecture cannot join without its cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from inspection.errors import TrainingError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    #: torchvision weight file name in the torch hub cache (None: no pretrained weights exist).
    pretrained_file: str | None
    description: str
    #: Training cost in seconds per image at 128x128 on the reference machine (2 CPU cores,
    #: batch 32, forward + backward + AdamW step + augmentation), measured with
    #: ``bench/arch_cost.py``. On CPU the recipe measures the same figure on the machine it
    #: trains on (``training.recipe.measured_cost``); this one serves CUDA and the tests.
    cost_128: float = 0.02
    #: The smallest input side, in pixels, the network takes (a tile is an input too): LineCNN's
    #: four 2x2 poolings leave one pixel of 16; the config's floor for every input.
    min_side: int = 16


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str, *, pretrained_file: str | None = None, description: str = "", cost_128: float = 0.02,
    min_side: int = 16,
) -> Callable:
    """Decorator adding a builder ``fn(num_classes, in_channels) -> nn.Module`` to the registry.

    Raises:
        ValueError: ``name`` is already registered (two builders for one name is a bug).
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelInfo(name, fn, pretrained_file, description or (fn.__doc__ or "").strip(), cost_128,
                                    min_side)
        return fn

    return wrap


def list_models() -> list[str]:
    """Names of the registered architectures, sorted."""
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """Registry entry for ``name``.

    Raises:
        TrainingError: unknown architecture (the message lists the registered ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TrainingError(f"unknown architecture {name!r}; choose one of {list_models()}") from None


def get_model(name: str, *, num_classes: int, in_channels: int = 1) -> nn.Module:
    """Build architecture ``name`` for ``num_classes`` outputs and ``in_channels`` inputs.

    Raises:
        TrainingError: unknown architecture, or fewer than 2 classes.
    """
    info = model_info(name)
    if num_classes < 2:
        raise TrainingError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
    if in_channels not in (1, 3):
        raise TrainingError(f"in_channels={in_channels}: models take 1 (grayscale) or 3 (RGB) channels")
    return info.builder(num_classes=num_classes, in_channels=in_channels)


def find_pretrained(name: str, *, path: Path | None = None, hub_dir: Path | None = None) -> Path | None:
    """Local pretrained weights for ``name``: ``path`` if given, else the torch hub cache file.

    Never downloads. Returns None when no local file exists.

    Raises:
        TrainingError: ``path`` was given but does not exist.
    """
    if path is not None:
        if not Path(path).is_file():
            raise TrainingError(f"pretrained weights {path} do not exist; give an existing .pth file or omit it")
        return Path(path)
    info = model_info(name)
    if info.pretrained_file is None:
        return None
    hub = Path(hub_dir) if hub_dir is not None else Path(torch.hub.get_dir())
    candidate = hub / "checkpoints" / info.pretrained_file
    return candidate if candidate.is_file() else None


def load_pretrained(model: nn.Module, weights: Path) -> list[str]:
    """Load a torchvision state dict into ``model``, adapting the first conv and skipping the head.

    Returns the names of parameters left at their initial values (head, mismatched shapes).
    """
    state = torch.load(weights, map_location="cpu", weights_only=True)
    own = model.state_dict()
    skipped: list[str] = []
    adapted: dict[str, torch.Tensor] = {}
    for key, target in own.items():
        value = state.get(key)
        if value is None:
            skipped.append(key)
            continue
        if value.ndim == 4 and target.ndim == 4 and value.shape[1] == 3 and target.shape[1] == 1:
            value = value.sum(dim=1, keepdim=True)
        if value.shape != target.shape:
            skipped.append(key)
            continue
        adapted[key] = value
    model.load_state_dict(adapted, strict=False)
    return skipped


# -- architectures ----------------------------------------------------------------------------


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(y + self.short(x))


class Standardize(nn.Module):
    """Per-image zero mean and unit variance (over all pixels and channels).

    Line lighting and camera gain drift between shifts and set-ups (the magnetic-tile images
    come from several lighting set-ups); a defect is a *local* contrast change, so the network
    sees each frame relative to its own brightness and contrast. Exported as plain ONNX ops.

    The mean and variance are summed in float64: ONNX Runtime's ReduceMean adds float32 values
    one after another, which over a 208 x 208 frame put its statistics 4e-4 away from torch's
    (pairwise) sums, and the defect maps 1.2e-4 away, past the export's parity tolerance.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x64 = x.double()
        mu = x64.mean(dim=(1, 2, 3), keepdim=True)
        var = ((x64 - mu) ** 2).mean(dim=(1, 2, 3), keepdim=True)
        return (x - mu.to(x.dtype)) / torch.sqrt(var + 1e-2).to(x.dtype)


class TinyResNet(nn.Module):
    """A compact ResNet: per-image standardisation, stem, four stages of basic blocks, average + max pool."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 1,
        widths: tuple[int, ...] = (24, 48, 96, 192),
        depth: tuple[int, ...] = (1, 1, 2, 1),
    ) -> None:
        super().__init__()
        self.standardize = Standardize()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, (w, d) in enumerate(zip(widths, depth)):
            for j in range(d):
                layers.append(_Block(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.features = nn.Sequential(*layers)
        # Average *and* max pooling: a 3-px pinhole is 1/400 of a 128-px frame and vanishes in
        # an average, but the max over positions keeps it (small defects are the norm here).
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.max = nn.AdaptiveMaxPool2d(1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(2 * cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            if isinstance(m, _Block):
                nn.init.zeros_(m.bn2.weight)  # each block starts as identity: stabler from scratch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.stem(self.standardize(x)))
        pooled = torch.cat([torch.flatten(self.avg(x), 1), torch.flatten(self.max(x), 1)], dim=1)
        return self.fc(self.drop(pooled))


@register_model("tinyres", cost_128=0.0126, description="compact ResNet, ~0.9M params")
def _tinyres(*, num_classes: int, in_channels: int) -> nn.Module:
    return TinyResNet(num_classes=num_classes, in_channels=in_channels)


class LineCNN(nn.Module):
    """A plain VGG-style stack: stride-1 3x3 convolutions, 2x2 max pooling, global max pooling.

    Why it exists beside ``tinyres``: defects on coated surfaces (pinholes, particles) are 2-3 px
    wide. Strided convolutions sample every other pixel and, trained from scratch on a few
    hundred images, memorise the texture instead (the sample dataset: train accuracy 0.95,
    held-out 0.5). Stride-1 convolutions see every pixel and max pooling keeps the strongest
    local response, so the small defect survives to the classifier (held-out ~0.9 there).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 1,
        widths: tuple[int, ...] = (16, 32, 64, 128),
        convs: tuple[int, ...] = (1, 1, 1, 1),
    ) -> None:
        super().__init__()
        self.standardize = Standardize()
        layers: list[nn.Module] = []
        cin = in_channels
        for w, n in zip(widths, convs, strict=True):
            for _ in range(n):
                layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
            # Pool before the stage's last ReLU, not after: both are monotone, so max(relu(x)) =
            # relu(max(x)) and the network computes exactly what conv-BN-ReLU-pool does (gradients
            # included), but the ReLU runs at a quarter of the positions. At full resolution it was
            # a memory-bound pass forward and back.
            layers.insert(len(layers) - 1, nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.flatten(self.pool(self.features(self.standardize(x))), 1)))


@register_model(
    "linecnn",
    cost_128=0.0079,
    description="plain stride-1 CNN with max pooling, ~0.1M params (default: small defects, from scratch)",
)
def _linecnn(*, num_classes: int, in_channels: int) -> nn.Module:
    return LineCNN(num_classes=num_classes, in_channels=in_channels)


@register_model(
    "linecnn_wide",
    cost_128=0.027,
    description="linecnn at twice the width, a second convolution in the deeper stages (~1M params)",
)
def _linecnn_wide(*, num_classes: int, in_channels: int) -> nn.Module:
    return LineCNN(num_classes=num_classes, in_channels=in_channels, widths=(32, 64, 128, 256), convs=(1, 1, 2, 2))


def _first_conv_to(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if conv.in_channels == in_channels:
        return conv
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        bias=conv.bias is not None,
    )


@register_model(
    "resnet18",
    cost_128=0.024,
    pretrained_file="resnet18-f37072fd.pth",
    description="torchvision ResNet-18 (11M params)",
)
def _resnet18(*, num_classes: int, in_channels: int) -> nn.Module:
    from torchvision.models import resnet18

    m = resnet18(weights=None, num_classes=num_classes)
    m.conv1 = _first_conv_to(m.conv1, in_channels)
    return m


@register_model("resnet18_half", cost_128=0.022, description="ResNet-18 layout at half width (2.8M params)")
def _resnet18_half(*, num_classes: int, in_channels: int) -> nn.Module:
    return TinyResNet(num_classes=num_classes, in_channels=in_channels, widths=(32, 64, 128, 256), depth=(2, 2, 2, 2))


@register_model(
    "mobilenet_v3_small",
    cost_128=0.0086,
    pretrained_file="mobilenet_v3_small-047dcff4.pth",
    description="torchvision MobileNetV3-Small (1.5M params)",
)
def _mobilenet_v3_small(*, num_classes: int, in_channels: int) -> nn.Module:
    from torchvision.models import mobilenet_v3_small

    m = mobilenet_v3_small(weights=None, num_classes=num_classes)
    first = m.features[0][0]
    m.features[0][0] = _first_conv_to(first, in_channels)
    return m


@register_model(
    "efficientnet_b0",
    cost_128=0.027,
    pretrained_file="efficientnet_b0_rwightman-7f5810bc.pth",
    description="torchvision EfficientNet-B0 (4M params)",
)
def _efficientnet_b0(*, num_classes: int, in_channels: int) -> nn.Module:
    from torchvision.models import efficientnet_b0

    m = efficientnet_b0(weights=None, num_classes=num_classes)
    first = m.features[0][0]
    m.features[0][0] = _first_conv_to(first, in_channels)
    return m


class Normalize(nn.Module):
    """``uint8``/float pixels -> ``(x * scale - mean) / std``; lives inside the model and the graph."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: list[float], std: list[float], scale: float = 1.0 / 255.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) * self.scale - self.mean) / self.std


class Classifier(nn.Module):
    """Normalisation + backbone: takes pixels (uint8 or float 0..255), returns logits."""

    def __init__(self, backbone: nn.Module, *, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))


class TiledClassifier(nn.Module):
    """A classifier applied to every tile of the input; answers, per frame, the logits of the
    tile with the highest P(defect) (multiple-instance learning: a frame is defective when one
    of its tiles is). Training and the exported graph both use it, so the grid is cut in one
    place: ``boxes`` come from ``inspection.preprocess.tile_boxes(spec)``.

    Without a good class (defect-type classifiers) the most confident tile answers.
    """

    def __init__(self, classifier: nn.Module, boxes: list[tuple[int, int, int, int]], good_index: int | None) -> None:
        super().__init__()
        self.classifier = classifier
        self.boxes = [tuple(int(v) for v in b) for b in boxes]
        self.good_index = good_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        tiles = torch.cat([x[:, :, y : y + h, xx : xx + w] for xx, y, w, h in self.boxes], dim=0)
        return self.frame_logits(self.classifier(tiles).reshape(len(self.boxes), n, -1))

    def frame_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-tile logits ``[T, N, K]`` -> each frame's ``[N, K]``: its most suspicious tile's."""
        n = logits.shape[1]
        probs = torch.softmax(logits.float(), dim=2)
        suspicion = 1.0 - probs[:, :, self.good_index] if self.good_index is not None else probs.max(dim=2).values
        pick = suspicion.argmax(dim=0)  # [N]
        index = pick.view(1, n, 1).expand(1, n, logits.shape[2])
        return logits.gather(0, index).squeeze(0)


class FlipAverage(nn.Module):
    """Test-time flips folded into the graph: the logits' mean over the frame and its allowed flips.

    The frame and its flips go through the network as ONE batch (``views``), not one call each:
    the exported graph then holds the network once. Called once per view, it held it twice, and
    onnxruntime fuses and pre-packs each copy's weights on its own -- an onnxruntime session of a
    mirrored ResNet-18 took +304 MB after one frame against +148 MB without the mirror, and the
    serving process 509 MB against 382 MB once batched (bench/serve_latency.py).
    """

    def __init__(self, classifier: nn.Module, *, hflip: bool, vflip: bool) -> None:
        super().__init__()
        self.classifier = classifier
        self.dims = [d for d, on in (([3], hflip), ([2], vflip)) if on]

    @property
    def n_views(self) -> int:
        return 1 + len(self.dims)

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """``[(1 + len(dims)) * N, C, H, W]``: the frames, then each flip of them."""
        return torch.cat([x] + [torch.flip(x, dims) for dims in self.dims], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.views(x))
        return logits.reshape(self.n_views, x.shape[0], -1).mean(dim=0)


#: Pixels one scoring batch holds at most: 128 frames of 208 x 176, about 0.7 GB of linecnn's
#: activations. A count of frames alone grew with the input: 128 frames of 720 x 240 took
#: +2.9 GB, and a default run on tall 300 x 900 frames peaked at 6.9 GB in all.
SCORING_PIXELS = 128 * 208 * 176


def scoring_frames(images: int, frame_shape: tuple[int, ...]) -> int:
    """Frames to score at once: ``images``, fewer where they would hold more than
    ``SCORING_PIXELS`` (``frame_shape`` ends with height, width)."""
    return max(1, min(images, SCORING_PIXELS // max(1, int(frame_shape[-2]) * int(frame_shape[-1]))))


def frames_per_batch(model: nn.Module, images: int) -> int:
    """Frames to score at once so that about ``images`` images go through the network: a test-time
    mirror sends each frame through it ``n_views`` times in one batch (a batch sized for single
    views nearly doubled the scoring's peak memory: +685 -> +1,244 MB at 208 x 176)."""
    return max(1, images // model.n_views) if isinstance(model, FlipAverage) else images
