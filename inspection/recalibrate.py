"""Move a model's operating point without retraining: ``inspection models set-threshold``.

A model whose escape target costs too much overkill (the calibration ``warning``) needs another
threshold, not another training run: the validation probabilities stored beside the model
(``scores.npz``, see ``inspection.calibration``) are all calibration needs. The result is a new
version of the same model — same ONNX file, same golden frames — whose card carries the new
threshold, its calibration evidence, the test operating point recomputed from the stored test
probabilities, the monitoring reference's reject rate recomputed from the stored validation
probabilities, and where it came from (``training.lineage``). The source version is never
touched: stations keep running it until the new version is promoted.

Order of work, so that nothing half-written ever shows in the registry: verify the source's
files against its card, read and check the stored scores, check the target against the
validation split, calibrate, then build the version in ``models/.staging/`` (copy, card,
golden frames re-scored by ONNX Runtime) and rename it into place.

The source's ``report.html`` and its plots are not carried over: they show the old threshold,
and the report needs the training extra to redraw (``training.report``); the lineage lists them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from inspection import calibration as C
from inspection.card import CARD_FILENAME, ModelCard, hash_files, load_card, save_card, sha256_file, utc_now
from inspection.decisions import defect_scores, per_class_mask, reject_mask
from inspection.errors import ModelCardError, ModelIntegrityError, RegistryError, ValidationError
from inspection.golden import check_golden
from inspection.metrics import escape_overkill
from inspection.registry import ModelRegistry, ModelVersion, parse_model_id

#: Files of a version that show its old operating point; not carried into a re-calibrated one.
_REPORT_SUFFIXES = (".html", ".png")
_SET_THRESHOLD_REMEDY = (
    "choose a target this split resolves, or retrain with a larger --val-fraction / more {what} images"
)


def set_threshold(
    registry: ModelRegistry,
    model_id: str,
    target: dict[str, float],
    *,
    overkill_limit: float | None = C.DEFAULT_OVERKILL_LIMIT,
) -> ModelVersion:
    """Re-calibrate ``model_id`` (``NAME/VERSION``) for ``target`` from its stored validation
    scores and write the result as the model's next version; returns that version.

    Raises:
        ValidationError: a target that is not exactly one of max_escape / max_overkill in
            (0, 1); a target the stored validation split cannot resolve (names the smallest
            allowed); a model without a good class (its threshold does not apply).
        RegistryError: no such model version; a malformed model id.
        ModelCardError: the version has no stored scores (trained before they were stored:
            retrain it), or they do not fit its card.
        ModelIntegrityError: a file of the source version does not match its card, or the
            copied model re-scores its golden frames beyond the card's tolerance.
    """
    kind, rate = C.check_target(target)
    name, version = parse_model_id(model_id)
    source = registry.get(name, version, verify=True)
    card = source.card
    if card.good_class is None:
        raise ValidationError(f"{source.model_id} has no good class: every frame is a defect, there is no reject "
                              "threshold to set")
    if C.SCORES_FILE not in card.files:
        raise ModelCardError(
            f"{source.model_id} has no stored scores ({C.SCORES_FILE} is not among its files {sorted(card.files)}): "
            "it was trained before models kept their validation scores; retrain it to get a version whose "
            "threshold can be moved without retraining"
        )
    scores = C.load_scores(source.path / C.SCORES_FILE, n_classes=len(card.classes))
    good = card.classes.index(card.good_class)
    val_defect = scores.val_labels != good
    C.check_supported({kind: rate}, n_val_defects=int(val_defect.sum()), n_val_good=int((~val_defect).sum()),
                      remedy=f"{source.model_id}: {_SET_THRESHOLD_REMEDY}", error=ValidationError)
    new_version = registry.next_version(name)
    new_id = f"{name}/{new_version}"
    threshold, evidence = C.calibrate(defect_scores(scores.val_probs, card), val_defect, {kind: rate},
                                      overkill_limit=overkill_limit, model_id=new_id,
                                      forced=per_class_mask(scores.val_probs, card.classes, card.thresholds.per_class))
    not_carried = sorted(f for f in card.files if f.endswith(_REPORT_SUFFIXES))
    lineage = {
        "recalibrated_from": source.model_id,
        "source_threshold": card.thresholds.reject,
        "source_target": dict(card.thresholds.target),
        "source_card_sha256": sha256_file(source.path / CARD_FILENAME),
        "at": utc_now().isoformat(),
        "not_carried": not_carried,
        "note": (
            f"re-calibrated from {source.model_id} without retraining (stored validation scores); "
            "same model file and golden frames. The source's report files show its old threshold and were not carried"
        ),
    }
    evidence = {**evidence, "target": {kind: rate}, "recalibrated_from": source.model_id}
    thresholds = card.thresholds.model_copy(
        update={"reject": threshold, "target": {kind: rate}, "calibration": evidence}
    )
    draft = card.model_copy(update={"version": new_version, "created": utc_now(), "thresholds": thresholds})
    metrics = {
        **card.metrics,
        "test": _test_operating_point(card.metrics.get("test", {}), scores, draft, good, evidence),
    }
    training = {**card.training, "lineage": lineage}
    monitoring = card.monitoring
    if monitoring is not None:
        # Serving centres the reject-rate chart on it until the line's own baseline: the source's
        # rate, at the old threshold, would raise false alarms or hide real ones. The export's
        # definition (inspection.monitoring.build): the reject rule over the validation frames,
        # whose probabilities are the stored ones.
        monitoring = monitoring.model_copy(update={"reject_rate": float(np.mean(reject_mask(scores.val_probs, draft)))})
    return _write_version(registry, source, draft.model_copy(update={"metrics": metrics, "training": training,
                                                                     "monitoring": monitoring}),
                          carry=[f for f in card.files if f not in not_carried])


def _test_operating_point(test: dict[str, Any], scores: C.StoredScores, card: ModelCard, good: int,
                          evidence: dict[str, Any]) -> dict[str, Any]:
    """The card's test figures with the threshold-dependent ones recomputed from stored scores
    (with the shared reject rule, per-class thresholds included); the rest do not move."""
    is_defect = scores.test_labels != good
    rates = escape_overkill(is_defect, reject_mask(scores.test_probs, card))
    out = {k: v for k, v in test.items() if k != "int8"}
    out["operating_point"] = {"threshold": card.thresholds.reject, "escape": rates["escape"].as_dict(),
                              "overkill": rates["overkill"].as_dict()}
    out["tradeoff"] = C.tradeoff_at(evidence["tradeoff"], defect_scores(scores.test_probs, card), is_defect)
    if "int8" in test:
        # Only threshold-free int8 figures stay true; the int8 probabilities were not stored.
        keep = ("accuracy", "accuracy_change", "max_abs_prob_diff")
        out["int8"] = {k: v for k, v in test["int8"].items() if k in keep}
        out["int8"]["note"] = "int8 escape/overkill were measured at the source version's threshold; not recomputed"
    return out


def _write_version(registry: ModelRegistry, source: ModelVersion, card: ModelCard, *, carry: list[str]) -> ModelVersion:
    """Assemble ``card``'s version in a staging folder, check it, rename it into place."""
    staging_parent = registry.root / ".staging" / card.name
    staging_parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f"{card.version}.", dir=staging_parent))
    try:
        for name in carry:
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source.path / name, stage / name)
        card = card.model_copy(update={"files": hash_files(stage, carry)})
        # Round trip through the schema: the card we rename into place is one load_card accepts.
        save_card(card, stage)
        card = load_card(stage)
        if card.files != {k: v for k, v in source.card.files.items() if k in carry}:
            raise ModelIntegrityError(f"{source.model_id}: files changed while being copied; nothing was written")
        rescore_golden(card, stage)
        final = registry.version_dir(card.name, card.version)
        if final.exists():
            raise RegistryError(f"model version {final} appeared meanwhile; nothing was overwritten (try again)")
        os.replace(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        for p in (staging_parent, staging_parent.parent):
            try:
                p.rmdir()
            except OSError:
                break
    return registry.get(card.name, card.version, verify=True)


def rescore_golden(card: ModelCard, folder: Path) -> float:
    """Score the card's golden frames with ONNX Runtime (``inspection.golden``); the max abs difference.

    Raises:
        ValidationError: onnxruntime is not installed (it comes with the ``serve`` extra).
        ModelIntegrityError: the golden file cannot be read, the model cannot score it, or the
            difference exceeds the card's golden tolerance (nothing is written then).
    """
    try:
        return check_golden(card, folder).max_diff
    except ModelIntegrityError as exc:
        raise ModelIntegrityError(f"{exc}; nothing was written") from None
