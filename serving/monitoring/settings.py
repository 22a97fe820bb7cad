"""A station's ``monitoring:`` section (inside ``stations.<name>`` of the serving settings).

Example::

    monitoring:
      gate: reject            # off | warn | reject (frames far outside the card's reference)
      drift_window: 200       # frames per drift window, evaluated every drift_step frames
      subgroup_parts: 250     # parts per p-chart point
      failsafe_rate_limit: 0.05
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inspection.monitoring.drift import DriftThresholds
from inspection.monitoring.station import MonitorConfig


class MonitoringSettings(BaseModel):
    """Defaults and what they cost in false alarms: docs/monitoring.md."""

    model_config = ConfigDict(extra="forbid")

    #: False: the decision path skips the watch entirely (no statistics, no gate, no chart, no
    #: alarms); the page says so. For measuring what the watch costs (bench/serve_latency.py).
    enabled: bool = True
    #: Frame-quality gate: ``reject`` = fail-safe reject (reason ``frame_quality``), ``warn`` = score
    #: it but note it in the record and the metrics, ``off``. Needs a reference in the model's card.
    gate: Literal["off", "warn", "reject"] = "reject"
    #: How far outside the reference's 0.5-99.5 % range a statistic may be, in inter-quartile ranges.
    gate_iqr_factor: float = Field(default=3.0, gt=0, le=100)
    drift_window: int = Field(default=200, ge=20, le=100_000)
    drift_step: int = Field(default=50, ge=1, le=100_000)
    psi_warning: float = Field(default=0.1, gt=0, le=10)
    psi_alarm: float = Field(default=0.25, gt=0, le=10)
    ks_p_warning: float = Field(default=0.01, gt=0, lt=1)
    ks_p_alarm: float = Field(default=0.001, gt=0, lt=1)
    #: What the scores are compared with: a baseline captured after promotion (the line's defect
    #: prevalence is not the validation split's), or the card's validation scores.
    score_reference: Literal["baseline", "card"] = "baseline"
    baseline_frames: int = Field(default=1000, ge=20, le=1_000_000)
    baseline_parts: int = Field(default=1000, ge=20, le=10_000_000)
    subgroup_parts: int = Field(default=250, ge=10, le=1000)
    run_length: int = Field(default=8, ge=2, le=50)
    failsafe_window: int = Field(default=200, ge=10, le=100_000)
    failsafe_rate_limit: float = Field(default=0.05, gt=0, lt=1)
    #: The PLC link is down when a result has waited this long for its acknowledgement.
    plc_down_s: float = Field(default=5.0, gt=0, le=3600)
    #: The page's "last N minutes" counts.
    recent_minutes: int = Field(default=5, ge=1, le=240)
    #: Shift starts (local time, HH:MM); the page's shift counts restart at each.
    shift_starts: list[str] = Field(default_factory=lambda: ["06:00", "14:00", "22:00"])

    @model_validator(mode="after")
    def _consistent(self) -> MonitoringSettings:
        if self.psi_warning > self.psi_alarm:
            raise ValueError(f"psi_warning {self.psi_warning} must not exceed psi_alarm {self.psi_alarm}")
        if self.ks_p_alarm > self.ks_p_warning:
            raise ValueError(f"ks_p_alarm {self.ks_p_alarm} must not exceed ks_p_warning {self.ks_p_warning}")
        bad = [s for s in self.shift_starts if not _is_hhmm(s)]
        if bad:
            raise ValueError(f"shift_starts {bad} are invalid: use HH:MM (00:00..23:59)")
        return self

    def to_config(self) -> MonitorConfig:
        return MonitorConfig(
            gate=self.gate, gate_iqr_factor=self.gate_iqr_factor, drift_window=self.drift_window,
            drift_step=self.drift_step, score_reference=self.score_reference,
            drift=DriftThresholds(self.psi_warning, self.psi_alarm, self.ks_p_warning, self.ks_p_alarm),
            baseline_frames=self.baseline_frames, baseline_parts=self.baseline_parts,
            subgroup_parts=self.subgroup_parts, run_length=self.run_length, failsafe_window=self.failsafe_window,
            failsafe_rate_limit=self.failsafe_rate_limit,
        )


def _is_hhmm(value: str) -> bool:
    hh, sep, mm = value.partition(":")
    return bool(sep) and hh.isdigit() and mm.isdigit() and len(mm) == 2 and 0 <= int(hh) < 24 and 0 <= int(mm) < 60
