"""The line watch off the decision path: evaluate every second, and make every alarm change known.

Each second the lifespan task asks ``LineMonitor.evaluate`` for alarm changes (control limit, run
rule, drift, fail-safe rate) and checks each station's PLC link (down while a result has waited
``plc_down_s`` for its acknowledgement). Every change, raised or cleared, becomes:

* an ``alarm`` record in the inspection log (hash-chained like every record: the auditors see
  when the line was out of control and when it came back);
* a retained MQTT message on ``<prefix>/<station>/alarms`` when the station publishes on MQTT
  (the broker being down loses the message, never the record);
* Prometheus metrics: ``inspection_line_alarm_active{station,alarm}`` (1 while raised) and
  ``inspection_line_alarms_total{station,alarm}``, beside the watch's figures
  (``inspection_line_drift_psi``, ``inspection_line_reject_rate``, ``inspection_line_failsafe_rate``);
* the ``/line`` page's event stream (``serving.monitoring.page``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from prometheus_client import Counter, Gauge

from inspection.errors import InspectionError
from inspection.log.records import LogEntry
from inspection.monitoring.station import AlarmChange
from serving.monitoring.live import LineMonitor
from serving.tasks import running

log = logging.getLogger(__name__)

#: Seconds between evaluations: drift windows and the fail-safe ring change by tens of frames a
#: second at most, and a chart point needs hundreds of parts; one second costs nothing.
EVALUATE_EVERY_S = 1.0


class LineAlarms:
    """Turns alarm changes into records, MQTT messages, metrics and page events."""

    def __init__(self, monitor: LineMonitor, *, append: Callable[[LogEntry], Any], registry: Any,
                 publish: Callable[[str, bytes], bool] | None = None,
                 plc_lines: dict[str, Any] | None = None) -> None:
        self.monitor = monitor
        self._append = append  # async (entry) -> record
        self._publish = publish  # (station, payload) -> delivered
        self._plc_lines = plc_lines or {}
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.active = Gauge("inspection_line_alarm_active", "1 while the line alarm is raised",
                            ["station", "alarm"], registry=registry)
        self.raised = Counter("inspection_line_alarms", "Line alarms raised", ["station", "alarm"],
                              registry=registry)
        self.psi = Gauge("inspection_line_drift_psi", "PSI of the last drift window against its reference",
                         ["station", "statistic"], registry=registry)
        self.reject_rate = Gauge("inspection_line_reject_rate", "Reject rate of the last p-chart point",
                                 ["station"], registry=registry)
        self.failsafe_rate = Gauge("inspection_line_failsafe_rate", "Fail-safe share of the last frames",
                                   ["station"], registry=registry)
        self.metrics = (self.active, self.raised, self.psi, self.reject_rate, self.failsafe_rate)
        self.not_recorded = 0

    def check_plc(self) -> None:
        """Each PLC link's state, from its handshake: down while a result waits too long."""
        for station, line in self._plc_lines.items():
            live = self.monitor.station(station)
            if live is None:
                continue
            hs = line.handshake
            wait = hs.oldest_wait_s
            limit = live.settings.plc_down_s
            last = hs.last_acked
            detail = {"waiting_s": round(wait, 3), "limit_s": limit, "pending": hs.pending,
                      "last_ack_seq": last.seq if last is not None else None,
                      "last_ack_decision_time": last.time.isoformat() if last is not None else None}
            live.monitor.set_plc_link(wait < limit, detail)

    async def step(self) -> list[AlarmChange]:
        """One evaluation; returns the changes (tests drive it directly)."""
        self.check_plc()
        changes = self.monitor.evaluate()
        for change in changes:
            await self._announce(change)
        self._update_gauges()
        return changes

    def _update_gauges(self) -> None:
        for station, live in self.monitor.stations.items():
            m = live.monitor
            for name, result in m.drift.items():
                self.psi.labels(station, name).set(result.psi)
            if m.chart is not None and m.chart.points:
                self.reject_rate.labels(station).set(m.chart.points[-1].rate)
            if m.last_failsafe_rate is not None:
                self.failsafe_rate.labels(station).set(m.last_failsafe_rate)

    async def _announce(self, change: AlarmChange) -> None:
        payload = {"station": change.station, "alarm": change.alarm, "state": change.state,
                   "detail": change.detail, "frame": change.frame, "part": change.part, "time": time.time()}
        live = self.monitor.station(change.station)
        model = live.model_id if live is not None else None
        if model:
            payload["model_version"] = model
        self.active.labels(change.station, change.alarm).set(1 if change.state == "raised" else 0)
        if change.state == "raised":
            self.raised.labels(change.station, change.alarm).inc()
        (log.warning if change.state == "raised" else log.info)(
            "line alarm %s %s at station %s: %s", change.alarm, change.state, change.station, change.detail)
        try:
            await self._append(LogEntry(kind="alarm", station=change.station, actor="server",
                                        data={k: v for k, v in payload.items() if k != "station"}))
        except InspectionError as exc:
            # The log has its own alarm and fail-safe path; the page and MQTT still say it.
            self.not_recorded += 1
            log.error("line alarm %s at %s not recorded: %s", change.alarm, change.station, exc)
        if self._publish is not None:
            body = json.dumps(payload, separators=(",", ":"), default=str).encode("utf-8")
            self._publish(change.station, body)
        for listener in list(self.listeners):
            listener({"type": "alarm", **payload})

    async def run(self) -> None:
        while True:
            await asyncio.sleep(EVALUATE_EVERY_S)
            try:
                await self.step()
            except Exception:  # the watch must never stop the line; the next second tries again
                log.exception("line watch evaluation failed")


def _publisher(app: Any) -> Callable[[str, bytes], bool]:
    def publish(station: str, body: bytes) -> bool:
        line = getattr(app.state, "line", None)
        pub = (getattr(line, "mqtt", None) or {}).get(station)
        return bool(pub is not None and pub.publish_side(f"{station}/alarms", body, retain=True))

    return publish


@contextlib.asynccontextmanager
async def lifespan_hook(app: Any) -> AsyncIterator[None]:
    """Run the line watch's evaluation while the server runs (``app.state.line_alarms``)."""
    service = getattr(app.state, "service", None)
    if service is None or getattr(app.state, "line_alarms", None) is not None:
        yield  # no decision path (a failed start), or a nested start of the same app
        return
    line = getattr(app.state, "line", None)
    alarms = LineAlarms(service.line, append=app.state.log.append_async, registry=app.state.metrics.registry,
                        publish=_publisher(app), plc_lines=getattr(line, "lines", None))
    app.state.line_alarms = alarms
    try:
        async with running(alarms.run(), "line-watch"):
            yield
    finally:
        app.state.line_alarms = None
        app.state.metrics.unregister(*alarms.metrics)
