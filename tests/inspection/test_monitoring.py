"""Monitoring statistics on generated streams: PSI/KS, the p-chart, the gate, and alarm latency.

Targets (issue 16): the doubled defect rate (5 % -> 10 %) is flagged within 500 parts, a 15 %
brightness drift within 200 frames, and nothing fires on 10,000 stable frames. The frame at
which each alarm fired is printed (``-s``) and quoted in docs/monitoring.md.
"""

from __future__ import annotations

import numpy as np
import pytest

from inspection.card import ModelCard
from inspection.monitoring.drift import compare, kolmogorov_p, ks, psi
from inspection.monitoring.framestats import frame_stats
from inspection.monitoring.gate import QualityGate
from inspection.monitoring.reference import Distribution, MonitoringReference
from inspection.monitoring.spc import PChart, average_run_length, detection_probability, limits, reference_rate
from inspection.monitoring.station import MonitorConfig, StationMonitor, raised
from tests.helpers import streams


@pytest.fixture(scope="module")
def ref() -> MonitoringReference:
    reference = streams.reference()
    assert reference is not None
    return reference


def run_stream(monitor: StationMonitor, n: int, *, seed: int, gain=lambda i: 1.0, blur=lambda i: 0.0,
               defect_rate=lambda i: 0.05) -> list:  # type: ignore[no-untyped-def]
    """Feed ``n`` frames (one part each) through ``monitor`` as serving does; every alarm change, in order."""
    rng = np.random.default_rng(seed)
    changes = []
    gate_rejects = 0
    for i in range(n):
        stats, why = monitor.check_frame(streams.frame(rng, gain=gain(i), blur=blur(i)))
        s, _ = streams.score(rng, defect_rate(i))
        if why is not None:
            gate_rejects += 1
            monitor.observe_failsafe()
            monitor.observe_part(True, failsafe=True)
        else:
            monitor.observe_frame(stats, s)
            monitor.observe_part(s >= 0.5)
        if (i + 1) % monitor.config.drift_step == 0:
            changes += monitor.evaluate()
    run_stream.gate_rejects = gate_rejects  # type: ignore[attr-defined]
    return changes


def test_stable_stream_of_10000_frames_raises_no_alarm(ref: MonitoringReference) -> None:
    monitor = StationMonitor("s1", MonitorConfig(), reference=ref)
    changes = run_stream(monitor, 10_000, seed=11)
    assert raised(changes) == []
    assert run_stream.gate_rejects == 0  # type: ignore[attr-defined]
    assert monitor.baseline is not None and monitor.chart is not None
    assert len(monitor.chart.points) == 10_000 // 250
    assert all(r.state == "ok" for r in monitor.drift.values()), monitor.drift_summary()


def test_lamp_dimming_15_percent_raises_brightness_drift_within_200_frames(ref: MonitoringReference) -> None:
    start = 1500  # the lamp dims linearly to 85 % over 100 frames, then stays there
    monitor = StationMonitor("s1", MonitorConfig(), reference=ref)
    changes = run_stream(monitor, start + 400, seed=12, gain=lambda i: 1.0 - 0.15 * min(1.0, max(0, i - start) / 100))
    up = raised(changes)
    assert up, "no alarm"
    assert {c.alarm for c in up} == {"drift"}
    first = up[0]
    assert "brightness" in first.detail["stats"]
    print(f"\nlamp dimming: drift alarm {first.frame - start} frames after the lamp began to dim")
    assert first.frame - start <= 200


def test_focus_loss_raises_sharpness_drift(ref: MonitoringReference) -> None:
    start = 1500  # the lens goes out of focus (Gaussian blur sigma 0 -> 0.5: sharpness halves) over 100 frames
    monitor = StationMonitor("s1", MonitorConfig(), reference=ref)
    changes = run_stream(monitor, start + 400, seed=13, blur=lambda i: 0.5 * min(1.0, max(0, i - start) / 100))
    up = raised(changes)
    assert up and {c.alarm for c in up} == {"drift"}
    assert "sharpness" in up[0].detail["stats"]
    print(f"\nfocus loss: drift alarm {up[0].frame - start} frames after the focus began to go")
    assert up[0].frame - start <= 200


def test_doubled_defect_rate_is_flagged_within_500_parts(ref: MonitoringReference) -> None:
    start = 2000  # the defect rate goes from 5 % to 10 %
    monitor = StationMonitor("s1", MonitorConfig(), reference=ref)
    changes = run_stream(monitor, start + 1000, seed=14, defect_rate=lambda i: 0.05 if i < start else 0.10)
    up = raised(changes)
    assert up and {c.alarm for c in up} <= {"control_limit", "run_rule"}
    print(f"\ndefect rate x2: {up[0].alarm} alarm {up[0].part - start} parts after the change")
    assert up[0].part - start <= 500
    assert up[0].detail["rate"] > up[0].detail["centre"]


def test_default_chart_false_alarm_and_detection_rates_are_as_documented() -> None:
    lim = limits(0.05, 250)
    assert average_run_length(0.05, lim) * 250 > 40_000   # ~47,000 parts between false alarms
    assert detection_probability(0.10, lim, 2) > 0.85         # doubling flagged within 2 points
    assert average_run_length(0.10, lim) * 250 < 400


def test_zero_reject_reference_still_has_limits() -> None:
    rate = reference_rate(0, 1000)
    assert 0 < rate < 0.001
    chart = PChart(rate, 250)
    assert chart.limits.ucl > rate > 0 and chart.limits.lcl == 0.0
    points = [chart.add(i in (3, 9)) for i in range(250)]  # 2 in 250 (0.8 %) is beyond the UCL (0.47 %)
    assert points[-1] is not None and points[-1].signal == "above_ucl"
    with pytest.raises(ValueError, match="0 <= rejects <= parts"):
        reference_rate(5, 3)


def test_run_rule_fires_on_eight_points_above_centre() -> None:
    chart = PChart(0.05, 100)
    signals = []
    for _ in range(8):
        for i in range(100):
            point = chart.add(i < 7)  # 7 % each: above the centre, below the UCL (11.5 %)
        assert point is not None
        signals.append(point.signal)
    assert signals == [None] * 7 + ["run_above_centre"]


def test_psi_and_ks_separate_same_from_shifted() -> None:
    rng = np.random.default_rng(0)
    dist = Distribution.from_sample(rng.normal(100, 10, 5000))
    same, shifted = rng.normal(100, 10, 200), rng.normal(110, 10, 200)
    assert psi(dist, same) < 0.1 and ks(dist, same)[1] > 0.01
    assert psi(dist, shifted) > 0.25 and ks(dist, shifted)[1] < 1e-6
    assert compare(dist, same).state == "ok" and compare(dist, shifted).state == "alarm"
    assert kolmogorov_p(0.0, 100) == 1.0
    with pytest.raises(ValueError, match="empty"):
        psi(dist, np.array([]))


def test_ks_reads_a_statistic_that_repeats_as_its_raw_two_sample_test_does() -> None:
    # ``saturated`` is exactly 0 on most frames: 70% zeros here. A window drawn like the reference
    # read d = 0.7 (p ~ 1e-196), so the "PSI and KS must agree" guard rested on PSI alone.
    rng = np.random.default_rng(1)

    def draw(n: int, nonzero: float) -> np.ndarray:
        return np.where(rng.random(n) < nonzero, rng.uniform(0, 0.02, n), 0.0)

    dist = Distribution.from_sample(draw(5000, 0.3))
    d, p = ks(dist, draw(500, 0.3))
    assert d < 0.08 and p > 0.05
    d, p = ks(dist, draw(500, 0.6))  # twice as many non-zero: the jump at 0 moves by 0.3
    assert 0.2 < d < 0.4 and p < 1e-6
    constant = Distribution.from_sample(np.full(1000, 3.0))
    assert ks(constant, np.full(200, 3.0)) == (0.0, 1.0)


def test_gate_rejects_black_overexposed_blurred_and_wrong_camera_frames(ref: MonitoringReference) -> None:
    gate = QualityGate(ref)
    rng = np.random.default_rng(3)
    assert gate.check(frame_stats(streams.frame(rng))) is None
    black = np.zeros((1, 64, 64), np.uint8)
    white = np.full((1, 64, 64), 255, np.uint8)
    blurred = streams.frame(rng, blur=1.0)
    flat_grey = np.full((1, 64, 64), 150, np.uint8)  # another camera looking at a blank wall
    assert "brightness" in (gate.check(frame_stats(black)) or "")
    assert gate.check(frame_stats(white)) is not None
    assert "sharpness" in (gate.check(frame_stats(blurred)) or "")
    assert gate.check(frame_stats(flat_grey)) is not None


def test_card_without_monitoring_still_validates_and_with_it_round_trips(ref: MonitoringReference, tmp_path) -> None:
    from tests.helpers.tiny_model import make_model_version

    version = make_model_version(tmp_path / "models")
    card = version.card
    assert card.monitoring is None
    raw = card.model_dump(mode="json")
    raw["monitoring"] = ref.model_dump(mode="json")
    again = ModelCard.model_validate(raw)
    assert again.monitoring == ref
    raw["monitoring"]["stats"]["brightness"]["quantiles"][5] = -1e9  # not sorted
    with pytest.raises(ValueError, match="non-decreasing"):
        ModelCard.model_validate(raw)


def test_station_without_reference_uses_baseline_and_says_why() -> None:
    monitor = StationMonitor("s1", MonitorConfig(baseline_frames=300, baseline_parts=300), reference=None)
    assert monitor.gate is None and "no reference" in monitor.gate_note
    assert monitor.chart is None
    changes = run_stream(monitor, 1000, seed=5)
    assert raised(changes) == []
    assert monitor.baseline is not None and monitor.chart is not None
    assert {v["reference"] for v in monitor.drift_summary().values()} == {"baseline"}
