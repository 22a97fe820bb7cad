"""A station's Modbus TCP server: the register map of ``registers`` over a ``ResultHandshake``.

The datastore is not a block of memory: every read renders the registers from the
handshake's state, and every write is checked against the map before anything changes, so
a bad write (read-only or unknown address, unaccepted value, acknowledging a result that is
not pending) gets a Modbus exception plus ERROR_CODE and leaves everything else as it was.

The server runs on a thread of its own with its own event loop: a PLC polls every few
milliseconds, and on the serving loop each poll (a few hundred microseconds of pymodbus
framing) sat in front of the frames waiting for their answer. Reads and writes take the
handshake's lock, so a poll sees either all of a change or none of it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Sequence

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.server import ModbusTcpServer

from serving.line import registers as reg
from serving.line.handshake import ResultHandshake, render_registers
from serving.line.registers import Command, ErrorCode

log = logging.getLogger(__name__)

_READ_FC = frozenset({3, 4, 6, 16, 23})  # 6 and 16: the read-back after a write (6: its echo)
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
        # A function code 23 write held until its read range is checked (see async_setValues).
        self._held: tuple[int, list[int]] | None = None
        # The value of the last function code 6 write, for its echo.
        self._echo: list[int] | None = None

    def device_ids(self) -> list[int]:
        return [0]

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        if func_code not in _READ_FC:
            return ExcCodes.ILLEGAL_ADDRESS  # no coils or discrete inputs in this map
        held, self._held = self._held, None
        echo, self._echo = self._echo, None
        if func_code == 6 and echo is not None:
            # pymodbus answers a single write with a read-back of the register, but Modbus wants the
            # written value echoed: COMMAND reads 0, and COMMAND=1 answered 0 looks refused to a PLC.
            return echo
        if address < 0 or count < 1 or address + count > reg.REGISTER_COUNT:
            return ExcCodes.ILLEGAL_ADDRESS  # a function code 23 write held for this read is dropped
        if held is not None:
            refused = self.write(*held, func_code=23)
            if refused is not None:
                return refused
        return render_registers(self.handshake, ack_register=self.ack_register)[address: address + count]

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        words = [int(v) for v in values]
        if func_code == 23:
            # pymodbus applies a read/write request's write before it checks the read range, and then
            # answers exception 02: an acknowledgement applied and logged that the PLC saw refused.
            # Held until async_getValues has checked the range; nothing awaits in between, so no other
            # request runs and the held write is this request's.
            self._held = (address, words)
            return None
        refused = self.write(address, words, func_code=func_code)
        if func_code == 6 and refused is None:
            self._echo = words
        return refused

    def write(self, address: int, values: list[int], *, func_code: int = 16) -> ExcCodes | None:
        """Apply a PLC write; returns the Modbus exception code for a refused one."""
        with self.handshake.lock:  # the check and the change as one step against the decision path
            return self._write(address, values, func_code)

    def _write(self, address: int, values: list[int], func_code: int) -> ExcCodes | None:
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
    """Start/stop the Modbus TCP server of one station, on its own thread and event loop."""

    def __init__(self, handshake: ResultHandshake, *, host: str, port: int) -> None:
        self.context = HandshakeContext(handshake)
        self.host = host
        self.port = port
        self._server: ModbusTcpServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def alive(self) -> bool:
        """Whether the server's thread is running (False before start, after stop, or after a crash)."""
        return self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        """Listen on ``host:port``; raises OSError when the port cannot be bound."""
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        thread = threading.Thread(target=self._run, args=(started,), daemon=True,
                                  name=f"modbus-{self.context.handshake.station}")
        thread.start()
        try:
            await asyncio.wrap_future(started)
        except BaseException:
            await asyncio.to_thread(thread.join, 10)
            raise
        self._thread = thread
        log.info("station %s: Modbus TCP on %s:%d", self.context.handshake.station, self.host, self.port)

    def _run(self, started: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            try:
                server = loop.run_until_complete(self._listen())
            except (RuntimeError, OSError) as exc:
                started.set_exception(OSError(f"Modbus TCP server cannot listen on {self.host}:{self.port}: {exc}"))
                return
            self._server, self._loop = server, loop
            started.set_result(None)
            loop.run_forever()  # until stop() asks it to end
            if not self._stopping:
                # Not asked to: the PLC can no longer read results. It must reject every part that
                # gets none (docs/plc.md, safety rule 1); here, unacknowledged results are flagged.
                log.error("station %s: the Modbus TCP server stopped unexpectedly; the PLC gets no results",
                          self.context.handshake.station)
            loop.run_until_complete(server.shutdown())
            # Let the closed connections' callbacks run and end what is left, before the loop closes.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, asyncio.sleep(0), return_exceptions=True))
        except BaseException as exc:  # reported to start() or logged: the thread must end either way
            if not started.done():
                started.set_exception(exc)
            else:
                log.exception("station %s: Modbus TCP server thread failed", self.context.handshake.station)
        finally:
            loop.close()

    async def _listen(self) -> ModbusTcpServer:
        server = ModbusTcpServer(self.context, address=(self.host, self.port))  # needs its running loop
        await server.serve_forever(background=True)
        return server

    async def stop(self) -> None:
        loop, thread = self._loop, self._thread
        self._server = self._loop = self._thread = None
        self._stopping = True
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended (the thread died)
                loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            await asyncio.to_thread(thread.join, 10)
