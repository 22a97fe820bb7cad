"""The default recipe's rules: each choice follows what it says it adapts to, and is explained."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import time
from collections.abc import Iterator

import numpy as np
import pytest

from inspection.errors import ConfigError
from training import recipe as R
from training.config import load_config


def _stats(
    n_train: int = 1000,
    h: int = 300,
    w: int = 300,
    counts: dict[str, int] | None = None,
    orientation: str | None = None,
) -> R.DataStats:
    counts = counts or {"good": n_train // 2, "defect": n_train - n_train // 2}
    return R.stats_from([h] * 50, [w] * 50, counts, orientation)


def _resolve(stats: R.DataStats, **over: object) -> tuple:
    cfg = load_config(None, {"threads": 2, **over})
    return R.resolve(cfg, stats, cost_128=0.011, device="cpu")


def test_every_open_setting_is_filled_and_explained() -> None:
    cfg, choices = _resolve(_stats())
    assert cfg.epochs and cfg.batch_size and cfg.patience and cfg.min_epochs and cfg.balance and cfg.input_shape
    assert cfg.augment.hflip is not None and cfg.augment.vflip is not None and cfg.augment.rot90 is not None
    explained = {c.setting for c in choices}
    assert {"epochs", "batch_size", "patience", "min_epochs", "input_shape", "balance", "augment.rot90"} <= explained
    assert all(c.reason for c in choices)


@pytest.mark.parametrize(("given", "h", "w", "shape"), [
    (100, 300, 300, (96, 96)), (100, 200, 300, (96, 144)), (120, 300, 200, (192, 128)), (112, 300, 300, (112, 112)),
])
def test_an_image_size_off_the_networks_step_is_rounded_to_it_and_says_so(
        given: int, h: int, w: int, shape: tuple[int, int]) -> None:
    # 100 on square frames gave a 100x96 input: the long side, a multiple of 16, below the short one.
    cfg, choices = _resolve(_stats(h=h, w=w), image_size=given)
    assert tuple(cfg.input_shape) == shape
    reason = next(c.reason for c in choices if c.setting == "input_shape")
    rounded = f"image_size {given} given, rounded to {min(shape)} (the networks downsample by 16"
    assert (rounded in reason) == (given != min(shape))


def test_given_settings_are_kept() -> None:
    cfg, choices = _resolve(_stats(), epochs=7, image_size=96, balance="none")
    assert cfg.epochs == 7 and cfg.balance == "none" and min(cfg.input_shape) == 96
    assert "epochs" not in {c.setting for c in choices}


def test_small_datasets_get_more_epochs_large_ones_fewer() -> None:
    small, _ = _resolve(_stats(n_train=300))
    large, _ = _resolve(_stats(n_train=5000))
    assert small.epochs > large.epochs
    assert R.MIN_EPOCHS <= large.epochs and small.epochs <= R.MAX_EPOCHS


def test_a_cpu_takes_the_steps_rules_batches_sixteen_frames_at_a_time() -> None:
    stats = _stats(n_train=2000, h=1000, w=1000)
    cpu, choices = _resolve(stats)
    gpu, _ = R.resolve(load_config(None, {"threads": 2}), stats, cost_128=0.011, device="cuda")
    # the passes are the steps rule's (batches of 32 for 2,000 images), the CPU's steps half-size
    assert gpu.batch_size == 32 and cpu.batch_size == R.CPU_MAX_BATCH == 16
    assert cpu.epochs == math.ceil(R.TARGET_STEPS * 32 / 2000)
    reasons = {c.setting: c.reason for c in choices}
    assert "on a CPU 16 frames a step" in reasons["batch_size"] and "steps of 16" in reasons["epochs"]
    # a small split's batch is below the cap already; a batch given is the engineer's, on any device
    small, _ = _resolve(_stats(n_train=120, h=1000, w=1000), budget_minutes=1)
    assert small.batch_size == 8 and small.epochs == math.ceil(R.TARGET_STEPS * 8 / 120) < R.MAX_EPOCHS
    given, _ = _resolve(stats, batch_size=32)
    assert given.batch_size == 32 and given.epochs == cpu.epochs


def test_input_never_exceeds_the_frames_resolution() -> None:
    cfg, choices = _resolve(_stats(n_train=200, h=96, w=96))
    assert tuple(cfg.input_shape) == (96, 96)
    assert "own resolution" in next(c.reason for c in choices if c.setting == "input_shape")


def test_budget_left_by_small_frames_buys_passes() -> None:
    # 128 px frames cap the input below what the budget affords: the rest becomes epochs.
    steps_rule = math.ceil(R.TARGET_STEPS * 32 / 700)
    cfg, choices = _resolve(_stats(n_train=700, h=128, w=128))
    assert tuple(cfg.input_shape) == (128, 128)
    assert steps_rule < cfg.epochs <= R.MAX_EPOCHS
    # what the budget affords at 128 px: budget / (images x cost per image), bounded
    assert cfg.epochs == min(R.MAX_EPOCHS, math.floor(cfg.budget_minutes * 60 / (700 * 0.011)))
    epochs = [c for c in choices if c.setting == "epochs"]
    assert len(epochs) == 1 and "own resolution" in epochs[0].reason and str(steps_rule) in epochs[0].reason
    assert cfg.patience == max(10, cfg.epochs // 3) and cfg.min_epochs == cfg.epochs // 2
    # a smaller budget buys fewer passes; a budget-limited input gets the steps rule only
    fewer, _ = _resolve(_stats(n_train=700, h=128, w=128), budget_minutes=16)
    assert steps_rule < fewer.epochs < cfg.epochs
    big, _ = _resolve(_stats(n_train=700, h=1000, w=1000))
    assert big.epochs == steps_rule
    given, _ = _resolve(_stats(n_train=700, h=128, w=128), epochs=12)
    assert given.epochs == 12


def test_input_shrinks_with_the_compute_budget() -> None:
    big, _ = _resolve(_stats(n_train=2000, h=1000, w=1000), budget_minutes=60)
    small, choices = _resolve(_stats(n_train=2000, h=1000, w=1000), budget_minutes=3)
    assert min(small.input_shape) < min(big.input_shape)
    assert "budget" in next(c.reason for c in choices if c.setting == "input_shape")


def test_input_keeps_the_frames_aspect_ratio() -> None:
    tall, _ = _resolve(_stats(h=1250, w=500))
    wide, _ = _resolve(_stats(h=200, w=400))
    assert tall.input_shape[0] > tall.input_shape[1]
    assert wide.input_shape[1] == pytest.approx(2 * wide.input_shape[0], abs=R.SIDE_STEP)


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [
        ("free", (True, True, True)),
        ("flip", (True, True, False)),
        ("hflip", (True, False, False)),
        ("fixed", (False, False, False)),
        (None, R.ORIENTATIONS[R.DEFAULT_ORIENTATION]),
    ],
)
def test_flips_follow_the_manifest_orientation(orientation: str | None, expected: tuple) -> None:
    cfg, _ = _resolve(_stats(orientation=orientation))
    assert (cfg.augment.hflip, cfg.augment.vflip, cfg.augment.rot90) == expected


def test_no_rot90_for_a_non_square_input_even_when_orientation_is_free() -> None:
    cfg, choices = _resolve(_stats(h=200, w=400, orientation="free"))
    assert cfg.augment.rot90 is False
    assert "non-square" in next(c.reason for c in choices if c.setting == "augment.rot90")


def test_unknown_orientation_is_refused_with_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match="'sideways'.*allowed"):
        _resolve(_stats(orientation="sideways"))


def test_balance_follows_the_class_ratio() -> None:
    even, _ = _resolve(_stats(counts={"good": 500, "defect": 450}))
    skewed, _ = _resolve(_stats(counts={"good": 900, "defect": 100}))
    assert even.balance == "none" and skewed.balance == "sampler"


def test_available_threads_leaves_busy_cores_alone() -> None:
    assert R.available_threads(cores=2, busy=0.0) == 2
    assert R.available_threads(cores=2, busy=1.2) == 1
    assert R.available_threads(cores=2, busy=5.0) == 1
    assert R.available_threads(cores=16, busy=3.0) == 13


def test_busy_cores_sees_work_that_runs_now_not_the_load_averages_trail() -> None:
    idle = R.busy_cores(window_s=0.3)
    if idle is None:
        pytest.skip("no /proc/stat on this system (the load average is used instead)")
    assert 0.0 <= idle <= (os.cpu_count() or 1)
    # A process spinning on one core for the whole window counts as (about) one busy core.
    with _spinning():
        busy = R.busy_cores(window_s=0.5)
    assert busy is not None and busy >= 0.7


@contextlib.contextmanager
def _spinning(cpu: int | None = None) -> Iterator[None]:
    """Another process spinning on one core (on ``cpu`` where given) while the block runs."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    spinner = ctx.Process(target=_spin, args=(stop, cpu))
    spinner.start()
    try:
        time.sleep(1.0)  # the child's interpreter is up and spinning
        yield
    finally:
        stop.set()
        spinner.join(5)


def _spin(stop: object, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    while not stop.is_set():  # type: ignore[attr-defined]
        pass


@pytest.mark.parametrize(("orientation", "mirror"), [(None, True), ("free", True), ("hflip", True), ("fixed", False)])
def test_the_test_time_mirror_follows_the_orientation(orientation: str | None, mirror: bool) -> None:
    cfg, choices = _resolve(_stats(orientation=orientation))
    assert cfg.tta is mirror
    assert ("averages the frame and its mirror" if mirror else "no mirror allowed") in next(
        c.reason for c in choices if c.setting == "tta"
    )
    given, choices = _resolve(_stats(orientation=orientation), tta=False)
    assert given.tta is False and "tta" not in {c.setting for c in choices}


def test_anomaly_mode_exports_no_test_time_mirror_unless_asked() -> None:
    # The mirror measured no gain for anomaly models at twice the serving cost (docs/training.md).
    cfg, choices = _resolve(_stats(orientation="free"), mode="anomaly")
    assert cfg.tta is False and cfg.augment.hflip is True  # mirrored frames still train
    assert "anomaly mode: no test-time mirror" in next(c.reason for c in choices if c.setting == "tta")
    asked, _ = _resolve(_stats(orientation="free"), mode="anomaly", tta=True)
    assert asked.tta is True


def test_precision_follows_the_measured_speed_up() -> None:
    value, reason = R.choose_precision(fp32_s=0.004, bf16_s=0.002)
    assert value == "bf16" and "2.00x faster" in reason and "4.00 ms/image" in reason
    # Emulated bf16 (a CPU without it) or a marginal gain: fp32.
    assert R.choose_precision(fp32_s=0.004, bf16_s=0.006)[0] == "fp32"
    assert R.choose_precision(fp32_s=0.004, bf16_s=0.004 / (R.BF16_MIN_SPEEDUP - 0.01))[0] == "fp32"


def test_the_budget_cost_scales_only_the_networks_share() -> None:
    cost = (0.004 + R.OVERHEAD_S) * R.MARGIN
    assert R.scaled_cost(cost, 1.0) == pytest.approx(cost)
    # Twice as fast a step: the network's 4 ms become 2 ms, the loop's own 3 ms stay.
    assert R.scaled_cost(cost, 0.5) == pytest.approx((0.002 + R.OVERHEAD_S) * R.MARGIN)
    # A cheaper image buys a larger input for the same budget.
    big, _ = _resolve(_stats(n_train=2000, h=1000, w=1000))
    cfg = load_config(None, {"threads": 2})
    cheap, _ = R.resolve(cfg, _stats(n_train=2000, h=1000, w=1000), cost_128=R.scaled_cost(0.011, 0.5), device="cpu")
    assert cheap.input_shape[0] > big.input_shape[0]


def test_sixteen_bit_frames_get_their_own_range_with_a_margin() -> None:
    # A 12-bit camera's frames (values up to 4095 in a 16-bit container), with a few hot pixels
    # at the container's maximum that must not set the range.
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.integers(300, 3900, 20_000), np.full(1, 65535)]).astype(np.uint16)
    (low, high), reason = R.pixel_levels(values)
    assert 0 < low < 300 and 3900 < high < 4200  # the frames' range, 5% wider each side; not 0..65535
    assert "16-bit frames" in reason and f"{low}..{high}" in reason
    dataset = R.stats_from([64] * 50, [64] * 50, {"good": 30, "scratch": 20}, None, values)
    cfg, choices = _resolve(dataset)
    assert cfg.levels == (low, high) and {c.setting: c.value for c in choices}["levels"] == [low, high]
    kept, choices = _resolve(dataset, levels=(0, 4095))  # an engineer's levels are kept
    assert kept.levels == (0, 4095) and "levels" not in {c.setting for c in choices}
    eight, choices = _resolve(_stats())  # 8-bit frames: nothing to choose, nothing said
    assert eight.levels is None and "levels" not in {c.setting for c in choices}


def test_colour_is_kept_where_most_surveyed_frames_are_colour() -> None:
    def stats(colour: int, surveyed: int = 64) -> R.DataStats:
        return R.stats_from([64] * 50, [64] * 50, {"good": 30, "scratch": 20}, None, surveyed=surveyed,
                            colour=colour, colour_example="images/scratch/007.png" if colour else None)

    cfg, choices = _resolve(stats(40))
    assert cfg.channels == 3
    said = {c.setting: c for c in choices}["channels"]
    assert said.value == 3
    assert "40 of 64 training frames surveyed are colour (e.g. images/scratch/007.png)" in said.reason
    assert _resolve(stats(32))[0].channels == 3  # the share is COLOUR_SHARE, inclusive
    few, choices = _resolve(stats(10))  # a few colour files among gray frames: gray
    assert few.channels == 1 and "converted to gray" in {c.setting: c for c in choices}["channels"].reason
    gray, choices = _resolve(stats(0))
    assert gray.channels == 1 and "R=G=B frames count as gray" in {c.setting: c for c in choices}["channels"].reason
    assert _resolve(stats(0, surveyed=0))[0].channels == 1
    kept, choices = _resolve(stats(64), channels=1)  # an engineer's channels are kept
    assert kept.channels == 1 and "channels" not in {c.setting for c in choices}


def test_a_disturbed_probe_is_taken_again_and_the_quiet_reading_used() -> None:
    readings = iter([(10.0, 1.0), (3.0, 0.05), (99.0, 0.0)])
    calls: list[int] = []

    def watch(fn: object) -> tuple[float, float | None]:
        calls.append(1)
        return next(readings)

    got = R.quiet_probe(lambda: 0.0, spare_cores=0, watch=watch)
    assert (got.value, got.attempts, got.disturbed) == (3.0, 2, 1) and len(calls) == 2
    assert "timed again" in got.note(0) and "1 of 2 attempts" in got.note(0)
    # A quiet first attempt is the reading, and says nothing.
    quiet = R.quiet_probe(lambda: 0.0, spare_cores=0, watch=lambda fn: (4.0, 0.02))
    assert (quiet.value, quiet.disturbed, quiet.note(0)) == (4.0, 0, "")


def test_a_machine_busy_for_good_keeps_the_least_disturbed_of_the_attempts() -> None:
    readings = iter([(10.0, 1.0), (8.0, 0.6), (9.0, 0.9)])
    got = R.quiet_probe(lambda: 0.0, spare_cores=0, watch=lambda fn: next(readings))
    assert (got.value, got.others, got.attempts, got.disturbed) == (8.0, 0.6, R.PROBE_ATTEMPTS, R.PROBE_ATTEMPTS)
    assert "every one of 3 attempts" in got.note(0) and "re-plans" in got.note(0)


def test_work_on_the_cores_the_run_leaves_free_does_not_disturb_the_probe() -> None:
    # A run of 1 thread on 2 cores leaves one core to others: a server busy on it is not a disturbance.
    got = R.quiet_probe(lambda: 0.0, spare_cores=1, watch=lambda fn: (5.0, 1.1))
    assert (got.value, got.attempts, got.disturbed) == (5.0, 1, 0)
    # Where the kernel cannot tell, the reading is taken as it is.
    unknown = R.quiet_probe(lambda: 0.0, spare_cores=0, watch=lambda fn: (6.0, None))
    assert (unknown.value, unknown.attempts) == (6.0, 1)


def test_others_during_counts_other_processes_not_this_ones_own_work() -> None:
    def spin_here() -> str:
        end = time.perf_counter() + 0.6
        while time.perf_counter() < end:
            pass
        return "done"

    value, own = R.others_during(spin_here)
    if own is None:
        pytest.skip("no /proc/stat on this system")
    assert value == "done" and own < 0.5  # this process's own core is not "other work"
    with _spinning():
        _, others = R.others_during(lambda: time.sleep(0.6))
    assert others is not None and others >= 0.7


def test_a_moments_work_does_not_halve_the_threads_but_work_there_for_good_does() -> None:
    burst = iter([1.1, 0.05])
    assert R.available_threads(cores=2, read=lambda: next(burst)) == 2
    steady = iter([1.1, 1.0, 1.2])
    assert R.available_threads(cores=2, read=lambda: next(steady)) == 1
    # An idle machine is read once.
    reads: list[float] = []

    def idle() -> float:
        reads.append(0.02)
        return 0.02

    assert R.available_threads(cores=2, read=idle) == 2 and len(reads) == 1


def test_work_on_cores_this_process_may_not_use_is_not_counted() -> None:
    """A container pinned to some of a host's cores (or ``taskset``): the other cores' work cannot
    slow this process and must not read as a busy machine."""
    if not hasattr(os, "sched_setaffinity") or R.busy_cores(window_s=0.1) is None:
        pytest.skip("no CPU affinity or /proc/stat on this system")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs: one for this process, one for the other work")
    with _spinning(cpu=cpus[1]):
        seen_everywhere = R.busy_cores(window_s=0.5)
        os.sched_setaffinity(0, {cpus[0]})
        try:
            seen_here = R.busy_cores(window_s=0.5)
            _, others_here = R.others_during(lambda: time.sleep(0.5))
            assert R.usable_cores() == 1
        finally:
            os.sched_setaffinity(0, set(cpus))
    assert seen_everywhere is not None and seen_everywhere >= 0.7
    assert seen_here is not None and seen_here < 0.5
    assert others_here is not None and others_here < 0.5
