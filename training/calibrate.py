"""The operating point, re-exported for training: the logic lives in ``inspection.calibration``.

It moved to the torch-free core so that ``inspection models set-threshold`` re-calibrates a
model from its stored validation scores exactly as training did; see that module for the rule,
the thresholds, the trade-off table and the overkill warning.
"""

from __future__ import annotations

from inspection.calibration import (
    DEFAULT_OVERKILL_LIMIT,
    RULE,
    SCORES_FILE,
    TRADEOFF_ESCAPES,
    StoredScores,
    calibrate,
    check_supported,
    check_target,
    load_scores,
    needed,
    save_scores,
    smallest_supported,
    threshold_for,
    tradeoff_at,
    tradeoff_table,
    tradeoff_text,
)

__all__ = [
    "DEFAULT_OVERKILL_LIMIT",
    "RULE",
    "SCORES_FILE",
    "TRADEOFF_ESCAPES",
    "StoredScores",
    "calibrate",
    "check_supported",
    "check_target",
    "load_scores",
    "needed",
    "save_scores",
    "smallest_supported",
    "threshold_for",
    "tradeoff_at",
    "tradeoff_table",
    "tradeoff_text",
]
