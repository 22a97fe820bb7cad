"""The reference a live line is compared with, stored in the card (``ModelCard.monitoring``).

At export, training computes it from the validation split (``inspection.monitoring.build``):
the distribution of each frame statistic and of P(defect), as quantiles, plus the validation
reject rate at the operating point (the p-chart's first centre line). Serving also builds one
from a baseline window after a promotion (``Distribution.from_sample``), for models whose card
has none and for the scores (see docs/monitoring.md).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Quantiles kept per distribution: 0 %, 1 %, ..., 100 %.
QUANTILES = 101
_PROBS = np.linspace(0.0, 1.0, QUANTILES)


class Distribution(BaseModel):
    """A distribution summarised by its 101 quantiles and the sample size they came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(ge=1)
    quantiles: list[float] = Field(min_length=QUANTILES, max_length=QUANTILES)

    @model_validator(mode="after")
    def _sorted(self) -> Distribution:
        q = self.quantiles
        if any(not np.isfinite(v) for v in q) or any(b < a for a, b in pairwise(q)):
            raise ValueError("quantiles must be finite and non-decreasing")
        return self

    @classmethod
    def from_sample(cls, values: np.ndarray) -> Distribution:
        """The quantiles of a non-empty sample.

        Raises:
            ValueError: the sample is empty or holds NaN/inf.
        """
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.size == 0 or not np.all(np.isfinite(values)):
            raise ValueError(f"a reference needs a non-empty finite sample, got {values.size} value(s)")
        return cls(n=int(values.size), quantiles=[float(v) for v in np.quantile(values, _PROBS)])

    def array(self) -> np.ndarray:
        return np.asarray(self.quantiles, dtype=np.float64)

    def quantile(self, p: float) -> float:
        """The ``p`` quantile (0..1), interpolated between the stored ones."""
        return float(np.interp(p, _PROBS, self.array()))


class MonitoringReference(BaseModel):
    """Frame statistics and scores of the validation split, for drift and the frame-quality gate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["validation", "baseline"] = "validation"
    #: Frame statistic name (``framestats.STAT_NAMES``) -> its distribution.
    stats: dict[str, Distribution]
    #: P(defect) of the same frames (None for a model without a good class).
    score: Distribution | None = None
    #: Fraction of those frames the reject rule rejects at the card's threshold.
    reject_rate: float | None = Field(default=None, ge=0.0, le=1.0)
