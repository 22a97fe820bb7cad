"""Decision latency with the line integrations (MQTT + Modbus TCP) on vs off.

Starts two of our real servers (``inspection serve``, uvicorn, durable log) with the same model
and frames as bench/serve_latency.py: one without line integrations, one with MQTT publishing to
a broker plus a Modbus TCP server that a simulated PLC (its own process) scans every 10 ms and
acknowledges. They take turns in blocks of 25 requests (``serve_latency.side_by_side``); prints
p50/p99 for each and the ratio, and 8-client throughput. Target: p50 with <= 1.10 x without.

    .venv/bin/python bench/line_overhead.py                        # broker at 127.0.0.1:1883
    .venv/bin/python bench/line_overhead.py --integrations modbus   # one of them only

Latency is measured at the client, one client at a time (a PLC waits for each answer).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import serve_latency as sl  # bench/serve_latency.py: model, frames, server runner


def line_overrides(modbus_port: int, mqtt_host: str, mqtt_port: int, *, modbus: bool = True,
                   mqtt: bool = True) -> dict[str, Any]:
    return {"stations": {sl.STATION: {
        "cameras": [sl.CAMERA], "part_deadline_ms": 5000,
        "line": {"plc": {"result_kind": "part", "ack_deadline_s": 30},
                 "modbus": {"enabled": modbus, "port": modbus_port},
                 "mqtt": {"enabled": mqtt, "host": mqtt_host, "port": mqtt_port}}}}}


def start_plc(port: int, poll_ms: float) -> subprocess.Popen[bytes]:
    """The simulated PLC (sim.plc) scanning our Modbus server, in a process of its own as a real
    PLC is: it must not share the bench client's interpreter lock."""
    return subprocess.Popen([sys.executable, "-m", "sim.plc", "--port", str(port), "--poll-ms", str(poll_ms)],
                            cwd=REPO)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="linecnn", help="architecture (default: the training default)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frame-side", type=int, default=300)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("-n", type=int, default=1000, help="requests per server, 1 client (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="turns of the many-client measurement (default 3)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--plc-poll-ms", type=float, default=10.0, help="simulated PLC scan period (default 10)")
    parser.add_argument("--integrations", default="modbus,mqtt",
                        help="what 'on' enables: modbus, mqtt or both (default modbus,mqtt)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    wanted = set(args.integrations.split(","))
    if not wanted or wanted - {"modbus", "mqtt"}:
        parser.error(f"--integrations {args.integrations!r}: allowed modbus, mqtt or modbus,mqtt")

    with tempfile.TemporaryDirectory(prefix="line-bench-") as tmp:
        work = Path(tmp)
        models_dir = work / "models"
        frames = sl.make_frames(args.frames, args.frame_side)
        version_dir, _ = sl.build_model(models_dir, arch=args.arch, size=args.size, frames=frames)
        bare_frame, bare_batched = sl.bare_runner(version_dir, frames)
        port = sl._free_port()
        overrides = line_overrides(port, args.mqtt_host, args.mqtt_port, modbus="modbus" in wanted,
                                   mqtt="mqtt" in wanted)
        plc = None
        if "modbus" in wanted:
            plc = start_plc(port, args.plc_poll_ms)
        try:
            with contextlib.ExitStack() as stack:
                contenders = [stack.enter_context(sl.our_server(work, models_dir, frames, "off", {})),
                              stack.enter_context(sl.our_server(work, models_dir, frames, "on", overrides))]
                for c in contenders:
                    stack.enter_context(c.rss)
                # Both servers up at once, taking turns in blocks of 25 requests: the machine's
                # drift hits both alike (run one after the other, it moved the ratio by +-0.2).
                res = sl.side_by_side(bare_frame, bare_batched, contenders, n=args.n, clients=args.clients,
                                      rounds=args.rounds)
        finally:
            if plc is not None:
                plc.terminate()
                plc.wait(timeout=10)
        one, many = res["one_client"], res["many_fps"]
        print(sl._fmt("line integrations off, 1 client", one["off"]))
        print(sl._fmt(f"with {' + '.join(sorted(wanted))}, 1 client", one["on"])
              + (f"   (simulated PLC scanning every {args.plc_poll_ms} ms)" if plc is not None else ""))
        ratio50, ratio99 = one["on"]["p50_ms"] / one["off"]["p50_ms"], one["on"]["p99_ms"] / one["off"]["p99_ms"]
        print(f"on/off p50 {ratio50:.3f}x   p99 {ratio99:.3f}x   target p50 <= 1.10x   "
              f"{'OK' if ratio50 <= 1.10 else 'MISSED'}")
        print(f"{args.clients} clients: off {many['off']:.1f} frames/s, on {many['on']:.1f} frames/s "
              f"({many['on'] / many['off']:.3f}x)")
        if args.json:
            args.json.write_text(json.dumps({**res, "ratio_p50": ratio50, "ratio_p99": ratio99}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
