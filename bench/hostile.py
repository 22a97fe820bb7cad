"""Hostile frames against a real server: decompression bombs beside 8 normal clients.

Two phases of ``--seconds`` each against one ``inspection serve`` process (the tests' tiny ONNX
model, a SQLite log): first 8 normal clients alone, then the same clients while a bomb sender
posts, over and over, the bomb set (PNG, JPEG, TIFF and BMP files of a few hundred bytes whose
headers declare 65,535 x 65,535 and 20,000 x 20,000 pixels), each alone and then 4 at once.
It prints side by side: the status codes, the time each bomb took to be refused (client side,
the whole HTTP round trip: on the idle server before the phases, and under load, where it also
waits its turn on the event loop behind the normal clients' frames; the bomb sender runs in a
process of its own, so its times are not also waiting for the normal clients' threads to hand
over this process's interpreter lock), the server's RSS growth
(largest sample in the phase minus the sample at its start, whole process tree) and the normal
clients' p50/p99 and the p99 ratio. Each refused bomb also appends its part's fail-safe record.

Targets (issue #20): every bomb refused in <= 50 ms without decoding (413, "refused without
decoding"), RSS growth <= 50 MB, normal p99 <= 1.5x the run without bombs. Run:

    .venv/bin/python bench/hostile.py                # 2 x 60 s
    nice -n 15 .venv/bin/python bench/hostile.py --seconds 20
"""

from __future__ import annotations

import argparse
import collections
import itertools
import multiprocessing
import secrets
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STATION, CAMERA = "line-1", "cam"


def setup(work: Path) -> tuple[Path, str]:
    import yaml

    from inspection.registry import ModelRegistry
    from serving.settings import hash_key
    from tests.helpers.tiny_model import make_model_version

    models = work / "models"
    make_model_version(models, version="v1")
    ModelRegistry(models).promote("tiny", "v1", station=STATION)
    key = secrets.token_urlsafe(24)
    data = {
        "models_dir": str(models), "log_url": f"sqlite:///{work / 'log.db'}", "log_sqlite_synchronous": "NORMAL",
        "stations": {STATION: {"cameras": [CAMERA], "part_deadline_ms": 1000}},
        "api_keys": [{"name": "bench", "role": "line", "sha256": hash_key(key)}],
    }
    settings = work / "serve.yaml"
    settings.write_text(yaml.safe_dump(data), encoding="utf-8")
    return settings, key


class Rss:
    """The server's RSS (process and children), sampled every 0.1 s while running."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        procs = [self._proc, *self._proc.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(self.now())

    def __enter__(self) -> Self:
        self.samples = [self.now()]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.now())

    @property
    def growth(self) -> int:
        return max(self.samples) - self.samples[0]


def normal_client(n: int, base: str, key: str, frames: list[bytes], stop: threading.Event,
                  latencies: list[float], codes: collections.Counter[int]) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {key}", "content-type": "image/png"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        for i in itertools.count():
            if stop.is_set():
                return
            t0 = time.perf_counter()
            r = http.post("/v1/inspections", content=frames[(n + i) % len(frames)],
                          params={"station": STATION, "camera": CAMERA, "part_id": f"c{n}-{i}-{time.time_ns()}"})
            latencies.append(time.perf_counter() - t0)
            codes[r.status_code] += 1


def bomber(base: str, key: str, bombs: dict[str, bytes], stop: threading.Event,
           results: list[dict[str, Any]], alone_only: bool = False) -> None:
    """Each bomb alone, then each 4 at once, until ``stop``; a short pause between rounds."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    from inspection.preprocess import media_type

    def send(http: httpx.Client, name: str, mode: str) -> None:
        data = bombs[name]
        t0 = time.perf_counter()
        r = http.post("/v1/inspections", content=data, headers={**headers, "content-type": media_type(data)},
                      params={"station": STATION, "camera": CAMERA, "part_id": f"bomb-{time.time_ns()}"})
        detail = r.json().get("detail", "") if r.headers.get("content-type", "").startswith("application/json") else ""
        results.append({"name": name, "mode": mode, "status": r.status_code, "s": time.perf_counter() - t0,
                        "undecoded": "refused without decoding" in detail})

    names = list(bombs)
    with httpx.Client(base_url=base, timeout=60) as http, ThreadPoolExecutor(4) as pool:
        clients = [httpx.Client(base_url=base, timeout=60) for _ in range(4)]
        try:
            while not stop.is_set():
                for name in names:
                    send(http, name, "alone")
                if alone_only:
                    continue
                for name in names:  # four of the same at once (issue #20: four 20,000^2 PNGs took 2 GB)
                    list(pool.map(lambda c, name=name: send(c, name, "4 at once"), clients))
                stop.wait(0.2)
        finally:
            for c in clients:
                c.close()


def _bomber_process(base: str, key: str, bombs: dict[str, bytes], stop: Any, out: Any) -> None:
    results: list[dict[str, Any]] = []
    try:
        bomber(base, key, bombs, stop, results)
    finally:
        out.put(results)


def phase(base: str, key: str, pid: int, frames: list[bytes], seconds: float, clients: int,
          bombs: dict[str, bytes] | None) -> dict[str, Any]:
    stop = threading.Event()
    latencies: list[float] = []
    codes: collections.Counter[int] = collections.Counter()
    bomb_results: list[dict[str, Any]] = []
    threads = [threading.Thread(target=normal_client, args=(n, base, key, frames, stop, latencies, codes),
                                daemon=True) for n in range(clients)]
    ctx = multiprocessing.get_context("spawn")
    bomb_stop, bomb_out = ctx.Event(), ctx.Queue()
    sender = ctx.Process(target=_bomber_process, args=(base, key, bombs, bomb_stop, bomb_out)) if bombs else None
    with Rss(pid) as rss:
        if sender is not None:
            sender.start()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        bomb_stop.set()
        for t in threads:
            t.join(timeout=60)
        if sender is not None:
            bomb_results = bomb_out.get(timeout=120)
            sender.join(timeout=60)
    lat = np.array(latencies) * 1000
    return {"codes": codes, "n": len(lat), "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "rss_mb": rss.growth / 2**20, "bombs": bomb_results}


def _p99_ms(results: list[dict[str, Any]]) -> float:
    return float(np.percentile([r["s"] for r in results], 99)) * 1000 if results else float("nan")


def _refuse_times(results: list[dict[str, Any]], mode: str) -> str:
    ms = np.array([r["s"] for r in results if r["mode"] == mode]) * 1000
    if not len(ms):
        return "-"
    return f"{np.percentile(ms, 50):.1f} / {np.percentile(ms, 99):.1f} / {ms.max():.1f}"


def quiet_refusals(base: str, key: str, bombs: dict[str, bytes], rounds: int = 10) -> list[dict[str, Any]]:
    """Each bomb ``rounds`` times, one at a time, with no other load: the refusal's own time (the
    round trip under load also waits for the normal clients' frames on the event loop)."""
    stop = threading.Event()
    results: list[dict[str, Any]] = []
    sender = threading.Thread(target=bomber, args=(base, key, bombs, stop, results, True))
    sender.start()
    while sum(r["mode"] == "alone" for r in results) < rounds * len(bombs) and sender.is_alive():
        time.sleep(0.05)
    stop.set()
    sender.join()
    return results


def report(calm: dict[str, Any], hostile: dict[str, Any], bombs: dict[str, bytes],
           quiet: list[dict[str, Any]]) -> bool:
    def codes(c: collections.Counter[int]) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(c.items()))

    results = hostile["bombs"]
    bomb_codes = collections.Counter(r["status"] for r in results)
    worst = max((r["s"] for r in results), default=0.0) * 1000
    ratio = hostile["p99"] / calm["p99"] if calm["p99"] else float("nan")
    rows = [
        ("normal frames answered", f"{calm['n']}", f"{hostile['n']}"),
        ("normal status codes", codes(calm["codes"]), codes(hostile["codes"])),
        ("normal p50 ms", f"{calm['p50']:.1f}", f"{hostile['p50']:.1f}"),
        ("normal p99 ms", f"{calm['p99']:.1f}", f"{hostile['p99']:.1f}"),
        ("normal p99 ratio", "1.00", f"{ratio:.2f}"),
        ("server RSS growth MB", f"{calm['rss_mb']:.1f}", f"{hostile['rss_mb']:.1f}"),
        ("bombs sent (alone / 4 at once)", "-", (f"{sum(r['mode'] == 'alone' for r in results)} / "
                                                 f"{sum(r['mode'] != 'alone' for r in results)}")),
        ("bomb status codes", "-", codes(bomb_codes)),
        ("bombs refused without decoding", "-", f"{sum(r['undecoded'] for r in results)} of {len(results)}"),
        ("refuse ms idle server p50/p99/max", "-", _refuse_times(quiet, "alone")),
        ("refuse ms alone p50/p99/max", "-", _refuse_times(results, "alone")),
        ("refuse ms 4 at once p50/p99/max", "-", _refuse_times(results, "4 at once")),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"bomb set: {', '.join(f'{k} ({len(v)} B)' for k, v in bombs.items())}")
    print(f"{'':<{width}}  {'no bombs':>22}  {'with bombs':>28}")
    for name, a, b in rows:
        print(f"{name:<{width}}  {a:>22}  {b:>28}")
    checks = {
        "every bomb refused (413) without decoding": bool(results) and all(
            r["status"] == 413 and r["undecoded"] for r in results),
        "every bomb refused in <= 50 ms on an idle server": all(r["s"] <= 0.05 and r["status"] == 413 for r in quiet),
        "bombs under load refused in <= 50 ms (p99)": _p99_ms(results) <= 50,
        f"every bomb under load refused in <= 50 ms (max {worst:.0f} ms)": worst <= 50,
        "server RSS growth <= 50 MB": hostile["rss_mb"] <= 50,
        "normal p99 <= 1.5x without bombs": ratio <= 1.5,
        "no 5xx to normal clients": not any(k >= 500 for k in hostile["codes"]),
    }
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    return all(checks.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--warmup-s", type=float, default=3.0)
    args = ap.parse_args(argv)

    from tests.helpers.hostile_frames import bomb_set
    from tests.helpers.server import free_port, start_server, wait_ready
    from tests.helpers.tiny_model import DARK, frame_png

    bombs = {f"{kind}-65535": data for kind, data in bomb_set(65_535).items()}
    bombs |= {f"{kind}-20000": data for kind, data in bomb_set(20_000).items() if kind != "bmp"}
    frames = [frame_png(DARK if i % 5 == 0 else 230, size=64, seed=i) for i in range(50)]
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        settings, key = setup(Path(tmp))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(settings, port)
        try:
            wait_ready(proc, base)
            phase(base, key, proc.pid, frames, args.warmup_s, args.clients, None)  # warm caches, the log
            quiet = quiet_refusals(base, key, bombs)
            calm = phase(base, key, proc.pid, frames, args.seconds, args.clients, None)
            hostile = phase(base, key, proc.pid, frames, args.seconds, args.clients, bombs)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"{args.clients} normal clients, {args.seconds:g} s per phase")
    return 0 if report(calm, hostile, bombs, quiet) else 1


if __name__ == "__main__":
    sys.exit(main())
