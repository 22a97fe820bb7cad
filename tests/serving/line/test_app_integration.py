"""The real app with its line integrations on: frames in over HTTP, a PLC on Modbus, a subscriber on MQTT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pymodbus.client import ModbusTcpClient

from inspection.errors import ConfigError
from inspection.log.store import SqlInspectionLog
from serving.app import create_app
from serving.events import DecisionBus, DecisionEvent
from serving.line import registers as reg
from serving.line.handshake import next_seq
from serving.line.integration import LineIntegration
from serving.line.registers import Decision, StatusBit
from serving.line.settings import LineSettings
from serving.settings import build_settings
from tests.helpers.server import until
from tests.helpers.tiny_model import BRIGHT, DARK, frame_png
from tests.serving.conftest import SINGLE, all_records, post_frame, settings_data
from tests.serving.line.conftest import LinePeers, decide_many, free_port, part_entry, records_of, wait_for


@pytest.mark.mqtt
def test_decisions_reach_the_plc_and_mqtt_and_acks_are_logged(
        tmp_path: Path, models_dir: Path, keys: dict[str, str], line_peers: LinePeers) -> None:
    data = line_peers.enable(settings_data(tmp_path, models_dir, keys), ack_deadline_s=30, status_interval_s=0.1)
    sub = line_peers.sub
    with TestClient(create_app(build_settings(data))) as client:
        plc = ModbusTcpClient("127.0.0.1", port=line_peers.modbus_port, timeout=5)
        assert plc.connect()
        try:
            parts = [("p-1", DARK), ("p-2", BRIGHT), ("p-3", DARK)]
            answers = []
            for part, level in parts:
                r = post_frame(client, keys, frame_png(level), station=SINGLE, camera="cam", part_id=part)
                assert r.status_code == 200, r.text
                answers.append(r.json())
            line = client.app.state.line  # type: ignore[attr-defined]
            until(lambda: line.lines[SINGLE].handshake.counters.inspected == 3, "3 part decisions at the PLC")

            acked, seqs = [], []
            for _ in range(3):
                w = plc.read_holding_registers(0, count=reg.REGISTER_COUNT).registers
                assert w[reg.STATUS] & StatusBit.RESULT_VALID
                seqs.append(reg.join_u32(w[reg.RESULT_SEQ], w[reg.RESULT_SEQ + 1]))
                text = reg.decode_text(w[reg.PART_ID_TEXT: reg.PART_ID_TEXT + reg.PART_ID_TEXT_LEN])
                acked.append((text, Decision(w[reg.DECISION])))
                assert not plc.write_register(reg.RESULT_ACK, seqs[-1] & 0xFFFF).isError()
                assert not plc.write_register(reg.RESULT_ACK, 0).isError()
            assert seqs[1:] == [next_seq(seqs[0]), next_seq(seqs[1])]  # from the session's random start
            records = all_records(client)
            part_records = [r for r in records if r.entry.kind == "part"]
            assert acked == [(r.entry.part_id, Decision.OK if r.entry.decision == "pass" else Decision.NG)
                             for r in part_records]
            assert {d for _, d in acked} == {Decision.OK, Decision.NG}

            # MQTT gets every decision: three frame inspections and three part decisions, in log order.
            until(lambda: len(sub.decisions()) >= 6, "6 MQTT decisions")
            published = [(m["kind"], m["inspection_id"]) for m in sub.decisions()]
            assert published == [(r.entry.kind, r.entry.inspection_id) for r in records
                                 if r.entry.kind in ("inspection", "part")]
            until(lambda: any(t.endswith(f"{SINGLE}/status") and m.get("plc", {}).get("acknowledged") == 3
                               for t, m, _ in sub.messages), "status with PLC counters")
            metrics = client.get("/metrics", headers={"Authorization": f"Bearer {keys['admin']}"}).text
        finally:
            plc.close()
        until(lambda: len([r for r in all_records(client) if r.entry.kind == "plc_ack"]) == 3, "3 plc_ack records")
        acks = [r for r in all_records(client) if r.entry.kind == "plc_ack"]
        assert [a.entry.ref for a in acks] == [r.entry.inspection_id for r in part_records]
        assert all(a.entry.data and a.entry.data["outcome"] == "acknowledged" for a in acks)
    assert 'inspection_plc_results_total{outcome="acknowledged",station="press-2"} 3.0' in metrics
    assert 'inspection_mqtt_published_total{station="press-2"} 6.0' in metrics
    # On a clean stop the retained status says offline.
    until(lambda: any(t.endswith(f"{SINGLE}/status") and m["state"] == "offline" for t, m, _ in sub.messages),
           "offline status")


@pytest.mark.asyncio
async def test_a_stop_logs_every_result_the_plc_did_not_acknowledge(log_store: SqlInspectionLog, port: int) -> None:
    """A stop or restart with results waiting: each gets a plc_ack record (none may end without an
    outcome in the log), after the acknowledged one and before the log sink stops."""
    from pymodbus.client import AsyncModbusTcpClient

    bus = DecisionBus()
    line = LineIntegration({SINGLE: LineSettings(modbus={"enabled": True, "port": port},
                                                 plc={"ack_deadline_s": 60, "heartbeat_s": 60})},
                           bus=bus, log_store=log_store)
    await line.start()
    recs = await decide_many(log_store, [part_entry(SINGLE, f"P{i}", "reject") for i in range(3)])
    for r in recs:
        bus.publish(DecisionEvent(kind="part", record=r))
    hs = line.lines[SINGLE].handshake
    await wait_for(lambda: hs.pending == 3, what="3 results buffered")
    plc = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5)
    assert await plc.connect()
    w = (await plc.read_holding_registers(0, count=reg.REGISTER_COUNT)).registers
    assert not (await plc.write_register(reg.RESULT_ACK, w[reg.RESULT_SEQ + 1])).isError()
    plc.close()
    await line.stop()
    acks = [(a.entry.ref, (a.entry.data or {})["outcome"]) for a in records_of(log_store, "plc_ack")]
    assert acks == [(recs[0].entry.inspection_id, "acknowledged"),
                    *((r.entry.inspection_id, "unacknowledged_at_stop") for r in recs[1:])]


@pytest.mark.asyncio
async def test_decisions_lost_on_the_bus_are_numbered_and_logged_before_the_next_result(
        log_store: SqlInspectionLog, port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bus drops the oldest decisions when the PLC side falls behind: those results get their
    numbers and an overflow plc_ack each before the next result, which says they were skipped (a gap
    found a second later had newer results already numbered in its place). Another station's
    lost decision is not ours."""
    from serving.line import integration

    monkeypatch.setattr(integration, "BUS_QUEUE", 4)  # stands for 65,536: the same path, with fewer events
    bus = DecisionBus()
    line = LineIntegration({SINGLE: LineSettings(modbus={"enabled": True, "port": port},
                                                 plc={"ack_deadline_s": 60, "heartbeat_s": 60})},
                           bus=bus, log_store=log_store)
    await line.start()
    try:
        recs = await decide_many(log_store, [part_entry(SINGLE, "P0", "reject"), part_entry("other", "X"),
                                             *(part_entry(SINGLE, f"P{i}", "pass") for i in range(1, 6))])
        for r in recs:  # one burst before the PLC side's task runs: P0, X and P1 are dropped
            bus.publish(DecisionEvent(kind="part", record=r))
        hs = line.lines[SINGLE].handshake
        await wait_for(lambda: hs.pending == 4, what="4 results buffered")
        lost = [recs[0], recs[2]]
        first = hs.presented
        assert first is not None and first.part_id == "P2" and first.skipped_before == 2
        assert (hs.counters.inspected, hs.counters.overflowed) == (6, 2)
        await line.sink.flush()
        acks = [(a.entry.ref, a.entry.data or {}) for a in records_of(log_store, "plc_ack")]
        assert [(ref, d["outcome"]) for ref, d in acks] == [(r.entry.inspection_id, "overflow") for r in lost]
        seqs = [d["result_seq"] for _, d in acks]
        assert [next_seq(seqs[0]), next_seq(seqs[1])] == [seqs[1], first.seq]
    finally:
        await line.stop()


def test_anonymous_opcua_outside_demo_mode_refuses_to_start(tmp_path: Path, models_dir: Path,
                                                             keys: dict[str, str]) -> None:
    data = settings_data(tmp_path, models_dir, keys)
    data["stations"][SINGLE]["line"] = {"opcua": {"enabled": True, "port": free_port(), "allow_anonymous": True}}
    with pytest.raises(ConfigError, match="allow_anonymous"), TestClient(create_app(build_settings(data))):
        pass


def test_a_busy_modbus_port_is_a_config_error_naming_it(tmp_path: Path, models_dir: Path,
                                                         keys: dict[str, str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        data = settings_data(tmp_path, models_dir, keys)
        data["stations"][SINGLE]["line"] = {"modbus": {"enabled": True, "port": port}}
        app = create_app(build_settings(data))
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"), TestClient(app):
            pass
        assert isinstance(app.state.startup_error, ConfigError)


def test_two_servers_on_one_port_refuse_to_start(tmp_path: Path, models_dir: Path, keys: dict[str, str]) -> None:
    data = settings_data(tmp_path, models_dir, keys)
    port = free_port()
    for station in data["stations"]:
        data["stations"][station]["line"] = {"modbus": {"enabled": True, "port": port}}
    with pytest.raises(ConfigError, match="same|both listen"), TestClient(create_app(build_settings(data))):
        pass


@pytest.mark.parametrize("bad,match", [
    ({"plc": {"buffer_depth": 0}}, "buffer_depth"),
    ({"plc": {"class_codes": {"scratch": 0}}}, "out of range"),
    ({"plc": {"class_codes": {"scratch": 1, "dent": 1}}}, "distinct"),
    ({"modbus": {"enabled": True, "port": 70000}}, "port"),
    ({"mqtt": {"topic_prefix": "a/#"}}, "topic_prefix"),
    ({"modbus": {"enable": True}}, "enable"),
    ({"opcua": {"enabled": True, "certificate": "server.der"}}, "certificate and private_key"),
])
def test_bad_line_settings_are_refused_with_the_reason(tmp_path: Path, models_dir: Path, keys: dict[str, str],
                                                        bad: dict[str, Any], match: str) -> None:
    data = settings_data(tmp_path, models_dir, keys)
    data["stations"][SINGLE]["line"] = bad
    with pytest.raises(ConfigError, match=match):
        build_settings(data)
