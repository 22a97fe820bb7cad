"""A pymodbus client plays the PLC against a station's real Modbus TCP server."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from pymodbus.client import AsyncModbusTcpClient

from inspection.log.store import SqlInspectionLog
from serving.events import DecisionBus, DecisionEvent
from serving.line import registers as reg
from serving.line.logsink import LogSink
from serving.line.modbus import ModbusStationServer
from serving.line.registers import Decision, ErrorCode, ResultError, StatusBit
from serving.line.settings import PlcSettings
from serving.line.station import StationLine
from tests.serving.line.conftest import decide_many, part_entry, records_of, wait_for

STATION = "press-1"
pytestmark = pytest.mark.asyncio


@dataclass
class Rig:
    bus: DecisionBus
    line: StationLine
    client: AsyncModbusTcpClient
    sink: LogSink
    log: SqlInspectionLog
    server: ModbusStationServer

    async def read(self, address: int = 0, count: int = reg.REGISTER_COUNT) -> list[int]:
        rr = await self.client.read_holding_registers(address, count=count)
        assert not rr.isError(), rr
        return list(rr.registers)

    async def write(self, address: int, value: int | list[int]) -> Any:
        if isinstance(value, list):
            return await self.client.write_registers(address, value)
        return await self.client.write_register(address, value)

    def publish(self, records: list[Any]) -> None:
        for r in records:
            self.bus.publish(DecisionEvent(kind="part", record=r))

    async def stop(self) -> None:
        """The station's PLC side stops (a restart, a deploy); safe to call twice."""
        self.client.close()
        await self.server.stop()
        await self.line.stop()
        await self.sink.stop()


RigFactory = Callable[..., Awaitable[Rig]]


@pytest_asyncio.fixture
async def make_rig(log_store: SqlInspectionLog, port: int) -> AsyncIterator[RigFactory]:
    started: list[Rig] = []

    async def make(*, first_seq: int | None = 1, **plc: Any) -> Rig:
        """``first_seq`` 1 numbers results 1, 2, ... to read easily; None is a random session, as in service."""
        plc.setdefault("heartbeat_s", 60.0)  # frozen unless a test wants it, so images compare equal
        bus = DecisionBus()
        sink = LogSink(log_store)
        sink.start()
        line = StationLine(STATION, PlcSettings(**plc), sink=sink, first_seq=first_seq)
        server = ModbusStationServer(line.handshake, host="127.0.0.1", port=port)
        await line.start(bus.subscribe("plc", maxsize=4096, keep_dropped=True))
        await server.start()
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5)
        assert await client.connect()
        rig = Rig(bus, line, client, sink, log_store, server)
        started.append(rig)
        return rig

    yield make
    for rig in started:
        await rig.stop()


def u32(words: list[int], addr: int) -> int:
    return reg.join_u32(words[addr], words[addr + 1])


async def test_full_handshake_presents_acknowledges_in_order_and_logs(make_rig: RigFactory) -> None:
    rig = await make_rig(class_codes={"scratch": 3, "dent": 4})
    recs = await decide_many(rig.log, [
        part_entry(STATION, "1001", "pass"),
        part_entry(STATION, "P-2", "reject", defect_class="dent"),
        part_entry(STATION, "P-3", "reject", defect_class=None, failsafe_reason="camera timeout"),
        part_entry(STATION, "P-4", "reject", defect_class="crack"),
    ])
    rig.publish(recs)
    await wait_for(lambda: rig.line.handshake.pending == 4, what="4 results buffered")

    w = await rig.read()
    assert w[reg.STATUS] == StatusBit.READY | StatusBit.RESULT_VALID
    assert w[reg.PENDING] == 4 and w[reg.MAP_VERSION_REG] == reg.MAP_VERSION and w[reg.BUFFER_DEPTH] == 8
    expected = [  # (part id, decision, class code, result error, part id number)
        ("1001", Decision.OK, 0, ResultError.NONE, 1001),
        ("P-2", Decision.NG, 4, ResultError.NONE, 0),
        ("P-3", Decision.NG, 0, ResultError.FAILSAFE, 0),
        ("P-4", Decision.NG, reg.UNMAPPED_CLASS, ResultError.NONE, 0),
    ]
    for i, (rec, (part, decision, code, error, num)) in enumerate(zip(recs, expected), start=1):
        w = await rig.read()
        assert w[reg.STATUS] & StatusBit.RESULT_VALID
        assert u32(w, reg.RESULT_SEQ) == i
        assert u32(w, reg.INSPECTION_NO) == rec.seq
        assert reg.decode_text(w[reg.PART_ID_TEXT: reg.PART_ID_TEXT + reg.PART_ID_TEXT_LEN]) == part
        assert u32(w, reg.PART_ID_NUM) == num
        assert (w[reg.DECISION], w[reg.DEFECT_CLASS], w[reg.RESULT_ERROR]) == (decision, code, error)
        assert not (await rig.write(reg.RESULT_ACK, i)).isError()
        w = await rig.read()
        assert w[reg.STATUS] & StatusBit.ACK_LATCHED and not w[reg.STATUS] & StatusBit.RESULT_VALID
        assert w[reg.RESULT_ACK] == i and w[reg.PENDING] == 4 - i
        assert not (await rig.write(reg.RESULT_ACK, 0)).isError()

    w = await rig.read()
    assert w[reg.STATUS] == StatusBit.READY and w[reg.PENDING] == 0 and w[reg.ERROR_CODE] == 0
    counters = {name: u32(w, getattr(reg, name)) for name in
                ("INSPECTED", "REJECTED", "FAILSAFE", "OVERFLOWED", "ACK_TIMEOUTS", "ACKNOWLEDGED")}
    assert counters == {"INSPECTED": 4, "REJECTED": 3, "FAILSAFE": 1, "OVERFLOWED": 0, "ACK_TIMEOUTS": 0,
                        "ACKNOWLEDGED": 4}

    await rig.sink.flush()
    acks = records_of(rig.log, "plc_ack")
    assert [a.entry.ref for a in acks] == [r.entry.inspection_id for r in recs]
    assert all(a.entry.data and a.entry.data["outcome"] == "acknowledged" and a.entry.data["via"] == "modbus"
               and a.entry.data["late"] is False for a in acks)
    assert all(a.entry.station == STATION for a in acks)


async def test_an_acknowledgement_from_before_a_restart_does_not_acknowledge_a_new_result(
        make_rig: RigFactory) -> None:
    """The PLC reads part A's result, the station restarts, and the PLC then writes A's acknowledgement.
    It must not acknowledge part B, which the PLC never read: each start is a new session with a new
    SESSION and result numbers from a random start (numbered from 1 again, A's 1 acknowledged B's 1)."""
    rig = await make_rig(first_seq=None)
    [a] = await decide_many(rig.log, [part_entry(STATION, "A", "reject")])
    rig.publish([a])
    await wait_for(lambda: rig.line.handshake.pending == 1, what="A presented")
    before = await rig.read()
    await rig.stop()

    rig = await make_rig(first_seq=None)
    [b] = await decide_many(rig.log, [part_entry(STATION, "B", "pass")])
    rig.publish([b])
    await wait_for(lambda: rig.line.handshake.pending == 1, what="B presented")
    after = await rig.read()
    assert u32(after, reg.SESSION) not in (0, u32(before, reg.SESSION))  # what a PLC checks first
    stale = before[reg.RESULT_SEQ + 1]
    if stale != after[reg.RESULT_SEQ + 1]:  # 1 in 65,535 restarts share the low word; SESSION still differs
        rr = await rig.write(reg.RESULT_ACK, stale)
        assert rr.isError() and rr.exception_code == 3
        w = await rig.read()
        assert w[reg.ERROR_CODE] == ErrorCode.ACK_NOT_PENDING and u32(w, reg.INSPECTION_NO) == b.seq
    await rig.sink.flush()
    acked = [r.entry.ref for r in records_of(rig.log, "plc_ack") if (r.entry.data or {})["outcome"] == "acknowledged"]
    assert acked == []


async def test_heartbeat_counts_up(make_rig: RigFactory) -> None:
    rig = await make_rig(heartbeat_s=0.02)
    first = (await rig.read(reg.HEARTBEAT, 1))[0]
    await wait_for(lambda: rig.line.handshake.heartbeat >= first + 3, what="heartbeat")
    assert (await rig.read(reg.HEARTBEAT, 1))[0] >= first + 3


async def test_bad_writes_get_the_error_code_and_change_nothing_else(make_rig: RigFactory) -> None:
    rig = await make_rig()
    recs = await decide_many(rig.log, [part_entry(STATION, f"P-{i}", "reject") for i in range(2)])
    rig.publish(recs)
    await wait_for(lambda: rig.line.handshake.pending == 2, what="2 results")
    before = await rig.read()

    def same_but_error(after: list[int], code: ErrorCode) -> None:
        assert after[reg.ERROR_CODE] == code
        assert after[reg.STATUS] == before[reg.STATUS] | StatusBit.ERROR
        rest = [i for i in range(reg.REGISTER_COUNT) if i not in (reg.ERROR_CODE, reg.STATUS)]
        assert [after[i] for i in rest] == [before[i] for i in rest]

    cases = [  # (address, value, Modbus exception code, ERROR_CODE)
        (reg.HEARTBEAT, 7, 2, ErrorCode.ILLEGAL_ADDRESS),             # read-only register
        (reg.DECISION, 1, 2, ErrorCode.ILLEGAL_ADDRESS),               # the PLC may not forge a result
        (reg.REGISTER_COUNT, 1, 2, ErrorCode.ILLEGAL_ADDRESS),         # past the end of the map
        (reg.RESULT_ACK - 1, [0, 1], 2, ErrorCode.ILLEGAL_ADDRESS),    # spans a read-only register
        (reg.COMMAND, 7, 3, ErrorCode.ILLEGAL_VALUE),                  # unknown command
        (reg.RESULT_ACK, 2, 3, ErrorCode.ACK_NOT_PENDING),             # result 2 is buffered, 1 is pending
        (reg.RESULT_ACK, 999, 3, ErrorCode.ACK_NOT_PENDING),           # never existed
    ]
    for address, value, exc_code, code in cases:
        rr = await rig.write(address, value)
        assert rr.isError() and rr.exception_code == exc_code, (address, value, rr)
        same_but_error(await rig.read(), code)
        assert not (await rig.write(reg.COMMAND, reg.Command.CLEAR_ERROR)).isError()
        assert await rig.read() == before

    rr = await rig.client.read_holding_registers(reg.REGISTER_COUNT - 1, count=2)
    assert rr.isError() and rr.exception_code == 2
    rr = await rig.client.read_coils(0, count=1)
    assert rr.isError()

    # Acknowledging while latched repeats harmlessly; acknowledging the next one before clearing is refused.
    assert not (await rig.write(reg.RESULT_ACK, 1)).isError()
    assert not (await rig.write(reg.RESULT_ACK, 1)).isError()
    rr = await rig.write(reg.RESULT_ACK, 2)
    assert rr.isError() and rr.exception_code == 3
    w = await rig.read()
    assert w[reg.ERROR_CODE] == ErrorCode.ACK_NOT_PENDING and w[reg.PENDING] == 1 and w[reg.RESULT_ACK] == 1
    assert u32(w, reg.ACKNOWLEDGED) == 1
    await rig.sink.flush()
    assert len(records_of(rig.log, "plc_ack")) == 1


async def test_a_read_write_request_with_a_bad_read_range_applies_nothing(make_rig: RigFactory) -> None:
    """Function code 23 writes, then reads: a read range outside the map is refused (exception 02) and
    its write, here an acknowledgement, must not be applied, since the PLC saw the request refused."""
    rig = await make_rig()
    recs = await decide_many(rig.log, [part_entry(STATION, f"P-{i}", "reject") for i in range(2)])
    rig.publish(recs)
    await wait_for(lambda: rig.line.handshake.pending == 2, what="2 results")
    before = await rig.read()
    rr = await rig.client.readwrite_registers(read_address=reg.REGISTER_COUNT, read_count=1,
                                              write_address=reg.RESULT_ACK, values=[1])
    assert rr.isError() and rr.exception_code == 2
    assert await rig.read() == before
    # A good read range: the write is applied, and the read shows it (the acknowledgement latched).
    rr = await rig.client.readwrite_registers(read_address=0, read_count=reg.REGISTER_COUNT,
                                              write_address=reg.RESULT_ACK, values=[1])
    assert not rr.isError()
    assert rr.registers[reg.STATUS] & StatusBit.ACK_LATCHED and rr.registers[reg.RESULT_ACK] == 1
    await rig.sink.flush()
    assert [a.entry.ref for a in records_of(rig.log, "plc_ack")] == [recs[0].entry.inspection_id]


async def test_a_single_register_write_is_answered_with_the_value_written(make_rig: RigFactory) -> None:
    """Function code 6 answers with an echo of the request; COMMAND reads back 0, which is not what
    was written, and a PLC that checks the echo takes the command for refused."""
    rig = await make_rig()
    [rec] = await decide_many(rig.log, [part_entry(STATION, "P-1", "reject")])
    rig.publish([rec])
    await wait_for(lambda: rig.line.handshake.pending == 1, what="a result")
    for address, value in ((reg.COMMAND, reg.Command.CLEAR_ERROR), (reg.RESULT_ACK, 1), (reg.RESULT_ACK, 0)):
        rr = await rig.write(address, int(value))
        assert not rr.isError() and (rr.address, rr.registers) == (address, [value])
    assert (await rig.read(reg.COMMAND, 1)) == [0]


async def test_full_buffer_is_fail_safe_and_recovers(make_rig: RigFactory) -> None:
    rig = await make_rig(buffer_depth=8, class_codes={"scratch": 1})
    recs = await decide_many(rig.log, [part_entry(STATION, f"P-{i}", "pass") for i in range(12)])
    rig.publish(recs[:11])  # the PLC is stalled: 8 fit, 3 overflow
    await wait_for(lambda: rig.line.handshake.counters.inspected == 11, what="11 offered")

    w = await rig.read()
    assert w[reg.STATUS] & StatusBit.BUSY and not w[reg.STATUS] & StatusBit.READY
    assert w[reg.ERROR_CODE] == ErrorCode.BUFFER_FULL and w[reg.PENDING] == 8
    assert (u32(w, reg.OVERFLOWED), u32(w, reg.FAILSAFE), u32(w, reg.REJECTED)) == (3, 3, 3)
    await rig.sink.flush()
    overflow = records_of(rig.log, "plc_ack")
    assert [a.entry.ref for a in overflow] == [r.entry.inspection_id for r in recs[8:11]]
    assert all(a.entry.data and a.entry.data["outcome"] == "overflow" for a in overflow)

    # The PLC catches up: every buffered result is intact and in order.
    for i in range(1, 9):
        w = await rig.read()
        assert u32(w, reg.RESULT_SEQ) == i and u32(w, reg.INSPECTION_NO) == recs[i - 1].seq
        assert w[reg.DECISION] == Decision.OK and w[reg.SKIPPED_BEFORE] == 0
        await rig.write(reg.RESULT_ACK, i)
        await rig.write(reg.RESULT_ACK, 0)
        if i == 1:
            assert (await rig.read())[reg.STATUS] & StatusBit.READY
    rig.publish(recs[11:])
    await wait_for(lambda: rig.line.handshake.pending == 1, what="result after the gap")
    w = await rig.read()
    # Results 9..11 were lost: the next one says so, and the PLC rejects those parts.
    assert u32(w, reg.RESULT_SEQ) == 12 and w[reg.SKIPPED_BEFORE] == 3
    assert w[reg.ERROR_CODE] == ErrorCode.BUFFER_FULL  # latched until the PLC clears it
    await rig.write(reg.COMMAND, reg.Command.CLEAR_ERROR)
    assert (await rig.read())[reg.ERROR_CODE] == ErrorCode.NONE


async def test_result_not_acknowledged_in_time_is_flagged_then_acknowledged_late(make_rig: RigFactory) -> None:
    rig = await make_rig(ack_deadline_s=0.05)
    recs = await decide_many(rig.log, [part_entry(STATION, "P-1", "reject")])
    rig.publish(recs)
    await wait_for(lambda: rig.line.handshake.counters.ack_timeouts == 1, what="deadline flag")
    w = await rig.read()
    assert w[reg.ERROR_CODE] == ErrorCode.ACK_TIMEOUT and u32(w, reg.ACK_TIMEOUTS) == 1
    assert w[reg.STATUS] & StatusBit.RESULT_VALID  # still there for the PLC
    await rig.write(reg.RESULT_ACK, 1)
    await rig.sink.flush()
    acks = records_of(rig.log, "plc_ack")
    assert [(a.entry.ref, (a.entry.data or {})["outcome"]) for a in acks] == [
        (recs[0].entry.inspection_id, "timeout"), (recs[0].entry.inspection_id, "acknowledged")]
    assert acks[1].entry.data and acks[1].entry.data["late"] is True
    assert acks[0].entry.data and acks[0].entry.data["age_ms"] >= 50


async def test_1000_decisions_acknowledged_in_order_with_random_plc_delays(make_rig: RigFactory) -> None:
    """Acceptance: a line feeding parts while READY, a PLC acknowledging with random delays."""
    n = 1000
    rig = await make_rig(buffer_depth=8)
    rng = random.Random(6)
    recs = await decide_many(rig.log, [
        part_entry(STATION, str(i), rng.choice(["pass", "pass", "reject"])) for i in range(n)])
    hs = rig.line.handshake
    max_pending = 0

    async def line() -> None:
        nonlocal max_pending
        i = 0
        while i < n:
            # The line sends parts while the station is READY, in bursts up to a full buffer.
            while i < n and not hs.full:
                rig.publish([recs[i]])
                i += 1
                await asyncio.sleep(0)
                max_pending = max(max_pending, hs.pending)
            await asyncio.sleep(rng.uniform(0, 0.002))

    received: list[tuple[int, int, int]] = []

    async def plc() -> None:
        while len(received) < n:
            w = await rig.read(0, reg.PART_ID_NUM + 2)
            if not w[reg.STATUS] & StatusBit.RESULT_VALID:
                await asyncio.sleep(0.0005)
                continue
            seq = u32(w, reg.RESULT_SEQ)
            received.append((seq, u32(w, reg.INSPECTION_NO), w[reg.DECISION]))
            await asyncio.sleep(rng.uniform(0, 0.001))  # the PLC's scan takes its time
            assert not (await rig.write(reg.RESULT_ACK, seq & 0xFFFF)).isError()
            assert not (await rig.write(reg.RESULT_ACK, 0)).isError()

    await asyncio.wait_for(asyncio.gather(line(), plc()), timeout=60)
    assert [s for s, _, _ in received] == list(range(1, n + 1))
    assert [no for _, no, _ in received] == [r.seq for r in recs]
    assert [d for _, _, d in received] == [Decision.OK if r.entry.decision == "pass" else Decision.NG for r in recs]
    assert max_pending == 8, "the slow PLC never let the buffer fill"
    w = await rig.read()
    assert u32(w, reg.ACKNOWLEDGED) == n and u32(w, reg.OVERFLOWED) == 0 and w[reg.ERROR_CODE] == 0
    await rig.sink.flush(timeout_s=20)
    acks = records_of(rig.log, "plc_ack")
    assert [a.entry.ref for a in acks] == [r.entry.inspection_id for r in recs]
    assert {(a.entry.data or {})["outcome"] for a in acks} == {"acknowledged"}


async def test_simulated_plc_acknowledges_every_result(make_rig: RigFactory, port: int) -> None:
    from sim.plc import SimulatedPlc

    rig = await make_rig(buffer_depth=32)  # all 20 arrive at once
    recs = await decide_many(rig.log, [part_entry(STATION, f"S-{i}", "reject" if i % 2 else "pass")
                                       for i in range(20)])
    plc = SimulatedPlc("127.0.0.1", port, poll_s=0.001, max_delay_s=0.002, seed=1)
    plc.start()
    try:
        rig.publish(recs)
        await wait_for(lambda: plc.acked == 20, what="20 acknowledged by the simulated PLC")
    finally:
        await asyncio.to_thread(plc.stop)
    assert plc.results == [(i + 1, f"S-{i}", "NG" if i % 2 else "OK") for i in range(20)]


async def test_the_simulated_plc_clears_an_acknowledgement_latched_before_it_started(
        make_rig: RigFactory, port: int) -> None:
    # A PLC that restarted between acknowledging and clearing finds ACK_LATCHED: without writing
    # RESULT_ACK = 0 at start-up (docs/plc.md, rule 6) it waits for a result that never comes.
    from sim.plc import SimulatedPlc

    rig = await make_rig(buffer_depth=8)
    first, second = await decide_many(rig.log, [part_entry(STATION, "L-1", "pass"),
                                                part_entry(STATION, "L-2", "reject")])
    rig.publish([first])
    await wait_for(lambda: rig.line.handshake.presented is not None, what="result presented")
    w = await rig.read()
    assert not (await rig.write(reg.RESULT_ACK, w[reg.RESULT_SEQ + 1])).isError()  # then the "PLC" restarts
    rig.publish([second])
    plc = SimulatedPlc("127.0.0.1", port, poll_s=0.001)
    plc.start()
    try:
        await wait_for(lambda: plc.acked == 1, what="the result after the latch acknowledged")
    finally:
        await asyncio.to_thread(plc.stop)
    assert [(part, decision) for _, part, decision in plc.results] == [("L-2", "NG")]


async def test_plc_polls_are_answered_off_the_serving_event_loop(make_rig: RigFactory, port: int) -> None:
    """The Modbus server has its own thread and loop: while the serving loop is busy (here: blocked
    outright for 0.6 s, as a long frame decode would), a PLC still gets its registers, and an
    acknowledgement it writes meanwhile is logged once the serving loop runs again."""
    import threading
    import time

    from pymodbus.client import ModbusTcpClient

    rig = await make_rig(buffer_depth=8)
    [rec] = await decide_many(rig.log, [part_entry(STATION, "77", "reject")])
    rig.publish([rec])
    await wait_for(lambda: rig.line.handshake.presented is not None, what="result presented")
    answered: list[float] = []
    done = threading.Event()

    def plc() -> None:
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=2)
        assert client.connect()
        try:
            t0 = time.perf_counter()
            rr = client.read_holding_registers(0, count=reg.REGISTER_COUNT)
            assert not rr.isError() and rr.registers[reg.STATUS] & StatusBit.RESULT_VALID
            assert not client.write_register(reg.RESULT_ACK, rr.registers[reg.RESULT_SEQ + 1]).isError()
            answered.append(time.perf_counter() - t0)
        finally:
            client.close()
            done.set()

    worker = threading.Thread(target=plc)
    worker.start()
    time.sleep(0.6)  # noqa: ASYNC251 -- on purpose: the serving loop is blocked, nothing on it can answer
    assert done.is_set() and answered and answered[0] < 0.5, answered
    worker.join()
    assert rig.line.handshake.counters.acknowledged == 1
    await rig.sink.flush()
    acks = records_of(rig.log, "plc_ack")
    assert [a.entry.ref for a in acks] == [rec.entry.inspection_id]


async def test_a_dead_modbus_server_is_a_fail_safe_state_not_a_silent_pass(make_rig: RigFactory, port: int) -> None:
    """The PLC side of the station dies (its thread's loop ends, unasked): the PLC cannot read a
    result any more, every result offered meanwhile is flagged unacknowledged (``timeout``) or
    lost to the full buffer (``overflow``), all NG for the PLC's safety rule, and nothing is ever
    recorded as acknowledged; the MQTT status says the server is down."""
    from pymodbus.client import ModbusTcpClient

    from serving.line.integration import plc_status

    rig = await make_rig(ack_deadline_s=0.1, buffer_depth=4)
    loop = rig.server._loop
    assert loop is not None and rig.server.alive
    loop.call_soon_threadsafe(loop.stop)  # the crash: nobody asked it to stop
    await wait_for(lambda: not rig.server.alive, what="the Modbus thread ended")
    recs = await decide_many(rig.log, [part_entry(STATION, f"D-{i}", "pass") for i in range(6)])
    rig.publish(recs)
    hs = rig.line.handshake
    await wait_for(lambda: hs.counters.ack_timeouts == 4 and hs.counters.overflowed == 2, what="flagged")
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    try:
        assert not client.connect()  # nothing answers the PLC any more
    finally:
        client.close()
    status = plc_status(rig.line, {"modbus": rig.server})["plc"]
    assert status["servers_down"] == ["modbus"] and status["ready"] is False
    await rig.sink.flush()
    outcomes = [(a.entry.data or {})["outcome"] for a in records_of(rig.log, "plc_ack")]
    assert sorted(outcomes) == ["overflow"] * 2 + ["timeout"] * 4
    assert hs.counters.acknowledged == 0
