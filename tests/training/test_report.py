"""The evaluation report: escape–overkill curve, trade-off table with CIs, the overkill warning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inspection.calibration import calibrate, tradeoff_at
from inspection.metrics import classification_summary, escape_overkill, roc_auc
from training.report import escape_overkill_curve, text_summary, write_report

CLASSES = ["good", "scratch"]


def _split(seed: int, n_def: int, n_good: int, separation: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n_def, np.int64), np.zeros(n_good, np.int64)]
    p_defect = np.where(labels == 1, rng.beta(separation, 2, labels.size), rng.beta(2, separation, labels.size))
    return labels, np.stack([1 - p_defect, p_defect], axis=1)


def _test_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    m = classification_summary(labels, probs.argmax(1), CLASSES)
    rates = escape_overkill(labels == 1, probs[:, 1] >= threshold)
    m["operating_point"] = {
        "threshold": threshold,
        "escape": rates["escape"].as_dict(),
        "overkill": rates["overkill"].as_dict(),
    }
    m["roc_auc"] = roc_auc(labels == 1, probs[:, 1])
    m["average_precision"] = 0.5
    return m


def _report(
    tmp_path: Path, separation: float, *, with_val: bool = True
) -> tuple[str, dict[str, Any], dict[str, Any], list[str]]:
    val_labels, val_probs = _split(0, 200, 400, separation)
    test_labels, test_probs = _split(1, 120, 300, separation)
    threshold, evidence = calibrate(val_probs[:, 1], val_labels == 1, {"max_escape": 0.01}, model_id="parts/v1")
    evidence["target"] = {"max_escape": 0.01}
    metrics = _test_metrics(test_labels, test_probs, threshold)
    extra = {"val_labels": val_labels, "val_probs": val_probs} if with_val else {}
    files = write_report(
        tmp_path,
        title="parts v1",
        classes=CLASSES,
        good_class="good",
        y_true=test_labels,
        probs=test_probs,
        threshold=threshold,
        test_metrics=metrics,
        calibration=evidence,
        history=[{"epoch": 1, "loss": 0.5}],
        **extra,
    )
    return (tmp_path / "report.html").read_text(encoding="utf-8"), evidence, metrics, files


def test_weak_model_report_shows_the_warning_in_red_the_curve_and_the_tradeoff_table(tmp_path: Path) -> None:
    page, evidence, _, files = _report(tmp_path, separation=2.5)
    assert "warning" in evidence
    assert "escape_overkill.png" in files and (tmp_path / "escape_overkill.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        "<p style='color:#b00;border:2px solid #b00;padding:6px'><b>WARNING:</b> target escape 1.0% forces overkill"
        in page
    )
    assert "set-threshold parts/v1 --max-escape" in page and "Escape–overkill trade-off" in page
    # one row per level, validation and test columns with CIs, overkill above the limit in red
    row = evidence["tradeoff"][3]
    assert f"<td>{row['max_escape']:g}</td><td>{row['threshold']:.4g}</td>" in page
    assert page.count("<tr><td>0.") >= 5 and "95% CI" in page
    assert "<td style='color:#b00'>" in page
    assert "not resolvable: needs ≥ 200 validation defects" not in page  # 200 defects resolve 0.5%


def test_good_model_report_has_no_warning(tmp_path: Path) -> None:
    page, evidence, _, _ = _report(tmp_path, separation=20, with_val=False)  # the old call, no validation curve
    assert "warning" not in evidence and "WARNING" not in page
    assert "Escape–overkill trade-off" in page and (tmp_path / "escape_overkill.png").is_file()


def test_text_summary_prints_the_warning_and_the_table(tmp_path: Path) -> None:
    _, evidence, metrics, _ = _report(tmp_path, separation=2.5)
    plain = text_summary(metrics, "good")  # the existing call still works
    assert "WARNING" not in plain and "trade-off" not in plain
    test_labels, test_probs = _split(1, 120, 300, 2.5)
    metrics["tradeoff"] = tradeoff_at(evidence["tradeoff"], test_probs[:, 1], test_labels == 1)
    text = text_summary(metrics, "good", evidence)
    assert f"WARNING: {evidence['warning']}" in text
    assert "escape–overkill trade-off" in text and "test overkill [95% CI]" in text
    assert len([line for line in text.splitlines() if line.startswith("  0.")]) == 5


def test_escape_overkill_curve_is_the_roc_read_by_the_line() -> None:
    labels, probs = _split(2, 50, 80, 3)
    escape, overkill, thresholds = escape_overkill_curve(labels == 1, probs[:, 1])
    for e, o, t in zip(escape[1:], overkill[1:], thresholds[1:], strict=True):
        rates = escape_overkill(labels == 1, probs[:, 1] >= t)
        assert (e, o) == pytest.approx((rates["escape"].rate, rates["overkill"].rate))
    assert escape[0] == 1.0 and overkill[-1] == 1.0
