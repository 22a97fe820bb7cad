"""Two model versions scored on the same held-out images, side by side (no torch).

``compare_models(a, b, dataset)`` runs both ONNX models with onnxruntime (imported lazily) on
the dataset's test split (or every image with ``split="all"``), each image preprocessed by
``inspection.preprocess`` as each model's card says, and applies each model's *own* operating
point (``inspection.decisions.reject_mask``: its threshold and per-class thresholds). It reports

* escape rate (defective images passed / defective images) and overkill rate (good images
  rejected / good images), each with its 95% Wilson interval;
* per-class recall at the operating point: for a defect class the share of its images that are
  rejected (a model that never saw the class can still reject it as "some defect"), for the
  good class the share passed; plus the classification recall (arg-max is the class);
* for each figure the difference B - A with a 95% interval for a difference of *paired*
  proportions (Newcombe 1998, method 10: both models judge the same images, so their errors
  are correlated and an unpaired interval would be too wide).

Every interval counts the comparison images' *units*, as the training split draws them
(``inspection.dataset.split``: images linked by ``source``, ``group``, exact or near duplicates):
the views of one part, or copies of one frame, mostly pass or fail together, so counting them as
independent images would claim a precision the set does not have (a rate ``r`` over images of
``u`` units is ``r x u`` successes in ``u`` trials, the conservative end, as in
``inspection.metrics``). Where every image is its own unit this is the usual interval.

The classes come from the dataset; a model may know fewer or more classes than it has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from inspection.card import ModelCard
from inspection.dataset.duplicates import find_duplicates, read_signatures
from inspection.dataset.layout import Dataset, Sample, read_dataset
from inspection.dataset.split import split_groups
from inspection.decisions import reject_mask
from inspection.errors import DatasetError, ModelError
from inspection.metrics import Rate, wilson_interval
from inspection.registry import ModelVersion

Split = Literal["test", "all"]


def paired_difference(first: np.ndarray, second: np.ndarray, units: np.ndarray | None = None) -> dict[str, float]:
    """Difference of two paired proportions (mean(second) - mean(first)) with a 95% interval.

    ``first`` and ``second`` are booleans for the same items. Newcombe's hybrid score method
    10 (Wilson intervals of each proportion, combined with the phi correlation of the pairs).
    With ``units`` (each item's unit), the four kinds of pair are counted in units: their shares
    of the items times the number of distinct units (see the module docstring).

    Raises:
        ValueError: arrays of different length.
    """
    x = np.asarray(first, dtype=bool)
    y = np.asarray(second, dtype=bool)
    if x.shape != y.shape or (units is not None and np.shape(units) != x.shape):
        raise ValueError(f"paired arrays differ in shape: {x.shape} vs {y.shape}"
                         + ("" if units is None else f" (units {np.shape(units)})"))
    n = int(x.size)
    m = n if units is None else len(np.unique(units))
    if n == 0:
        return {"value": float("nan"), "ci_low": -1.0, "ci_high": 1.0, "n": 0, "units": 0}
    scale = m / n
    a = float(np.sum(x & y)) * scale
    b = float(np.sum(x & ~y)) * scale
    c = float(np.sum(~x & y)) * scale
    d = float(np.sum(~x & ~y)) * scale
    p1, p2 = (a + b) / m, (a + c) / m
    l1, u1 = wilson_interval(a + b, m)
    l2, u2 = wilson_interval(a + c, m)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(denom) if denom > 0 else 0.0
    theta = p2 - p1
    # Interval for p2 - p1: swap roles in Newcombe's formulas (written there for p1 - p2).
    dl = math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    du = math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return {"value": theta, "ci_low": max(-1.0, theta - dl), "ci_high": min(1.0, theta + du), "n": n, "units": m}


@dataclass
class ModelScores:
    """One model on the comparison images."""

    model_id: str
    card: ModelCard
    probs: np.ndarray
    rejected: np.ndarray
    predicted: list[str]


@dataclass
class Comparison:
    """The report of ``compare_models``: A is the reference (e.g. active), B the candidate."""

    dataset: str
    dataset_fingerprint: str
    split: str
    n: int
    units: int
    classes: list[str]
    good_class: str
    a: str
    b: str
    escape: dict[str, Any]
    overkill: dict[str, Any]
    per_class: dict[str, dict[str, Any]]
    thresholds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "dataset_fingerprint": self.dataset_fingerprint, "split": self.split,
                "n": self.n, "units": self.units, "classes": self.classes, "good_class": self.good_class,
                "a": self.a, "b": self.b, "thresholds": self.thresholds, "escape": self.escape,
                "overkill": self.overkill, "per_class": self.per_class}


def comparison_samples(ds: Dataset, split: Split) -> list[Sample]:
    """The dataset's test split (or all of it).

    Raises:
        DatasetError: no good class (escape/overkill need one) or an empty selection.
    """
    if ds.good_class is None:
        raise DatasetError(f"dataset {ds.name!r} has no good class; escape and overkill rates need one")
    if split not in ("test", "all"):
        raise DatasetError(f"split {split!r} is not one of ['test', 'all']")
    samples = [s for s in ds.samples if split == "all" or s.split == "test"]
    if not samples:
        raise DatasetError(f"dataset {ds.name!r} has no images with split 'test' (a comparison needs a held-out test "
                           "split: use a version made by `inspection dataset build`, or pass --split all)")
    return samples


def comparison_units(ds: Dataset, samples: list[Sample]) -> np.ndarray:
    """The unit of each of ``samples`` (an index, in order), drawn as the training split draws
    them: images linked by ``source``, ``group``, exact or near duplicates (decodes each image once).

    Raises:
        DatasetError: an image cannot be read or decoded (all named).
    """
    groups = split_groups(samples, together=find_duplicates(read_signatures(ds, samples)).together())
    unit_of = {s.path: i for i, members in enumerate(groups) for s in members}
    return np.array([unit_of[s.path] for s in samples], dtype=np.int64)


def score_model(mv: ModelVersion, ds: Dataset, samples: list[Sample], *, batch: int = 64) -> ModelScores:
    """Probabilities and decisions of one model version on ``samples``.

    Raises:
        ModelError: onnxruntime cannot load or run the model.
        DatasetError / ImageError: an image is missing or unreadable.
    """
    import onnxruntime as ort

    from inspection.preprocess import read_image, to_model_input

    card = mv.card
    spec = card.input
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(Path(mv.path) / card.model_file), sess_options=opts,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 -- onnxruntime raises untyped errors
        raise ModelError(f"{mv.model_id}: onnxruntime cannot load {card.model_file}: {exc}") from None
    out: list[np.ndarray] = []
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        pixels = np.stack([to_model_input(read_image(ds.path_of(s)), spec, source=s.path) for s in chunk])
        try:
            out.append(session.run([spec.output_name], {spec.input_name: pixels})[0])
        except Exception as exc:  # noqa: BLE001 -- onnxruntime raises untyped errors
            raise ModelError(f"{mv.model_id}: onnxruntime failed on {len(chunk)} images: {exc}") from None
    probs = np.concatenate(out) if out else np.zeros((0, len(card.classes)), dtype=np.float32)
    rejected = reject_mask(probs, card)
    predicted = [card.classes[i] for i in probs.argmax(1)] if len(probs) else []
    return ModelScores(mv.model_id, card, probs, rejected, predicted)


def _rate(mask: np.ndarray, units: np.ndarray) -> dict[str, Any]:
    """The rate over images, its 95% interval counted in ``units`` (the images' units)."""
    k, n = int(np.sum(mask)), int(mask.size)
    m = len(np.unique(units))
    low, high = wilson_interval(k / n * m, m) if n else wilson_interval(0, 0)
    return {**Rate(k, n, k / n if n else float("nan"), low, high).as_dict(), "units": m}


def compare_scores(a: ModelScores, b: ModelScores, ds: Dataset, samples: list[Sample], split: str,
                   units: np.ndarray | None = None) -> Comparison:
    """The comparison report from two models' scores on the same ``samples`` (``units``: each
    sample's unit, ``comparison_units``; every image its own where not given)."""
    units = np.arange(len(samples)) if units is None else np.asarray(units)
    good = ds.good_class
    assert good is not None  # comparison_samples refuses datasets without one
    truth = np.array([s.label for s in samples])
    is_defect = truth != good
    escaped_a, escaped_b = ~a.rejected[is_defect], ~b.rejected[is_defect]
    over_a, over_b = a.rejected[~is_defect], b.rejected[~is_defect]
    du, gu = units[is_defect], units[~is_defect]
    per_class: dict[str, dict[str, Any]] = {}
    for cls in ds.classes:
        m = truth == cls
        if cls == good:
            ok_a, ok_b = ~a.rejected[m], ~b.rejected[m]
        else:
            ok_a, ok_b = a.rejected[m], b.rejected[m]
        u = units[m]
        cls_a = np.array([p == cls for p, keep in zip(a.predicted, m) if keep], dtype=bool)
        cls_b = np.array([p == cls for p, keep in zip(b.predicted, m) if keep], dtype=bool)
        per_class[cls] = {
            "n": int(m.sum()), "kind": "good (recall = passed)" if cls == good else "defect (recall = rejected)",
            "a": _rate(ok_a, u), "b": _rate(ok_b, u), "diff": paired_difference(ok_a, ok_b, u),
            "classified_a": _rate(cls_a, u), "classified_b": _rate(cls_b, u),
            "known_to_a": cls in a.card.classes, "known_to_b": cls in b.card.classes,
        }
    return Comparison(
        dataset=ds.name, dataset_fingerprint=ds.fingerprint, split=split, n=len(samples),
        units=len(np.unique(units)), classes=list(ds.classes), good_class=good, a=a.model_id, b=b.model_id,
        escape={"a": _rate(escaped_a, du), "b": _rate(escaped_b, du),
                "diff": paired_difference(escaped_a, escaped_b, du)},
        overkill={"a": _rate(over_a, gu), "b": _rate(over_b, gu), "diff": paired_difference(over_a, over_b, gu)},
        per_class=per_class,
        thresholds={a.model_id: a.card.thresholds.reject, b.model_id: b.card.thresholds.reject},
    )


def compare_models(a: ModelVersion, b: ModelVersion, data: Path, *, split: Split = "test") -> Comparison:
    """Score ``a`` and ``b`` on the same images of ``data`` (see the module docstring).

    Raises:
        DatasetError: unreadable dataset, no good class, empty split.
        ModelError: a model cannot be run.
    """
    ds = read_dataset(data)
    samples = comparison_samples(ds, split)
    return compare_scores(score_model(a, ds, samples), score_model(b, ds, samples), ds, samples, split,
                          comparison_units(ds, samples))


def _pct(r: dict[str, Any]) -> str:
    if not r["n"]:
        return "n/a (0 images)"
    units = f" of {r['units']} units" if r.get("units", r["n"]) < r["n"] else ""
    return f"{r['rate']:7.2%} ({r['k']}/{r['n']}{units}, {r['ci_low']:.1%}–{r['ci_high']:.1%})"


def _diff(d: dict[str, Any]) -> str:
    if not d["n"]:
        return "n/a"
    return f"{d['value'] * 100:+.1f} pts (95% CI {d['ci_low'] * 100:+.1f} to {d['ci_high'] * 100:+.1f})"


def format_comparison(c: Comparison) -> str:
    """The report as text for the CLI (rates with 95% intervals; differences B - A)."""
    w = max(len(c.a), len(c.b), 10)
    lines = [
        (f"comparison on {c.dataset} ({c.dataset_fingerprint[:12]}…), split {c.split}: {c.n} images of {c.units} "
         "units (images linked by source, group or duplicates; the 95% intervals count units)"),
        (
            f"A = {c.a} (threshold {c.thresholds.get(c.a, float('nan')):.4g})   "
            f"B = {c.b} (threshold {c.thresholds.get(c.b, float('nan')):.4g}); each at its own operating point"
        ),
        "",
        f"{'':22s} {'A':<{w + 40}s} {'B':<{w + 40}s} B - A",
        (f"{'escape rate':22s} {_pct(c.escape['a']):<{w + 40}s} {_pct(c.escape['b']):<{w + 40}s} "
         f"{_diff(c.escape['diff'])}"),
        (f"{'overkill rate':22s} {_pct(c.overkill['a']):<{w + 40}s} {_pct(c.overkill['b']):<{w + 40}s} "
         f"{_diff(c.overkill['diff'])}"),
        "recall at the operating point (defect: rejected, good: passed):",
    ]
    for cls, r in c.per_class.items():
        note = "" if r["known_to_a"] and r["known_to_b"] else "  (unknown to " + " and ".join(
            m for m, k in (("A", r["known_to_a"]), ("B", r["known_to_b"])) if not k) + ")"
        lines.append(f"  {cls:20s} {_pct(r['a']):<{w + 40}s} {_pct(r['b']):<{w + 40}s} {_diff(r['diff'])}{note}")
    return "\n".join(lines)
