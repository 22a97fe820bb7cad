"""The operating point in the core: trade-off table, overkill warning, stored scores."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from inspection.calibration import (
    allowed_misses,
    calibrate,
    load_scores,
    save_scores,
    threshold_for,
    tradeoff_at,
    tradeoff_table,
    tradeoff_text,
)
from inspection.errors import ModelCardError, TrainingError, ValidationError
from inspection.metrics import wilson_interval


def _scores(seed: int, n_def: int, n_good: int, *, separation: float) -> tuple[np.ndarray, np.ndarray]:
    """P(defect) for defects ~ Beta(a, 2), for good parts ~ Beta(2, a): larger ``separation`` = a better model."""
    rng = np.random.default_rng(seed)
    s = np.r_[rng.beta(separation, 2, n_def), rng.beta(2, separation, n_good)]
    return s, np.r_[np.ones(n_def, bool), np.zeros(n_good, bool)]


def test_tradeoff_table_meets_each_level_with_wilson_intervals_and_marks_unresolvable_ones() -> None:
    s, d = _scores(0, 150, 400, separation=4)
    table = tradeoff_table(s, d)
    assert [r["max_escape"] for r in table] == [0.005, 0.01, 0.02, 0.05, 0.10]
    # 150 defects resolve 1% (needs 100) but not 0.5% (needs 200).
    assert [r["resolvable"] for r in table] == [False, True, True, True, True]
    assert table[0]["needed"] == 200
    for row in table:
        t = row["threshold"]
        passed_defects = int(np.sum(d & (s < t)))
        rejected_good = int(np.sum(~d & (s >= t)))
        assert passed_defects <= math.floor(row["max_escape"] * 150 + 1e-9)
        assert row["escape"]["k"] == passed_defects and row["escape"]["n"] == 150
        assert row["overkill"]["k"] == rejected_good and row["overkill"]["n"] == 400
        assert (row["overkill"]["ci_low"], row["overkill"]["ci_high"]) == pytest.approx(
            wilson_interval(rejected_good, 400)
        )
    # A looser escape target never costs more overkill.
    overkills = [r["overkill"]["rate"] for r in table]
    assert overkills == sorted(overkills, reverse=True)
    assert overkills[0] > overkills[-1]


@pytest.mark.parametrize(("kind", "rate", "n"), [("max_escape", 0.01, 100), ("max_escape", 0.05, 75),
                                                 ("max_escape", 0.02, 140), ("max_overkill", 0.01, 120)])
def test_the_target_holds_on_new_parts_not_only_on_validation(kind: str, rate: float, n: int) -> None:
    """Calibrate on n validation parts, many times over; a new part from the same line crosses the
    threshold with probability <= rate on average. Scores are uniform, so that probability is the
    threshold itself (escape: P(U < t) = t; overkill: P(U >= t) = 1 - t)."""
    rng = np.random.default_rng(11)
    trials = 5_000
    is_defect = np.full(n, kind == "max_escape")
    wrong_side = np.empty(trials)
    for i, scores in enumerate(rng.random((trials, n))):
        t = threshold_for(scores, is_defect, kind, rate)
        wrong_side[i] = t if kind == "max_escape" else 1.0 - t
    k = allowed_misses(rate, n)
    expected = (k + 1) / (n + 1)  # the (k+1)-th of n uniform order statistics
    se = wrong_side.std() / math.sqrt(trials)
    assert expected <= rate
    assert abs(wrong_side.mean() - expected) < 5 * se
    assert wrong_side.mean() < rate
    # The old rule (floor(rate * n) validation misses) broke the promise by up to 2x on 100 parts.
    assert (math.floor(rate * n + 1e-9) + 1) / (n + 1) > rate


def test_allowed_misses_is_the_largest_count_whose_promise_holds() -> None:
    for rate in (0.005, 0.01, 0.02, 0.05, 0.1):
        for n in range(math.ceil(1 / rate), 1000, 7):
            k = allowed_misses(rate, n)
            assert (k + 1) / (n + 1) <= rate + 1e-12 < (k + 2) / (n + 1)
    assert allowed_misses(0.01, 100) == 0 and allowed_misses(0.01, 199) == 1 and allowed_misses(0.05, 75) == 2


def test_tradeoff_at_applies_validation_thresholds_to_another_split() -> None:
    s, d = _scores(1, 200, 400, separation=4)
    table = tradeoff_table(s, d)
    t_s, t_d = _scores(2, 80, 300, separation=4)
    test = tradeoff_at(table, t_s, t_d)
    for row, trow in zip(table, test, strict=True):
        assert trow["threshold"] == row["threshold"]
        assert trow["escape"]["k"] == int(np.sum(t_d & (t_s < row["threshold"]))) and trow["escape"]["n"] == 80
        assert trow["overkill"]["k"] == int(np.sum(~t_d & (t_s >= row["threshold"])))
    text = tradeoff_text(table, test=test)
    assert "test overkill [95% CI]" in text and "0.005" in text and "not resolvable" not in text


def test_tradeoff_rejects_a_level_outside_0_1() -> None:
    s, d = _scores(1, 20, 20, separation=4)
    with pytest.raises(ValidationError, match=r"--max-escape 1\.5: a rate must be between 0 and 1"):
        tradeoff_table(s, d, escapes=(0.01, 1.5))


def test_weak_model_at_a_strict_escape_target_gets_a_warning_naming_target_overkill_ci_and_limit() -> None:
    s, d = _scores(3, 200, 400, separation=2.5)  # overlapping: 1% escape costs many good parts
    t, ev = calibrate(s, d, {"max_escape": 0.01}, model_id="coat/v3")
    overkill = ev["val_overkill"]
    assert overkill["rate"] > 0.20
    warning = ev["warning"]
    assert "target escape 1.0%" in warning and f"forces overkill {overkill['rate']:.1%}" in warning
    assert f"95% CI {overkill['ci_low']:.1%}–{overkill['ci_high']:.1%}" in warning
    assert "above the limit 20.0%" in warning
    assert "inspection models set-threshold coat/v3 --max-escape" in warning
    assert ev["overkill_limit"] == 0.20 and len(ev["tradeoff"]) == 5
    # The threshold itself is unchanged by the warning: training still gets its operating point.
    assert np.sum(d & (s < t)) <= 2


def test_no_warning_when_overkill_at_the_target_is_within_the_limit() -> None:
    s, d = _scores(4, 200, 400, separation=12)  # well separated
    _, ev = calibrate(s, d, {"max_escape": 0.05})
    assert ev["val_overkill"]["rate"] <= 0.20
    assert "warning" not in ev and len(ev["tradeoff"]) == 5


def test_the_limit_is_configurable_and_can_be_switched_off() -> None:
    s, d = _scores(3, 200, 400, separation=2.5)
    _, ev = calibrate(s, d, {"max_escape": 0.01})
    rate = ev["val_overkill"]["rate"]
    assert "warning" in calibrate(s, d, {"max_escape": 0.01}, overkill_limit=rate - 0.01)[1]
    assert "warning" not in calibrate(s, d, {"max_escape": 0.01}, overkill_limit=min(1.0, rate + 0.01))[1]
    assert "warning" not in calibrate(s, d, {"max_escape": 0.01}, overkill_limit=None)[1]
    # An overkill target is the engineer's own choice of overkill: never warned about.
    assert "warning" not in calibrate(s, d, {"max_overkill": 0.5})[1]
    with pytest.raises(ValidationError, match=r"overkill limit 1\.5: allowed \(0, 1\]"):
        calibrate(s, d, {"max_escape": 0.01}, overkill_limit=1.5)


def test_allowed_on_too_few_a_target_needs_only_its_own_kind_of_part() -> None:
    # An overkill target is placed by good parts alone: an anomaly line of good frames (no defect
    # in validation) calibrates when told to go on with too few of them.
    s, d = _scores(5, 0, 30, separation=4)
    t, ev = calibrate(s, d, {"max_overkill": 0.01}, allow_unsupported=True)
    assert ev["supported"] is False and "validation has 30" in ev["unsupported_reason"]
    assert ev["val_escape"]["n"] == 0 and ev["val_overkill"]["n"] == 30 and t > s.max()
    # None of the target's own kind is refused even when told to go on: nothing places the threshold.
    with pytest.raises(TrainingError, match="--max-escape 0.01 needs at least 100 defective .* validation has 0"):
        calibrate(s, d, {"max_escape": 0.01}, allow_unsupported=True)
    with pytest.raises(TrainingError, match="--max-overkill 0.01 needs at least 100 good .* validation has 0"):
        calibrate(*_scores(5, 30, 0, separation=4), {"max_overkill": 0.01}, allow_unsupported=True)


@pytest.mark.parametrize("kind", ["max_escape", "max_overkill"])
def test_parts_a_per_class_threshold_rejects_count_in_the_evidence_and_the_budget(kind: str) -> None:
    # Per-class thresholds reject some parts whatever the threshold on P(defect): a good part they
    # take is overkill, a defect they take never escapes. The evidence used to count P(defect) alone.
    s, d = _scores(3, 200, 200, separation=3)
    forced = np.random.default_rng(4).random(400) < 0.04
    t, ev = calibrate(s, d, {kind: 0.05}, forced=forced)
    rejected = (s >= t) | forced
    assert ev["val_overkill"]["k"] == int((rejected & ~d).sum())
    assert ev["val_escape"]["k"] == int((~rejected & d).sum())
    if kind == "max_overkill":
        assert int((rejected & ~d).sum()) <= allowed_misses(0.05, 200)  # the budget holds with them
    else:
        assert int((~rejected & d).sum()) == allowed_misses(0.05, 200)  # the highest threshold that holds
    t_free, _ = calibrate(s, d, {kind: 0.05})
    assert t >= t_free  # forced defects leave fewer that can escape; forced good parts spend the budget


def test_an_overkill_target_no_threshold_can_meet_is_said() -> None:
    # Good parts at P(defect) = 1 are rejected by every threshold up to 1: the target cannot hold.
    s, d = _scores(5, 50, 200, separation=4)
    s[np.flatnonzero(~d)[:5]] = 1.0
    _, ev = calibrate(s, d, {"max_overkill": 0.01})
    assert ev["val_overkill"]["k"] == 5 and "cannot be met" in ev["warning"]


def test_scores_round_trip_and_malformed_files_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    val = rng.dirichlet(np.ones(3), 20)
    test = rng.dirichlet(np.ones(3), 10)
    path = save_scores(tmp_path / "scores.npz", val_probs=val, val_labels=rng.integers(0, 3, 20),
                       test_probs=test, test_labels=rng.integers(0, 3, 10))
    got = load_scores(path, n_classes=3)
    assert got.val_probs.dtype == np.float32 and got.val_labels.dtype == np.int64
    np.testing.assert_allclose(got.test_probs, test.astype(np.float32))
    with pytest.raises(ModelCardError, match="val_probs has 3 columns, the card has 4 classes"):
        load_scores(path, n_classes=4)
    np.savez(
        tmp_path / "bad.npz", val_probs=val, val_labels=np.full(20, 3), test_probs=test, test_labels=np.zeros(10, int)
    )
    with pytest.raises(ModelCardError, match=r"val_labels has class indices outside 0\.\.2"):
        load_scores(tmp_path / "bad.npz")
    np.savez(tmp_path / "partial.npz", val_probs=val)
    with pytest.raises(ModelCardError, match=r"lack \['val_labels', 'test_probs', 'test_labels'\]"):
        load_scores(tmp_path / "partial.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelCardError, match="cannot be read"):
        load_scores(tmp_path / "junk.npz")
    with pytest.raises(ModelCardError, match=r"val_probs must be \[N, K\]"):
        save_scores(tmp_path / "x.npz", val_probs=val[:, 0], val_labels=np.zeros(20, int), test_probs=test,
                    test_labels=np.zeros(10, int))
