"""Build the card's monitoring reference from the validation split (called by training's export)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inspection.decisions import rule_defect_scores, rule_reject_mask
from inspection.monitoring.framestats import STAT_NAMES, batch_stats
from inspection.monitoring.reference import Distribution, MonitoringReference


def build_reference(inputs: np.ndarray, probabilities: np.ndarray, *, classes: Sequence[str],
                    good_class: str | None, threshold: float,
                    per_class: dict[str, float] | None = None) -> MonitoringReference | None:
    """The reference of ``inputs`` (uint8 ``[N, C, H, W]``, the model's input) and their
    ``probabilities`` (``[N, len(classes)]``); None when there are no frames.

    Raises:
        ValueError: the inputs are not uint8 ``[N, C, H, W]`` or the two arrays disagree on N.
    """
    if len(inputs) == 0:
        return None
    if len(inputs) != len(probabilities):
        raise ValueError(f"{len(inputs)} frames but {len(probabilities)} rows of probabilities")
    stats = batch_stats(inputs)
    classes = list(classes)
    score = None
    if good_class is not None:
        score = Distribution.from_sample(rule_defect_scores(probabilities, classes, good_class))
    rejected = rule_reject_mask(probabilities, classes, good_class, threshold, per_class or {})
    return MonitoringReference(
        source="validation",
        stats={name: Distribution.from_sample(stats[:, i]) for i, name in enumerate(STAT_NAMES)},
        score=score,
        reject_rate=float(np.mean(rejected)),
    )
