"""Capacity: how many cameras at what frame rate one server sustains with p99 under 20 ms.

Our real server (``inspection serve``, durable FULL log) with the line integration on: MQTT
publishing every decision to a broker, the Modbus TCP server, and a simulated PLC (its own
process) polling every 10 ms and acknowledging every part result. One station with
``--cameras K`` cameras; every part is one frame from each camera (a multi-camera station),
so the server also makes and logs a part decision per K frames.

Open loop, as a line is: each camera sends its frame of part i at ``start + i / rate``
whatever the server is doing, on its own keep-alive connection. Latency is counted from the
*scheduled* send time, so a server that falls behind shows it (no coordinated omission).
The rate rises step by step until p99 exceeds the limit or frames fail; the capacity is the
last step that held. Run:

    .venv/bin/python bench/capacity.py                          # 2, 4 and 8 cameras, 300 px PNG
    .venv/bin/python bench/capacity.py --cameras 4 --rates 10,20,30 --step-s 20
"""

from __future__ import annotations

import argparse
import itertools
import json
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import serve_latency as sl  # bench/serve_latency.py: model, frames, server runner, raw client
from line_overhead import line_overrides, start_plc


def run_step(port: int, headers: dict[str, str], frames: list[bytes], cameras: list[str], rate: float,
             seconds: float, p99_limit_ms: float) -> dict[str, Any]:
    """Every camera sends ``rate`` frames/s for ``seconds``; latencies from the scheduled time;
    ``held``: no frame failed and p99 stayed under ``p99_limit_ms``."""
    run = secrets.token_hex(3)
    n = max(1, int(rate * seconds))
    lat: list[float] = []
    bad: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(cameras) + 1)
    start_at: list[float] = []

    def camera(k: int, name: str) -> None:
        client = sl.RawClient(port)
        mine: list[float] = []
        try:
            barrier.wait()
            t0 = start_at[0]
            for i in range(n):
                due = t0 + i / rate
                now = time.perf_counter()
                if due > now:
                    time.sleep(due - now)
                raw = sl.build_request(f"/v1/inspections?station={sl.STATION}&camera={name}&part_id={run}-{i}",
                                       frames[(i * len(cameras) + k) % len(frames)], headers)
                status, body = client.request(raw)
                mine.append(time.perf_counter() - due)
                if status != 200 or json.loads(body).get("decision") not in ("pass", "reject"):
                    with lock:
                        bad.append(f"HTTP {status}: {body[:120]!r}")
        except Exception as exc:  # noqa: BLE001 -- reported as a failed step
            with lock:
                bad.append(f"{name}: {exc}")
        finally:
            client.close()
            with lock:
                lat.extend(mine)

    threads = [threading.Thread(target=camera, args=(k, c)) for k, c in enumerate(cameras)]
    for t in threads:
        t.start()
    start_at.append(time.perf_counter() + 0.05)
    barrier.wait()
    for t in threads:
        t.join()
    figures = sl.summary(lat) if lat else {"p50_ms": float("nan"), "p99_ms": float("nan")}
    return {"rate_per_camera": rate, "frames_per_s": rate * len(cameras), "frames": len(lat),
            "p50_ms": figures["p50_ms"], "p99_ms": figures["p99_ms"], "failed": len(bad),
            "first_failure": bad[0] if bad else None,
            "held": not bad and figures["p99_ms"] < p99_limit_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="linecnn", help="architecture (default: the training default)")
    parser.add_argument("--size", type=int, default=128, help="model input side (default 128)")
    parser.add_argument("--frame-side", type=int, default=300)
    parser.add_argument("--frame-format", choices=("png", "jpeg"), default="png")
    parser.add_argument("--cameras", default="2,4,8", help="camera counts to try (default 2,4,8)")
    parser.add_argument("--rates", default="5,10,15,20,30,40,50,60,80,100,120",
                        help="frames/s per camera, tried in order until one fails (default 5..120)")
    parser.add_argument("--step-s", type=float, default=15.0, help="seconds per rate step (default 15)")
    parser.add_argument("--p99-ms", type=float, default=20.0, help="the latency limit (default 20 ms)")
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--plc-poll-ms", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.cameras.split(",")]
    rates = [float(x) for x in args.rates.split(",")]

    results: dict[int, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp:
        work = Path(tmp)
        models_dir = work / "models"
        frames = sl.make_frames(32, args.frame_side, fmt=args.frame_format)
        sl.build_model(models_dir, arch=args.arch, size=args.size, frames=frames)
        print(f"model {args.arch} {args.size} px, frames {args.frame_side}x{args.frame_side} "
              f"{args.frame_format.upper()}, MQTT + Modbus on, simulated PLC polling every {args.plc_poll_ms} ms, "
              f"limit p99 < {args.p99_ms} ms", flush=True)
        for k in counts:
            cameras = [f"cam{i + 1}" for i in range(k)]
            modbus = sl._free_port()
            overrides = line_overrides(modbus, args.mqtt_host, args.mqtt_port)
            overrides["stations"][sl.STATION]["cameras"] = cameras
            plc = start_plc(modbus, args.plc_poll_ms)
            results[k] = []
            try:
                with sl.our_server(work, models_dir, frames, f"{k} cameras", overrides) as ours:
                    run_step(ours.port, ours.headers, frames, cameras, 5.0, 3.0, args.p99_ms)  # warm-up
                    for rate in rates:
                        step = run_step(ours.port, ours.headers, frames, cameras, rate, args.step_s, args.p99_ms)
                        results[k].append(step)
                        held = step["held"]
                        print(f"{k} cameras x {rate:5.1f} frames/s = {step['frames_per_s']:6.1f} frames/s: "
                              f"p50 {step['p50_ms']:6.2f} ms  p99 {step['p99_ms']:7.2f} ms  "
                              f"failed {step['failed']}  {'held' if held else 'NOT held'}"
                              + (f"  ({step['first_failure']})" if step["failed"] else ""), flush=True)
                        if not held:
                            break
            finally:
                plc.terminate()
                plc.wait(timeout=10)
    print(f"\ncapacity (last step that held, p99 < {args.p99_ms:.0f} ms, no failed frame):")
    for k, steps in results.items():
        held = list(itertools.takewhile(lambda s: s["held"], steps))
        if held:
            best = held[-1]
            print(f"  {k} cameras x {best['rate_per_camera']:.0f} frames/s = {best['frames_per_s']:.0f} frames/s "
                  f"({best['frames_per_s'] / k:.0f} parts/s), p50 {best['p50_ms']:.2f} ms, p99 {best['p99_ms']:.2f} ms")
        else:
            print(f"  {k} cameras: not even the first step held")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
