"""Quality figures a quality engineer reads, in numpy only (no torch: serving-side tools reuse it).

Vocabulary:

* **escape rate** — defective parts that were passed / all defective parts (the costly error),
* **overkill rate** — good parts that were rejected / all good parts (the wasteful error),
* every rate comes with a 95% Wilson score interval, because with 40 defects on a test split
  "2.5% escape" means anything from 0.4% to 13%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Z95 = 1.959963984540054


def wilson_interval(k: float, n: float, *, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for a proportion ``k / n``; (0, 1) when ``n == 0``. ``k`` may be
    fractional: a rate over images counted in units is ``rate x units`` successes in ``units``.

    Raises:
        ValueError: ``k`` outside ``0..n`` or ``n`` negative.
    """
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """A proportion with its count and 95% Wilson interval."""

    k: int
    n: int
    rate: float
    ci_low: float
    ci_high: float

    @classmethod
    def of(cls, k: int, n: int) -> Rate:
        lo, hi = wilson_interval(int(k), int(n))
        return cls(int(k), int(n), (k / n) if n else float("nan"), lo, hi)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        if not self.n:
            return "n/a (0 parts)"
        return f"{self.rate:.2%} ({self.k}/{self.n}, 95% CI {self.ci_low:.2%}–{self.ci_high:.2%})"


def escape_overkill(is_defect: np.ndarray, rejected: np.ndarray) -> dict[str, Rate]:
    """Escape rate (defects passed) and overkill rate (good parts rejected).

    Raises:
        ValueError: the two arrays differ in length.
    """
    d = np.asarray(is_defect, dtype=bool)
    r = np.asarray(rejected, dtype=bool)
    if d.shape != r.shape:
        raise ValueError(f"is_defect has shape {d.shape}, rejected has {r.shape}")
    return {
        "escape": Rate.of(int(np.sum(d & ~r)), int(np.sum(d))),
        "overkill": Rate.of(int(np.sum(~d & r)), int(np.sum(~d))),
    }


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int
) -> np.ndarray:
    """``cm[i, j]`` = number of samples of true class ``i`` predicted as ``j``.

    Raises:
        ValueError: a label outside ``0..n_classes-1`` or arrays of different length.
    """
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {t.shape}, y_pred has {p.shape}")
    for name, arr in (("y_true", t), ("y_pred", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise ValueError(f"{name} has labels outside 0..{n_classes - 1}")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def per_class_prf(cm: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    cm = np.asarray(cm)
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(classes):
        tp = float(cm[i, i])
        predicted = float(cm[:, i].sum())
        support = float(cm[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(support)}
    return out


def accuracy(cm: np.ndarray) -> float:
    total = float(np.sum(cm))
    return float(np.trace(cm)) / total if total else float("nan")


def macro_recall(cm: np.ndarray) -> float:
    """Mean per-class recall over classes present in the truth (balanced accuracy)."""
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(cm)[present] / support[present]))


def auroc_standard_error(auroc: float, n_pos: int, n_neg: int) -> float:
    """One standard error of a ROC AUC measured on ``n_pos`` positive and ``n_neg`` negative images
    (Hanley & McNeil 1982); ``inf`` when either class is missing.

    From the counts alone, so it says what a split of that size can tell apart whatever one epoch's
    scores happen to be; on binormal scores it is a little wider than the true scatter (the test
    pins both). 8 defective and 52 good images resolve an AUROC near 0.89 to about ±0.08, 123 and
    286 to about ±0.02.
    """
    if n_pos <= 0 or n_neg <= 0 or not math.isfinite(auroc):
        return math.inf
    a = min(max(auroc, 0.0), 1.0)
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    var = (a * (1.0 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def macro_recall_standard_error(cm: np.ndarray) -> float:
    """One standard error of :func:`macro_recall` from the confusion matrix: the classes' binomial
    errors, averaged (classes absent from the truth count for nothing; ``inf`` when all are)."""
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return math.inf
    r = np.diag(cm)[present] / support[present]
    return float(math.sqrt(float(np.sum(r * (1.0 - r) / support[present]))) / present.sum())


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, thresholds) for "positive when score >= t".

    Positives are ``y_true == 1`` (defects). Thresholds are the distinct scores, descending,
    preceded by +inf so the curve starts at (0, 0).
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], s.size - 1] if s.size else np.array([], dtype=int)
    tps = np.cumsum(y)[distinct] if s.size else np.array([])
    fps = (distinct + 1) - tps
    P, N = int(y.sum()), int((~y).sum())
    tpr = np.r_[0.0, tps / P] if P else np.r_[0.0, np.zeros_like(tps, dtype=float)]
    fpr = np.r_[0.0, fps / N] if N else np.r_[0.0, np.zeros_like(fps, dtype=float)]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when one class is absent."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    P, N = int(y.sum()), int((~y).sum())
    if P == 0 or N == 0:
        return float("nan")
    # Mann–Whitney U with average ranks: exact, handles ties.
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < s.size:
        j = i
        while j + 1 < s.size and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y].sum() - P * (P + 1) / 2.0
    return float(u / (P * N))


def precision_recall_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) for "positive when score >= t", thresholds descending."""
    fpr, tpr, thr = roc_curve(y_true, score)
    y = np.asarray(y_true).astype(bool)
    P, N = int(y.sum()), int((~y).sum())
    tp, fp = tpr[1:] * P, fpr[1:] * N
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 1.0)
    return np.r_[1.0, precision], tpr.copy(), thr


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision–recall curve (step-wise, as sklearn's average_precision)."""
    precision, recall, _ = precision_recall_curve(y_true, score)
    if not np.asarray(y_true).astype(bool).any():
        return float("nan")
    return float(np.sum(np.diff(recall) * precision[1:]))


def classification_summary(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro recall, macro F1, per-class P/R/F1 and the confusion matrix as a dict."""
    cm = confusion_matrix(y_true, y_pred, len(classes))
    prf = per_class_prf(cm, classes)
    present = [v for v in prf.values() if v["support"] > 0]
    return {
        "accuracy": accuracy(cm),
        "macro_recall": macro_recall(cm),
        "macro_f1": float(np.mean([v["f1"] for v in present])) if present else float("nan"),
        "per_class": prf,
        "confusion_matrix": cm.tolist(),
        "n": int(cm.sum()),
    }


# --- How finely a test split can resolve a figure ---------------------------------------------
#
# The split draws *units* (images linked by source, group or duplicates: one physical tile under
# six lightings is one unit), so a test split of 21 images may hold 8 independent parts. Images of
# one unit mostly succeed or fail together, so a per-class figure is resolved by its units, not
# its images. The intervals below count units: the conservative end (a unit's images fully
# correlated), where counting images would be the optimistic one (fully independent).

UNIT_INTERVAL_DRAWS = 100_000
_RECALL_METHOD = "Jeffreys 95% interval on each class's independent units (recall x units successes)"
AUROC_BOOTSTRAP = 2_000


def _units_per_label(labels: np.ndarray, units: np.ndarray) -> dict[int, np.ndarray]:
    """``{label: the distinct units whose images carry it}``."""
    return {int(c): np.unique(units[labels == c]) for c in np.unique(labels)}


def recall_intervals(y_true: np.ndarray, y_pred: np.ndarray, units: np.ndarray, n_classes: int, *,
                     seed: int = 0) -> dict[str, Any]:
    """95% intervals of each class's recall and of the macro recall, counted in units.

    A class's recall ``r`` over images drawn from ``m`` units is taken as ``r × m`` successes in
    ``m`` trials; its interval is the equal-tailed Jeffreys interval (Beta(k + ½, m − k + ½)),
    which, unlike a bootstrap, does not collapse to a point for a class whose few units were all
    right (it reaches 1 there, and 0 for a class wrong on every unit). The macro recall's
    interval comes from the same posterior draws, averaged over the classes present, and holds
    the observed macro recall. Deterministic for a seed.

    Returns ``{"per_class": {index: {"units", "low", "high"}}, "macro_recall": [low, high],
    "method": ...}``; empty per-class and NaN bounds when no class is present.

    Raises:
        ValueError: the three arrays differ in length, or a label is outside ``0..n_classes-1``.
    """
    t, p, u = np.asarray(y_true), np.asarray(y_pred), np.asarray(units)
    if not t.shape == p.shape == u.shape:
        raise ValueError(f"y_true {t.shape}, y_pred {p.shape} and units {u.shape} differ in shape")
    rng = np.random.default_rng(seed)
    per_class: dict[int, dict[str, float]] = {}
    draws = []
    for c, members in _units_per_label(t, u).items():
        if not 0 <= c < n_classes:
            raise ValueError(f"y_true has label {c} outside 0..{n_classes - 1}")
        mask = t == c
        m = len(members)
        k = float(np.mean(p[mask] == c)) * m
        d = rng.beta(k + 0.5, m - k + 0.5, size=UNIT_INTERVAL_DRAWS)
        lo, hi = np.quantile(d, [0.025, 0.975])
        # At the ends the interval reaches them (Brown, Cai & DasGupta's modification): a class
        # right on every unit can be perfect, one wrong on every unit can be hopeless.
        lo, hi = (0.0 if k == 0 else float(lo)), (1.0 if k == m else float(hi))
        per_class[c] = {"units": m, "low": lo, "high": hi}
        draws.append(d)
    if not draws:
        return {"per_class": {}, "macro_recall": [float("nan")] * 2, "method": _RECALL_METHOD}
    lo, hi = (float(v) for v in np.quantile(np.mean(draws, axis=0), [0.025, 0.975]))
    # The posterior sits a little inside the observed figure at the ends; the interval holds it.
    point = float(np.mean([np.mean(p[t == c] == c) for c in per_class]))
    return {"per_class": per_class, "macro_recall": [min(lo, point), max(hi, point)], "method": _RECALL_METHOD}


def _auroc_of_sorted_negatives(neg_sorted: np.ndarray, pos: np.ndarray) -> float:
    # Mann–Whitney U by binary search: negatives below each positive, ties counted one half.
    below = np.searchsorted(neg_sorted, pos, side="left")
    tied = np.searchsorted(neg_sorted, pos, side="right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (len(pos) * len(neg_sorted)))


def auroc_interval(is_defect: np.ndarray, score: np.ndarray, units: np.ndarray, labels: np.ndarray | None = None,
                   *, rounds: int = AUROC_BOOTSTRAP, seed: int = 0) -> list[float]:
    """95% percentile interval of the ROC AUC, resampling whole units (a cluster bootstrap).

    Units are resampled with replacement within each label (``labels``, e.g. the defect type;
    ``is_defect`` when not given), so every resample holds as many units of each kind as the split
    drew. ``[nan, nan]`` when good or defective images are missing. Deterministic for a seed.

    Raises:
        ValueError: the arrays differ in length.
    """
    d = np.asarray(is_defect, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    u = np.asarray(units)
    lab = np.asarray(labels) if labels is not None else d.astype(np.int64)
    if not d.shape == s.shape == u.shape == lab.shape:
        raise ValueError(
            f"is_defect {d.shape}, score {s.shape}, units {u.shape} and labels {lab.shape} differ in shape"
        )
    if d.all() or not d.any():
        return [float("nan"), float("nan")]
    # Each unit's images, by position, so a resample is a concatenation of index blocks.
    _, unit_index = np.unique(u, return_inverse=True)
    blocks = [np.flatnonzero(unit_index == i) for i in range(unit_index.max() + 1)]
    strata = [[b for b in blocks if lab[b[0]] == c] for c in np.unique(lab)]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        picked = np.concatenate([blocks_of[j] for blocks_of in strata
                                 for j in rng.integers(0, len(blocks_of), len(blocks_of))])
        dd, ss = d[picked], s[picked]
        if dd.all() or not dd.any():  # only where a unit mixes good and defective images
            continue
        values.append(_auroc_of_sorted_negatives(np.sort(ss[~dd]), ss[dd]))
    lo, hi = np.quantile(values, [0.025, 0.975])
    return [float(lo), float(hi)]
