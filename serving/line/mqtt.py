"""Publish a station's decisions to MQTT (QoS 1, in order) and its status as a retained message.

Topics: ``<prefix>/<station>/decisions`` (every inspection and part decision, JSON) and
``<prefix>/<station>/status`` (retained; ``state: online`` with a heartbeat every
``status_interval_s``, ``state: offline`` as the last will and on a clean stop).

Nothing here runs on the decision path: the app's ``DecisionBus`` hands events to a queue,
this module's task turns them into JSON and keeps them in a bounded deque until the broker
takes them. While the broker is unreachable the deque fills; past ``queue_size`` the oldest
message is dropped, counted in ``inspection_mqtt_dropped_total`` and reported in the
inspection log as an ``event`` record. At most ``inflight`` messages are handed to the MQTT
client at a time; after a reconnect, no new message is handed over until the client has
re-sent and got PUBACKs for the ones it held, so subscribers see decisions in order.

Side messages (alarms, checkpoints) are retained state: the publisher remembers the last one
per topic and publishes it again on every (re)connect, so an alarm raised or cleared while the
broker was down reaches the broker once it is back (only the latest state per topic: that is
all a retained topic holds anyway; the inspection log keeps the history).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from inspection.log.records import LogEntry, StoredRecord
from serving.events import DecisionEvent
from serving.line.logsink import LogSink
from serving.line.settings import MqttSettings
from serving.line.telemetry import LineMetrics

log = logging.getLogger(__name__)

#: Drops are reported to the inspection log at most this often while they go on.
DROP_REPORT_INTERVAL_S = 10.0


def decision_payload(event: DecisionEvent) -> bytes:
    """The JSON published for one decision (what a dashboard or MES subscribes to)."""
    r: StoredRecord = event.record
    e = r.entry
    body: dict[str, Any] = {
        "kind": event.kind,
        "station": e.station,
        "inspection_id": e.inspection_id,
        "seq": r.seq,
        "time": e.time.isoformat(),
        "part_id": e.part_id,
        "camera": e.camera,
        "decision": e.decision,
        "defect_class": e.defect_class,
        "scores": e.scores,
        "threshold": e.threshold,
        "failsafe_reason": e.failsafe_reason,
        "model": {"name": e.model_name, "version": e.model_version} if e.model_name else None,
        "latency_ms": e.latency_ms,
        "hash": r.hash,
    }
    return json.dumps(body, separators=(",", ":"), default=str).encode("utf-8")


class MqttPublisher:
    """One station's MQTT client; ``start(queue)`` consumes DecisionEvents until ``stop()``."""

    def __init__(self, station: str, settings: MqttSettings, *, sink: LogSink | None = None,
                 metrics: LineMetrics | None = None,
                 status_extra: Callable[[], dict[str, Any]] | None = None) -> None:
        self.station = station
        self.settings = settings
        self.metrics = metrics or LineMetrics()
        self.decisions_topic = f"{settings.topic_prefix}/{station}/decisions"
        self.status_topic = f"{settings.topic_prefix}/{station}/status"
        self.dropped = 0
        self.published = 0
        self._sink = sink
        self._status_extra = status_extra
        self._queue: deque[bytes] = deque()
        self._handed: set[int] = set()
        self._hold_new = False
        self._connected = False
        self._wake = asyncio.Event()
        self._unreported_drops = 0
        self._last_drop_report = 0.0
        self._heartbeat = 0
        # Last retained side message per topic, re-published on every connect (see the module doc).
        self._retained: dict[str, bytes] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None

    # --- state -------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Decisions not yet acknowledged by the broker (waiting plus handed to the client)."""
        return len(self._queue) + len(self._handed)

    @property
    def connected(self) -> bool:
        return self._connected

    # --- life cycle ----------------------------------------------------------------------------
    async def start(self, queue: asyncio.Queue[DecisionEvent]) -> None:
        """Connect in the background (the broker may be down) and start consuming ``queue``."""
        self._loop = asyncio.get_running_loop()
        s = self.settings
        client = paho.Client(CallbackAPIVersion.VERSION2,
                             client_id=f"inspection-{self.station}-{os.getpid()}-{id(self) & 0xFFFF:x}",
                             protocol=paho.MQTTv311, clean_session=True)
        if s.username is not None:
            client.username_pw_set(s.username, s.password.get_secret_value() if s.password else None)
        client.will_set(self.status_topic, self._status_payload("offline"), qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        # Our own deque is the bound; the client holds only what we hand it (inflight + status).
        client.max_inflight_messages_set(s.inflight + 8)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        client.loop_start()
        self._tasks = [
            asyncio.create_task(self._consume(queue), name=f"mqtt-consume-{self.station}"),
            asyncio.create_task(self._send(), name=f"mqtt-send-{self.station}"),
            asyncio.create_task(self._status(), name=f"mqtt-status-{self.station}"),
        ]

    async def stop(self, *, drain_s: float = 2.0) -> None:
        """Give queued decisions ``drain_s`` to go out, publish ``offline`` and disconnect."""
        if self._tasks and self._connected:
            end = time.monotonic() + drain_s
            while self.queued and self._connected and time.monotonic() < end:
                await asyncio.sleep(0.01)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        left = self.queued
        if left:
            self._count_drops(left, why="stopped with decisions not yet acknowledged by the broker")
        self._report_drops(force=True)
        client = self._client
        if client is not None:
            if self._connected:
                info = client.publish(self.status_topic, self._status_payload("offline"), qos=1, retain=True)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(info.wait_for_publish, 1.0)
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
            self._client = None
        self._connected = False
        self.metrics.mqtt_connected.labels(self.station).set(0)

    # --- the paho thread's callbacks: hop onto the event loop, touch nothing here --------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure and self._loop is not None:
            self._loop.call_soon_threadsafe(self._connected_now)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
                self._loop.call_soon_threadsafe(self._disconnected_now)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._acked, mid)

    # --- on the event loop ---------------------------------------------------------------------
    def _connected_now(self) -> None:
        self._connected = True
        # The client re-sends what it held before the drop; new ones wait until those are acked.
        self._hold_new = bool(self._handed)
        self.metrics.mqtt_connected.labels(self.station).set(1)
        log.info("station %s: MQTT connected to %s:%d (%d queued)", self.station, self.settings.host,
                 self.settings.port, self.queued)
        self._publish_status()
        self._republish_retained()
        self._report_drops(force=True)
        self._wake.set()

    def _disconnected_now(self) -> None:
        if self._connected:
            log.warning("station %s: MQTT broker %s:%d lost; queueing decisions", self.station,
                        self.settings.host, self.settings.port)
        self._connected = False
        self.metrics.mqtt_connected.labels(self.station).set(0)

    def _acked(self, mid: int) -> None:
        if mid in self._handed:
            self._handed.discard(mid)
            self.published += 1
            self.metrics.mqtt_published.labels(self.station).inc()
            if not self._handed:
                self._hold_new = False
            self.metrics.mqtt_queue.labels(self.station).set(self.queued)
            self._wake.set()

    def publish_side(self, subtopic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish on ``<topic_prefix>/<subtopic>`` beside the decisions (QoS 1; alarms, checkpoints).

        Never blocks; returns whether the client took it now. A retained message that could not go
        out is kept (the latest per topic) and published when the broker is reached again; a
        non-retained one is not kept.
        """
        topic = f"{self.settings.topic_prefix}/{subtopic}"
        if retain:
            self._retained[topic] = payload
        return self._hand_side(topic, payload, retain=retain)

    def _hand_side(self, topic: str, payload: bytes, *, retain: bool) -> bool:
        client = self._client
        if client is None or not self._connected:
            return False
        info = client.publish(topic, payload, qos=1, retain=retain)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _republish_retained(self) -> None:
        for topic, payload in list(self._retained.items()):
            if not self._hand_side(topic, payload, retain=True):
                log.warning("station %s: could not re-publish %s after connecting", self.station, topic)

    def enqueue(self, payload: bytes) -> None:
        """Queue one message (drop-oldest beyond ``queue_size``); never blocks."""
        if len(self._queue) >= self.settings.queue_size:
            self._queue.popleft()
            self._count_drops(1, why="queue full")
        self._queue.append(payload)
        self.metrics.mqtt_queue.labels(self.station).set(self.queued)
        self._wake.set()

    def _count_drops(self, n: int, *, why: str) -> None:
        self.dropped += n
        self._unreported_drops += n
        self.metrics.mqtt_dropped.labels(self.station).inc(n)
        if self._unreported_drops == n:  # first of a run: say it at once, then at most every 10 s
            log.warning("station %s: MQTT %s; dropped %d decision(s)", self.station, why, n)
        self._report_drops()

    def _report_drops(self, *, force: bool = False) -> None:
        if not self._unreported_drops:
            return
        now = time.monotonic()
        if not force and now - self._last_drop_report < DROP_REPORT_INTERVAL_S and self._last_drop_report:
            return
        self._last_drop_report = now
        if self._sink is not None:
            self._sink.put(LogEntry(kind="event", station=self.station, data={
                "event": "mqtt_dropped", "count": self._unreported_drops, "total": self.dropped,
                "broker": f"{self.settings.host}:{self.settings.port}", "queue_size": self.settings.queue_size}))
        self._unreported_drops = 0

    async def _consume(self, queue: asyncio.Queue[DecisionEvent]) -> None:
        while True:
            event = await queue.get()
            if event.station != self.station:
                continue
            try:
                self.enqueue(decision_payload(event))
            except Exception:
                log.exception("station %s: could not encode decision %s for MQTT", self.station,
                              event.record.entry.inspection_id)

    async def _send(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            client = self._client
            while (client is not None and self._connected and self._queue and not self._hold_new
                   and len(self._handed) < self.settings.inflight):
                payload = self._queue[0]
                info = client.publish(self.decisions_topic, payload, qos=1)
                if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    break  # the client refused it; keep it and try again on the next wake-up
                # NO_CONN: the client keeps the message and sends it after reconnecting.
                self._queue.popleft()
                self._handed.add(info.mid)
            self.metrics.mqtt_queue.labels(self.station).set(self.queued)

    def _status_payload(self, state: str) -> bytes:
        body: dict[str, Any] = {"station": self.station, "state": state,
                                "time": datetime.now(UTC).isoformat()}
        if state == "online":
            body.update(heartbeat=self._heartbeat, queued=self.queued, dropped=self.dropped)
            if self._status_extra is not None:
                with contextlib.suppress(Exception):
                    body.update(self._status_extra())
        return json.dumps(body, separators=(",", ":"), default=str).encode("utf-8")

    def _publish_status(self) -> None:
        if self._client is not None and self._connected:
            self._client.publish(self.status_topic, self._status_payload("online"), qos=1, retain=True)

    async def _status(self) -> None:
        while True:
            await asyncio.sleep(self.settings.status_interval_s)
            self._heartbeat += 1
            self._publish_status()
            self._report_drops()
