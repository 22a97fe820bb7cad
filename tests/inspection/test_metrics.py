"""inspection.metrics against brute-force definitions on seeded random data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from inspection import metrics as M


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_equals_pairwise_probability_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60) + 0.4 * y, 1)  # rounded: many ties
    assert M.roc_auc(y, s) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)


def test_roc_auc_is_nan_with_one_class_and_one_for_perfect_separation() -> None:
    assert math.isnan(M.roc_auc(np.ones(4), np.arange(4.0)))
    assert M.roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0


def test_roc_curve_points_match_counting_at_each_threshold() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40).astype(bool)
    s = np.round(rng.random(40), 1)
    fpr, tpr, thr = M.roc_curve(y, s)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    for f, t, th in zip(fpr[1:], tpr[1:], thr[1:]):
        assert t == pytest.approx(np.mean(s[y] >= th))
        assert f == pytest.approx(np.mean(s[~y] >= th))


def test_average_precision_matches_definition() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 50).astype(bool)
    s = rng.random(50) + 0.3 * y
    # AP = mean over positives of precision at that positive's score (no ties here).
    expected = np.mean([np.sum(y & (s >= t)) / np.sum(s >= t) for t in s[y]])
    assert M.average_precision(y, s) == pytest.approx(expected)


def test_wilson_interval_known_values() -> None:
    lo, hi = M.wilson_interval(0, 40)
    assert lo == 0.0 and hi == pytest.approx(0.0876, abs=5e-4)
    lo, hi = M.wilson_interval(2, 40)
    assert lo == pytest.approx(0.0138, abs=5e-4) and hi == pytest.approx(0.1650, abs=5e-4)
    assert M.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="k=5, n=3"):
        M.wilson_interval(5, 3)


def test_escape_and_overkill_count_the_right_errors() -> None:
    is_defect = np.array([1, 1, 1, 1, 0, 0, 0], dtype=bool)
    rejected = np.array([1, 1, 0, 1, 1, 0, 0], dtype=bool)
    rates = M.escape_overkill(is_defect, rejected)
    assert (rates["escape"].k, rates["escape"].n) == (1, 4)
    assert (rates["overkill"].k, rates["overkill"].n) == (1, 3)
    assert rates["escape"].ci_low < 0.25 < rates["escape"].ci_high
    assert "1/4" in str(rates["escape"])
    with pytest.raises(ValueError, match="shape"):
        M.escape_overkill(is_defect, rejected[:3])


def test_confusion_matrix_and_per_class_scores() -> None:
    y_true = [0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0, 2]
    cm = M.confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    prf = M.per_class_prf(cm, ["a", "b", "c"])
    assert prf["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}
    assert M.accuracy(cm) == pytest.approx(5 / 7)
    assert M.macro_recall(cm) == pytest.approx((0.5 + 1.0 + 2 / 3) / 3)
    with pytest.raises(ValueError, match="outside 0..2"):
        M.confusion_matrix([3], [0], 3)


def test_classification_summary_is_json_ready() -> None:
    import json

    out = M.classification_summary(np.array([0, 1, 1]), np.array([0, 1, 0]), ["good", "crack"])
    assert json.loads(json.dumps(out))["confusion_matrix"] == [[1, 0], [1, 1]]
    assert out["per_class"]["crack"]["recall"] == 0.5
