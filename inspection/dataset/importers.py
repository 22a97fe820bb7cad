"""Convert datasets found in the wild into the standard layout (see datasets/README.md).

Three source layouts:

- ``folders``: one folder per class. By default the class is the top-level folder below SRC
  (``SRC/<class>/**/<image>``). ``class_pattern`` (a regular expression searched in each file's
  path relative to SRC, with a named group ``label``) maps other trees, e.g. the magnetic tile
  set's ``MT_<Class>/Imgs/<name>.jpg`` with ``MT_(?P<label>[^/]+)/``.
- ``prefix``: the class is the file name up to its last ``_<digits>``, so class names may
  themselves hold underscores and hyphens (NEU-DET: ``rolled-in_scale_12.jpg``).
- ``csv``: a CSV file with a header holding ``path`` and ``label`` (optional ``split``,
  ``source`` and ``group``); paths are relative to the CSV's folder.

Why one module over 400 lines: the three scanners, the group pattern and the one
``import_dataset`` that writes atomically share the found-file record and its checks; split
apart they would import each other's private helpers.

``group_pattern`` (any layout) fills the ``group`` column from the path: a regular expression
searched in each file's path relative to SRC whose named group ``group`` is the part serial,
lot or item, e.g. ``(?P<group>SN[0-9]+)_``; every image of a group then lands in one split.

Only image files (PNG, JPEG, BMP, TIFF by extension) are considered; ``include``/``exclude``
globs (matched case-insensitively against the path relative to SRC) narrow that further, e.g.
``exclude=['*.png']`` to leave out the masks that sit beside magnetic-tile images. Two images
with the same name but different extensions in one folder are refused unless one is excluded:
that is almost always an image and its mask.

Every image is decoded once to prove it readable, and its bytes are copied unchanged (a JPEG
stays a JPEG). Identical images (same bytes or same decoded pixels) under different labels are
refused, every one listed. The manifest's ``lineage`` records the source, the layout and the options.
"""

from __future__ import annotations

import csv
import fnmatch
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from inspection.dataset.layout import Dataset, Sample, check_dest, check_orientation, write_dataset
from inspection.errors import DatasetError, ImageError

log = logging.getLogger(__name__)

LAYOUTS = ("folders", "prefix", "csv")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_PREFIX_RULE = re.compile(r"^(?P<label>.+)_\d+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class Found:
    """One image of the source, with its label (before copying)."""

    file: Path  # absolute or SRC-based path to read
    rel: str  # path relative to SRC (or as written in the CSV), '/'-separated
    label: str
    split: str = ""
    source: str = ""
    group: str = ""


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    low = rel.lower()
    return any(fnmatch.fnmatchcase(low, p.lower()) for p in patterns)


def _walk_images(
    src: Path, include: Sequence[str], exclude: Sequence[str]
) -> tuple[list[tuple[Path, str]], dict[str, int], set[str]]:
    """Image files under ``src`` (sorted, filtered), counts of what was skipped, and the
    top-level folders holding any file the filters let through (image or not)."""
    if not src.is_dir():
        raise DatasetError(f"source folder {src} does not exist or is not a folder")
    kept: list[tuple[Path, str]] = []
    skipped = {"not_image": 0, "excluded": 0}
    populated: set[str] = set()
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        parts = path.relative_to(src).parts
        rel = "/".join(parts)
        if any(part.startswith(".") for part in parts):
            continue  # hidden files and folders (.DS_Store, .git)
        if (include and not _matches(rel, include)) or _matches(rel, exclude):
            skipped["excluded"] += 1
            continue
        if len(parts) > 1:
            populated.add(parts[0])
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped["not_image"] += 1
        else:
            kept.append((path, rel))
    _refuse_same_stem(kept)
    return kept, skipped, populated


def _refuse_same_stem(files: list[tuple[Path, str]]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for path, rel in files:
        key = (str(path.parent), path.stem.lower())
        other = seen.get(key)
        if other is not None:
            ext = Path(rel).suffix.lower()
            raise DatasetError(
                f"{other} and {rel} have the same name in one folder; if one is a mask or a "
                f"preview, leave it out with --exclude '*{ext}' (or keep one type with --include)"
            )
        seen[key] = rel


def scan_folders(
    src: Path, *, include: Sequence[str] = (), exclude: Sequence[str] = (), class_pattern: str | None = None
) -> tuple[list[Found], dict[str, int]]:
    """Images of a class-per-folder tree with their labels.

    Raises:
        DatasetError: SRC missing, a bad ``class_pattern``, an image outside any class folder
            or not matching the pattern, or a class folder left without images.
    """
    src = Path(src)
    files, skipped, populated = _walk_images(src, include, exclude)
    found: list[Found] = []
    if class_pattern is not None:
        try:
            rule = re.compile(class_pattern)
        except re.error as exc:
            raise DatasetError(
                f"--class-from-dir-pattern {class_pattern!r} is not a valid regular expression: {exc}"
            ) from None
        if "label" not in rule.groupindex:
            raise DatasetError(
                f"--class-from-dir-pattern {class_pattern!r} needs a named group (?P<label>...) for the class"
            )
        for path, rel in files:
            m = rule.search(rel)
            if m is None or not m.group("label"):
                raise DatasetError(
                    f"{src / rel}: its path {rel!r} does not match --class-from-dir-pattern {class_pattern!r}, "
                    f"so its class is unknown; fix the pattern or leave the file out with --exclude"
                )
            found.append(Found(path, rel, m.group("label"), source=rel))
        return found, skipped
    # A class folder is one holding any file the filters let through; one whose files are all
    # excluded (e.g. --exclude 'docs/*') is not a class, one holding only non-images is empty.
    class_dirs = sorted(populated)
    for path, rel in files:
        if "/" not in rel:
            raise DatasetError(
                f"{path}: image is not inside a class folder; the folders layout expects "
                f"SRC/<class>/<image> (class folders here: {class_dirs})"
            )
        found.append(Found(path, rel, rel.split("/", 1)[0], source=rel))
    used = {f.label for f in found}
    empty = [d for d in class_dirs if d not in used]
    if empty:
        raise DatasetError(
            f"class folder(s) {[str(src / d) for d in empty]} have no images (after --include/--exclude); "
            f"every class needs at least one image; to skip a folder, --exclude '<folder>/*'"
        )
    return found, skipped


def scan_prefix(
    src: Path, *, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> tuple[list[Found], dict[str, int]]:
    """Images whose class is the file name before the last ``_<digits>`` (``rolled-in_scale_12.jpg``).

    Raises:
        DatasetError: SRC missing, or a file name without a ``_<digits>`` suffix.
    """
    src = Path(src)
    files, skipped, _ = _walk_images(src, include, exclude)
    found: list[Found] = []
    for path, rel in files:
        m = _PREFIX_RULE.match(path.stem)
        if m is None:
            raise DatasetError(
                f"{path}: file name {path.name!r} has no class prefix; the prefix layout expects "
                f"<class>_<number>{path.suffix} (e.g. pitted_surface_12{path.suffix})"
            )
        found.append(Found(path, rel, m.group("label"), source=rel))
    return found, skipped


def scan_csv(
    csv_path: Path, *, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> tuple[list[Found], dict[str, int]]:
    """Images listed in a CSV with a ``path,label[,split][,source][,group]`` header.

    Raises:
        DatasetError: missing CSV, header without path/label, an empty label, a listed file
            that does not exist, or a file listed twice.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"CSV file {csv_path} does not exist; the csv layout takes the CSV file as SRC")
    base = csv_path.parent
    found: list[Found] = []
    skipped = {"not_image": 0, "excluded": 0}
    seen: dict[str, int] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        if not {"path", "label"} <= set(fields):
            raise DatasetError(
                f"{csv_path}: header {reader.fieldnames} needs columns path and label (optional split, source, group)"
            )
        reader.fieldnames = fields
        for line, row in enumerate(reader, start=2):
            rel = (row.get("path") or "").strip().replace("\\", "/")
            label = (row.get("label") or "").strip()
            if not rel:
                raise DatasetError(f"{csv_path}:{line}: empty path")
            if not label:
                raise DatasetError(f"{csv_path}:{line}: {rel} has an empty label")
            if (include and not _matches(rel, include)) or _matches(rel, exclude):
                skipped["excluded"] += 1
                continue
            file = (base / rel) if not Path(rel).is_absolute() else Path(rel)
            if not file.is_file():
                raise DatasetError(f"{csv_path}:{line}: image {rel} does not exist (paths are relative to {base})")
            key = str(file.resolve())
            if key in seen:
                raise DatasetError(
                    f"{csv_path}:{line}: {rel} is already listed on line {seen[key]}; list each image once"
                )
            seen[key] = line
            split = (row.get("split") or "").strip().lower()
            source = (row.get("source") or "").strip() or rel
            group = (row.get("group") or "").strip()
            found.append(Found(file, rel, label, split=split, source=source, group=group))
    return found, skipped


#: Class names that usually mean "no defect" (compared case-insensitively).
GOOD_LIKE = ("good", "ok", "pass", "passed", "free", "normal", "nodefect", "no_defect", "no-defect", "defect_free",
             "defect-free", "clean", "non_defective", "nondefective")


def good_like(classes: Sequence[str]) -> str | None:
    """The first class whose name usually means "no defect" (``GOOD_LIKE``), or None."""
    return next((c for c in classes if c.lower() in GOOD_LIKE), None)


def _order_classes(found: list[Found], classes: Sequence[str] | None, good_class: str | None) -> list[str]:
    labels = sorted({f.label for f in found})
    if classes is None:
        ordered = ([good_class] if good_class in labels else []) + [c for c in labels if c != good_class]
    else:
        ordered = list(classes)
        if len(set(ordered)) != len(ordered):
            raise DatasetError(f"--classes {ordered} lists a class twice")
        allowed = set(ordered)
        for f in found:
            if f.label not in allowed:
                raise DatasetError(f"{f.file}: label {f.label!r} is not in the class list {ordered}")
    if good_class is not None and good_class not in ordered:
        raise DatasetError(f"--good {good_class!r} is not one of the classes {ordered}")
    return ordered


def _target_names(found: list[Found]) -> list[str]:
    """images/<label>/<file name>, made unique per class folder (case-insensitively)."""
    taken: set[str] = set()
    out: list[str] = []
    for f in found:
        folder = _UNSAFE.sub("_", f.label).strip("._") or "class"
        name = Path(f.rel).name
        stem, ext = Path(name).stem, Path(name).suffix
        candidate, k = f"images/{folder}/{name}", 1
        while candidate.lower() in taken:
            k += 1
            candidate = f"images/{folder}/{stem}-{k}{ext}"
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def apply_group_pattern(found: list[Found], pattern: str) -> list[Found]:
    """Fill each image's ``group`` from the named group ``group`` of ``pattern`` searched in its path.

    A match whose ``group`` is empty (an optional group) leaves the image ungrouped.

    Raises:
        DatasetError: ``pattern`` is not a valid regular expression, has no ``(?P<group>...)``,
            or does not match an image's path (the first few named).
    """
    try:
        rule = re.compile(pattern)
    except re.error as exc:
        raise DatasetError(f"--group-from-pattern {pattern!r} is not a valid regular expression: {exc}") from None
    if "group" not in rule.groupindex:
        raise DatasetError(
            f"--group-from-pattern {pattern!r} needs a named group (?P<group>...) for the part, lot or item, "
            f"e.g. '(?P<group>SN[0-9]+)_'"
        )
    out: list[Found] = []
    unmatched: list[str] = []
    for f in found:
        m = rule.search(f.rel)
        if m is None:
            unmatched.append(f.rel)
            continue
        out.append(replace(f, group=m.group("group") or ""))
    if unmatched:
        raise DatasetError(
            f"{len(unmatched)} image path(s) do not match --group-from-pattern {pattern!r} (e.g. {unmatched[:3]}); "
            f"fix the pattern, make the group optional with (?P<group>...)?, or leave the files out with --exclude"
        )
    return out


def _read(f: Found) -> bytes:
    try:
        return f.file.read_bytes()
    except OSError as exc:
        raise ImageError(
            f"{f.file}: cannot read ({exc.strerror}); fix its permissions or leave it out with --exclude"
        ) from None


def _decoder(found: list[Found], targets: list[str]) -> Callable[[bytes, str], np.ndarray]:
    """``check_image`` for ``write_dataset``: decode, naming the source file (not the target) on failure."""
    from inspection.preprocess import decode_image

    origin = {t: f for f, t in zip(found, targets)}

    def check(data: bytes, target: str) -> np.ndarray:
        try:
            return decode_image(data, source=str(origin[target].file))
        except ImageError as exc:
            # The same class (a FrameTooLargeError stays one), the way out added.
            raise type(exc)(f"{exc}; replace the file or leave it out with --exclude") from None

    return check


def _items(found: list[Found], targets: list[str]) -> Iterator[tuple[Sample, bytes]]:
    for f, target in zip(found, targets):
        yield Sample(path=target, label=f.label, split=f.split, source=f.source, group=f.group), _read(f)


def import_dataset(
    src: Path,
    dest: Path,
    *,
    layout: str,
    good_class: str | None = None,
    name: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    class_pattern: str | None = None,
    classes: Sequence[str] | None = None,
    group_pattern: str | None = None,
    orientation: str | None = None,
    overwrite: bool = False,
) -> Dataset:
    """Import ``src`` (a folder, or a CSV for ``layout='csv'``) into ``dest`` in the standard layout.

    ``classes`` fixes the class list and its order (default: the labels found, sorted, with
    ``good_class`` first). ``orientation`` (one of ``ORIENTATIONS``) says which flips and
    rotations leave a part valid; training's augmentation follows it. ``group_pattern`` fills the ``group`` column (see
    :func:`apply_group_pattern`). Nothing is written to ``dest`` unless every image reads and every
    label checks out; an existing ``dest`` is left untouched on failure.

    Raises:
        DatasetError: unknown layout, nothing to import, a label outside ``classes``, an empty
            class, identical images (bytes or pixels) under different labels (all listed), a bad
            ``group_pattern`` or one given with a CSV that has a group column, ``dest`` refused
            (``check_dest``: exists without ``overwrite``, or is no dataset), or a layout-specific
            problem (see the ``scan_*`` functions).
        ImageError: an unreadable, truncated or non-image file (named, with what to do).
    """
    src, dest = Path(src), Path(dest)
    if layout not in LAYOUTS:
        raise DatasetError(f"layout {layout!r} is not supported; use one of {list(LAYOUTS)}")
    check_orientation(orientation)
    if class_pattern is not None and layout != "folders":
        raise DatasetError(f"--class-from-dir-pattern applies to --layout folders only, not {layout!r}")
    check_dest(dest, overwrite=overwrite)
    if dest.resolve() == src.resolve() or src.resolve() in dest.resolve().parents:
        raise DatasetError(f"--out {dest} is inside the source {src}; write the dataset elsewhere")
    if layout == "folders":
        found, skipped = scan_folders(src, include=include, exclude=exclude, class_pattern=class_pattern)
    elif layout == "prefix":
        found, skipped = scan_prefix(src, include=include, exclude=exclude)
    else:
        found, skipped = scan_csv(src, include=include, exclude=exclude)
    if not found:
        raise DatasetError(
            f"no images to import from {src} (layout {layout}; extensions {list(IMAGE_EXTENSIONS)}; "
            f"include {list(include)}, exclude {list(exclude)})"
        )
    if group_pattern is not None:
        if any(f.group for f in found):
            raise DatasetError(
                f"{src} has a group column and --group-from-pattern {group_pattern!r} was given too; use one of them"
            )
        found = apply_group_pattern(found, group_pattern)
    ordered = _order_classes(found, classes, good_class)
    if good_class is None and (named := good_like(ordered)):
        # Without --good the dataset has no "no defect" class: no escape/overkill, no reject rule.
        log.warning("class %r looks like the 'no defect' class, but --good was not given: the model will have no "
                    "reject threshold and no escape/overkill figures; re-import with --good %s if it is", named, named)
    lineage = {
        "kind": "import",
        "source": str(src.resolve()),
        "layout": layout,
        "options": {
            "include": list(include),
            "exclude": list(exclude),
            "class_from_dir_pattern": class_pattern,
            "classes": list(classes) if classes is not None else None,
            "good_class": good_class,
            "group_from_pattern": group_pattern,
        },
        "imported": len(found),
        "groups": len({f.group for f in found if f.group}),
        "skipped": skipped,
    }
    targets = _target_names(found)
    return write_dataset(
        dest,
        name=name or dest.name,
        classes=ordered,
        good_class=good_class,
        items=_items(found, targets),
        extra_manifest={"lineage": lineage, **({"orientation": orientation} if orientation else {})},
        overwrite=overwrite,
        check_image=_decoder(found, targets),
    )
