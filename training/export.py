"""Export to ONNX and verify: checker, torch-vs-ONNX Runtime parity, golden frames, int8.

The graph takes ``uint8[N, C, H, W]`` (input ``pixels``; N dynamic) — the camera's 8-bit pixels
after ``inspection.preprocess.to_model_input`` — and returns softmax ``probabilities``
``float32[N, K]``. Normalisation ``(x / 255 - mean) / std`` is inside the graph.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inspection.card import InputSpec
from inspection.errors import TrainingError

log = logging.getLogger(__name__)

OPSET = 18


class _Exportable(nn.Module):
    """uint8 pixels -> probabilities: the classifier (normalisation inside) plus softmax."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(pixels), dim=1)


def export_onnx(classifier: nn.Module, path: Path, spec: InputSpec) -> None:
    """Write ``classifier`` as ONNX with a dynamic batch axis and run the full ONNX checker.

    Raises:
        TrainingError: the exported graph does not pass ``onnx.checker.check_model(full_check=True)``.
    """
    import onnx

    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._dynamo"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # the exporter narrates every pass at INFO
    wrapper = _Exportable(classifier).eval()
    example = torch.zeros((2, spec.channels, spec.height, spec.width), dtype=torch.uint8)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=[spec.input_name],
            output_names=[spec.output_name],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise TrainingError(f"exported ONNX model {path} fails the ONNX checker: {exc}") from None
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [spec.input_name] or outputs != [spec.output_name]:
        raise TrainingError(
            f"exported graph has inputs {inputs} / outputs {outputs}, "
            f"the card needs {spec.input_name!r} / {spec.output_name!r}"
        )


def ort_session(path: Path) -> Any:
    """An ONNX Runtime CPU session (single-threaded intra-op: deterministic and cheap on 2 cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def ort_predict(session: Any, images: np.ndarray, spec: InputSpec, *, batch_size: int = 64) -> np.ndarray:
    """Probabilities from an ONNX Runtime session for ``uint8[N, C, H, W]`` inputs."""
    out = [
        session.run([spec.output_name], {spec.input_name: np.ascontiguousarray(images[i : i + batch_size])})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def parity(torch_probs: np.ndarray, onnx_probs: np.ndarray, *, tolerance: float) -> dict[str, Any]:
    """Max abs probability difference over every image and class.

    Raises:
        TrainingError: shapes differ, or the difference exceeds ``tolerance``.
    """
    if torch_probs.shape != onnx_probs.shape:
        raise TrainingError(f"torch gave {torch_probs.shape}, ONNX Runtime gave {onnx_probs.shape}")
    diff = float(np.max(np.abs(torch_probs.astype(np.float64) - onnx_probs))) if torch_probs.size else 0.0
    result = {"max_abs_diff": diff, "tolerance": tolerance, "n_images": len(torch_probs), "passed": diff <= tolerance}
    if not result["passed"]:
        raise TrainingError(f"ONNX export differs from torch by {diff:.3g} > tolerance {tolerance:g} on the test split")
    return result


def pick_golden(labels: np.ndarray, count: int, *, seed: int) -> np.ndarray:
    """Indices of ``count`` frames covering every class present (round-robin), reproducible."""
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < min(count, len(labels)):
        for idx in by_class:
            if idx and len(chosen) < count:
                chosen.append(idx.pop(0))
    return np.array(sorted(chosen), dtype=np.int64)


def write_golden(path: Path, images: np.ndarray, probs: np.ndarray, names: list[str]) -> None:
    """golden.npz: ``inputs`` uint8[k, C, H, W], ``probabilities`` float32[k, K], ``names``."""
    np.savez_compressed(
        path, inputs=images.astype(np.uint8), probabilities=probs.astype(np.float32), names=np.array(names)
    )


def check_golden(session: Any, path: Path, spec: InputSpec, *, tolerance: float) -> float:
    """Re-score golden frames; returns the max abs difference.

    Raises:
        TrainingError: the model disagrees with the golden probabilities beyond ``tolerance``.
    """
    with np.load(path) as g:
        got = ort_predict(session, g["inputs"], spec)
        diff = float(np.max(np.abs(got - g["probabilities"])))
    if not diff <= tolerance:
        raise TrainingError(f"golden frames in {path} re-score with difference {diff:.3g} > {tolerance:g}")
    return diff


class _CalibrationReader:
    def __init__(self, images: np.ndarray, name: str, batch: int = 16) -> None:
        # Equal batches only: ORT's histogram calibrators cannot stack a shorter last batch.
        batch = max(1, min(batch, len(images)))
        usable = len(images) - len(images) % batch
        self._batches = [images[i : i + batch] for i in range(0, usable, batch)]
        self._name = name

    def get_next(self) -> dict[str, np.ndarray] | None:
        return {self._name: self._batches.pop(0)} if self._batches else None


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray, spec: InputSpec) -> None:
    """Static QDQ int8 quantization (per-channel weights), calibrated on training images.

    Activation ranges use the 99.99th percentile (robust to a few extreme activations, which
    MinMax lets stretch the 8-bit range). The input preprocessing (cast, normalisation,
    per-image standardisation: everything before the first Conv) and the softmax stay float:
    they are cheap, and 8-bit there costs accuracy for nothing.
    """
    pre = int8_path.with_name(int8_path.stem + ".pre.onnx")
    # ORT's calibrators print progress to stdout; keep the CLI's output to our report.
    with contextlib.redirect_stdout(io.StringIO()):
        _quantize(fp32_path, pre, int8_path, calibration, spec)


def _quantize(fp32_path: Path, pre: Path, int8_path: Path, calibration: np.ndarray, spec: InputSpec) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(int8_path),
            _CalibrationReader(calibration, spec.input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"CalibPercentile": 99.99},
            nodes_to_exclude=_float_nodes(pre),
        )
    finally:
        pre.unlink(missing_ok=True)


def _float_nodes(path: Path) -> list[str]:
    import onnx

    nodes = list(onnx.load(str(path)).graph.node)
    first_conv = next((i for i, n in enumerate(nodes) if n.op_type == "Conv"), 0)
    return [n.name for n in nodes[:first_conv]] + [n.name for n in nodes if n.op_type == "Softmax"]


def finite_or_none(x: float) -> float | None:
    return x if isinstance(x, float) and math.isfinite(x) else None
