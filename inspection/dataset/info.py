"""What is in a dataset and what is wrong with it: class counts, image sizes, channels,
duplicates, problems.

``dataset_info`` decodes every image once (as serving and training would), so an unreadable or
truncated file shows up here before it breaks a training run. The same decode gives each image
its duplicate signature (:mod:`inspection.dataset.duplicates`): exact duplicates (same bytes or
same decoded pixels) and near duplicates are reported with their paths, and so is every group
(duplicates, ``source``, ``group``) whose members the split given in ``labels.csv`` puts in
different splits - a test image whose copy is in train makes the test figures optimistic.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from inspection.dataset.duplicates import Signature, find_duplicates, signature
from inspection.dataset.layout import Sample, compute_fingerprint, read_dataset
from inspection.dataset.split import group_label, split_groups
from inspection.errors import ImageError, ValidationError

#: Problem kinds, most serious first. ``error``: the dataset must be fixed before training.
_SEVERITY = {
    "unreadable": "error",
    "conflicting_duplicate": "error",
    "empty_class": "error",
    "fingerprint_mismatch": "error",
    "duplicate": "warning",
    "split_leak": "warning",
    "tiny_class": "warning",
    "few_units": "warning",
    "mixed_depth": "error",
}

#: A class of fewer units than this is flagged when its images collapse into fewer units: at
#: the default 15% test split it then has at most 4 parts on test, so one part more or less
#: right moves its recall by a quarter (docs/training.md, "How finely a test split resolves").
MIN_UNITS_PER_CLASS = 30


_EXAMPLES = 5  # duplicate groups shown per kind in the text report


def _problem(kind: str, message: str, paths: list[str] | None = None) -> dict[str, Any]:
    return {"kind": kind, "severity": _SEVERITY[kind], "message": message, "paths": paths or []}


def dataset_info(root: Path, *, min_per_class: int = 10, min_units_per_class: int = MIN_UNITS_PER_CLASS
                 ) -> dict[str, Any]:
    """A JSON-ready report on the dataset at ``root``.

    Keys: name, root, classes, good_class, count, counts, fingerprint, sizes (width/height
    min/max, most common WxH), channels (decoded: 1 gray, 3 colour), bits (images per pixel depth,
    8 or 16), formats, groups (the number of distinct ``group`` values), units (per class, how
    many units the split would draw: images linked by source, group or duplicates count once,
    under their most common label),
    duplicates (``exact`` and ``near``: lists of path groups, with the near-duplicate
    thresholds), problems (each with kind, severity, message and the paths involved).

    Raises:
        DatasetError: no dataset at ``root`` (missing manifest/labels, a label outside the
            class list, a listed image missing) - see ``read_dataset``.
        ValidationError: a negative ``min_per_class`` or ``min_units_per_class``.
    """
    from inspection.preprocess import decode_image

    # A negative minimum flags nothing, silently, as if every class were large enough.
    for flag, value in (("--min-per-class", min_per_class), ("--min-units-per-class", min_units_per_class)):
        if value < 0:
            raise ValidationError(f"{flag} {value} is not allowed; give 0 or more (0: flag no class)")
    ds = read_dataset(Path(root))
    problems: list[dict[str, Any]] = []
    widths: list[int] = []
    heights: list[int] = []
    shapes: Counter[str] = Counter()
    channels: Counter[int] = Counter()
    depths: dict[int, list[str]] = {}
    formats: Counter[str] = Counter()
    sigs: dict[str, Signature] = {}
    digests: dict[str, str] = {}
    for s in ds.samples:
        data = ds.path_of(s).read_bytes()
        formats[Path(s.path).suffix.lower().lstrip(".") or "?"] += 1
        try:
            image = decode_image(data, source=s.path)
        except ImageError as exc:
            problems.append(_problem("unreadable", str(exc), [s.path]))
            continue
        sigs[s.path] = signature(data, image)
        digests[s.path] = sigs[s.path].sha256
        h, w = image.shape[:2]
        widths.append(w)
        heights.append(h)
        shapes[f"{w}x{h}"] += 1
        channels[1 if image.ndim == 2 else image.shape[2]] += 1
        depths.setdefault(8 * image.dtype.itemsize, []).append(s.path)
    label_of = {s.path: s.label for s in ds.samples}
    dups = find_duplicates(sigs)
    for paths in dups.exact:
        labels = sorted({label_of[p] for p in paths})
        if len(labels) > 1:
            message = f"same image content under labels {labels}: {paths}"
            problems.append(_problem("conflicting_duplicate", message, paths))
        else:
            message = f"same image content {len(paths)} times (label {labels[0]!r}): {paths}"
            problems.append(_problem("duplicate", message, paths))
    groups = split_groups(ds.samples, dups.together())
    problems.extend(_split_leaks(groups))
    if len(depths) > 1:
        problems.append(_problem(
            "mixed_depth",
            f"{len(depths[8])} 8-bit and {len(depths[16])} 16-bit images: a model takes frames of one pixel depth "
            "(training refuses this dataset); convert its images to one depth",
            depths[8 if len(depths[8]) <= len(depths[16]) else 16][:20],
        ))
    counts = ds.counts()
    units = _units_per_class(groups, ds.classes)
    for cls, u in units.items():
        if 0 < u < min(counts[cls], min_units_per_class):
            problems.append(_problem(
                "few_units",
                f"class {cls!r}: {counts[cls]} images but {u} independent units (views of one part, duplicates, "
                f"groups), fewer than {min_units_per_class}: validation and test each hold a few of them, so its "
                "figures there move by whole parts; add parts, not views",
            ))
    for cls, n in counts.items():
        if n == 0:
            problems.append(_problem("empty_class", f"class {cls!r} has no images"))
        elif n < min_per_class:
            problems.append(_problem("tiny_class", f"class {cls!r} has only {n} image(s), fewer than {min_per_class}"))
    actual = compute_fingerprint(ds.root, ds.samples, digests=digests)
    if actual != ds.fingerprint:
        problems.append(_problem(
            "fingerprint_mismatch",
            f"fingerprint of the files {actual[:12]}… differs from the manifest's {ds.fingerprint[:12]}…; "
            f"the data changed",
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
        "bits": {str(k): len(v) for k, v in sorted(depths.items())},
        "formats": dict(sorted(formats.items())),
        "lineage": ds.manifest.get("lineage"),
        "groups": len({s.group for s in ds.samples if s.group}),
        "units": units,
        "duplicates": {
            "exact": dups.exact,
            "near": dups.near,
            "near_max_hamming": dups.max_hamming,
            "near_min_correlation": dups.min_correlation,
        },
        "problems": problems,
    }


def _units_per_class(groups: list[list[Sample]], classes: list[str]) -> dict[str, int]:
    # As the split draws them: one unit per group, counted under the label it is drawn under.
    units = dict.fromkeys(classes, 0)
    for members in groups:
        units[group_label(members)] += 1
    return units


def _split_leaks(groups: list[list[Sample]]) -> list[dict[str, Any]]:
    """A problem per group (duplicates, source, group) that the given splits put in several splits."""
    out: list[dict[str, Any]] = []
    for members in groups:
        given = {m.split for m in members if m.split}
        if len(given) > 1:
            paths = sorted(m.path for m in members)
            where = ", ".join(f"{m.path} ({m.split})" for m in sorted(members, key=lambda m: m.path) if m.split)
            out.append(_problem(
                "split_leak",
                f"one group (duplicates, source or group) crosses the given splits {sorted(given)}: {where}; "
                f"training moves it whole to the most held-out of them",
                paths,
            ))
    return out


def format_info(report: dict[str, Any]) -> str:
    """The report of :func:`dataset_info` as text for a terminal."""
    lines = [
        f"dataset {report['name']} at {report['root']}",
        f"  fingerprint {report['fingerprint']}",
        f"  {report['count']} images, {len(report['classes'])} classes (good class: {report['good_class'] or 'none'})",
    ]
    width = max((len(c) for c in report["classes"]), default=5)
    units = report.get("units") or {}
    # Units beside the images only where they differ: there the image count overstates the parts.
    show_units = any(units.get(c, n) != n for c, n in report["counts"].items())
    for cls, n in report["counts"].items():
        share = 100.0 * n / report["count"] if report["count"] else 0.0
        in_units = f"  in {units[cls]:>6} units" if show_units else ""
        lines.append(f"    {cls:<{width}}  {n:>7}  {share:5.1f}%{in_units}")
    if show_units:
        lines.append("  (a unit: images the split keeps together - views of one part, duplicates, one group)")
    sz = report["sizes"]
    lines.append(
        f"  image size: width {sz['width']['min']}..{sz['width']['max']}, "
        f"height {sz['height']['min']}..{sz['height']['max']}, "
        f"most common {sz['most_common']} ({sz['most_common_count']} images, {sz['distinct']} distinct sizes)"
    )
    names = {"1": "gray", "3": "colour"}
    channels = ", ".join(f"{names.get(k, k)} {v}" for k, v in report["channels"].items())
    lines.append(f"  channels (as decoded; R=G=B colour counts as gray): {channels}")
    lines.append("  pixel depth: " + ", ".join(f"{k}-bit {v}" for k, v in report["bits"].items()))
    lines.append("  formats: " + ", ".join(f"{k} {v}" for k, v in report["formats"].items()))
    lineage = report.get("lineage") or {}
    if lineage.get("kind") == "import":
        lines.append(f"  imported from {lineage.get('source')} (layout {lineage.get('layout')})")
    elif lineage.get("kind") == "synthetic":
        lines.append(f"  synthetic, seed {lineage.get('seed')}, generator v{lineage.get('generator_version')}")
    dups = report["duplicates"]
    if report.get("groups"):
        lines.append(f"  groups (labels.csv group column): {report['groups']}")
    near_rule = f"pHash <= {dups['near_max_hamming']} bits, thumbnail correlation >= {dups['near_min_correlation']}"
    for kind, what in (("exact", "same bytes or pixels"), ("near", near_rule)):
        groups = dups[kind]
        lines.append(f"  {kind} duplicates ({what}): {len(groups)} group(s), {sum(map(len, groups))} images"
                     + (" - kept in one split each" if groups else ""))
        for g in groups[:_EXAMPLES]:
            lines.append(f"    {', '.join(g)}")
        if len(groups) > _EXAMPLES:
            lines.append(f"    ... and {len(groups) - _EXAMPLES} more (--json lists all)")
    problems = report["problems"]
    if not problems:
        lines.append("  problems: none")
    else:
        lines.append(f"  problems: {len(problems)}")
        for p in problems:
            lines.append(f"    {p['severity']}: {p['kind']}: {p['message']}")
    return "\n".join(lines)
