"""The wire-independent handshake: numbering, lost decisions, and the register codec."""

from __future__ import annotations

import socket

import pytest

from inspection.log.records import LogEntry, StoredRecord
from serving.line import registers as reg
from serving.line.handshake import ResultHandshake, next_seq, render_registers
from serving.line.modbus import ModbusStationServer
from serving.line.registers import ErrorCode, StatusBit


def _record(seq: int, decision: str = "pass") -> StoredRecord:
    entry = LogEntry(kind="part", station="s", part_id=f"p{seq}", decision=decision)
    return StoredRecord(seq=seq, entry=entry, prev_hash="0" * 64, hash=f"{seq:064x}")


def test_result_numbers_skip_a_zero_low_word() -> None:
    """A Modbus PLC acknowledges with the low word and clears with 0, so no result may end in 0x0000."""
    hs = ResultHandshake(station="s", depth=4, first_seq=0xFFFF)
    seqs = []
    for i in range(2):
        r = hs.offer(_record(i))
        assert r is not None
        seqs.append(r.seq)
    assert seqs == [0xFFFF, 0x10001]
    w = render_registers(hs)
    assert reg.join_u32(w[reg.RESULT_SEQ], w[reg.RESULT_SEQ + 1]) == 0xFFFF
    assert hs.acknowledge(0xFFFF, via="t", bits=16) == ErrorCode.NONE
    assert hs.presented is not None and hs.presented.seq & 0xFFFF == 1
    assert hs.acknowledge(1, via="t", bits=16) == ErrorCode.NONE
    assert next_seq(0xFFFFFFFF) == 1 and next_seq(0x1FFFF) == 0x20001  # 32 bits wrap, never a 0 low word


def test_each_session_starts_at_a_random_result_number_with_a_random_session_id() -> None:
    """A PLC may write an acknowledgement it read before a restart after it: a new session that numbered
    its results 1, 2, ... again would take it for its own result 1, which the PLC never read."""
    sessions = [ResultHandshake(station="s") for _ in range(32)]
    firsts = []
    for hs in sessions:
        r = hs.offer(_record(1))
        assert r is not None
        firsts.append(r.seq)
    assert 1 not in firsts and all(f & 0xFFFF for f in firsts) and len({f & 0xFFFF for f in firsts}) > 1
    assert all(hs.session for hs in sessions) and len({hs.session for hs in sessions}) == len(sessions)
    w = render_registers(sessions[0])
    assert reg.join_u32(w[reg.SESSION], w[reg.SESSION + 1]) == sessions[0].session


def test_decisions_lost_upstream_count_as_fail_safe_and_leave_a_gap() -> None:
    logged: list[LogEntry] = []
    hs = ResultHandshake(station="s", depth=4, on_record=logged.append, first_seq=1)
    hs.running = True
    hs.offer(_record(1))
    hs.note_lost(2)
    hs.offer(_record(4))
    c = hs.counters
    assert (c.inspected, c.overflowed, c.failsafe, c.rejected) == (4, 2, 2, 2)
    assert hs.error_code == ErrorCode.BUFFER_FULL and hs.status() & StatusBit.ERROR
    assert hs.acknowledge(1, via="t") == ErrorCode.NONE
    nxt = hs.presented
    assert nxt is not None and nxt.seq == 4 and nxt.skipped_before == 2
    assert [e.data and e.data["outcome"] for e in logged] == ["acknowledged"]


def test_text_and_numbers_round_trip_through_registers() -> None:
    assert reg.decode_text(reg.encode_text("A-0042")) == "A-0042"
    assert reg.decode_text(reg.encode_text("x" * 40)) == "x" * 32  # cut to 16 registers
    assert reg.decode_text(reg.encode_text("Teil-ä")) == "Teil-?"
    assert reg.join_u32(*reg.split_u32(123_456_789)) == 123_456_789
    assert reg.part_id_number("4294967295") == 2**32 - 1
    assert [reg.part_id_number(p) for p in ("4294967296", "12a", "", None, "٣")] == [0, 0, 0, 0, 0]


def test_depth_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="depth"):
        ResultHandshake(station="s", depth=0)


@pytest.mark.asyncio
async def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = ModbusStationServer(ResultHandshake(station="s"), host="127.0.0.1", port=port)
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            await server.start()
