"""A new dataset version: a base dataset plus the labels engineers gave production frames.

``build_dataset(base, log, out)`` writes, in the standard layout (atomic, fingerprinted):

* every sample of the base dataset, unchanged (path, label, split, source);
* every frame of the inspection log whose *current* label (``inspection.labels``, latest wins;
  a frame whose latest record is an undo is left out) is set, copied from the log's frame store
  to ``images/production/<label>/<sha256[:20]>.<ext>`` — a raw frame (pixels without a header,
  read by the layout its record keeps) as a lossless PNG of the same pixels, 8- or 16-bit.

Classes are the base's classes, then any new label classes (sorted), so a defect type the base
model never saw becomes a new class. Production samples get an explicit split, grouped by part
(views of one part stay together), each part's from its own seeded hash: the same log and seed
always give the same split, so a model trained on the version and the model it replaces can be
compared on the same held-out test split (``inspection models compare``), and a part keeps its
split in every later version built with the same seed and fractions. Nothing forces a class
into val or test (that would move a part into test when its class gained parts); the classes
left without val or test images are listed in the lineage (``split.not_held_out``).

The manifest's ``lineage`` says what went in: the base (name, fingerprint), the log (url
without password, head seq and hash at build time) and, per production sample, the frame's
record, the label record (id, seq, revision), who labelled it and when. Labels whose frame is
no longer stored (pruned), or raw frames whose layout was not recorded, are listed under
``skipped`` with the reason.

A labelled frame whose image (the bytes the version would hold) is already a base sample is not
added again: it is listed under ``in_base`` with the base sample's path and split, and its part
keeps that split — a copy of a base training image in the test split would have the model scored
on a frame it was trained on. Its label must be the base sample's (refused otherwise, both
named). Building from an earlier built version therefore adds only what was labelled since.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from inspection.card import utc_now
from inspection.config import safe_url
from inspection.dataset.layout import (
    Dataset,
    Sample,
    check_dest,
    compute_fingerprint,
    file_sha256,
    read_dataset,
    write_dataset,
)
from inspection.errors import DatasetError, ImageError, NotFoundError, ValidationError
from inspection.frameview import RawLayout, decode_stored
from inspection.labels import all_labels
from inspection.log.records import StoredRecord
from inspection.log.store import SqlInspectionLog
from inspection.preprocess import RAW_TYPE, media_type

_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/bmp": "bmp", "image/tiff": "tif"}


@dataclass(frozen=True)
class _Prod:
    frame_id: str
    sha: str
    label: str
    group: str
    data: bytes
    lineage: dict[str, Any]


def _as_image_file(rec: StoredRecord, data: bytes) -> tuple[bytes, dict[str, Any]]:
    """(bytes a dataset holds, lineage notes): encoded frames as they are; raw pixels, which no
    image reader can open, as a lossless PNG of the same pixels (16-bit stays 16-bit).

    Raises:
        ImageError: raw pixels without a recorded layout, or not fitting it.
    """
    source = f"frame {rec.entry.inspection_id}"
    raw = RawLayout.of_record(rec.entry.data)
    if raw is None and media_type(data) != RAW_TYPE:
        return data, {}
    image = decode_stored(data, raw, source=source)  # raw bytes without a layout: refused, saying why
    ok, buf = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover -- OpenCV encodes any 8/16-bit gray or BGR image
        raise ImageError(f"{source}: its pixels could not be encoded as PNG")
    channels = 1 if image.ndim == 2 else image.shape[2]
    return buf.tobytes(), {"sent_as": f"raw {image.shape[1]}x{image.shape[0]}x{channels}, "
                                      f"{8 * image.dtype.itemsize}-bit; written as PNG"}


def _group_split(group: str, *, seed: int, val_fraction: float, test_fraction: float) -> str:
    """A part's split from its own hash alone, never from the other parts: ranking each label's
    parts and cutting at a share moved 3-8% of them between versions as labels were added (a part
    in v2's train in v3's test, where the gate then scores v2 on a part it was trained on)."""
    u = int(hashlib.sha256(f"{seed}\0{group}".encode()).hexdigest(), 16) / 2**256
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def _not_held_out(samples: list[Sample], classes: list[str]) -> dict[str, list[str]]:
    """class -> the held-out splits (val, test) where the version has none of its images; classes
    with images of no given split (split at training) are left out."""
    splits: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        splits[s.label].add(s.split)
    return {c: missing for c in classes if "" not in splits[c]
            and (missing := [sp for sp in ("val", "test") if sp not in splits[c]])}


def build_dataset(
    base: Path,
    log: SqlInspectionLog,
    out: Path,
    *,
    log_url: str = "",
    name: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    overwrite: bool = False,
) -> Dataset:
    """Write base + production labels as a new dataset version at ``out``.

    Raises:
        DatasetError: the base is unreadable or its files no longer match its manifest's
            fingerprint, ``out`` refused (``check_dest``), one image carries two different current
            labels (two frames, or a frame and a base sample), or the result fails the layout's checks.
        ValidationError: fractions outside (0, 0.5).
    """
    for what, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < f < 0.5:
            raise ValidationError(f"{what} {f!r} must be between 0 and 0.5")
    base_ds = read_dataset(base)
    base_digests = _verified_digests(base_ds)
    out = Path(out)
    check_dest(out, overwrite=overwrite)
    head_seq, head_hash = log.head()
    prods: list[_Prod] = []
    skipped: list[dict[str, Any]] = []
    for frame_id, fl in sorted(all_labels(log).items(), key=lambda kv: kv[1].history[-1].seq):
        latest = fl.latest
        if latest is None or latest.label is None:
            continue
        try:
            rec = log.get(frame_id)
            data, notes = _as_image_file(rec, log.frame(rec.entry.frame_sha256 or ""))
        except (NotFoundError, ValidationError, ImageError) as exc:
            skipped.append({"frame_id": frame_id, "label": latest.label, "reason": str(exc)})
            continue
        e = rec.entry
        sha = e.frame_sha256 or ""
        group = f"part:{e.station}/{e.part_id}" if e.part_id else f"frame:{sha}"
        prods.append(_Prod(frame_id, sha, latest.label, group, data, {
            "frame_id": frame_id, "frame_sha256": sha, "frame_kind": e.kind, "station": e.station, "camera": e.camera,
            "part_id": e.part_id, "label": latest.label, "label_record": latest.inspection_id,
            "label_seq": latest.seq, "revision": latest.revision, "labelled_by": latest.actor,
            "labelled_at": latest.time.isoformat(), "decided": e.decision,
            "decided_by": f"{e.model_name}/{e.model_version}" if e.model_name else None, **notes,
        }))
    by_sha: dict[str, _Prod] = {}
    for p in prods:
        other = by_sha.get(p.sha)
        if other is not None and other.label != p.label:
            raise DatasetError(f"frame {p.frame_id!r} is labelled {p.label!r} and frame {other.frame_id!r} with the "
                               f"same image is labelled {other.label!r}; one image can have only one label — relabel "
                               f"one of them")
        by_sha.setdefault(p.sha, p)
    in_base = _in_base(base_ds, base_digests, prods)
    fixed = _base_splits(base_ds, prods, in_base)
    splits = {**{p.group: _group_split(p.group, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
                 for p in prods}, **fixed}
    new_classes = sorted({p.label for p in prods} - set(base_ds.classes))
    classes = [*base_ds.classes, *new_classes]

    items: list[tuple[Sample, bytes | Path]] = [(s, base_ds.path_of(s)) for s in base_ds.samples]
    lineage_samples: list[dict[str, Any]] = []
    lineage_in_base: list[dict[str, Any]] = []
    written: dict[str, tuple[str, str]] = {}  # sha -> (path, split): the same image seen twice is one sample
    for p in prods:
        twin = in_base.get(p.frame_id)
        if twin is not None:
            lineage_in_base.append({"path": twin.path, "split": twin.split, **p.lineage})
            continue
        if p.sha not in written:
            first = by_sha[p.sha]
            path = f"images/production/{p.label}/{p.sha[:20]}.{_EXT.get(media_type(p.data), 'img')}"
            written[p.sha] = (path, splits[first.group])
            items.append((Sample(path, p.label, splits[first.group], first.group), p.data))
        path, split = written[p.sha]
        lineage_samples.append({"path": path, "split": split, **p.lineage})
    lineage = {
        "built": utc_now().isoformat(),
        "base": {"name": base_ds.name, "fingerprint": base_ds.fingerprint, "path": str(Path(base).resolve()),
                 "count": len(base_ds.samples)},
        "log": {"url": safe_url(log_url) if log_url else None, "head_seq": head_seq, "head_hash": head_hash},
        "split": {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
                  "rule": "production samples: grouped by part, each part's split from u = sha256(seed, group) / "
                          "2**256: test below test_fraction, val below test_fraction + val_fraction, else train",
                  "not_held_out": _not_held_out([s for s, _ in items], classes)},
        "new_classes": new_classes,
        "labels": lineage_samples,
        "in_base": lineage_in_base,
        "skipped": skipped,
    }
    return write_dataset(out, name=name or out.name, classes=classes, good_class=base_ds.good_class, items=items,
                         extra_manifest={"lineage": lineage}, overwrite=overwrite)


def _verified_digests(base_ds: Dataset) -> dict[str, str]:
    """path -> sha256 of every base image, once they are shown to match the base's manifest.

    Raises:
        DatasetError: the images no longer give the manifest's fingerprint (the base named).
    """
    digests = {s.path: file_sha256(base_ds.path_of(s)) for s in base_ds.samples}
    # The lineage records the base's fingerprint as what the version was built on: that must be
    # what its files hold, not what its manifest said when it was written.
    actual = compute_fingerprint(base_ds.root, base_ds.samples, digests=digests)
    if actual != base_ds.fingerprint:
        raise DatasetError(f"base {base_ds.root} ({base_ds.name!r}): its images and labels give fingerprint "
                           f"{actual[:12]}…, its manifest says {base_ds.fingerprint[:12]}…; the base changed "
                           "since it was written — restore it, or re-import it to give it a fingerprint of its own")
    return digests


def _in_base(base_ds: Dataset, digests: dict[str, str], prods: list[_Prod]) -> dict[str, Sample]:
    """frame id -> the base sample holding the same image (the bytes the version would hold).

    Raises:
        DatasetError: a frame's label is not that base sample's (both named).
    """
    by_digest: dict[str, Sample] = {}
    for s in base_ds.samples:
        by_digest.setdefault(digests[s.path], s)
    found: dict[str, Sample] = {}
    for p in prods:
        twin = by_digest.get(hashlib.sha256(p.data).hexdigest())
        if twin is None:
            continue
        if twin.label != p.label:
            # As for two frames of one image: the version could hold only one of the two labels.
            built = base_ds.manifest.get("lineage")
            earlier = built.get("base") if isinstance(built, dict) else None
            hint = (f"; if it was relabelled since {base_ds.name!r} was built, build from that version's own base "
                    f"({earlier.get('path')}) instead" if isinstance(earlier, dict) else "")
            raise DatasetError(f"frame {p.frame_id!r} is labelled {p.label!r} and base sample {twin.path!r} of "
                               f"{base_ds.name!r}, the same image, is labelled {twin.label!r}; one image can have "
                               f"only one label — relabel the frame or correct the base{hint}")
        found[p.frame_id] = twin
    return found


def _base_splits(base_ds: Dataset, prods: list[_Prod], in_base: dict[str, Sample]) -> dict[str, str]:
    """group -> split for the production groups the base already holds (an identical image, or a
    sample of the same ``group``): they keep the base's split, the most held-out where it has several,
    so that no part the base trains on is tested on here, nor the other way round."""
    given: dict[str, set[str]] = defaultdict(set)
    for s in base_ds.samples:
        if s.group:
            given[s.group].add(s.split)
    for p in prods:
        twin = in_base.get(p.frame_id)
        if twin is not None:
            given[p.group].add(twin.split)
    wanted = {p.group for p in prods}
    return {g: next(sp for sp in ("test", "val", "train", "") if sp in splits)
            for g, splits in given.items() if g in wanted}
