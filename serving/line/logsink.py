"""Hand log records to the inspection log from code that must not wait for a commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from inspection.log.records import LogEntry, StoredRecord

log = logging.getLogger(__name__)


class AppendsAsync(Protocol):
    async def append_async(self, entry: LogEntry, *, frame: bytes | None = None) -> StoredRecord: ...


class LogSink:
    """A background writer: ``put`` never blocks; records are appended in order by one task.

    ``log`` may be None (a component used without a log, e.g. a bench): records are dropped.
    """

    def __init__(self, log_store: AppendsAsync | None, *, maxsize: int = 100_000) -> None:
        self._log = log_store
        self._queue: asyncio.Queue[LogEntry] = asyncio.Queue(maxsize=maxsize)
        self._task: asyncio.Task[None] | None = None
        self.lost = 0
        self.written = 0

    def put(self, entry: LogEntry) -> None:
        if self._log is None:
            return
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.lost += 1
            log.error("log sink full: %s record for %s not written (%d lost)", entry.kind, entry.ref, self.lost)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="line-log-sink")

    async def _run(self) -> None:
        while True:
            entry = await self._queue.get()
            try:
                if self._log is not None:
                    await self._log.append_async(entry)
                    self.written += 1
            except Exception:  # the log's own errors must not stop PLC handling
                log.exception("could not append %s record for %s", entry.kind, entry.ref)
            finally:
                self._queue.task_done()

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until every record put so far is written (or ``timeout_s`` passes)."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)

    async def stop(self, timeout_s: float = 5.0) -> None:
        await self.flush(timeout_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
