"""The p-chart of the reject rate: 3σ control limits and the run rule.

Parts are taken in subgroups of ``n``; each full subgroup is one point, its reject fraction.
With centre ``p0`` (from a reference period) the limits are ``p0 ± 3·sqrt(p0(1-p0)/n)`` (the
lower one clipped at 0). A point signals when it is beyond a limit, or when it completes a run
of ``run_length`` (8) points in a row above the centre line (Western Electric rule 4 / Nelson
rule 2, one-sided: a higher reject rate is the process getting worse).

A reference period with no rejects still gives limits: its rate is estimated as
``(rejects + 0.5) / (parts + 1)`` (``reference_rate``), never 0, so one bad subgroup can
signal and the run rule stays defined.

``average_run_length`` gives the chart's average number of points to a signal at a true rate
``p`` (a Markov chain over the run length), which is how docs/monitoring.md states the false
alarm rate and the detection speed of the defaults.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

Signal = Literal["above_ucl", "below_lcl", "run_above_centre"]


def reference_rate(rejects: int, parts: int) -> float:
    """The reject rate of a reference period, never 0 or 1 (so limits are always defined).

    Raises:
        ValueError: negative counts, or more rejects than parts.
    """
    if parts < 0 or rejects < 0 or rejects > parts:
        raise ValueError(f"a reference period needs 0 <= rejects <= parts, got {rejects} of {parts}")
    return (rejects + 0.5) / (parts + 1)


@dataclass(frozen=True, slots=True)
class Limits:
    centre: float
    ucl: float
    lcl: float
    n: int


def limits(centre: float, n: int, *, sigmas: float = 3.0) -> Limits:
    """3σ limits of a p-chart with subgroups of ``n``.

    Raises:
        ValueError: ``centre`` outside (0, 1) or ``n`` < 1.
    """
    if not 0.0 < centre < 1.0 or n < 1:
        raise ValueError(f"p-chart needs 0 < centre < 1 and subgroup n >= 1, got centre={centre}, n={n}")
    sigma = math.sqrt(centre * (1.0 - centre) / n)
    return Limits(centre=centre, ucl=min(1.0, centre + sigmas * sigma), lcl=max(0.0, centre - sigmas * sigma), n=n)


@dataclass(frozen=True, slots=True)
class ChartPoint:
    index: int
    rejects: int
    n: int
    rate: float
    centre: float
    ucl: float
    lcl: float
    run: int               # points in a row above the centre line, this one included
    signal: Signal | None

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "rejects": self.rejects, "n": self.n, "rate": round(self.rate, 5),
                "centre": round(self.centre, 5), "ucl": round(self.ucl, 5), "lcl": round(self.lcl, 5),
                "run": self.run, "signal": self.signal}


class PChart:
    """An incremental p-chart: ``add`` one part at a time (O(1)); a point every ``n`` parts."""

    def __init__(self, centre: float, n: int, *, run_length: int = 8, keep: int = 120) -> None:
        if run_length < 2:
            raise ValueError(f"run_length must be >= 2, got {run_length}")
        self.limits = limits(centre, n)
        self.run_length = run_length
        self.points: deque[ChartPoint] = deque(maxlen=keep)
        self._parts = 0
        self._rejects = 0
        self._run = 0
        self._index = 0

    @property
    def pending(self) -> tuple[int, int]:
        """(rejects, parts) of the subgroup being filled."""
        return self._rejects, self._parts

    def recentre(self, centre: float) -> None:
        """New centre line (a baseline replaces the validation rate); the run starts over."""
        self.limits = limits(centre, self.limits.n)
        self._run = 0

    def add(self, rejected: bool) -> ChartPoint | None:
        """Count one part; returns the point when it completes a subgroup."""
        self._parts += 1
        self._rejects += bool(rejected)
        if self._parts < self.limits.n:
            return None
        lim = self.limits
        rate = self._rejects / self._parts
        self._run = self._run + 1 if rate > lim.centre else 0
        signal: Signal | None = None
        if rate > lim.ucl:
            signal = "above_ucl"
        elif rate < lim.lcl:
            signal = "below_lcl"
        elif self._run >= self.run_length:
            signal = "run_above_centre"
        self._index += 1
        point = ChartPoint(self._index, self._rejects, self._parts, rate, lim.centre, lim.ucl, lim.lcl, self._run,
                           signal)
        self.points.append(point)
        self._parts = self._rejects = 0
        return point


def _point_probabilities(p: float, lim: Limits) -> tuple[float, float]:
    """(P(signal beyond a limit), P(above centre but within limits)) of one point at true rate ``p``."""
    from math import comb

    n = lim.n
    k = np.arange(n + 1)
    pmf = np.array([comb(n, int(i)) for i in k], dtype=np.float64) * p ** k * (1 - p) ** (n - k)
    rate = k / n
    beyond = float(pmf[(rate > lim.ucl) | (rate < lim.lcl)].sum())
    above = float(pmf[(rate > lim.centre) & (rate <= lim.ucl) & (rate >= lim.lcl)].sum())
    return beyond, above


def average_run_length(p: float, lim: Limits, *, run_length: int = 8) -> float:
    """Average number of points until the first signal when the true reject rate is ``p``."""
    beyond, above = _point_probabilities(p, lim)
    within = 1.0 - beyond - above
    q = np.zeros((run_length, run_length))
    for i in range(run_length):
        q[i, 0] += within
        if i + 1 < run_length:
            q[i, i + 1] += above
    return float(np.linalg.solve(np.eye(run_length) - q, np.ones(run_length))[0])


def detection_probability(p: float, lim: Limits, points: int, *, run_length: int = 8) -> float:
    """Probability of a signal within ``points`` points at true rate ``p`` (starting with no run)."""
    beyond, above = _point_probabilities(p, lim)
    within = 1.0 - beyond - above
    state = np.zeros(run_length + 1)  # run 0..run_length-1, then "signalled"
    state[0] = 1.0
    for _ in range(points):
        nxt = np.zeros_like(state)
        nxt[-1] = state[-1] + state[:-1].sum() * beyond
        nxt[0] += state[:-1].sum() * within
        for i in range(run_length):
            nxt[i + 1 if i + 1 < run_length else -1] += state[i] * above
        state = nxt
    return float(state[-1])
