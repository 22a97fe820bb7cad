"""The golden-frame check: a model version scores its card's golden frames as the card says.

File hashes alone prove only that the files match the card; whoever can rewrite the ONNX file
can recompute the card's hashes too. The golden frames are the behavioural check: the inputs
saved at export, re-scored now by ONNX Runtime, must give the probabilities saved beside them
within the card's tolerance. One implementation, used by ``inspection models promote`` (a
tampered version is refused before it becomes active), ``inspection models verify``,
``inspection models set-threshold`` (the copied version is checked before it is renamed into
place) and the server when it loads a model (``serving.model.load_model``).

Golden file format (``card.golden.file``, a NumPy ``.npz``, as ``training.export`` writes it):
``inputs`` = ``uint8[N, C, H, W]`` exactly as the graph takes them, ``probabilities`` =
``float32[N, len(classes)]`` and, for a card with a defect map, ``maps`` = ``float32[N, h, w]``
(judged with the same tolerance: a map branch altered alone would otherwise go unnoticed);
other arrays, e.g. ``names``, are ignored.

onnxruntime is imported only when a session has to be made here (it comes with the ``serve``
extra); the core stays importable without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inspection.card import ModelCard, verify_files
from inspection.errors import ModelIntegrityError, ValidationError

GOLDEN_INPUT_KEYS = ("inputs",)
GOLDEN_OUTPUT_KEYS = ("probabilities",)

#: Scores ``uint8[N, C, H, W]`` -> ``float[N, classes]``, or (probabilities, defect maps or None)
#: for a model with maps (a session's run, or a loaded model's).
Scorer = Callable[[np.ndarray], "np.ndarray | tuple[np.ndarray, np.ndarray | None]"]


@dataclass(frozen=True, slots=True)
class GoldenResult:
    """What the check found: frames scored, the largest difference and the card's tolerance."""

    model_id: str
    frames: int
    max_diff: float
    tolerance: float


def load_golden(card: ModelCard, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(pixels ``uint8[N, C, H, W]``, expected probabilities, expected defect maps) from the
    card's golden file, read once; the maps are None where the card has no defect map or the
    file holds none.

    Raises:
        ModelIntegrityError: the file cannot be read, lacks the arrays, or its pixels do not
            have the card's input shape.
    """
    path = Path(folder) / card.golden.file
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            x_key = next((k for k in GOLDEN_INPUT_KEYS if k in keys), None)
            y_key = next((k for k in GOLDEN_OUTPUT_KEYS if k in keys), None)
            if x_key is None or y_key is None:
                raise ModelIntegrityError(
                    f"{card.model_id}: golden file {path.name} has arrays {sorted(keys)}; it needs the inputs as one "
                    f"of {list(GOLDEN_INPUT_KEYS)} and the expected probabilities as one of {list(GOLDEN_OUTPUT_KEYS)}"
                )
            pixels, expected = np.asarray(data[x_key]), np.asarray(data[y_key])
            maps = np.asarray(data["maps"]) if card.defect_map is not None and "maps" in keys else None
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError(f"{card.model_id}: golden file {path.name} cannot be read: {exc}") from None
    spec = card.input
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or tuple(pixels.shape[1:]) != (spec.channels, spec.height,
                                                                                  spec.width):
        raise ModelIntegrityError(
            f"{card.model_id}: golden pixels are {pixels.dtype}{list(pixels.shape)}, expected uint8[N, "
            f"{spec.channels}, {spec.height}, {spec.width}]"
        )
    return np.ascontiguousarray(pixels), expected, maps


def golden_difference(card: ModelCard, got: np.ndarray, expected: np.ndarray) -> float:
    """The largest absolute difference between scored and expected golden probabilities.

    Raises:
        ModelIntegrityError: the shapes differ, or the difference is beyond the card's tolerance.
    """
    if got.shape != expected.shape:
        raise ModelIntegrityError(f"{card.model_id}: golden outputs {got.shape}, the card's file has {expected.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64)))) if got.size else 0.0
    if not diff <= card.golden.tolerance:  # NaN is beyond any tolerance
        raise ModelIntegrityError(
            f"{card.model_id}: golden frames re-scored with max abs difference {diff:.3g}, beyond the card's "
            f"tolerance {card.golden.tolerance:g}; the model file does not behave as its card says "
            "(altered weights, wrong file, runtime or hardware?)"
        )
    return diff


def check_golden(card: ModelCard, folder: Path, scorers: list[Scorer] | None = None) -> GoldenResult:
    """Re-score the card's golden frames with each of ``scorers`` (default: a fresh ONNX Runtime
    session on the card's model file) and compare with the card's expected outputs.

    Raises:
        ModelIntegrityError: the golden file is unusable, the model cannot score it, or the
            outputs differ beyond the card's tolerance.
        ValidationError: no scorer was given and onnxruntime is not installed.
    """
    pixels, expected, expected_maps = load_golden(card, folder)
    diff = 0.0
    for score in scorers or [_session_scorer(card, Path(folder))]:
        try:
            out = score(pixels)
        except ModelIntegrityError:
            raise
        except Exception as exc:  # noqa: BLE001 -- onnxruntime (or a loaded model) raises its own errors
            raise ModelIntegrityError(f"{card.model_id}: golden frames cannot be scored: {exc}") from None
        got, maps = out if isinstance(out, tuple) else (out, None)
        diff = max(diff, golden_difference(card, np.asarray(got), expected))
        if expected_maps is not None:
            if maps is None:
                raise ModelIntegrityError(f"{card.model_id}: the card has a defect map and its golden maps, the "
                                          "model gave no map")
            diff = max(diff, golden_difference(card, np.asarray(maps), expected_maps))
    return GoldenResult(card.model_id, len(pixels), diff, card.golden.tolerance)


def verify_version(card: ModelCard, folder: Path) -> GoldenResult:
    """Every file against its sha256, then the golden frames: what makes a version trusted.

    Raises:
        ModelIntegrityError: a file differs from the card, or the golden check fails.
        ValidationError: onnxruntime is not installed.
    """
    verify_files(card, Path(folder))
    return check_golden(card, folder)


def _session_scorer(card: ModelCard, folder: Path) -> Scorer:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValidationError("re-scoring golden frames needs onnxruntime: install the serve extra "
                              "(pip install -e '.[serve]')") from None
    model_path = folder / card.model_file
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 -- onnxruntime raises its own untyped exceptions
        raise ModelIntegrityError(f"{card.model_id}: onnxruntime cannot load {model_path.name}: {exc}") from None

    names = [card.input.output_name] + ([card.defect_map.output_name] if card.defect_map is not None else [])

    def score(pixels: np.ndarray) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
        outs = session.run(names, {card.input.input_name: pixels})
        return (np.asarray(outs[0]), np.asarray(outs[1])) if len(outs) > 1 else np.asarray(outs[0])

    return score
