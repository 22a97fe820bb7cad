"""The reject rule: P(defect) >= threshold, per-class thresholds, ties reject."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inspection.decisions import decide, defect_scores, reject_mask
from tests.helpers.tiny_model import make_model_version


@pytest.fixture
def card(tmp_path: Path):
    return make_model_version(
        tmp_path, classes=("good", "scratch", "dent"), threshold=0.4, per_class={"dent": 0.2}
    ).card


def test_threshold_on_defect_probability_with_ties_rejecting(card) -> None:
    probs = np.array([
        [0.70, 0.20, 0.10],   # P(defect)=0.30 < 0.4 -> pass
        [0.60, 0.40, 0.00],   # P(defect)=0.40 == threshold -> reject (reject on doubt)
        [0.20, 0.80, 0.00],   # clearly defective
        [0.75, 0.00, 0.25],   # P(defect)=0.25 but dent >= 0.2 -> per-class reject
    ])
    assert defect_scores(probs, card) == pytest.approx([0.3, 0.4, 0.8, 0.25])
    assert reject_mask(probs, card).tolist() == [False, True, True, True]
    assert reject_mask(probs, card, threshold=0.9).tolist() == [False, False, False, True]


def test_decide_names_the_likeliest_defect_even_when_passing(card) -> None:
    d = decide(np.array([0.9, 0.02, 0.08]), card)
    assert d.decision == "pass" and d.defect_class == "dent"
    assert d.score == pytest.approx(0.1) and d.threshold == 0.4
    assert set(d.scores) == {"good", "scratch", "dent"}
    assert decide(np.array([0.1, 0.85, 0.05]), card).decision == "reject"


def test_decide_refuses_a_wrong_number_of_probabilities(card) -> None:
    with pytest.raises(ValueError, match="2 probabilities, card has 3 classes"):
        decide(np.array([0.5, 0.5]), card)


def test_model_without_good_class_rejects_every_frame(tmp_path: Path) -> None:
    card = make_model_version(tmp_path, classes=("crazing", "patches"), good_class=None).card
    d = decide(np.array([0.3, 0.7]), card)
    assert d.decision == "reject" and d.defect_class == "patches" and d.score == pytest.approx(0.7)


@pytest.mark.parametrize("good_class", ["good", None])
def test_decide_agrees_with_the_vectorised_rule_on_random_rows(tmp_path: Path, good_class) -> None:
    classes = ("good", "scratch", "dent", "bubble") if good_class else ("scratch", "dent", "bubble")
    card = make_model_version(tmp_path, classes=classes, good_class=good_class, threshold=0.37,
                              per_class={"dent": 0.3}).card
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(len(classes)) * 0.5, size=2000).astype(np.float32)
    probs[:50] = np.round(probs[:50], 1)  # ties between classes and on the thresholds
    mask, scores = reject_mask(probs, card), defect_scores(probs, card)
    defect_idx = [classes.index(c) for c in card.defect_classes]
    for i, row in enumerate(probs):
        d = decide(row, card)
        assert (d.decision == "reject") == bool(mask[i])
        assert d.defect_class == classes[defect_idx[int(np.argmax(row[defect_idx]))]]
        assert d.score == (float(scores[i]) if good_class else float(row.max()))
        assert d.scores == {c: float(p) for c, p in zip(classes, row)}
