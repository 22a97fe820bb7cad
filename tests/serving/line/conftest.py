"""Shared pieces of the line-integration tests: a real SQLite inspection log, free ports, decisions,
and the real line peers (a private MQTT broker with a subscriber, a Modbus port) for app tests."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from inspection.log.query import RecordFilter, query_records
from inspection.log.records import LogEntry, StoredRecord
from inspection.log.store import SqlInspectionLog, open_log
from tests.serving.conftest import SINGLE
from tests.serving.line.peers import MOSQUITTO, Broker, Subscriber


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()


@dataclass
class LinePeers:
    """A running private broker, a clean-session subscriber on it, and a free port for Modbus."""

    broker: Broker
    sub: Subscriber
    modbus_port: int

    def enable(self, data: dict[str, Any], *, ack_deadline_s: float, **mqtt: Any) -> dict[str, Any]:
        """Turn Modbus and MQTT (with extra ``mqtt`` settings) on for the ``SINGLE`` station of ``data``."""
        data["stations"][SINGLE]["line"] = {
            "plc": {"ack_deadline_s": ack_deadline_s},
            "modbus": {"enabled": True, "port": self.modbus_port},
            "mqtt": {"enabled": True, "port": self.broker.port, **mqtt},
        }
        return data


@pytest.fixture
def line_peers(tmp_path: Path) -> Iterator[LinePeers]:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")
    broker = Broker(tmp_path, free_port())
    broker.start()
    try:
        sub = Subscriber(broker.port, clean=True)
        try:
            yield LinePeers(broker, sub, free_port())
        finally:
            sub.close()
    finally:
        broker.stop()


@pytest_asyncio.fixture
async def log_store(tmp_path: Path) -> AsyncIterator[SqlInspectionLog]:
    store = open_log(f"sqlite:///{tmp_path / 'log.db'}", sqlite_synchronous="NORMAL")
    try:
        yield store
    finally:
        store.close()


def part_entry(station: str, part_id: str, decision: str = "pass", *, defect_class: str | None = "scratch",
               failsafe_reason: str | None = None) -> LogEntry:
    return LogEntry(kind="part", station=station, part_id=part_id, decision=decision,
                    defect_class=defect_class, failsafe_reason=failsafe_reason)


async def decide_many(store: SqlInspectionLog, entries: list[LogEntry]) -> list[StoredRecord]:
    """Commit ``entries`` to the log (concurrently, so they share commits) in the given order."""
    out: list[StoredRecord] = []
    for i in range(0, len(entries), 200):
        out += await asyncio.gather(*(store.append_async(e) for e in entries[i: i + 200]))
    return sorted(out, key=lambda r: r.seq)


def records_of(store: SqlInspectionLog, kind: str) -> list[StoredRecord]:
    """Every record of ``kind``, oldest first."""
    out: list[StoredRecord] = []
    cursor = None
    while True:
        page = query_records(store, RecordFilter(kind=kind), cursor=cursor, limit=1000, order="asc")
        out += page.records
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0,
                   what: str | Callable[[], str] = "condition") -> None:
    """Poll ``predicate`` until true; ``what`` (or ``what()``, evaluated on failure) names it."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what() if callable(what) else what}")
        await asyncio.sleep(0.005)
