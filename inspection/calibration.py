"""The operating point: a reject threshold on P(defect), calibrated on the validation split.

Numpy only, in the torch-free core, because two programs calibrate: training (right after
fitting) and ``inspection models set-threshold`` (later, from the validation scores stored with
the model, without retraining).

Rule for "can validation support the target?" (documented in the card's calibration block):
a target rate ``r`` on ``n`` validation parts can only be resolved when one part moves the rate
by at most ``r``, i.e. ``n >= ceil(1 / r)``. ``--max-escape 0.01`` thus needs at least 100
defective validation images; ``--max-overkill 0.02`` needs at least 50 good ones. Below that,
training refuses up front with ``TrainingError`` (naming the target, the count and the smallest
target the split supports) instead of calibrating a threshold whose promise nobody can check.
This is checked before any training, so the refusal costs seconds, not an hour.

``--allow-unsupported-target`` overrides the refusal: the threshold is still calibrated the same
way, but the card records ``calibration.supported: false`` with the reason, and the training
summary and report print it as a warning. Serving and `inspection models show` can see it.

Thresholds, so that the target holds on the line's next parts, not only on validation:

* ``max_escape = e`` — the highest threshold that passes at most ``k = allowed_misses(e, n_defects)``
  validation defects (the highest threshold = the least overkill at that escape rate),
* ``max_overkill = o`` — the lowest threshold that rejects at most ``allowed_misses(o, n_good)``
  validation good parts (the lowest threshold = the fewest escapes at that overkill rate).

``allowed_misses(r, n) = floor(r * (n + 1)) - 1`` (at least 0), not ``floor(r * n)``: a new
defect that is exchangeable with the ``n`` validation defects (same line, same defect mix) ranks
anywhere among the ``n + 1`` scores with equal chance, so with ``k`` validation defects below the
threshold it passes with probability ``(k + 1) / (n + 1)`` (the split-conformal argument;
Vovk et al., Angelopoulos & Bates). Letting ``floor(r * n)`` through, as this module once did,
promised 1% on 100 validation defects and delivered 2% on the line on average (2 / 101).

Reject when P(defect) >= threshold (ties reject, as ``inspection.decisions`` does).

The price of an escape target: a weak model can meet "1% escape" only by rejecting most good
parts. The evidence therefore always carries the trade-off table (the threshold, escape and
overkill with 95% CIs at escape 0.5/1/2/5/10%), and a ``warning`` when the escape target forces
validation overkill above ``overkill_limit`` (default 20%). The model is still written: the
engineer chooses another operating point with ``inspection models set-threshold``.

Stored scores (``scores.npz`` in the version folder, listed in the card's files): the
validation and test probabilities the threshold was calibrated and measured on, so the
operating point can be moved later without the images or torch. Arrays: ``val_probs``
float32[N, K], ``val_labels`` int64[N] (indices into the card's classes), ``test_probs``,
``test_labels``.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inspection.errors import InspectionError, ModelCardError, TrainingError, ValidationError
from inspection.metrics import Rate, escape_overkill

RULE = "a target rate r on n validation parts needs n >= ceil(1/r): one part must move the rate by at most r"
#: How the threshold is placed (recorded in the card): the target is a promise about new parts.
THRESHOLD_RULE = (
    "at most floor(r*(n+1))-1 of the n validation parts on the wrong side, so that a new part like them "
    "is on the wrong side with probability at most r (split-conformal)"
)
#: Validation overkill above this at the escape target earns a warning (training still writes the model).
DEFAULT_OVERKILL_LIMIT = 0.20
#: Escape levels of the trade-off table: from "almost nothing passes" to "one in ten passes".
TRADEOFF_ESCAPES: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.10)
SCORES_FILE = "scores.npz"
_SCORE_ARRAYS = ("val_probs", "val_labels", "test_probs", "test_labels")
_TRAIN_REMEDY = "or raise --val-fraction / add {what} images"
_KINDS = ("max_escape", "max_overkill")

__all__ = [
    "DEFAULT_OVERKILL_LIMIT", "RULE", "SCORES_FILE", "THRESHOLD_RULE", "TRADEOFF_ESCAPES", "StoredScores",
    "allowed_misses", "calibrate",
    "check_supported", "check_target", "load_scores", "needed", "save_scores", "smallest_supported",
    "threshold_for", "tradeoff_at", "tradeoff_table", "tradeoff_text",
]


def needed(target: float) -> int:
    """Parts needed in validation to resolve ``target``: ceil(1 / target)."""
    return math.ceil(1.0 / target - 1e-9)


def smallest_supported(n: int) -> float | None:
    """The smallest target rate ``n`` validation parts resolve (1/n rounded up to 0.001); None when n == 0."""
    return math.ceil(1000.0 / n) / 1000 if n else None


def check_target(target: dict[str, float]) -> tuple[str, float]:
    """``{"max_escape": 0.01}`` -> ("max_escape", 0.01), refusing anything else.

    Raises:
        ValidationError: not exactly one of max_escape / max_overkill, or a rate outside (0, 1).
    """
    if len(target) != 1 or next(iter(target)) not in _KINDS:
        raise ValidationError(f"target {target!r}: give exactly one of {list(_KINDS)}")
    (kind, rate), = target.items()
    flag = "--" + kind.replace("_", "-")
    if not (isinstance(rate, (int, float)) and 0.0 < rate < 1.0):
        raise ValidationError(f"{flag} {rate!r}: a rate must be between 0 and 1, exclusive (e.g. 0.01 for 1%)")
    return kind, float(rate)


def check_supported(
    target: dict[str, float],
    *,
    n_val_defects: int,
    n_val_good: int,
    remedy: str = _TRAIN_REMEDY,
    error: type[InspectionError] = TrainingError,
) -> None:
    """Refuse a target the validation split cannot support.

    ``remedy`` ends the message (``{what}`` becomes "defective" or "good"); ``error`` is the
    class raised (training refuses with ``TrainingError``, the CLI with ``ValidationError``).

    Raises:
        TrainingError (or ``error``): too few defective (for max_escape) or good (for
            max_overkill) images in validation; the message names the target, the count and
            what is allowed.
    """
    (kind, rate), = target.items()
    n = n_val_defects if kind == "max_escape" else n_val_good
    what = "defective" if kind == "max_escape" else "good"
    flag = "--" + kind.replace("_", "-")
    need = needed(rate)
    if n < need:
        smallest = smallest_supported(n)
        allowed = f"{flag} >= {smallest:g}" if smallest else "no target at all"
        raise error(
            f"{flag} {rate:g} needs at least {need} {what} images in the validation split ({RULE}); "
            f"validation has {n}. Allowed with this split: {allowed}; {remedy.format(what=what)}"
        )


def allowed_misses(rate: float, n: int) -> int:
    """Validation parts a target ``rate`` lets through on ``n``: ``floor(rate * (n + 1)) - 1``, at
    least 0, so that a new part's chance of the same miss, ``(k + 1) / (n + 1)``, is at most
    ``rate`` (module docstring). Where ``n + 1 < 1 / rate`` not even 0 misses keeps that promise:
    0 is returned, and training refuses such a split unless told to go on (``check_supported``)."""
    return max(0, math.floor(rate * (n + 1) + 1e-9) - 1)


def threshold_for(scores: np.ndarray, is_defect: np.ndarray, kind: str, rate: float,
                  forced: np.ndarray | None = None) -> float:
    """The threshold meeting ``{kind: rate}`` on the line's next parts (see the module docstring).

    ``forced``: parts rejected whatever the threshold (a per-class threshold reached): a forced
    defect never escapes, a forced good part is overkill the threshold cannot take back.
    """
    s = np.asarray(scores, dtype=np.float64)
    d = np.asarray(is_defect, dtype=bool)
    f = np.zeros_like(d) if forced is None else np.asarray(forced, dtype=bool)
    if kind == "max_escape":
        k = allowed_misses(rate, int(d.sum()))
        defect_scores = np.sort(s[d & ~f])  # only these can escape
        threshold = float(defect_scores[k]) if k < defect_scores.size else 1.0
    else:
        # What the budget leaves once the forced good parts are counted: none left, reject nothing more.
        k = allowed_misses(rate, int((~d).sum())) - int((~d & f).sum())
        good_scores = np.sort(s[~d & ~f])[::-1]
        # reject when s >= t: the lowest t above the (k+1)-th highest good score.
        if k < 0:
            threshold = 1.0
        else:
            threshold = float(np.nextafter(good_scores[k], np.inf)) if k < good_scores.size else 0.0
    return min(max(threshold, 0.0), 1.0)


def tradeoff_table(
    scores: np.ndarray, is_defect: np.ndarray, *, escapes: Sequence[float] = TRADEOFF_ESCAPES
) -> list[dict[str, Any]]:
    """For each escape level: the threshold meeting it on this split, and the escape and
    overkill it achieves there (with counts and 95% Wilson intervals).

    A level the split cannot resolve (fewer than ``ceil(1/r)`` defects) is still computed but
    marked ``resolvable: False`` with the count it would need: its row promises nothing.

    Raises:
        ValidationError: a level outside (0, 1).
    """
    s = np.asarray(scores, dtype=np.float64)
    d = np.asarray(is_defect, dtype=bool)
    n_def = int(d.sum())
    rows = []
    for level in escapes:
        _, rate = check_target({"max_escape": level})
        t = threshold_for(s, d, "max_escape", rate)
        rates = escape_overkill(d, s >= t)
        rows.append({
            "max_escape": rate,
            "resolvable": n_def >= needed(rate),
            "needed": needed(rate),
            "threshold": t,
            "escape": rates["escape"].as_dict(),
            "overkill": rates["overkill"].as_dict(),
        })
    return rows


def tradeoff_at(table: list[dict[str, Any]], scores: np.ndarray, is_defect: np.ndarray) -> list[dict[str, Any]]:
    """The rows' thresholds (chosen on validation) applied to another split, e.g. test: the
    escape and overkill a quality engineer should expect at each level, with 95% CIs."""
    s = np.asarray(scores, dtype=np.float64)
    d = np.asarray(is_defect, dtype=bool)
    out = []
    for row in table:
        rates = escape_overkill(d, s >= row["threshold"])
        out.append({"max_escape": row["max_escape"], "threshold": row["threshold"],
                    "escape": rates["escape"].as_dict(), "overkill": rates["overkill"].as_dict()})
    return out


def _pct(x: float) -> str:
    return f"{x:.1%}" if x >= 0.001 or x == 0 else f"{x:.2%}"


def _rate_text(r: dict[str, Any]) -> str:
    if not r["n"]:
        return "n/a"
    return f"{_pct(r['rate'])} [{_pct(r['ci_low'])}–{_pct(r['ci_high'])}]"


def tradeoff_text(table: list[dict[str, Any]], *, test: list[dict[str, Any]] | None = None) -> str:
    """The trade-off table as aligned terminal lines (rates with their 95% CIs in brackets);
    ``test`` (from ``tradeoff_at``) adds what the validation thresholds give on test."""
    head = ["max escape", "threshold", "val escape [95% CI]", "val overkill [95% CI]"]
    if test is not None:
        head += ["test escape [95% CI]", "test overkill [95% CI]"]
    rows = [head]
    for i, row in enumerate(table):
        cells = [
            f"{row['max_escape']:g}",
            f"{row['threshold']:.4g}",
            _rate_text(row["escape"]),
            _rate_text(row["overkill"]),
        ]
        if test is not None:
            cells += [_rate_text(test[i]["escape"]), _rate_text(test[i]["overkill"])]
        if not row["resolvable"]:
            cells.append(f"not resolvable: needs >= {row['needed']} validation defects")
        rows.append(cells)
    widths = [max(len(r[c]) for r in rows if c < len(r)) for c in range(len(head))]
    lines = [
        "  ".join(cell.ljust(widths[c]) if c < len(head) else cell for c, cell in enumerate(r)).rstrip() for r in rows
    ]
    return "escape–overkill trade-off (thresholds chosen on validation):\n" + "\n".join("  " + line for line in lines)


def _overkill_warning(rate: float, overkill: Rate, limit: float, table: list[dict[str, Any]], model_id: str) -> str:
    better = [r for r in table if r["resolvable"] and r["overkill"]["n"] and r["overkill"]["rate"] <= limit]
    hint = ""
    if better:
        b = better[0]
        hint = f" (e.g. --max-escape {b['max_escape']:g} gives overkill {_pct(b['overkill']['rate'])} on validation)"
    return (
        f"target escape {_pct(rate)} forces overkill {_pct(overkill.rate)} "
        f"(95% CI {_pct(overkill.ci_low)}–{_pct(overkill.ci_high)}, {overkill.k}/{overkill.n} good parts) "
        "on validation, "
        f"above the limit {_pct(limit)}; choose another operating point with "
        f"`inspection models set-threshold {model_id} --max-escape ...`{hint}, or improve the model"
    )


def calibrate(
    scores: np.ndarray,
    is_defect: np.ndarray,
    target: dict[str, float],
    *,
    allow_unsupported: bool = False,
    overkill_limit: float | None = DEFAULT_OVERKILL_LIMIT,
    model_id: str = "NAME/VERSION",
    escapes: Sequence[float] = TRADEOFF_ESCAPES,
    forced: np.ndarray | None = None,
) -> tuple[float, dict[str, Any]]:
    """Threshold on P(defect) meeting ``target`` on validation, and the calibration evidence.

    ``forced``: the parts the card's per-class thresholds reject whatever the threshold (see
    ``threshold_for``); the evidence's escape and overkill are those of the whole rule. (The
    trade-off table's rows are P(defect) alone.)

    The evidence always holds the trade-off table (``tradeoff``, see ``tradeoff_table``); with
    a ``max_escape`` target whose validation overkill exceeds ``overkill_limit`` it also holds
    ``warning``, a sentence naming the target, the overkill with its CI, the limit and the
    command that moves the operating point (``model_id`` fills it in). ``overkill_limit=None``
    never warns. A ``max_overkill`` target is warned about only where no threshold meets it
    (good parts rejected at any threshold); otherwise the engineer chose the overkill.

    Raises:
        TrainingError: the validation split cannot support the target (see ``check_supported``)
            and ``allow_unsupported`` is False; or validation has no defects (``max_escape``) / no
            good parts (``max_overkill``).
        ValidationError: ``overkill_limit`` outside (0, 1], a malformed target.
    """
    if overkill_limit is not None and not 0.0 < overkill_limit <= 1.0:
        raise ValidationError(f"overkill limit {overkill_limit!r}: allowed (0, 1], or None for no limit")
    kind, rate = check_target(target)
    s = np.asarray(scores, dtype=np.float64)
    d = np.asarray(is_defect, dtype=bool)
    n_def, n_good = int(d.sum()), int((~d).sum())
    unsupported = ""
    try:
        check_supported(target, n_val_defects=n_def, n_val_good=n_good)
    except TrainingError as exc:
        # Too few is allowed when asked, none never: the target's own kind must be there to place
        # the threshold (an overkill target needs no defects, an escape target no good parts).
        if not allow_unsupported or (n_def if kind == "max_escape" else n_good) == 0:
            raise
        unsupported = str(exc)
    f = np.zeros_like(d) if forced is None else np.asarray(forced, dtype=bool)
    threshold = threshold_for(s, d, kind, rate, f)
    rates = escape_overkill(d, (s >= threshold) | f)
    table = tradeoff_table(s, d, escapes=escapes)
    overkill = rates["overkill"]
    warning = ""
    if kind == "max_escape" and overkill_limit is not None and overkill.n and overkill.rate > overkill_limit:
        warning = _overkill_warning(rate, overkill, overkill_limit, table, model_id)
    if kind == "max_overkill" and overkill.k > allowed_misses(rate, n_good):
        # The rule rejects more good parts than the target allows at any threshold: good parts the
        # per-class thresholds take, or scores at 1.0 that no threshold below 1 spares.
        warning = (f"target overkill {_pct(rate)} cannot be met: {overkill.k} of {n_good} good validation parts "
                   f"are rejected at any threshold (per-class thresholds, or P(defect) = 1); "
                   f"lower the per-class thresholds or improve the model")
    evidence = {
        "supported": not unsupported,
        **({"unsupported_reason": unsupported} if unsupported else {}),
        "rule": RULE,
        "threshold_rule": THRESHOLD_RULE,
        "split": "val",
        "n_defects": n_def,
        "n_good": n_good,
        "needed": needed(rate),
        "val_escape": rates["escape"].as_dict(),
        "val_overkill": overkill.as_dict(),
        "overkill_limit": overkill_limit,
        **({"warning": warning} if warning else {}),
        "tradeoff": table,
    }
    return threshold, evidence


# -- stored scores -------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredScores:
    """Validation and test probabilities of a model version, as ``scores.npz`` holds them."""

    val_probs: np.ndarray
    val_labels: np.ndarray
    test_probs: np.ndarray
    test_labels: np.ndarray


def _checked(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray, test_labels: np.ndarray,
             *, n_classes: int | None, where: str) -> StoredScores:
    arrays = {}
    k = None
    for split, probs, labels in (("val", val_probs, val_labels), ("test", test_probs, test_labels)):
        p = np.asarray(probs, dtype=np.float32)
        y = np.asarray(labels)
        if p.ndim != 2 or y.ndim != 1 or len(p) != len(y):
            raise ModelCardError(f"{where}: {split}_probs must be [N, K] and {split}_labels [N], "
                                 f"got {list(p.shape)} and {list(y.shape)}")
        if y.size and not np.issubdtype(y.dtype, np.integer):
            raise ModelCardError(f"{where}: {split}_labels must be integer class indices, got {y.dtype}")
        if k is not None and p.shape[1] != k:
            raise ModelCardError(f"{where}: val_probs has {k} columns, test_probs has {p.shape[1]}")
        k = p.shape[1]
        if n_classes is not None and k != n_classes:
            raise ModelCardError(f"{where}: {split}_probs has {k} columns, the card has {n_classes} classes")
        if y.size and (y.min() < 0 or y.max() >= k):
            raise ModelCardError(f"{where}: {split}_labels has class indices outside 0..{k - 1}")
        if not np.all(np.isfinite(p)):
            raise ModelCardError(f"{where}: {split}_probs holds NaN or infinite values")
        arrays[f"{split}_probs"] = p
        arrays[f"{split}_labels"] = y.astype(np.int64)
    return StoredScores(**arrays)


def save_scores(path: Path, *, val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray,
                test_labels: np.ndarray) -> Path:
    """Write ``scores.npz`` (float32 probabilities, int64 labels); returns the path.

    Raises:
        ModelCardError: shapes that do not fit together (probabilities [N, K], labels [N] in 0..K-1).
    """
    path = Path(path)
    s = _checked(val_probs, val_labels, test_probs, test_labels, n_classes=None, where=str(path))
    np.savez(path, val_probs=s.val_probs, val_labels=s.val_labels, test_probs=s.test_probs, test_labels=s.test_labels)
    return path


def load_scores(path: Path, *, n_classes: int | None = None) -> StoredScores:
    """Read ``scores.npz`` and check it fits a card with ``n_classes`` classes.

    Raises:
        ModelCardError: the file is missing, unreadable, lacks an array, or its shapes/labels do
            not fit together or with ``n_classes``.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [a for a in _SCORE_ARRAYS if a not in data.files]
            if missing:
                raise ModelCardError(f"{path}: stored scores lack {missing}; a scores file holds {list(_SCORE_ARRAYS)}")
            raw = {a: np.asarray(data[a]) for a in _SCORE_ARRAYS}
    except FileNotFoundError:
        raise ModelCardError(f"no stored scores at {path}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelCardError(f"{path}: stored scores cannot be read: {exc}") from None
    return _checked(raw["val_probs"], raw["val_labels"], raw["test_probs"], raw["test_labels"],
                    n_classes=n_classes, where=str(path))


def target_text(target: dict[str, Any] | None) -> str:
    """``{"max_escape": 0.05}`` in words: "escape ≤ 5%" (the report, ``models show``)."""
    if not target:
        return "no target"
    words = {"max_escape": "escape", "max_overkill": "overkill"}
    return ", ".join(f"{words.get(k, k)} ≤ {float(v):.2%}".replace(".00%", "%") for k, v in target.items())
