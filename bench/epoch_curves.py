"""Which epoch the default recipe keeps, against what each epoch scores on the test split.

    python bench/epoch_curves.py [--only mt-binary mt-6 neu coating] [--dataset DIR ...]
                                 [--keep DIR] [--threads 2]

Model selection keeps the epoch with the best validation score (``training.engine.EarlyStopping``)
and early stopping ends the run when that has not moved for a while. Whether that choice costs
anything on the line can only be seen on frames the run never looked at: this bench trains with
the defaults, exactly as ``bench/train_quality.py`` does, and after every epoch also scores the
test split with the weights validation just scored (the EMA's). The test pass is taken off the
time budget's clock (``TimeBudget.clock``), so the run plans and re-plans its epochs as it would
without it; only its wall time grows.

Per dataset it prints the kept epoch's test figure beside the last epoch's, the best test epoch's
(hindsight: no rule can know it) and the mean over the run's second half, and how closely the
validation and test curves follow each other over the eligible epochs (those after the first whose
validation loss reached a constant answer's). The figure is the selection score: AUROC of
P(defect), or macro recall without a good class. Test figures here are the network's own, without
the exported graph's mirror (the card's test figures include it). ``--keep DIR`` keeps each run's
per-epoch rows in ``DIR/<name>.curve.json``, and the kept network's probabilities on validation and
test for the frame and for its mirror, each on its own, and every epoch's (``epoch_val``,
``epoch_test``: ``[epochs, frames, classes]``, the network's own), in ``DIR/<name>.views.npz``.

It also scores the kept epoch's network on the validation and test splits without and with the
test-time mirror the recipe folds into the exported graph (selection score and macro recall). On
magnetic tile's six classes the mirror seemed to lower the macro recall the card reports; the
views kept frame by frame showed that to be a few test frames, changing sign between runs, with
no effect on validation (docs/training.md, "The mirror, frame by frame").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import train_quality as TQ  # the same datasets, imported the same way


def run(dataset: Path, models: Path, threads: int | None, budget_minutes: float | None = None) -> dict[str, Any]:
    """Train ``dataset`` with the defaults, scoring the test split after every epoch."""
    from training import data, engine, train
    from training.config import load_config

    splits: dict[str, Any] = {}
    off_clock = [0.0]
    rows: list[dict[str, Any]] = []
    mirror: dict[str, Any] = {}
    views: dict[str, np.ndarray] = {}
    epochs: dict[str, list[np.ndarray]] = {}  # every epoch's probabilities on validation and test
    scored_as: dict[str, Any] = {}  # the classes and good class the loop scores with
    load_splits, evaluate, time_budget, flip = data.load_splits, engine.evaluate, train._time_budget, train.FlipAverage

    def loading(*args: Any, **kwargs: Any) -> Any:
        splits.update(load_splits(*args, **kwargs))
        return splits

    def scoring(model: Any, images: Any, labels: Any, n_classes: int, *, good_index: int | None = None) -> Any:
        val = evaluate(model, images, labels, n_classes, good_index=good_index)
        scored_as.update(n_classes=n_classes, good_index=good_index)
        began = time.monotonic()
        test = evaluate(model, splits["test"].images, splits["test"].labels, n_classes, good_index=good_index)
        off_clock[0] += time.monotonic() - began
        score = engine.selection_score
        rows.append({"val": score(val), "test": score(test), "val_loss": val["loss"], "test_acc": test["acc"]})
        epochs.setdefault("epoch_val", []).append(val["probs"])
        epochs.setdefault("epoch_test", []).append(test["probs"])
        return val

    def budget(*args: Any, **kwargs: Any) -> Any:
        b = time_budget(*args, **kwargs)
        return None if b is None else dataclasses.replace(b, clock=lambda: time.monotonic() - off_clock[0])

    def mirrored(model: Any, *, hflip: bool, vflip: bool) -> Any:
        # The kept epoch's network, scored as it is and with the mirror the recipe folds into the graph.
        averaged = flip(model, hflip=hflip, vflip=vflip).eval()
        for name in ("val", "test"):
            split = splits[name]
            for arm, net in (("without", model), ("with", averaged)):
                got = evaluate(net, split.images, split.labels, **scored_as)
                mirror[f"{name} {arm}"] = (engine.selection_score(got), got["macro_recall"])
                if arm == "without":
                    views[f"{name}_own"] = got["probs"]
            # The mirror's view on its own too, so that ways of combining the two can be compared offline
            # (the mean of the views' log-probabilities is the graph's mean of logits, up to softmax).
            axis = -1 if hflip else -2
            views[f"{name}_mirror"] = engine.predict(model, np.ascontiguousarray(np.flip(split.images, axis)))
        return averaged

    data.load_splits, engine.evaluate, train._time_budget = loading, scoring, budget  # type: ignore[assignment]
    train.FlipAverage = mirrored  # type: ignore[assignment,misc]
    try:
        overrides: dict[str, Any] = {"data": dataset, "models_dir": models, "progress": False, "threads": threads,
                                     "name": dataset.name.removeprefix("data-")}
        if budget_minutes is not None:
            overrides["budget_minutes"] = budget_minutes
        target = TQ.escape_target(dataset)
        if target is not None:
            overrides["max_escape"] = target
        card = train.main(load_config(None, overrides)).card
    finally:
        data.load_splits, engine.evaluate, train._time_budget = load_splits, evaluate, time_budget  # type: ignore[assignment]
        train.FlipAverage = flip  # type: ignore[misc]
    return {"rows": rows, "kept": card.training["best_epoch"], "selection": card.training.get("selection") or {},
            "input": [card.input.height, card.input.width], "mirror": mirror,
            "views": {**views, **{k: np.stack(v) for k, v in epochs.items()},
                      **{f"{name}_labels": splits[name].labels for name in ("val", "test")}},
            "classes": list(card.classes)}


def summary(name: str, curve: dict[str, Any]) -> str:
    rows = curve["rows"]
    val, test = np.array([r["val"] for r in rows]), np.array([r["test"] for r in rows])
    n, kept = len(rows), int(curve["kept"]) - 1
    start = int(curve["selection"].get("uninformative_epochs") or 0)  # set aside: before the reference loss
    eligible = slice(start, n)
    corr = float(np.corrcoef(val[eligible], test[eligible])[0, 1]) if n - start > 2 else float("nan")
    best = int(np.argmax(test))
    m = curve["mirror"]
    mirror = "no mirror (`tta` off)" if not m else ", ".join(
        f"{split} {m[split + ' without'][0]:.4f} / {m[split + ' with'][0]:.4f} "
        f"({m[split + ' without'][1]:.3f} / {m[split + ' with'][1]:.3f})" for split in ("val", "test"))
    return (f"| {name} | {curve['input'][0]}x{curve['input'][1]} | {n} | {kept + 1}: {test[kept]:.4f} | "
            f"{test[-1]:.4f} | {best + 1}: {test[best]:.4f} | {test[n // 2:].mean():.4f} | {corr:.2f} | {mirror} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--only", nargs="*", choices=list(TQ.KINDS), default=None,
                        help="the built-in datasets to run (default: all; with no names: none)")
    parser.add_argument("--dataset", type=Path, action="append", default=[],
                        help="also run on this dataset folder (standard layout); repeatable")
    parser.add_argument("--keep", type=Path, help="keep imported datasets, models and curves here")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="the recipe's time budget (default: the recipe's own; smaller for a quick look)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for extra in args.dataset:
        if not (extra / "labels.csv").is_file():
            print(f"error: --dataset {extra} is not a dataset folder (no labels.csv)", file=sys.stderr)
            return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="epoch-curves-"))
    only = list(TQ.KINDS) if args.only is None else args.only
    try:
        runs = TQ.named_runs(only, work, args.dataset)
    except ValueError as exc:
        if args.keep is None:
            work.rmdir()  # made empty just above; a refused run leaves nothing behind
        print(f"error: {exc}", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    lines = [("| dataset | input | epochs run | kept epoch: test | last epoch: test | best test epoch (hindsight) | "
              "mean test, second half | corr(val, test), eligible epochs | kept epoch without / with the mirror: "
              "val, test (macro recall) |"), "|---|---|---|---|---|---|---|---|---|"]
    for kind, dataset in runs:
        if not dataset.exists():
            TQ.import_kind(kind, args.data, dataset)
        curve = run(dataset, work / "models", args.threads, args.budget_minutes)
        np.savez(work / f"{kind}.views.npz", classes=np.array(curve["classes"]), **curve.pop("views"))
        (work / f"{kind}.curve.json").write_text(json.dumps(curve, default=float))
        lines.append(summary(kind, curve))
        print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
