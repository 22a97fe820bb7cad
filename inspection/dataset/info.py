"""What is in a dataset and what is wrong with it: class counts, image sizes, channels, problems.

``dataset_info`` decodes every image once (as serving and training would), so an unreadable or
truncated file shows up here before it breaks a training run.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from inspection.dataset.layout import compute_fingerprint, read_dataset
from inspection.errors import ImageError

#: Problem kinds, most serious first. ``error``: the dataset must be fixed before training.
_SEVERITY = {
    "unreadable": "error",
    "conflicting_duplicate": "error",
    "empty_class": "error",
    "fingerprint_mismatch": "error",
    "duplicate": "warning",
    "tiny_class": "warning",
}


def _problem(kind: str, message: str, paths: list[str] | None = None) -> dict[str, Any]:
    return {"kind": kind, "severity": _SEVERITY[kind], "message": message, "paths": paths or []}


def dataset_info(root: Path, *, min_per_class: int = 10) -> dict[str, Any]:
    """A JSON-ready report on the dataset at ``root``.

    Keys: name, root, classes, good_class, count, counts, fingerprint, sizes (width/height
    min/max, most common WxH), channels (decoded: 1 gray, 3 colour), formats, problems (each
    with kind, severity, message and the paths involved).

    Raises:
        DatasetError: no dataset at ``root`` (missing manifest/labels, a label outside the
            class list, a listed image missing) - see ``read_dataset``.
    """
    from inspection.preprocess import decode_image

    ds = read_dataset(Path(root))
    problems: list[dict[str, Any]] = []
    widths: list[int] = []
    heights: list[int] = []
    shapes: Counter[str] = Counter()
    channels: Counter[int] = Counter()
    formats: Counter[str] = Counter()
    by_digest: dict[str, list[tuple[str, str]]] = defaultdict(list)
    digests: dict[str, str] = {}
    for s in ds.samples:
        data = ds.path_of(s).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        digests[s.path] = digest
        by_digest[digest].append((s.path, s.label))
        formats[Path(s.path).suffix.lower().lstrip(".") or "?"] += 1
        try:
            image = decode_image(data, source=s.path)
        except ImageError as exc:
            problems.append(_problem("unreadable", str(exc), [s.path]))
            continue
        h, w = image.shape[:2]
        widths.append(w)
        heights.append(h)
        shapes[f"{w}x{h}"] += 1
        channels[1 if image.ndim == 2 else image.shape[2]] += 1
    for group in by_digest.values():
        if len(group) < 2:
            continue
        paths = [p for p, _ in group]
        labels = sorted({label for _, label in group})
        if len(labels) > 1:
            problems.append(_problem("conflicting_duplicate", f"same image content under labels {labels}: {paths}", paths))
        else:
            problems.append(_problem("duplicate", f"same image content {len(paths)} times (label {labels[0]!r}): {paths}", paths))
    counts = ds.counts()
    for cls, n in counts.items():
        if n == 0:
            problems.append(_problem("empty_class", f"class {cls!r} has no images"))
        elif n < min_per_class:
            problems.append(_problem("tiny_class", f"class {cls!r} has only {n} image(s), fewer than {min_per_class}"))
    actual = compute_fingerprint(ds.root, ds.samples, digests=digests)
    if actual != ds.fingerprint:
        problems.append(_problem(
            "fingerprint_mismatch",
            f"fingerprint of the files {actual[:12]}… differs from the manifest's {ds.fingerprint[:12]}…; the data changed",
        ))
    problems.sort(key=lambda p: (p["severity"] != "error", p["kind"], p["paths"]))
    common = shapes.most_common(1)
    return {
        "name": ds.name,
        "root": str(ds.root),
        "classes": ds.classes,
        "good_class": ds.good_class,
        "count": len(ds.samples),
        "counts": counts,
        "fingerprint": ds.fingerprint,
        "sizes": {
            "width": {"min": min(widths, default=0), "max": max(widths, default=0)},
            "height": {"min": min(heights, default=0), "max": max(heights, default=0)},
            "most_common": common[0][0] if common else None,
            "most_common_count": common[0][1] if common else 0,
            "distinct": len(shapes),
        },
        "channels": {str(k): v for k, v in sorted(channels.items())},
        "formats": dict(sorted(formats.items())),
        "lineage": ds.manifest.get("lineage"),
        "problems": problems,
    }


def format_info(report: dict[str, Any]) -> str:
    """The report of :func:`dataset_info` as text for a terminal."""
    lines = [
        f"dataset {report['name']} at {report['root']}",
        f"  fingerprint {report['fingerprint']}",
        f"  {report['count']} images, {len(report['classes'])} classes (good class: {report['good_class'] or 'none'})",
    ]
    width = max((len(c) for c in report["classes"]), default=5)
    for cls, n in report["counts"].items():
        share = 100.0 * n / report["count"] if report["count"] else 0.0
        lines.append(f"    {cls:<{width}}  {n:>7}  {share:5.1f}%")
    sz = report["sizes"]
    lines.append(
        f"  image size: width {sz['width']['min']}..{sz['width']['max']}, height {sz['height']['min']}..{sz['height']['max']}, "
        f"most common {sz['most_common']} ({sz['most_common_count']} images, {sz['distinct']} distinct sizes)"
    )
    names = {"1": "gray", "3": "colour"}
    lines.append("  channels (as decoded; R=G=B colour counts as gray): " + ", ".join(f"{names.get(k, k)} {v}" for k, v in report["channels"].items()))
    lines.append("  formats: " + ", ".join(f"{k} {v}" for k, v in report["formats"].items()))
    lineage = report.get("lineage") or {}
    if lineage.get("kind") == "import":
        lines.append(f"  imported from {lineage.get('source')} (layout {lineage.get('layout')})")
    elif lineage.get("kind") == "synthetic":
        lines.append(f"  synthetic, seed {lineage.get('seed')}, generator v{lineage.get('generator_version')}")
    problems = report["problems"]
    if not problems:
        lines.append("  problems: none")
    else:
        lines.append(f"  problems: {len(problems)}")
        for p in problems:
            lines.append(f"    {p['severity']}: {p['kind']}: {p['message']}")
    return "\n".join(lines)
