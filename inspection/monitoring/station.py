"""One station's watch: frame statistics and scores in windows, the p-chart, and alarm states.

The per-frame calls (``check_frame``, ``observe_frame``, ``observe_failsafe``,
``observe_part``) are O(1): a few array writes and counters. The statistics (drift, the
fail-safe rate, the baseline's quantiles) are computed by ``evaluate``, which serving calls
off the decision path (a background task) and tests call every ``drift_step`` frames. Alarm
state changes come out of ``evaluate`` as ``AlarmChange`` (raised or cleared, with details).

References: the frame statistics are compared with the card's (validation frames) when the
card has one; the scores with a **baseline** window captured after the model became active
(the line's defect prevalence is not the validation split's) unless ``score_reference`` is
``card``; without a card reference everything uses the baseline. The p-chart's centre is the
validation reject rate until ``baseline_parts`` parts are seen, then the baseline's rate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from inspection.monitoring.drift import DriftResult, DriftThresholds, compare
from inspection.monitoring.framestats import STAT_NAMES, frame_stats
from inspection.monitoring.gate import QualityGate
from inspection.monitoring.reference import Distribution, MonitoringReference
from inspection.monitoring.spc import ChartPoint, PChart, reference_rate

AlarmKind = Literal["control_limit", "run_rule", "drift", "failsafe_rate", "plc_link"]
ALARM_KINDS: tuple[AlarmKind, ...] = ("control_limit", "run_rule", "drift", "failsafe_rate", "plc_link")
GateMode = Literal["off", "warn", "reject"]


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """Defaults are documented (and their false-alarm rates measured) in docs/monitoring.md."""

    gate: GateMode = "reject"
    gate_iqr_factor: float = 3.0
    drift_window: int = 200
    drift_step: int = 50
    drift: DriftThresholds = field(default_factory=DriftThresholds)
    score_reference: Literal["baseline", "card"] = "baseline"
    baseline_frames: int = 1000
    baseline_parts: int = 1000
    subgroup_parts: int = 250
    run_length: int = 8
    failsafe_window: int = 200
    failsafe_rate_limit: float = 0.05


@dataclass(frozen=True, slots=True)
class AlarmChange:
    station: str
    alarm: AlarmKind
    state: Literal["raised", "cleared"]
    detail: dict[str, Any]
    frame: int   # frames observed by the monitor when it changed (since the model became active)
    part: int    # parts observed


class StationMonitor:
    """See the module docstring. Not thread-safe: one event loop calls it."""

    def __init__(self, station: str, config: MonitorConfig, *, reference: MonitoringReference | None = None,
                 model_id: str | None = None) -> None:
        self.station = station
        self.config = config
        self.reference = reference
        self.model_id = model_id
        c = config
        self.gate: QualityGate | None = None
        self.gate_note = "the gate is off for this station (settings)" if c.gate == "off" else ""
        if c.gate != "off":
            if reference is None:
                self.gate_note = "no reference in the model's card: the frame-quality gate is inactive"
            else:
                self.gate = QualityGate(reference, iqr_factor=c.gate_iqr_factor)
        width = len(STAT_NAMES) + 1  # the statistics, then the score
        self._window = np.zeros((c.drift_window, width))
        self._baseline = np.zeros((c.baseline_frames, width))
        self._failsafe = np.zeros(c.failsafe_window, dtype=bool)
        self.frames = 0          # scored frames
        self.failsafe_frames = 0
        self.parts = 0
        self._views = 0          # scored + fail-safe, for the fail-safe ring
        self._since_eval = 0
        self.baseline: MonitoringReference | None = None
        self._baseline_parts = [0, 0]  # rejects, parts
        centre = reference.reject_rate if reference is not None and reference.reject_rate is not None else None
        self.chart: PChart | None = None
        self.chart_note = "waiting for the baseline's reject rate"
        if centre is not None:
            self.chart = PChart(min(max(centre, 1e-4), 1 - 1e-4), c.subgroup_parts, run_length=c.run_length)
            self.chart_note = "centre: the validation reject rate"
        self.drift: dict[str, DriftResult] = {}
        self.drift_note = "collecting the first window"
        self.active: dict[AlarmKind, dict[str, Any]] = {}
        self._changes: list[AlarmChange] = []
        self.last_failsafe_rate: float | None = None

    # -- the per-frame path ---------------------------------------------------------------------
    def check_frame(self, pixels: np.ndarray) -> tuple[tuple[float, float, float, float], str | None]:
        """The frame's statistics and, when the gate is active and the frame is out of range, why."""
        stats = frame_stats(pixels)
        return stats, (self.gate.check(stats) if self.gate is not None else None)

    def observe_frame(self, stats: tuple[float, ...], score: float) -> None:
        """A scored frame: its statistics and P(defect)."""
        c = self.config
        row = (*stats, score)
        self._window[self.frames % c.drift_window] = row
        if self.frames < c.baseline_frames:
            self._baseline[self.frames] = row
        self.frames += 1
        self._since_eval += 1
        self._failsafe[self._views % c.failsafe_window] = False
        self._views += 1

    def observe_failsafe(self) -> None:
        """A frame that was fail-safe rejected (not scored, or scored and overruled)."""
        self._failsafe[self._views % self.config.failsafe_window] = True
        self._views += 1
        self.failsafe_frames += 1

    def observe_part(self, rejected: bool, *, failsafe: bool = False) -> ChartPoint | None:
        """A part's decision. Fail-safe rejects stay off the p-chart (the fail-safe rate has its alarm)."""
        if failsafe:
            return None
        self.parts += 1
        c = self.config
        if self._baseline_parts[1] < c.baseline_parts:
            self._baseline_parts[0] += bool(rejected)
            self._baseline_parts[1] += 1
            if self._baseline_parts[1] == c.baseline_parts:
                centre = reference_rate(*self._baseline_parts)
                if self.chart is None:
                    self.chart = PChart(centre, c.subgroup_parts, run_length=c.run_length)
                else:
                    self.chart.recentre(centre)
                self.chart_note = f"centre: the baseline's reject rate ({c.baseline_parts} parts after promotion)"
        if self.chart is None:
            return None
        point = self.chart.add(rejected)
        if point is not None:
            self._chart_point(point)
        return point

    def _chart_point(self, point: ChartPoint) -> None:
        detail = point.as_dict()
        if point.signal in ("above_ucl", "below_lcl"):
            self._set("control_limit", detail)
        else:
            self._clear("control_limit", detail)
        if point.run >= self.config.run_length:
            self._set("run_rule", detail)
        else:
            self._clear("run_rule", detail)

    # -- off the hot path -------------------------------------------------------------------------
    def set_plc_link(self, up: bool, detail: dict[str, Any]) -> None:
        """The PLC link's state as serving sees it (raised while down)."""
        if up:
            self._clear("plc_link", detail)
        else:
            self._set("plc_link", detail)

    def evaluate(self) -> list[AlarmChange]:
        """Baseline, drift and fail-safe rate now; returns the alarm changes since the last call."""
        c = self.config
        if self.baseline is None and self.frames >= c.baseline_frames:
            self.baseline = self._reference_from(self._baseline)
        if self._since_eval >= c.drift_step and self.frames >= c.drift_window:
            self._since_eval = 0
            self._evaluate_drift()
        if self._views >= c.failsafe_window:
            rate = float(self._failsafe.mean())
            self.last_failsafe_rate = rate
            detail = {"rate": round(rate, 4), "limit": c.failsafe_rate_limit, "window": c.failsafe_window}
            if rate > c.failsafe_rate_limit:
                self._set("failsafe_rate", detail)
            else:
                self._clear("failsafe_rate", detail)
        changes, self._changes = self._changes, []
        return changes

    def _reference_from(self, rows: np.ndarray) -> MonitoringReference:
        return MonitoringReference(
            source="baseline",
            stats={n: Distribution.from_sample(rows[:, i]) for i, n in enumerate(STAT_NAMES)},
            score=Distribution.from_sample(rows[:, len(STAT_NAMES)]),
        )

    def references(self) -> dict[str, tuple[str, Distribution] | None]:
        """What each statistic (and ``score``) is compared with now: (source, distribution)."""
        out: dict[str, tuple[str, Distribution] | None] = {}
        card, base = self.reference, self.baseline
        for name in STAT_NAMES:
            if card is not None and name in card.stats:
                out[name] = ("card", card.stats[name])
            else:
                out[name] = ("baseline", base.stats[name]) if base is not None else None
        if self.config.score_reference == "card" and card is not None and card.score is not None:
            out["score"] = ("card", card.score)
        else:
            out["score"] = ("baseline", base.score) if base is not None and base.score is not None else None
        return out

    def _evaluate_drift(self) -> None:
        refs = self.references()
        columns = [*STAT_NAMES, "score"]
        results: dict[str, DriftResult] = {}
        for i, name in enumerate(columns):
            ref = refs.get(name)
            if ref is not None:
                results[name] = compare(ref[1], self._window[:, i], self.config.drift)
        self.drift = results
        if not results:
            self.drift_note = f"no reference yet: capturing the baseline ({self.frames}/{self.config.baseline_frames})"
            return
        waiting = [n for n in columns if n not in results]
        self.drift_note = f"waiting for the baseline: {', '.join(waiting)}" if waiting else ""
        alarming = {n: r.as_dict() for n, r in results.items() if r.state == "alarm"}
        if alarming:
            self._set("drift", {"stats": alarming})
        elif all(r.state == "ok" for r in results.values()):
            self._clear("drift", {"stats": {n: r.as_dict() for n, r in results.items()}})

    # -- alarm states -----------------------------------------------------------------------------
    def _set(self, kind: AlarmKind, detail: dict[str, Any]) -> None:
        if kind not in self.active:
            self._changes.append(AlarmChange(self.station, kind, "raised", detail, self.frames, self.parts))
        self.active[kind] = detail

    def _clear(self, kind: AlarmKind, detail: dict[str, Any]) -> None:
        if self.active.pop(kind, None) is not None:
            self._changes.append(AlarmChange(self.station, kind, "cleared", detail, self.frames, self.parts))

    def drift_summary(self) -> dict[str, Any]:
        """Per statistic: PSI, KS, state and the reference's source (for the page and metrics)."""
        refs = self.references()
        return {name: {**r.as_dict(), "reference": (refs.get(name) or ("none",))[0]} for name, r in self.drift.items()}


def raised(changes: Iterable[AlarmChange]) -> list[AlarmChange]:
    """The raises among ``changes`` (tests and reports)."""
    return [c for c in changes if c.state == "raised"]
