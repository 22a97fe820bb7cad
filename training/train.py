"""``main(cfg)``: from a dataset folder to a verified model version ``models/<name>/<version>/``.

Steps: validate the dataset and config (before any compute) -> split (saved) -> cache the
preprocessed images -> train with early stopping and checkpoints -> calibrate the reject
threshold on validation -> evaluate on test -> export ONNX, check it, parity on the whole test
split, golden frames, optional int8 -> report -> card with sha256 of every file.

The version is assembled in ``models/.staging/<name>/<version>.<random>/`` and renamed into
place only when everything passed, so the registry never shows a half-written version.
Checkpoints live in ``models/.runs/<name>-<version>/checkpoint.pt``; ``--resume`` takes one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inspection.card import (
    DatasetRef,
    Golden,
    InputSpec,
    ModelCard,
    Normalization,
    Parity,
    Thresholds,
    hash_files,
    save_card,
    utc_now,
)
from inspection.dataset.layout import read_dataset
from inspection.errors import ConfigError, DatasetError, TrainingError
from inspection.metrics import average_precision, classification_summary, escape_overkill, roc_auc
from inspection.registry import ModelRegistry
from training import calibrate as cal
from training import data as D
from training import engine as E
from training import export as X
from training.config import TrainConfig, save_config
from training.models import Classifier, find_pretrained, get_model, load_pretrained, model_info
from training.report import text_summary, write_report

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    path: Path
    card: ModelCard
    summary: str


def _code_version() -> str:
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--", "training", "inspection"],
                               capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _scores_and_rejects(probs: np.ndarray, classes: list[str], good_class: str, threshold: float, per_class: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    score = 1.0 - probs[:, classes.index(good_class)].astype(np.float64)
    rejected = score >= threshold
    for cls, t in per_class.items():
        rejected |= probs[:, classes.index(cls)] >= t
    return score, rejected


def _test_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str], good_class: str | None, threshold: float, per_class: dict[str, float]) -> dict[str, Any]:
    m = classification_summary(labels, probs.argmax(1) if len(probs) else labels, classes)
    if good_class is not None:
        is_defect = labels != classes.index(good_class)
        score, rejected = _scores_and_rejects(probs, classes, good_class, threshold, per_class)
        rates = escape_overkill(is_defect, rejected)
        m["roc_auc"] = roc_auc(is_defect, score)
        m["average_precision"] = average_precision(is_defect, score)
        m["operating_point"] = {"threshold": threshold, "escape": rates["escape"].as_dict(), "overkill": rates["overkill"].as_dict()}
    return m


def _validate_inputs(cfg: TrainConfig) -> tuple[Any, str]:
    if cfg.data is None:
        raise ConfigError("no dataset given; pass --data DATASET_FOLDER")
    ds = read_dataset(cfg.data)
    D.check_dataset(ds)
    model_info(cfg.arch)
    allowed = [c for c in ds.classes if c != ds.good_class]
    bad = sorted(set(cfg.per_class_thresholds) - set(allowed))
    if bad:
        raise ConfigError(f"per-class thresholds for {bad}: allowed only for defect classes {allowed}")
    name = cfg.name or "".join(ch if ch.isalnum() or ch in "_.-" else "-" for ch in ds.name).lstrip("-_.") or "model"
    return ds, name


def _check_split(counts: dict[str, dict[str, int]], cfg: TrainConfig, good_class: str | None) -> None:
    for split in ("train", "val", "test"):
        if sum(counts[split].values()) == 0:
            raise DatasetError(
                f"the {split} split is empty (split counts {counts}); add images or change "
                f"--val-fraction/--test-fraction (now {cfg.val_fraction}/{cfg.test_fraction})"
            )
    if good_class is not None:
        val = counts["val"]
        try:
            cal.check_supported(cfg.target, n_val_defects=sum(v for c, v in val.items() if c != good_class), n_val_good=val[good_class])
        except TrainingError as exc:
            if not cfg.allow_unsupported_target:
                raise
            log.warning("TARGET NOT SUPPORTED (training anyway, --allow-unsupported-target): %s", exc)


def main(cfg: TrainConfig) -> TrainResult:
    """Train, calibrate, export and verify one model version; returns where it is.

    Raises:
        ConfigError: no dataset, bad per-class thresholds.
        DatasetError: one class, missing image files, labels outside the class list, an empty split.
        TrainingError: unknown architecture, a target validation cannot support, failed export checks.
    """
    started = time.monotonic()
    resume = E.load_checkpoint(cfg.resume) if cfg.resume is not None else None
    if resume is not None:
        # Everything that shaped the weights comes from the checkpoint; only how to run and
        # what to export may change on resume.
        keep = {k: getattr(cfg, k) for k in ("progress", "threads", "int8", "parity_tolerance", "golden_count")}
        cfg = TrainConfig.model_validate({**resume["config"], **keep, "resume": str(cfg.resume)})
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    E.seed_everything(cfg.seed)

    ds, name = _validate_inputs(cfg)
    split = resume["split"] if resume is not None else D.make_split(ds.samples, seed=cfg.seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction)
    missing = [s.path for s in ds.samples if s.path not in split]
    if missing:
        raise DatasetError(f"{len(missing)} image(s) of {ds.name!r} are not in the checkpoint's split (e.g. {missing[0]}); the dataset changed since the run began")
    counts = D.split_counts(ds.samples, split, ds.classes)
    _check_split(counts, cfg, ds.good_class)

    registry = ModelRegistry(cfg.models_dir)
    version = resume["version"] if resume is not None and not (registry.root / name / resume["version"]).exists() else registry.next_version(name)
    run_dir = registry.root / ".runs" / f"{name}-{version}"

    spec = InputSpec(height=cfg.image_size, width=cfg.image_size, channels=cfg.channels, resize=cfg.resize)
    log.info("loading %d images of %s at %dx%d", len(ds.samples), ds.name, spec.width, spec.height)
    splits = D.load_splits(ds, split, spec)
    train, val, test = splits["train"], splits["val"], splits["test"]
    mean, std = (resume["mean"], resume["std"]) if resume is not None else D.channel_stats(train.images)

    n_classes = len(ds.classes)
    backbone = get_model(cfg.arch, num_classes=n_classes, in_channels=cfg.channels)
    pretrained_note = "none (from scratch)"
    if resume is None and (cfg.pretrained or cfg.pretrained_path):
        weights = find_pretrained(cfg.arch, path=cfg.pretrained_path)
        if weights is None:
            log.warning("no local pretrained weights for %s (torch hub cache %s); training from scratch", cfg.arch, torch.hub.get_dir())
        else:
            skipped = load_pretrained(backbone, weights)
            pretrained_note = str(weights)
            log.info("pretrained weights %s loaded (%d tensors left fresh: head/adapted layers)", weights, len(skipped))
    model = Classifier(backbone, mean=mean, std=std)

    augment = D.LineAugment(cfg.augment, seed=cfg.seed)
    train_set = D.ArrayDataset(train.images, train.labels, augment)
    weights_t = torch.as_tensor(D.class_weights(train.labels, n_classes), dtype=torch.float32) if cfg.balance == "weights" else None
    loss_fn = nn.CrossEntropyLoss(weight=weights_t, label_smoothing=cfg.label_smoothing)

    def epoch_loader(epoch: int) -> torch.utils.data.DataLoader:
        s = E.epoch_seed(cfg.seed, epoch)
        augment.reseed(s)
        return E.make_loader(train_set, train.labels, batch_size=cfg.batch_size, balance=cfg.balance, n_classes=n_classes, seed=s)

    extra = {"config": cfg.to_yaml_dict(), "split": split, "version": version, "name": name, "mean": mean, "std": std}
    fit = E.fit(
        model, make_epoch_loader=epoch_loader, val_images=val.images, val_labels=val.labels, n_classes=n_classes,
        epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, loss_fn=loss_fn,
        stopper=E.EarlyStopping(patience=cfg.patience, min_epochs=cfg.min_epochs),
        checkpoint=run_dir / "checkpoint.pt", checkpoint_extra=extra, resume=resume, progress=cfg.progress,
    )
    train_seconds = time.monotonic() - started
    model.eval()

    # -- operating point on validation --------------------------------------------------
    val_probs = E.predict(model, val.images)
    per_class = dict(cfg.per_class_thresholds)
    if ds.good_class is not None:
        gi = ds.classes.index(ds.good_class)
        threshold, evidence = cal.calibrate(1.0 - val_probs[:, gi], val.labels != gi, cfg.target,
                                            allow_unsupported=cfg.allow_unsupported_target)
        target = cfg.target
    else:
        threshold, target = 0.5, {}
        evidence = {"supported": True, "note": "no good class: every frame of this line is a defect; the threshold does not apply"}
    evidence["target"] = target
    test_probs = E.predict(model, test.images)
    test_metrics = _test_metrics(test_probs, test.labels, ds.classes, ds.good_class, threshold, per_class)

    # -- export into a staging folder, verify, then rename --------------------------------
    staging_parent = registry.root / ".staging" / name
    staging_parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f"{version}.", dir=staging_parent))
    try:
        X.export_onnx(model, stage / "model.onnx", spec)
        session = X.ort_session(stage / "model.onnx")
        onnx_probs = X.ort_predict(session, test.images, spec)
        parity = X.parity(test_probs, onnx_probs, tolerance=cfg.parity_tolerance)
        gidx = X.pick_golden(test.labels, cfg.golden_count, seed=cfg.seed)
        X.write_golden(stage / "golden.npz", test.images[gidx], onnx_probs[gidx], [test.samples[i].path for i in gidx])
        X.check_golden(session, stage / "golden.npz", spec, tolerance=cfg.parity_tolerance)
        int8_file = None
        if cfg.int8:
            int8_file = "model.int8.onnx"
            X.quantize_int8(stage / "model.onnx", stage / int8_file, train.images[: min(len(train.images), 128)], spec)
            q_probs = X.ort_predict(X.ort_session(stage / int8_file), test.images, spec)
            q = _test_metrics(q_probs, test.labels, ds.classes, ds.good_class, threshold, per_class)
            test_metrics["int8"] = {"accuracy": q["accuracy"], "accuracy_change": q["accuracy"] - test_metrics["accuracy"],
                                    "max_abs_prob_diff": float(np.max(np.abs(q_probs - onnx_probs)))}
            if ds.good_class is not None:
                test_metrics["int8"].update(
                    escape_rate=q["operating_point"]["escape"]["rate"],
                    escape_change=q["operating_point"]["escape"]["rate"] - test_metrics["operating_point"]["escape"]["rate"],
                    overkill_rate=q["operating_point"]["overkill"]["rate"], roc_auc=q["roc_auc"])
        files = write_report(stage, title=f"{name} {version} — {ds.name}", classes=ds.classes, good_class=ds.good_class,
                             y_true=test.labels, probs=test_probs, threshold=threshold, test_metrics=test_metrics,
                             calibration=evidence, history=fit["history"])
        D.write_split(stage / D.SPLIT_FILE, ds.samples, split)
        save_config(cfg, stage / "config.yaml")
        (stage / "history.json").write_text(json.dumps(fit["history"], indent=1) + "\n", encoding="utf-8")
        names = ["model.onnx", "golden.npz", D.SPLIT_FILE, "config.yaml", "history.json", *files]
        if int8_file:
            names.append(int8_file)
        card = ModelCard(
            name=name, version=version, created=utc_now(), classes=ds.classes, good_class=ds.good_class, arch=cfg.arch,
            int8_file=int8_file, input=spec, normalization=Normalization(mean=mean, std=std),
            thresholds=Thresholds(reject=threshold, per_class=per_class, target=target, calibration=evidence),
            metrics={"test": test_metrics, "val": {"macro_recall": fit["history"][fit["best_epoch"] - 1]["val_macro_recall"] if fit["history"] else None}},
            dataset=DatasetRef(name=ds.name, fingerprint=ds.fingerprint, split_file=D.SPLIT_FILE, split_seed=cfg.seed, split_counts=counts),
            training={"config": cfg.to_yaml_dict(), "best_epoch": fit["best_epoch"], "epochs_run": len(fit["history"]),
                      "train_seconds": round(train_seconds, 1), "pretrained": pretrained_note, "torch": torch.__version__,
                      "threads": torch.get_num_threads()},
            code_version=_code_version(),
            parity=Parity(**parity),
            golden=Golden(tolerance=cfg.parity_tolerance, count=len(gidx)),
            files=hash_files(stage, names),
        )
        save_card(card, stage)
        final = registry.version_dir(name, version)
        if final.exists():
            raise TrainingError(f"model version {final} appeared while training; nothing was overwritten (try again)")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        _rmdir_empty(staging_parent)
    shutil.rmtree(run_dir, ignore_errors=True)
    _rmdir_empty(run_dir.parent)
    summary = f"{card.model_id} -> {final}\n" + text_summary(test_metrics, ds.good_class)
    if not evidence.get("supported", True):
        summary += f"\nWARNING: the operating point is NOT supported by validation: {evidence['unsupported_reason']}"
    return TrainResult(path=final, card=card, summary=summary)


def _rmdir_empty(path: Path) -> None:
    for p in (path, path.parent):
        try:
            p.rmdir()
        except OSError:
            return
