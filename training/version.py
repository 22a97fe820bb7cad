"""One model version's folder: export, verify, report, card, then the atomic rename.

``export_version`` is the last step of ``training.train.main``: the ONNX graph (checker, parity
on the whole test split, golden frames, optional int8), the report, the stored validation/test
scores, the split and config, and the card with the sha256 of every file, assembled in
``models/.staging/<name>/<version>.<random>/`` and renamed into place only when all of it passed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

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
    save_card,
    utc_now,
)
from inspection.dataset.layout import Dataset, Sample
from inspection.decisions import rule_defect_scores, rule_reject_mask
from inspection.errors import TrainingError
from inspection.metrics import (
    auroc_interval,
    average_precision,
    classification_summary,
    escape_overkill,
    recall_intervals,
    roc_auc,
)
from inspection.monitoring.build import build_reference
from inspection.registry import ModelRegistry
from training import calibrate as cal
from training import data
from training import export as onnx_export
from training.config import TrainConfig, save_config
from training.defectmap import map_cells, predict_maps
from training.report import write_report


@dataclass
class Run:
    """What the steps of one training run hand to each other."""

    cfg: TrainConfig
    ds: Dataset
    name: str
    version: str
    split: dict[str, str]
    counts: dict[str, dict[str, int]]
    resume: dict[str, Any] | None
    registry: ModelRegistry
    recipe: list[dict[str, Any]]
    #: Anomaly mode's feature memory: the pretrained weights it is built from (None: epochs are trained).
    memory_weights: Path | None = None
    #: The unit each image was drawn in (``split_dataset``); None for a run resumed from a
    #: checkpoint written before units were kept (its figures then come without unit intervals).
    units: dict[str, int] | None = None

    @property
    def run_dir(self) -> Path:
        return self.registry.root / ".runs" / f"{self.name}-{self.version}"

    def test_units(self, samples: Sequence[Sample]) -> np.ndarray | None:
        """The units of ``samples`` (in order), for intervals that count units; None where unknown."""
        if self.units is None:
            return None
        return np.array([self.units[s.path] for s in samples], dtype=np.int64)

    @property
    def good_index(self) -> int | None:
        return self.ds.classes.index(self.ds.good_class) if self.ds.good_class is not None else None


def code_version() -> str:
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--", "training", "inspection"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def split_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    good_class: str | None,
    threshold: float,
    per_class: dict[str, float],
    *,
    units: np.ndarray | None = None,
) -> dict[str, Any]:
    """Test figures at the operating point, decided by the one reject rule (inspection.decisions).

    With ``units`` (the unit each image was drawn in), each class's recall, the macro recall and
    the AUROC get 95% intervals that count units rather than images (``metrics["intervals"]``).
    """
    predicted = probs.argmax(1) if len(probs) else labels
    m = classification_summary(labels, predicted, classes)
    if units is not None and len(labels) == 0:
        units = None
    if units is not None:
        rec = recall_intervals(labels, predicted, units, len(classes))
        for index, ci in rec["per_class"].items():
            m["per_class"][classes[index]].update(units=ci["units"], recall_ci=[ci["low"], ci["high"]])
        m["intervals"] = {"macro_recall": rec["macro_recall"], "units": len(np.unique(units)), "method": rec["method"]}
    if good_class is not None:
        is_defect = labels != classes.index(good_class)
        score = rule_defect_scores(probs, classes, good_class)
        rejected = rule_reject_mask(probs, classes, good_class, threshold, per_class)
        rates = escape_overkill(is_defect, rejected)
        m["roc_auc"] = roc_auc(is_defect, score)
        if units is not None:
            m["intervals"]["roc_auc"] = auroc_interval(is_defect, score, units, labels)
            m["intervals"]["roc_auc_method"] = "95% percentile interval, whole units resampled within each class"
        m["average_precision"] = average_precision(is_defect, score)
        m["operating_point"] = {
            "threshold": threshold,
            "escape": rates["escape"].as_dict(),
            "overkill": rates["overkill"].as_dict(),
        }
    return m


def export_version(
    run: Run,
    model: nn.Module,
    spec: InputSpec,
    splits: dict[str, data.SplitData],
    *,
    fit: dict[str, Any],
    mean: list[float],
    std: list[float],
    threshold: float,
    evidence: dict[str, Any],
    target: dict[str, float],
    per_class: dict[str, float],
    val_probs: np.ndarray,
    test_probs: np.ndarray,
    test_metrics: dict[str, Any],
    train_seconds: float,
    pretrained_note: str,
    device: str,
) -> ModelCard:
    """Export into a staging folder, verify (checker, parity on the whole test split, golden
    frames, optional int8), write report, scores, split and card, then rename into place."""
    cfg, ds, name, version = run.cfg, run.ds, run.name, run.version
    train, val, test = splits["train"], splits["val"], splits["test"]
    staging_parent = run.registry.root / ".staging" / name
    staging_parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f"{version}.", dir=staging_parent))
    try:
        map_name = DefectMapSpec.model_fields["output_name"].default
        onnx_export.export_onnx(model, stage / "model.onnx", spec, map_output=map_name, good_index=run.good_index)
        session = onnx_export.ort_session(stage / "model.onnx")
        onnx_probs, onnx_maps = onnx_export.ort_predict_maps(session, test.images, spec, map_name)
        parity = onnx_export.parity(test_probs, onnx_probs, tolerance=cfg.parity_tolerance)
        torch_maps = predict_maps(model, test.images, run.good_index)
        defect_map = DefectMapSpec(
            output_name=map_name, height=int(onnx_maps.shape[1]), width=int(onnx_maps.shape[2]),
            weighted_by_frame=run.good_index is not None, cells=map_cells(model),
            parity_max_abs_diff=onnx_export.map_parity(torch_maps, onnx_maps, tolerance=cfg.parity_tolerance),
        )
        gidx = onnx_export.pick_golden(test.labels, cfg.golden_count, seed=cfg.seed)
        onnx_export.write_golden(
            stage / "golden.npz", test.images[gidx], onnx_probs[gidx], [test.samples[i].path for i in gidx],
            maps=onnx_maps[gidx],
        )
        onnx_export.check_golden(session, stage / "golden.npz", spec, tolerance=cfg.parity_tolerance)
        int8_file = None
        if cfg.int8:
            int8_file = "model.int8.onnx"
            onnx_export.quantize_int8(
                stage / "model.onnx", stage / int8_file, train.images[: min(len(train.images), 128)], spec
            )
            q_probs = onnx_export.ort_predict(onnx_export.ort_session(stage / int8_file), test.images, spec)
            q = split_metrics(q_probs, test.labels, ds.classes, ds.good_class, threshold, per_class)
            test_metrics["int8"] = {
                "accuracy": q["accuracy"],
                "accuracy_change": q["accuracy"] - test_metrics["accuracy"],
                "max_abs_prob_diff": float(np.max(np.abs(q_probs - onnx_probs))),
            }
            if ds.good_class is not None:
                op, q_op = test_metrics["operating_point"], q["operating_point"]
                test_metrics["int8"].update(
                    escape_rate=q_op["escape"]["rate"],
                    escape_change=q_op["escape"]["rate"] - op["escape"]["rate"],
                    overkill_rate=q_op["overkill"]["rate"],
                    roc_auc=q["roc_auc"],
                )
        files = write_report(
            stage,
            title=f"{name} {version} — {ds.name}",
            classes=ds.classes,
            good_class=ds.good_class,
            y_true=test.labels,
            probs=test_probs,
            threshold=threshold,
            test_metrics=test_metrics,
            calibration=evidence,
            history=fit["history"],
            val_labels=val.labels,
            val_probs=val_probs,
            images=test.images,
            names=[sample.path for sample in test.samples],
        )
        cal.save_scores(
            stage / cal.SCORES_FILE,
            val_probs=val_probs,
            val_labels=val.labels,
            test_probs=test_probs,
            test_labels=test.labels,
        )
        data.write_split(stage / data.SPLIT_FILE, ds.samples, run.split, run.units)
        save_config(cfg, stage / "config.yaml")
        (stage / "history.json").write_text(json.dumps(fit["history"], indent=1) + "\n", encoding="utf-8")
        names = ["model.onnx", "golden.npz", data.SPLIT_FILE, cal.SCORES_FILE, "config.yaml", "history.json", *files]
        if int8_file:
            names.append(int8_file)
        best = fit["history"][fit["best_epoch"] - 1] if fit["history"] else {}
        card = ModelCard(
            name=name,
            version=version,
            created=utc_now(),
            classes=ds.classes,
            good_class=ds.good_class,
            mode=cfg.mode,
            arch=cfg.arch,
            int8_file=int8_file,
            input=spec,
            normalization=Normalization(mean=mean, std=std),
            thresholds=Thresholds(reject=threshold, per_class=per_class, target=target, calibration=evidence),
            metrics={
                "test": test_metrics,
                "val": {"macro_recall": best.get("val_macro_recall"), "roc_auc": best.get("val_auroc")},
            },
            dataset=DatasetRef(
                name=ds.name,
                fingerprint=ds.fingerprint,
                split_file=data.SPLIT_FILE,
                split_seed=cfg.seed,
                split_counts=run.counts,
            ),
            training={
                "config": cfg.to_yaml_dict(),
                "recipe": run.recipe,
                "best_epoch": fit["best_epoch"],
                # Which epoch was kept and why (a small validation split cannot tell near epochs apart).
                "selection": fit.get("selection"),
                "epochs_run": len(fit["history"]),
                "train_seconds": round(train_seconds, 1),
                "pretrained": pretrained_note,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "device": device,
                # Data-parallel runs: ranks, backend, and what each rank trained on in its first epoch.
                "distributed": fit.get("distributed"),
                # Anomaly mode: what model selection judged on, how many good frames it learnt from.
                "anomaly": fit.get("anomaly"),
                # Where the machine was slower than the recipe's plan: the epochs the budget allowed.
                "time_budget": fit.get("budget"),
            },
            code_version=code_version(),
            parity=Parity(**parity),
            golden=Golden(tolerance=cfg.parity_tolerance, count=len(gidx)),
            files=hash_files(stage, names),
            # What serving's drift and frame-quality checks compare the line with (docs/monitoring.md).
            monitoring=build_reference(val.images, val_probs, classes=ds.classes, good_class=ds.good_class,
                                       threshold=threshold, per_class=per_class),
            defect_map=defect_map,
        )
        save_card(card, stage)
        final = run.registry.version_dir(name, version)
        if final.exists():
            raise TrainingError(f"model version {final} appeared while training; nothing was overwritten (try again)")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        rmdir_empty(staging_parent)
    return card


def rmdir_empty(path: Path) -> None:
    for p in (path, path.parent):
        try:
            p.rmdir()
        except OSError:
            return
