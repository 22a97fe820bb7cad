"""Typed training configuration: YAML sets defaults, command-line flags win, the result is saved.

``load_config(file, overrides)`` builds the config once at start-up: the packaged
``configs/default.yaml`` first, then the given YAML file, then the flags (``None`` flags are
"not given"). The resolved config is written beside the model as ``config.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from inspection.card import MAX_TILES
from inspection.config import deep_merge
from inspection.errors import ConfigError
from inspection.registry import NAME_PATTERN

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


class AugmentConfig(BaseModel):
    """Augmentation for line images (albumentations); each probability 0 disables the step.

    ``hflip``/``vflip``/``rot90`` left at None are decided by the dataset's manifest
    (``orientation``, see ``training.recipe``): a flip or rotation is only safe where the
    engineer said the part's orientation carries no meaning.

    By default only those *lossless* steps run (a flip or a 90-degree turn moves pixels, it
    changes none). The lossy ones are off until an engineer turns them on for a line that needs
    them: brightness and contrast are divided out by the network's per-image standardisation
    anyway, so on ``uint8`` frames all they add is clipping of the brightest and darkest pixels;
    a sub-pixel shift or scale resamples the frame and blurs a one-pixel crack into its
    background; gamma and noise change exactly the grey levels a dark defect is told by. Measured
    on a line the recipe was not tuned on (ELPV, docs/training.md): test AUROC 0.782 with them,
    0.821 without.
    """

    model_config = ConfigDict(extra="forbid")

    hflip: bool | None = None
    vflip: bool | None = None
    #: 90-degree rotations: only for square inputs of parts/textures whose orientation carries no meaning.
    rot90: bool | None = None
    brightness: float = Field(0.15, ge=0.0, le=1.0)
    contrast: float = Field(0.15, ge=0.0, le=1.0)
    brightness_p: float = Field(0.0, ge=0.0, le=1.0)
    gamma: tuple[int, int] = (85, 115)
    gamma_p: float = Field(0.0, ge=0.0, le=1.0)
    blur_p: float = Field(0.0, ge=0.0, le=1.0)
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    noise_p: float = Field(0.0, ge=0.0, le=1.0)
    noise_std: tuple[float, float] = (0.005, 0.02)
    #: Whole-pixel shifts of up to this many pixels each way (the border mirrored in), drawn for
    #: every training image: for parts that sit at different places under the camera. Lossless
    #: (pixels move, none is resampled), but off by default: on a line nobody tuned for (ELPV,
    #: docs/training.md) one network step's worth (16 px) did not beat the noise.
    shift_px: int = Field(0, ge=0, le=64)
    #: Small sub-pixel shifts/scales (for parts that sit at different places under the camera);
    #: lossy: the frame is resampled.
    shift_scale_p: float = Field(0.0, ge=0.0, le=1.0)


class TrainConfig(BaseModel):
    """Everything one training run needs; saved as ``config.yaml`` with the model version.

    Fields left at None are chosen by rule from the data (``training.recipe.resolve``), which
    logs each choice with its reason and records it in the card; the saved config holds the
    chosen values, so training with it again reproduces the run.
    """

    model_config = ConfigDict(extra="forbid")

    data: Path | None = None
    #: The model's name in the registry (None: from the dataset's name, ``training.train.default_name``).
    name: str | None = None
    models_dir: Path = Path("models")
    arch: str = "linecnn"
    pretrained: bool = True
    pretrained_path: Path | None = None
    #: The model input's shorter side in pixels, rounded to a multiple of 16 (None: the largest
    #: the compute budget allows, never above the frames' own resolution).
    image_size: int | None = Field(None, ge=16, le=1024)
    #: (height, width) of the model input; None: ``image_size`` on the shorter side, the other
    #: side from the frames' median aspect ratio.
    input_shape: tuple[int, int] | None = None
    #: "letterbox" keeps each frame's aspect ratio (padding by mirroring), "stretch" squashes.
    geometry: Literal["letterbox", "stretch"] = "letterbox"
    #: Tile grid "ROWSxCOLS" cut inside the graph (frame score = the tile with the highest
    #: P(defect)); None: no tiles.
    tiles: str | None = Field(None, pattern=r"^[1-9][0-9]?x[1-9][0-9]?$")
    #: Region of interest (x, y, width, height) in camera pixels, cropped before everything.
    roi: tuple[int, int, int, int] | None = None
    #: The network's input channels: 1 (gray) or 3 (colour); None: by rule (colour where the
    #: training frames are, ``training.recipe.colour_channels``).
    channels: Literal[1, 3] | None = None
    #: 16-bit frames: the pixel values (low, high) mapped onto the network's 0..255 input
    #: (``inspection.card.InputSpec.levels``); None: by rule (8-bit frames need none; 16-bit
    #: frames get their training frames' range, ``training.recipe.pixel_levels``).
    levels: tuple[int, int] | None = None
    resize: Literal["area", "linear", "cubic", "nearest"] = "area"
    epochs: int | None = Field(None, ge=1, le=1000)
    batch_size: int | None = Field(None, ge=1, le=1024)
    lr: float = Field(3e-3, gt=0.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    #: Class imbalance: "sampler" draws classes evenly (weighted sampler), "weights" weights the
    #: loss by inverse frequency, "none" trains on the natural frequencies; None: by rule.
    balance: Literal["sampler", "weights", "none"] | None = None
    patience: int | None = Field(None, ge=1)
    min_epochs: int | None = Field(None, ge=1)
    #: Exponential moving average of the weights, evaluated and exported instead of the raw
    #: weights (smoother, and less sensitive to the last batches of a small dataset).
    ema: bool = True
    #: Average the outputs of the frame and its mirror image inside the exported graph (one
    #: extra inference at serving); None: by rule (on where the orientation allows a mirror).
    tta: bool | None = None
    #: Compute budget the automatic choices fit into, in wall minutes here: the recipe sizes
    #: input and epochs for it at the training step's speed measured on this machine (on CPU;
    #: a GPU gets proportionally more), and the run's measured epoch time then keeps
    #: recipe-chosen epochs to it (shortened on a slower or busier machine, lengthened where
    #: time is left: training.engine.TimeBudget).
    budget_minutes: float = Field(20.0, gt=0.0, le=10_000.0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: What the training steps compute in: ``fp32``; ``bf16`` (mixed, CPUs that compute it
    #: natively); ``fp16`` (mixed, CUDA). None: by rule (training.recipe.choose_precision).
    precision: Literal["fp32", "bf16", "fp16"] | None = None
    #: numpy and torch take seeds of 32 bits, no sign.
    seed: int = Field(0, ge=0, lt=2**32)
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig.model_validate({}))
    #: Operating point: exactly one of the two is used; max_overkill wins when set.
    max_escape: float | None = Field(0.01, gt=0.0, lt=1.0)
    max_overkill: float | None = Field(None, gt=0.0, lt=1.0)
    #: Warn (and record the trade-off table) when the target escape forces more overkill than this.
    overkill_limit: float = Field(0.20, gt=0.0, le=1.0)
    #: Calibrate even when validation cannot resolve the target; the card then says
    #: ``supported: false`` (default: refuse before training).
    allow_unsupported_target: bool = False
    #: Fixed extra thresholds on single defect classes' probabilities (reject when reached).
    per_class_thresholds: dict[str, float] = Field(default_factory=dict)
    int8: bool = False
    golden_count: int = Field(8, ge=1, le=64)
    parity_tolerance: float = Field(1e-4, gt=0.0)
    #: torch CPU threads; None: the cores this process may use, less those other work keeps
    #: busy right now (recipe.busy_cores), at least 1.
    threads: int | None = Field(None, ge=1)
    #: ``classify``: a classifier of the dataset's classes; ``anomaly``: learn from the good images
    #: alone, reject what does not look like them (training.anomaly).
    mode: Literal["classify", "anomaly"] = "classify"
    #: Anomaly mode's method: ``synthetic`` trains from scratch on synthetic anomalies
    #: (training.anomaly); ``memory`` keeps a memory of good patches in pretrained ResNet features
    #: (training.memory; needs the weights); ``auto``: memory where pretrained weights for a
    #: ResNet architecture are on this machine, else synthetic.
    anomaly_method: Literal["auto", "synthetic", "memory"] = "auto"
    #: Worker processes on this machine for data-parallel training (DistributedDataParallel:
    #: gloo on CPU, NCCL with one GPU each); 1: this process alone (training.distributed).
    nproc: int = Field(1, ge=1, le=256)
    resume: Path | None = None
    progress: bool = True
    #: The settings the engineer gave (config file or flags; ``augment.<key>`` for its keys), not
    #: the packaged defaults: ``--resume`` refuses those that differ from the checkpoint's.
    _given: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @property
    def given(self) -> frozenset[str]:
        """The keys ``load_config`` was given (empty for a config built otherwise)."""
        return self._given

    def __eq__(self, other: object) -> bool:
        # The settings alone: which of them were given is how a config came about (a saved and
        # reloaded config is the same config), and pydantic would compare private attributes too.
        if not isinstance(other, TrainConfig):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    @field_validator("tiles")
    @classmethod
    def _tiles_fit_the_card(cls, value: str | None) -> str | None:
        # The pattern only checks the form; the card (TileGrid) allows no more than MAX_TILES a side.
        if value is not None and max(int(n) for n in value.split("x")) > MAX_TILES:
            raise ValueError(f"rows and columns must each be 1..{MAX_TILES}")
        return value

    @field_validator("name")
    @classmethod
    def _name_fits_the_registry(cls, value: str | None) -> str | None:
        # Checked here, at start: the card refuses any other name only once the model is trained.
        if value is not None and not NAME_PATTERN.match(value):
            raise ValueError("a model name takes letters A-Z a-z, digits and _ . - (starting with a letter or "
                             "digit), at most 128 characters")
        return value

    @field_validator("roi")
    @classmethod
    def _roi_is_a_region(cls, value: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if value is not None and (value[0] < 0 or value[1] < 0 or value[2] <= 0 or value[3] <= 0):
            raise ValueError("x, y >= 0 and width, height > 0 are required")
        return value

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:.2f} leaves too little "
                "to train; keep it < 0.8"
            )
        if self.input_shape is not None and min(self.input_shape) < 16:
            raise ValueError(f"input_shape {self.input_shape}: each side must be >= 16 px")
        for cls, t in self.per_class_thresholds.items():
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"per-class threshold for {cls!r} is {t}, allowed 0..1")
        return self

    @property
    def target(self) -> dict[str, float]:
        """The calibration target, e.g. ``{"max_escape": 0.01}``."""
        if self.max_overkill is not None:
            return {"max_overkill": self.max_overkill}
        return {"max_escape": self.max_escape if self.max_escape is not None else 0.01}

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``.

    Raises:
        ConfigError: missing or unreadable file, not UTF-8, invalid YAML, or not a mapping.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; see {CONFIG_DIR} for examples") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                          f"{exc.start}); save it as UTF-8") from None
    except OSError as exc:  # a folder, no permission
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, got {type(raw).__name__}")
    return raw


def load_config(config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Default YAML, then ``config_file``, then non-None ``overrides`` (flags win).

    Raises:
        ConfigError: a file cannot be read, a value is invalid (the message names the key), or
            ``max_escape`` is given (file or flag) with ``mode: anomaly`` and no ``max_overkill``.
    """
    merged = read_yaml(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else {}
    given = read_yaml(config_file) if config_file is not None else {}
    merged = deep_merge(merged, given)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    given = {**given, **flags}  # the engineer's own values: the packaged defaults are not "given"
    if "max_overkill" in flags and "max_escape" not in flags:
        merged["max_escape"] = None
    if "max_escape" in flags and "max_overkill" not in flags:
        merged["max_overkill"] = None
    merged = deep_merge(merged, flags)
    try:
        cfg = TrainConfig.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<config>'}={err.get('input')!r}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid training config: {problems}") from None
    keys: set[str] = set()
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(getattr(cfg, key), BaseModel):
            keys |= {f"{key}.{sub}" for sub in value}  # augment: the keys given, not its defaults
        else:
            keys.add(key)
    cfg._given = frozenset(keys)
    if cfg.mode == "anomaly" and cfg.max_overkill is None and given.get("max_escape") is not None:
        # Anomaly mode replaces the default escape target by an overkill target (training.train);
        # one the engineer gave must not be replaced without a word.
        raise ConfigError(
            f"--max-escape {cfg.max_escape:g} (flag or config file) with --mode anomaly: an anomaly model's "
            "threshold is placed on good images alone, so its target is an overkill rate; give --max-overkill "
            "RATE instead (default 0.01)")
    return cfg


def save_config(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.to_yaml_dict(), sort_keys=True), encoding="utf-8")
