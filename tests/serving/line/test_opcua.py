"""An asyncua client reads a station's results and acknowledges them over OPC UA."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import Client, ua

from inspection.log.store import SqlInspectionLog
from serving.events import DecisionBus, DecisionEvent
from serving.line.logsink import LogSink
from serving.line.opcua import NAMESPACE, OpcUaStationServer
from serving.line.registers import Decision, ErrorCode
from serving.line.settings import OpcUaSettings, PlcSettings
from serving.line.station import StationLine
from tests.serving.line.conftest import decide_many, part_entry, records_of, wait_for

STATION = "press-1"
USER, PASSWORD = "line", "s3cret-line-pw"
pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def station(log_store: SqlInspectionLog, port: int) -> AsyncIterator[dict[str, Any]]:
    bus = DecisionBus()
    sink = LogSink(log_store)
    sink.start()
    line = StationLine(STATION, PlcSettings(class_codes={"dent": 2}, heartbeat_s=0.05), sink=sink, first_seq=1)
    server = OpcUaStationServer(line.handshake, OpcUaSettings(enabled=True, port=port, username=USER,
                                                              password=PASSWORD))
    await line.start(bus.subscribe("plc", keep_dropped=True))
    await server.start()
    yield {"bus": bus, "line": line, "server": server, "sink": sink, "log": log_store}
    await server.stop()
    await line.stop()
    await sink.stop()


class Reader:
    def __init__(self, client: Client, idx: int) -> None:
        self.client, self.idx = client, idx

    def node(self, *path: str) -> Any:
        return self.client.nodes.objects.get_child([f"{self.idx}:VisionSystem", *(f"{self.idx}:{p}" for p in path)])

    async def value(self, *path: str) -> Any:
        return await (await self.node(*path)).read_value()

    async def until(self, path: tuple[str, ...], expected: Any) -> None:
        for _ in range(400):
            if await self.value(*path) == expected:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{'/'.join(path)} is {await self.value(*path)!r}, expected {expected!r}")


async def test_client_reads_results_and_acknowledges_by_method_and_by_write(station: dict[str, Any]) -> None:
    recs = await decide_many(station["log"], [
        part_entry(STATION, "P-1", "reject", defect_class="dent"),
        part_entry(STATION, "P-2", "pass"),
        part_entry(STATION, "P-3", "reject", defect_class=None, failsafe_reason="model error"),
    ])
    for r in recs:
        station["bus"].publish(DecisionEvent(kind="part", record=r))
    client = Client(station["server"].endpoint, timeout=10)
    client.set_user(USER)
    client.set_password(PASSWORD)
    async with client:
        rd = Reader(client, await client.get_namespace_index(NAMESPACE))
        await rd.until(("ResultManagement", "PendingResults"), 3)
        assert await rd.value("VisionStateMachine", "CurrentState") == "Operational"
        assert await rd.value("Ready") is True and await rd.value("ResultManagement", "ResultValid") is True
        assert await rd.value("ResultManagement", "Result", "ResultId") == recs[0].entry.inspection_id
        assert await rd.value("ResultManagement", "Result", "InspectionNo") == recs[0].seq
        assert await rd.value("ResultManagement", "Result", "PartId") == "P-1"
        assert await rd.value("ResultManagement", "Result", "ResultState") == Decision.NG
        assert await rd.value("ResultManagement", "Result", "DefectClass") == "dent"
        assert await rd.value("ResultManagement", "Result", "DefectClassCode") == 2
        heartbeat = await rd.value("Heartbeat")
        await wait_for(lambda: station["line"].handshake.heartbeat > heartbeat + 1, what="heartbeat")

        rm = await rd.node("ResultManagement")
        ack = await rd.node("ResultManagement", "AcknowledgeResult")
        # Acknowledging anything but the presented result is refused and changes nothing else.
        assert await rm.call_method(ack, ua.Variant(2, ua.VariantType.UInt32)) == ErrorCode.ACK_NOT_PENDING
        await rd.until(("ErrorCode",), ErrorCode.ACK_NOT_PENDING)
        assert await rd.value("ResultManagement", "PendingResults") == 3
        await rm.call_method(await rd.node("ClearError"))
        await rd.until(("ErrorCode",), 0)

        assert await rm.call_method(ack, ua.Variant(1, ua.VariantType.UInt32)) == 0
        await rd.until(("ResultManagement", "Result", "ResultSeq"), 2)
        assert await rd.value("ResultManagement", "Result", "ResultState") == Decision.OK

        # Acknowledge by writing the variable; it reads back 0.
        ack_var = await rd.node("ResultManagement", "ResultAck")
        await ack_var.write_value(ua.Variant(2, ua.VariantType.UInt32))
        await rd.until(("ResultManagement", "Result", "ResultSeq"), 3)
        assert await ack_var.read_value() == 0
        assert await rd.value("ResultManagement", "Result", "ResultError") == 10
        assert await rd.value("ResultManagement", "Result", "FailsafeReason") == "model error"
        await ack_var.write_value(ua.Variant(3, ua.VariantType.UInt32))
        await rd.until(("ResultManagement", "ResultValid"), False)
        assert await rd.value("Counters", "Acknowledged") == 3
        assert await rd.value("Counters", "Rejected") == 2
        assert await rd.value("Counters", "FailsafeRejects") == 1
        # A result variable is not the PLC's to write.
        with pytest.raises(ua.UaStatusCodeError):
            await (await rd.node("ResultManagement", "Result", "ResultState")).write_value(
                ua.Variant(1, ua.VariantType.Int32))

    await station["sink"].flush()
    acks = records_of(station["log"], "plc_ack")
    assert [a.entry.ref for a in acks] == [r.entry.inspection_id for r in recs]
    assert all(a.entry.data and a.entry.data["via"] == "opcua" for a in acks)


async def test_anonymous_and_wrong_credentials_are_refused(station: dict[str, Any]) -> None:
    for user, password in [(None, None), (USER, "wrong-password"), ("intruder", PASSWORD)]:
        client = Client(station["server"].endpoint, timeout=5)
        if user is not None:
            client.set_user(user)
            client.set_password(password or "")
        with pytest.raises((ua.UaError, ua.UaStatusCodeError, ConnectionError, asyncio.TimeoutError)):
            async with client:
                pass


async def test_with_a_certificate_only_encrypted_sessions_are_offered(log_store: SqlInspectionLog, port: int,
                                                                      tmp_path: Path) -> None:
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    certs = {}
    for who, use in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key, cert = tmp_path / f"{who}-key.pem", tmp_path / f"{who}-cert.der"
        uri = f"urn:inspection:line:{STATION}" if who == "server" else "urn:test:plc"
        await setup_self_signed_certificate(key, cert, uri, "127.0.0.1", [use], {"commonName": who})
        certs[who] = (cert, key)
    line = StationLine(STATION, PlcSettings(), sink=LogSink(None))
    server = OpcUaStationServer(line.handshake, OpcUaSettings(
        enabled=True, port=port, username=USER, password=PASSWORD,
        certificate=certs["server"][0], private_key=certs["server"][1]))
    await line.start(DecisionBus().subscribe("plc"))
    await server.start()
    try:
        plain = Client(server.endpoint, timeout=5)
        plain.set_user(USER)
        plain.set_password(PASSWORD)
        with pytest.raises((ua.UaError, ua.UaStatusCodeError, ConnectionError, asyncio.TimeoutError)):
            async with plain:
                pass
        secure = Client(server.endpoint, timeout=10)
        secure.application_uri = "urn:test:plc"
        secure.set_user(USER)
        secure.set_password(PASSWORD)
        await secure.set_security_string(f"Basic256Sha256,SignAndEncrypt,{certs['client'][0]},{certs['client'][1]}")
        async with secure:
            rd = Reader(secure, await secure.get_namespace_index(NAMESPACE))
            assert await rd.value("VisionStateMachine", "CurrentState") == "Operational"
    finally:
        await server.stop()
        await line.stop()

