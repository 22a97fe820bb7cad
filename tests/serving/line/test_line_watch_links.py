"""The line watch with real line peers: a PLC that stops acknowledging raises the ``plc_link``
alarm (log record, retained MQTT message on ``<prefix>/<station>/alarms``, the page's snapshot),
and its acknowledgement clears it."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pymodbus.client import ModbusTcpClient

from serving.app import create_app
from serving.line import registers as reg
from serving.settings import build_settings
from tests.helpers.server import until
from tests.helpers.tiny_model import DARK, frame_png
from tests.serving.conftest import SINGLE, all_records, auth, post_frame, settings_data
from tests.serving.line.conftest import LinePeers


@pytest.mark.mqtt
def test_a_plc_that_stops_acknowledging_raises_and_clears_the_link_alarm(
        tmp_path: Path, models_dir: Path, keys: dict[str, str], line_peers: LinePeers) -> None:
    data = line_peers.enable(settings_data(tmp_path, models_dir, keys), ack_deadline_s=60)
    data["stations"][SINGLE]["monitoring"] = {"plc_down_s": 0.5}
    sub, modbus_port = line_peers.sub, line_peers.modbus_port
    alarms = lambda: [m for t, m, _ in sub.messages if t == f"inspection/{SINGLE}/alarms"]
    with TestClient(create_app(build_settings(data))) as client:
        assert post_frame(client, keys, frame_png(DARK), part_id="p-1").status_code == 200
        # nobody acknowledges: after plc_down_s the watch raises the alarm
        until(lambda: any(m["alarm"] == "plc_link" and m["state"] == "raised" for m in alarms()),
               "plc_link raised on MQTT")
        snap = client.get(f"/v1/line/{SINGLE}", headers=auth(keys, "viewer")).json()
        assert "plc_link" in snap["alarms"]
        assert snap["links"]["plc"]["pending"] == 1 and snap["links"]["plc"]["last_ack"] is None
        assert snap["links"]["mqtt"]["connected"] is True
        assert snap["promoted_at"]  # when the active model was promoted (the registry's history)
        plc = ModbusTcpClient("127.0.0.1", port=modbus_port, timeout=5)
        assert plc.connect()
        try:
            w = plc.read_holding_registers(0, count=reg.REGISTER_COUNT).registers
            seq = reg.join_u32(w[reg.RESULT_SEQ], w[reg.RESULT_SEQ + 1])
            assert not plc.write_register(reg.RESULT_ACK, w[reg.RESULT_SEQ + 1]).isError()
        finally:
            plc.close()
        until(lambda: any(m["alarm"] == "plc_link" and m["state"] == "cleared" for m in alarms()),
               "plc_link cleared on MQTT")
        records = [r.entry.data for r in all_records(client) if r.entry.kind == "alarm"]
        assert [(d["alarm"], d["state"]) for d in records] == [("plc_link", "raised"), ("plc_link", "cleared")]
        snap = client.get(f"/v1/line/{SINGLE}", headers=auth(keys, "viewer")).json()
        assert "plc_link" not in snap["alarms"] and snap["links"]["plc"]["last_ack"]["seq"] == seq
        assert client.app.state.log.verify().ok  # type: ignore[attr-defined]
