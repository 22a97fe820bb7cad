"""Has a window of values drifted from a reference distribution? PSI and the KS test.

* **PSI** (population stability index) over the reference's deciles: sum of
  ``(o - e) * ln(o / e)`` across the bins, ``e`` the reference's share of a bin, ``o`` the
  window's. The usual reading: < 0.1 stable, 0.1-0.25 a moderate shift, > 0.25 a major one.
* **KS**: the largest distance between the window's empirical CDF and the reference's, with
  the asymptotic two-sample p-value (the reference's sample size counts: a reference of 300
  frames is less certain than one of 30,000).

A window is in ``alarm`` only when both agree (PSI >= ``psi_alarm`` and KS p < ``ks_p_alarm``):
PSI alone is noisy on small windows (its null mean is about bins/n), KS alone flags shifts too
small to matter on large ones. Defaults and their false-alarm rates are in docs/monitoring.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from inspection.monitoring.reference import QUANTILES, Distribution

DriftState = Literal["ok", "warning", "alarm"]
_PROBS = np.linspace(0.0, 1.0, QUANTILES)
#: Shares below this are floored (an empty bin would make PSI infinite).
_FLOOR = 1e-4


@dataclass(frozen=True, slots=True)
class DriftThresholds:
    psi_warning: float = 0.1
    psi_alarm: float = 0.25
    ks_p_warning: float = 0.01
    ks_p_alarm: float = 0.001


@dataclass(frozen=True, slots=True)
class DriftResult:
    psi: float
    ks_d: float
    ks_p: float
    n: int
    state: DriftState

    def as_dict(self) -> dict[str, float | int | str]:
        return {"psi": round(self.psi, 4), "ks_d": round(self.ks_d, 4), "ks_p": float(f"{self.ks_p:.3g}"),
                "n": self.n, "state": self.state}


def reference_cdf(ref: Distribution, x: np.ndarray, *, below: bool = False) -> np.ndarray:
    """P(X <= x) under the reference, linear between its quantiles (right-continuous at ties);
    ``below``: P(X < x), the value just before a tie's jump."""
    q = ref.array()
    x = np.asarray(x, dtype=np.float64)
    idx = np.searchsorted(q, x, side="left" if below else "right")
    inner = np.clip(idx, 1, QUANTILES - 1)
    lo, hi = q[inner - 1], q[inner]
    width = np.where(hi > lo, hi - lo, 1.0)
    p = _PROBS[inner - 1] + np.clip((x - lo) / width, 0.0, 1.0) * (1.0 / (QUANTILES - 1))
    return np.where(idx == 0, 0.0, np.where(idx >= QUANTILES, 1.0, p))


def psi(ref: Distribution, sample: np.ndarray, *, bins: int = 10) -> float:
    """Population stability index of ``sample`` against ``ref`` over the reference's ``bins``-iles.

    Raises:
        ValueError: the sample is empty.
    """
    sample = np.asarray(sample, dtype=np.float64)
    if sample.size == 0:
        raise ValueError("PSI of an empty sample is undefined")
    edges = np.unique(np.asarray([ref.quantile(i / bins) for i in range(1, bins)]))
    cdf = np.concatenate(([0.0], reference_cdf(ref, edges), [1.0]))
    expected = np.maximum(np.diff(cdf), _FLOOR)
    observed = np.bincount(np.searchsorted(edges, sample, side="left"), minlength=len(edges) + 1) / sample.size
    observed = np.maximum(observed, _FLOOR)
    return float(np.sum((observed - expected) * np.log(observed / expected)))


def kolmogorov_p(d: float, n_effective: float) -> float:
    """Asymptotic p-value of a KS distance ``d`` at effective sample size ``n_effective``
    (Numerical Recipes' series with Stephens' small-sample correction)."""
    if d <= 0.0:
        return 1.0
    root = math.sqrt(n_effective)
    lam = (root + 0.12 + 0.11 / root) * d
    if lam < 0.2:
        return 1.0
    total, sign = 0.0, 1.0
    for k in range(1, 101):
        term = sign * math.exp(-2.0 * k * k * lam * lam)
        total += term
        if abs(term) < 1e-10:
            break
        sign = -sign
    return float(min(1.0, max(0.0, 2.0 * total)))


def ks(ref: Distribution, sample: np.ndarray) -> tuple[float, float]:
    """(distance, p-value) of the two-sample KS test of ``sample`` against ``ref``.

    Raises:
        ValueError: the sample is empty.
    """
    x = np.sort(np.asarray(sample, dtype=np.float64))
    n = x.size
    if n == 0:
        raise ValueError("KS test of an empty sample is undefined")
    # Both sides of every step, at each distinct value: frame statistics repeat (``saturated`` is 0
    # on most frames) and the reference jumps there too. Comparing each copy of a repeated value
    # with the reference's whole jump read a window drawn like the reference as d = 0.7.
    u = np.unique(x)
    at = np.abs(np.searchsorted(x, u, side="right") / n - reference_cdf(ref, u))
    before = np.abs(np.searchsorted(x, u, side="left") / n - reference_cdf(ref, u, below=True))
    d = float(max(at.max(), before.max()))
    return d, kolmogorov_p(d, n * ref.n / (n + ref.n))


def compare(ref: Distribution, sample: np.ndarray, thresholds: DriftThresholds | None = None) -> DriftResult:
    """PSI and KS of ``sample`` against ``ref``, and the state they agree on.

    Raises:
        ValueError: the sample is empty.
    """
    t = thresholds or DriftThresholds()
    value = psi(ref, sample)
    d, p = ks(ref, sample)
    state: DriftState = "ok"
    if value >= t.psi_alarm and p < t.ks_p_alarm:
        state = "alarm"
    elif value >= t.psi_warning and p < t.ks_p_warning:
        state = "warning"
    return DriftResult(psi=value, ks_d=d, ks_p=p, n=int(np.asarray(sample).size), state=state)
