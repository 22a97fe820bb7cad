"""One station's PLC side: takes decisions from the bus, runs the handshake, heartbeat and deadlines.

The Modbus TCP and OPC UA servers are views on the same :class:`ResultHandshake`, so a PLC
may read either; acknowledge through one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from inspection.log.records import LogEntry
from serving.events import DecisionEvent, Subscription
from serving.line.handshake import ResultHandshake
from serving.line.logsink import LogSink
from serving.line.settings import PlcSettings
from serving.line.telemetry import LineMetrics

log = logging.getLogger(__name__)


class StationLine:
    """Feed a station's decisions (``kind`` = settings.result_kind) into its handshake."""

    def __init__(self, station: str, settings: PlcSettings, *, sink: LogSink,
                 metrics: LineMetrics | None = None, first_seq: int | None = None) -> None:
        """``first_seq``: the first result number (tests); None starts a random session (handshake)."""
        self.station = station
        self.settings = settings
        self.metrics = metrics or LineMetrics()
        self._sink = sink
        self.handshake = ResultHandshake(
            station=station, depth=settings.buffer_depth, ack_deadline_s=settings.ack_deadline_s,
            class_codes=settings.class_codes, on_record=self._record, first_seq=first_seq)
        self._tasks: list[asyncio.Task[None]] = []

    def _record(self, entry: LogEntry) -> None:
        outcome = (entry.data or {}).get("outcome", "unknown")
        self.metrics.plc_results.labels(self.station, str(outcome)).inc()
        self._sink.put(entry)

    def accepts(self, event: DecisionEvent) -> bool:
        return event.kind == self.settings.result_kind and event.station == self.station

    def offer(self, event: DecisionEvent) -> None:
        """Hand one decision to the handshake (ignored when it is another station's or kind)."""
        if self.accepts(event):
            self.handshake.offer(event.record, kind=event.kind)
            self.metrics.plc_pending.labels(self.station).set(self.handshake.pending)

    async def start(self, sub: Subscription) -> None:
        """Take decisions from the bus subscription ``sub`` (best with ``keep_dropped``: see _consume)."""
        self.handshake.running = True
        self._tasks = [
            asyncio.create_task(self._consume(sub), name=f"plc-consume-{self.station}"),
            asyncio.create_task(self._heartbeat(), name=f"plc-heartbeat-{self.station}"),
            asyncio.create_task(self._deadlines(), name=f"plc-deadlines-{self.station}"),
        ]

    async def stop(self) -> None:
        """Stop taking decisions; results still buffered are logged ``unacknowledged_at_stop``."""
        self.handshake.running = False
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        # After the tasks: no decision is offered any more. Before the log sink stops (the caller's
        # order): these records must reach the log.
        self.handshake.close()
        self.metrics.plc_pending.labels(self.station).set(self.handshake.pending)

    async def _consume(self, sub: Subscription) -> None:
        seen = 0  # the bus's drops already accounted for
        while True:
            event = await sub.queue.get()
            try:
                # The bus drops the oldest events, so whatever it dropped since the last turn came
                # before ``event``: number those first, or the PLC would see the gap after newer results.
                seen = self._account_for_drops(sub, seen)
                self.offer(event)
            except Exception:  # a malformed record must not stop the PLC side
                log.exception("station %s: could not hand decision to the PLC handshake", self.station)

    def _account_for_drops(self, sub: Subscription, seen: int) -> int:
        """Hand the decisions ``sub`` lost since ``seen`` drops to the handshake; returns the new count."""
        dropped = sub.dropped
        if dropped == seen:
            return seen
        known = list(sub.lost or ())
        if sub.lost is not None:
            sub.lost.clear()
        # Lost events no longer kept are the oldest ones, and may be any station's: counted as ours,
        # since a result wrongly counted lost is a reject and a result missed a silent pass.
        forgotten = dropped - seen - len(known)
        if forgotten > 0:
            self.handshake.note_lost(forgotten)
            self._sink.put(LogEntry(kind="event", station=self.station, data={
                "event": "plc_results_lost", "count": forgotten, "where": "decision bus"}))
        for event in known:
            if self.accepts(event):
                self.handshake.lose(event.record, kind=event.kind)
        return dropped

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            self.handshake.tick()
            self.metrics.plc_pending.labels(self.station).set(self.handshake.pending)

    async def _deadlines(self) -> None:
        # Checking at a quarter of the deadline flags a late result at most 25% after it is due.
        period = max(0.01, min(self.settings.ack_deadline_s / 4, 0.25))
        while True:
            await asyncio.sleep(period)
            self.handshake.check_deadlines()
