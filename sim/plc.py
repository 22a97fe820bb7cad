"""A simulated PLC for demos and benchmarks: polls a station's Modbus server and acknowledges results.

It does what docs/plc.md asks of a real PLC program: write 0 to RESULT_ACK once connected (safety
rule 6), then read STATUS and the result block, write the low word of RESULT_SEQ to RESULT_ACK,
wait for RESULT_VALID to drop, write 0. It runs in a
thread of its own (its own blocking Modbus client), so it can sit beside any event loop. One
scan every ``poll_s``: a scan reads the registers and, when a result is valid, acknowledges it,
so it takes at most one result per scan (a 10 ms PLC: 100 results/s)::

    plc = SimulatedPlc("127.0.0.1", 5020)
    plc.start()
    ...
    plc.stop()
    plc.results  # [(result_seq, part_id, "OK" | "NG"), ...]
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from typing import Any

from serving.line import registers as reg

log = logging.getLogger(__name__)


class SimulatedPlc(threading.Thread):
    """Acknowledge every result of the Modbus server at ``host:port`` (optionally after a random delay)."""

    def __init__(self, host: str, port: int, *, poll_s: float = 0.005, max_delay_s: float = 0.0,
                 seed: int | None = None, keep: int = 10_000) -> None:
        super().__init__(daemon=True, name=f"simulated-plc-{port}")
        self.host, self.port = host, port
        self.poll_s, self.max_delay_s = poll_s, max_delay_s
        self.results: list[tuple[int, str, str]] = []
        self.acked = 0
        self._keep = keep
        self._rng = random.Random(seed)
        self._stop_flag = threading.Event()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop_flag.set()
        self.join(timeout_s)

    def _wait_for_server(self) -> bool:
        while not self._stop_flag.is_set():
            with socket.socket() as s:
                if s.connect_ex((self.host, self.port)) == 0:
                    return True
            time.sleep(0.1)
        return False

    def run(self) -> None:
        from pymodbus.client import ModbusTcpClient
        from pymodbus.exceptions import ModbusException

        if not self._wait_for_server():
            return
        client = ModbusTcpClient(self.host, port=self.port, timeout=5, retries=0)
        client.connect()
        try:
            # Rule 6: an acknowledgement latched before this program (re)started releases nothing
            # until it is cleared; writing 0 acknowledges nothing.
            client.write_register(reg.RESULT_ACK, 0)
            while not self._stop_flag.is_set():
                self._scan(client)
                # One scan per period, as a PLC program runs: polling flat out while results are
                # waiting would be a PLC with no scan time at all.
                time.sleep(self.poll_s)
        except (ModbusException, OSError) as exc:  # a server killed mid-read resets the socket
            if not self._stop_flag.is_set():
                log.warning("simulated PLC: Modbus connection lost: %s", exc)
        finally:
            client.close()


    def _scan(self, client: Any) -> None:
        """Read the registers; acknowledge the presented result, if there is one."""
        rr = client.read_holding_registers(0, count=reg.PART_ID_TEXT + reg.PART_ID_TEXT_LEN)
        w = [] if rr.isError() else list(rr.registers)
        if not w or not w[reg.STATUS] & reg.StatusBit.RESULT_VALID:
            return
        seq = reg.join_u32(w[reg.RESULT_SEQ], w[reg.RESULT_SEQ + 1])
        part = reg.decode_text(w[reg.PART_ID_TEXT: reg.PART_ID_TEXT + reg.PART_ID_TEXT_LEN])
        decision = "OK" if w[reg.DECISION] == reg.Decision.OK else "NG"
        if self.max_delay_s:
            time.sleep(self._rng.uniform(0, self.max_delay_s))
        client.write_register(reg.RESULT_ACK, seq & 0xFFFF)
        client.write_register(reg.RESULT_ACK, 0)
        self.acked += 1
        self.results.append((seq, part, decision))
        del self.results[: max(0, len(self.results) - self._keep)]
        log.debug("simulated PLC: part %s %s (result %d) acknowledged", part or "?", decision, seq)


def main(argv: list[str] | None = None) -> int:
    """``python -m sim.plc --port 5020``: run a simulated PLC until interrupted."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="Acknowledge every result of a station's Modbus server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020)
    parser.add_argument("--poll-ms", type=float, default=5.0, help="PLC scan period (default 5 ms)")
    parser.add_argument("--max-delay-ms", type=float, default=0.0, help="random delay before acknowledging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    plc = SimulatedPlc(args.host, args.port, poll_s=args.poll_ms / 1000, max_delay_s=args.max_delay_ms / 1000)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    plc.start()
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    plc.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
