"""The operating point: a reject threshold on P(defect), calibrated on the validation split.

Rule for "can validation support the target?" (documented in the card's calibration block):
a target rate ``r`` on ``n`` validation parts can only be resolved when one part moves the rate
by at most ``r``, i.e. ``n >= ceil(1 / r)``. ``--max-escape 0.01`` thus needs at least 100
defective validation images; ``--max-overkill 0.02`` needs at least 50 good ones. Below that,
training refuses up front with ``TrainingError`` (naming the target, the count and the smallest
target the split supports) instead of calibrating a threshold whose promise nobody can check.
This is checked before any training, so the refusal costs seconds, not an hour.

``--allow-unsupported-target`` overrides the refusal: the threshold is still calibrated the same
way, but the card records ``calibration.supported: false`` with the reason, and the training
summary and report print it as a warning. Serving and `inspection models show` can see it.

Thresholds:

* ``max_escape = e`` — the highest threshold that passes at most ``floor(e * n_defects)``
  validation defects (the highest threshold = the least overkill at that escape rate),
* ``max_overkill = o`` — the lowest threshold that rejects at most ``floor(o * n_good)``
  validation good parts (the lowest threshold = the fewest escapes at that overkill rate).

Reject when P(defect) >= threshold (ties reject, as ``inspection.decisions`` does).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from inspection.errors import TrainingError
from inspection.metrics import escape_overkill

RULE = "a target rate r on n validation parts needs n >= ceil(1/r): one part must move the rate by at most r"


def needed(target: float) -> int:
    """Parts needed in validation to resolve ``target``: ceil(1 / target)."""
    return int(math.ceil(1.0 / target - 1e-9))


def check_supported(target: dict[str, float], *, n_val_defects: int, n_val_good: int) -> None:
    """Refuse a target the validation split cannot support.

    Raises:
        TrainingError: too few defective (for max_escape) or good (for max_overkill) images in
            validation; the message names the target, the count and what is allowed.
    """
    (kind, rate), = target.items()
    n = n_val_defects if kind == "max_escape" else n_val_good
    what = "defective" if kind == "max_escape" else "good"
    flag = "--" + kind.replace("_", "-")
    need = needed(rate)
    if n < need:
        smallest = 1.0 / n if n else None
        allowed = f"{flag} >= {math.ceil(smallest * 1000) / 1000:g}" if smallest else "no target at all"
        raise TrainingError(
            f"{flag} {rate:g} needs at least {need} {what} images in the validation split ({RULE}); "
            f"validation has {n}. Allowed with this split: {allowed}; or raise --val-fraction / add {what} images"
        )


def calibrate(scores: np.ndarray, is_defect: np.ndarray, target: dict[str, float], *, allow_unsupported: bool = False) -> tuple[float, dict[str, Any]]:
    """Threshold on P(defect) meeting ``target`` on validation, and the calibration evidence.

    Raises:
        TrainingError: the validation split cannot support the target (see ``check_supported``)
            and ``allow_unsupported`` is False; or validation has no defects / no good parts.
    """
    s = np.asarray(scores, dtype=np.float64)
    d = np.asarray(is_defect, dtype=bool)
    n_def, n_good = int(d.sum()), int((~d).sum())
    unsupported = ""
    try:
        check_supported(target, n_val_defects=n_def, n_val_good=n_good)
    except TrainingError as exc:
        if not allow_unsupported or n_def == 0 or n_good == 0:
            raise
        unsupported = str(exc)
    (kind, rate), = target.items()
    if kind == "max_escape":
        defect_scores = np.sort(s[d])
        k = int(math.floor(rate * n_def + 1e-9))
        threshold = float(defect_scores[k]) if k < n_def else 1.0
    else:
        good_scores = np.sort(s[~d])[::-1]
        k = int(math.floor(rate * n_good + 1e-9))
        # reject when s >= t: the lowest t above the (k+1)-th highest good score.
        threshold = float(np.nextafter(good_scores[k], np.inf)) if k < n_good else 0.0
    threshold = min(max(threshold, 0.0), 1.0)
    rates = escape_overkill(d, s >= threshold)
    evidence = {
        "supported": not unsupported,
        **({"unsupported_reason": unsupported} if unsupported else {}),
        "rule": RULE,
        "split": "val",
        "n_defects": n_def,
        "n_good": n_good,
        "needed": needed(rate),
        "val_escape": rates["escape"].as_dict(),
        "val_overkill": rates["overkill"].as_dict(),
    }
    return threshold, evidence
