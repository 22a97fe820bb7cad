"""Appending: group commit, durability contract, validation, frames, several writers, migrations.

Over 400 lines because it mirrors the store facade's one contract (append is durable, ordered
and validated) across both engines; split by engine, the same assertions would be written twice.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from inspection.errors import ConfigError, ConflictError, InspectionError, NotFoundError, ValidationError
from inspection.log.framestore import sha256_hex
from inspection.log.migrate import current_revision
from inspection.log.records import InspectionLog, LogEntry
from inspection.log.store import open_log


def test_append_returns_the_committed_record_and_get_reads_it_back(log: Any) -> None:
    entry = LogEntry(kind="inspection", time=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), station="s",
                     camera="c", part_id="P1", decision="reject", defect_class="dent", scores={"ok": 0.2, "dent": 0.8},
                     threshold=1, model_name="m", model_version="3", model_sha256="a" * 64, latency_ms=2,
                     failsafe_reason=None, actor="line-1", data={"plc": {"ack": True}})
    stored = log.append(entry)
    assert stored.seq == 1
    got = log.get(entry.inspection_id)
    assert got == stored
    assert got.entry.threshold == 1.0 and isinstance(got.entry.threshold, float)
    assert got.entry.time == entry.time
    assert got.entry.scores == {"ok": 0.2, "dent": 0.8}


def test_the_store_has_every_member_of_the_inspection_log_protocol(log: Any) -> None:
    # Serving uses these members directly (no hasattr probes), so every store must have them all.
    declared = {n for n in vars(InspectionLog) if not n.startswith("_")} | set(InspectionLog.__annotations__)
    assert {"append", "append_async", "get", "close", "frame_sample_rate", "inline_commit_when"} <= declared
    assert isinstance(log, InspectionLog)
    assert [n for n in sorted(declared) if not hasattr(log, n)] == []
    assert log.frame_sample_rate == 0.0 and log.inline_commit_when is None

    def idle() -> bool:
        return True

    log.inline_commit_when = idle
    assert log.inline_commit_when is idle


def test_get_unknown_id_is_not_found(log: Any) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        log.get("nope")


def test_concurrent_appends_share_commits_and_keep_one_chain(log: Any) -> None:
    n_threads, per_thread = 8, 25
    barrier = threading.Barrier(n_threads)
    errors: list[Exception] = []

    def worker(t: int) -> None:
        barrier.wait()
        try:
            for i in range(per_thread):
                log.append(LogEntry(kind="inspection", station=f"s{t}", part_id=f"{t}-{i}", decision="pass"))
        except Exception as exc:  # noqa: BLE001 -- surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    total = n_threads * per_thread
    assert log.stats.records == total
    assert log.stats.commits < total, "group commit should put concurrent appends into shared transactions"
    report = log.verify()
    assert report.ok and report.records == total


def test_append_async_does_not_block_and_batches(log: Any) -> None:
    async def main() -> list[Any]:
        return await asyncio.gather(*(log.append_async(LogEntry(kind="inspection", part_id=str(i), decision="pass"))
                                      for i in range(64)))

    stored = asyncio.run(main())
    assert sorted(r.seq for r in stored) == list(range(1, 65))
    assert log.stats.largest_batch > 1
    assert log.verify().ok


def test_duplicate_id_fails_alone_without_failing_its_batch(log: Any) -> None:
    first = log.append(LogEntry(kind="inspection", decision="pass"))

    async def main() -> list[Any]:
        entries = [LogEntry(kind="inspection", decision="pass") for _ in range(5)]
        entries.insert(2, LogEntry(kind="inspection", inspection_id=first.entry.inspection_id, decision="reject"))
        return await asyncio.gather(*(log.append_async(e) for e in entries), return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[2], ConflictError) and first.entry.inspection_id in str(results[2])
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 5
    assert log.verify().ok and log.head()[0] == 6


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (LogEntry(kind="bogus"), "kind 'bogus'"),  # type: ignore[arg-type]
        (LogEntry(kind="inspection", station="x" * 129), "station is 129 characters"),
        (LogEntry(kind="inspection", part_id="a\x00b"), "NUL"),
        (LogEntry(kind="inspection", latency_ms=float("nan")), "latency_ms"),
        (LogEntry(kind="inspection", scores={"ok": float("inf")}), "scores"),
        (LogEntry(kind="inspection", data={"x": object()}), "not plain JSON"),
        (LogEntry(kind="inspection", inspection_id=""), "inspection_id"),
        # A lone surrogate: refused with its field, not a failed write counted as a log failure.
        (LogEntry(kind="inspection", part_id="P\ud800"), "part_id is not valid text"),
        (LogEntry(kind="inspection", data={"note": "\udc80"}), "data is not valid text"),
    ],
)
def test_bad_entries_are_refused_with_a_reason(log: Any, entry: LogEntry, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        log.append(entry)
    assert log.head()[0] == 0
    assert log.stats.failing_since is None


def test_a_negative_zero_reads_back_and_verifies_as_it_was_hashed(log: Any) -> None:
    # SQLite stores -0.0 as 0.0: hashed as "-0.0", the untouched record failed verify as edited.
    stored = log.append(LogEntry(kind="inspection", decision="pass", threshold=-0.0, latency_ms=-0.0))
    assert log.get(stored.entry.inspection_id) == stored
    assert log.verify().ok


def test_reject_frames_always_kept_passes_only_at_sample_rate(logs: Any) -> None:
    log = logs.open(frame_sample_rate=0.0)
    reject = log.append(LogEntry(kind="inspection", decision="reject"), frame=b"reject-frame")
    failsafe = log.append(LogEntry(kind="inspection", decision="reject", failsafe_reason="timeout"), frame=b"fs")
    passed = log.append(LogEntry(kind="inspection", decision="pass"), frame=b"pass-frame")
    assert reject.entry.frame_sha256 == sha256_hex(b"reject-frame")
    assert log.frame(reject.entry.frame_sha256) == b"reject-frame"
    assert log.has_frame(failsafe.entry.frame_sha256)
    assert passed.entry.frame_sha256 == sha256_hex(b"pass-frame")  # the record names it even if not kept
    assert not log.has_frame(passed.entry.frame_sha256)
    with pytest.raises(NotFoundError, match="not stored"):
        log.frame(passed.entry.frame_sha256)
    log.close()
    sampled = logs.open(frame_sample_rate=1.0)
    p2 = sampled.append(LogEntry(kind="inspection", decision="pass"), frame=b"pass-frame-2")
    assert sampled.frame(p2.entry.frame_sha256) == b"pass-frame-2"


def test_frame_sha_mismatch_is_refused(log: Any) -> None:
    with pytest.raises(ValidationError, match="does not match"):
        log.append(LogEntry(kind="inspection", decision="reject", frame_sha256="0" * 64), frame=b"x")


def test_two_logs_on_one_database_extend_one_chain(logs: Any) -> None:
    # Two servers (two engines, two writer threads) sharing one log must not fork the chain.
    a, b = logs.open(), logs.open()
    barrier = threading.Barrier(2)

    def worker(lg: Any, name: str) -> None:
        barrier.wait()
        for i in range(60):
            lg.append(LogEntry(kind="inspection", station=name, part_id=str(i), decision="pass"))

    threads = [threading.Thread(target=worker, args=(lg, n)) for lg, n in ((a, "A"), (b, "B"))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    report = a.verify()
    assert report.ok and report.records == 120 and report.head_seq == 120


def test_reopening_keeps_records_and_migrations_are_at_head(logs: Any) -> None:
    log = logs.open()
    rec = log.append(LogEntry(kind="inspection", decision="pass"))
    log.close()
    again = logs.open()
    assert again.get(rec.entry.inspection_id) == rec
    with again.engine.connect() as conn:
        assert current_revision(conn) == "0001"
    assert again.append(LogEntry(kind="event")).seq == 2


def test_closed_log_refuses_appends(log: Any) -> None:
    log.close()
    with pytest.raises(ConflictError, match="closed"):
        log.append(LogEntry(kind="event"))


@pytest.mark.parametrize(
    ("url", "kwargs", "match"),
    [
        ("mysql://x/y", {}, "allowed: sqlite, postgresql"),
        ("not a url", {}, "not a database url"),
        ("sqlite://", {}, "names no SQLite file"),
        ("sqlite:///{tmp}/l.db", {"frame_sample_rate": 1.5}, "frame_sample_rate"),
        ("sqlite:///{tmp}/l.db", {"sqlite_synchronous": "OFF"}, "sqlite_synchronous"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path: Path, url: str, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        open_log(url.format(tmp=tmp_path), **kwargs)


def test_sqlite_runs_in_wal_with_full_sync(tmp_path: Path) -> None:
    with open_log(f"sqlite:///{tmp_path}/l.db") as log:
        with log.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert log.frames is not None and log.frames.root == tmp_path / "l.db.frames"


def test_a_crashed_writer_leaves_no_partial_batch(log: Any) -> None:
    # A batch is one transaction: if the head update fails, none of its records exist.
    from inspection.log.tables import chain_head

    log.append(LogEntry(kind="event"))
    with log.engine.begin() as conn:
        conn.execute(sa.delete(chain_head))  # the writer's SELECT ... FOR UPDATE now finds no head
    with pytest.raises(InspectionError, match="could not commit"):
        log.append(LogEntry(kind="event"))
    with log.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM inspection_records")).scalar() == 1


def test_append_gives_up_after_the_commit_timeout_while_the_database_is_locked(logs: Any) -> None:
    # Another writer holds the chain head; the caller gets an error (-> fail-safe reject), not a hang.
    log = logs.open(commit_timeout_s=0.5)
    blocker = logs.open()
    from inspection.log.tables import chain_head

    with blocker._write_tx() as conn:
        conn.execute(sa.select(chain_head).with_for_update()).all()
        with pytest.raises(InspectionError, match="did not commit within 0.5 s"):
            log.append(LogEntry(kind="event"))

        async def later() -> None:
            await log.append_async(LogEntry(kind="event"))

        with pytest.raises(InspectionError, match="did not commit within"):
            asyncio.run(later())
    # Once the lock is released, the queued records commit and the chain is whole.
    deadline = time.monotonic() + 30
    while log.head()[0] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.head()[0] == 2 and log.verify().ok


def test_verify_sees_a_consistent_snapshot_while_writers_append(logs: Any) -> None:
    # The chain head and the rows are read in one snapshot: a verify racing with commits never
    # reports a tail that is "missing" or "beyond the head".
    writer, auditor = logs.open(), logs.open()
    done = threading.Event()

    def write() -> None:
        for i in range(100):
            writer.append(LogEntry(kind="inspection", part_id=str(i), decision="pass"))
        done.set()

    th = threading.Thread(target=write)
    th.start()
    reports = []
    while not done.is_set():
        reports.append(auditor.verify())
    th.join()
    reports.append(auditor.verify())
    assert len(reports) > 1
    assert all(r.ok for r in reports), [r for r in reports if not r.ok][:1]
    assert reports[-1].records == 100


def test_async_appends_of_one_loop_iteration_share_one_transaction(log: Any) -> None:
    # A frame's record and the part record it completes are appended by two tasks in the same
    # loop iteration: they must reach the writer together (one commit, one fsync), in order.
    async def main() -> list[Any]:
        first = asyncio.ensure_future(log.append_async(LogEntry(kind="inspection", part_id="p", decision="pass")))
        second = asyncio.ensure_future(log.append_async(LogEntry(kind="part", part_id="p", decision="pass")))
        return list(await asyncio.gather(first, second))

    commits = log.stats.commits
    view, part = asyncio.run(main())
    assert log.stats.commits == commits + 1
    assert (view.seq, part.seq) == (1, 2) and part.prev_hash == view.hash
    assert log.verify().ok


def test_the_writer_reconnects_when_its_connection_was_dropped_between_appends(log: Any) -> None:
    # The writer keeps its connection between transactions; a database restart (or an idle
    # timeout) in between must not fail the next append: nothing was written yet, so it starts
    # over on a fresh connection.
    if log.dialect != "postgresql":
        pytest.skip("a SQLite file has no server that could drop the connection")
    log.append(LogEntry(kind="event"))
    pid = log._writer._conn.driver_connection.info.backend_pid
    with log.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT pg_terminate_backend(%(pid)s)", {"pid": pid}).scalar()
    second = log.append(LogEntry(kind="event"))
    assert second.seq == 2 and log.verify().ok


# -- inline commits (a lone frame's records committed on the event loop's thread) --------------
def _committing_threads(log: Any) -> list[str]:
    seen: list[str] = []
    original = log._writer._transaction

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(threading.current_thread().name)
        return original(*args, **kwargs)

    log._writer._transaction = spy
    return seen


def test_a_lone_async_append_commits_on_the_loop_thread_when_allowed(log: Any) -> None:
    threads = _committing_threads(log)
    log.inline_commit_when = lambda: True

    async def main() -> list[Any]:
        view = asyncio.ensure_future(log.append_async(LogEntry(kind="inspection", part_id="p", decision="pass")))
        part = asyncio.ensure_future(log.append_async(LogEntry(kind="part", part_id="p", decision="pass")))
        return list(await asyncio.gather(view, part))

    view, part = asyncio.run(main())
    assert (view.seq, part.seq) == (1, 2) and part.prev_hash == view.hash
    assert log.get(part.entry.inspection_id) == part
    # SQLite: one transaction, on the loop's (main) thread; PostgreSQL never commits inline.
    expected = ["MainThread"] if log.dialect == "sqlite" else ["inspection-log-writer"]
    assert threads == expected
    log.inline_commit_when = lambda: False
    asyncio.run(log.append_async(LogEntry(kind="event")))
    assert threads[-1] == "inspection-log-writer"
    assert log.verify().ok


def test_an_inline_commit_never_waits_for_a_locked_database(logs: Any) -> None:
    # Another process (here: connection) holds SQLite's write lock. The loop must not block
    # for the busy timeout: the records go to the writer, which waits; the loop keeps running.
    log = logs.open()
    if log.dialect != "sqlite":
        pytest.skip("inline commits are a SQLite feature")
    log.inline_commit_when = lambda: True
    threads = _committing_threads(log)
    blocker = logs.open()
    from inspection.log.tables import chain_head

    async def main() -> tuple[Any, float]:
        loop = asyncio.get_running_loop()
        longest = 0.0
        with blocker._write_tx() as conn:
            conn.execute(sa.select(chain_head)).all()
            append = asyncio.ensure_future(log.append_async(LogEntry(kind="event")))
            for _ in range(20):  # the loop keeps running while the lock is held
                before = loop.time()
                await asyncio.sleep(0.01)
                longest = max(longest, loop.time() - before)
            assert not append.done()
        return await append, longest

    record, longest = asyncio.run(main())
    # Waiting for the lock would stall the loop for the busy timeout (30 s); not a speed check.
    assert longest < 10 and record.seq == 1
    assert threads[0] == "MainThread" and threads[-1] == "inspection-log-writer"
    assert log.verify().ok


def test_no_inline_commit_while_the_writer_has_records_so_the_order_holds(log: Any) -> None:
    # A record handed to the writer first must get the lower seq, even when a later lone
    # append would be allowed to commit inline.
    log.inline_commit_when = lambda: True
    gate = threading.Event()
    original = log._writer._commit_batch

    def slow(batch: Any) -> Any:
        gate.wait(10)
        return original(batch)

    log._writer._commit_batch = slow
    first: list[Any] = []
    writer_side = threading.Thread(target=lambda: first.append(log.append(LogEntry(kind="event", actor="first"))))
    writer_side.start()
    time.sleep(0.05)

    async def main() -> Any:
        later = asyncio.ensure_future(log.append_async(LogEntry(kind="event", actor="second")))
        await asyncio.sleep(0.05)
        gate.set()
        return await later

    second = asyncio.run(main())
    writer_side.join()
    assert (first[0].seq, second.seq) == (1, 2)
    assert log.verify().ok


def test_a_failed_inline_commit_leaves_the_records_to_the_writer_which_reports_each(log: Any) -> None:
    # A duplicate inspection id fails the inline transaction: nothing is written there; the
    # writer commits the good record and answers the duplicate with its conflict.
    log.inline_commit_when = lambda: True
    first = log.append(LogEntry(kind="event", inspection_id="dup"))

    async def main() -> list[Any]:
        bad = asyncio.ensure_future(log.append_async(LogEntry(kind="event", inspection_id="dup")))
        good = asyncio.ensure_future(log.append_async(LogEntry(kind="event", inspection_id="fine")))
        return list(await asyncio.gather(bad, good, return_exceptions=True))

    bad, good = asyncio.run(main())
    assert isinstance(bad, ConflictError) and "'dup' is already in the log" in str(bad)
    assert good.seq == first.seq + 1 and log.get("fine") == good
    assert log.verify().ok


def test_inspection_ids_are_unique_time_ordered_uuid7() -> None:
    # Time-ordered ids keep the log's unique index growing at its right edge (see new_id).
    import uuid

    from inspection.log.records import new_id

    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    parsed = uuid.UUID(ids[0])
    assert (parsed.version, parsed.variant, len(ids[0])) == (7, uuid.RFC_4122, 32)
    before = new_id()
    time.sleep(0.002)
    assert new_id() > before  # a later millisecond sorts after
    assert abs(int(ids[0][:12], 16) / 1000 - time.time()) < 3600  # the first 48 bits are Unix milliseconds
