"""Hand log records to the inspection log from code that must not wait for a commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Protocol

from inspection.log.records import LogEntry, StoredRecord

log = logging.getLogger(__name__)


class AppendsAsync(Protocol):
    async def append_async(self, entry: LogEntry, *, frame: bytes | None = None) -> StoredRecord: ...


class LogSink:
    """A background writer: ``put`` never blocks; records are appended in order by one task.

    ``log`` may be None (a component used without a log, e.g. a bench): records are dropped.
    """

    def __init__(self, log_store: AppendsAsync | None, *, maxsize: int = 100_000, gather_s: float = 0.1) -> None:
        self._log = log_store
        # Records wait up to ``gather_s`` for company and go to the log together: one commit
        # (one fsync) per batch. Appended one by one, a PLC acknowledgement per decision put a
        # commit of its own between the frames' commits, and the next frame waited for it.
        self._gather_s = gather_s
        self._queue: asyncio.Queue[LogEntry] = asyncio.Queue(maxsize=maxsize)
        self._task: asyncio.Task[None] | None = None
        self.lost = 0
        self.written = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    def put(self, entry: LogEntry) -> None:
        """Queue ``entry``; safe from any thread (the Modbus server's acknowledgements come from its own)."""
        if self._log is None:
            return
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            with contextlib.suppress(RuntimeError):  # the loop closed at shutdown: nothing left to write it
                loop.call_soon_threadsafe(self._put, entry)
            return
        self._put(entry)

    def _put(self, entry: LogEntry) -> None:
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.lost += 1
            log.error("log sink full: %s record for %s not written (%d lost)", entry.kind, entry.ref, self.lost)

    def start(self) -> None:
        if self._task is None and self._log is not None:  # without a log, put() drops everything
            self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
            self._task = asyncio.create_task(self._run(self._log), name="line-log-sink")

    async def _run(self, store: AppendsAsync) -> None:
        while True:
            entries = [await self._queue.get()]
            if self._gather_s > 0:
                await asyncio.sleep(self._gather_s)
            while not self._queue.empty():
                entries.append(self._queue.get_nowait())
            # Submitted together, in order: the log's writer commits them in one transaction
            # (one commit for a burst of PLC acknowledgements instead of one each).
            outcomes = await asyncio.gather(*(store.append_async(e) for e in entries), return_exceptions=True)
            for entry, outcome in zip(entries, outcomes, strict=True):
                if isinstance(outcome, BaseException):  # the log's own errors must not stop PLC handling
                    log.error("could not append %s record for %s: %s", entry.kind, entry.ref, outcome)
                else:
                    self.written += 1
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
