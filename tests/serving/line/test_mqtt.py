"""MQTT publishing against a real Mosquitto broker this test starts, stops and restarts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from inspection.log.store import SqlInspectionLog
from serving.events import DecisionBus, DecisionEvent
from serving.line.logsink import LogSink
from serving.line.mqtt import MqttPublisher
from serving.line.settings import MqttSettings
from serving.line.telemetry import LineMetrics
from tests.serving.line.conftest import decide_many, part_entry, records_of, wait_for
from tests.serving.line.peers import MOSQUITTO, Broker, Subscriber

STATION = "press-1"
pytestmark = [pytest.mark.mqtt, pytest.mark.asyncio]


@pytest.fixture
def broker(tmp_path: Path, port: int) -> Iterator[Broker]:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    b = Broker(tmp_path, port)
    b.start()
    yield b
    b.stop()


@pytest_asyncio.fixture
async def rig(broker: Broker, log_store: SqlInspectionLog) -> AsyncIterator[dict[str, Any]]:
    sink = LogSink(log_store)
    sink.start()
    made: list[MqttPublisher] = []

    async def make(**kw: Any) -> tuple[MqttPublisher, DecisionBus]:
        bus = DecisionBus()
        pub = MqttPublisher(STATION, MqttSettings(enabled=True, port=broker.port, **kw), sink=sink,
                            metrics=LineMetrics(), status_extra=lambda: {"pending_results": 0})
        await pub.start(bus.subscribe("mqtt", maxsize=100_000).queue)
        made.append(pub)
        return pub, bus

    yield {"make": make, "sink": sink, "log": log_store, "broker": broker}
    for pub in made:
        await pub.stop(drain_s=0.2)
    await sink.stop()


def sample(pub: MqttPublisher, name: str) -> float | None:
    return pub.metrics.registry.get_sample_value(name, {"station": STATION})


def publish(bus: DecisionBus, records: list[Any]) -> None:
    for r in records:
        bus.publish(DecisionEvent(kind="part" if r.entry.kind == "part" else "inspection", record=r))


async def test_every_decision_arrives_in_order_and_status_is_retained(rig: dict[str, Any]) -> None:
    sub = Subscriber(rig["broker"].port, clean=True)
    try:
        pub, bus = await rig["make"](status_interval_s=0.05)
        await wait_for(lambda: pub.connected, what="publisher connected")
        entries = [part_entry(STATION, f"P-{i}", "reject" if i % 3 == 0 else "pass") for i in range(300)]
        recs = await decide_many(rig["log"], entries)
        other = await decide_many(rig["log"], [part_entry("press-2", "X-1")])
        publish(bus, recs[:150] + other + recs[150:])  # another station's decision is not ours
        await wait_for(lambda: len(sub.decisions()) >= 300, what="300 decisions")
        got = sub.decisions()
        assert [m["inspection_id"] for m in got] == [r.entry.inspection_id for r in recs]
        assert [m["seq"] for m in got] == [r.seq for r in recs]
        assert got[0]["decision"] == recs[0].entry.decision and got[0]["station"] == STATION
        assert got[0]["hash"] == recs[0].hash and got[0]["kind"] == "part"
        await wait_for(lambda: pub.queued == 0 and pub.published == 300, what="all acknowledged")
        assert sample(pub, "inspection_mqtt_published_total") == 300
    finally:
        sub.close()
    # A subscriber arriving later gets the retained status at once.
    late = Subscriber(rig["broker"].port, client_id="late", clean=True)
    try:
        await wait_for(lambda: any(t.endswith("/status") and r for t, _, r in late.messages), what="retained status")
        status = next(m for t, m, r in late.messages if t.endswith("/status") and r)
        assert status["station"] == STATION and status["state"] == "online" and "heartbeat" in status
    finally:
        late.close()


async def test_broker_stopped_mid_stream_queue_drains_after_it_returns(rig: dict[str, Any]) -> None:
    broker: Broker = rig["broker"]
    sub = Subscriber(broker.port)
    pub, bus = await rig["make"]()
    recs = await decide_many(rig["log"], [part_entry(STATION, f"P-{i}") for i in range(400)])
    try:
        await wait_for(lambda: pub.connected, what="publisher connected")
        publish(bus, recs[:100])
        await wait_for(lambda: len(sub.first_seen_ids()) >= 50, what="first decisions arriving")
        stopping = asyncio.create_task(asyncio.to_thread(broker.stop))  # mid-stream: the line goes on
        for i in range(100, 400, 20):
            publish(bus, recs[i: i + 20])
            await asyncio.sleep(0.005)
        await stopping
        await wait_for(lambda: not pub.connected, what="publisher noticed")
        assert pub.queued > 0 and pub.dropped == 0
        assert sample(pub, "inspection_mqtt_queue_depth") == pub.queued
        await asyncio.to_thread(broker.start)
        await wait_for(lambda: pub.queued == 0, timeout_s=30,
                       what=lambda: f"queue drained ({pub.queued} queued, connected={pub.connected})")
        ids = [r.entry.inspection_id for r in recs]
        await wait_for(lambda: len(sub.first_seen_ids()) >= 400, timeout_s=30,
                       what=lambda: "all 400 at the subscriber; missing: "
                       f"{[i for i, x in enumerate(ids) if x not in set(sub.first_seen_ids())]}")
        assert sub.first_seen_ids() == ids
        assert pub.dropped == 0
    finally:
        sub.close()


async def test_full_queue_drops_oldest_counts_and_logs(rig: dict[str, Any]) -> None:
    broker: Broker = rig["broker"]
    sub = Subscriber(broker.port, client_id="after")  # its session outlives the broker's restart
    await asyncio.to_thread(broker.stop)  # the broker is away from the start
    pub, bus = await rig["make"](queue_size=50)
    recs = await decide_many(rig["log"], [part_entry(STATION, f"P-{i}") for i in range(80)])
    publish(bus, recs)
    await wait_for(lambda: pub.dropped == 30, what="30 drops")
    assert pub.queued == 50 and sample(pub, "inspection_mqtt_dropped_total") == 30
    await asyncio.to_thread(broker.start)
    try:
        await wait_for(lambda: pub.queued == 0, timeout_s=30, what="queue drained")
        await wait_for(lambda: len(sub.decisions()) >= 50, what="the 50 newest")
        assert sub.first_seen_ids() == [r.entry.inspection_id for r in recs[30:]]
    finally:
        sub.close()
    await rig["sink"].flush()
    events = [e for e in records_of(rig["log"], "event") if (e.entry.data or {}).get("event") == "mqtt_dropped"]
    assert sum(e.entry.data["count"] for e in events if e.entry.data) == 30
    assert all(e.entry.station == STATION for e in events)
