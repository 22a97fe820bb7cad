"""A station's Modbus TCP server: the register map of ``registers`` over a ``ResultHandshake``.

The datastore is not a block of memory: every read renders the registers from the
handshake's state, and every write is checked against the map before anything changes, so
a bad write (read-only or unknown address, unaccepted value, acknowledging a result that is
not pending) gets a Modbus exception plus ERROR_CODE and leaves everything else as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.server import ModbusTcpServer

from serving.line import registers as reg
from serving.line.handshake import ResultHandshake, render_registers
from serving.line.registers import Command, ErrorCode

log = logging.getLogger(__name__)

_READ_FC = frozenset({3, 4, 6, 16, 23})  # 6 and 16: the read-back after a write
_WRITE_FC = frozenset({6, 16, 23})


class HandshakeContext(ModbusServerContext):
    """pymodbus datastore backed by a handshake (answers every unit id the same way)."""

    def __init__(self, handshake: ResultHandshake) -> None:
        # The base class builds memory blocks we do not use; "old_simulator" makes the
        # server call our async_getValues/async_setValues directly.
        self.old_simulator = True
        self.simdevices = []
        self._devices = {}
        self.handshake = handshake
        self.ack_register = 0

    def device_ids(self) -> list[int]:
        return [0]

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        if func_code not in _READ_FC:
            return ExcCodes.ILLEGAL_ADDRESS  # no coils or discrete inputs in this map
        if address < 0 or count < 1 or address + count > reg.REGISTER_COUNT:
            return ExcCodes.ILLEGAL_ADDRESS
        return render_registers(self.handshake, ack_register=self.ack_register)[address: address + count]

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        return self.write(address, [int(v) for v in values], func_code=func_code)

    def write(self, address: int, values: list[int], *, func_code: int = 16) -> ExcCodes | None:
        """Apply a PLC write; returns the Modbus exception code for a refused one."""
        hs = self.handshake
        addrs = range(address, address + len(values))
        if func_code not in _WRITE_FC or not values or any(a not in reg.WRITABLE for a in addrs):
            log.warning("station %s: PLC wrote %s to %d..%d: not writable (allowed: %s)", hs.station,
                        values, address, address + len(values) - 1, sorted(reg.WRITABLE))
            hs.set_error(ErrorCode.ILLEGAL_ADDRESS)
            return ExcCodes.ILLEGAL_ADDRESS
        writes = dict(zip(addrs, values))
        cmd = writes.get(reg.COMMAND)
        if cmd is not None and cmd not in {c.value for c in Command}:
            log.warning("station %s: PLC wrote COMMAND=%d (allowed: %s)", hs.station, cmd, [c.value for c in Command])
            hs.set_error(ErrorCode.ILLEGAL_VALUE)
            return ExcCodes.ILLEGAL_VALUE
        ack = writes.get(reg.RESULT_ACK)
        if ack is not None:
            if ack == 0:
                self.ack_register = 0
                hs.release()
            elif hs.acknowledge(ack, via="modbus", bits=16, latch=True) != ErrorCode.NONE:
                presented = hs.presented
                log.warning("station %s: PLC acknowledged result %d, pending is %s", hs.station, ack,
                            presented.seq & 0xFFFF if presented else "none")
                return ExcCodes.ILLEGAL_VALUE
            else:
                self.ack_register = ack
        if cmd == Command.CLEAR_ERROR:
            hs.clear_error()
        return None


class ModbusStationServer:
    """Start/stop the Modbus TCP server of one station."""

    def __init__(self, handshake: ResultHandshake, *, host: str, port: int) -> None:
        self.context = HandshakeContext(handshake)
        self.host = host
        self.port = port
        self._server: ModbusTcpServer | None = None

    async def start(self) -> None:
        """Listen on ``host:port``; raises OSError when the port cannot be bound."""
        server = ModbusTcpServer(self.context, address=(self.host, self.port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            raise OSError(f"Modbus TCP server cannot listen on {self.host}:{self.port}: {exc}") from exc
        self._server = server
        log.info("station %s: Modbus TCP on %s:%d", self.context.handshake.station, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
