"""One standard dataset layout on disk (see datasets/README.md)::

    datasets/<name>/
      manifest.json     # name, classes, good_class, counts, fingerprint, lineage
      labels.csv        # path,label,split,source[,group]   (split, source and group may be empty)
      images/...        # the image files; paths in labels.csv are relative to the folder

The fingerprint is a sha256 over, for every sample sorted by path, the path, the sha256 of
the image bytes, the label and the split (and the group, when it has one: a dataset without
groups keeps the fingerprint it had before the column existed). It identifies the data a model was trained on
(recorded in the model card) and is byte-for-byte reproducible for a seeded generator.

Writes are atomic: a dataset is assembled in a temporary sibling folder and renamed into
place only when every image and label checked out, so a failed import leaves nothing
half-written and an existing dataset untouched.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inspection.dataset.duplicates import exact_groups, pixel_digest, refuse_label_conflicts
from inspection.errors import DatasetError, ImageError

MANIFEST = "manifest.json"
LABELS = "labels.csv"
SPLITS = ("train", "val", "test")
#: What a manifest's optional ``orientation`` may say: which flips and rotations leave a part a
#: valid part of the same class (training augments only with those). "free": any flip or
#: 90-degree rotation (textures, round parts); "flip": mirror images, no rotation; "hflip":
#: left-right mirror only; "fixed": none (orientation carries meaning, e.g. printed marks).
ORIENTATIONS = ("free", "flip", "hflip", "fixed")
_LABEL_FIELDS = ["path", "label", "split", "source"]
_GROUP_FIELD = "group"  # written only when some sample has a group: older files stay byte-identical


@dataclass(frozen=True, slots=True)
class Sample:
    path: str  # relative to the dataset folder, '/'-separated
    label: str
    split: str = ""  # "", "train", "val" or "test"
    source: str = ""  # part id / serial / original file: keeps views of one part together
    group: str = ""  # part serial / lot / physical item: every image of a group lands in one split


@dataclass
class Dataset:
    root: Path
    name: str
    classes: list[str]
    good_class: str | None
    samples: list[Sample]
    fingerprint: str
    manifest: dict[str, Any] = field(default_factory=dict)

    def path_of(self, sample: Sample) -> Path:
        return self.root / sample.path

    def counts(self) -> dict[str, int]:
        c = Counter(s.label for s in self.samples)
        return {cls: c.get(cls, 0) for cls in self.classes}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def compute_fingerprint(root: Path, samples: Iterable[Sample], *, digests: dict[str, str] | None = None) -> str:
    """sha256 over (path, image sha256, label, split[, group]) of every sample, sorted by path."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.path):
        digest = (digests or {}).get(s.path) or file_sha256(Path(root) / s.path)
        group = f"\t{s.group}" if s.group else ""
        h.update(f"{s.path}\t{digest}\t{s.label}\t{s.split}{group}\n".encode())
    return h.hexdigest()


def _validate(
    samples: list[Sample], classes: list[str], good_class: str | None, digests: dict[str, str], pixels: dict[str, str]
) -> None:
    if len(classes) < 1 or len(set(classes)) != len(classes):
        raise DatasetError(f"classes must be a non-empty list of unique names, got {classes}")
    if good_class is not None and good_class not in classes:
        raise DatasetError(f"good class {good_class!r} is not one of the classes {classes}")
    allowed = set(classes)
    seen_paths: set[str] = set()
    for s in samples:
        if s.label not in allowed:
            raise DatasetError(f"{s.path}: label {s.label!r} is not in the class list {sorted(allowed)}")
        if s.split not in ("", *SPLITS):
            raise DatasetError(f"{s.path}: split {s.split!r} is not allowed; use one of {list(SPLITS)} or leave empty")
        if s.path in seen_paths:
            raise DatasetError(f"{s.path}: listed twice in {LABELS}")
        seen_paths.add(s.path)
    counts = Counter(s.label for s in samples)
    empty = [c for c in classes if counts.get(c, 0) == 0]
    if empty:
        raise DatasetError(f"class(es) {empty} have no images; every class in {classes} needs at least one")
    groups = exact_groups({s.path: (digests[s.path], pixels.get(s.path, "")) for s in samples})
    refuse_label_conflicts(groups, {s.path: s.label for s in samples})


def _read_source(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror}); fix or remove the file") from None


def check_dest(dest: Path, *, overwrite: bool) -> None:
    """Refuse ``dest`` as the folder a new dataset is written to, before any work is done.

    Raises:
        DatasetError: ``dest`` names no folder (empty, ``.`` or ``..``); it exists and
            ``overwrite`` is False; or it exists and is not a dataset folder (no manifest.json),
            which ``overwrite`` never replaces.
    """
    dest = Path(dest)
    # Path("") and Path(".") have no name: replacing them would replace the current folder.
    if dest.name in ("", ".", ".."):
        raise DatasetError(f"--out {str(dest)!r} names no folder of its own; give a dataset folder, "
                           "e.g. datasets/coating")
    if not dest.exists():
        return
    if not overwrite:
        raise DatasetError(f"{dest} already exists; choose another --out or pass --overwrite")
    # --overwrite replaces an earlier dataset, never a file or a folder of something else.
    if not (dest / MANIFEST).is_file():
        what = "a folder" if dest.is_dir() else "a file"
        raise DatasetError(f"{dest} is {what} with no {MANIFEST}, not a dataset; --overwrite replaces only a "
                           "dataset folder: choose another --out")


def write_dataset(
    dest: Path,
    *,
    name: str,
    classes: list[str],
    good_class: str | None,
    items: Iterable[tuple[Sample, bytes | Path]],
    extra_manifest: dict[str, Any] | None = None,
    overwrite: bool = False,
    check_image: Callable[[bytes, str], Any] | None = None,
) -> Dataset:
    """Write a dataset in the standard layout, atomically.

    ``items`` yields (sample, content) where content is the encoded image bytes or a file to
    copy. ``check_image(data, source)`` (default: decode with OpenCV) rejects unreadable images;
    when it returns the decoded pixels, identical pixels in different files count as the same image.

    Raises:
        DatasetError: a label outside ``classes``, an empty class, identical images (bytes, or
            decoded pixels) under different labels (every one listed), an unreadable image, or
            ``dest`` exists and ``overwrite`` is False.
        ImageError: a source file cannot be read, or ``check_image`` found an unreadable or
            truncated image.

    ``dest`` is checked first (``check_dest``).
    """
    from inspection.preprocess import decode_image  # local: keeps layout importable alone

    dest = Path(dest)
    check_dest(dest, overwrite=overwrite)
    check = check_image or (lambda data, source: decode_image(data, source=source))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    except OSError as exc:
        raise DatasetError(f"cannot create {dest} ({exc.strerror}); choose another --out") from None
    try:
        samples: list[Sample] = []
        digests: dict[str, str] = {}
        pixels: dict[str, str] = {}
        for sample, content in items:
            data = content if isinstance(content, bytes) else _read_source(Path(content))
            decoded = check(data, str(content) if isinstance(content, Path) else sample.path)
            if isinstance(decoded, np.ndarray):
                pixels[sample.path] = pixel_digest(decoded)
            target = tmp / sample.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            digests[sample.path] = hashlib.sha256(data).hexdigest()
            samples.append(sample)
        _validate(samples, classes, good_class, digests, pixels)
        samples.sort(key=lambda s: s.path)
        with_group = any(s.group for s in samples)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([*_LABEL_FIELDS, *([_GROUP_FIELD] if with_group else [])])
        for s in samples:
            writer.writerow([s.path, s.label, s.split, s.source, *([s.group] if with_group else [])])
        (tmp / LABELS).write_text(buf.getvalue(), encoding="utf-8")
        fingerprint = compute_fingerprint(tmp, samples, digests=digests)
        counts = Counter(s.label for s in samples)
        manifest = {
            "name": name,
            "classes": classes,
            "good_class": good_class,
            "count": len(samples),
            "counts": {c: counts.get(c, 0) for c in classes},
            "fingerprint": fingerprint,
            "format": 1,
            **(extra_manifest or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if dest.exists():
            # A fresh name to move the old dataset aside to: a fixed one (".name.old") may be a
            # file someone keeps, which the rename would fail on or the clean-up delete.
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return read_dataset(dest)


def read_dataset(root: Path, *, verify: bool = False) -> Dataset:
    """Read a dataset in the standard layout.

    ``verify=True`` recomputes the fingerprint from the image bytes and checks every file.

    Raises:
        DatasetError: missing or unreadable manifest/labels (not UTF-8, a folder, a manifest that
            is no JSON object), a label outside the class list, a missing image file, or
            (verify) a fingerprint that no longer matches.
    """
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a dataset folder" if root.exists() else "does not exist"
        raise DatasetError(f"dataset folder {root} {what}")
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(
            f"{root} has no {MANIFEST}; import the images first with `inspection dataset import`"
        ) from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{root / MANIFEST} is not valid JSON: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:  # a folder of that name, no permission, not UTF-8
        raise DatasetError(f"{root / MANIFEST}: cannot read ({_why(exc)}); it must be a UTF-8 JSON file") from None
    _require_object(manifest, root / MANIFEST)
    try:
        with open(root / LABELS, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
                raise DatasetError(f"{root / LABELS} needs a header with at least path,label")
            samples = [
                Sample(
                    row["path"], row["label"], row.get("split") or "", row.get("source") or "", row.get("group") or ""
                )
                for row in reader
            ]
    except FileNotFoundError:
        raise DatasetError(f"{root} has no {LABELS}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{root / LABELS}: cannot read ({_why(exc)}); it must be a UTF-8 CSV file") from None
    classes = list(manifest.get("classes") or [])
    allowed = set(classes)
    for s in samples:
        if s.label not in allowed:
            raise DatasetError(f"{root / LABELS}: {s.path} has label {s.label!r}, not in the class list {classes}")
        if not (root / s.path).is_file():
            raise DatasetError(f"{root / LABELS}: image file {s.path} is missing")
    fingerprint = manifest.get("fingerprint", "")
    if verify:
        actual = compute_fingerprint(root, samples)
        if actual != fingerprint:
            raise DatasetError(
                f"{root}: fingerprint {actual[:12]}… differs from the manifest's {fingerprint[:12]}…; the data changed"
            )
    return Dataset(
        root=root,
        name=manifest.get("name", root.name),
        classes=classes,
        good_class=manifest.get("good_class"),
        samples=samples,
        fingerprint=fingerprint,
        manifest=manifest,
    )


def _why(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
    return exc.strerror or type(exc).__name__


def _require_object(manifest: Any, path: Path) -> None:
    """Raises DatasetError unless ``manifest`` is a JSON object (``[]`` or ``3`` parse as JSON too)."""
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path} holds a JSON {type(manifest).__name__}; a manifest is a JSON object "
                           "({\"name\": ..., \"classes\": [...], ...})")


def check_orientation(value: str | None) -> None:
    """Raises DatasetError when ``value`` is neither None nor one of ``ORIENTATIONS``."""
    if value is not None and value not in ORIENTATIONS:
        raise DatasetError(f"orientation {value!r} is not allowed; use one of {list(ORIENTATIONS)}")


def set_orientation(root: Path, value: str) -> None:
    """Record ``value`` as the dataset's orientation in its manifest (atomic rewrite; the
    fingerprint, which covers images, labels and splits, does not change).

    Raises:
        DatasetError: ``value`` not allowed, or ``root`` has no readable manifest.
    """
    check_orientation(value)
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: invalid JSON or not UTF-8
        raise DatasetError(f"{root}: cannot read {MANIFEST} ({exc}); is it a dataset folder?") from None
    _require_object(manifest, path)
    manifest["orientation"] = value
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
