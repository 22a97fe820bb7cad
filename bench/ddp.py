"""Data-parallel training bench: one process vs N ranks (DDP) on the generated coating set, side by side.

    python bench/ddp.py [--nproc 2] [--epochs 12] [--threads 2] [--keep DIR]

Both runs use the same split, recipe settings and epochs (``--epochs`` fixes the schedule so
the two are comparable; the recipe picks the rest from the data as usual) and the same total
threads (one process with ``--threads``; N ranks share them). Prints, per run: the best
validation AUROC and its epoch, test AUROC and accuracy, seconds per epoch, and the ratios.

What to expect (issue 18): on a 2-core CPU two ranks do not run faster than one process with two
threads (they split the same cores and add an all-reduce per step); the point is the same
result from the same code that spreads over GPUs or machines. Validation AUROC within noise of
the one-process run is the check.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _run(dataset: Path, models: Path, *, nproc: int, epochs: int, threads: int) -> dict[str, float]:
    from training.config import load_config
    from training.train import main

    cfg = load_config(
        None,
        {
            "data": dataset,
            "models_dir": models,
            "name": f"ddp{nproc}",
            "epochs": epochs,
            "patience": epochs,  # the whole schedule on both sides: per-epoch time is what is compared
            "max_escape": 0.05,  # what 75 defective validation frames can resolve (the demo's target)
            "threads": threads,
            "nproc": nproc,
            "progress": False,
        },
    )
    started = time.monotonic()
    result = main(cfg)
    wall = time.monotonic() - started
    rows = json.loads((result.path / "history.json").read_text())
    best = max(rows, key=lambda r: r["val_auroc"])
    test = result.card.metrics["test"]
    return {
        "nproc": nproc,
        "best_val_auroc": best["val_auroc"],
        "best_epoch": best["epoch"],
        "test_auroc": test.get("roc_auc"),
        "test_acc": test["accuracy"],
        "s_per_epoch": result.card.training["train_seconds"] / len(rows),
        "wall_s": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2, help="ranks of the data-parallel run (default 2)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in all, for both runs")
    parser.add_argument("--keep", type=Path, help="keep the dataset and models here (default: a temp dir)")
    args = parser.parse_args()
    if args.nproc < 2:
        print(f"error: --nproc {args.nproc}: the comparison needs at least 2 ranks", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=logging.WARNING)
    from inspection.dataset.synthetic import generate_dataset

    work = args.keep or Path(tempfile.mkdtemp(prefix="ddp-bench-"))
    dataset = work / "coating"
    if not dataset.exists():
        generate_dataset(dataset, seed=0)
    rows = []
    for nproc in (1, args.nproc):
        row = _run(dataset, work / "models", nproc=nproc, epochs=args.epochs, threads=args.threads)
        rows.append(row)
        print(json.dumps(row), flush=True)
    one, many = rows
    print()
    print("| run | best val AUROC (epoch) | test AUROC | test acc | s/epoch | wall s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['nproc']} process{'es' if r['nproc'] > 1 else ''} | {r['best_val_auroc']:.4f} ({r['best_epoch']}) | "
            f"{r['test_auroc']:.4f} | {r['test_acc']:.3f} | {r['s_per_epoch']:.1f} | {r['wall_s']:.0f} |"
        )
    print(
        f"\n{args.nproc} ranks / 1 process: s/epoch {many['s_per_epoch'] / one['s_per_epoch']:.2f}x, "
        f"best val AUROC {many['best_val_auroc'] - one['best_val_auroc']:+.4f}, "
        f"test AUROC {many['test_auroc'] - one['test_auroc']:+.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
