"""The model registry: every architecture runs at a tiny size, 1-channel on purpose."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from inspection.errors import TrainingError
from training.models import (
    Classifier,
    find_pretrained,
    get_model,
    list_models,
    load_pretrained,
    model_info,
    register_model,
)


def test_registry_has_a_small_default_and_larger_torchvision_choices() -> None:
    names = list_models()
    assert "tinyres" in names
    assert {"resnet18", "mobilenet_v3_small", "efficientnet_b0"} <= set(names)


@pytest.mark.parametrize(("name", "channels"), [(n, 1) for n in list_models()] + [("tinyres", 3), ("resnet18", 3)])
def test_every_model_runs_forward_and_backward_at_a_tiny_size(name: str, channels: int) -> None:
    torch.manual_seed(0)
    model = Classifier(
        get_model(name, num_classes=4, in_channels=channels), mean=[0.5] * channels, std=[0.25] * channels
    )
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == channels
    x = torch.randint(0, 256, (2, channels, 32, 32), dtype=torch.uint8)
    logits = model(x)
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()
    logits.sum().backward()
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 4)


@pytest.mark.parametrize("name", list_models())
def test_every_model_takes_inputs_of_its_registered_smallest_side(name: str) -> None:
    # Training refuses tiles below it (training.train._input_spec): it must be a side the network takes.
    side = model_info(name).min_side
    model = get_model(name, num_classes=2)
    model(torch.zeros(2, 1, side, side)).sum().backward()
    if name.startswith("linecnn"):
        with pytest.raises(RuntimeError):  # four 2x2 poolings: 15 px leave nothing
            model(torch.zeros(2, 1, side - 1, side - 1))


@pytest.mark.parametrize("name", ["linecnn", "linecnn_wide"])
def test_linecnn_pools_before_its_relu_and_computes_exactly_the_usual_order(name: str) -> None:
    # ReLU and max pooling commute; pooling first runs the ReLU at a quarter of the positions
    # (a memory-bound pass at full resolution). The swap must change nothing else.
    torch.manual_seed(0)
    model = get_model(name, num_classes=2, in_channels=1).train()
    usual = copy.deepcopy(model)
    layers = list(usual.features)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], torch.nn.MaxPool2d) and isinstance(layers[i + 1], torch.nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    assert layers != list(usual.features)
    usual.features = torch.nn.Sequential(*layers)
    relu_sizes: list[tuple[int, ...]] = []
    for m in model.modules():
        if isinstance(m, torch.nn.ReLU):
            m.register_forward_hook(lambda _m, args, _out: relu_sizes.append(tuple(args[0].shape[-2:])))
    x = torch.rand(4, 1, 64, 48) * 255
    torch.manual_seed(1)  # the same dropout draw for both
    out = model(x)
    torch.manual_seed(1)
    ref = usual(x)
    assert max(relu_sizes) == (32, 24)  # no ReLU at the input's full resolution
    assert torch.equal(out, ref)
    out.square().sum().backward()
    ref.square().sum().backward()
    for (key, p), q in zip(model.named_parameters(), usual.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), key


def test_unknown_architecture_lists_the_registered_ones() -> None:
    with pytest.raises(TrainingError, match=r"unknown architecture 'vgg99'; choose one of \[.*'tinyres'"):
        get_model("vgg99", num_classes=2)


def test_bad_class_or_channel_counts_are_refused() -> None:
    with pytest.raises(TrainingError, match="num_classes=1"):
        get_model("tinyres", num_classes=1)
    with pytest.raises(TrainingError, match="in_channels=2"):
        get_model("tinyres", num_classes=2, in_channels=2)


def test_register_model_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("tinyres")(lambda **kw: None)


def test_pretrained_is_looked_up_locally_only(tmp_path: Path) -> None:
    assert find_pretrained("resnet18", hub_dir=tmp_path) is None  # empty cache: no download, None
    assert find_pretrained("tinyres", hub_dir=tmp_path) is None
    with pytest.raises(TrainingError, match="do not exist"):
        find_pretrained("resnet18", path=tmp_path / "missing.pth")


def test_rgb_weights_are_summed_into_a_gray_first_conv(tmp_path: Path) -> None:
    rgb = get_model("resnet18", num_classes=1000, in_channels=3)
    weights = tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    weights.parent.mkdir()
    torch.save(rgb.state_dict(), weights)
    assert find_pretrained("resnet18", hub_dir=tmp_path) == weights
    gray = get_model("resnet18", num_classes=3, in_channels=1)
    skipped = load_pretrained(gray, weights)
    assert set(skipped) == {"fc.weight", "fc.bias"}
    assert torch.allclose(gray.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    # A gray image replicated to RGB gives the RGB net's first-layer response exactly.
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(gray.conv1(x), rgb.conv1(x.repeat(1, 3, 1, 1)), atol=1e-5)


def test_per_image_standardisation_agrees_with_onnx_runtime_on_a_large_frame(tmp_path: Path) -> None:
    # ONNX Runtime's ReduceMean sums float32 values one after another: over a large frame its
    # statistics drifted 4e-4 from torch's, enough to fail the export's 1e-4 map parity. Summed in
    # float64 in the graph, the two agree to float32 rounding.
    import numpy as np
    import onnxruntime as ort

    from training.models import Standardize

    frame = np.random.default_rng(0).integers(180, 256, (2, 1, 512, 512), dtype=np.uint8)
    model = Standardize().eval()
    path = tmp_path / "standardize.onnx"
    torch.onnx.export(model, (torch.zeros((2, 1, 512, 512)),), str(path), input_names=["x"], output_names=["y"],
                      opset_version=18, dynamo=True, external_data=False, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(["y"], {"x": frame.astype(np.float32)})[0]
    with torch.no_grad():
        torch_out = model(torch.from_numpy(frame).float()).numpy()
    assert float(np.abs(onnx_out - torch_out).max()) < 1e-5


def test_the_mirror_averages_both_views_and_the_graph_holds_the_network_once(tmp_path: Path) -> None:
    """The frame and its mirror go through the network as one batch: the same logits as two
    calls, and the exported graph holds the network once (twice, onnxruntime pre-packed each
    copy: a session of a mirrored ResNet-18 took +304 MB after one frame against +148 MB without)."""
    import onnx

    from inspection.card import InputSpec
    from training.export import export_onnx
    from training.models import FlipAverage

    torch.manual_seed(0)
    base = Classifier(get_model("linecnn", num_classes=3), mean=[0.5], std=[0.25]).eval()
    x = torch.randint(0, 256, (4, 1, 32, 48), dtype=torch.uint8)
    for hflip, vflip in ((True, False), (True, True)):
        mirrored = FlipAverage(base, hflip=hflip, vflip=vflip).eval()
        with torch.no_grad():
            views = [base(x)] + [base(torch.flip(x, d)) for d in mirrored.dims]
            assert torch.allclose(mirrored(x), torch.stack(views).mean(0), atol=1e-5)

    def nodes(model: torch.nn.Module, name: str) -> int:
        export_onnx(model, tmp_path / name, InputSpec(height=32, width=48))
        return len(onnx.load(str(tmp_path / name)).graph.node)

    # The weights are shared initializers either way; what onnxruntime duplicated were the nodes
    # (one call per view: linecnn 72 nodes against 31, resnet18 150 against 54). Now: the network's
    # nodes once, plus the flips, the concatenation and the mean.
    plain = nodes(base, "plain.onnx")
    assert nodes(FlipAverage(base, hflip=True, vflip=True).eval(), "mirrored.onnx") <= plain + 8


def test_a_mirrored_model_is_scored_in_batches_of_as_many_images() -> None:
    """Scoring sends about ``batch_size`` images through the network, views included, so the
    mirror does not double the scoring's peak memory."""
    from training.models import FlipAverage, frames_per_batch

    base = Classifier(get_model("linecnn", num_classes=2), mean=[0.5], std=[0.25])
    assert frames_per_batch(base, 128) == 128
    assert frames_per_batch(FlipAverage(base, hflip=True, vflip=False), 128) == 64
    assert frames_per_batch(FlipAverage(base, hflip=True, vflip=True), 128) == 42
    assert frames_per_batch(FlipAverage(base, hflip=True, vflip=True), 2) == 1


def test_large_frames_are_scored_in_batches_of_bounded_pixels() -> None:
    """A scoring batch holds at most ``SCORING_PIXELS``: 128 frames of 720 x 240 at once took
    +2.9 GB; the probabilities do not depend on how the frames were batched."""
    import numpy as np
    from torch import nn

    from training import engine
    from training.models import SCORING_PIXELS, scoring_frames

    assert scoring_frames(128, (1, 128, 128)) == 128
    tall = scoring_frames(128, (1, 720, 240))
    assert tall * 720 * 240 <= SCORING_PIXELS < (tall + 1) * 720 * 240
    assert scoring_frames(128, (1, 8000, 8000)) == 1

    class Counting(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner, self.batches = inner, []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.batches.append(int(x.shape[0]))
            return self.inner(x)

    torch.manual_seed(0)
    model = Counting(Classifier(get_model("linecnn", num_classes=2), mean=[0.5], std=[0.25]).eval())
    frames = np.random.default_rng(0).integers(0, 256, (40, 1, 512, 512), dtype=np.uint8)
    probs = engine.predict(model, frames)
    assert max(model.batches) == SCORING_PIXELS // (512 * 512) < 40 and sum(model.batches) == 40
    one_by_one = np.concatenate([engine.predict(model, frames[i : i + 1]) for i in range(len(frames))])
    np.testing.assert_allclose(probs, one_by_one, atol=1e-5)
