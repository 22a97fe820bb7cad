"""The evaluation report: escape–overkill curve, trade-off table with CIs, the overkill warning."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from inspection.calibration import calibrate, tradeoff_at
from inspection.metrics import classification_summary, escape_overkill, roc_auc
from training.report import escape_overkill_curve, target_misses, text_summary, write_report

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
    assert files == ["report.html"] and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    assert "alt='escape-overkill curve'" in page
    assert (
        "<p class='warn'><b>WARNING:</b> target escape 1.0% forces overkill"
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
    assert "Escape–overkill trade-off" in page and "alt='escape-overkill curve'" in page


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


def test_a_test_split_without_defects_says_the_escape_is_not_measurable(tmp_path: Path) -> None:
    # An anomaly line of good frames alone: its overkill target calibrates without a defect, and
    # the report and summary printed "ROC AUC defect vs good nan".
    labels, probs = _split(2, 0, 40, 4.0)
    threshold, evidence = calibrate(probs[:, 1], labels == 1, {"max_overkill": 0.05})
    evidence["target"] = {"max_overkill": 0.05}
    metrics = _test_metrics(labels, probs, threshold)
    text = text_summary(metrics, "good", evidence)
    assert "escape rate   not measurable (no defective image)" in text
    assert "ROC AUC defect vs good not measurable (needs defective and good images)" in text and "nan" not in text
    write_report(tmp_path, title="line v1", classes=CLASSES, good_class="good", y_true=labels, probs=probs,
                 threshold=threshold, test_metrics=metrics, calibration=evidence, history=[])
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<td>not measurable (no defective image)</td>" in page and ">nan<" not in page


def test_escape_overkill_curve_is_the_roc_read_by_the_line() -> None:
    labels, probs = _split(2, 50, 80, 3)
    escape, overkill, thresholds = escape_overkill_curve(labels == 1, probs[:, 1])
    for e, o, t in zip(escape[1:], overkill[1:], thresholds[1:], strict=True):
        rates = escape_overkill(labels == 1, probs[:, 1] >= t)
        assert (e, o) == pytest.approx((rates["escape"].rate, rates["overkill"].rate))
    assert escape[0] == 1.0 and overkill[-1] == 1.0


def _embedded_images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def test_the_report_is_one_self_contained_file(tmp_path: Path) -> None:
    page, _, _, _ = _report(tmp_path, separation=2.5)
    sources = re.findall(r"src='([^']*)'", page)
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)
    assert all(png[:4] == b"\x89PNG" for png in _embedded_images(page))
    assert len(_embedded_images(page)) == 4  # escape-overkill, ROC, PR, confusion (no images given)


def test_target_in_words_and_a_red_warning_when_test_misses_it(tmp_path: Path) -> None:
    page, _, metrics, _ = _report(tmp_path, separation=2.5)
    assert "{'max_escape'" not in page and "escape ≤ 1% on the validation split" in page
    test_escape = metrics["operating_point"]["escape"]
    missed = test_escape["rate"] > 0.01
    assert ("TEST MISSES THE TARGET" in page) == missed
    op = {"escape": {"k": 9, "n": 100, "rate": 0.09, "ci_low": 0.048, "ci_high": 0.16},
          "overkill": {"k": 1, "n": 100, "rate": 0.01, "ci_low": 0.002, "ci_high": 0.054}}
    assert target_misses({"max_escape": 0.02}, op) == [
        ("test escape 9.00% (9/100) misses the target escape ≤ 2.00% — the whole 95% interval is above it, so the "
         "miss is not chance")]
    assert target_misses({"max_escape": 0.05}, op)[0].endswith("(within the 95% interval, a larger test split "
                                                               "would tell)")
    assert target_misses({"max_escape": 0.1}, op) == [] and target_misses({}, op) == []
    assert target_misses({"max_overkill": 0.005}, op)[0].startswith("test overkill 1.00% (1/100)")


def test_confusion_at_the_operating_point_escape_per_class_and_galleries(tmp_path: Path) -> None:
    classes = ["good", "scratch", "dent"]
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    p_defect = np.array([0.1, 0.2, 0.8, 0.3, 0.9, 0.4, 0.95, 0.1, 0.7])  # threshold 0.5
    probs = np.stack([1 - p_defect, p_defect / 2, p_defect / 2], axis=1)
    m = classification_summary(labels, probs.argmax(1), classes)
    rates = escape_overkill(labels != 0, p_defect >= 0.5)
    m["operating_point"] = {"threshold": 0.5, "escape": rates["escape"].as_dict(),
                            "overkill": rates["overkill"].as_dict()}
    m["roc_auc"], m["average_precision"] = roc_auc(labels != 0, p_defect), 0.5
    images = np.stack([np.full((1, 40, 60), 20 * i, np.uint8) for i in range(9)])
    names = [f"images/{c}/{i}.png" for i, c in enumerate(classes[k] for k in labels)]
    write_report(tmp_path, title="t", classes=classes, good_class="good", y_true=labels, probs=probs,
                 threshold=0.5, test_metrics=m, calibration={"target": {"max_escape": 0.1}}, history=[],
                 images=images, names=names)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    # pass/reject x good/defect at the threshold: 3 good passed, 1 overkill, 2 escapes, 3 caught
    assert ("<tr><td>good</td><td>3</td><td>1 (overkill)</td></tr>"
            "<tr><td>defect</td><td>2 (escape)</td><td>3</td></tr>") in page
    assert "<tr><td>scratch</td><td>50.00% (1/2; 95% CI" in page and "<tr><td>dent</td><td>33.33% (1/3; 95% CI" in page
    assert "Escapes (defects passed): 2</h2>" in page and "Overkills (good parts rejected): 1</h2>" in page
    # the most confident escape first (dent 7: P(defect) 0.1), then scratch 5 (0.4)
    assert page.index("alt='images/dent/7.png'") < page.index("alt='images/scratch/5.png'")
    assert "P(defect) 0.800" in page and "alt='images/good/2.png'" in page
    assert "TEST MISSES THE TARGET" in page  # 2/5 escapes against a 10% target
    thumbs = _embedded_images(page)[:3]
    decoded = [cv2.imdecode(np.frombuffer(t, np.uint8), cv2.IMREAD_UNCHANGED) for t in thumbs]
    assert [d.shape for d in decoded] == [(40, 60)] * 3 and decoded[0][0, 0] == 140  # image 7, grey 140
