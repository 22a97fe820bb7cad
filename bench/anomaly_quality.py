"""Anomaly-mode bench: train on good images only (defaults, from scratch), test on held-out good + every defect.

    python bench/anomaly_quality.py [--only mt coating] [--data ../shared/data] [--threads 2] [--keep DIR]

* **mt** — magnetic tile: trained on ``Free`` tiles only; validation and test hold out good
  tiles and every defect class (blowhole, break, crack, fray, uneven);
* **coating** — the generated coating set: trained on its good frames only.

Prints per dataset: image AUROC (test) with its 95% interval counted in the test split's units
(a cluster bootstrap, as the card's), escape and overkill at the threshold calibrated on good
validation frames (max overkill 1%, or the smallest of 2/5% the good validation frames resolve)
with 95% intervals, the ONNX model's CPU latency per frame in
onnxruntime (batch 1, one thread, median), training minutes and peak memory.

Pixel AUROC: the exported model's defect map for every test frame, resampled onto the frame's
pixels exactly as serving places it (``inspection.defectmap.frame_heat``), scored against the true
defect masks — magnetic tile's own (``<name>.png`` beside each defective image, thresholded at
128), the coating set's from its generator (where a frame differs from its good twin) — good
frames counting as all-normal pixels, every second pixel in each axis, as anomalib computes it
over the whole test set. Beside it, what the pooled figure is made of: the same with a perfect
frame score (each map's frame weight taken from the truth), and per defect class its share of the
defective pixels and how well the map places it within its own frames (each frame's pixels ranked
among themselves, averaged over the class's frames).

Targets (issue 13): magnetic tile image AUROC >= 0.90, pixel AUROC >= 0.85; <= 5 ms per frame;
<= 20 min, <= 6 GB.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

KINDS = {"mt": "magnetic tile (Free only)", "coating": "generated coating (good only)"}


def _latency_ms(model: Path, height: int, width: int, channels: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).integers(0, 256, (1, channels, height, width), dtype=np.uint8)
    for _ in range(20):
        session.run(None, {name: x})
    times = []
    for _ in range(200):
        t = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


#: (the test frame's labels.csv row, its height, width) -> its true defect mask, or None if unknown.
MaskOf = Callable[[dict[str, str], int, int], np.ndarray | None]


def mt_masks(originals: Path) -> MaskOf:
    """Magnetic tile: the mask beside each original image (``<name>.png``, thresholded at 128)."""
    import cv2

    def mask_of(row: dict[str, str], height: int, width: int) -> np.ndarray | None:
        path = (originals / row["source"]).with_suffix(".png") if row.get("source") else None
        if path is None or not path.is_file():
            return None
        m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if m is None:
            return None
        if m.shape != (height, width):
            m = cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST)
        return np.asarray(m >= 128)

    return mask_of


def coating_masks(seed: int = 0) -> MaskOf:
    """The generated coating set: where each frame differs from its good twin (the generator's own
    defect footprint; ``source`` is the frame's serial ``P<index>``)."""
    from inspection.dataset.synthetic import defect_footprint

    def mask_of(row: dict[str, str], height: int, width: int) -> np.ndarray | None:
        return defect_footprint(row["label"], seed=seed, index=int(row["source"].lstrip("P")), size=height)

    return mask_of


class _Ranks:
    """Pixel scores binned to 1/65535 as histograms of defect and normal pixels, so that millions
    of pixels are ranked without holding them (ties count one half, as in ``inspection.metrics``)."""

    bins = 65536

    def __init__(self) -> None:
        self.pos, self.neg = np.zeros(self.bins, np.int64), np.zeros(self.bins, np.int64)

    def add(self, heat: np.ndarray, inside: np.ndarray) -> None:
        levels = np.clip(np.rint(heat * (self.bins - 1)), 0, self.bins - 1).astype(np.int64).ravel()
        self.pos += np.bincount(levels[inside.ravel()], minlength=self.bins)
        self.neg += np.bincount(levels[~inside.ravel()], minlength=self.bins)

    def auroc(self) -> float | None:
        if self.pos.sum() == 0 or self.neg.sum() == 0:
            return None
        below = np.cumsum(self.neg) - self.neg  # normal pixels strictly below each level
        return float(((below + 0.5 * self.neg) * self.pos).sum() / (self.pos.sum() * self.neg.sum()))


def _pixel_auroc(version: Path, dataset: Path, mask_of: MaskOf) -> dict[str, Any] | None:
    """Pixel AUROC of the version's defect maps against the true defect masks, over its test split
    (None when no defective test frame has a mask): ``{"pooled": AUROC over every test pixel,
    "perfect_frames": the same with the frame's weight taken from the truth instead of the model,
    "by_class": {defect class: {"share": its share of the defective pixels, "within": the mean over
    its frames of each frame's own pixel AUROC, "frames": how many}}}``.

    Why the breakdown: the pooled figure ranks every pixel of every frame against every other, so
    it mixes two things — how suspicious each frame is (the map is weighted by the frame's
    P(anomaly)) and where the defect lies within its frame — and is dominated by the classes with
    the largest defects. ``within`` is the second alone (a frame's pixels ranked among themselves,
    so its weight does not matter), per class; ``share`` says how much the class weighs in the
    pooled figure."""
    import csv

    import onnxruntime as ort

    from inspection.card import load_card
    from inspection.dataset.layout import read_dataset
    from inspection.defectmap import frame_heat
    from inspection.preprocess import read_image, to_model_input

    card = load_card(version)
    if card.defect_map is None:
        return None
    with open(dataset / "labels.csv", newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    with open(version / "split.csv", newline="") as fh:
        test = [r["path"] for r in csv.DictReader(fh) if r["split"] == "test"]
    good = read_dataset(dataset).good_class
    session = ort.InferenceSession(str(version / card.model_file), providers=["CPUExecutionProvider"])
    pooled, truth_weighted = _Ranks(), _Ranks()
    assert card.good_class is not None  # anomaly mode's classes are good / anomaly
    good_index = card.classes.index(card.good_class)
    within: dict[str, list[float]] = {}
    defect_pixels: dict[str, int] = {}
    masks = 0
    for path in test:
        image = read_image(dataset / path)
        h, w = image.shape[:2]
        mask = np.zeros((h, w), bool)
        label = rows[path]["label"]
        if label != good:
            found = mask_of(rows[path], h, w)
            if found is not None:
                mask, masks = found, masks + 1
        pixels = to_model_input(image, card.input)[None]
        probs, heat = (out[0] for out in session.run([card.input.output_name, card.defect_map.output_name],
                                                     {card.input.input_name: pixels}))
        full = frame_heat(heat, card.input, w, h)[::2, ::2]
        # The map is the cells' values times the frame's P(anomaly); undone, and weighted instead by
        # the truth (1 on a defective frame, 0 on a good one), it ranks as with a perfect frame score.
        inside = mask[::2, ::2]
        suspicion = max(1.0 - float(probs[good_index]), 1e-30)
        truth_weighted.add(full / suspicion * float(label != good), inside)
        pooled.add(full, inside)
        if label != good and inside.any():
            frame = _Ranks()
            frame.add(full, inside)
            defect_pixels[label] = defect_pixels.get(label, 0) + int(inside.sum())
            if (auroc := frame.auroc()) is not None:  # None where the mask covers the whole frame
                within.setdefault(label, []).append(auroc)
    if masks == 0 or pooled.auroc() is None:
        return None
    total = sum(defect_pixels.values())
    by_class = {label: {"share": n / total, "within": float(np.mean(within[label])) if label in within else None,
                        "frames": len(within.get(label, []))} for label, n in sorted(defect_pixels.items())}
    return {"pooled": pooled.auroc(), "perfect_frames": truth_weighted.auroc(), "by_class": by_class}


def overkill_target(dataset: Path) -> float:
    """The smallest of 1/2/5% overkill the default split's good validation frames can resolve."""
    from inspection.calibration import needed
    from inspection.dataset.layout import read_dataset
    from inspection.dataset.split import split_counts, split_dataset
    from training.anomaly import ANOMALY, anomaly_view
    from training.config import load_config

    ds = anomaly_view(read_dataset(dataset))
    cfg = load_config(None, {})
    split = split_dataset(ds, seed=cfg.seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                          held_out=[ANOMALY]).split
    good = split_counts(ds.samples, split, ds.classes)["val"][ds.good_class]  # the dataset's name for it
    return next((t for t in (0.01, 0.02, 0.05) if good >= needed(t)), 0.10)


def run_one(dataset: Path, models: Path, name: str, threads: int | None, mask_of: MaskOf) -> dict[str, Any]:
    """Train in anomaly mode with the defaults (called in a child process: its peak memory is its own)."""
    from training.config import load_config
    from training.train import main

    started = time.monotonic()
    target = overkill_target(dataset)
    result = main(load_config(None, {"data": dataset, "models_dir": models, "name": name, "mode": "anomaly",
                                     "max_overkill": target, "progress": False, "threads": threads}))
    card = result.card
    test = card.metrics["test"]
    return {
        "minutes": (time.monotonic() - started) / 60,
        "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024,
        "auroc": test.get("roc_auc"),
        "auroc_ci": (test.get("intervals") or {}).get("roc_auc"),
        "test_units": (test.get("intervals") or {}).get("units"),
        "op": test.get("operating_point"),
        "latency_ms": _latency_ms(result.path / card.model_file, card.input.height, card.input.width,
                                  card.input.channels),
        "input": [card.input.height, card.input.width],
        "epochs": card.training["epochs_run"],
        "best_epoch": card.training["best_epoch"],
        "selection": card.training["anomaly"]["selection"],
        "max_overkill": target,
        "pixel": _pixel_auroc(result.path, dataset, mask_of),
    }


def _rate(r: dict[str, Any] | None) -> str:
    if not r:
        return "n/a"
    return f"{100 * r['rate']:.1f}% ({r['k']}/{r['n']}) [{100 * r['ci_low']:.1f}-{100 * r['ci_high']:.1f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("INSPECTION_SHARED_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--only", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--keep", type=Path, help="keep datasets and models here (default: a temp dir)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
        dataset, models, name = args.child
        mask_of = mt_masks(args.data / "magnetic-tile") if name.endswith("-mt") else coating_masks()
        print("RESULT " + json.dumps(run_one(Path(dataset), Path(models), name, args.threads, mask_of)), flush=True)
        return 0
    if "mt" in args.only and not (args.data / "magnetic-tile").is_dir():
        print(f"error: magnetic tile not found under {args.data} (needed for --only mt)", file=sys.stderr)
        return 2
    from train_quality import import_kind

    work = args.keep or Path(tempfile.mkdtemp(prefix="anomaly-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in args.only:
        dest = work / ("data-magnetic-tile-6" if kind == "mt" else "data-coating")
        if not dest.exists():
            import_kind("mt-6" if kind == "mt" else "coating", args.data, dest)
        cmd = [sys.executable, __file__, "--child", str(dest), str(work / "models"), f"anomaly-{kind}",
               "--data", str(args.data)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{KINDS[kind]}: FAILED\n{out.stderr[-3000:]}", flush=True)
            continue
        row = {"kind": kind, **json.loads(line.removeprefix("RESULT "))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print("| dataset | max overkill | image AUROC [95% CI by units] | escape [95% CI] | overkill [95% CI] | "
          "pixel AUROC | ms/frame (ORT, 1 thread) | minutes | peak GB | input, epochs (best) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        op = r["op"] or {}
        ci = r.get("auroc_ci")
        ci_text = f" [{ci[0]:.3f}-{ci[1]:.3f}] ({r['test_units']} units)" if ci else ""
        print(f"| {KINDS[r['kind']]} | {r['max_overkill']:.0%} | {r['auroc']:.3f}{ci_text} | "
              f"{_rate(op.get('escape'))} | {_rate(op.get('overkill'))} | "
              f"{'n/a (no masks)' if r['pixel'] is None else format(r['pixel']['pooled'], '.3f')} | "
              f"{r['latency_ms']:.2f} | {r['minutes']:.1f} | {r['peak_gb']:.2f} | "
              f"{r['input'][0]}x{r['input'][1]}, {r['epochs']} ({r['best_epoch']}) |")
    for r in rows:
        print(f"{KINDS[r['kind']]}: model selection on {r['selection']}")
        if r["pixel"] is not None:
            parts = ", ".join(f"{label} {100 * c['share']:.0f}% of the defective pixels, "
                              f"{'n/a' if c['within'] is None else format(c['within'], '.2f')}"
                              for label, c in r["pixel"]["by_class"].items())
            print(f"{KINDS[r['kind']]}: pixel AUROC {r['pixel']['pooled']:.3f}; with a perfect frame score "
                  f"{r['pixel']['perfect_frames']:.3f}; within each class's own frames: {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
