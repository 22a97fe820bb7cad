"""Convert datasets found in the wild into the standard layout (see datasets/README.md).

Three source layouts:

- ``folders``: one folder per class. By default the class is the top-level folder below SRC
  (``SRC/<class>/**/<image>``). ``class_pattern`` (a regular expression searched in each file's
  path relative to SRC, with a named group ``label``) maps other trees, e.g. the magnetic tile
  set's ``MT_<Class>/Imgs/<name>.jpg`` with ``MT_(?P<label>[^/]+)/``.
- ``prefix``: the class is the file name up to its last ``_<digits>``, so class names may
  themselves hold underscores and hyphens (NEU-DET: ``rolled-in_scale_12.jpg``).
- ``csv``: a CSV file with a header holding ``path`` and ``label`` (optional ``split`` and
  ``source``); paths are relative to the CSV's folder.

Only image files (PNG, JPEG, BMP, TIFF by extension) are considered; ``include``/``exclude``
globs (matched case-insensitively against the path relative to SRC) narrow that further, e.g.
``exclude=['*.png']`` to leave out the masks that sit beside magnetic-tile images. Two images
with the same name but different extensions in one folder are refused unless one is excluded:
that is almost always an image and its mask.

Every image is decoded once to prove it readable, and its bytes are copied unchanged (a JPEG
stays a JPEG). The manifest's ``lineage`` records the source, the layout and the options.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from inspection.dataset.layout import Dataset, Sample, write_dataset
from inspection.errors import DatasetError, ImageError

LAYOUTS = ("folders", "prefix", "csv")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_PREFIX_RULE = re.compile(r"^(?P<label>.+)_\d+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class Found:
    """One image of the source, with its label (before copying)."""

    file: Path          # absolute or SRC-based path to read
    rel: str            # path relative to SRC (or as written in the CSV), '/'-separated
    label: str
    split: str = ""
    source: str = ""


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    low = rel.lower()
    return any(fnmatch.fnmatchcase(low, p.lower()) for p in patterns)


def _walk_images(src: Path, include: Sequence[str], exclude: Sequence[str]) -> tuple[list[tuple[Path, str]], dict[str, int], set[str]]:
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


def scan_folders(src: Path, *, include: Sequence[str] = (), exclude: Sequence[str] = (), class_pattern: str | None = None) -> tuple[list[Found], dict[str, int]]:
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
            raise DatasetError(f"--class-from-dir-pattern {class_pattern!r} is not a valid regular expression: {exc}") from None
        if "label" not in rule.groupindex:
            raise DatasetError(f"--class-from-dir-pattern {class_pattern!r} needs a named group (?P<label>...) for the class")
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


def scan_prefix(src: Path, *, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> tuple[list[Found], dict[str, int]]:
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


def scan_csv(csv_path: Path, *, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> tuple[list[Found], dict[str, int]]:
    """Images listed in a CSV with a ``path,label[,split][,source]`` header.

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
            raise DatasetError(f"{csv_path}: header {reader.fieldnames} needs columns path and label (optional split, source)")
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
                raise DatasetError(f"{csv_path}:{line}: {rel} is already listed on line {seen[key]}; list each image once")
            seen[key] = line
            split = (row.get("split") or "").strip().lower()
            source = (row.get("source") or "").strip() or rel
            found.append(Found(file, rel, label, split=split, source=source))
    return found, skipped


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


def _read_checked(f: Found) -> bytes:
    from inspection.preprocess import decode_image

    try:
        data = f.file.read_bytes()
    except OSError as exc:
        raise ImageError(f"{f.file}: cannot read ({exc.strerror}); fix its permissions or leave it out with --exclude") from None
    try:
        decode_image(data, source=str(f.file))
    except ImageError as exc:
        raise ImageError(f"{exc}; replace the file or leave it out with --exclude") from None
    return data


def _items(found: list[Found], targets: list[str]) -> Iterator[tuple[Sample, bytes]]:
    first: dict[str, Found] = {}
    for f, target in zip(found, targets):
        data = _read_checked(f)
        digest = hashlib.sha256(data).hexdigest()
        other = first.setdefault(digest, f)
        if other is not f and other.label != f.label:
            raise DatasetError(
                f"{f.file} (label {f.label!r}) has the same image content as {other.file} "
                f"(label {other.label!r}); one image can have only one label - remove or relabel one"
            )
        yield Sample(path=target, label=f.label, split=f.split, source=f.source), data


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
    overwrite: bool = False,
) -> Dataset:
    """Import ``src`` (a folder, or a CSV for ``layout='csv'``) into ``dest`` in the standard layout.

    ``classes`` fixes the class list and its order (default: the labels found, sorted, with
    ``good_class`` first). Nothing is written to ``dest`` unless every image reads and every
    label checks out; an existing ``dest`` is left untouched on failure.

    Raises:
        DatasetError: unknown layout, nothing to import, a label outside ``classes``, an empty
            class, the same image under two labels, ``dest`` exists without ``overwrite``, or a
            layout-specific problem (see the ``scan_*`` functions).
        ImageError: an unreadable, truncated or non-image file (named, with what to do).
    """
    src, dest = Path(src), Path(dest)
    if layout not in LAYOUTS:
        raise DatasetError(f"layout {layout!r} is not supported; use one of {list(LAYOUTS)}")
    if class_pattern is not None and layout != "folders":
        raise DatasetError(f"--class-from-dir-pattern applies to --layout folders only, not {layout!r}")
    if dest.exists() and not overwrite:
        raise DatasetError(f"{dest} already exists; choose another --out or pass --overwrite")
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
    ordered = _order_classes(found, classes, good_class)
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
        },
        "imported": len(found),
        "skipped": skipped,
    }
    return write_dataset(
        dest,
        name=name or dest.name,
        classes=ordered,
        good_class=good_class,
        items=_items(found, _target_names(found)),
        extra_manifest={"lineage": lineage},
        overwrite=overwrite,
        check_image=lambda data, source: None,  # _items already decoded it, naming the source file
    )
