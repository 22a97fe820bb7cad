"""Training quality bench: default settings on the real datasets, one line per dataset.

    python bench/train_quality.py [--only mt-binary mt-6 neu] [--data ../shared/data] [--keep DIR]

Each dataset is imported (``inspection.dataset.importers``) into a temp folder, then trained in
its own subprocess with ``training/configs/<kind>.yaml`` plus ``--int8``, so the peak memory
printed is that training's own (ru_maxrss of the child). Figures are on the test split; the
wall time includes loading, training, calibration, export and all verification.

Targets (issue 3): NEU-DET 6-class test accuracy >= 0.98; magnetic tile good-vs-defect ROC AUC
>= 0.97 with escape <= 5% at the calibrated point; magnetic tile training <= 15 min wall and
<= 6 GB peak on 2 CPU cores; parity <= 1e-4; int8 accuracy within 1 point of fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KINDS = {
    "mt-binary": ("magnetic tile, good vs defect", "magnetic-tile.yaml"),
    "mt-6": ("magnetic tile, 6 classes", "magnetic-tile.yaml"),
    "neu": ("NEU-DET, 6 classes", "neu-det.yaml"),
}


def import_kind(kind: str, data: Path, dest: Path) -> Path:
    """Import the real dataset for ``kind`` into ``dest`` (standard layout)."""
    from inspection.dataset.importers import import_dataset
    from inspection.dataset.layout import Sample, read_dataset, write_dataset

    if kind == "neu":
        import_dataset(data / "neu-det" / "IMAGES", dest, layout="prefix", name="neu-det")
        return dest
    six = dest.with_name("magnetic-tile-6") if kind == "mt-binary" else dest
    if not six.exists():
        import_dataset(data / "magnetic-tile", six, layout="folders", class_pattern=r"MT_(?P<label>[^/]+)/",
                       exclude=["*.png"], good_class="Free", name="magnetic-tile")
    if kind == "mt-6":
        return six
    ds = read_dataset(six)
    items = [
        (Sample(s.path, "good" if s.label == ds.good_class else "defect", s.split, s.source), ds.path_of(s))
        for s in ds.samples
    ]
    write_dataset(
        dest,
        name="magnetic-tile-binary",
        classes=["good", "defect"],
        good_class="good",
        items=items,
        extra_manifest={"lineage": {"kind": "relabel", "from": str(six), "rule": "Free->good, other->defect"}},
    )
    return dest


def run_one(kind: str, dataset: Path, models: Path, extra: list[str]) -> dict:
    """Train one dataset in this process and return its figures (called in the child)."""
    from training.config import CONFIG_DIR, load_config
    from training.train import main

    overrides: dict = {"data": dataset, "models_dir": models, "name": kind, "int8": True, "progress": False}
    for item in extra:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    cfg = load_config(CONFIG_DIR / KINDS[kind][1], overrides)
    started = time.monotonic()
    result = main(cfg)
    wall = time.monotonic() - started
    card = result.card
    test = card.metrics["test"]
    return {
        "kind": kind,
        "wall_s": wall,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "accuracy": test["accuracy"],
        "macro_recall": test["macro_recall"],
        "n_test": test["n"],
        "roc_auc": test.get("roc_auc"),
        "op": test.get("operating_point"),
        "threshold": card.thresholds.reject,
        "parity": card.parity.max_abs_diff,
        "int8": test.get("int8"),
        "epochs": card.training["epochs_run"],
        "image_size": card.input.height,
        "arch": card.arch,
        "threads": card.training["threads"],
        "path": str(result.path),
    }


def line(r: dict) -> str:
    parts = [f"{KINDS[r['kind']][0]:30s}", f"test acc {r['accuracy']:.4f}", f"macro recall {r['macro_recall']:.4f}"]
    if r.get("roc_auc") is not None:
        esc, ovk = r["op"]["escape"], r["op"]["overkill"]
        parts += [f"ROC AUC {r['roc_auc']:.4f}",
                  f"escape {esc['rate']:.2%} [{esc['ci_low']:.1%}–{esc['ci_high']:.1%}] ({esc['k']}/{esc['n']})",
                  f"overkill {ovk['rate']:.2%} [{ovk['ci_low']:.1%}–{ovk['ci_high']:.1%}] ({ovk['k']}/{ovk['n']})"]
    if r.get("int8"):
        q = r["int8"]
        parts.append(f"int8 acc {q['accuracy']:.4f} ({q['accuracy_change'] * 100:+.2f} pt)"
                     + (f", escape {q['escape_change'] * 100:+.2f} pt" if "escape_change" in q else ""))
    parts += [
        f"parity {r['parity']:.1e}",
        f"train {r['wall_s'] / 60:.1f} min ({r['epochs']} ep, {r['image_size']} px, {r['arch']}, {r['threads']} thr)",
        f"peak {r['peak_mb'] / 1024:.2f} GB",
        f"n_test {r['n_test']}",
    ]
    return " | ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("INSPECTION_SHARED_DATA", REPO.parent / "shared" / "data"))
    )
    parser.add_argument("--only", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument("--keep", type=Path, help="keep imported datasets and models here (default: a temp dir)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="config override, e.g. epochs=5")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "DATASET", "MODELS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
        kind, dataset, models = args.child
        print("RESULT " + json.dumps(run_one(kind, Path(dataset), Path(models), args.set)), flush=True)
        return 0
    if not args.data.is_dir():
        print(f"error: real datasets not found at {args.data}", file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="train-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    for kind in args.only:
        dataset = work / f"data-{kind}"
        if not dataset.exists():
            import_kind(kind, args.data, dataset)
        cmd = [sys.executable, __file__, "--child", kind, str(dataset), str(work / "models")]
        for item in args.set:
            cmd += ["--set", item]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
        result = next((ln[7:] for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or result is None:
            print(
                f"{KINDS[kind][0]:30s} | FAILED (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}",
                flush=True,
            )
            continue
        print(line(json.loads(result)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
