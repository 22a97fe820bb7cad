"""Labels as inspection-log records and the labelling queue, on a real SQLite log."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from inspection import labels as L
from inspection.errors import ConflictError, ImageError, NotFoundError, ValidationError
from inspection.log.query import RecordFilter, query_records
from inspection.log.records import LogEntry, StoredRecord
from inspection.log.store import SqlInspectionLog, open_log

CLASSES = ["good", "scratch", "spot"]


def png(level: int, seed: int) -> bytes:
    img = np.clip(np.random.default_rng(seed).normal(level, 4, (24, 24)), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SqlInspectionLog]:
    store = open_log(f"sqlite:///{tmp_path / 'log.db'}", frame_sample_rate=1.0, sqlite_synchronous="NORMAL")
    yield store
    store.close()


_n = 0


def inspection(log: SqlInspectionLog, p_good: float, *, threshold: float = 0.5, keep: bool = True) -> StoredRecord:
    """An inspection record scored P(good) = p_good by model m/v1 (good class 'good')."""
    global _n
    _n += 1
    score = 1.0 - p_good
    decision = "reject" if score >= threshold else "pass"
    entry = LogEntry(kind="inspection", station="s1", camera="cam", part_id=f"p{_n}", decision=decision,
                     defect_class="scratch", scores={"good": p_good, "scratch": score * 0.7, "spot": score * 0.3},
                     threshold=threshold, model_name="m", model_version="v1")
    return log.append(entry, frame=png(int(p_good * 255), _n) if keep else None)


def test_labels_are_records_latest_wins_history_kept(log: SqlInspectionLog) -> None:
    frame = inspection(log, 0.3)
    fid = frame.entry.inspection_id
    first = L.add_label(log, fid, "scratch", classes=CLASSES, actor="ann", expected_revision=0)
    second = L.add_label(log, fid, "spot", classes=CLASSES, actor="bob", expected_revision=1)
    hist = L.history(log, fid)
    assert [h.label for h in hist.history] == ["scratch", "spot"]
    assert [h.actor for h in hist.history] == ["ann", "bob"]
    assert hist.current == "spot" and hist.revision == 2
    assert second.previous == "scratch" and second.time >= first.time
    recs = query_records(log, RecordFilter(kind="label", ref=fid), order="asc").records
    assert [r.entry.defect_class for r in recs] == ["scratch", "spot"]
    assert all(r.entry.frame_sha256 == frame.entry.frame_sha256 for r in recs)
    assert log.verify().ok


def test_undo_restores_the_previous_label_as_a_new_record(log: SqlInspectionLog) -> None:
    fid = inspection(log, 0.3).entry.inspection_id
    L.add_label(log, fid, "scratch", classes=CLASSES, actor="ann", expected_revision=0)
    L.add_label(log, fid, "spot", classes=CLASSES, actor="ann", expected_revision=1)
    undone = L.undo_label(log, fid, actor="ann", expected_revision=2)
    assert undone.label == "scratch" and undone.action == "undo" and undone.revision == 3
    L.undo_label(log, fid, actor="ann", expected_revision=3)  # undo of the undo re-applies "spot"
    assert L.history(log, fid).current == "spot"
    other = inspection(log, 0.3).entry.inspection_id
    L.add_label(log, other, "good", classes=CLASSES, actor="ann", expected_revision=0)
    L.undo_label(log, other, actor="ann", expected_revision=1)
    assert L.history(log, other).current is None
    assert len(L.history(log, other).history) == 2


def test_bad_input_is_refused_and_history_stays_intact(log: SqlInspectionLog) -> None:
    fid = inspection(log, 0.3).entry.inspection_id
    L.add_label(log, fid, "scratch", classes=CLASSES, actor="ann", expected_revision=0)
    before = L.history(log, fid).history
    with pytest.raises(ValidationError, match=r"label 'dent' is not one of the classes \['good', 'scratch', 'spot'\]"):
        L.add_label(log, fid, "dent", classes=CLASSES, actor="ann", expected_revision=1)
    with pytest.raises(NotFoundError, match="no-such-id"):
        L.add_label(log, "no-such-id", "spot", classes=CLASSES, actor="ann", expected_revision=0)
    with pytest.raises(ConflictError, match="revision 1, you saw revision 0"):
        L.add_label(log, fid, "spot", classes=CLASSES, actor="bob", expected_revision=0)
    not_kept = inspection(log, 0.9, keep=False).entry.inspection_id
    with pytest.raises(NotFoundError, match="no stored frame"):
        L.add_label(log, not_kept, "good", classes=CLASSES, actor="ann", expected_revision=0)
    label_rec = before[0].inspection_id
    with pytest.raises(ValidationError, match="is a 'label' record"):
        L.add_label(log, label_rec, "good", classes=CLASSES, actor="ann", expected_revision=0)
    with pytest.raises(ValidationError, match="no label to undo"):
        L.undo_label(log, inspection(log, 0.3).entry.inspection_id, actor="ann", expected_revision=None)
    assert L.history(log, fid).history == before
    assert log.verify().ok


def _relabel_race(fid: str, ann_log: SqlInspectionLog, bob_log: SqlInspectionLog) -> dict[str, Any]:
    """ann (scratch) and bob (spot) relabel ``fid`` at the same moment, both from revision 0;
    each one's outcome: the Label stored, or the ConflictError."""
    barrier = threading.Barrier(2)
    outcome: dict[str, Any] = {}

    def relabel(log: SqlInspectionLog, who: str, cls: str) -> None:
        barrier.wait()
        try:
            outcome[who] = L.add_label(log, fid, cls, classes=CLASSES, actor=who, expected_revision=0)
        except ConflictError as exc:
            outcome[who] = exc

    threads = [threading.Thread(target=relabel, args=(ann_log, "ann", "scratch")),
               threading.Thread(target=relabel, args=(bob_log, "bob", "spot"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcome


def test_concurrent_relabels_of_one_frame_one_wins_one_conflicts(log: SqlInspectionLog) -> None:
    for round_ in range(5):
        fid = inspection(log, 0.3).entry.inspection_id
        outcome = _relabel_race(fid, log, log)
        won = [w for w, o in outcome.items() if isinstance(o, L.Label)]
        lost = [w for w, o in outcome.items() if isinstance(o, ConflictError)]
        assert len(won) == 1 and len(lost) == 1, (round_, outcome)
        hist = L.history(log, fid)
        assert hist.revision == 1 and hist.history[0].actor == won[0]


def test_queue_order_uncertain_then_rejects_then_passes_then_imports(log: SqlInspectionLog) -> None:
    far_pass = [inspection(log, p) for p in (0.95, 0.99, 0.97)]
    near = {inspection(log, p).entry.inspection_id: abs((1 - p) - 0.5) for p in (0.45, 0.62, 0.52, 0.35)}
    far_reject = [inspection(log, p) for p in (0.05, 0.1)]
    failsafe = log.append(LogEntry(kind="inspection", station="s1", camera="cam", part_id="fs", decision="reject",
                                   failsafe_reason="overload: queue full", model_name="m", model_version="v1"),
                          frame=png(50, 999))
    imported = L.import_unlabelled(log, [("a.png", png(100, 1000)), ("b.png", png(100, 1001))], actor="ann")
    labelled = inspection(log, 0.5)
    L.add_label(log, labelled.entry.inspection_id, "spot", classes=CLASSES, actor="ann", expected_revision=0)
    inspection(log, 0.99, keep=False)  # a pass whose frame was not sampled: nothing to show

    opts = L.QueueOptions(margin=0.2, pass_sample=2, seed=3, good_classes={"m": "good"})
    q = L.labelling_queue(log, options=opts, limit=100)
    buckets = [i.bucket for i in q]
    assert buckets == ["uncertain"] * 4 + ["reject"] * 3 + ["pass"] * 2 + ["import"] * 2
    uncertain = [i.frame_id for i in q[:4]]
    assert uncertain == sorted(near, key=lambda k: near[k])
    assert [i.frame_id for i in q[4:7]] == [failsafe.entry.inspection_id, far_reject[1].entry.inspection_id,
                                            far_reject[0].entry.inspection_id]
    assert {i.frame_id for i in q[7:9]} <= {r.entry.inspection_id for r in far_pass}
    assert [i.frame_id for i in q[9:]] == [r.entry.inspection_id for r in imported]
    assert labelled.entry.inspection_id not in {i.frame_id for i in q}
    assert q[0].as_dict()["score"] == pytest.approx(0.5 + near[uncertain[0]] * (1 if q[0].score >= 0.5 else -1))
    # The sample of passes is seeded: the same queue twice, a different seed may differ.
    assert [i.frame_id for i in L.labelling_queue(log, options=opts)] == [i.frame_id for i in q]
    with_labelled = L.labelling_queue(log, options=opts, include_labelled=True)
    assert labelled.entry.inspection_id in {i.frame_id for i in with_labelled}
    with pytest.raises(ValidationError, match="limit 0"):
        L.labelling_queue(log, options=opts, limit=0)


def test_import_unlabelled_refuses_bad_images_and_skips_duplicates(log: SqlInspectionLog) -> None:
    first = L.import_unlabelled(log, [("a.png", png(80, 1))], actor="ann")
    again = L.import_unlabelled(log, [("a-copy.png", png(80, 1)), ("c.png", png(90, 2))], actor="ann")
    assert len(first) == 1 and len(again) == 1
    head = log.head()
    with pytest.raises(ImageError):
        L.import_unlabelled(log, [("ok.png", png(70, 3)), ("broken.png", b"\x89PNG\r\n\x1a\nbroken")], actor="ann")
    assert log.head() == head  # nothing written
    lab = L.add_label(log, first[0].entry.inspection_id, "spot", classes=CLASSES, actor="ann", expected_revision=0)
    assert lab.frame_sha256 == first[0].entry.frame_sha256


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def two_servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[SqlInspectionLog, SqlInspectionLog]]:
    """Two log handles (as two servers would hold) on one shared store."""
    from tests.helpers.logdb import log_factory

    with log_factory(request.param, tmp_path) as factory:
        yield factory.open(frame_sample_rate=1.0), factory.open(frame_sample_rate=1.0)


def test_relabels_through_two_servers_sharing_a_log_never_both_win(
        two_servers: tuple[SqlInspectionLog, SqlInspectionLog]) -> None:
    one, two = two_servers
    for _ in range(4):
        fid = inspection(one, 0.4).entry.inspection_id
        outcome = _relabel_race(fid, one, two)
        assert sorted(type(o).__name__ for o in outcome.values()) == ["ConflictError", "Label"], outcome
        assert L.history(two, fid).revision == 1
    assert one.verify().ok
