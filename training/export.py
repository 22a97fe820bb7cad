"""Export to ONNX and verify: checker, torch-vs-ONNX Runtime parity, golden frames, int8.

The graph takes ``uint8[N, C, H, W]`` (input ``pixels``; N dynamic) — the camera's 8-bit pixels
after ``inspection.preprocess.to_model_input`` — and returns softmax ``probabilities``
``float32[N, K]`` and, for every model trained since maps exist, the ``defect_map``
``float32[N, h, w]`` (``training.defectmap``). Normalisation ``(x / 255 - mean) / std`` is inside
the graph.
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
from training.defectmap import MapOutputs
from training.models import scoring_frames

log = logging.getLogger(__name__)

OPSET = 18


class _Exportable(nn.Module):
    """uint8 pixels -> probabilities: the classifier (normalisation inside) plus softmax."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(pixels), dim=1)


class _ExportableWithMap(nn.Module):
    """uint8 pixels -> (probabilities, defect map), both from one forward pass."""

    def __init__(self, classifier: nn.Module, good_index: int | None) -> None:
        super().__init__()
        self.mapped = MapOutputs(classifier, good_index)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, heat = self.mapped(pixels)
        return torch.softmax(logits, dim=1), heat


def export_onnx(classifier: nn.Module, path: Path, spec: InputSpec, *, map_output: str | None = None,
                good_index: int | None = None) -> None:
    """Write ``classifier`` as ONNX with a dynamic batch axis and run the full ONNX checker.

    ``map_output``: also output the defect map under this name (``good_index`` gives its meaning).

    Raises:
        TrainingError: the exported graph does not pass ``onnx.checker.check_model(full_check=True)``.
    """
    import onnx

    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._dynamo"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # the exporter narrates every pass at INFO
    wrapper: nn.Module = (_Exportable(classifier) if map_output is None
                          else _ExportableWithMap(classifier, good_index)).eval()
    output_names = [spec.output_name] + ([map_output] if map_output is not None else [])
    example = torch.zeros((2, spec.channels, spec.height, spec.width), dtype=torch.uint8)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=[spec.input_name],
            output_names=output_names,
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
    if inputs != [spec.input_name] or outputs != output_names:
        raise TrainingError(
            f"exported graph has inputs {inputs} / outputs {outputs}, "
            f"the card needs {spec.input_name!r} / {output_names}"
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
    batch_size = scoring_frames(batch_size, images.shape)
    out = [
        session.run([spec.output_name], {spec.input_name: np.ascontiguousarray(images[i : i + batch_size])})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def ort_predict_maps(session: Any, images: np.ndarray, spec: InputSpec, map_output: str, *,
                     batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, defect maps) from an ONNX Runtime session, one run per batch for both."""
    batch_size = scoring_frames(batch_size, images.shape)
    probs, maps = [], []
    for i in range(0, len(images), batch_size):
        p, m = session.run([spec.output_name, map_output],
                           {spec.input_name: np.ascontiguousarray(images[i : i + batch_size])})
        probs.append(p)
        maps.append(m)
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0, 0), np.float32)
    return np.concatenate(probs).astype(np.float32), np.concatenate(maps).astype(np.float32)


def map_parity(torch_maps: np.ndarray, onnx_maps: np.ndarray, *, tolerance: float) -> float:
    """Max abs difference of the defect maps over every image and cell.

    Raises:
        TrainingError: shapes differ, or the difference exceeds ``tolerance``.
    """
    if torch_maps.shape != onnx_maps.shape:
        raise TrainingError(f"defect maps: torch gave {torch_maps.shape}, ONNX Runtime gave {onnx_maps.shape}")
    diff = float(np.max(np.abs(torch_maps.astype(np.float64) - onnx_maps))) if torch_maps.size else 0.0
    if not diff <= tolerance:
        raise TrainingError(f"ONNX export's defect maps differ from torch by {diff:.3g} > tolerance {tolerance:g} "
                            "on the test split")
    return diff


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


def write_golden(path: Path, images: np.ndarray, probs: np.ndarray, names: list[str],
                 maps: np.ndarray | None = None) -> None:
    """golden.npz: ``inputs`` uint8[k, C, H, W], ``probabilities`` float32[k, K], ``names`` and,
    for a model with maps, ``maps`` float32[k, h, w]."""
    arrays = {"inputs": images.astype(np.uint8), "probabilities": probs.astype(np.float32), "names": np.array(names)}
    if maps is not None:
        arrays["maps"] = maps.astype(np.float32)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]


def check_golden(session: Any, path: Path, spec: InputSpec, *, tolerance: float) -> float:
    """Re-score golden frames; returns the max abs difference.

    Raises:
        TrainingError: the model disagrees with the golden probabilities beyond ``tolerance``.
    """
    with np.load(path) as g:
        got = ort_predict(session, g["inputs"], spec)
        diff = float(np.max(np.abs(got - g["probabilities"])))
        if "maps" in g.files:
            names = [o.name for o in session.get_outputs()]
            _, maps = ort_predict_maps(session, g["inputs"], spec, names[1])
            diff = max(diff, float(np.max(np.abs(maps - g["maps"]))))
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
    # Every Softmax stays float: the probabilities' and the defect map's (one per cell).
    return [n.name for n in nodes[:first_conv]] + [n.name for n in nodes if n.op_type == "Softmax"]


def finite_or_none(x: float) -> float | None:
    return x if isinstance(x, float) and math.isfinite(x) else None
