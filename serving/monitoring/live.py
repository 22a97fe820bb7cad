"""``LineMonitor``: what the decision path tells the line watch, and what the watch shows.

The decision path calls four O(1) hooks: ``check`` (a decoded frame: its statistics and, when the
station's gate rejects it, a ``FrameQualityError``), ``scored`` (the frame's P(defect) and the
answer's latency), ``failsafe`` (a fail-safe reject, by reason) and ``part`` (a part's decision).
Each station has one ``inspection.monitoring.station.StationMonitor`` per active model: a
promotion starts a new watch (new reference, new baseline, new chart), because the old model's
figures say nothing about the new one. The statistics and alarm evaluation run off the decision
path (``serving.monitoring.alarms``).

Counts for the page are kept here too: since the shift started and over the last
``recent_minutes`` (a ring of one-second buckets), latency percentiles over the last 1,024
answers, and the most recent rejects.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from inspection.errors import FrameQualityError
from inspection.monitoring.framestats import STAT_NAMES
from inspection.monitoring.station import AlarmChange, StationMonitor
from serving.model import LoadedModel
from serving.monitoring.settings import MonitoringSettings
from serving.settings import ServeSettings

#: Latency samples kept per station for the page's p50/p99.
LATENCY_SAMPLES = 1024
#: Recent rejects kept per station for the page's thumbnails.
RECENT_REJECTS = 12

_KINDS = ("frames", "parts", "pass", "reject", "failsafe")


@dataclass
class _Counts:
    """Counts since a moment (the shift's start, or a one-second bucket)."""

    counts: Counter[str] = field(default_factory=Counter)
    failsafe_by_reason: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {**{k: self.counts[k] for k in _KINDS}, "failsafe_by_reason": dict(self.failsafe_by_reason)}


def shift_start(now: datetime, starts: list[str]) -> datetime:
    """The most recent shift start (local time, ``HH:MM``) at or before ``now``."""
    candidates = []
    for start in starts:
        t = now.replace(hour=int(start[:2]), minute=int(start[3:]), second=0, microsecond=0)
        candidates.append(t if t <= now else t - timedelta(days=1))
    return max(candidates)


class StationLive:
    """One station's watch and page counters."""

    def __init__(self, station: str, settings: MonitoringSettings, model: LoadedModel | None) -> None:
        self.station = station
        self.settings = settings
        self.model_id = model.model_id if model is not None else None
        self.model_since = time.time()
        reference = model.card.monitoring if model is not None else None
        self.monitor = StationMonitor(station, settings.to_config(), reference=reference, model_id=self.model_id)
        self.reference_note = "" if reference is not None else (
            "the active model's card has no monitoring reference (exported before monitoring existed): frame "
            "drift and the frame-quality gate are off; the score drift and the chart use the baseline")
        self.shift = _Counts()
        self.shift_started = shift_start(datetime.now().astimezone(), settings.shift_starts)
        self._next_shift = self._following_shift()
        self._buckets: deque[tuple[int, _Counts]] = deque()
        self.latency_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.recent_rejects: deque[dict[str, Any]] = deque(maxlen=RECENT_REJECTS)
        self.started = time.monotonic()
        self.warned = 0  # frames the gate flagged in ``warn`` mode

    def _bucket(self) -> _Counts:
        now = int(time.monotonic())
        if not self._buckets or self._buckets[-1][0] != now:
            self._buckets.append((now, _Counts()))
            horizon = now - self.settings.recent_minutes * 60
            while self._buckets and self._buckets[0][0] <= horizon:
                self._buckets.popleft()
        return self._buckets[-1][1]

    def _following_shift(self) -> float:
        """Epoch seconds of the next shift start (the per-frame check is one comparison)."""
        now = datetime.now().astimezone()
        starts = [now.replace(hour=int(s[:2]), minute=int(s[3:]), second=0, microsecond=0)
                  for s in self.settings.shift_starts]
        return min(t if t > now else t + timedelta(days=1) for t in starts).timestamp()

    def count(self, *kinds: str, reason: str | None = None) -> None:
        if time.time() >= self._next_shift:
            self.shift_started = shift_start(datetime.now().astimezone(), self.settings.shift_starts)
            self.shift, self._next_shift = _Counts(), self._following_shift()
        for c in (self.shift, self._bucket()):
            for kind in kinds:
                c.counts[kind] += 1
            if reason is not None:
                c.failsafe_by_reason[reason] += 1

    def recent(self) -> _Counts:
        """Counts over the last ``recent_minutes``."""
        horizon = int(time.monotonic()) - self.settings.recent_minutes * 60
        total = _Counts()
        for second, c in self._buckets:
            if second > horizon:
                total.counts.update(c.counts)
                total.failsafe_by_reason.update(c.failsafe_by_reason)
        return total


class LineMonitor:
    """Every station's watch; one per app. Not thread-safe: the event loop calls it."""

    def __init__(self, settings: ServeSettings, *, active: Callable[[str], str | None] | None = None) -> None:
        self.settings = settings
        self.stations: dict[str, StationLive] = {}
        self._active = active  # station -> the active model's id (shown before the first frame)
        self._off = frozenset(n for n, s in settings.stations.items() if not s.monitoring.enabled)

    def _live(self, station: str, model: LoadedModel | None) -> StationLive:
        live = self.stations.get(station)
        model_id = model.model_id if model is not None else None
        if live is None or (model_id is not None and live.model_id != model_id):
            live = StationLive(station, self.settings.stations[station].monitoring, model)
            self.stations[station] = live
        return live

    def station(self, station: str) -> StationLive | None:
        return self.stations.get(station)

    # -- the decision path (O(1)) ---------------------------------------------------------------
    def check(self, station: str, model: LoadedModel, pixels: np.ndarray) -> tuple[float, ...]:
        """The frame's statistics; raises FrameQualityError when the station's gate rejects it."""
        if station in self._off:
            return ()
        live = self._live(station, model)
        stats, why = live.monitor.check_frame(pixels)
        if why is not None:
            if live.settings.gate == "reject":
                raise FrameQualityError(f"frame outside the model's reference: {why}")
            live.warned += 1
        return stats

    def scored(self, station: str, model: LoadedModel, stats: tuple[float, ...], score: float) -> None:
        if station in self._off:
            return
        live = self._live(station, model)
        live.monitor.observe_frame(stats, score)
        live.count("frames")

    def answered(self, station: str, answer: dict[str, Any], latency_ms: float) -> None:
        """An answered frame (after its record is durable): latency, and a reject for the page."""
        live = self.stations.get(station)
        if live is None:
            return
        live.latency_ms.append(latency_ms)
        if answer.get("decision") == "reject":
            live.recent_rejects.appendleft({k: answer.get(k) for k in (
                "inspection_id", "part_id", "camera", "defect_class", "score", "threshold", "model_version")}
                | {"time": time.time()})

    def failsafe(self, station: str, reason: str, model: LoadedModel | None) -> None:
        if station in self._off:
            return
        live = self._live(station, model)
        live.monitor.observe_failsafe()
        live.count("frames", "failsafe", reason=reason)

    def part(self, station: str, decision: str, *, failsafe: bool, missing_views: int = 0) -> None:
        """A part's decision; ``missing_views``: cameras whose frame never came by its deadline.

        A missing view is a fail-safe reject of a view that no frame stood for: counted and fed to
        the fail-safe rate like a failed frame. Why: with one camera of a station dead, every part
        was rejected at its deadline while the fail-safe count stayed 0 and no alarm rose.
        """
        if station in self._off:
            return
        live = self.stations.get(station)
        if live is None:
            if not missing_views:
                return
            live = self._live(station, None)  # no frame has come yet: the missing views are the news
        for _ in range(missing_views):
            live.monitor.observe_failsafe()
            live.count("failsafe", reason="missing_view")
        live.monitor.observe_part(decision == "reject", failsafe=failsafe)
        live.count("parts", "reject" if decision == "reject" else "pass")

    # -- off the decision path ------------------------------------------------------------------
    def evaluate(self) -> list[AlarmChange]:
        changes: list[AlarmChange] = []
        for live in self.stations.values():
            changes.extend(live.monitor.evaluate())
        return changes

    def snapshot(self, station: str, *, now: float | None = None) -> dict[str, Any]:
        """What ``/v1/line/{station}`` answers and the page shows."""
        live = self.stations.get(station)
        if station in self._off or live is None:
            why = ("monitoring is off for this station (settings: monitoring.enabled false)" if station in self._off
                   else "no frames yet since the server started")
            empty = _Counts().as_dict()
            return {"station": station, "model_version": self._active(station) if self._active else None,
                    "state": why, "shift": empty, "recent": empty, "alarms": {}, "chart": None, "drift": {},
                    "notes": [why]}
        m = live.monitor
        recent = live.recent()
        seconds = min(max(time.monotonic() - live.started, 1.0), live.settings.recent_minutes * 60)
        lat = np.asarray(live.latency_ms) if live.latency_ms else None
        chart = None
        if m.chart is not None:
            lim = m.chart.limits
            chart = {"centre": lim.centre, "ucl": lim.ucl, "lcl": lim.lcl, "subgroup_parts": lim.n,
                     "run_length": m.config.run_length, "pending": list(m.chart.pending),
                     "points": [p.as_dict() for p in m.chart.points], "note": m.chart_note}
        waiting = m.chart_note if chart is None else ""
        notes = [n for n in (live.reference_note, m.gate_note, waiting, m.drift_note) if n]
        return {
            "station": station,
            "model_version": live.model_id,
            "model_since": live.model_since,
            "gate": live.settings.gate,
            "gate_warned": live.warned,
            "shift_started": live.shift_started.isoformat(),
            "shift": live.shift.as_dict(),
            "recent_minutes": live.settings.recent_minutes,
            "recent": recent.as_dict(),
            "frames_per_s": round(recent.counts["frames"] / seconds, 3),
            "parts_per_s": round(recent.counts["parts"] / seconds, 3),
            "latency_ms": None if lat is None else {"p50": round(float(np.percentile(lat, 50)), 3),
                                                     "p99": round(float(np.percentile(lat, 99)), 3),
                                                     "samples": int(lat.size)},
            "alarms": dict(m.active),
            "chart": chart,
            "drift": m.drift_summary(),
            "drift_statistics": [*STAT_NAMES, "score"],
            "failsafe_rate": m.last_failsafe_rate,
            "recent_rejects": list(live.recent_rejects),
            "notes": notes,
        }
