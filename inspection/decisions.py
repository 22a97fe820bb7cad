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


def defect_scores(probs: np.ndarray, card: ModelCard) -> np.ndarray:
    """P(defect) for each row of ``probs`` (shape [N, C])."""
    probs = np.asarray(probs, dtype=np.float64)
    if card.good_class is None:
        return np.ones(probs.shape[0])
    return 1.0 - probs[:, card.classes.index(card.good_class)]


def reject_mask(probs: np.ndarray, card: ModelCard, *, threshold: float | None = None) -> np.ndarray:
    """Vectorised decision for a batch: True where the part is rejected."""
    probs = np.asarray(probs, dtype=np.float64)
    t = card.thresholds.reject if threshold is None else threshold
    mask = defect_scores(probs, card) >= t
    for cls, ct in card.thresholds.per_class.items():
        mask |= probs[:, card.classes.index(cls)] >= ct
    return mask


def decide(probs: np.ndarray, card: ModelCard) -> Decision:
    """Decision for one frame's probabilities (shape [C])."""
    row = np.asarray(probs, dtype=np.float64).reshape(1, -1)
    if row.shape[1] != len(card.classes):
        raise ValueError(f"model gave {row.shape[1]} probabilities, card has {len(card.classes)} classes")
    rejected = bool(reject_mask(row, card)[0])
    defect_idx = [card.classes.index(c) for c in card.defect_classes]
    defect_class = card.classes[defect_idx[int(np.argmax(row[0, defect_idx]))]] if defect_idx else None
    if card.good_class is None:
        score = float(row[0].max())
    else:
        score = float(defect_scores(row, card)[0])
    return Decision(
        decision="reject" if rejected else "pass",
        defect_class=defect_class,
        score=score,
        threshold=card.thresholds.reject,
        scores={c: float(p) for c, p in zip(card.classes, row[0])},
    )
