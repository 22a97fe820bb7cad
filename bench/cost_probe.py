"""The start-up probe under other work: what it reads, and the input it then sizes.

    python bench/cost_probe.py [--rounds 2] [--burst 2.5] [--arch linecnn]

``inspection train`` times a few training steps at start (``training.train._choose_precision``:
the cost per image at 128 px, fp32 against bf16) and sizes the input of the whole run with the
reading. This script takes that probe on an idle machine and under two kinds of other work, with
the rule as it is and with the rule before it (one attempt, at torch's default threads, whatever
the run's threads), side by side in one run:

* **idle** — nothing else runs;
* **burst** — a process spinning on one core for ``--burst`` seconds from the probe's start (a
  command run beside the training start, a burst of frames on the serving process);
* **busy** — a process spinning on one core throughout (a line PC whose server is busy): the run
  takes the threads left free (``recipe.choose_threads``), so the probe should read the speed of
  those threads, not of threads fighting the spinner.

For each it prints the cost per image the budget divides (ms, and its ratio to the idle reading
of the same rule), the precision chosen, the attempts, and the input short side that
``recipe.resolve`` then gives a reference dataset (1,885 training frames of 300x300, two classes,
the default 20-minute budget). The rule before this one is reproduced here only to compare.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _spin(stop: object, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and not stop.is_set():  # type: ignore[attr-defined]
        pass


def main() -> int:
    import torch

    from training import recipe as R
    from training import train as T
    from training.config import load_config
    from training.engine import step_seconds
    from training.models import Classifier, get_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--burst", type=float, default=2.5, help="seconds the burst's process spins")
    parser.add_argument("--arch", default="linecnn")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="    %(message)s")
    default_threads = torch.get_num_threads()
    cfg = load_config(None, {"arch": args.arch})
    stats = R.stats_from([300] * 64, [300] * 64, {"good": 1300, "defect": 585}, None)

    def before_rule(threads: int) -> tuple[float, str, int]:
        # The rule before: one attempt at torch's default threads.
        torch.set_num_threads(default_threads)
        probe = Classifier(get_model(args.arch, num_classes=2, in_channels=1), mean=[0.5], std=[0.25])
        cost = R.measured_cost(step_seconds(probe, (1, 128, 128), precision="fp32", batch=32))
        fp32 = step_seconds(probe, (1, 128, 128), precision="fp32")
        bf16 = step_seconds(probe, (1, 128, 128), precision="bf16")
        precision, _ = R.choose_precision(fp32, bf16)
        return (R.scaled_cost(cost, bf16 / fp32) if precision == "bf16" else cost), precision, 1

    def this_rule(threads: int) -> tuple[float, str, int]:
        torch.set_num_threads(default_threads)
        attempts: list[int] = []
        watch = R.others_during

        def counting(fn):  # type: ignore[no-untyped-def]
            attempts.append(1)
            return watch(fn)

        R.others_during = counting  # type: ignore[assignment]
        try:
            cost, choice = T._choose_precision(cfg, 2, "cpu", channels=1, threads=threads)
        finally:
            R.others_during = watch  # type: ignore[assignment]
        return cost, f"{choice.value if choice else '?'} @{threads}t", len(attempts)

    ctx = multiprocessing.get_context("spawn")
    rows: dict[tuple[str, str], list[tuple[float, str, int]]] = {}
    for _ in range(args.rounds):
        for condition in ("idle", "burst", "busy"):
            for rule_name, rule in (("before", before_rule), ("now", this_rule)):
                stop = ctx.Event()
                spinner = None
                # The run's threads are chosen just before the probe: a burst comes after that
                # choice, other work that is there for good is seen by it.
                threads = R.choose_threads().value if condition != "busy" else 0
                if condition != "idle":
                    seconds = args.burst if condition == "burst" else 3600.0
                    spinner = ctx.Process(target=_spin, args=(stop, seconds))
                    spinner.start()
                    time.sleep(0.5 if condition == "burst" else 1.5)  # its interpreter is up and spinning
                try:
                    threads = threads or R.choose_threads().value
                    rows.setdefault((condition, rule_name), []).append(rule(threads))
                finally:
                    if spinner is not None:
                        stop.set()
                        spinner.join(10)
                time.sleep(1.0)
    print(f"\n{args.arch}, {R.usable_cores()} cores, torch default threads {default_threads}; median of "
          f"{args.rounds} round(s); input for 1,885 training frames of 300x300 at the default budget\n")
    print("| condition | rule | cost per image (ms) | vs idle, same rule | precision | attempts | input side (px) |")
    print("|---|---|---|---|---|---|---|")
    idle = {rule: statistics.median(r[0] for r in rows[("idle", rule)]) for rule in ("before", "now")}
    for (condition, rule_name), results in rows.items():
        cost = statistics.median(r[0] for r in results)
        resolved, _ = R.resolve(cfg.model_copy(update={"threads": 2}), stats, cost_128=cost, device="cpu")
        assert resolved.input_shape is not None
        print(f"| {condition} | {rule_name} | {cost * 1e3:.1f} ({', '.join(f'{r[0] * 1e3:.1f}' for r in results)}) | "
              f"{cost / idle[rule_name]:.2f}x | {', '.join(r[1] for r in results)} | "
              f"{', '.join(str(r[2]) for r in results)} | {min(resolved.input_shape)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
