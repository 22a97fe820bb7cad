"""Labels on stored frames, kept as inspection-log records; and the labelling queue.

A **frame** to label is a log record that holds a stored frame: an ``inspection`` record (a
production frame the line saw) or an ``event`` record of type ``unlabelled_import`` (a frame
brought in with ``inspection dataset import-unlabelled``). Its *frame id* is that record's
``inspection_id``.

A **label** is a ``label`` record whose ``ref`` is the frame id, with the frame's sha256, the
class in ``defect_class`` and ``data = {"label", "revision", "previous", "action"}``; ``actor``
and ``time`` say who and when. Nothing is ever overwritten: relabelling appends a record, the
latest one wins, the history stays in the log. An *undo* is a label record too (``action``
``"undo"``) restoring the label of the revision before (``None`` = unlabelled again).

Concurrent relabels: the client sends the revision it saw (the number of label records of the
frame). A label record's ``inspection_id`` is derived from (frame id, revision), and the log
refuses a duplicate id in the same transaction that would store it, so of two engineers who
both saw revision 3 exactly one writes revision 4; the other gets ``ConflictError`` (HTTP 409)
even when they talk to different servers sharing one PostgreSQL log.

Queue order (``labelling_queue``): frames without a current label, in four buckets —
``uncertain`` (score within ``margin`` of the threshold, nearest first), then ``reject``
(newest first), then a seeded random sample of ``pass`` frames (passes are only stored at the
log's frame sample rate), then ``import`` (unlabelled imports, oldest first).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from inspection.errors import ConflictError, NotFoundError, ValidationError
from inspection.log.query import MAX_LIMIT, RecordFilter, query_records
from inspection.log.records import LogEntry, StoredRecord
from inspection.log.store import SqlInspectionLog

#: ``data["event"]`` of the ``event`` records that bring unlabelled frames into the log.
IMPORT_EVENT = "unlabelled_import"
LABELABLE_KINDS = ("inspection", "event")
BUCKETS = ("uncertain", "reject", "pass", "import")


@dataclass(frozen=True, slots=True)
class Label:
    """One label record of a frame."""

    seq: int
    inspection_id: str
    frame_id: str
    frame_sha256: str | None
    label: str | None          # None: the frame was returned to "unlabelled" (an undo)
    revision: int
    previous: str | None
    action: str                # "label" | "undo"
    actor: str | None
    time: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "inspection_id": self.inspection_id, "frame_id": self.frame_id,
                "frame_sha256": self.frame_sha256, "label": self.label, "revision": self.revision,
                "previous": self.previous, "action": self.action, "actor": self.actor,
                "time": self.time.isoformat()}


@dataclass(frozen=True, slots=True)
class FrameLabels:
    """A frame's label history (oldest first); the latest label wins."""

    frame_id: str
    history: tuple[Label, ...]

    @property
    def revision(self) -> int:
        return len(self.history)

    @property
    def current(self) -> str | None:
        return self.history[-1].label if self.history else None

    @property
    def latest(self) -> Label | None:
        return self.history[-1] if self.history else None


def _label_from(rec: StoredRecord) -> Label:
    e = rec.entry
    data = e.data or {}
    return Label(seq=rec.seq, inspection_id=e.inspection_id, frame_id=e.ref or "", frame_sha256=e.frame_sha256,
                 label=data.get("label"), revision=int(data.get("revision", 0)), previous=data.get("previous"),
                 action=str(data.get("action", "label")), actor=e.actor, time=e.time)


def label_record_id(frame_id: str, revision: int) -> str:
    """The ``inspection_id`` of the label record that makes ``revision`` of a frame.

    Deterministic, so two writers of the same revision collide on the log's unique id.
    """
    return "label-" + hashlib.sha256(f"{frame_id}\0{revision}".encode()).hexdigest()[:40]


def _all(log: SqlInspectionLog, flt: RecordFilter, *, order: str = "asc") -> list[StoredRecord]:
    out: list[StoredRecord] = []
    cursor = None
    while True:
        page = query_records(log, flt, cursor=cursor, limit=MAX_LIMIT, order=order)  # type: ignore[arg-type]
        out += page.records
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


def is_import(rec: StoredRecord) -> bool:
    return rec.entry.kind == "event" and (rec.entry.data or {}).get("event") == IMPORT_EVENT


def frame_record(log: SqlInspectionLog, frame_id: str) -> StoredRecord:
    """The record holding the frame to label.

    Raises:
        NotFoundError: no record has that id, or its frame is not stored (not sampled, pruned).
        ValidationError: the record is not an inspection or an unlabelled import.
    """
    if not isinstance(frame_id, str) or not frame_id or len(frame_id) > 64 or not frame_id.isprintable():
        raise ValidationError(
            f"frame id {frame_id!r} must be a log record's inspection id (1..64 printable characters)"
        )
    rec = log.get(frame_id)
    if not (rec.entry.kind == "inspection" or is_import(rec)):
        raise ValidationError(f"record {frame_id!r} is a {rec.entry.kind!r} record; labels apply to 'inspection' "
                              f"records and unlabelled imports ('event' records of type {IMPORT_EVENT!r})")
    if not log.has_frame(rec.entry.frame_sha256):
        raise NotFoundError(f"record {frame_id!r} has no stored frame (passes are kept only at the frame sample rate, "
                            "and retention prunes old frames); there is nothing to label")
    return rec


def history(log: SqlInspectionLog, frame_id: str) -> FrameLabels:
    """Every label of a frame, oldest first (does not check that the frame exists)."""
    recs = _all(log, RecordFilter(kind="label", ref=frame_id))
    return FrameLabels(frame_id, tuple(_label_from(r) for r in recs))


def all_labels(log: SqlInspectionLog) -> dict[str, FrameLabels]:
    """Label history of every labelled frame: frame id -> history (oldest first)."""
    by_frame: dict[str, list[Label]] = {}
    for rec in _all(log, RecordFilter(kind="label")):
        lab = _label_from(rec)
        by_frame.setdefault(lab.frame_id, []).append(lab)
    return {fid: FrameLabels(fid, tuple(labs)) for fid, labs in by_frame.items()}


def check_label(label: Any, classes: Sequence[str]) -> str:
    """``label`` if it is one of ``classes``.

    Raises:
        ValidationError: not a string, or not in the class list (the message lists it).
    """
    if not isinstance(label, str) or label not in classes:
        raise ValidationError(f"label {label!r} is not one of the classes {list(classes)}")
    return label


def _append(log: SqlInspectionLog, frame: StoredRecord, *, label: str | None, revision: int, previous: str | None,
            action: str, actor: str | None, extra: dict[str, Any] | None = None) -> Label:
    e = frame.entry
    entry = LogEntry(
        kind="label", inspection_id=label_record_id(e.inspection_id, revision), ref=e.inspection_id,
        station=e.station, camera=e.camera, part_id=e.part_id, frame_sha256=e.frame_sha256, defect_class=label,
        model_name=e.model_name, model_version=e.model_version, actor=actor,
        data={"label": label, "revision": revision, "previous": previous, "action": action, **(extra or {})},
    )
    try:
        stored = log.append(entry)
    except ConflictError:
        raise ConflictError(f"frame {e.inspection_id!r} was relabelled by someone else at the same time "
                            f"(revision {revision} already exists); reload it and label again") from None
    return _label_from(stored)


def _check_revision(frame_id: str, expected: int | None, current: FrameLabels) -> None:
    if expected is None:
        return
    if isinstance(expected, bool) or not isinstance(expected, int) or expected < 0:
        raise ValidationError(f"expected_revision {expected!r} must be a whole number >= 0")
    if expected != current.revision:
        latest = current.latest
        who = (
            f" (latest: {latest.label!r} by {latest.actor or 'unknown'} at {latest.time.isoformat()})" if latest else ""
        )
        raise ConflictError(f"frame {frame_id!r} is at revision {current.revision}, you saw revision {expected}{who}; "
                            "reload it and label again")


def add_label(log: SqlInspectionLog, frame_id: str, label: str, *, classes: Sequence[str], actor: str | None,
              expected_revision: int | None) -> Label:
    """Label a stored frame (a new label record; earlier labels stay in the log).

    ``expected_revision`` is the revision the labeller saw (``None`` = do not check; the
    write itself still cannot clash with a concurrent one).

    Raises:
        ValidationError: the label is not in ``classes``, or the record is not labelable.
        NotFoundError: no such record, or its frame is not stored.
        ConflictError: the frame moved past ``expected_revision`` (someone relabelled it).
    """
    check_label(label, classes)
    frame = frame_record(log, frame_id)
    current = history(log, frame_id)
    _check_revision(frame_id, expected_revision, current)
    return _append(log, frame, label=label, revision=current.revision + 1, previous=current.current,
                   action="label", actor=actor)


def undo_label(log: SqlInspectionLog, frame_id: str, *, actor: str | None, expected_revision: int | None) -> Label:
    """Undo the frame's latest label: a new record restoring the label before it.

    Raises:
        NotFoundError / ValidationError: as ``add_label``; ValidationError when the frame has no label.
        ConflictError: the frame moved past ``expected_revision``.
    """
    frame = frame_record(log, frame_id)
    current = history(log, frame_id)
    _check_revision(frame_id, expected_revision, current)
    latest = current.latest
    if latest is None:
        raise ValidationError(f"frame {frame_id!r} has no label to undo")
    # Undoing an undo re-applies what it undid; undoing a label restores its predecessor.
    restored = latest.previous
    return _append(log, frame, label=restored, revision=current.revision + 1, previous=current.current,
                   action="undo", actor=actor, extra={"undoes_seq": latest.seq})


@dataclass(frozen=True, slots=True)
class QueueItem:
    frame_id: str
    bucket: str
    record: StoredRecord
    revision: int
    label: str | None
    distance: float | None = None

    score: float | None = None

    def as_dict(self) -> dict[str, Any]:
        e = self.record.entry
        score = self.score
        return {
            "frame_id": self.frame_id, "bucket": self.bucket, "frame_sha256": e.frame_sha256,
            "source": "import" if is_import(self.record) else "production",
            "station": e.station, "camera": e.camera, "part_id": e.part_id, "time": e.time.isoformat(),
            "decision": e.decision, "defect_class": e.defect_class, "score": score, "threshold": e.threshold,
            "scores": e.scores, "model_version": f"{e.model_name}/{e.model_version}" if e.model_name else None,
            "import_source": (e.data or {}).get("source") if is_import(self.record) else None,
            "revision": self.revision, "label": self.label,
        }


def _score(rec: StoredRecord, good_classes: dict[str, str] | None = None) -> float | None:
    """P(defect) = 1 - P(good) of an inspection record, from its class probabilities.

    The good class comes from the scoring model's card (``good_classes``: model name -> good
    class); None when it is unknown or the record has no probabilities (a fail-safe reject).
    """
    e = rec.entry
    if not e.scores or not e.model_name:
        return None
    good = (good_classes or {}).get(e.model_name)
    if good is None or good not in e.scores:
        return None
    return max(0.0, min(1.0, 1.0 - float(e.scores[good])))


@dataclass
class QueueOptions:
    """How the queue is drawn (``ServeSettings.labelling`` builds one)."""

    #: Frames with |score - threshold| <= margin count as uncertain.
    margin: float = 0.2
    #: Passes shown per queue (a random sample of the stored passes).
    pass_sample: int = 50
    #: Only this many newest inspection records are considered (bounded work on a big log).
    window: int = 5000
    seed: int = 0
    good_classes: dict[str, str] = field(default_factory=dict)  # model name -> good class


def _candidates(log: SqlInspectionLog, window: int) -> list[StoredRecord]:
    recs: list[StoredRecord] = []
    cursor = None
    while len(recs) < window:
        page = query_records(
            log, RecordFilter(kind="inspection"), cursor=cursor, limit=min(MAX_LIMIT, window - len(recs))
        )
        recs += page.records
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    recs += [r for r in _all(log, RecordFilter(kind="event")) if is_import(r)]
    return recs


def labelling_queue(log: SqlInspectionLog, *, options: QueueOptions | None = None, limit: int = 50,
                    include_labelled: bool = False) -> list[QueueItem]:
    """Frames to label, in queue order (see the module docstring).

    Raises:
        ValidationError: ``limit`` outside 1..1000.
    """
    return queue_with_progress(log, options=options, limit=limit, include_labelled=include_labelled)[0]


def queue_with_progress(log: SqlInspectionLog, *, options: QueueOptions | None = None, limit: int = 50,
                        include_labelled: bool = False) -> tuple[list[QueueItem], dict[str, Any]]:
    """The queue (as :func:`labelling_queue`) and how far labelling has come over the frames it
    draws from: labelled of total, by class (at most ``MAX_LIMIT`` frames; ``capped`` says when
    there are more). One read of the log serves both.

    Raises:
        ValidationError: ``limit`` outside 1..1000.
    """
    opts = options or QueueOptions()
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit {limit} must be between 1 and {MAX_LIMIT}")
    buckets = _classified(log, opts)
    everything = _in_order(buckets, opts, include_labelled=True, limit=MAX_LIMIT)
    by_class: dict[str, int] = {}
    for q in everything:
        if q.label is not None:
            by_class[q.label] = by_class.get(q.label, 0) + 1
    progress = {"labelled": sum(by_class.values()), "total": len(everything), "by_class": by_class,
                "capped": len(everything) >= MAX_LIMIT}
    return _in_order(buckets, opts, include_labelled=include_labelled, limit=limit), progress


def _classified(log: SqlInspectionLog, opts: QueueOptions) -> dict[str, list[QueueItem]]:
    """Every candidate frame with a stored frame, labelled or not, in its bucket (unordered)."""
    labels = all_labels(log)
    buckets: dict[str, list[QueueItem]] = {b: [] for b in BUCKETS}
    seen: set[str] = set()
    for rec in _candidates(log, opts.window):
        e = rec.entry
        sha = e.frame_sha256
        if e.inspection_id in seen or not sha or not log.has_frame(sha):
            continue
        seen.add(e.inspection_id)
        fl = labels.get(e.inspection_id)
        current = fl.current if fl else None
        rev = fl.revision if fl else 0
        if is_import(rec):
            buckets["import"].append(QueueItem(e.inspection_id, "import", rec, rev, current))
            continue
        score = _score(rec, opts.good_classes)
        if score is None or e.threshold is None:
            if e.decision == "reject" and not (e.failsafe_reason or "").startswith("undecodable"):
                buckets["reject"].append(QueueItem(e.inspection_id, "reject", rec, rev, current))
            continue
        distance = abs(score - e.threshold)
        if distance <= opts.margin:
            buckets["uncertain"].append(QueueItem(e.inspection_id, "uncertain", rec, rev, current, distance, score))
        elif e.decision == "reject":
            buckets["reject"].append(QueueItem(e.inspection_id, "reject", rec, rev, current, distance, score))
        else:
            buckets["pass"].append(QueueItem(e.inspection_id, "pass", rec, rev, current, distance, score))
    return buckets


def _in_order(buckets: dict[str, list[QueueItem]], opts: QueueOptions, *, include_labelled: bool,
              limit: int) -> list[QueueItem]:
    """Queue order: labelled frames dropped (unless asked for) *before* the pass sample is drawn."""
    kept = {b: [q for q in items if include_labelled or q.label is None] for b, items in buckets.items()}
    kept["uncertain"].sort(key=lambda q: (q.distance, -q.record.seq))
    kept["reject"].sort(key=lambda q: -q.record.seq)
    passes = sorted(kept["pass"], key=lambda q: q.record.seq)
    rng = random.Random(opts.seed)
    kept["pass"] = rng.sample(passes, min(len(passes), opts.pass_sample))
    kept["import"].sort(key=lambda q: q.record.seq)
    ordered = [q for b in BUCKETS for q in kept[b]]
    return ordered[:limit]


def import_unlabelled(log: SqlInspectionLog, files: Iterable[tuple[str, bytes]], *, actor: str | None,
                      station: str | None = None) -> list[StoredRecord]:
    """Bring frames without labels into the log (``event`` records with the frame stored).

    ``files`` yields (source name, encoded image bytes). A frame already imported (same sha256)
    is skipped. Raises ImageError for bytes that do not decode, before anything is written.
    """
    from inspection.log.framestore import sha256_hex
    from inspection.preprocess import decode_image

    items = list(files)
    for source, data in items:
        decode_image(data, source=source)
    known = {r.entry.frame_sha256 for r in _all(log, RecordFilter(kind="event")) if is_import(r)}
    out: list[StoredRecord] = []
    for source, data in items:
        sha = sha256_hex(data)
        if sha in known:
            continue
        known.add(sha)
        entry = LogEntry(kind="event", station=station, actor=actor, frame_sha256=sha,
                         data={"event": IMPORT_EVENT, "source": source})
        out.append(log.append(entry, frame=data))
    return out
