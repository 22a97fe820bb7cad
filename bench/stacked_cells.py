"""A small line of tall frames, built from a public dataset the recipe was never tuned on.

The quality issue's second unseen line had a few hundred tall frames, about 13% of them
defective; that dataset is not ours to fetch. This script builds a line of that shape from the ELPV
solar-cell set (CC BY-NC-SA 4.0, ``pip download elpv-dataset``; docs/training.md says how): every
frame stacks three 300 x 300 cells of one kind (mono or poly) into 300 x 900, a good frame three
cells labelled 0.0, a defective one a cell labelled 1.0 among two good ones at a random height.
No cell is used twice, so no frame shares a cell with another.

The split is given (a ``split`` column, kept by training): train 244 good + 36 defective and
validation 52 + 8, as a small line's own split would be, and a test of 100 + 100 drawn from the
remaining cells, so the test resolves what the small line's own 60 test frames could not (±0.19
AUROC at 8 defects). Import the CSV as a new user would:

    .venv/bin/python bench/stacked_cells.py --elpv /tmp/elpv/x/elpv_dataset/data --out /tmp/tall/raw
    .venv/bin/inspection dataset import --layout csv /tmp/tall/raw/import.csv --out /tmp/tall/ds --good good
    .venv/bin/python bench/train_quality.py --only --dataset /tmp/tall/ds --threads 2
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import cv2
import numpy as np

#: (split, good frames, defective frames): a small line's train and validation, and a larger test.
PLAN = (("train", 244, 36), ("val", 52, 8), ("test", 100, 100))
CELLS_PER_FRAME = 3


def _cells(elpv: Path, rng: random.Random) -> dict[tuple[str, float], list[str]]:
    """ELPV's cells by (kind, defect probability), shuffled; only the certain labels 0.0 and 1.0."""
    rows = [line.split() for line in (elpv / "labels.csv").read_text().splitlines() if line.strip()]
    cells = {(kind, p): [r[0] for r in rows if r[2] == kind and float(r[1]) == p]
             for kind in ("mono", "poly") for p in (0.0, 1.0)}
    for names in cells.values():
        rng.shuffle(names)
    return cells


def build(elpv: Path, out: Path, seed: int) -> dict[str, tuple[int, int]]:
    """Write the frames and ``import.csv`` under ``out``; returns (good, defective) per split."""
    rng = random.Random(seed)
    cells = _cells(elpv, rng)
    (out / "img").mkdir(parents=True, exist_ok=True)
    lines, made, i = ["path,label,split"], {}, 0
    for split, n_good, n_defect in PLAN:
        for j in range(n_good + n_defect):
            defect = j >= n_good
            kind = "poly" if rng.random() < 0.6 else "mono"
            if len(cells[(kind, 0.0)]) < CELLS_PER_FRAME:
                kind = "mono" if kind == "poly" else "poly"
            names = [cells[(kind, 0.0)].pop() for _ in range(CELLS_PER_FRAME - defect)]
            if defect:
                names.insert(rng.randrange(CELLS_PER_FRAME), cells[(kind, 1.0)].pop())
            frame = np.vstack([cv2.imread(str(elpv / n), cv2.IMREAD_GRAYSCALE) for n in names])
            path = out / "img" / f"f{i:04d}.png"
            i += 1
            cv2.imwrite(str(path), frame)
            lines.append(f"img/{path.name},{'defect' if defect else 'good'},{split}")
        made[split] = (n_good, n_defect)
    (out / "import.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--elpv", type=Path, required=True, help="ELPV's data folder (labels.csv and images/)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if not (args.elpv / "labels.csv").is_file():
        print(f"--elpv {args.elpv}: no labels.csv there (the folder of ELPV's labels.csv and images/)", file=sys.stderr)
        return 2
    try:
        made = build(args.elpv, args.out, args.seed)
    except IndexError:
        print(f"--elpv {args.elpv}: too few cells labelled 0.0 / 1.0 for {PLAN}", file=sys.stderr)
        return 2
    for split, (good, defect) in made.items():
        print(f"{split}: {good} good, {defect} defective")
    print(f"wrote {args.out / 'import.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
