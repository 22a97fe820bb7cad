"""The Modbus register map a PLC programmer wires against (documented in docs/plc.md).

Everything lives in holding registers (function codes 3 read, 6/16 write, 23 read/write),
addresses are 0-based as they travel on the wire (add 40001 for the "4xxxx" notation some
PLC tools use). 32-bit values take two registers, high word first (big-endian word order).
Input registers (function code 4) mirror the same map read-only, for PLCs that poll there.

Only two registers are writable by the PLC: ``RESULT_ACK`` and ``COMMAND``. Any other write,
a write past the end of the map, or a value a writable register does not accept is refused
with a Modbus exception, sets ``ERROR_CODE`` and changes nothing else.
"""

from __future__ import annotations

import enum

#: Bumped whenever an address or a meaning below changes; the PLC can check it at start-up.
MAP_VERSION = 2

# --- station block -------------------------------------------------------------------------
HEARTBEAT = 0          # u16, +1 every heartbeat period (wraps); a frozen value means the station is down
STATUS = 1             # u16 bit field, see StatusBit
PENDING = 2            # u16, results waiting for the PLC (the presented one included)
ERROR_CODE = 3         # u16, last station error (ErrorCode), latched until COMMAND=CLEAR_ERROR
MAP_VERSION_REG = 4    # u16, MAP_VERSION
BUFFER_DEPTH = 5       # u16, how many results the station holds for a slow PLC
ACK_DEADLINE_MS = 6    # u16, a result older than this (ms) that is not acknowledged is flagged
SESSION = 8            # u32, random per start of the station's PLC side: a change means a restart

# --- presented result (valid while STATUS.RESULT_VALID is set) -----------------------------
RESULT_SEQ = 10        # u32, result number: random start per session, +1 for every decision (lost ones too)
INSPECTION_NO = 12     # u32, the inspection log's record number (seq) of the decision
DECISION = 14          # u16, Decision
DEFECT_CLASS = 15      # u16, configured class code; 0 on OK, UNMAPPED_CLASS when not configured
RESULT_ERROR = 16      # u16, ResultError
SKIPPED_BEFORE = 17    # u16, results lost to a full buffer just before this one (the PLC rejects those parts)
PART_ID_NUM = 18       # u32, the part id when it is a decimal number < 2**32, else 0
PART_ID_TEXT = 20      # 16 registers: the part id as ASCII, 2 chars per register (high byte first), NUL padded
PART_ID_TEXT_LEN = 16

# --- counters (u32, since start-up) --------------------------------------------------------
INSPECTED = 40         # decisions that reached the line integration
REJECTED = 42          # NG results (fail-safe and overflowed ones included)
FAILSAFE = 44          # fail-safe rejects: scoring failures plus results lost to a full buffer
OVERFLOWED = 46        # results that found the buffer full
ACK_TIMEOUTS = 48      # results not acknowledged within ACK_DEADLINE_MS
ACKNOWLEDGED = 50      # results the PLC acknowledged

# --- written by the PLC ---------------------------------------------------------------------
RESULT_ACK = 60        # write the low word of RESULT_SEQ to acknowledge, then write 0 to ask for the next
COMMAND = 61           # write a Command; reads back 0

REGISTER_COUNT = 62
WRITABLE = frozenset({RESULT_ACK, COMMAND})

#: Code for a defect class that has no entry in the station's ``class_codes``.
UNMAPPED_CLASS = 0xFFFF


class StatusBit(enum.IntFlag):
    READY = 1 << 0        # running and the buffer has room: parts will get a result
    BUSY = 1 << 1         # the buffer is full: new results are lost (fail-safe) until the PLC acknowledges
    RESULT_VALID = 1 << 2  # the result block holds a result waiting for RESULT_ACK
    ERROR = 1 << 3        # ERROR_CODE is not 0
    ACK_LATCHED = 1 << 4  # the PLC acknowledged; waiting for it to write RESULT_ACK=0


class Decision(enum.IntEnum):
    NONE = 0
    OK = 1
    NG = 2


class ResultError(enum.IntEnum):
    NONE = 0
    FAILSAFE = 10          # the station could not score the part (camera, model, timeout): NG


class ErrorCode(enum.IntEnum):
    NONE = 0
    ILLEGAL_ADDRESS = 1    # write to a read-only register or past the end of the map
    ILLEGAL_VALUE = 2      # a writable register got a value it does not accept
    ACK_NOT_PENDING = 3    # RESULT_ACK named a result that is not the one presented
    BUFFER_FULL = 4        # a result was lost to a full buffer: that part must be rejected
    ACK_TIMEOUT = 5        # a result was not acknowledged within its deadline


class Command(enum.IntEnum):
    NONE = 0
    CLEAR_ERROR = 1        # ERROR_CODE := 0


def split_u32(value: int) -> tuple[int, int]:
    """``value`` (wrapped to 32 bits) as (high word, low word)."""
    value &= 0xFFFFFFFF
    return value >> 16, value & 0xFFFF


def join_u32(high: int, low: int) -> int:
    """The 32-bit value stored as (high word, low word)."""
    return ((high & 0xFFFF) << 16) | (low & 0xFFFF)


def encode_text(text: str, registers: int = PART_ID_TEXT_LEN) -> list[int]:
    """``text`` as ASCII in ``registers`` registers (high byte first, NUL padded, cut to fit).

    Characters outside ASCII become ``?`` so the PLC always sees printable bytes.
    """
    raw = text.encode("ascii", errors="replace")[: registers * 2].ljust(registers * 2, b"\0")
    return [(raw[i] << 8) | raw[i + 1] for i in range(0, len(raw), 2)]


def decode_text(words: list[int]) -> str:
    """Inverse of :func:`encode_text` (stops at the first NUL)."""
    raw = b"".join(bytes(((w >> 8) & 0xFF, w & 0xFF)) for w in words)
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")


def part_id_number(part_id: str | None) -> int:
    """The numeric part id for ``PART_ID_NUM``: the id itself when decimal and < 2**32, else 0."""
    if part_id and part_id.isdecimal() and part_id.isascii():
        n = int(part_id)
        if n < 2**32:
            return n
    return 0
