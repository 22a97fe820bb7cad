"""The log sink: records from the serving loop and from the Modbus server's thread, in one log."""

from __future__ import annotations

import threading

import pytest

from inspection.log.records import LogEntry
from inspection.log.store import SqlInspectionLog
from serving.line.logsink import LogSink
from tests.serving.line.conftest import records_of

pytestmark = pytest.mark.asyncio


def _event(n: int) -> LogEntry:
    return LogEntry(kind="event", station="s", data={"event": "test", "n": n})


async def test_records_keep_the_order_they_were_put_in_across_threads(log_store: SqlInspectionLog) -> None:
    """A PLC acknowledgement put from the Modbus thread, then a timeout put on the serving loop: the log
    must have them in that order (the loop's own put used to overtake the other thread's)."""
    sink = LogSink(log_store, gather_s=0)
    sink.start()
    try:
        other = threading.Thread(target=sink.put, args=(_event(1),))
        other.start()
        other.join()
        sink.put(_event(2))
        sink.put(_event(3))
        await sink.flush()
        assert [(r.entry.data or {})["n"] for r in records_of(log_store, "event")] == [1, 2, 3]
    finally:
        await sink.stop()


async def test_a_record_put_just_before_stop_is_written(log_store: SqlInspectionLog) -> None:
    sink = LogSink(log_store)
    sink.start()
    sink.put(_event(1))
    await sink.stop()
    assert [(r.entry.data or {})["n"] for r in records_of(log_store, "event")] == [1]
