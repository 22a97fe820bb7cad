"""A tiny but real model version for tests, built with ``onnx.helper`` (no torch).

The graph follows the card's contract: ``uint8[N, C, H, W]`` pixels in, normalisation inside
the graph, softmax probabilities out. Its output depends on the frame's mean brightness, so a
test steers the decision with the frame it sends:

* a bright frame (mean near 255) -> the good class is most likely -> ``pass``;
* a dark frame (mean near 0) -> the defect classes win -> ``reject``.

``make_model_version`` writes ``model.onnx``, ``golden.npz`` (scored with onnxruntime) and a
valid ``model.json`` listing the sha256 of both files, and returns the registry's
``ModelVersion`` for it. ``promote`` is the registry's own; use it to make a version active.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from inspection.card import (
    DatasetRef,
    DefectMapSpec,
    Golden,
    InputSpec,
    ModelCard,
    Normalization,
    Parity,
    Thresholds,
    hash_files,
    load_card,
    save_card,
    utc_now,
)
from inspection.registry import ModelRegistry, ModelVersion


def build_onnx(
    *,
    classes: Sequence[str],
    good_class: str | None,
    size: int,
    channels: int = 1,
    gain: float = 4.0,
    bias: float = 0.0,
    conv: bool = True,
    nan_when_black: bool = False,
    map_cell: int | None = None,
    nan_map_when_black: bool = False,
) -> bytes:
    """Serialized ONNX graph: pixels -> brightness feature -> Gemm -> Softmax.

    With ``map_cell`` the graph also outputs ``defect_map`` ``float32[N, size/cell, size/cell]``:
    each cell's darkness, ``sigmoid(-gain * mean of the cell)``, so a dark spot on a frame is
    where the map peaks (the card's contract for maps, as training exports it).

    The good class's logit is ``gain * b`` and every defect class's logit is
    ``-gain * b + bias + 0.1 * i`` where ``b`` is the normalised mean brightness in [-1, 1];
    ``bias`` > 0 pushes every frame towards reject. With ``conv`` a 3x3 box-filter convolution
    runs first, so the graph does real per-pixel work like a CNN (its output is unchanged).
    With ``nan_when_black`` the logits are scaled by ``sqrt(b + 0.95)``, so a (nearly) black
    frame makes the model output NaN: a model failing at run time, for fail-safe tests.
    ``nan_map_when_black`` does the same to the map alone (each cell through ``sqrt(c + 0.97)``),
    the probabilities staying finite.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_classes = len(classes)
    weights = np.zeros((1, n_classes), dtype=np.float32)
    biases = np.zeros((n_classes,), dtype=np.float32)
    defect_rank = 0
    for i, cls in enumerate(classes):
        if cls == good_class:
            weights[0, i] = gain
        else:
            weights[0, i] = -gain
            biases[i] = bias + 0.1 * defect_rank
            defect_rank += 1
    mean = np.full((1, channels, 1, 1), 0.5, dtype=np.float32)
    std = np.full((1, channels, 1, 1), 0.5, dtype=np.float32)
    inits = [
        numpy_helper.from_array(np.array(1.0 / 255.0, dtype=np.float32), "scale"),
        numpy_helper.from_array(mean, "mean"),
        numpy_helper.from_array(std, "std"),
        numpy_helper.from_array(weights, "W"),
        numpy_helper.from_array(biases, "B"),
    ]
    nodes = [
        helper.make_node("Cast", ["pixels"], ["x_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x_f", "scale"], ["x_s"]),
        helper.make_node("Sub", ["x_s", "mean"], ["x_c"]),
        helper.make_node("Div", ["x_c", "std"], ["x_n"]),
    ]
    feature_in = "x_n"
    if conv:
        kernel = np.full((channels, 1, 3, 3), 1.0 / 9.0, dtype=np.float32)
        inits.append(numpy_helper.from_array(kernel, "K"))
        nodes.append(helper.make_node("Conv", ["x_n", "K"], ["x_k"], pads=[1, 1, 1, 1], group=channels))
        feature_in = "x_k"
    nodes += [
        # mean over channels and pixels -> [N, 1]
        helper.make_node("ReduceMean", [feature_in], ["m4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Flatten", ["m4"], ["m"], axis=1),
        helper.make_node("Gemm", ["m", "W", "B"], ["logits"]),
    ]
    logits = "logits"
    if nan_when_black:
        inits.append(numpy_helper.from_array(np.array(0.95, dtype=np.float32), "shift"))
        nodes += [
            helper.make_node("Add", ["m", "shift"], ["m_shift"]),
            helper.make_node("Sqrt", ["m_shift"], ["gate"]),
            helper.make_node("Mul", ["logits", "gate"], ["logits_gated"]),
        ]
        logits = "logits_gated"
    nodes.append(helper.make_node("Softmax", [logits], ["probabilities"], axis=1))
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_classes])]
    if map_cell is not None:
        cells = size // map_cell
        inits += [numpy_helper.from_array(np.array(-gain, dtype=np.float32), "neg_gain"),
                  numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")]
        nodes += [
            helper.make_node("ReduceMean", ["x_n"], ["gray"], axes=[1], keepdims=1),
            helper.make_node("AveragePool", ["gray"], ["cells4"], kernel_shape=[map_cell, map_cell],
                             strides=[map_cell, map_cell]),
            helper.make_node("Squeeze", ["cells4", "axis1"], ["cells"]),
        ]
        if nan_map_when_black:
            inits.append(numpy_helper.from_array(np.array(0.97, dtype=np.float32), "map_shift"))
            nodes += [helper.make_node("Add", ["cells", "map_shift"], ["cells_shifted"]),
                      helper.make_node("Sqrt", ["cells_shifted"], ["cells_gated"])]
        nodes += [
            helper.make_node("Mul", ["cells_gated" if nan_map_when_black else "cells", "neg_gain"], ["dark"]),
            helper.make_node("Sigmoid", ["dark"], ["defect_map"]),
        ]
        outputs.append(helper.make_tensor_value_info("defect_map", TensorProto.FLOAT, ["N", cells, cells]))
    graph = helper.make_graph(
        nodes,
        "tiny_brightness",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", channels, size, size])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests.helpers")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def golden_frames(size: int, channels: int = 1, *, count: int = 4, seed: int = 0) -> np.ndarray:
    """Seeded ``uint8[count, C, size, size]`` frames from dark to bright (so both outcomes occur)."""
    rng = np.random.default_rng(seed)
    levels = np.linspace(20, 235, count)
    noise = rng.integers(-15, 16, size=(count, channels, size, size))
    frames = levels[:, None, None, None] + noise
    return np.clip(frames, 0, 255).astype(np.uint8)


def score(model_path: Path, pixels: np.ndarray, output: str = "probabilities") -> np.ndarray:
    """Probabilities (or another output) of ``pixels`` by onnxruntime (as serving will compute them)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run([output], {"pixels": pixels})[0]


def make_model_version(
    models_dir: Path,
    *,
    name: str = "tiny",
    version: str = "v1",
    classes: Sequence[str] = ("good", "scratch", "dent"),
    good_class: str | None = "good",
    threshold: float = 0.5,
    size: int = 32,
    channels: int = 1,
    bias: float = 0.0,
    gain: float = 4.0,
    conv: bool = True,
    per_class: dict[str, float] | None = None,
    golden_tolerance: float = 1e-4,
    nan_when_black: bool = False,
    reference_frames: np.ndarray | None = None,
    map_cell: int | None = None,
    levels: tuple[int, int] | None = None,
    nan_map_when_black: bool = False,
) -> ModelVersion:
    """Write a complete model version under ``models_dir/name/version`` and return it.

    ``levels``: the card's 16-bit pixel levels (a model taking 16-bit frames; the graph is the same).

    The version is not made active; call ``ModelRegistry(models_dir).promote(name, version,
    station=...)`` for that. ``reference_frames`` (uint8 ``[N, C, size, size]``) give the card a
    monitoring reference, built as training's export builds it (their statistics and scores).
    """
    folder = Path(models_dir) / name / version
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / "model.onnx"
    model_path.write_bytes(
        build_onnx(
            classes=classes,
            good_class=good_class,
            size=size,
            channels=channels,
            gain=gain,
            bias=bias,
            conv=conv,
            nan_when_black=nan_when_black,
            map_cell=map_cell,
            nan_map_when_black=nan_map_when_black,
        )
    )
    pixels = golden_frames(size, channels)
    probs = score(model_path, pixels)
    golden = {"inputs": pixels, "probabilities": probs}
    if map_cell is not None:
        golden["maps"] = score(model_path, pixels, output="defect_map")
    np.savez(folder / "golden.npz", **golden)  # as training.export writes it
    monitoring = None
    if reference_frames is not None:
        from inspection.monitoring.build import build_reference

        monitoring = build_reference(reference_frames, score(model_path, reference_frames), classes=list(classes),
                                     good_class=good_class, threshold=threshold, per_class=per_class)
    card = ModelCard(
        name=name,
        version=version,
        created=utc_now(),
        classes=list(classes),
        good_class=good_class,
        arch="tiny-brightness",
        input=InputSpec(height=size, width=size, channels=channels, resize="area", levels=levels),
        normalization=Normalization(mean=[0.5] * channels, std=[0.5] * channels),
        thresholds=Thresholds(reject=threshold, per_class=dict(per_class or {})),
        metrics={},
        dataset=DatasetRef(name="synthetic", fingerprint="0" * 64),
        training={"helper": "tests.helpers.tiny_model", "gain": gain, "bias": bias},
        parity=Parity(max_abs_diff=0.0, tolerance=1e-4, n_images=len(pixels), passed=True),
        golden=Golden(file="golden.npz", tolerance=golden_tolerance, count=len(pixels)),
        files=hash_files(folder, ["model.onnx", "golden.npz"]),
        monitoring=monitoring,
        defect_map=None if map_cell is None else DefectMapSpec(height=size // map_cell, width=size // map_cell,
                                                               parity_max_abs_diff=0.0),
    )
    save_card(card, folder)
    return ModelRegistry(models_dir).get(name, version, verify=True)


def frame_png(level: int, *, size: int = 32, channels: int = 1, seed: int = 0) -> bytes:
    """A PNG frame of roughly uniform brightness ``level`` (0 dark .. 255 bright)."""
    import cv2

    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 1 else (size, size, 3)
    image = np.clip(level + rng.integers(-10, 11, size=shape), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 array
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


BRIGHT = 230  # frames at this level pass with the default tiny model
DARK = 25  # frames at this level are rejected


def tamper_weights(folder: Path, *, gain: float = 5.0) -> None:
    """Replace a version's ONNX weights (another ``gain``) and recompute its card's hashes, as an
    attacker who can write the model folder would: the files match the card, only the golden
    frames tell."""
    card = load_card(folder)
    size = card.input.height
    (folder / card.model_file).write_bytes(build_onnx(classes=card.classes, good_class=card.good_class, size=size,
                                                      channels=card.input.channels, gain=gain))
    save_card(card.model_copy(update={"files": hash_files(folder, list(card.files))}), folder)
