"""The frame-quality gate: is one frame far outside what the model was validated on?

A black frame, an overexposed one, a lens out of focus or a frame from the wrong camera would
still get a score — a meaningless one. The gate compares the frame's statistics
(``framestats``) with bounds taken from the reference: each statistic's 0.5 % .. 99.5 %
range, widened by ``iqr_factor`` times its inter-quartile range and at least by a fixed
margin. Contrast and sharpness are compared on a log scale (a lens out of focus divides the
variance of the Laplacian; it does not subtract from it). Serving turns a failed check into a
fail-safe reject with reason ``frame_quality`` (or only a warning; docs/monitoring.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from inspection.monitoring.framestats import STAT_NAMES
from inspection.monitoring.reference import Distribution, MonitoringReference

#: Per statistic: the scale it is compared on, and the least the range is widened by (on that scale).
_SCALES: dict[str, tuple[Callable[[float], float], float]] = {
    "brightness": (lambda v: v, 40.0),             # grey levels: a lamp dimmed by 15 % is drift, not this
    "contrast": (lambda v: math.log1p(v), math.log(2.0)),
    "sharpness": (lambda v: math.log1p(v), math.log(4.0)),
    "saturated": (lambda v: v, 0.05),             # fraction of pixels
}


@dataclass(frozen=True, slots=True)
class Bound:
    name: str
    low: float    # on the statistic's own scale (converted back for messages)
    high: float
    _lo_t: float
    _hi_t: float

    def check(self, value: float) -> str | None:
        transform = _SCALES[self.name][0]
        t = transform(value) if value > -1.0 else -math.inf
        if t < self._lo_t:
            return f"{self.name} {value:.4g} below the reference range {self.low:.4g}..{self.high:.4g}"
        if t > self._hi_t:
            return f"{self.name} {value:.4g} above the reference range {self.low:.4g}..{self.high:.4g}"
        return None


def _bound(name: str, dist: Distribution, iqr_factor: float) -> Bound:
    transform, least = _SCALES[name]
    lo, q1, q3, hi = (transform(dist.quantile(p)) for p in (0.005, 0.25, 0.75, 0.995))
    margin = max(iqr_factor * (q3 - q1), least)
    lo_t, hi_t = lo - margin, hi + margin
    inverse = (lambda t: math.expm1(t)) if name in ("contrast", "sharpness") else (lambda t: t)
    return Bound(name, max(0.0, inverse(lo_t)), inverse(hi_t), lo_t, hi_t)


class QualityGate:
    """Bounds for every statistic of ``framestats.STAT_NAMES`` from a reference."""

    def __init__(self, reference: MonitoringReference, *, iqr_factor: float = 3.0) -> None:
        missing = [n for n in STAT_NAMES if n not in reference.stats]
        if missing:
            raise ValueError(f"the reference lacks statistics {missing}; it needs {list(STAT_NAMES)}")
        self.bounds = tuple(_bound(n, reference.stats[n], iqr_factor) for n in STAT_NAMES)

    def check(self, stats: tuple[float, ...]) -> str | None:
        """Why the frame with these statistics is out of range (the first statistic that is), or None."""
        for bound, value in zip(self.bounds, stats, strict=True):
            why = bound.check(value)
            if why is not None:
                return why
        return None
