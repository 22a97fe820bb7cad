"""The log's health: readiness while it cannot commit, free-space headroom, metrics and the MQTT alarm.

The log's writer notes every failed commit (``WriterStats``); from the first failure until a
commit succeeds again, ``/readyz`` answers not ready with the reason. While failing, a task
probes the log every ``log_health_interval_s`` with a write that changes nothing
(``SqlInspectionLog.probe_write``), so readiness returns without waiting for the next frame;
while healthy it probes every tenth interval, so a log that broke while the line was idle is
noticed too. Each change of state raises or clears an ``alarm`` on MQTT (retained, every
station with MQTT enabled) and, on recovery, an ``event`` record says how long the log was
unavailable.

Headroom: below ``log_min_free_bytes`` free on the frames' filesystem the log stops keeping
passes' frames (``SqlInspectionLog.below_floor``) and this task prunes the oldest frames
(``retention.prune_frames``: a ``prune`` record first) until the floor is met again. Only when
records themselves cannot be written does the server go not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge

from inspection.errors import InspectionError
from inspection.log.records import LogEntry
from inspection.log.retention import prune_frames
from inspection.log.store import SqlInspectionLog
from serving.tasks import running

log = logging.getLogger(__name__)

#: The healthy log is probed every this many intervals.
HEALTHY_PROBE_EVERY = 10


class LogHealth:
    """Watches one SQL log store; ``problem()`` is what /readyz reports.

    Typed on ``SqlInspectionLog`` rather than the ``InspectionLog`` protocol: commit statistics, the
    probe write and the frame store are that store's health surface, not part of every log's
    contract (``lifespan_hook`` leaves other stores, e.g. test doubles, unwatched).
    """

    def __init__(self, store: SqlInspectionLog, *, min_free_bytes: int, interval_s: float, registry: Any = None,
                 alarm: Any = None) -> None:
        self.store = store
        self.min_free_bytes = min_free_bytes
        self.interval_s = interval_s
        self._alarm = alarm  # callable(payload dict) publishing the alarm; None: log only
        self.probe_error: str | None = None
        self.alarm_raised = False
        self._since: float | None = None
        self._seen: dict[str, int] = {}
        self._frames_seen = 0
        self.pruned_for_headroom = 0
        kw = {"registry": registry} if registry is not None else {}
        self.failures = Counter("inspection_log_failures_total",
                                "Records the log could not commit (database or disk), by reason", ["reason"], **kw)
        self.frames_not_kept = Counter("inspection_log_frames_not_kept_total",
                                       "Frames the log could not store (their records say so)", **kw)
        self.ready = Gauge("inspection_log_ready", "1 while the log can commit, 0 while it cannot", **kw)
        self.free = Gauge("inspection_log_free_bytes", "Free bytes on the frames' filesystem (-1 unknown)", **kw)
        self.ready.set(1)

    # -- state ----------------------------------------------------------------------------------
    def problem(self) -> str | None:
        """Why the log cannot commit now (None when it can, as far as is known)."""
        stats = self.store.stats
        last = stats.last_error if stats.failing_since is not None else None
        if last is not None:
            return f"the inspection log cannot commit: {last}"
        if self.probe_error is not None:
            return f"the inspection log cannot commit: {self.probe_error}"
        return None

    def sync_metrics(self) -> None:
        """Bring the counters up to the store's own (cheap; called by /metrics and every check)."""
        for code, n in dict(self.store.stats.failures_by_code).items():
            delta = n - self._seen.get(code, 0)
            if delta > 0:
                self.failures.labels(code).inc(delta)
                self._seen[code] = n
        not_kept = self.store.frames_not_kept
        if not_kept > self._frames_seen:
            self.frames_not_kept.inc(not_kept - self._frames_seen)
            self._frames_seen = not_kept
        self.ready.set(0 if self.problem() else 1)

    # -- the periodic check -----------------------------------------------------------------------
    async def check(self, *, probe: bool) -> None:
        """One round: raise the alarm for what is known, probe when asked or failing (a probe may wait
        for a lock), make headroom, then raise or clear the alarm for what the probe found."""
        self.sync_metrics()
        await self._transition()
        if probe or self.problem() is not None:
            try:
                await asyncio.to_thread(self.store.probe_write)
            except InspectionError as exc:
                self.probe_error = f"{exc.failsafe_code}: {exc}"
            else:
                self.probe_error = None
                if self.store.stats.failing_since is not None:
                    self.store.stats.note_success()
        await self._headroom()
        self.sync_metrics()
        await self._transition()

    async def _headroom(self) -> None:
        frames = self.store.frames
        if self.min_free_bytes <= 0 or frames is None:
            return
        try:
            free = await asyncio.to_thread(frames.free_bytes)  # fresh: the deficit decides what goes
        except InspectionError:
            free = -1
        self.free.set(free)
        if free < 0 or free >= self.min_free_bytes:
            return
        deficit = self.min_free_bytes - free
        try:
            total = await asyncio.to_thread(lambda: sum(f.size for f in frames.iter_frames()))
            if total == 0:
                return
            result = await asyncio.to_thread(prune_frames, self.store, max_bytes=max(0, total - deficit),
                                              actor="headroom")
        except InspectionError as exc:
            log.error("headroom: could not prune frames: %s", exc)
            return
        if result.removed:
            self.pruned_for_headroom += len(result.removed)
            log.warning("headroom: %d bytes free, below the floor of %d: pruned the %d oldest frame(s), %d bytes",
                        free, self.min_free_bytes, len(result.removed), result.bytes_freed)

    async def _transition(self) -> None:
        problem = self.problem()
        if problem is not None and not self.alarm_raised:
            self.alarm_raised, self._since = True, time.monotonic()
            log.error("ALARM: %s; the server is not ready until the log commits again", problem)
            self._publish("raised", problem)
        elif problem is None and self.alarm_raised:
            down_s = time.monotonic() - (self._since or time.monotonic())
            self.alarm_raised, self._since = False, None
            log.warning("alarm cleared: the inspection log commits again (unavailable for %.1f s)", down_s)
            self._publish("cleared", None)
            try:
                await self.store.append_async(LogEntry(kind="event", actor="server", data={
                    "event": "log_recovered", "unavailable_s": round(down_s, 3),
                    "failures": dict(self.store.stats.failures_by_code)}))
            except InspectionError as exc:
                log.error("could not record the log's recovery: %s", exc)

    def _publish(self, state: str, reason: str | None) -> None:
        if self._alarm is None:
            return
        payload = {"alarm": "inspection_log", "state": state, "reason": reason,
                   "time": datetime.now(UTC).isoformat()}
        try:
            self._alarm(payload)
        except Exception:  # an alarm channel failing must not stop the health checks
            log.exception("could not publish the log alarm")

    async def run(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(self.interval_s)
            rounds += 1
            try:
                await self.check(probe=rounds % HEALTHY_PROBE_EVERY == 0)
            except Exception:  # the watcher must outlive anything the disk or database throws
                log.exception("log health check failed; will retry")


def mqtt_publish(app: Any, suffix: str, payload: dict[str, Any], *, retain: bool) -> int:
    """Publish ``payload`` on ``<prefix>/<station>/<suffix>`` of every station with MQTT; returns how many took it."""
    line = getattr(app.state, "line", None)
    sent = 0
    for publisher in (getattr(line, "mqtt", None) or {}).values():
        body = json.dumps(payload, separators=(",", ":"), default=str).encode("utf-8")
        if publisher.publish_side(f"{publisher.station}/{suffix}", body, retain=retain):
            sent += 1
    return sent


@contextlib.asynccontextmanager
async def lifespan_hook(app: Any) -> AsyncIterator[None]:
    """The app's lifespan hook: watch the log while the server runs (``app.state.log_health``)."""
    settings = app.state.settings
    store = app.state.log
    if not isinstance(store, SqlInspectionLog):
        yield  # a store without the SQL store's health surface (a test double)
        return
    if getattr(app.state, "log_health", None) is not None:
        yield  # a nested start of the same app (an in-process client inside a running one): one watcher
        return
    health = LogHealth(store, min_free_bytes=settings.log_min_free_bytes, interval_s=settings.log_health_interval_s,
                       registry=app.state.metrics.registry,
                       alarm=lambda payload: mqtt_publish(app, "alarm", payload, retain=True))
    app.state.log_health = health
    try:
        async with running(health.run(), "log-health"):
            yield
    finally:
        # The app (and its registry) can outlive one lifespan (tests restart it; so does an
        # embedding server): the next start registers these metrics again.
        app.state.log_health = None
        app.state.metrics.unregister(health.failures, health.frames_not_kept, health.ready, health.free)
