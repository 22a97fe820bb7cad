"""One loaded model version: an onnxruntime session, verified before it scores a single part.

Loading checks every file's sha256 against the card, creates the session once, warms it up
and re-scores the card's golden frames; a model whose outputs differ from the card's beyond
the card's tolerance is refused with ``ModelIntegrityError``. Nothing here is copied from
training: input name, size, channels and classes all come from the card.

The golden-frame check itself is ``inspection.golden`` (the same one ``models promote`` and
``models verify`` run).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from inspection.card import ModelCard, verify_files
from inspection.errors import ModelError, ModelIntegrityError
from inspection.golden import Scorer, check_golden
from inspection.registry import ModelVersion
from serving.settings import RuntimeSettings

log = logging.getLogger(__name__)

def _session_options(runtime: RuntimeSettings, threads: int | None = None):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or runtime.resolved_intra_op_threads()
    opts.inter_op_num_threads = runtime.inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if runtime.allow_spinning else "0")
    opts.log_severity_level = 3
    return opts


#: A frame's inference below this (ms, all intra-op threads) counts as short: under load the
#: event loop's own work per frame (reading the request, decoding a camera frame, the log:
#: ~1-1.5 ms on a 2-core line PC) is then a large share, and batches do better on one thread
#: fewer, leaving that core to the loop. A longer inference keeps every core (one session).
SHORT_INFERENCE_MS = 4.0


def _frame_ms(session: object, output: str, feed: dict[str, np.ndarray], runs: int = 5) -> float:
    """Median ms of one single-frame run (after warm-up)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run([output], feed)  # type: ignore[attr-defined]
        times.append((time.perf_counter() - started) * 1000.0)
    return sorted(times)[len(times) // 2]


def _busy_threads(runtime: RuntimeSettings, frame_ms: float) -> int:
    """Intra-op threads for batches scored while more frames arrive (see ``LoadedModel.run``)."""
    if runtime.busy_intra_op_threads is not None:
        return runtime.busy_intra_op_threads
    threads = runtime.resolved_intra_op_threads()
    return max(1, threads - 1) if frame_ms < SHORT_INFERENCE_MS else threads


@dataclass(eq=False)
class LoadedModel:
    """A verified model version ready to score ``uint8[N, C, H, W]`` batches."""

    version: ModelVersion
    session: object
    model_sha256: str
    golden_max_diff: float
    #: The session batches run on while frames keep arriving (see ``run``); None = ``session``.
    busy_session: object | None = None
    loaded_at: float = field(default_factory=time.time)
    # onnxruntime's InferenceSession.run is thread-safe, but one call at a time per session
    # keeps intra-op threads from oversubscribing a small line PC.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def card(self) -> ModelCard:
        return self.version.card

    @property
    def model_id(self) -> str:
        return self.version.model_id

    def run(self, pixels: np.ndarray, *, busy: bool = False) -> np.ndarray:
        """Probabilities ``float32[N, len(classes)]`` for ``uint8[N, C, H, W]`` pixels (see ``score``)."""
        return self.score(pixels, busy=busy)[0]

    def score(self, pixels: np.ndarray, *, busy: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities ``float32[N, len(classes)]``, defect maps ``float32[N, h, w]`` or None when
        the card has no map) for ``uint8[N, C, H, W]`` pixels, from one run of the graph.

        ``busy``: other frames are being received and decoded meanwhile. A lone frame gets
        every core (lowest latency); under load the batch runs on ``busy_session``, one
        intra-op thread fewer, leaving a core to the event loop that reads and decodes the
        next frames (more frames per second than both fighting over every core).

        Raises:
            ModelError: onnxruntime failed, or an output has the wrong shape or non-finite values.
        """
        spec = self.card.input
        mapping = self.card.defect_map
        names = [spec.output_name] if mapping is None else [spec.output_name, mapping.output_name]
        session = self.busy_session if busy and self.busy_session is not None else self.session
        try:
            with self._lock:
                outs = session.run(names, {spec.input_name: pixels})  # type: ignore[attr-defined]
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise ModelError(f"{self.model_id}: onnxruntime failed on a batch of {len(pixels)}: {exc}") from exc
        out = outs[0]
        if out.shape != (len(pixels), len(self.card.classes)):
            raise ModelError(
                f"{self.model_id}: output shape {out.shape}, expected ({len(pixels)}, {len(self.card.classes)})"
            )
        if not np.isfinite(out).all():
            raise ModelError(f"{self.model_id}: output has NaN or infinite probabilities")
        if mapping is None:
            return out, None
        heat = outs[1]
        if heat.shape != (len(pixels), mapping.height, mapping.width):
            raise ModelError(f"{self.model_id}: defect map shape {heat.shape}, expected "
                             f"({len(pixels)}, {mapping.height}, {mapping.width})")
        if not np.isfinite(heat).all():
            # The map places a reject's box; NaN there would fail after scoring, outside the fail-safe path.
            raise ModelError(f"{self.model_id}: defect map has NaN or infinite values")
        return out, heat


def _golden_run(loaded: LoadedModel, pixels: np.ndarray, *, busy: bool) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        return loaded.score(pixels, busy=busy)
    except ModelError as exc:
        raise ModelIntegrityError(f"{loaded.model_id}: golden frames cannot be scored: {exc}") from None


def load_model(version: ModelVersion, runtime: RuntimeSettings, *, warmup_batch: int = 1) -> LoadedModel:
    """Verify and load one model version (hashes, session, warm-up, golden frames).

    Raises:
        ModelIntegrityError: a file differs from its sha256 in the card, or the golden frames
            score differently from the card's expected probabilities beyond its tolerance.
        ModelCardError: the ONNX file cannot be loaded or does not match the card's input.
    """
    import onnxruntime as ort

    card = version.card
    folder = Path(version.path)
    verify_files(card, folder)
    model_path = folder / card.model_file
    try:
        session = ort.InferenceSession(str(model_path), sess_options=_session_options(runtime),
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 -- onnxruntime raises its own untyped exceptions
        raise ModelIntegrityError(f"{version.model_id}: onnxruntime cannot load {model_path.name}: {exc}") from None
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    spec = card.input
    if spec.input_name not in inputs or spec.output_name not in outputs:
        raise ModelIntegrityError(
            f"{version.model_id}: graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}, the card "
            f"names input {spec.input_name!r} and output {spec.output_name!r}"
        )
    if card.defect_map is not None and card.defect_map.output_name not in outputs:
        raise ModelIntegrityError(f"{version.model_id}: the card names defect map output "
                                  f"{card.defect_map.output_name!r}, the graph has outputs {sorted(outputs)}")
    shape = inputs[spec.input_name].shape
    if (
        len(shape) == 4
        and all(isinstance(d, int) for d in shape[1:])
        and tuple(shape[1:]) != (spec.channels, spec.height, spec.width)
    ):
        raise ModelIntegrityError(f"{version.model_id}: graph input is {shape[1:]}, "
                                  f"the card says ({spec.channels}, {spec.height}, {spec.width})")
    # Warm-up (allocations, kernel choice) with mid-grey frames; only the golden frames are judged.
    warm = np.full((warmup_batch, spec.channels, spec.height, spec.width), 128, dtype=np.uint8)
    try:
        session.run([spec.output_name], {spec.input_name: warm})
        frame_ms = _frame_ms(session, spec.output_name, {spec.input_name: warm[:1]})
        busy_threads = _busy_threads(runtime, frame_ms)
        busy_session = None
        if busy_threads != runtime.resolved_intra_op_threads():
            busy_session = ort.InferenceSession(str(model_path), sess_options=_session_options(runtime, busy_threads),
                                                providers=["CPUExecutionProvider"])
            busy_session.run([spec.output_name], {spec.input_name: warm})
    except Exception as exc:  # noqa: BLE001 -- onnxruntime raises its own untyped exceptions
        raise ModelIntegrityError(f"{version.model_id}: warm-up run failed: {exc}") from None
    loaded = LoadedModel(
        version=version,
        session=session,
        model_sha256=card.files[card.model_file],
        golden_max_diff=0.0,
        busy_session=busy_session,
    )
    # The behavioural check (inspection.golden), on every session this model will score with.
    scorers: list[Scorer] = [partial(_golden_run, loaded, busy=busy)
                             for busy in ((False, True) if busy_session is not None else (False,))]
    diff = check_golden(card, folder, scorers).max_diff
    loaded.golden_max_diff = diff
    log.info("loaded %s (golden max diff %.2g, %d threads, %.1f ms per frame, %d threads under load)", version.model_id,
             diff, runtime.resolved_intra_op_threads(), frame_ms, busy_threads)
    return loaded
