"""Hand log records to the inspection log from code that must not wait for a commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
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
        self._put_any_thread: Callable[[LogEntry], None] | None = None  # set by start(), on the loop

    def put(self, entry: LogEntry) -> None:
        """Queue ``entry``; safe from any thread (the Modbus server's acknowledgements come from its own).

        Records reach the log in the order ``put`` was called, whichever threads called it.
        """
        if self._log is None:
            return
        (self._put_any_thread or self._put)(entry)

    @staticmethod
    def _in_order(loop: asyncio.AbstractEventLoop, put: Callable[[LogEntry], None]) -> Callable[[LogEntry], None]:
        # Always through the loop's callbacks, even on the loop's own thread: the loop runs them in
        # the order they were handed over, and the handshake hands its records over under its lock,
        # so they keep the order they were made in. Queued at once on the loop's thread and a loop
        # turn later from the Modbus thread, an acknowledgement landed after a later timeout record.
        def call(entry: LogEntry) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed at shutdown: nobody left to run it
                loop.call_soon_threadsafe(put, entry)

        return call

    def _put(self, entry: LogEntry) -> None:
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.lost += 1
            log.error("log sink full: %s record for %s not written (%d lost)", entry.kind, entry.ref, self.lost)

    def start(self) -> None:
        if self._task is None and self._log is not None:  # without a log, put() drops everything
            self._put_any_thread = self._in_order(asyncio.get_running_loop(), self._put)
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
        await asyncio.sleep(0)  # one loop turn: the records handed over before now are queued
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)

    async def stop(self, timeout_s: float = 5.0) -> None:
        await self.flush(timeout_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
