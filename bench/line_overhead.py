"""Decision latency with the line integrations (MQTT + Modbus TCP) on vs off.

Starts our real server (``inspection serve``, uvicorn, durable log) with the same model and
frames as bench/serve_latency.py, alternately without line integrations and with MQTT
publishing to a broker plus a Modbus TCP server that a simulated PLC polls and acknowledges,
and prints p50/p99 for each and the ratio. Target: with <= 1.10 x without (issue 6).

    .venv/bin/python bench/line_overhead.py                        # broker at 127.0.0.1:1883
    .venv/bin/python bench/line_overhead.py --mqtt-port 1884 -n 300 --rounds 3

Latency is measured at the client, one client at a time (a PLC waits for each answer).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import serve_latency as sl  # bench/serve_latency.py: model, frames, server runner


def line_overrides(modbus_port: int, mqtt_host: str, mqtt_port: int) -> dict[str, Any]:
    return {"stations": {sl.STATION: {
        "cameras": [sl.CAMERA], "part_deadline_ms": 5000,
        "line": {"plc": {"result_kind": "part", "ack_deadline_s": 30},
                 "modbus": {"enabled": True, "port": modbus_port},
                 "mqtt": {"enabled": True, "host": mqtt_host, "port": mqtt_port}}}}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="tinyres")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frame-side", type=int, default=256)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("-n", type=int, default=300, help="requests per measurement (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs, alternated (default 3)")
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--plc-poll-ms", type=float, default=10.0, help="simulated PLC scan period (default 10)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="line-bench-") as tmp:
        work = Path(tmp)
        models_dir = work / "models"
        frames = sl.make_frames(args.frames, args.frame_side)
        sl.build_model(models_dir, arch=args.arch, size=args.size, frames=frames)
        runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        for r in range(args.rounds):
            for mode in ("off", "on"):
                overrides: dict[str, Any] = {}
                plc = None
                if mode == "on":
                    port = sl._free_port()
                    overrides = line_overrides(port, args.mqtt_host, args.mqtt_port)
                    # A separate process, as a real PLC is: it must not share the client's GIL.
                    plc = subprocess.Popen([sys.executable, "-m", "sim.plc", "--port", str(port),
                                            "--poll-ms", str(args.plc_poll_ms)], cwd=REPO)
                try:
                    res = sl.measure_server(work, models_dir, frames, n=args.n, clients=1,
                                            settings_overrides=overrides)
                finally:
                    if plc is not None:
                        plc.terminate()
                        plc.wait(timeout=10)
                runs[mode].append(res["one_client"])
                print(sl._fmt(f"round {r + 1}, line integrations {mode}", res["one_client"]), flush=True)

        def mean(mode: str, key: str) -> float:
            return statistics.fmean(s[key] for s in runs[mode])

        p50 = {m: mean(m, "p50_ms") for m in runs}
        p99 = {m: mean(m, "p99_ms") for m in runs}
        print(f"\nwithout line integrations   p50 {p50['off']:.2f} ms   p99 {p99['off']:.2f} ms")
        print(f"with MQTT + Modbus (+PLC)   p50 {p50['on']:.2f} ms   p99 {p99['on']:.2f} ms   "
              f"(simulated PLC polling every {args.plc_poll_ms} ms)")
        ratio50, ratio99 = p50["on"] / p50["off"], p99["on"] / p99["off"]
        print(f"on/off p50 {ratio50:.3f}x   p99 {ratio99:.3f}x   target p50 <= 1.10x   "
              f"{'OK' if ratio50 <= 1.10 else 'MISSED'}")
        if args.json:
            args.json.write_text(json.dumps({"runs": runs, "p50": p50, "p99": p99, "ratio_p50": ratio50,
                                             "ratio_p99": ratio99}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
