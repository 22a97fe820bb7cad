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


# -- intervals that count the test split's units -------------------------------------------------


def test_a_class_right_on_three_units_is_resolved_by_three_not_by_its_images() -> None:
    # 3 parts of one class, 6 images each, all right; 30 good parts of one image, all right.
    y = np.r_[np.ones(18, int), np.zeros(30, int)]
    units = np.r_[np.repeat([0, 1, 2], 6), np.arange(3, 33)]
    by_units = M.recall_intervals(y, y, units, 2)
    one_image_one_unit = M.recall_intervals(y, y, np.arange(48), 2)
    c = by_units["per_class"][1]
    assert c["units"] == 3 and c["high"] == 1.0
    # Jeffreys: Beta(3.5, 0.5)'s 2.5% quantile is 0.4644 (scipy.stats.beta.ppf), to Monte Carlo precision.
    assert c["low"] == pytest.approx(0.4644, abs=0.005)
    assert one_image_one_unit["per_class"][1]["low"] > 0.85  # 18 "independent" successes: far too sure
    assert by_units["macro_recall"][0] < one_image_one_unit["macro_recall"][0]
    assert by_units == M.recall_intervals(y, y, units, 2)  # deterministic


def test_macro_recall_interval_holds_the_estimate_and_narrows_with_more_units() -> None:
    rng = np.random.default_rng(0)

    def draw(parts: int) -> tuple[float, list[float]]:
        y = np.repeat(np.arange(3), parts)
        pred = np.where(rng.random(y.size) < 0.8, y, (y + 1) % 3)
        cm = M.confusion_matrix(y, pred, 3)
        return M.macro_recall(cm), M.recall_intervals(y, pred, np.arange(y.size), 3)["macro_recall"]

    small, wide = draw(10)
    large, narrow = draw(400)
    assert wide[0] <= small <= wide[1] and narrow[0] <= large <= narrow[1]
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 3
    assert 0.74 < narrow[0] < 0.8 < narrow[1] < 0.86


def test_auroc_interval_resamples_whole_units() -> None:
    rng = np.random.default_rng(1)
    d = np.r_[np.zeros(40, bool), np.ones(20, bool)]
    s = np.where(d, rng.normal(1.0, 1.0, d.size), rng.normal(0.0, 1.0, d.size))
    point = M.roc_auc(d, s)
    alone = M.auroc_interval(d, s, np.arange(d.size))
    assert alone[0] < point < alone[1]
    # The same scores, each part photographed 5 times: as many independent parts, 5x the images.
    d5, s5, u5 = np.repeat(d, 5), np.repeat(s, 5), np.repeat(np.arange(d.size), 5)
    assert M.roc_auc(d5, s5) == pytest.approx(point)
    by_units = M.auroc_interval(d5, s5, u5)
    as_images = M.auroc_interval(d5, s5, np.arange(d5.size))
    assert by_units == pytest.approx(alone, abs=0.02)  # copies add no information
    assert as_images[1] - as_images[0] < (by_units[1] - by_units[0]) * 0.6  # counting images would
    perfect = M.auroc_interval(d, d.astype(float), np.arange(d.size))
    assert perfect == [1.0, 1.0]
    assert all(math.isnan(v) for v in M.auroc_interval(np.zeros(5, bool), np.ones(5), np.arange(5)))


@pytest.mark.parametrize("seed", [0, 1])
def test_the_bootstraps_auroc_is_the_mann_whitney_auroc_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = rng.random(200) < 0.3
    s = rng.integers(0, 12, 200).astype(float)  # many ties
    assert M._auroc_of_sorted_negatives(np.sort(s[~d]), s[d]) == pytest.approx(M.roc_auc(d, s))


def test_intervals_refuse_arrays_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        M.recall_intervals(np.zeros(3, int), np.zeros(3, int), np.arange(2), 2)
    with pytest.raises(ValueError, match="differ in shape"):
        M.auroc_interval(np.zeros(3, bool), np.zeros(3), np.arange(2))


@pytest.mark.parametrize(("n_pos", "n_neg"), [(8, 52), (40, 120), (123, 286)])
def test_the_auroc_standard_error_is_the_spread_of_aurocs_over_repeated_splits(n_pos: int, n_neg: int) -> None:
    # Scores of a binormal model (AUROC ~0.89): the standard error must be how much the AUROC of a
    # split this size scatters from one draw to the next; never narrower, at most a little wider.
    rng = np.random.default_rng(0)
    d = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    draws = [M.roc_auc(d, np.where(d, rng.normal(1.75, 1.0, d.size), rng.normal(0.0, 1.0, d.size)))
             for _ in range(2000)]
    spread = float(np.std(draws))
    se = M.auroc_standard_error(float(np.mean(draws)), n_pos, n_neg)
    assert spread * 0.95 <= se <= spread * 1.4
    assert M.auroc_standard_error(0.9, 0, 10) == math.inf
    assert M.auroc_standard_error(float("nan"), 5, 10) == math.inf


def test_the_macro_recall_standard_error_averages_the_classes_binomial_errors() -> None:
    cm = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])  # the third class is absent from the truth
    expected = math.sqrt(0.8 * 0.2 / 10 + 0.9 * 0.1 / 10) / 2
    assert M.macro_recall_standard_error(cm) == pytest.approx(expected)
    assert M.macro_recall_standard_error(np.diag([5, 7])) == 0.0  # every image right: nothing to spread
    assert M.macro_recall_standard_error(np.zeros((2, 2))) == math.inf
