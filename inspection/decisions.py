"""From class probabilities to a reject decision, as the card's operating point says.

Kept in the core so serving, the evaluation report and model comparison all apply the very
same rule: reject when P(defect) >= the card's threshold, or when any defect class with a
per-class threshold reaches it. The rule is "reject on doubt": ties go to reject.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from inspection.card import ModelCard

Verdict = Literal["pass", "reject"]


@dataclass(frozen=True, slots=True)
class Decision:
    decision: Verdict
    #: The most likely defect class (always filled, so a pass near the threshold still says
    #: which defect it resembled); None only for a model with no defect classes.
    defect_class: str | None
    #: P(defect) = 1 - P(good); for a model without a good class, the top class probability.
    score: float
    threshold: float
    scores: dict[str, float]


def rule_defect_scores(probs: np.ndarray, classes: list[str], good_class: str | None) -> np.ndarray:
    """P(defect) = 1 - P(good) for each row of ``probs`` (shape [N, C]); 1 without a good class."""
    probs = np.asarray(probs, dtype=np.float64)
    if good_class is None:
        return np.ones(probs.shape[0])
    return 1.0 - probs[:, classes.index(good_class)]


def per_class_mask(probs: np.ndarray, classes: list[str], per_class: dict[str, float]) -> np.ndarray:
    """True where a per-class threshold is reached: rejected whatever the threshold on P(defect)."""
    probs = np.asarray(probs, dtype=np.float64)
    mask = np.zeros(probs.shape[0], dtype=bool)
    for cls, ct in per_class.items():
        mask |= probs[:, classes.index(cls)] >= ct
    return mask


def rule_reject_mask(
    probs: np.ndarray, classes: list[str], good_class: str | None, threshold: float, per_class: dict[str, float]
) -> np.ndarray:
    """The reject rule on a batch, from its parts (training applies it before a card exists):
    True where P(defect) >= ``threshold`` or a per-class threshold is reached."""
    return (rule_defect_scores(probs, classes, good_class) >= threshold) | per_class_mask(probs, classes, per_class)


def defect_scores(probs: np.ndarray, card: ModelCard) -> np.ndarray:
    """P(defect) for each row of ``probs`` (shape [N, C])."""
    return rule_defect_scores(probs, card.classes, card.good_class)


def reject_mask(probs: np.ndarray, card: ModelCard, *, threshold: float | None = None) -> np.ndarray:
    """Vectorised decision for a batch: True where the part is rejected."""
    t = card.thresholds.reject if threshold is None else threshold
    return rule_reject_mask(probs, card.classes, card.good_class, t, card.thresholds.per_class)


def decide(probs: np.ndarray, card: ModelCard) -> Decision:
    """Decision for one frame's probabilities (shape [C]): the rule of ``reject_mask``.

    Plain Python on the row's floats: this runs once per frame on the serving path, where a
    dozen NumPy calls on a 4-element array cost more than the arithmetic (same float64
    results; ``tests/inspection/test_decisions.py`` checks both agree).
    """
    row = np.asarray(probs, dtype=np.float64).ravel().tolist()
    classes = card.classes
    if len(row) != len(classes):
        raise ValueError(f"model gave {len(row)} probabilities, card has {len(classes)} classes")
    scores = dict(zip(classes, row, strict=True))
    good = card.good_class
    defects = [c for c in classes if c != good]
    # max() keeps the first of equal scores, as argmax does.
    defect_class = max(defects, key=scores.__getitem__) if defects else None
    thresholds = card.thresholds
    if good is None:
        score, p_defect = max(row), 1.0
    else:
        score = p_defect = 1.0 - scores[good]
    rejected = p_defect >= thresholds.reject or any(scores[c] >= t for c, t in thresholds.per_class.items())
    return Decision(
        decision="reject" if rejected else "pass",
        defect_class=defect_class,
        score=score,
        threshold=thresholds.reject,
        scores=scores,
    )


def _pair(value: float, limit: float) -> tuple[str, str]:
    """``value`` and ``limit`` with the fewest decimals (>= 3) that show which is larger."""
    for digits in range(3, 10):
        a, b = f"{value:.{digits}f}", f"{limit:.{digits}f}"
        if a != b or value == limit:
            return a, b
    return f"{value!r}", f"{limit!r}"


def explain(scores: dict[str, float], *, good_class: str | None, threshold: float, per_class: dict[str, float],
            decision: str) -> str:
    """The rule that decided, in words: ``"P(defect) 0.721 ≥ threshold 0.596 → reject"``.

    Names the first test that rejected (the overall P(defect), then per-class thresholds), or
    says why none did. Decimals grow until score and threshold differ visibly.
    """
    if good_class is not None and good_class in scores:
        p = 1.0 - scores[good_class]
        a, b = _pair(p, threshold)
        main = f"P(defect) {a} {'≥' if p >= threshold else '<'} threshold {b}"
        if p >= threshold:
            return f"{main} → reject"
    else:
        main = ""
    for cls, limit in per_class.items():
        if cls in scores and scores[cls] >= limit:
            a, b = _pair(scores[cls], limit)
            return f"P({cls}) {a} ≥ its threshold {b} → reject"
    if good_class is None:
        top = max(scores, key=scores.__getitem__) if scores else None
        return f"no good class: every frame is rejected (most likely {top}) → {decision}"
    extra = "; no per-class threshold reached" if per_class else ""
    return f"{main}{extra} → {decision}"
