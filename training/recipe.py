"""The default recipe: every setting left open in the config is chosen by a rule from the data.

A quality engineer runs ``inspection train --data D`` on a line nobody tuned for; nothing here
may depend on which dataset it is, only on what can be measured about it. Each rule names what
it adapts to (docs/training.md gives the reasoning):

* **input shape** — the frames' median aspect ratio (letterboxed, so no frame is squashed),
  the frames' own resolution (never up-sampled beyond it: no detail is gained), and the compute
  budget (the largest input whose training fits ``budget_minutes``);
* **epochs** — the dataset size: a network trained from scratch needs a number of optimiser
  *steps*, not of passes, so small datasets get more passes (bounded both ways);
* **patience / min epochs** — a share of the epochs (the one-cycle schedule improves late);
* **batch size** — the training split's size (at least ~10 steps an epoch) and the device (at
  most 16 frames a step on a CPU, where a step costs less per frame at 16 than at 32);
* **class balance** — how imbalanced the training split is;
* **flips and 90-degree rotations** — the dataset's declared ``orientation`` (manifest), and
  the input's shape (a rotation of a non-square input changes its shape);
* **test-time mirror** — the same orientation: a network trained on mirrored frames scores a
  frame and its mirror image, and the exported graph averages the two;
* **pixel levels** — 16-bit frames only: their own range of values, mapped onto the network's
  8-bit input (with a margin for brighter or darker parts);
* **threads** — the cores this process may use, less those busy with other work right now;
* **cost per image** — this machine's measured speed: the training step is timed here (a second or
  a few, at the threads the run will use) and the input is sized with it, not with the reference
  machine's figure; a timing that other work disturbed is taken again (``quiet_probe``);
* **precision** — what this machine computes fastest: bf16 where a probe of a few training
  steps finds it faster than fp32 here (CPUs with native bf16), fp16 on CUDA; the budget's cost
  per image follows the measured speed-up.

``resolve`` returns the config with every open setting filled and the list of choices with
their reasons (the threads excepted: ``choose_threads`` comes first, as the cost is timed at
them); the config saved beside the model holds the chosen values.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from inspection.errors import ConfigError
from training.config import TrainConfig

#: What ``orientation`` in a dataset manifest may say, and the flips/rotations it makes safe.
ORIENTATIONS: dict[str, tuple[bool, bool, bool]] = {
    # (hflip, vflip, rot90)
    "free": (True, True, True),  # textures, round or symmetric parts: any flip or rotation
    "flip": (True, True, False),  # mirror images are valid parts; rotating 90 degrees is not
    "hflip": (True, False, False),  # left/right mirror only (e.g. a web moving top to bottom)
    "fixed": (False, False, False),  # orientation carries meaning: no geometric augmentation
}
#: When the manifest says nothing: mirror images of a surface defect are defects of the same
#: kind, but a 90-degree turn can swap a scan direction with the web direction (streaks).
DEFAULT_ORIENTATION = "flip"

#: Optimiser steps a from-scratch network gets before the budget buys resolution. Steps compete
#: with input pixels: on a line the recipe had never seen (ELPV, docs/training.md), at equal
#: compute 2,360 steps at 144 px beat 1,180 steps at 208 px (test AUROC 0.847 vs 0.836, validation
#: 0.897 vs 0.890), and every 1,000-step run there still had its best epoch last; beyond ~144 px
#: more pixels bought less than more steps. The rest of the budget goes to resolution.
TARGET_STEPS = 2000
MIN_EPOCHS, MAX_EPOCHS = 20, 150
#: Frames an optimiser step takes at most on a CPU (the steps rule still counts passes in batches
#: of up to 32). A CPU step costs less per frame at 16 than at 32 (linecnn, 2 threads, 192 px:
#: bf16 3.5 against 5.0 ms, fp32 7.2 against 8.3; likely the caches, which a batch's first-stage
#: activations outgrow), and the same passes make twice the optimiser steps, which a network
#: from scratch needs (docs/training.md, "Half the batch on a CPU"). A GPU needs the larger batch
#: to be busy.
CPU_MAX_BATCH = 16
#: Input sizes: the short side stays within these, in steps of the networks' total stride.
MIN_SIDE, MAX_SIDE, SIDE_STEP = 64, 320, 16
#: Aspect ratios beyond this are clamped (a line-scan strip is tiled, not fed as a needle).
MAX_ASPECT = 4.0
#: The training loop's per-image work outside the network (augmentation, batching, the
#: validation pass each epoch), seconds, and the safety factor on the sum (a busy machine, slower
#: memory): an architecture's ``cost_128`` is ``(fp32 step + OVERHEAD_S) * MARGIN`` on the
#: reference machine (bench/arch_cost.py prints it).
OVERHEAD_S = 0.003
MARGIN = 1.25
#: bf16 is chosen where it makes the training step at least this much faster than fp32 here: on
#: CPUs without native bf16 it is emulated and slower, and a marginal gain is not worth the
#: coarser arithmetic.
BF16_MIN_SPEEDUP = 1.15
#: A GPU trains this many times faster than the reference 2-core CPU (conservative).
CUDA_SPEEDUP = 20.0
#: The start-up probe (the cost per image and the precision) is a few seconds of training steps,
#: and it sizes the input for the whole run, which no later re-plan changes. Other work that
#: takes the probe's cores for those seconds makes it read several times slower: on an idle
#: 2-core machine, one process spinning on one core made the batch-32 step read 7.6-8.3 instead
#: of 3.5-4.1 ms an image and the batch-8 fp32 step 19-22 instead of 2.9-3.1 (two threads wait on
#: the one that shares its core), and a bench run whose probe met a few seconds of another
#: command got 128 px where its undisturbed run had 208 (docs/training.md). So the probe is taken
#: again, up to this many attempts in all, while other processes kept more than
#: ``PROBE_DISTURBED_CORES`` beyond the cores the run leaves free busy during it.
PROBE_ATTEMPTS = 3
#: Cores of other work, beyond those the run leaves free, that mark a probe as disturbed: well
#: above an idle machine's background (services, the kernel: a few hundredths of a core here),
#: well below one process computing (a whole core).
PROBE_DISTURBED_CORES = 0.25
#: The threads rule reads how busy the cores are over half a second, up to this many times, and
#: counts the least: the run keeps its threads to the end, and a command that happened to run in
#: that half second would otherwise halve them for twenty minutes (one thread of two trains
#: 1.4x slower here, ``bench/cost_probe.py``), while other work there for good shows in every
#: reading. An idle machine is read once.
BUSY_READINGS = 3
#: 16-bit frames: the percentiles of the training frames' pixel values that bound their range
#: (a few hot or dead pixels must not set it), and the margin added on each side, a share of the
#: range, for production parts a little brighter or darker than the training ones.
LEVEL_PERCENTILES = (0.01, 99.99)
LEVEL_MARGIN = 0.05
#: The network sees colour where at least this share of the surveyed training frames decode to
#: colour (not R=G=B): a line whose camera delivers colour keeps it, a grayscale line (also one
#: that stores gray frames as R=G=B colour files) stays one channel, and a stray colour file among
#: gray frames does not turn a whole line to colour.
COLOUR_SHARE = 0.5


@dataclass(frozen=True)
class DataStats:
    """What the rules may look at: sizes and counts, never the dataset's name."""

    n_train: int
    train_counts: dict[str, int]
    heights: np.ndarray
    widths: np.ndarray
    orientation: str | None
    #: A sample of the training frames' pixel values when they are 16-bit; None for 8-bit frames.
    pixel_values: np.ndarray | None = None
    #: Training frames decoded for the survey, how many of them are colour, and one colour
    #: frame's path (``training.data.survey_frames``).
    surveyed: int = 0
    colour: int = 0
    colour_example: str | None = None

    @property
    def median_aspect(self) -> float:
        return float(np.median(self.widths / self.heights))

    @property
    def median_short_side(self) -> float:
        return float(np.median(np.minimum(self.heights, self.widths)))


@dataclass(frozen=True)
class Choice:
    setting: str
    value: Any
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"setting": self.setting, "value": self.value, "reason": self.reason}


def measured_cost(step_s: float) -> float:
    """The budget's cost per image from a training step measured on this machine (seconds per
    image at 128 px, batch 32, fp32): the formula of the registered ``cost_128``."""
    return (step_s + OVERHEAD_S) * MARGIN


def scaled_cost(cost_128: float, step_ratio: float) -> float:
    """An architecture's cost per image when its network step runs ``step_ratio`` times as long
    as the registered fp32 step (the loop's own per-image work does not change)."""
    return ((cost_128 / MARGIN - OVERHEAD_S) * step_ratio + OVERHEAD_S) * MARGIN


def pixel_levels(values: np.ndarray) -> tuple[tuple[int, int], str]:
    """The 16-bit pixel values (low, high) mapped onto the network's 0..255 input, and why.

    A camera with 10 to 16 significant bits fills a 16-bit container only partly (a 12-bit camera
    stops at 4,095), so the range comes from the frames, not from the container: their
    ``LEVEL_PERCENTILES``, widened by ``LEVEL_MARGIN`` of the range on each side, within 0..65535.
    Values outside clip, as on a saturated sensor. Mapping the container's whole range instead
    would leave a 12-bit camera's frames 16 of the 256 input levels.
    """
    lo_p, hi_p = (float(v) for v in np.percentile(values, LEVEL_PERCENTILES))
    margin = LEVEL_MARGIN * max(hi_p - lo_p, 1.0)
    low = max(0, math.floor(lo_p - margin))
    high = min(65535, max(low + 1, math.ceil(hi_p + margin)))
    reason = (f"16-bit frames, their pixel values {lo_p:.0f}..{hi_p:.0f} ({LEVEL_PERCENTILES[0]}th to "
              f"{LEVEL_PERCENTILES[1]}th percentile of {values.size} pixels sampled from the training frames), "
              f"widened by {LEVEL_MARGIN:.0%} each side: {low}..{high} mapped onto the network's 0..255 input "
              f"({(high - low) / 255:.1f} levels per input step; values outside clip)")
    return (low, high), reason


def colour_channels(stats: DataStats) -> tuple[int, str]:
    """The network's input channels: 3 where at least ``COLOUR_SHARE`` of the surveyed training
    frames are colour, else 1; and why."""
    if not stats.surveyed:
        return 1, "no training frame surveyed: one channel"
    share = stats.colour / stats.surveyed
    counted = f"{stats.colour} of {stats.surveyed} training frames surveyed are colour"
    if share >= COLOUR_SHARE:
        return 3, (f"{counted} (e.g. {stats.colour_example}): the network sees the three colour channels (a "
                   "discolouration can be of the same brightness)")
    return 1, (f"{counted}" + (" (R=G=B frames count as gray)" if stats.colour == 0 else
                               f" (under {COLOUR_SHARE:.0%}: colour frames are converted to gray)")
               + ": one gray channel")


def choose_precision(fp32_s: float, bf16_s: float) -> tuple[str, str]:
    """bf16 where the measured step is at least ``BF16_MIN_SPEEDUP`` times faster than fp32."""
    speedup = fp32_s / max(bf16_s, 1e-12)
    measured = f"a training step here: fp32 {fp32_s * 1e3:.2f} ms/image, bf16 {bf16_s * 1e3:.2f} ms/image"
    if speedup >= BF16_MIN_SPEEDUP:
        return "bf16", f"{measured} ({speedup:.2f}x faster): mixed bf16 (weights, optimiser and EMA stay float32)"
    return "fp32", f"{measured} ({speedup:.2f}x; bf16 needs >= {BF16_MIN_SPEEDUP}x): fp32"


def _cpu_ticks() -> tuple[int, int, int] | None:
    """(total, idle) time in clock ticks since boot of the CPUs this process may run on, and how
    many they are (``/proc/stat``'s per-CPU rows); ``None`` where the kernel does not offer it.

    Only those CPUs: in a container pinned to a few of a large host's cores (``--cpuset-cpus``),
    or under ``taskset``, the host's other cores are busy with work that cannot slow this
    process, and summed in they would read as a machine too busy to train on.
    """
    try:
        with open("/proc/stat", encoding="ascii") as f:
            rows = [line.split() for line in f if line.startswith("cpu")]
    except OSError:
        return None
    mine = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    picked = [r for r in rows[1:] if r[0][3:].isdigit() and (mine is None or int(r[0][3:]) in mine)]
    if not picked:
        picked = rows[:1]  # no per-CPU rows: the aggregate, all CPUs
    total = idle = 0
    try:
        for row in picked:
            fields = [int(v) for v in row[1:]]
            idle += fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
            total += sum(fields[:8])  # user..steal; guest time is already inside user
    except (ValueError, IndexError):
        return None
    if not total:  # nothing read (no cpu rows at all)
        return None
    n = len(picked) if picked[0][0] != "cpu" else (os.cpu_count() or 1)
    return total, idle, n


def busy_cores(window_s: float = 0.5) -> float | None:
    """Cores other work keeps busy right now, of those this process may run on: the share of
    their non-idle CPU time over ``window_s`` seconds (``/proc/stat``), times their number;
    ``None`` where the kernel does not offer it.

    Not the load average: it trails by minutes, so a process that has just ended (the previous
    run of a bench, a test suite) would still count as busy and halve the threads for nothing.
    """
    first = _cpu_ticks()
    if first is None:
        return None
    time.sleep(window_s)
    second = _cpu_ticks()
    if second is None or second[0] <= first[0]:
        return None
    total, idle = second[0] - first[0], second[1] - first[1]
    return second[2] * (total - idle) / total


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the system tells)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def available_threads(
    *, cores: int | None = None, busy: float | None = None, read: Callable[[], float | None] | None = None
) -> int:
    """Cores this process may use, less those other work keeps busy now (the least of up to
    ``BUSY_READINGS`` half-second readings of ``busy_cores``, else the 1-minute load average), at
    least 1."""
    if cores is None:
        cores = usable_cores()
    if busy is None:
        readings: list[float] = []
        for _ in range(BUSY_READINGS):
            reading = (read or busy_cores)()
            if reading is None:
                break
            readings.append(reading)
            if math.floor(cores - reading + 0.5) >= cores:
                break  # every core is free: another reading could not give more
        busy = min(readings) if readings else None
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except OSError:
            busy = 0.0
    return max(1, min(cores, math.floor(cores - busy + 0.5)))


def choose_threads() -> Choice:
    """The threads a run uses when the config leaves them open: the cores free now."""
    threads = available_threads()
    return Choice("threads", threads, f"{threads} of the CPU cores are free now (cores less those other work kept "
                                      f"busy: the least of up to {BUSY_READINGS} half-second readings)")


T = TypeVar("T")


def others_during(fn: Callable[[], T]) -> tuple[T, float | None]:
    """``fn()``'s result and the cores other processes kept busy while it ran: the busy time of
    the CPUs this process may run on (``/proc/stat``) less this process's own, over the wall time;
    ``None`` where the kernel does not tell."""
    first = _cpu_ticks()
    own, began = time.process_time(), time.perf_counter()
    value = fn()
    own, wall = time.process_time() - own, time.perf_counter() - began
    second = _cpu_ticks()
    if first is None or second is None or wall <= 0:
        return value, None
    busy_s = ((second[0] - first[0]) - (second[1] - first[1])) / os.sysconf("SC_CLK_TCK")
    return value, max(0.0, busy_s - own) / wall


@dataclass(frozen=True)
class ProbeReading(Generic[T]):
    """A start-up probe's result, and how much other work shared the machine while it ran."""

    value: T
    #: Cores other processes kept busy during the attempt whose value this is (None: unknown).
    others: float | None
    attempts: int
    #: Attempts set aside because other work disturbed them.
    disturbed: int

    def note(self, spare_cores: float) -> str:
        """What the log and the card say about the probe's conditions ('' when the first attempt was quiet)."""
        if self.disturbed == 0:
            return ""
        allowed = f"more than {spare_cores + PROBE_DISTURBED_CORES:.2f} core(s)"
        used = "unknown" if self.others is None else f"{self.others:.2f} cores"
        if self.disturbed < self.attempts:
            return (f"timed again: other work kept {allowed} busy during {self.disturbed} of {self.attempts} "
                    f"attempts; the quiet attempt's reading is used (other work {used})")
        return (f"disturbed: other work kept {allowed} busy during every one of {self.attempts} attempts; the "
                f"least disturbed reading is used (other work {used}), and the time budget re-plans the epochs "
                "from what they then take")


def quiet_probe(
    fn: Callable[[], T],
    *,
    spare_cores: float,
    attempts: int = PROBE_ATTEMPTS,
    watch: Callable[[Callable[[], T]], tuple[T, float | None]] | None = None,
) -> ProbeReading[T]:
    """Run the probe ``fn`` until other processes kept at most ``spare_cores`` (the cores the run
    leaves them) plus ``PROBE_DISTURBED_CORES`` busy during it, at most ``attempts`` times; where
    every attempt was disturbed (a machine busy for good), the least disturbed one is kept: the
    epochs then measure what the run really gets, and the time budget re-plans with that."""
    watch = watch or others_during
    best: tuple[T, float] | None = None
    for attempt in range(1, attempts + 1):
        value, others = watch(fn)
        if others is None or others <= spare_cores + PROBE_DISTURBED_CORES:
            return ProbeReading(value, others, attempt, attempt - 1)
        if best is None or others < best[1]:
            best = (value, others)
    assert best is not None  # attempts >= 1
    return ProbeReading(best[0], best[1], attempts, attempts)


def resolve(
    cfg: TrainConfig,
    stats: DataStats,
    *,
    cost_128: float,
    device: Literal["cpu", "cuda"],
) -> tuple[TrainConfig, list[Choice]]:
    """Fill every open setting of ``cfg`` by rule; returns the new config and the choices.

    All but the threads: the caller chooses them first (``choose_threads``), because the
    ``cost_128`` it measures is timed at them.

    ``cost_128`` is the architecture's training cost in seconds per image at 128x128: measured
    on this machine (CPU, ``measured_cost``), else the registered reference-machine figure
    (``training.models.ModelInfo.cost_128``; CUDA scales the budget by ``CUDA_SPEEDUP``).

    Raises:
        ConfigError: the manifest's orientation is not one of ``ORIENTATIONS``.
    """
    choices: list[Choice] = []
    update: dict[str, Any] = {}

    def choose(setting: str, value: Any, reason: str) -> None:
        # A later rule may revise an earlier one's value (epochs, once the input is known).
        choices[:] = [c for c in choices if c.setting != setting]
        update[setting] = value
        choices.append(Choice(setting, value, reason))

    if cfg.channels is None:
        channels, reason = colour_channels(stats)
        choose("channels", channels, reason)
    if cfg.levels is None and stats.pixel_values is not None:
        levels, reason = pixel_levels(stats.pixel_values)
        choose("levels", list(levels), reason)
    # The batch the steps rule counts passes in: the engineer's, else >= 10 steps an epoch, at most 32.
    steps_batch = cfg.batch_size or int(min(32, max(8, 2 ** int(math.log2(max(stats.n_train // 10, 8))))))
    if cfg.batch_size is None:
        batch = steps_batch
        why = f"{stats.n_train} training images: batch {batch} keeps >= 10 steps an epoch (at most 32)"
        if device == "cpu" and batch > CPU_MAX_BATCH:
            batch = CPU_MAX_BATCH
            why += (f"; on a CPU {batch} frames a step: a CPU step costs less per frame at {batch} than at "
                    f"{steps_batch}, and the same passes make more optimiser steps")
        choose("batch_size", batch, why)
    batch = int(update.get("batch_size", cfg.batch_size) or 32)

    if cfg.epochs is None:
        frames = TARGET_STEPS * steps_batch
        epochs = int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(frames / max(stats.n_train, 1)))))
        choose(
            "epochs",
            epochs,
            f"~{TARGET_STEPS} optimiser steps of batch {steps_batch} ({frames} frames drawn) on {stats.n_train} "
            f"training images (bounded to {MIN_EPOCHS}..{MAX_EPOCHS} epochs)"
            + (f"; in steps of {batch}, ~{frames // batch}" if batch != steps_batch else ""),
        )
    epochs = int(update.get("epochs", cfg.epochs) or 1)

    if cfg.input_shape is None:
        aspect = float(np.clip(stats.median_aspect, 1 / MAX_ASPECT, MAX_ASPECT))
        native = stats.median_short_side
        if cfg.image_size is not None:
            # To the networks' step first: the long side is a multiple of it, and from a side off
            # the step it came out shorter than the short one (100 on square frames: 100x96).
            side = max(SIDE_STEP, round(cfg.image_size / SIDE_STEP) * SIDE_STEP)
            why = f"image_size {cfg.image_size} given" + (
                f", rounded to {side} (the networks downsample by {SIDE_STEP}: sides are multiples of it)"
                if side != cfg.image_size else "")
        else:
            budget_s = cfg.budget_minutes * 60.0 * (CUDA_SPEEDUP if device == "cuda" else 1.0)
            passes = stats.n_train * epochs
            # cost grows with the input's pixels: side^2 * aspect relative to 128^2
            afford = 128.0 * math.sqrt(budget_s / (passes * cost_128 * max(aspect, 1 / aspect)))
            cap = min(MAX_SIDE, native)
            side = int(max(MIN_SIDE, min(cap, afford)) // SIDE_STEP * SIDE_STEP) or MIN_SIDE
            if cfg.epochs is None and cap < afford:
                # The frames' resolution, not the budget, bounds the input: what the budget has
                # left buys steps instead (one-cycle runs on small frames were still improving).
                fill = math.floor(budget_s / (stats.n_train * cost_128 * (side / 128.0) ** 2 * max(aspect, 1 / aspect)))
                if fill > epochs:
                    epochs = min(MAX_EPOCHS, fill)
                    choose(
                        "epochs",
                        epochs,
                        f"the frames' own resolution caps the input at {side} px, so the rest of the "
                        f"{cfg.budget_minutes:g}-minute budget goes to passes: {epochs} epochs of {stats.n_train} "
                        f"training images (at most {MAX_EPOCHS}; ~{TARGET_STEPS} steps would be "
                        f"{update.get('epochs', epochs)})",
                    )
            limit = (
                "the frames' own resolution" if cap <= afford else f"the {cfg.budget_minutes:g}-minute compute budget"
            )
            why = (
                f"short side {side} px: limited by {limit} (frames' median short side {native:.0f} px; the budget "
                f"affords {afford:.0f} px for {passes} image passes at {cost_128 * 1e3:.1f} ms per 128-px image)"
            )
        short, long_ = side, round(side * max(aspect, 1 / aspect) / SIDE_STEP) * SIDE_STEP or side
        shape = (short, long_) if aspect >= 1 else (long_, short)
        choose(
            "input_shape",
            list(shape),
            f"{why}; height x width {shape[0]}x{shape[1]} from the frames' median "
            f"aspect ratio {stats.median_aspect:.2f} (width/height), letterboxed",
        )
    shape = tuple(update.get("input_shape", cfg.input_shape))  # type: ignore[arg-type]

    if cfg.patience is None:
        patience = max(10, epochs // 3)
        choose(
            "patience", patience, f"a third of the {epochs} epochs (the one-cycle schedule improves late), at least 10"
        )
    if cfg.min_epochs is None:
        min_epochs = max(1, epochs // 2)
        choose("min_epochs", min_epochs, "no early stop in the first half of the schedule (learning rate still high)")

    if cfg.balance is None:
        counts = [c for c in stats.train_counts.values() if c > 0]
        ratio = max(counts) / min(counts) if counts else 1.0
        balance = "sampler" if ratio > 1.5 else "none"
        choose(
            "balance",
            balance,
            f"largest/smallest class in training = {ratio:.1f} "
            + ("> 1.5: draw classes evenly" if balance == "sampler" else "<= 1.5: natural frequencies"),
        )

    orientation = stats.orientation or DEFAULT_ORIENTATION
    if orientation not in ORIENTATIONS:
        raise ConfigError(
            f"dataset manifest orientation {orientation!r} is not allowed; use one of {sorted(ORIENTATIONS)}"
        )
    hflip, vflip, rot90 = ORIENTATIONS[orientation]
    square = shape[0] == shape[1]
    aug = cfg.augment.model_dump()
    said = (
        f"manifest orientation {stats.orientation!r}"
        if stats.orientation
        else f"no orientation in the manifest (default {DEFAULT_ORIENTATION!r})"
    )
    for key, allowed in (("hflip", hflip), ("vflip", vflip), ("rot90", rot90 and square)):
        if aug[key] is None:
            aug[key] = allowed
            extra = " and a non-square input" if key == "rot90" and rot90 and not square else ""
            choices.append(Choice(f"augment.{key}", allowed, f"{said}{extra}"))
    update["augment"] = aug
    if cfg.tta is None:
        mirror = bool(aug["hflip"] or aug["vflip"])
        reason = f"{said}: " + (
            "a mirror image is a valid frame, so the exported graph averages the frame and its mirror (one more "
            "inference per frame)" if mirror else "no mirror allowed, no test-time mirror")
        if cfg.mode == "anomaly" and mirror:
            # Measured on both anomaly bench sets' exported graphs (docs/training.md): the mirror's
            # average moved image AUROC by -0.004 and +0.002 and the density maps' pixel AUROC by
            # -0.006 and +0.002, at twice the serving cost per frame.
            mirror = False
            reason = ("anomaly mode: no test-time mirror (measured no gain in frame scores or maps at twice the "
                      "inference per frame; --tta turns it on)")
        choices.append(Choice("tta", mirror, reason))
        update["tta"] = mirror
    return TrainConfig.model_validate({**cfg.model_dump(), **update}), choices


def stats_from(
    heights: Sequence[int] | np.ndarray,
    widths: Sequence[int] | np.ndarray,
    train_counts: dict[str, int],
    orientation: str | None,
    pixel_values: np.ndarray | None = None,
    *,
    surveyed: int = 0,
    colour: int = 0,
    colour_example: str | None = None,
) -> DataStats:
    """``DataStats`` from the frames' sizes, the training split's class counts, (16-bit frames) a
    sample of their pixel values and how many surveyed training frames are colour."""
    return DataStats(
        n_train=sum(train_counts.values()),
        train_counts=dict(train_counts),
        heights=np.asarray(heights, dtype=np.float64),
        widths=np.asarray(widths, dtype=np.float64),
        orientation=orientation,
        pixel_values=pixel_values,
        surveyed=surveyed,
        colour=colour,
        colour_example=colour_example,
    )
