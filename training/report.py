"""The evaluation report a quality engineer reads: one self-contained ``report.html``.

One file, plots and thumbnails embedded as data URIs, because the report is e-mailed and
attached to change requests: separate PNGs get lost on the way.

Contents: escape and overkill rates at the operating point with 95% Wilson intervals, a red
warning when a test figure misses the target the threshold was calibrated for, the calibration
warning (in red) when the escape target costs more overkill than the limit, the confusion at
the operating point (pass/reject x good/defect: the figures the line lives with) beside the
per-class matrix (top-1), escape per defect class with CIs, galleries of the test escapes and
overkills (what the model saw, with scores), the escape–overkill trade-off table (thresholds
chosen on validation; validation and test rates with CIs) and the full escape–overkill curve on
validation and test, per-class precision/recall/F1, ROC and precision–recall curves for defect
vs good (only for models with a good class), and the training history.

Why one module over 400 lines: the report is one HTML document whose sections share the
figures computed once in ``write_report``; split, each part would recompute or pass them all.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inspection import metrics
from inspection.calibration import target_text, tradeoff_at, tradeoff_text

#: Thumbnails per gallery (escapes, overkills): the worst first; enough to see a pattern.
GALLERY_MAX = 24
#: A thumbnail's longer side in pixels.
THUMB_PX = 112


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on a build server or line PC
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path | io.BytesIO) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(classes), 0.8 + 0.7 * len(classes)), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    vmax = cm.max() if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > vmax / 2 else "black")
    ax.set_title("confusion matrix (test)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_roc(is_defect: np.ndarray, score: np.ndarray, threshold: float, path: Path | io.BytesIO) -> None:
    plt = _plt()
    fpr, tpr, _ = metrics.roc_curve(is_defect, score)
    auc = metrics.roc_auc(is_defect, score)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(fpr, tpr, label=f"AUC {auc:.4f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    op = metrics.escape_overkill(is_defect, score >= threshold)
    ax.plot(
        [op["overkill"].rate], [1 - op["escape"].rate], "o", color="red", label=f"operating point t={threshold:.3g}"
    )
    ax.set_xlabel("overkill rate (good rejected)")
    ax.set_ylabel("1 - escape rate (defects caught)")
    ax.set_title("ROC, defect vs good (test)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_pr(is_defect: np.ndarray, score: np.ndarray, path: Path | io.BytesIO) -> None:
    plt = _plt()
    precision, recall, _ = metrics.precision_recall_curve(is_defect, score)
    ap = metrics.average_precision(is_defect, score)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.step(recall, precision, where="post", label=f"AP {ap:.4f}")
    ax.set_xlabel("recall (defects caught)")
    ax.set_ylabel("precision (rejects that are defects)")
    ax.set_ylim(0, 1.02)
    ax.set_title("precision–recall, defect vs good (test)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def escape_overkill_curve(is_defect: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(escape, overkill, thresholds) for "reject when score >= t" at every distinct score.

    Escape is 1 - the ROC's true-positive rate, overkill its false-positive rate: the same curve
    read the way the line reads it.
    """
    fpr, tpr, thresholds = metrics.roc_curve(is_defect, score)
    return 1.0 - tpr, fpr, thresholds


def plot_escape_overkill(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    threshold: float,
    tradeoff: list[dict[str, Any]],
    path: Path | io.BytesIO,
) -> None:
    """Escape (x, symlog) against overkill (y) per split, the operating point and the table's levels."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 4.5), dpi=100)
    for split, (is_defect, score) in curves.items():
        escape, overkill, _ = escape_overkill_curve(is_defect, score)
        line = ax.step(escape, overkill, where="post", label=f"{split} (n={len(score)})")[0]
        op = metrics.escape_overkill(is_defect, score >= threshold)
        ax.plot(
            [op["escape"].rate], [op["overkill"].rate], "o", color=line.get_color(), markeredgecolor="red", markersize=8
        )
    for row in tradeoff:
        ax.axvline(row["max_escape"], color="grey", linestyle=":", linewidth=0.8)
    ax.plot([], [], "o", color="white", markeredgecolor="red", label=f"operating point t={threshold:.3g}")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("escape rate (defects passed); dotted: trade-off table levels")
    ax.set_ylabel("overkill rate (good rejected)")
    ax.set_title("escape–overkill trade-off")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _rate_cell(r: dict[str, Any], *, none: str = "n/a") -> str:
    if not r["n"]:
        return none
    return f"{r['rate']:.2%} ({r['k']}/{r['n']}; 95% CI {r['ci_low']:.2%}–{r['ci_high']:.2%})"


def _embed(plot: Any, *args: Any) -> str:
    """``plot(*args, buffer)`` drawn into a PNG data URI."""
    buf = io.BytesIO()
    plot(*args, buf)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumbnail(image: np.ndarray) -> str:
    """A model input (``uint8[C, H, W]``, what the model saw) as a small PNG data URI."""
    import cv2

    hwc = np.ascontiguousarray(np.transpose(image, (1, 2, 0)))
    if hwc.shape[2] == 3:
        hwc = cv2.cvtColor(hwc, cv2.COLOR_RGB2BGR)
    scale = THUMB_PX / max(hwc.shape[:2])
    if scale < 1:
        hwc = cv2.resize(hwc, (max(1, round(hwc.shape[1] * scale)), max(1, round(hwc.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
    ok, png = cv2.imencode(".png", hwc)
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii") if ok else ""


def target_misses(target: dict[str, Any] | None, op: dict[str, Any]) -> list[str]:
    """What the test split says about the target the threshold was calibrated for on validation:
    one sentence per figure that misses it (empty when the test figures meet it)."""
    misses = []
    for key, word in (("max_escape", "escape"), ("max_overkill", "overkill")):
        limit = (target or {}).get(key)
        r = op.get(word)
        if limit is None or not r or not r["n"] or r["rate"] <= limit:
            continue
        sure = (" — the whole 95% interval is above it, so the miss is not chance"
                if r["ci_low"] > limit else " (within the 95% interval, a larger test split would tell)")
        misses.append(f"test {word} {r['rate']:.2%} ({r['k']}/{r['n']}) misses the target {word} ≤ {limit:.2%}"
                      f"{sure}")
    return misses


def write_report(
    folder: Path,
    *,
    title: str,
    classes: list[str],
    good_class: str | None,
    y_true: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    test_metrics: dict[str, Any],
    calibration: dict[str, Any],
    history: list[dict[str, float]],
    val_labels: np.ndarray | None = None,
    val_probs: np.ndarray | None = None,
    images: np.ndarray | None = None,
    names: Sequence[str] | None = None,
) -> list[str]:
    """Write the self-contained ``report.html`` into ``folder``; returns the file names written.

    ``y_true``/``probs`` are the test split's; ``val_labels``/``val_probs`` (the split the
    threshold was calibrated on) add the validation curve to the escape–overkill plot.
    ``calibration`` is ``inspection.calibration.calibrate``'s evidence: its ``target``,
    ``tradeoff`` table and ``warning`` are shown when present. ``images`` (the test split's model
    inputs, ``uint8[N, C, H, W]``) and ``names`` (their dataset paths) fill the galleries of
    escapes and overkills.
    """
    folder = Path(folder)
    cm = np.asarray(test_metrics["confusion_matrix"])
    esc = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
        (
            "<style>body{font-family:sans-serif;margin:2em;max-width:70em}td,th{padding:2px 8px;text-align:right}"
            "th:first-child,td:first-child{text-align:left}table{border-collapse:collapse}"
            "tr:nth-child(even){background:#f3f3f3}.warn{color:#b00;border:2px solid #b00;padding:6px}"
            "figure{display:inline-block;margin:4px;font-size:12px;text-align:center;width:130px}"
            "figure img{image-rendering:pixelated;border:1px solid #999}</style>"
        ),
        f"</head><body><h1>{esc(title)}</h1>",
    ]
    target = calibration.get("target") or {}
    misses = target_misses(target, test_metrics.get("operating_point", {})) if good_class is not None else []
    for miss in misses:
        parts.append(f"<p class='warn'><b>TEST MISSES THE TARGET:</b> {esc(miss)}.</p>")
    warning = calibration.get("warning")
    if warning:
        parts.append(f"<p class='warn'><b>WARNING:</b> {esc(warning)}</p>")
    if good_class is not None:
        gi = classes.index(good_class)
        is_defect = y_true != gi
        score = 1.0 - probs[:, gi]
        rejected = score >= threshold
        curves = {}
        if val_labels is not None and val_probs is not None:
            curves["validation"] = (np.asarray(val_labels) != gi, 1.0 - np.asarray(val_probs)[:, gi])
        curves["test"] = (is_defect, score)
        tradeoff = calibration.get("tradeoff", [])
        op = test_metrics["operating_point"]
        parts.append("<h2>Operating point (test split)</h2><table>")
        parts.append(f"<tr><td>reject when P(defect) ≥</td><td>{threshold:.4f}</td></tr>")
        parts.append(f"<tr><td>calibrated for</td><td>{esc(target_text(target))} on the validation split</td></tr>")
        if not calibration.get("supported", True):
            parts.append(
                f"<tr><td colspan=2 style='color:#b00;text-align:left'><b>NOT SUPPORTED:</b> "
                f"{esc(calibration.get('unsupported_reason', ''))}</td></tr>"
            )
        parts.append(f"<tr><td><b>escape rate</b> (defects passed)</td>"
                     f"<td>{_rate_cell(op['escape'], none=_NO_DEFECT)}</td></tr>")
        parts.append(f"<tr><td><b>overkill rate</b> (good rejected)</td>"
                     f"<td>{_rate_cell(op['overkill'], none=_NO_GOOD)}</td></tr>")
        parts.append(f"<tr><td>ROC AUC defect vs good</td><td>{_score_text(test_metrics['roc_auc'])}"
                     f"{_interval_text(test_metrics, 'roc_auc')}</td></tr>")
        parts.append(f"<tr><td>average precision</td><td>{_score_text(test_metrics['average_precision'])}"
                     "</td></tr></table>")
        parts.append(
            "<p>The interval is how sure the figure is: with few defects on the test split a low escape rate is "
            "compatible with a much higher true rate.</p>"
        )
        parts.append(_decision_confusion_html(is_defect, rejected))
        parts.append(_escape_per_class_html(classes, gi, y_true, rejected))
        if images is not None:
            parts.append(_gallery_html("Escapes (defects passed)", np.flatnonzero(is_defect & ~rejected),
                                       score, images, names, classes, y_true, score))
            parts.append(_gallery_html("Overkills (good parts rejected)", np.flatnonzero(~is_defect & rejected),
                                       -score, images, names, classes, y_true, score))
        if tradeoff:
            parts.append(
                _tradeoff_html(
                    tradeoff,
                    test_metrics.get("tradeoff") or tradeoff_at(tradeoff, score, is_defect),
                    calibration.get("overkill_limit"),
                )
            )
        parts.append(f"<img src='{_embed(plot_escape_overkill, curves, threshold, tradeoff)}' "
                     "alt='escape-overkill curve'><br>")
        parts.append(f"<img src='{_embed(plot_roc, is_defect, score, threshold)}' alt='ROC'> "
                     f"<img src='{_embed(plot_pr, is_defect, score)}' alt='precision-recall'>")
    with_units = "intervals" in test_metrics
    parts.append(
        "<h2>Per class (test split, top-1 class)</h2><table><tr><th>class</th><th>precision</th><th>recall</th>"
        + ("<th>recall 95% CI</th>" if with_units else "")
        + "<th>F1</th><th>support (images)</th>" + ("<th>independent units</th>" if with_units else "") + "</tr>"
    )
    for name, v in test_metrics["per_class"].items():
        ci = v.get("recall_ci")
        parts.append(
            f"<tr><td>{esc(name)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td>"
            + ((f"<td>{ci[0]:.2f}–{ci[1]:.2f}</td>" if ci else "<td>–</td>") if with_units else "")
            + f"<td>{v['f1']:.3f}</td><td>{v['support']}</td>"
            + (f"<td>{v.get('units', 0)}</td>" if with_units else "") + "</tr>"
        )
    parts.append(
        f"</table><p>accuracy {test_metrics['accuracy']:.4f}, macro recall {test_metrics['macro_recall']:.4f}"
        f"{_interval_text(test_metrics, 'macro_recall')}, macro F1 {test_metrics['macro_f1']:.4f}</p>"
    )
    if with_units:
        parts.append(
            f"<p>The test split holds {test_metrics['intervals']['units']} independent units (images the split drew "
            "together: views of one part, one group, duplicates). Images of one unit mostly succeed or fail "
            "together, so the intervals count units, not images: a class seen on three parts is resolved to "
            "a third, however many images show them.</p>"
        )
    parts.append("<p>The matrix counts the top-1 class, not the reject rule: a part whose top class is good can "
                 "still be rejected at the threshold (the operating-point table above is what the line does).</p>")
    parts.append(f"<img src='{_embed(plot_confusion, cm, classes)}' alt='confusion matrix (top-1 class)'>")
    if history:
        parts.append(
            "<h2>Training history</h2><table><tr>" + "".join(f"<th>{esc(k)}</th>" for k in history[0]) + "</tr>"
        )
        for row in history:
            parts.append(
                "<tr>"
                + "".join(f"<td>{v:.4g}</td>" if isinstance(v, float) else f"<td>{v}</td>" for v in row.values())
                + "</tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>\n")
    (folder / "report.html").write_text("\n".join(parts), encoding="utf-8")
    return ["report.html"]


def _decision_confusion_html(is_defect: np.ndarray, rejected: np.ndarray) -> str:
    cells = {(d, r): int(np.sum((is_defect == d) & (rejected == r))) for d in (False, True) for r in (False, True)}
    return (
        "<h2>Confusion at the operating point (test split)</h2><table>"
        "<tr><th></th><th>passed</th><th>rejected</th></tr>"
        f"<tr><td>good</td><td>{cells[False, False]}</td><td>{cells[False, True]} (overkill)</td></tr>"
        f"<tr><td>defect</td><td>{cells[True, False]} (escape)</td><td>{cells[True, True]}</td></tr></table>"
    )


def _escape_per_class_html(classes: list[str], gi: int, y_true: np.ndarray, rejected: np.ndarray) -> str:
    rows = ["<h2>Escape per defect class (test split)</h2><table><tr><th>defect class</th><th>escape rate</th></tr>"]
    for ci, name in enumerate(classes):
        if ci == gi:
            continue
        mine = y_true == ci
        rate = metrics.Rate.of(int(np.sum(mine & ~rejected)), int(np.sum(mine)))
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{_rate_cell(rate.as_dict())}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _gallery_html(title: str, idx: np.ndarray, order_key: np.ndarray, images: np.ndarray,
                  names: Sequence[str] | None, classes: list[str], y_true: np.ndarray, score: np.ndarray) -> str:
    esc = html.escape
    if idx.size == 0:
        return f"<h2>{esc(title)}: none</h2>"
    shown = idx[np.argsort(order_key[idx], kind="stable")][:GALLERY_MAX]  # the most confident mistakes first
    more = f", the {len(shown)} most confident shown" if idx.size > len(shown) else ""
    out = [f"<h2>{esc(title)}: {idx.size}{more}</h2><div>"]
    for i in shown:
        name = names[i] if names is not None else f"test #{i}"
        out.append(f"<figure><img src='{_thumbnail(images[i])}' alt='{esc(name)}' title='{esc(name)}'>"
                   f"<figcaption>{esc(classes[int(y_true[i])])}, P(defect) {score[i]:.3f}<br>"
                   f"<small>{esc(name.rsplit('/', 1)[-1])}</small></figcaption></figure>")
    out.append("</div>")
    return "\n".join(out)


def _tradeoff_html(table: list[dict[str, Any]], test: list[dict[str, Any]], limit: float | None) -> str:
    esc = html.escape
    rows = [
        "<h2>Escape–overkill trade-off</h2><p>Each row: the threshold that meets the escape level on validation, "
        "and what it gives on validation and on test (95% CIs). Move the operating point without retraining with "
        "<code>inspection models set-threshold NAME/VERSION --max-escape X</code>."
        + (f" Overkill above {limit:.0%} is flagged in red." if limit is not None else "")
        + "</p>",
        (
            "<table><tr><th>max escape</th><th>threshold</th><th>val escape</th><th>val overkill</th>"
            "<th>test escape</th><th>test overkill</th><th></th></tr>"
        ),
    ]

    def over(r: dict[str, Any]) -> str:
        red = limit is not None and r["n"] and r["rate"] > limit
        return f"<td style='color:#b00'>{_rate_cell(r)}</td>" if red else f"<td>{_rate_cell(r)}</td>"

    for row, trow in zip(table, test, strict=True):
        note = "" if row["resolvable"] else f"not resolvable: needs ≥ {row['needed']} validation defects"
        rows.append(
            f"<tr><td>{row['max_escape']:g}</td><td>{row['threshold']:.4g}</td><td>{_rate_cell(row['escape'])}</td>"
            f"{over(row['overkill'])}<td>{_rate_cell(trow['escape'])}</td>{over(trow['overkill'])}"
            f"<td>{esc(note)}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


#: What the test figures read where the split lacks the parts they count: an anomaly line of good
#: frames alone (its overkill target calibrates without a defect) must say so, not print "nan".
_NO_DEFECT = "not measurable (no defective image)"
_NO_GOOD = "not measurable (no good image)"


def _score_text(value: float | None, fmt: str = ".4f") -> str:
    if value is None or math.isnan(value):
        return "not measurable (needs defective and good images)"
    return format(value, fmt)


def _interval_text(test_metrics: dict[str, Any], key: str) -> str:
    """`` (95% CI a–b, by units)`` for a figure with a unit interval, else nothing."""
    ci = (test_metrics.get("intervals") or {}).get(key)
    if not ci or any(math.isnan(v) for v in ci):  # NaN: one class absent
        return ""
    return f" (95% CI {ci[0]:.3f}–{ci[1]:.3f}, by units)"


def text_summary(
    test_metrics: dict[str, Any], good_class: str | None, calibration: dict[str, Any] | None = None
) -> str:
    """A few lines for the terminal: the escape/overkill report; with ``calibration`` (the
    evidence of ``inspection.calibration.calibrate``) also its warning and trade-off table
    (test columns when ``test_metrics`` holds ``tradeoff``, from ``tradeoff_at``)."""
    lines = [
        (
            f"test accuracy {test_metrics['accuracy']:.4f}  macro recall {test_metrics['macro_recall']:.4f}"
            f"{_interval_text(test_metrics, 'macro_recall')}  (n={test_metrics['n']}"
            + (f" in {test_metrics['intervals']['units']} units)" if "intervals" in test_metrics else ")")
        )
    ]
    if good_class is not None:
        op = test_metrics["operating_point"]
        lines.append(f"escape rate   {_rate_cell(op['escape'], none=_NO_DEFECT)}")
        lines.append(f"overkill rate {_rate_cell(op['overkill'], none=_NO_GOOD)}")
        lines.append(f"ROC AUC defect vs good {_score_text(test_metrics['roc_auc'])}"
                     f"{_interval_text(test_metrics, 'roc_auc')}")
    if calibration and calibration.get("tradeoff"):
        lines.append(tradeoff_text(calibration["tradeoff"], test=test_metrics.get("tradeoff")))
    if calibration and calibration.get("warning"):
        lines.append(f"WARNING: {calibration['warning']}")
    if calibration and good_class is not None:
        lines += [f"TEST MISSES THE TARGET: {miss}" for miss in
                  target_misses(calibration.get("target"), test_metrics["operating_point"])]
    return "\n".join(lines)
