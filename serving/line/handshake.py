"""The result handshake a PLC goes through, independent of the wire (Modbus TCP or OPC UA).

The station offers every decision; the handshake keeps up to ``depth`` of them and presents
the oldest one (RESULT_VALID). The PLC acknowledges it by naming its result number; the
result leaves the buffer and, on Modbus, stays latched (valid off) until the PLC clears its
acknowledgement, so the PLC sees a clean valid -> not valid -> valid edge for every result.

Fail-safe rules, all documented in docs/plc.md:

* A decision that finds the buffer full is not presented: it counts as an overflowed,
  fail-safe NG result, sets ERROR_CODE=BUFFER_FULL and BUSY, its result number is skipped
  (the next presented result says how many were skipped before it) and a ``plc_ack``
  record with outcome ``overflow`` goes to the log. The PLC rejects every part that has no
  result, so a lost result is a reject, never a silent pass.
* A result not acknowledged within ``ack_deadline_s`` of reaching the station is flagged
  (``plc_ack`` outcome ``timeout``, ERROR_CODE=ACK_TIMEOUT); it stays presented, and a later
  acknowledgement is still recorded (``late: true``).
* An acknowledgement that names anything but the presented result sets
  ERROR_CODE=ACK_NOT_PENDING and changes nothing else.
* When the station's PLC side stops (a stop, a restart), every result still buffered leaves
  with a ``plc_ack`` record ``unacknowledged_at_stop``: it can no longer be acknowledged.
* Every handshake (every start or restart of the station's PLC side) is a new session: its
  result numbers start at a random number and it shows a random ``session`` id, so an
  acknowledgement a PLC still holds from before a restart does not name a new result.

The class is synchronous. The serving event loop offers decisions while the Modbus server
answers PLC polls on its own thread (off the decision path): every change of state and every
register rendering holds ``lock``, so a poll never sees half an update. Log records are handed
to ``on_record`` and listeners are called from whichever thread made the change; both must not
block and must be safe to call from any thread.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from inspection.log.records import LogEntry, StoredRecord
from serving.line import registers as reg
from serving.line.registers import Decision, ErrorCode, ResultError, StatusBit


@dataclass(frozen=True, slots=True)
class LineResult:
    """One decision as the PLC sees it."""

    seq: int                    # result number (random start per session, then +1; see next_seq)
    inspection_id: str          # the decision's log record (what plc_ack records reference)
    inspection_no: int          # the log record's seq: a number a PLC can store
    kind: str                   # "part" or "inspection"
    station: str
    part_id: str | None
    decision: Decision
    defect_class: str | None
    class_code: int
    error: ResultError
    failsafe_reason: str | None
    time: datetime              # when the decision was made
    skipped_before: int = 0


@dataclass
class Counters:
    inspected: int = 0
    rejected: int = 0
    failsafe: int = 0
    overflowed: int = 0
    ack_timeouts: int = 0
    acknowledged: int = 0


@dataclass
class _Slot:
    result: LineResult
    offered_at: float
    flagged: bool = False


def next_seq(seq: int) -> int:
    """The result number after ``seq``: +1, wrapping at 32 bits, never with a low word of 0.

    A Modbus PLC acknowledges with the low word and writes 0 to clear, so 0 is never a number.
    """
    seq = (seq + 1) & 0xFFFFFFFF
    return seq + 1 if seq & 0xFFFF == 0 else seq


def new_session() -> tuple[int, int]:
    """A new session's (first result number, session id), both random, nonzero 32-bit values.

    Why random rather than 1, or "after the last ``result_seq`` in the log": a PLC that read a
    result just before a restart may write its acknowledgement (the low word) afterwards. Started
    at 1 again, that acknowledged a new, unread result -- its part passed on another part's
    result. The log cannot tell which numbers a PLC still holds: after a crash (power loss, kill)
    the last results it was shown were never logged. A random start needs no log and works the
    same after a crash; a stale acknowledgement then meets the new session's result only with odds
    of 1 in 65,535 (its low word), and a PLC that checks SESSION before acknowledging (docs/plc.md,
    safety rules) cannot be fooled at all.
    """
    return next_seq(secrets.randbits(32)), secrets.randbits(32) or 1


def to_line_result(
    record: StoredRecord, *, seq: int, class_codes: Mapping[str, int], kind: str, skipped_before: int = 0
) -> LineResult:
    """Translate a committed log record into what the PLC reads.

    Anything that is not a clean ``pass`` is NG: a fail-safe reject carries
    ResultError.FAILSAFE, an unknown decision value is treated the same way.
    """
    e = record.entry
    failsafe = e.failsafe_reason is not None or e.decision not in ("pass", "reject")
    ok = e.decision == "pass" and not failsafe
    if ok or e.defect_class is None:
        code = 0
    else:
        code = class_codes.get(e.defect_class, reg.UNMAPPED_CLASS)
    return LineResult(
        seq=seq,
        inspection_id=e.inspection_id,
        inspection_no=record.seq,
        kind=kind,
        station=e.station or "",
        part_id=e.part_id,
        decision=Decision.OK if ok else Decision.NG,
        defect_class=None if ok else e.defect_class,
        class_code=code,
        error=ResultError.FAILSAFE if failsafe else ResultError.NONE,
        failsafe_reason=e.failsafe_reason if failsafe else None,
        time=e.time,
        skipped_before=skipped_before,
    )


class ResultHandshake:
    """Buffer, present and acknowledge a station's results (see the module docstring)."""

    def __init__(
        self,
        *,
        station: str,
        depth: int = 8,
        ack_deadline_s: float = 2.0,
        class_codes: Mapping[str, int] | None = None,
        on_record: Callable[[LogEntry], None] = lambda entry: None,
        clock: Callable[[], float] = time.monotonic,
        first_seq: int | None = None,
    ) -> None:
        """``first_seq``: the first result number; None (in service) for a new random session."""
        if depth < 1:
            raise ValueError(f"buffer depth must be >= 1, got {depth}")
        self.station = station
        self.depth = depth
        self.ack_deadline_s = ack_deadline_s
        self.class_codes = dict(class_codes or {})
        self.counters = Counters()
        self.error_code = ErrorCode.NONE
        self.heartbeat = 0
        self.running = False
        self.last_acked: LineResult | None = None
        self._on_record = on_record
        self._clock = clock
        self._buffer: deque[_Slot] = deque()
        self._latched = False
        start, self.session = new_session()
        self._next_seq = start if first_seq is None else first_seq
        self._skipped = 0
        self._listeners: list[Callable[[], None]] = []
        # Re-entrant: acknowledge() reads ``presented`` while holding it.
        self.lock = threading.RLock()

    # --- observers -------------------------------------------------------------------------
    def add_listener(self, fn: Callable[[], None]) -> None:
        """``fn()`` is called after every state change (cheap; used to refresh OPC UA nodes)."""
        self._listeners.append(fn)

    def _changed(self) -> None:
        for fn in self._listeners:
            fn()

    # --- state -----------------------------------------------------------------------------
    @property
    def presented(self) -> LineResult | None:
        """The result the PLC should read now (RESULT_VALID), or None."""
        if self._buffer and not self._latched:
            return self._buffer[0].result
        return None

    @property
    def pending(self) -> int:
        return len(self._buffer)

    @property
    def oldest_wait_s(self) -> float:
        """How long the oldest unacknowledged result has waited for the PLC (0 when none waits)."""
        return self._clock() - self._buffer[0].offered_at if self._buffer else 0.0

    @property
    def latched(self) -> bool:
        return self._latched

    @property
    def full(self) -> bool:
        return len(self._buffer) >= self.depth

    def status(self) -> StatusBit:
        bits = StatusBit(0)
        if self.running and not self.full:
            bits |= StatusBit.READY
        if self.full:
            bits |= StatusBit.BUSY
        if self.presented is not None:
            bits |= StatusBit.RESULT_VALID
        if self.error_code != ErrorCode.NONE:
            bits |= StatusBit.ERROR
        if self._latched:
            bits |= StatusBit.ACK_LATCHED
        return bits

    # --- inputs ----------------------------------------------------------------------------
    def offer(self, record: StoredRecord, *, kind: str = "part") -> LineResult | None:
        """Buffer a committed decision for the PLC; None when the buffer was full (fail-safe)."""
        with self.lock:
            seq = self._take_seq()
            result = to_line_result(record, seq=seq, class_codes=self.class_codes, kind=kind,
                                    skipped_before=self._skipped)
            if self.full:
                self._overflow(result, {"buffer_depth": self.depth})
                return None
            c = self.counters
            c.inspected += 1
            if result.decision == Decision.NG:
                c.rejected += 1
            if result.error == ResultError.FAILSAFE:
                c.failsafe += 1
            self._skipped = 0
            self._buffer.append(_Slot(result, self._clock()))
            self._changed()
            return result

    def lose(self, record: StoredRecord, *, kind: str = "part") -> None:
        """A decision dropped on its way to the station (the decision bus): numbered, logged ``overflow``.

        Call it in decision order, before the next :meth:`offer`, so its number and the next
        result's ``skipped_before`` say where the gap is.
        """
        with self.lock:
            result = to_line_result(record, seq=self._take_seq(), class_codes=self.class_codes, kind=kind,
                                    skipped_before=self._skipped)
            self._overflow(result, {"lost_on": "decision bus"})

    def _overflow(self, result: LineResult, extra: dict[str, object]) -> None:
        c = self.counters
        c.inspected += 1
        c.overflowed += 1
        c.failsafe += 1
        c.rejected += 1
        self._skipped += 1
        self.error_code = ErrorCode.BUFFER_FULL
        # The PLC never sees this result, so it rejects the part (docs/plc.md, safety rule 1).
        self._emit(result, "overflow", via=None, age_s=0.0, extra={**extra, "plc_action": "reject (no result)"})
        self._changed()

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq = next_seq(seq)
        return seq

    def note_lost(self, n: int) -> None:
        """``n`` decisions never reached the station (dropped upstream) and are not known any more:
        count them as overflowed (no log record can name them; see :meth:`lose` for known ones)."""
        with self.lock:
            if n <= 0:
                return
            c = self.counters
            c.inspected += n
            c.overflowed += n
            c.failsafe += n
            c.rejected += n
            self._skipped += n
            for _ in range(n):
                self._take_seq()
            self.error_code = ErrorCode.BUFFER_FULL
            self._changed()

    def acknowledge(self, seq: int, *, via: str, bits: int = 32, latch: bool = False) -> ErrorCode:
        """The PLC acknowledges result ``seq`` (compared on its low ``bits`` bits).

        Returns ErrorCode.NONE, or ACK_NOT_PENDING (also latched in ``error_code``) when
        ``seq`` is not the presented result; then nothing else changes. Repeating the
        acknowledgement of the result just acknowledged while latched is a harmless no-op.
        With ``latch`` the next result is withheld until :meth:`release`.
        """
        with self.lock:
            mask = (1 << bits) - 1
            if self._latched and self.last_acked is not None and (self.last_acked.seq & mask) == seq:
                return ErrorCode.NONE
            current = self.presented
            if current is None or (current.seq & mask) != seq or seq == 0:
                self.error_code = ErrorCode.ACK_NOT_PENDING
                self._changed()
                return ErrorCode.ACK_NOT_PENDING
            slot = self._buffer.popleft()
            self.counters.acknowledged += 1
            self.last_acked = current
            self._latched = latch
            self._emit(current, "acknowledged", via=via, age_s=self._clock() - slot.offered_at,
                       extra={"late": slot.flagged})
            self._changed()
            return ErrorCode.NONE

    def release(self) -> None:
        """The PLC cleared its acknowledgement: present the next result (if any)."""
        with self.lock:
            if self._latched:
                self._latched = False
                self._changed()

    def clear_error(self) -> None:
        with self.lock:
            if self.error_code != ErrorCode.NONE:
                self.error_code = ErrorCode.NONE
                self._changed()

    def set_error(self, code: ErrorCode) -> None:
        """Record a wire-level error (bad address or value) without touching anything else."""
        with self.lock:
            self.error_code = code
            self._changed()

    def tick(self) -> None:
        """Heartbeat: called once per heartbeat period."""
        with self.lock:
            self.heartbeat = (self.heartbeat + 1) & 0xFFFF
            self._changed()

    def close(self) -> int:
        """The PLC side stops: log every buffered result ``unacknowledged_at_stop`` and empty the buffer.

        After a restart nobody can acknowledge these results any more (a new session has other
        numbers), so without this record the log would end at a result no outcome was ever
        written for. Returns how many were logged; a second call logs nothing.
        """
        with self.lock:
            self.running = False
            now = self._clock()
            closed = len(self._buffer)
            while self._buffer:
                slot = self._buffer.popleft()
                self._emit(slot.result, "unacknowledged_at_stop", via=None, age_s=now - slot.offered_at,
                           extra={"late": slot.flagged})
            if closed:
                self._changed()
            return closed

    def check_deadlines(self) -> int:
        """Flag buffered results older than the deadline (once each); returns how many were flagged."""
        with self.lock:
            now = self._clock()
            flagged = 0
            for slot in self._buffer:
                if not slot.flagged and now - slot.offered_at > self.ack_deadline_s:
                    slot.flagged = True
                    flagged += 1
                    self.counters.ack_timeouts += 1
                    self._emit(slot.result, "timeout", via=None, age_s=now - slot.offered_at, extra={})
            if flagged:
                self.error_code = ErrorCode.ACK_TIMEOUT
                self._changed()
            return flagged

    def _emit(self, result: LineResult, outcome: str, *, via: str | None, age_s: float,
              extra: dict[str, object]) -> None:
        data: dict[str, object] = {
            "outcome": outcome,
            "result_seq": result.seq,
            "decision": result.decision.name,
            "age_ms": round(age_s * 1000.0, 3),
            "deadline_ms": round(self.ack_deadline_s * 1000.0, 3),
            **extra,
        }
        if via is not None:
            data["via"] = via
        self._on_record(LogEntry(kind="plc_ack", ref=result.inspection_id, station=self.station,
                                 part_id=result.part_id, data=data))


def render_registers(hs: ResultHandshake, *, ack_register: int = 0) -> list[int]:
    """All ``REGISTER_COUNT`` registers for the handshake's current state (one consistent snapshot)."""
    with hs.lock:
        return _render(hs, ack_register)


def _render(hs: ResultHandshake, ack_register: int) -> list[int]:
    w = [0] * reg.REGISTER_COUNT
    w[reg.HEARTBEAT] = hs.heartbeat
    w[reg.STATUS] = int(hs.status())
    w[reg.PENDING] = min(hs.pending, 0xFFFF)
    w[reg.ERROR_CODE] = int(hs.error_code)
    w[reg.MAP_VERSION_REG] = reg.MAP_VERSION
    w[reg.BUFFER_DEPTH] = hs.depth
    w[reg.ACK_DEADLINE_MS] = min(int(hs.ack_deadline_s * 1000), 0xFFFF)
    w[reg.SESSION], w[reg.SESSION + 1] = reg.split_u32(hs.session)
    r = hs.presented
    if r is not None:
        w[reg.RESULT_SEQ], w[reg.RESULT_SEQ + 1] = reg.split_u32(r.seq)
        w[reg.INSPECTION_NO], w[reg.INSPECTION_NO + 1] = reg.split_u32(r.inspection_no)
        w[reg.DECISION] = int(r.decision)
        w[reg.DEFECT_CLASS] = r.class_code
        w[reg.RESULT_ERROR] = int(r.error)
        w[reg.SKIPPED_BEFORE] = min(r.skipped_before, 0xFFFF)
        w[reg.PART_ID_NUM], w[reg.PART_ID_NUM + 1] = reg.split_u32(reg.part_id_number(r.part_id))
        w[reg.PART_ID_TEXT: reg.PART_ID_TEXT + reg.PART_ID_TEXT_LEN] = reg.encode_text(r.part_id or "")
    c = hs.counters
    for addr, value in ((reg.INSPECTED, c.inspected), (reg.REJECTED, c.rejected), (reg.FAILSAFE, c.failsafe),
                        (reg.OVERFLOWED, c.overflowed), (reg.ACK_TIMEOUTS, c.ack_timeouts),
                        (reg.ACKNOWLEDGED, c.acknowledged)):
        w[addr], w[addr + 1] = reg.split_u32(value)
    w[reg.RESULT_ACK] = ack_register
    return w
