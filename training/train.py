"""``main(cfg)``: from a dataset folder to a verified model version ``models/<name>/<version>/``.

Steps (one function each): ``_prepare`` validates the dataset and config before any compute,
splits honestly (duplicates and groups never cross splits) and lets ``training.recipe`` choose
every open setting from the data -> the images are cached as serving would preprocess them ->
``_train``: AdamW one-cycle with an EMA of the weights, selected on validation AUROC ->
``_operating_point``: the reject threshold calibrated on validation, with the trade-off table
-> test figures by the one reject rule (``inspection.decisions``) -> ``training.version.export_version``: ONNX, checker,
parity on the whole test split, golden frames, optional int8, report, stored scores, card with
the sha256 of every file.

The version is assembled in ``models/.staging/<name>/<version>.<random>/`` and renamed into
place only when everything passed, so the registry never shows a half-written version.
Checkpoints live in ``models/.runs/<name>-<version>/checkpoint.pt``; ``--resume`` takes one.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inspection.card import (
    InputSpec,
    ModelCard,
    TileGrid,
)
from inspection.dataset.layout import Dataset, Sample, compute_fingerprint, read_dataset
from inspection.dataset.split import split_dataset
from inspection.decisions import per_class_mask, rule_defect_scores
from inspection.errors import ConfigError, DatasetError, TrainingError
from inspection.preprocess import tile_boxes
from inspection.registry import ModelRegistry
from training import anomaly, data, distributed, engine
from training import calibrate as cal
from training import recipe as recipe_rules
from training.config import TrainConfig
from training.defectmap import with_density_map
from training.memory import FeatureMemory, fit_memory
from training.models import (
    Classifier,
    FlipAverage,
    TiledClassifier,
    find_pretrained,
    get_model,
    load_pretrained,
    model_info,
)
from training.report import text_summary
from training.version import Run, export_version, rmdir_empty, split_metrics

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    path: Path
    card: ModelCard
    summary: str


def _validate_inputs(cfg: TrainConfig) -> tuple[Dataset, str]:
    if cfg.data is None:
        raise ConfigError("no dataset given; pass --data DATASET_FOLDER")
    # Found only when the version is written, a file here would cost the whole run.
    if cfg.models_dir.exists() and not cfg.models_dir.is_dir():
        raise ConfigError(f"--models-dir {cfg.models_dir} is a file; give a folder (created when missing)")
    ds = read_dataset(cfg.data)
    # The card records the manifest's fingerprint as the data the model learnt from: the files must
    # still give it (a hand-edited labels.csv, a replaced image). Hashing them costs a few percent
    # of decoding them (magnetic tile, 1,344 frames: 0.07 s against 1 s).
    actual = compute_fingerprint(ds.root, ds.samples)
    if actual != ds.fingerprint:
        raise DatasetError(
            f"dataset {ds.root} ({ds.name!r}): its images and labels give fingerprint {actual[:12]}…, its manifest "
            f"says {ds.fingerprint[:12]}…; the data changed since it was written, and a model's card would name "
            "data it did not learn from — restore it, or import it again (`inspection dataset import`) to give "
            "it a fingerprint of its own")
    if cfg.mode == "anomaly":
        ds = anomaly.anomaly_view(ds)
        data.check_dataset(ds, may_be_empty=[anomaly.ANOMALY])  # good images alone are enough
    else:
        data.check_dataset(ds)
    model_info(cfg.arch)
    allowed = [c for c in ds.classes if c != ds.good_class]
    bad = sorted(set(cfg.per_class_thresholds) - set(allowed))
    if bad:
        raise ConfigError(f"per-class thresholds for {bad}: allowed only for defect classes {allowed}")
    return ds, cfg.name or default_name(ds.name)


def default_name(dataset_name: str) -> str:
    """The model name a dataset's name gives: what the registry's folders and the card accept
    (``inspection.registry.NAME_PATTERN``: letters A-Z a-z, digits, ``_ . -``, at most 128)."""
    # str.isalnum() also passes 'ü' and 'ß', which the card refuses only after the whole run:
    # marks are dropped ('prüfung' -> 'prufung'), anything else outside the set becomes '-'.
    plain = "".join(ch for ch in unicodedata.normalize("NFKD", dataset_name) if not unicodedata.combining(ch))
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", plain).lstrip("-_.")[:128] or "model"


def _check_split(counts: dict[str, dict[str, int]], cfg: TrainConfig, good_class: str | None) -> None:
    for split in ("train", "val", "test"):
        if sum(counts[split].values()) == 0:
            raise DatasetError(
                f"the {split} split is empty (split counts {counts}); add images or change "
                f"--val-fraction/--test-fraction (now {cfg.val_fraction}/{cfg.test_fraction})"
            )
    if good_class is not None:
        val = counts["val"]
        n_defects, n_good = sum(v for c, v in val.items() if c != good_class), val[good_class]
        try:
            cal.check_supported(cfg.target, n_val_defects=n_defects, n_val_good=n_good)
        except TrainingError as exc:
            if not cfg.allow_unsupported_target:
                raise
            # The flag calibrates on too few validation images, not on none: with none the
            # threshold has nothing to be placed by, and calibration would fail after every epoch.
            if "max_escape" in cfg.target and n_defects == 0:
                raise TrainingError(f"{exc}. --allow-unsupported-target cannot help: validation holds no defective "
                                    f"image to place the threshold by (--max-overkill needs good images alone)"
                                    ) from None
            if "max_overkill" in cfg.target and n_good == 0:
                raise TrainingError(f"{exc}. --allow-unsupported-target cannot help: validation holds no good "
                                    "image to place the threshold by") from None
            log.warning("TARGET NOT SUPPORTED (training anyway, --allow-unsupported-target): %s", exc)


#: What a resumed run may change: how it runs and what it exports, not what shapes the weights.
_RESUME_MAY_CHANGE = ("progress", "threads", "nproc", "int8", "parity_tolerance", "golden_count")


def _check_resume(cfg: TrainConfig, saved: TrainConfig) -> None:
    """Refuse given settings (flags, config file) that differ from the checkpoint's: a resumed
    run takes those from the checkpoint, and dropped them without a word.

    Raises:
        ConfigError: names each setting, its given value and the checkpoint's.
    """
    def value(config: TrainConfig, key: str) -> Any:
        v: Any = config
        for part in key.split("."):
            v = getattr(v, part)
        return v

    differ = []
    for key in sorted(cfg.given - {*_RESUME_MAY_CHANGE, "resume"}):
        now, then = value(cfg, key), value(saved, key)
        if isinstance(now, Path) and isinstance(then, Path):
            # A folder as it was saved, or another path to it from here; named as written.
            now, then = (str(now), str(then)) if now.resolve() != then.resolve() else (now, now)
        if now != then:
            differ.append(f"{key} {now!r} (checkpoint: {then!r})")
    if differ:
        raise ConfigError(
            f"--resume {cfg.resume} continues the checkpoint's run with its own settings; given otherwise: "
            f"{'; '.join(differ)}. Leave them out (only {', '.join(_RESUME_MAY_CHANGE)} may change on resume), "
            "or start a new run without --resume")


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda: no CUDA device is available here; use --device auto or cpu")
    return torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")


def _prepare(cfg: TrainConfig, ranks: distributed.Ranks) -> Run:
    """Resume state, dataset checks, the honest split, the recipe's choices, the version."""
    resume = engine.load_checkpoint(cfg.resume) if cfg.resume is not None else None
    if resume is not None:
        # Everything that shaped the weights comes from the checkpoint; only how to run and
        # what to export may change on resume.
        keep = {k: getattr(cfg, k) for k in _RESUME_MAY_CHANGE}
        saved = TrainConfig.model_validate({**resume["config"], **keep, "resume": str(cfg.resume)})
        _check_resume(cfg, saved)
        cfg = saved
    engine.seed_everything(cfg.seed)
    if cfg.mode == "anomaly" and cfg.max_overkill is None:
        # Good parts alone set the threshold: the target is an overkill rate (escape needs defects).
        cfg = cfg.model_copy(update={"max_overkill": 0.01})
        log.info("anomaly mode: threshold calibrated on good validation images for overkill <= 1% "
                 "(--max-overkill to change)")
    ds, name = _validate_inputs(cfg)
    if resume is not None:
        split, units = resume["split"], resume.get("units")
    else:
        # Anomaly mode never fits a defect: their groups are held out for validation and test.
        held_out = [anomaly.ANOMALY] if cfg.mode == "anomaly" else []
        drawn = split_dataset(ds, seed=cfg.seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                              held_out=held_out)
        split, units = drawn.split, drawn.units
    missing = [s.path for s in ds.samples if s.path not in split]
    if missing:
        raise DatasetError(
            f"{len(missing)} image(s) of {ds.name!r} are not in the checkpoint's split "
            f"(e.g. {missing[0]}); the dataset changed since the run began"
        )
    counts = data.split_counts(ds.samples, split, ds.classes)
    _check_split(counts, cfg, ds.good_class)
    for cls in ds.classes:
        if counts["val"][cls] == 0 or counts["test"][cls] == 0:
            # A class with fewer than 3 groups stays in training (the split needs >= 3 to hold
            # some out): the model learns it, but nobody can measure how well.
            log.warning(
                "class %r has no validation or test images (%d in all): it is learned, but its recall "
                "cannot be measured; add images of it",
                cls,
                sum(counts[s][cls] for s in counts),
            )
    # Anomaly mode's method is settled (and a memory without weights refused) before images load.
    weights = _anomaly_memory_weights(cfg, ranks) if cfg.mode == "anomaly" else None
    recipe: list[dict[str, Any]] = resume.get("recipe", []) if resume is not None else []
    if resume is None and ranks.main:
        # Rank 0 alone: the others receive its choices below (its precision probe times the
        # machine, which every rank timing at once would skew).
        train_samples = [s for s in ds.samples if split[s.path] == "train"]
        if cfg.mode == "anomaly":
            train_samples = [s for s in train_samples if s.label == ds.good_class]
        cfg, recipe = _choose_recipe(cfg, ds, counts, train_samples, trains_epochs=weights is None,
                                     ranks_here=ranks.local_world)
    registry = ModelRegistry(cfg.models_dir)
    version = (
        resume["version"]
        if resume is not None and not (registry.root / name / resume["version"]).exists()
        else registry.next_version(name)
    )
    # Rank 0's choices everywhere: the recipe reads how busy the cores are, which two ranks may see
    # differently a moment apart, and only rank 0's version number is ever written.
    cfg, recipe, version = distributed.broadcast((cfg, recipe, version), ranks)
    if cfg.threads:
        # Processes of one machine share its cores.
        torch.set_num_threads(max(1, cfg.threads // ranks.local_world))
    return Run(cfg, ds, name, version, split, counts, resume, registry, recipe, memory_weights=weights, units=units)


def _choose_recipe(
    cfg: TrainConfig, ds: Dataset, counts: dict[str, dict[str, int]], train_samples: list[Sample], *,
    trains_epochs: bool = True, ranks_here: int = 1,
) -> tuple[TrainConfig, list[dict[str, Any]]]:
    headers = data.frame_headers(ds)
    heights, widths = headers.heights, headers.widths
    if cfg.roi is not None:
        data.check_roi(ds, headers, cfg.roi)
    survey = data.survey_frames(ds, train_samples, seed=cfg.seed, depths=headers.depths, roi=cfg.roi)
    if cfg.roi is not None:
        heights, widths = np.full_like(heights, cfg.roi[3]), np.full_like(widths, cfg.roi[2])
    train_counts = counts["train"]
    if cfg.mode == "anomaly" and ds.good_class is not None:
        # Every good frame is drawn twice an epoch, once with a synthetic anomaly (balanced). The
        # view's good class keeps the dataset's name for it (magnetic tile: "Free").
        good = ds.good_class
        train_counts = {good: train_counts[good], anomaly.ANOMALY: train_counts[good]}
    stats = recipe_rules.stats_from(heights, widths, train_counts, ds.manifest.get("orientation"),
                                    survey.pixel_values, surveyed=survey.decoded, colour=survey.colour,
                                    colour_example=survey.colour_example)
    device = _device(cfg).type
    threads = None
    if cfg.threads is None:
        # Before the probe, which times the steps at the threads each rank of the run will use.
        threads = recipe_rules.choose_threads()
        cfg = cfg.model_copy(update={"threads": threads.value})
    # A feature memory trains no epochs: nothing to time, no precision to choose.
    cost_128, precision = (
        _choose_precision(cfg, len(ds.classes), device, channels=cfg.channels or recipe_rules.colour_channels(stats)[0],
                          threads=max(1, (cfg.threads or 1) // ranks_here))
        if trains_epochs else (model_info(cfg.arch).cost_128, None)
    )
    resolved, choices = recipe_rules.resolve(
        cfg, stats, cost_128=cost_128, device="cuda" if device == "cuda" else "cpu"
    )
    if threads is not None:
        choices.insert(0, threads)
    if precision is not None:
        resolved = resolved.model_copy(update={"precision": precision.value})
        choices.append(precision)
    for c in choices:
        log.info("recipe: %s = %s (%s)", c.setting, c.value, c.reason)
    return resolved, [c.as_dict() for c in choices]


def _choose_precision(
    cfg: TrainConfig, n_classes: int, device: str, *, channels: int, threads: int | None = None
) -> tuple[float, recipe_rules.Choice | None]:
    """The architecture's cost per image for the budget, and the precision choice (``None`` when
    the config fixed it).

    On CPU the cost is measured here, the way ``bench/arch_cost.py`` measured the registered
    ``cost_128`` on the reference machine (the training step at 128 px, batch 32, fp32): line
    PCs differ by 3x and more in speed, and a cost taken from a faster machine sizes an input
    whose epochs the time budget must then cut (13 of 34 planned on a slow one: far fewer steps
    than the recipe's rule, at pixels it could not afford). Then a few steps in fp32 and bf16
    tell which precision is faster here. All of it runs at the run's ``threads`` and is taken
    again where other work disturbed it (``recipe.quiet_probe``): it sizes the whole run."""
    cost = model_info(cfg.arch).cost_128
    if device == "cuda":
        if cfg.precision is not None:
            return cost, None
        return cost, recipe_rules.Choice("precision", "fp16", "CUDA: mixed fp16 with a gradient scaler")
    if cfg.precision == "fp16":
        raise ConfigError("precision fp16 is for CUDA; on a CPU use bf16 or fp32 (or leave it to the rule)")
    measure_cost = cfg.input_shape is None and cfg.image_size is None  # the cost sizes nothing else
    if cfg.precision == "fp32" and not measure_cost:
        return cost, None
    compare = cfg.precision != "fp32"
    threads = threads or torch.get_num_threads()
    # The probe's weights come from a stream of its own: the run's model, drawn after it from
    # the seeded global stream, is the same whether or not a probe ran.
    with torch.random.fork_rng(devices=[]):
        # The input's channels (the recipe's, where the config leaves them open) change the
        # first stage's cost.
        probe = Classifier(get_model(cfg.arch, num_classes=max(n_classes, 2), in_channels=channels),
                           mean=[0.5] * channels, std=[0.25] * channels)
        shape = (channels, 128, 128)

        def timings() -> tuple[float | None, float, float]:
            step = engine.step_seconds(probe, shape, precision="fp32", batch=32) if measure_cost else None
            if not compare:
                return step, 1.0, 1.0
            return (step, engine.step_seconds(probe, shape, precision="fp32"),
                    engine.step_seconds(probe, shape, precision="bf16"))

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            spare = recipe_rules.usable_cores() - threads
            reading = recipe_rules.quiet_probe(timings, spare_cores=spare)
        finally:
            torch.set_num_threads(before)
    step_s, fp32_s, bf16_s = reading.value
    note = reading.note(spare)
    if note:
        log.warning("recipe: the start-up probe (cost per image, precision) was %s", note)
    if step_s is not None:
        cost = recipe_rules.measured_cost(step_s)
    if not compare:
        return cost, None
    value, reason = recipe_rules.choose_precision(fp32_s, bf16_s)
    if cfg.precision == "bf16":
        value, choice = "bf16", None  # the engineer's choice; its measured speed still sizes the budget
    else:
        choice = recipe_rules.Choice("precision", value, f"{reason}; probe at {threads} thread(s)"
                                     + (f", {note}" if note else ""))
    return (recipe_rules.scaled_cost(cost, bf16_s / fp32_s) if value == "bf16" else cost), choice


def _good_only(train: data.SplitData) -> data.SplitData:
    """The training split without defects (anomaly mode): one that shares a group with good
    training images stays in training's group, so it is neither fitted nor evaluated."""
    keep = train.labels == 0
    if not keep.all():
        log.warning("anomaly mode: %d defective image(s) share a group (part, source or duplicate) with "
                    "training images: left out, neither fitted nor evaluated", int((~keep).sum()))
    return data.SplitData(train.name, [s for s, k in zip(train.samples, keep, strict=True) if k],
                          train.images[keep], train.labels[keep])


def _channels(cfg: TrainConfig) -> int:
    if cfg.channels is None:
        raise TrainingError("the input channels were not resolved (training.recipe.resolve runs before)")
    return cfg.channels


def _tile_side(side: int, count: int) -> int:
    # Tiles overlap by a quarter of a tile: a defect on a seam is whole in one of them.
    return min(side, int(np.ceil(side / (count - (count - 1) * 0.25))))


def _input_spec(cfg: TrainConfig) -> InputSpec:
    if cfg.input_shape is None or cfg.channels is None:
        raise TrainingError("the input shape was not resolved (training.recipe.resolve runs before)")
    height, width = cfg.input_shape
    tiles = None
    if cfg.tiles:
        rows, cols = (int(v) for v in cfg.tiles.split("x"))
        tile_h, tile_w = _tile_side(height, rows), _tile_side(width, cols)
        smallest = model_info(cfg.arch).min_side
        if min(tile_h, tile_w) < smallest:
            # Found here, before the images load: the network would fail in the first epoch.
            fit_rows = max(n for n in range(1, rows + 1) if n == 1 or _tile_side(height, n) >= smallest)
            fit_cols = max(n for n in range(1, cols + 1) if n == 1 or _tile_side(width, n) >= smallest)
            raise ConfigError(
                f"--tiles {cfg.tiles} cuts the {width}x{height} input into tiles of {tile_w}x{tile_h} px; "
                f"{cfg.arch} takes at least {smallest} px a side: give at most --tiles {fit_rows}x{fit_cols} "
                "at this input, or a larger --image-size")
        tiles = TileGrid(rows=rows, cols=cols, tile_height=tile_h, tile_width=tile_w)
    return InputSpec(
        height=height,
        width=width,
        channels=cfg.channels,
        levels=cfg.levels,
        resize=cfg.resize,
        geometry=cfg.geometry,
        roi=cfg.roi,
        tiles=tiles,
    )


def _build_model(run: Run, spec: InputSpec, mean: list[float], std: list[float]) -> tuple[nn.Module, str]:
    """The network to train: backbone (pretrained weights when given and found), the
    normalisation inside, and the tile grid around it when the spec has one."""
    cfg = run.cfg
    backbone = get_model(cfg.arch, num_classes=len(run.ds.classes), in_channels=_channels(cfg))
    note = "none (from scratch)"
    if run.resume is None and (cfg.pretrained or cfg.pretrained_path):
        weights = find_pretrained(cfg.arch, path=cfg.pretrained_path)
        if weights is None:
            log.warning(
                "no local pretrained weights for %s (torch hub cache %s); training from scratch",
                cfg.arch,
                torch.hub.get_dir(),
            )
        else:
            skipped = load_pretrained(backbone, weights)
            note = str(weights)
            log.info("pretrained weights %s loaded (%d tensors left fresh: head/adapted layers)", weights, len(skipped))
    model: nn.Module = Classifier(backbone, mean=mean, std=std)
    if spec.tiles is not None:
        model = TiledClassifier(model, tile_boxes(spec), run.good_index)
    return model, note


def _anomaly_memory_weights(cfg: TrainConfig, ranks: distributed.Ranks) -> Path | None:
    """The pretrained weights anomaly mode's feature memory uses, or None for the synthetic method.

    Raises:
        TrainingError: ``anomaly_method: memory`` without weights or without a ResNet
            architecture; the memory with several ranks or ``--resume`` (it fits in one pass).
    """
    if cfg.anomaly_method == "synthetic":
        return None
    resnet = cfg.arch.startswith("resnet") and model_info(cfg.arch).pretrained_file is not None
    weights = find_pretrained(cfg.arch, path=cfg.pretrained_path) if (cfg.pretrained or cfg.pretrained_path) else None
    if cfg.anomaly_method == "memory" and (weights is None or not resnet):
        raise TrainingError(
            f"--anomaly-method memory needs a torchvision ResNet architecture and its pretrained weights "
            f"(arch {cfg.arch!r}, weights {'found' if weights else 'not found'}): pass --arch resnet18 "
            "--pretrained-path FILE, or use --anomaly-method synthetic (from scratch)")
    if weights is None or not resnet:
        log.info("anomaly mode: synthetic anomalies, from scratch (no pretrained ResNet weights here for a "
                 "feature memory)")
        return None
    if ranks.distributed or cfg.resume is not None:
        raise TrainingError("the feature-memory anomaly model fits in one pass over the good frames: run it "
                            "without --nproc/--resume (or use --anomaly-method synthetic)")
    log.info("anomaly mode: a memory of good patches in pretrained %s features (%s)", cfg.arch, weights)
    return weights


def _fit_memory(
    run: Run, spec: InputSpec, weights: Path, train: data.SplitData, val: data.SplitData,
    mean: list[float], std: list[float],
) -> tuple[nn.Module, str, dict[str, Any]]:
    """The feature-memory anomaly model, filled from the good frames (no epochs)."""
    backbone = get_model(run.cfg.arch, num_classes=2, in_channels=_channels(run.cfg))
    skipped = load_pretrained(backbone, weights)
    loaded = [k for k in backbone.state_dict() if k not in skipped]
    if not any(k.startswith("layer3.") for k in loaded):
        raise TrainingError(f"pretrained weights {weights} hold no {run.cfg.arch} layer3 weights: not a "
                            f"torchvision {run.cfg.arch} state dict")
    memory = FeatureMemory(backbone, mean=mean, std=std)
    info = fit_memory(memory, train.images, val.images[val.labels == run.good_index], seed=run.cfg.seed)
    model: nn.Module = memory
    if spec.tiles is not None:
        model = TiledClassifier(model, tile_boxes(spec), run.good_index)
    return model, str(weights), {"history": [], "best_epoch": 0, "anomaly": {**info, "selection": "none (no epochs)"}}


def _train(
    run: Run,
    model: nn.Module,
    train: data.SplitData,
    val: data.SplitData,
    mean: list[float],
    std: list[float],
    ranks: distributed.Ranks,
    budget: engine.TimeBudget | None = None,
) -> dict[str, Any]:
    cfg = run.cfg
    n_classes = len(run.ds.classes)
    augment = data.LineAugment(cfg.augment, seed=cfg.seed)
    synth = anomaly.Synthesizer(cfg.seed)
    train_set: torch.utils.data.Dataset
    if cfg.mode == "anomaly":
        train_set = anomaly.AnomalyTrainSet(train.images, augment, synth)
        train_labels = train_set.labels
        val_images, val_labels, selection = anomaly.validation_set(val.images, val.labels, seed=cfg.seed + 1)
        log.info("anomaly mode: %d good training images (each also with a synthetic anomaly); %s",
                 len(train.images), selection)
    else:
        train_set = data.ArrayDataset(train.images, train.labels, augment)
        train_labels, val_images, val_labels = train.labels, val.images, val.labels
    device = _device(cfg)
    class_weights = (
        torch.as_tensor(data.class_weights(train.labels, n_classes), dtype=torch.float32, device=device)
        if cfg.balance == "weights"
        else None
    )
    loss_fn = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=cfg.label_smoothing)
    # The recipe's batch is the global one: N ranks take batch/N each, so they take the same
    # optimiser steps (and learning-rate schedule) one process would.
    batch_size, balance = max(1, int(cfg.batch_size or 32) // ranks.world), cfg.balance or "none"
    if ranks.distributed and int(cfg.batch_size or 32) % ranks.world:
        log.warning("batch %s does not divide among %d ranks: %d each", cfg.batch_size, ranks.world, batch_size)

    def epoch_loader(epoch: int) -> torch.utils.data.DataLoader:
        seed = engine.epoch_seed(cfg.seed, epoch)
        augment.reseed(seed + ranks.rank)  # every rank draws alike (the shards), augments its own way
        synth.reseed(seed + 7919 * (ranks.rank + 1))
        return engine.make_loader(
            train_set,
            train_labels,
            batch_size=batch_size,
            balance=balance,
            n_classes=n_classes,
            seed=seed,
            ranks=ranks,
        )

    extra = {
        "config": cfg.to_yaml_dict(),
        "split": run.split,
        "units": run.units,
        "version": run.version,
        "name": run.name,
        "recipe": run.recipe,
        # The normalisation inside the network: a resumed run must rebuild it, not re-measure it.
        "mean": mean,
        "std": std,
    }
    fit = engine.fit(
        model,
        make_epoch_loader=epoch_loader,
        val_images=val_images,
        val_labels=val_labels,
        n_classes=n_classes,
        good_index=run.good_index,
        epochs=int(cfg.epochs or 1),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        loss_fn=loss_fn,
        stopper=engine.EarlyStopping(
            patience=int(cfg.patience or 1), min_epochs=int(cfg.min_epochs or 1),
            reference_loss=engine.constant_answer_loss(train_labels, val_labels, n_classes, balance=balance),
        ),
        checkpoint=run.run_dir / "checkpoint.pt",
        checkpoint_extra=extra,
        use_ema=cfg.ema,
        device=device,
        resume=run.resume,
        progress=cfg.progress,
        ranks=ranks,
        budget=budget,
        precision=cfg.precision or ("fp16" if device.type == "cuda" else "fp32"),
    )
    if fit["budget"] is not None:
        _record_budget(run, fit["budget"])
    if cfg.mode == "anomaly":
        fit["anomaly"] = {"selection": selection, "good_train_images": len(train.images)}
    return fit


#: The recipe's early-stopping settings, shares of its epochs: a lengthened plan scales them.
_STOPPING = ("patience", "min_epochs")


def _time_budget(run: Run, started: float, *, n_val: int, n_test: int) -> engine.TimeBudget | None:
    """The wall-clock budget the epochs keep to, where the recipe chose them (an engineer's own
    ``epochs`` run as given). A resumed run counts it again from where it resumes."""
    if not any(c["setting"] == "epochs" for c in run.recipe):
        return None
    # After the epochs: validation and test scored through the exported graph's mirror, then the
    # test split again in torch and ONNX Runtime for parity (in validation passes).
    views = 2 if run.cfg.tta else 1
    after = views * (n_val + 3 * n_test) / max(n_val, 1)
    chosen = {c["setting"] for c in run.recipe}
    return engine.TimeBudget(deadline=started + run.cfg.budget_minutes * 60.0, after_evals=after,
                             max_epochs=recipe_rules.MAX_EPOCHS,
                             scale_with_epochs=tuple(k for k in _STOPPING if k in chosen))


def _record_budget(run: Run, note: dict[str, Any]) -> None:
    # The card and the saved config say the plan the run ended with, and why.
    changed: dict[str, Any] = {k: note[k] for k in ("epochs", *_STOPPING) if k in note}
    run.cfg = run.cfg.model_copy(update=changed)
    for choice in run.recipe:
        value = changed.get(choice["setting"])
        if value is not None and choice["value"] != value:
            moved = "shortened" if value < choice["value"] else "lengthened"
            choice["reason"] += f"; {moved} to {value} by the time budget ({note['reason']})"
            choice["value"] = value


def _operating_point(
    run: Run, val_probs: np.ndarray, val: data.SplitData
) -> tuple[float, dict[str, Any], dict[str, float]]:
    """The reject threshold calibrated on validation, its evidence and the target."""
    cfg = run.cfg
    gi = run.good_index
    if gi is None:
        evidence: dict[str, Any] = {
            "supported": True,
            "target": {},
            "note": "no good class: every frame of this line is a defect; the threshold does not apply",
        }
        return 0.5, evidence, {}
    classes = run.ds.classes
    threshold, evidence = cal.calibrate(
        # float64, as the reject rule computes P(defect) (inspection.decisions): from float32
        # probabilities 1 - p rounds differently, and a defect scored exactly at the threshold
        # passed the card's rule though calibration had counted it rejected.
        rule_defect_scores(val_probs, classes, classes[gi]),
        val.labels != gi,
        cfg.target,
        allow_unsupported=cfg.allow_unsupported_target,
        overkill_limit=cfg.overkill_limit,
        model_id=f"{run.name}/{run.version}",
        forced=per_class_mask(val_probs, classes, cfg.per_class_thresholds),
    )
    evidence["target"] = cfg.target
    if evidence.get("warning"):
        log.warning("OPERATING POINT: %s", evidence["warning"])
    return threshold, evidence, cfg.target


def main(cfg: TrainConfig) -> TrainResult:
    """Train, calibrate, export and verify one model version; returns where it is.

    ``cfg.nproc > 1`` trains on that many ranks of this machine and returns rank 0's result.

    Raises:
        ConfigError: no dataset, bad per-class thresholds, an unknown manifest orientation, a
            ``models_dir`` that is a file, tiles smaller than the architecture takes.
        DatasetError: one class, missing or undecodable images, files that no longer give the
            manifest's fingerprint, identical images under different labels, labels outside the
            class list, an empty split.
        TrainingError: unknown architecture, a target validation cannot support, failed export
            checks, a rank that died; called on a rank other than 0 of a torchrun (use ``run``).
    """
    result = run(cfg)
    if result is None:
        raise TrainingError("this process is not rank 0 of the distributed run: only rank 0 has the model version")
    return result


def run(cfg: TrainConfig) -> TrainResult | None:
    """``main`` for any rank: ``None`` on the ranks other than 0 of a distributed run (under
    ``torchrun`` every process is one rank; ``cfg.nproc > 1`` starts the ranks here).
    """
    ranks = distributed.from_env()
    if cfg.nproc > 1 and not ranks.distributed:
        return distributed.launch(
            _worker, (cfg, logging.getLogger().getEffectiveLevel()), cfg.nproc, models_dir=cfg.models_dir
        )
    if ranks.distributed:
        distributed.setup(ranks, cuda=_device(cfg).type == "cuda")
    try:
        return _main(cfg, ranks)
    finally:
        distributed.teardown()


def _worker(cfg: TrainConfig, level: int) -> TrainResult | None:
    """One rank of ``--nproc N`` (a spawned process: its logging is set up again here)."""
    ranks = distributed.from_env()
    logging.basicConfig(
        level=level if ranks.main else max(level, logging.WARNING),
        format=f"%(asctime)s [rank {ranks.rank}] %(name)s: %(message)s",
    )
    return run(cfg)


def _main(cfg: TrainConfig, ranks: distributed.Ranks) -> TrainResult | None:
    started = time.monotonic()
    run = _prepare(cfg, ranks)
    cfg, ds = run.cfg, run.ds
    weights = run.memory_weights
    spec = _input_spec(cfg)
    log.info("loading %d images of %s at %dx%d (%s)", len(ds.samples), ds.name, spec.width, spec.height, spec.geometry)
    # The frames are read by as many threads as the steps will use (ranks share the cores).
    splits = data.load_splits(ds, run.split, spec, workers=max(1, (cfg.threads or 1) // ranks.local_world))
    if cfg.mode == "anomaly":
        splits["train"] = _good_only(splits["train"])
    train, val, test = splits["train"], splits["val"], splits["test"]
    mean, std = (run.resume["mean"], run.resume["std"]) if run.resume is not None else data.channel_stats(train.images)
    if weights is not None:
        model, pretrained_note, fit = _fit_memory(run, spec, weights, train, val, mean, std)
    else:
        model, pretrained_note = _build_model(run, spec, mean, std)
        budget = _time_budget(run, started, n_val=len(val.images), n_test=len(test.images))
        fit = _train(run, model, train, val, mean, std, ranks, budget)
    train_seconds = time.monotonic() - started
    if not ranks.main:
        return None  # rank 0 alone calibrates, exports and writes the version
    distributed.teardown()
    model.eval()
    if cfg.mode == "anomaly" and weights is None and run.good_index is not None:
        # The synthetic method's frame score stays its head's; its map becomes the density of its own
        # features over good surface (training.defectmap.FeatureDensity: it localises what the head's
        # per-cell view does not).
        good_val = val.images[val.labels == run.good_index]
        model, fitted = with_density_map(model, train.images, good_val, run.good_index)
        fit["anomaly"]["map"] = fitted
        log.info("anomaly map: feature density over %d good training cells (%d channels), normalised on %d "
                 "good validation cells", fitted["good_cells"], fitted["channels"], fitted["val_good_cells"])
    if cfg.tta:
        # One mirror (left/right where allowed): on ELPV it gave most of what every flip gives
        # (test AUROC +0.016 of +0.021) at half the serving cost.
        hflip = bool(cfg.augment.hflip)
        model = FlipAverage(model, hflip=hflip, vflip=not hflip and bool(cfg.augment.vflip)).eval()

    val_probs = engine.predict(model, val.images)
    threshold, evidence, target = _operating_point(run, val_probs, val)
    per_class = dict(cfg.per_class_thresholds)
    test_probs = engine.predict(model, test.images)
    test_metrics = split_metrics(test_probs, test.labels, ds.classes, ds.good_class, threshold, per_class,
                                 units=run.test_units(test.samples))
    if run.good_index is not None and evidence.get("tradeoff"):
        gi = run.good_index
        test_metrics["tradeoff"] = cal.tradeoff_at(evidence["tradeoff"], 1.0 - test_probs[:, gi].astype(np.float64),
                                                   test.labels != gi)
    card = export_version(
        run,
        model,
        spec,
        splits,
        fit=fit,
        mean=mean,
        std=std,
        threshold=threshold,
        evidence=evidence,
        target=target,
        per_class=per_class,
        val_probs=val_probs,
        test_probs=test_probs,
        test_metrics=test_metrics,
        train_seconds=train_seconds,
        pretrained_note=pretrained_note,
        device=_device(cfg).type,
    )
    final = run.registry.version_dir(run.name, run.version)
    shutil.rmtree(run.run_dir, ignore_errors=True)
    rmdir_empty(run.run_dir.parent)
    summary = f"{card.model_id} -> {final}\n" + text_summary(test_metrics, ds.good_class, evidence)
    if not evidence.get("supported", True):
        summary += f"\nWARNING: the operating point is NOT supported by validation: {evidence['unsupported_reason']}"
    return TrainResult(path=final, card=card, summary=summary)
