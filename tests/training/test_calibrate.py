"""Operating-point calibration and the 'validation cannot support this target' refusal."""

from __future__ import annotations

import numpy as np
import pytest

from inspection.errors import TrainingError
from training.calibrate import calibrate, check_supported, needed


def _scores(seed: int, n_def: int, n_good: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = np.r_[rng.beta(5, 2, n_def), rng.beta(2, 5, n_good)]
    return s, np.r_[np.ones(n_def, bool), np.zeros(n_good, bool)]


@pytest.mark.parametrize("target", [0.01, 0.02, 0.05, 0.1])
def test_max_escape_threshold_meets_the_target_and_is_the_highest_that_does(target: float) -> None:
    s, d = _scores(0, 200, 400)
    n = int(d.sum())
    t, ev = calibrate(s, d, {"max_escape": target})
    escapes = np.sum(d & (s < t))
    # A new defect like these passes with probability (escapes + 1) / (n + 1): within the target.
    assert (escapes + 1) / (n + 1) <= target
    # Any higher threshold (the next defect score up) would let one more defect pass, and break it.
    higher = np.min(s[d & (s > t)])
    assert (np.sum(d & (s < higher)) + 1) / (n + 1) > target
    assert ev["supported"] is True and ev["val_escape"]["k"] == escapes
    assert "split-conformal" in ev["threshold_rule"]


@pytest.mark.parametrize("target", [0.01, 0.05])
def test_max_overkill_threshold_meets_the_target_and_is_the_lowest_that_does(target: float) -> None:
    s, d = _scores(1, 200, 400)
    t, ev = calibrate(s, d, {"max_overkill": target})
    assert (np.sum(~d & (s >= t)) + 1) / 401 <= target
    assert (np.sum(~d & (s >= np.max(s[~d & (s < t)]))) + 1) / 401 > target
    assert ev["val_overkill"]["n"] == 400


def test_needed_counts() -> None:
    assert needed(0.01) == 100 and needed(0.05) == 20 and needed(0.03) == 34


def test_unsupported_escape_target_names_the_value_count_and_what_is_allowed() -> None:
    s, d = _scores(2, 59, 300)
    with pytest.raises(
        TrainingError,
        match=r"--max-escape 0.01 needs at least 100 defective .* validation has 59\. "
        r"Allowed with this split: --max-escape >= 0.017",
    ):
        calibrate(s, d, {"max_escape": 0.01})


def test_unsupported_overkill_target_and_no_defects_at_all() -> None:
    with pytest.raises(TrainingError, match="--max-overkill 0.001 needs at least 1000 good"):
        check_supported({"max_overkill": 0.001}, n_val_defects=50, n_val_good=200)
    with pytest.raises(TrainingError, match="validation has 0.*no target at all"):
        check_supported({"max_escape": 0.5}, n_val_defects=0, n_val_good=10)


def test_allow_unsupported_calibrates_but_records_it() -> None:
    s, d = _scores(3, 30, 100)
    t, ev = calibrate(s, d, {"max_escape": 0.01}, allow_unsupported=True)
    assert ev["supported"] is False and "validation has 30" in ev["unsupported_reason"]
    assert np.sum(d & (s < t)) == 0  # floor(0.01 * 30) = 0 escapes allowed on validation


@pytest.mark.parametrize("kind", ["max_escape", "max_overkill"])
def test_training_places_the_threshold_on_the_scores_the_cards_rule_computes(kind: str) -> None:
    # The network's probabilities are float32; the reject rule computes P(defect) = 1 - P(good)
    # in float64 (inspection.decisions). Calibrated on 1 - p in float32, the part at the threshold
    # fell on the other side of the card's rule a quarter of the time: the evidence said one part
    # fewer than the card then let through (or rejected).
    from types import SimpleNamespace

    from inspection.decisions import rule_reject_mask
    from training.train import _operating_point

    classes = ["good", "scratch"]
    cfg = SimpleNamespace(target={kind: 0.05}, allow_unsupported_target=False, overkill_limit=None,
                          per_class_thresholds={})
    for seed in range(12):
        rng = np.random.default_rng(seed)
        labels = np.r_[np.ones(40, np.int64), np.zeros(40, np.int64)]
        p_good = np.where(labels == 1, rng.beta(2, 5, 80), rng.beta(5, 2, 80)).astype(np.float32)
        probs = np.stack([p_good, 1 - p_good], axis=1).astype(np.float32)
        run = SimpleNamespace(cfg=cfg, good_index=0, ds=SimpleNamespace(classes=classes), name="m", version="v1")
        threshold, evidence, _ = _operating_point(run, probs, SimpleNamespace(labels=labels))  # type: ignore[arg-type]
        rejected = rule_reject_mask(probs, classes, "good", threshold, {})
        assert evidence["val_escape"]["k"] == int((labels == 1)[~rejected].sum()), seed
        assert evidence["val_overkill"]["k"] == int((labels == 0)[rejected].sum()), seed
