"""How well could *any* detector do on the generated coating set? An ideal-observer bound.

The generated set (``inspection.dataset.synthetic``) draws some defects close to the noise level
on purpose. This script asks how close: for every defective frame of the default set (seed 0,
500 defects) it takes the defect's exact signal (the frame minus its good twin: the generator
draws surface, defect and sensor from separate streams, so the two frames of one ``(seed, index)``
differ only by the defect) and the frame's own noise spectrum (the good twin, illumination
removed by a quadratic fit, Hann-windowed periodogram smoothed over 5 x 5 frequency bins), and
computes the prewhitened matched-filter detectability ``d'^2 = sum |S(f)|^2 / P(f)``.

For a detector that knows *which* defect, *where* and of *what shape*, in Gaussian noise of that
spectrum, the Neyman-Pearson lemma bounds the detection rate at overkill (false-alarm rate)
``a`` by ``Phi(d' - z_{1-a})``. A real detector knows none of this, so its escape rate at
overkill ``a`` can only be higher than ``mean(1 - Phi(d' - z_{1-a}))``. The estimate leans the
optimistic way (the quadratic fit removes illumination the detector would have to guess; the
frame's own spectrum is known exactly), so an escape floor it prints is a floor.

Run (a few seconds, numpy + OpenCV only):

    .venv/bin/python bench/coating_limit.py [--seed 0] [--size 128]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from statistics import NormalDist

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inspection.dataset.synthetic import GOOD_CLASS, plan_labels, render_image

OVERKILLS = (0.01, 0.02, 0.05, 0.10, 0.20)
ESCAPES = (0.02, 0.05)
_N = NormalDist()


def _detrend(frame: np.ndarray) -> np.ndarray:
    """The frame minus its least-squares quadratic surface (the slow illumination field)."""
    h, w = frame.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = xx / w - 0.5, yy / h - 0.5
    basis = np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], axis=-1).reshape(-1, 6)
    coef, *_ = np.linalg.lstsq(basis, frame.reshape(-1), rcond=None)
    return frame - (basis @ coef).reshape(h, w)


def noise_spectrum(good: np.ndarray) -> np.ndarray:
    """``E|FFT(n)|^2`` of the frame's nuisance, estimated from its good twin."""
    h, w = good.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    periodogram = np.abs(np.fft.fft2(_detrend(good) * window)) ** 2 / np.mean(window**2)
    # Smooth over neighbouring frequencies (wrap-around: the spectrum is periodic).
    smooth = cv2.blur(np.fft.fftshift(periodogram), (5, 5), borderType=cv2.BORDER_WRAP)
    return np.maximum(np.fft.ifftshift(smooth), 1e-9)


def detectability(defective: np.ndarray, good: np.ndarray) -> float:
    """``d'`` of the defect (``defective - good``) against the good twin's noise spectrum."""
    signal = np.fft.fft2(defective - good)
    return float(np.sqrt(np.sum(np.abs(signal) ** 2 / noise_spectrum(good))))


def escape_floor(d: np.ndarray, overkill: float, positions: int = 1) -> float:
    """Mean miss rate at ``overkill`` of matched filters of detectability ``d`` scanned over ``positions``."""
    z = _N.inv_cdf(1.0 - overkill / positions)
    return float(np.mean([1.0 - _N.cdf(v - z) for v in d]))


def overkill_floor(d: np.ndarray, escape: float, positions: int = 1) -> float:
    """The smallest overkill at which the detector's escape falls to ``escape`` (bisection)."""
    lo, hi = 1e-9, 1.0 - 1e-9
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if escape_floor(d, mid, positions) <= escape else (mid, hi)
    return hi


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--n-good", type=int, default=500)
    parser.add_argument("--n-per-defect", type=int, default=100)
    args = parser.parse_args()
    per_class: dict[str, list[float]] = defaultdict(list)
    for index, label in enumerate(plan_labels(args.seed, args.n_good, args.n_per_defect)):
        if label == GOOD_CLASS:
            continue
        good = render_image(GOOD_CLASS, seed=args.seed, index=index, size=args.size).astype(np.float64)
        bad = render_image(label, seed=args.seed, index=index, size=args.size).astype(np.float64)
        per_class[label].append(detectability(bad, good))
    everything = np.concatenate([np.asarray(v) for v in per_class.values()])
    print(f"generated coating set, seed {args.seed}, {args.size} px: {len(everything)} defective frames")
    positions = args.size * args.size
    print("escape at a given overkill: ideal observer (knows each defect's shape and place) = a floor for any")
    print(f"detector; scan (knows the shape, not the place: {positions} positions) = what the data leaves room for")
    header = " | ".join(f"overkill {a:.0%}" for a in OVERKILLS)
    print(f"| defects | d' min | d' 5th pct | d' median | | {header} |")
    print("|---|---|---|---|---|" + "---|" * len(OVERKILLS))
    for name, values in [*sorted(per_class.items()), ("all", list(everything))]:
        d = np.asarray(values)
        stats = f"| {name} ({len(d)}) | {d.min():.1f} | {np.percentile(d, 5):.1f} | {np.median(d):.1f}"
        for kind, n in (("ideal", 1), ("scan", positions)):
            print(f"{stats} | {kind} | " + " | ".join(f"{escape_floor(d, a, n):.2%}" for a in OVERKILLS) + " |")
    for e in ESCAPES:
        print(
            f"lowest overkill at {e:.0%} escape: ideal observer {overkill_floor(everything, e):.2%}, "
            f"scan {overkill_floor(everything, e, positions):.2%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
