"""The model card: the one artifact contract between training and serving.

An exported model version is a folder ``models/<name>/<version>/`` holding ``model.onnx``
and ``model.json`` (this schema) plus the files the card lists (golden frames, split, report).
Serving reads only the card: classes, input size, resize method, channel conversion,
normalisation and thresholds all come from here, never from constants in serving code.

The ONNX graph takes the camera's 8-bit pixels, already decoded, converted to the card's
colour mode and resized to the card's input size, as ``uint8[N, C, H, W]``; normalisation
(``(x / 255 - mean) / std``) happens inside the graph and the graph outputs softmax
probabilities ``float32[N, len(classes)]``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from inspection.errors import ModelCardError, ModelIntegrityError
from inspection.monitoring.reference import MonitoringReference

CARD_FILENAME = "model.json"
SCHEMA_VERSION: Literal[1] = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: The most tile rows (and columns) a model's input may be cut into.
MAX_TILES = 16


class TileGrid(_Strict):
    """``rows`` x ``cols`` tiles of ``tile_height`` x ``tile_width`` pixels, evenly spread over the
    model input (neighbours overlap when the tiles are larger than input / count)."""

    rows: int = Field(ge=1, le=MAX_TILES)
    cols: int = Field(ge=1, le=MAX_TILES)
    tile_height: int = Field(gt=0, le=4096)
    tile_width: int = Field(gt=0, le=4096)


class InputSpec(_Strict):
    """What the graph's input is, and how a camera frame becomes it."""

    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)
    #: 1 = grayscale (the CCD default), 3 = RGB. A colour frame sent to a 1-channel model is
    #: converted with OpenCV's BGR2GRAY luma weights; a gray frame sent to a 3-channel model
    #: is replicated into three equal channels. Training uses the same function.
    channels: Literal[1, 3] = 1
    #: OpenCV interpolation used to reach (width, height); "area" is the right one for
    #: down-scaling line-camera frames (no aliasing of fine coating texture).
    resize: Literal["area", "linear", "cubic", "nearest"] = "area"
    #: How a frame of another shape reaches (width, height). "stretch" scales each axis on its
    #: own (the frame's aspect ratio is lost: what cards before geometry existed did);
    #: "letterbox" scales by one factor so the whole frame fits, and fills the rest by
    #: mirroring the frame's border (no artificial edge for the network to find).
    geometry: Literal["stretch", "letterbox"] = "stretch"
    #: Optional region of interest, applied before everything else: (x, y, width, height) in
    #: the camera frame's pixels, for cameras that see more than the part. Frames must be at
    #: least as large as the box.
    roi: tuple[int, int, int, int] | None = None
    #: Optional tile grid: the graph cuts the (height, width) input into overlapping tiles,
    #: scores them in one batch and answers the probabilities of the tile with the highest
    #: P(defect) (the reject rule then applies to the frame). Cut inside the graph, so serving
    #: sends the whole frame and cannot cut differently; ``inspection.preprocess.tile_boxes``
    #: describes the same grid for people and defect maps.
    tiles: TileGrid | None = None
    #: Frames deeper than 8 bits (Mono10/12/14/16 line cameras, stored as 16-bit PNG or TIFF): the
    #: pixel values (low, high) mapped linearly onto the graph's 0..255 input, after the resize
    #: (which averages in the frame's own depth); values outside clip, as on a saturated 8-bit
    #: sensor. Fitted on the training frames (``training.recipe.pixel_levels``). None: 8-bit
    #: frames, used as they are. A model takes frames of one depth: the other is refused.
    levels: tuple[int, int] | None = None
    dtype: Literal["uint8"] = "uint8"
    layout: Literal["NCHW"] = "NCHW"
    input_name: str = "pixels"
    output_name: str = "probabilities"

    @model_validator(mode="after")
    def _fits(self) -> InputSpec:
        if self.levels is not None and not 0 <= self.levels[0] < self.levels[1] <= 65535:
            raise ValueError(f"levels {self.levels}: 0 <= low < high <= 65535 is required (16-bit pixel values)")
        if self.roi is not None:
            x, y, w, h = self.roi
            if x < 0 or y < 0 or w <= 0 or h <= 0:
                raise ValueError(f"roi {self.roi}: x, y >= 0 and width, height > 0 are required")
        if self.tiles is not None:
            t = self.tiles
            if t.tile_height > self.height or t.tile_width > self.width:
                raise ValueError(
                    f"tiles of {t.tile_width}x{t.tile_height} do not fit the {self.width}x{self.height} input"
                )
            if t.tile_height * t.rows < self.height or t.tile_width * t.cols < self.width:
                raise ValueError(
                    f"{t.rows}x{t.cols} tiles of {t.tile_width}x{t.tile_height} leave parts of the "
                    f"{self.width}x{self.height} input uncovered"
                )
        return self


class Normalization(_Strict):
    """Applied inside the ONNX graph; recorded so a reader knows what the graph does."""

    mean: list[float]
    std: list[float]
    scale: float = 1.0 / 255.0
    in_graph: Literal[True] = True


class Thresholds(_Strict):
    """The operating point.

    ``reject`` is the threshold on P(defect) = 1 - P(good class): a frame is rejected when
    P(defect) >= reject. ``per_class`` optionally adds a threshold on a single defect class's
    probability (reject when P(class) >= its threshold), for defect types that must never pass.
    """

    reject: float = Field(ge=0.0, le=1.0)
    #: Each within 0..1 like ``reject``: NaN compares false, so a NaN here (JSON allows it) would
    #: silently switch off a class that must never pass.
    per_class: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(default_factory=dict)
    #: What the threshold was calibrated for, e.g. {"max_escape": 0.01}.
    target: dict[str, float] = Field(default_factory=dict)
    #: Calibration evidence (validation counts, achieved rates, whether the target is supported).
    calibration: dict[str, Any] = Field(default_factory=dict)


class DatasetRef(_Strict):
    name: str
    fingerprint: str
    #: File (relative to the version folder) with the split of every image: path,label,split.
    split_file: str | None = None
    split_seed: int | None = None
    split_counts: dict[str, dict[str, int]] = Field(default_factory=dict)


class Parity(_Strict):
    """Torch vs ONNX Runtime on the whole test split."""

    max_abs_diff: float
    tolerance: float
    n_images: int
    passed: bool


class Golden(_Strict):
    """A few frames with their expected probabilities, re-scored by serving on load.

    The file is an ``.npz`` with ``inputs`` (``uint8[k, C, H, W]``, the graph's input exactly),
    ``probabilities`` (``float32[k, len(classes)]``, ONNX Runtime's output at export) and
    ``names`` (the dataset paths the frames came from).
    """

    file: str = "golden.npz"
    tolerance: float = 1e-4
    count: int = Field(ge=1)


#: What a defect map's cell is (``DefectMapSpec.cells``).
MapCells = Literal["class_activation", "feature_density", "memory_distance"]


class DefectMapSpec(_Strict):
    """The graph's second output: where the frame looks defective.

    ``float32[N, height, width]`` in 0..1, a coarse grid over the model input (cell ``(i, j)``
    covers input rows ``i * input.height / height`` onwards): each cell's P(defect), the
    classifier's own head applied at that position (an anomaly model's: P(anomaly)); without a
    good class, the cell's most confident class probability. With ``weighted_by_frame`` (models
    exported since 2026-12-06) each cell is further multiplied by the frame's own P(defect), so a
    frame the model calls good has a cold map. ``inspection.defectmap`` turns it into a peak and a
    box in the camera frame's pixels (one factor per frame moves neither). Cards without it serve
    without maps.
    """

    output_name: str = "defect_map"
    height: int = Field(ge=1, le=4096)
    width: int = Field(ge=1, le=4096)
    #: Each cell times the frame's P(defect) (``training.defectmap.weighted_by_frame``); False on
    #: older cards, whose maps are the cells' P(defect) alone.
    weighted_by_frame: bool = False
    #: What a cell's value is: ``class_activation`` (the head applied at the cell), ``feature_density``
    #: (a from-scratch anomaly model: how far the cell's features lie from good surface's, as
    #: P(anomaly)), ``memory_distance`` (the pretrained feature memory: distance to the nearest good
    #: patch, as P(anomaly)). Older cards: class activation.
    cells: MapCells = "class_activation"
    #: Torch vs ONNX Runtime, max abs difference of the maps over the whole test split.
    parity_max_abs_diff: float = Field(ge=0.0)


class ModelCard(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    created: datetime
    classes: list[str] = Field(min_length=2)
    #: The class meaning "no defect". None for defect-type classifiers with no good class
    #: (every frame of such a model's line is already known to be defective).
    good_class: str | None
    #: ``classify``: trained on the dataset's classes; ``anomaly``: trained on good images alone
    #: (classes: the dataset's good class, then ``anomaly``; older anomaly cards say ``good``;
    #: serving treats both modes alike). Older cards: classify.
    mode: Literal["classify", "anomaly"] = "classify"
    arch: str
    model_file: str = "model.onnx"
    int8_file: str | None = None
    input: InputSpec
    normalization: Normalization
    thresholds: Thresholds
    metrics: dict[str, Any] = Field(default_factory=dict)
    dataset: DatasetRef
    training: dict[str, Any] = Field(default_factory=dict)
    code_version: str = "unknown"
    parity: Parity
    golden: Golden
    #: sha256 of every file of the version except model.json itself.
    files: dict[str, str]
    #: Frame statistics and scores of the validation split, for drift and the frame-quality gate
    #: (``inspection.monitoring``; docs/monitoring.md). None on cards exported before it existed.
    monitoring: MonitoringReference | None = None
    #: The defect map output (None on cards exported before maps existed: no maps served).
    defect_map: DefectMapSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be unique, got {self.classes}")
        if self.good_class is not None and self.good_class not in self.classes:
            raise ValueError(f"good_class {self.good_class!r} is not one of classes {self.classes}")
        unknown = sorted(set(self.thresholds.per_class) - set(self.defect_classes))
        if unknown:
            raise ValueError(
                f"per-class thresholds for {unknown}, allowed only for defect classes {self.defect_classes}"
            )
        for stat in (self.normalization.mean, self.normalization.std):
            if len(stat) != self.input.channels:
                raise ValueError(
                    f"normalization has {len(stat)} values, the input has {self.input.channels} channel(s)"
                )
        if self.model_file not in self.files:
            raise ValueError(f"files must list the model file {self.model_file!r}")
        if self.golden.file not in self.files:
            raise ValueError(f"files must list the golden frames file {self.golden.file!r}")
        return self

    @property
    def defect_classes(self) -> list[str]:
        return [c for c in self.classes if c != self.good_class]

    @property
    def model_id(self) -> str:
        return f"{self.name}/{self.version}"


def sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in chunks so large models do not load twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_files(folder: Path, names: list[str]) -> dict[str, str]:
    """sha256 of each named file in ``folder`` (for the card's ``files``)."""
    return {name: sha256_file(folder / name) for name in sorted(names)}


def load_card(folder: Path) -> ModelCard:
    """Read and validate ``folder/model.json``.

    Raises:
        ModelCardError: the card is missing, is not JSON, or does not match the schema.
    """
    path = Path(folder) / CARD_FILENAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelCardError(f"no model card at {path}: a model version needs {CARD_FILENAME}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelCardError(f"model card {path} is not valid JSON: {exc}") from None
    try:
        return ModelCard.model_validate(raw)
    except PydanticValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<card>'}: {err['msg']}" for err in exc.errors()
        )
        raise ModelCardError(f"model card {path} is invalid: {problems}") from None


def save_card(card: ModelCard, folder: Path) -> Path:
    """Write the card as pretty JSON (stable key order, so diffs of cards are readable)."""
    path = Path(folder) / CARD_FILENAME
    path.write_text(card.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def verify_files(card: ModelCard, folder: Path) -> None:
    """Check every file listed in the card against its sha256.

    Raises:
        ModelIntegrityError: a file is missing or its content differs from the card.
    """
    folder = Path(folder)
    for name, expected in card.files.items():
        path = folder / name
        if not path.is_file():
            raise ModelIntegrityError(f"{card.model_id}: file {name!r} listed in the card is missing from {folder}")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelIntegrityError(
                f"{card.model_id}: file {name!r} has sha256 {actual[:12]}…, the card says {expected[:12]}…"
            )


def utc_now() -> datetime:
    return datetime.now(UTC)
