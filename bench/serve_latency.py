"""Serving latency: bare onnxruntime vs our server vs the naive server an engineer writes in an afternoon.

(One script over 400 lines on purpose: every contender is started and measured from this one
process, taking turns, so all of them see the same machine load; split up it could not be.)

Same model (the training default architecture, exported by ``training.export`` as training's
defaults export it: test-time mirror folded in and the defect map output, unless ``--no-tta`` /
``--no-maps``) and the same frames in one run:

(a) bare onnxruntime in-process: decode + preprocess + run, one frame at a time, and batched;
(b) our server (``inspection serve``, a real uvicorn process) over HTTP on loopback, with one
    client and with 8 concurrent clients (every decision durably logged, as in production);
(c) a plain FastAPI server running the same network in torch eager mode (information only);
(d) the naive server: plain FastAPI + onnxruntime (default session options), the same
    preprocessing function, no log, no auth, no batching -- what the targets compare ours with.

The contenders take turns in blocks of 25 requests (``side_by_side``), so every ratio compares
figures taken under the same machine load. Prints p50/p99 latency and frames/s for each, the
server's resident memory, and whether each target of issue 17 holds (1 client: ours p50 <=
1.25x naive, p99 <= 2x p50; 8 clients: ours >= 1.0x naive frames/s, >= 0.8x bare batched for
resnet18 at 224 px; RSS <= 400 MB). Run:

    .venv/bin/python bench/serve_latency.py                  # linecnn, 128 px input, 300 px PNG frames
    .venv/bin/python bench/serve_latency.py --arch resnet18 --size 224
    .venv/bin/python bench/serve_latency.py --frame-side 2048 --frame-format jpeg -n 300
    .venv/bin/python bench/serve_latency.py --settings extra.yaml   # merge extra serve settings
                                                              # (e.g. line integrations enabled)

``measure_server(settings_overrides)`` is the hook for comparing configurations (e.g. MQTT and
Modbus enabled vs disabled): it starts our server with the overrides and returns its figures.
Clients are raw HTTP/1.1 keep-alive sockets (prebuilt requests), so the client's own CPU cost
is small next to the server's on a 2-core machine. Latency is measured at the client.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import numpy as np
from fastapi import Request  # module level: the torch server's route annotation must resolve

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serving.workers import stop_process

STATION, CAMERA = "bench", "cam"
CLASSES = ["good", "scratch", "dent", "bubble"]


# --------------------------------------------------------------------------------------------
# model and frames
# --------------------------------------------------------------------------------------------
def build_model(models_dir: Path, *, arch: str, size: int, frames: list[bytes], seed: int = 0, tta: bool = True,
                maps: bool = True) -> tuple[Path, Path]:
    """Export ``arch`` (random weights, eval mode) as a registered, promoted model version, in the
    graph training's defaults export: ``tta`` folds the left/right mirror in (the recipe's choice
    for the default orientation), ``maps`` adds the defect map output.

    Its card carries the monitoring reference of ``frames`` (as training's export stores the
    validation frames'), so the line watch runs in full: statistics, gate, drift, chart.

    Returns (version folder, torch state_dict file for the torch-eager server).
    """
    import torch

    from inspection.card import (
        DatasetRef,
        DefectMapSpec,
        Golden,
        InputSpec,
        ModelCard,
        Normalization,
        Parity,
        Thresholds,
        hash_files,
        save_card,
        utc_now,
    )
    from inspection.registry import ModelRegistry
    from training.export import export_onnx, ort_predict_maps, write_golden
    from training.models import Classifier, FlipAverage, get_model

    torch.manual_seed(seed)
    spec = InputSpec(height=size, width=size, channels=1, resize="area")
    mean, std = [0.5], [0.25]
    classifier = Classifier(get_model(arch, num_classes=len(CLASSES), in_channels=1), mean=mean, std=std).eval()
    exported = FlipAverage(classifier, hflip=True, vflip=False).eval() if tta else classifier
    folder = models_dir / "bench" / "v1"
    folder.mkdir(parents=True, exist_ok=True)
    map_name = DefectMapSpec.model_fields["output_name"].default if maps else None
    export_onnx(exported, folder / "model.onnx", spec, map_output=map_name, good_index=CLASSES.index("good"))
    weights = models_dir / "bench.pt"
    torch.save(classifier.state_dict(), weights)
    golden = np.random.default_rng(seed).integers(0, 256, size=(4, 1, size, size), dtype=np.uint8)
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    defect_map = None
    if map_name is not None:
        probs, golden_maps = ort_predict_maps(session, golden, spec, map_name)
        defect_map = DefectMapSpec(output_name=map_name, height=golden_maps.shape[1], width=golden_maps.shape[2],
                                   parity_max_abs_diff=0.0)
    else:
        probs, golden_maps = session.run(["probabilities"], {"pixels": golden})[0], None
    write_golden(folder / "golden.npz", golden, probs, [f"golden-{i}" for i in range(len(golden))], maps=golden_maps)
    from inspection.monitoring.build import build_reference
    from inspection.preprocess import prepare_frame

    inputs = np.stack([prepare_frame(f, spec, raw_shape=None, source="bench frame")[1] for f in frames])
    reference = build_reference(inputs, session.run(["probabilities"], {"pixels": inputs})[0], classes=CLASSES,
                                good_class="good", threshold=0.99)
    card = ModelCard(
        name="bench", version="v1", created=utc_now(), classes=CLASSES, good_class="good", arch=arch, input=spec,
        # Random weights give P(defect) ~ 0.75 for every frame; a high threshold makes most frames
        # pass, as on a real line (a reject also stores its frame, fsynced, in the log).
        normalization=Normalization(mean=mean, std=std), thresholds=Thresholds(reject=0.99),
        dataset=DatasetRef(name="bench-random", fingerprint="0" * 64),
        parity=Parity(max_abs_diff=0.0, tolerance=1e-4, n_images=4, passed=True),
        golden=Golden(file="golden.npz", tolerance=1e-4, count=4),
        files=hash_files(folder, ["model.onnx", "golden.npz"]),
        monitoring=reference,
        defect_map=defect_map,
    )
    save_card(card, folder)
    ModelRegistry(models_dir).promote("bench", "v1", station=STATION)
    return folder, weights


def make_frames(n: int, side: int, *, seed: int = 1, fmt: str = "png") -> list[bytes]:
    """``n`` grayscale frames ``side`` x ``side`` (textured background with a few blobs), PNG or JPEG."""
    import cv2

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        img = cv2.GaussianBlur(rng.integers(90, 170, size=(side, side), dtype=np.uint8), (5, 5), 0)
        for _ in range(int(rng.integers(0, 3))):
            c = (int(rng.integers(0, side)), int(rng.integers(0, side)))
            cv2.circle(img, c, int(rng.integers(3, side // 10)), int(rng.integers(0, 255)), -1)
        params = [cv2.IMWRITE_JPEG_QUALITY, 90] if fmt == "jpeg" else []
        frames.append(cv2.imencode(".jpg" if fmt == "jpeg" else ".png", img, params)[1].tobytes())
    return frames


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def summary(latencies_s: list[float], wall_s: float | None = None, frames: int | None = None) -> dict[str, float]:
    ms = sorted(x * 1000.0 for x in latencies_s)
    out = {"p50_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))],
           "n": len(ms)}
    if wall_s:
        out["fps"] = (frames or len(ms)) / wall_s
    else:
        out["fps"] = 1000.0 / statistics.mean(ms)
    return out


class RawClient:
    """A keep-alive HTTP/1.1 client on a plain socket: prebuilt requests, minimal client CPU."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, raw: bytes) -> tuple[int, bytes]:
        self.sock.sendall(raw)
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(v) for k, _, v in (ln.partition(b":") for ln in lines[1:]) if k.strip().lower() == b"content-length"
        )
        while len(rest) < length:
            rest += self._recv_chunk()
        self.buf = rest[length:]
        return status, rest[:length]

    def _recv_chunk(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk

    def _recv(self) -> None:
        self.buf += self._recv_chunk()

    def close(self) -> None:
        self.sock.close()


def build_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    kind = "image/jpeg" if body[:2] == b"\xff\xd8" else "image/png"
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


def run_clients(port: int, requests_for: Callable[[int, int], bytes], *, clients: int, per_client: int,
                check: Callable[[int, bytes], None]) -> dict[str, Any]:
    """``clients`` threads each sending ``per_client`` requests back to back; client-side latency."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start = threading.Barrier(clients + 1)

    def worker(c: int) -> None:
        client = RawClient(port)
        try:
            start.wait()
            for i in range(per_client):
                raw = requests_for(c, i)
                t = time.perf_counter()
                status, body = client.request(raw)
                lat[c].append(time.perf_counter() - t)
                check(status, body)
        except Exception as exc:  # noqa: BLE001 - reported below; a bench must not hang on one failed client
            errors.append(f"client {c}: {exc}")
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError("; ".join(errors[:3]))
    return summary([x for xs in lat for x in xs], wall, clients * per_client)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(proc: subprocess.Popen, url_port: int, path: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", url_port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if b" 200 " in s.recv(4096).split(b"\r\n")[0]:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


class RssSampler:
    """Peak resident memory of a process, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:  # the server exited: its peak is what was sampled
                return
            time.sleep(0.05)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure_server(work: Path, models_dir: Path, frames: list[bytes], *, n: int, clients: int = 8,
                   settings_overrides: dict[str, Any] | None = None, repeats: int = 1,
                   between: Callable[[], None] | None = None) -> dict[str, Any]:
    """(b) alone: start ``inspection serve`` with the bench settings (+ overrides), measure 1 and N clients.

    The hook for comparing configurations of our server (``bench/line_overhead.py``). The
    one-client measurement is repeated ``repeats`` times (``between`` runs before each);
    ``one_client`` is the repeat with the lowest p50, ``one_client_runs`` all of them.
    """
    with our_server(work, models_dir, frames, "ours", settings_overrides) as ours, ours.rss as rss:
        run_clients(ours.port, ours.request_for, clients=1, per_client=min(50, n), check=ours.check)  # warm-up
        runs = []
        for _ in range(repeats):
            if between is not None:
                between()
            cpu0 = sum(rss.proc.cpu_times()[:2])
            runs.append(run_clients(ours.port, ours.request_for, clients=1, per_client=n, check=ours.check))
            # Server CPU per frame: a load-independent view of its own overhead.
            runs[-1]["cpu_ms_per_frame"] = (sum(rss.proc.cpu_times()[:2]) - cpu0) * 1000.0 / n
        many = run_clients(ours.port, ours.request_for, clients=clients, per_client=max(1, n // 2), check=ours.check)
    one = min(runs, key=lambda r: r["p50_ms"])
    return {"one_client": one, "one_client_runs": runs, f"{clients}_clients": many, "rss_mb": rss.peak / 2**20}


# --------------------------------------------------------------------------------------------
# side by side: every contender measured in alternating blocks (what main() reports)
# --------------------------------------------------------------------------------------------
class Contender:
    """A server under test: its port, how to build a request, how to check an answer."""

    def __init__(self, label: str, port: int, proc: subprocess.Popen, request_for: Callable[[int, int], bytes],
                 check: Callable[[int, bytes], None], headers: dict[str, str] | None = None) -> None:
        self.label, self.port, self.proc = label, port, proc
        self.request_for, self.check = request_for, check
        self.headers = headers or {}  # what a request of one's own needs (our server: the API key)
        self.rss = RssSampler(proc.pid)


MONITORING_OFF = "log FULL, monitoring off"


@contextlib.contextmanager
def our_server(work: Path, models_dir: Path, frames: list[bytes], label: str,
               settings_overrides: dict[str, Any] | None = None) -> Iterator[Contender]:
    """``inspection serve`` (a real uvicorn process) with the bench settings (+ overrides)."""
    import yaml

    from serving.settings import hash_key

    key = secrets.token_urlsafe(24)
    settings: dict[str, Any] = {
        "models_dir": str(models_dir),
        "log_url": f"sqlite:///{work / f'log-{secrets.token_hex(3)}.db'}",
        "stations": {STATION: {"cameras": [CAMERA], "part_deadline_ms": 5000}},
        "api_keys": [{"name": "bench", "role": "line", "sha256": hash_key(key)}],
    }
    from inspection.config import deep_merge

    settings = deep_merge(settings, settings_overrides or {})
    path = work / f"serve-{secrets.token_hex(3)}.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    port = _free_port()
    with open(work / f"{path.stem}.log", "w") as log_file:  # an undrained pipe would stall the server
        proc = subprocess.Popen(
            [sys.executable, "-m", "inspection", "serve", "--settings", str(path), "--port", str(port)],
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            _wait_ready(proc, port, "/readyz")
            headers = {"Authorization": f"Bearer {key}"}
            run, serial = secrets.token_hex(4), itertools.count()

            def req(c: int, i: int) -> bytes:
                # Every request is a new part (a repeated part id would be a late view: a fail-safe reject).
                return build_request(f"/v1/inspections?station={STATION}&camera={CAMERA}&part_id={run}-{next(serial)}",
                                     frames[(c * 7 + i) % len(frames)], headers)

            def check(status: int, body: bytes) -> None:
                if status != 200 or json.loads(body)["decision"] not in ("pass", "reject"):
                    raise RuntimeError(f"{label}: HTTP {status}: {body[:200]!r}")

            yield Contender(label, port, proc, req, check, headers)
        finally:
            stop_process(proc)


def side_by_side(bare_frame: Callable[[int], None], bare_batched: Callable[[], float], contenders: list[Contender], *,
                 n: int, clients: int, block: int = 25, rounds: int = 3) -> dict[str, Any]:
    """1 client: bare and every contender in alternating blocks of ``block`` requests, ``n`` each.

    The machine is shared and its speed drifts by tens of percent within a minute; measured
    in turns of a few dozen milliseconds, every contender sees the same drift, so the ratios
    hold even when single figures move. Then ``clients`` concurrent clients, ``rounds`` turns
    per server with bare batched runs between them (medians reported).
    """
    lat: dict[str, list[float]] = {"bare": [], **{c.label: [] for c in contenders}}
    cpu: dict[str, float] = dict.fromkeys(lat, 0.0)
    socks = {c.label: RawClient(c.port) for c in contenders}
    try:
        for c in contenders:  # warm-up: connections, caches, the log's first pages
            for i in range(50):
                c.check(*socks[c.label].request(c.request_for(0, i)))
        for b in range(max(1, n // block)):
            t0 = time.process_time()
            for i in range(block):
                t = time.perf_counter()
                bare_frame(b * block + i)
                lat["bare"].append(time.perf_counter() - t)
            cpu["bare"] += time.process_time() - t0
            for c in contenders:
                sock, cpu0 = socks[c.label], sum(c.rss.proc.cpu_times()[:2])
                for i in range(block):
                    raw = c.request_for(0, b * block + i)
                    t = time.perf_counter()
                    status, body = sock.request(raw)
                    lat[c.label].append(time.perf_counter() - t)
                    c.check(status, body)
                cpu[c.label] += sum(c.rss.proc.cpu_times()[:2]) - cpu0
    finally:
        for sock in socks.values():
            sock.close()
    one = {k: {**summary(v), "cpu_ms_per_frame": cpu[k] * 1000.0 / len(v)} for k, v in lat.items()}
    many: dict[str, list[float]] = {c.label: [] for c in contenders if c.label != "torch"}
    batched: list[float] = []
    for _ in range(rounds):
        for c in contenders:
            if c.label in many:
                many[c.label].append(
                    run_clients(c.port, c.request_for, clients=clients, per_client=max(1, n // clients), check=c.check)[
                        "fps"
                    ]
                )
        batched.append(bare_batched())
    return {"one_client": one, "many_fps": {k: statistics.median(v) for k, v in many.items()}, "many_fps_runs": many,
            "bare_batched_fps": statistics.median(batched), "bare_batched_runs": batched}


# --------------------------------------------------------------------------------------------
# (c) the torch-eager FastAPI server (what serving the PyTorch checkpoint directly gives)
# --------------------------------------------------------------------------------------------
def serve_predict(port: int, score: Callable[[bytes, str | None], list[float]], classes: list[str]) -> None:
    """A plain FastAPI app (the peers' shape): ``GET /ready`` and ``POST /predict`` -> probabilities, class."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        probs = score(await request.body(), request.headers.get("content-type"))
        return {"probabilities": probs, "class": classes[int(np.argmax(probs))]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def torch_server_main(port: int, weights: Path, arch: str, size: int, *, tta: bool) -> None:
    """Decode + preprocess (same function), torch eager forward (with the mirror where ``tta``),
    softmax, JSON."""
    import torch

    from inspection.card import InputSpec
    from inspection.preprocess import prepare_frame
    from training.models import Classifier, FlipAverage, get_model

    spec = InputSpec(height=size, width=size, channels=1, resize="area")
    classifier = Classifier(get_model(arch, num_classes=len(CLASSES), in_channels=1), mean=[0.5], std=[0.25])
    classifier.load_state_dict(torch.load(weights, map_location="cpu"))
    model = (FlipAverage(classifier, hflip=True, vflip=False) if tta else classifier).eval()

    def score(body: bytes, content_type: str | None) -> list[float]:
        _, x = prepare_frame(body, spec, content_type=content_type)
        with torch.inference_mode():
            return torch.softmax(model(torch.from_numpy(x).unsqueeze(0)), dim=1)[0].tolist()

    serve_predict(port, score, CLASSES)


@contextlib.contextmanager
def peer_server(label: str, args: list[str], frames: list[bytes]) -> Iterator[Contender]:
    """A peer server (this script with ``args``, answering ``POST /predict``) as a contender."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, *args[:1], str(port), *args[1:]], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(proc, port, "/ready")

        def req(c: int, i: int) -> bytes:
            return build_request("/predict", frames[(c * 7 + i) % len(frames)], {})

        def check(status: int, body: bytes) -> None:
            if status != 200:
                raise RuntimeError(f"{label} server: HTTP {status}: {body[:200]!r}")

        yield Contender(label, port, proc, req, check)
    finally:
        stop_process(proc)


def torch_server(weights: Path, arch: str, size: int, frames: list[bytes], *,
                 tta: bool) -> contextlib.AbstractContextManager[Contender]:
    """(c) as a contender for ``side_by_side``."""
    return peer_server("torch", ["--torch-server", "--weights", str(weights), "--arch", arch, "--size", str(size)]
                       + ([] if tta else ["--no-tta"]), frames)


# --------------------------------------------------------------------------------------------
# (d) the naive server: what an engineer writes in an afternoon (the peer the targets compare with)
# --------------------------------------------------------------------------------------------
def naive_server_main(port: int, version_dir: Path) -> None:
    """Plain FastAPI + onnxruntime with its default session options: the same preprocessing
    function and model file as ours, no log, no auth, no batching, no part logic."""
    import onnxruntime as ort

    from inspection.card import load_card
    from inspection.preprocess import prepare_frame

    card = load_card(version_dir)
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])

    def score(body: bytes, content_type: str | None) -> list[float]:
        _, x = prepare_frame(body, card.input, content_type=content_type)
        return session.run(["probabilities"], {"pixels": x[np.newaxis]})[0][0].tolist()

    serve_predict(port, score, card.classes)


def naive_server(version_dir: Path, frames: list[bytes]) -> contextlib.AbstractContextManager[Contender]:
    """(d) as a contender for ``side_by_side``."""
    return peer_server("naive", ["--naive-server", "--version-dir", str(version_dir)], frames)


# --------------------------------------------------------------------------------------------
def _fmt(name: str, s: dict[str, float]) -> str:
    return f"{name:<44} p50 {s['p50_ms']:8.2f} ms   p99 {s['p99_ms']:8.2f} ms   {s['fps']:8.1f} frames/s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arch", default="linecnn", help="training.models architecture (default: linecnn, the training default)"
    )
    parser.add_argument("--size", type=int, default=128, help="model input side in pixels (default 128)")
    parser.add_argument("--frame-side", type=int, default=300, help="camera frame side sent (default 300)")
    parser.add_argument("--frame-format", choices=("png", "jpeg"), default="png",
                        help="how the frames are encoded (default png; a 2048 px line camera usually sends jpeg)")
    parser.add_argument("--frames", type=int, default=64, help="distinct frames (default 64)")
    parser.add_argument("-n", type=int, default=1000, help="requests per contender and measurement (default 1000)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--repeat", type=int, default=3, help="turns of the many-client measurement per server (default 3)"
    )
    parser.add_argument("--settings", type=Path, help="YAML/JSON with extra serve settings merged into the bench's")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--skip-torch", action="store_true", help="skip (c), the torch-eager server")
    parser.add_argument("--no-tta", action="store_true",
                        help="export without the test-time mirror training's defaults fold in (--no-tta in training)")
    parser.add_argument("--no-maps", action="store_true",
                        help="export without the defect map output (as models before maps existed)")
    parser.add_argument("--monitoring", action="store_true",
                        help="also run ours with the line watch off (stations.*.monitoring.enabled false) and print "
                             "what the watch adds per frame (target <= 0.1 ms at p50)")
    parser.add_argument("--torch-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--naive-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--version-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_server:
        torch_server_main(args.torch_server, args.weights, args.arch, args.size, tta=not args.no_tta)
        return 0
    if args.naive_server:
        naive_server_main(args.naive_server, args.version_dir)
        return 0

    overrides: dict[str, Any] = {}
    if args.settings:
        from serving.settings import read_settings_file

        overrides = read_settings_file(args.settings)
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        models_dir = work / "models"
        frames = make_frames(args.frames, args.frame_side, fmt=args.frame_format)
        version_dir, weights = build_model(models_dir, arch=args.arch, size=args.size, frames=frames,
                                           tta=not args.no_tta, maps=not args.no_maps)
        graph = ("" if args.no_tta else " + test-time mirror") + ("" if args.no_maps else " + defect map")
        print(f"model {args.arch} input 1x{args.size}x{args.size}{graph}, frames {args.frame_side}x{args.frame_side} "
              f"{args.frame_format.upper()} "
              f"(~{sum(map(len, frames)) // len(frames) // 1024} KiB), cores {os.cpu_count()}, n={args.n}", flush=True)
        runtime = overrides.get("runtime")
        bare_frame, bare_batched = bare_runner(version_dir, frames, runtime=runtime)
        # The product default (FULL: each commit fsynced, survives power loss) and, unless the
        # settings given pin it, NORMAL (survives a process crash; commits without fsync).
        configs = [("log FULL (default)", {})]
        if "log_sqlite_synchronous" not in overrides:
            configs.append(("log NORMAL", {"log_sqlite_synchronous": "NORMAL"}))
        if args.monitoring:
            configs.append((MONITORING_OFF, {"stations": {STATION: {"monitoring": {"enabled": False}}}}))
        with contextlib.ExitStack() as stack:
            contenders = [stack.enter_context(our_server(work, models_dir, frames, label, {**overrides, **extra}))
                          for label, extra in configs]
            contenders.append(stack.enter_context(naive_server(version_dir, frames)))
            if not args.skip_torch:
                torch_peer = torch_server(weights, args.arch, args.size, frames, tta=not args.no_tta)
                contenders.append(stack.enter_context(torch_peer))
            for c in contenders:
                stack.enter_context(c.rss)
            res = side_by_side(bare_frame, bare_batched, contenders, n=args.n, clients=args.clients,
                               rounds=args.repeat)
        report(
            res,
            [label for label, _ in configs],
            clients=args.clients,
            n=args.n,
            rss={c.label: c.rss.peak / 2**20 for c in contenders},
        )
        if args.json:
            args.json.write_text(json.dumps(res, indent=2, default=str))
    return 0


def bare_runner(version_dir: Path, frames: list[bytes], *, runtime: dict[str, Any] | None = None,
                batch: int = 8) -> tuple[Callable[[int], None], Callable[[], float]]:
    """(a) as two calls: score frame ``i`` (decode + preprocess + run), and the best batched
    frames/s over batch sizes 4, 8 and 16 -- the code serving uses, same onnxruntime settings,
    without HTTP, queue or log."""
    from inspection.preprocess import prepare_frame
    from inspection.registry import ModelRegistry
    from serving.model import load_model
    from serving.settings import RuntimeSettings

    model = load_model(ModelRegistry(version_dir.parents[1]).get("bench", "v1"), RuntimeSettings(**(runtime or {})))
    spec = model.card.input

    def one(i: int) -> None:
        model.run(prepare_frame(frames[i % len(frames)], spec)[1][np.newaxis])

    def batched() -> float:
        best = 0.0
        for bs in (4, 8, 16):
            t0, done = time.perf_counter(), 0
            while done < 160:
                model.run(np.stack([prepare_frame(frames[(done + j) % len(frames)], spec)[1] for j in range(bs)]))
                done += bs
            best = max(best, done / (time.perf_counter() - t0))
        return best

    for i in range(20):  # warm caches
        one(i)
    return one, batched


def report(res: dict[str, Any], ours: list[str], *, clients: int, n: int, rss: dict[str, float]) -> None:
    one, many = res["one_client"], res["many_fps"]
    if MONITORING_OFF in one:
        on, off = one[ours[0]], one[MONITORING_OFF]
        added = on["p50_ms"] - off["p50_ms"]
        print(f"\nline watch (monitoring) on vs off, 1 client, same turns: p50 {on['p50_ms']:.3f} vs "
              f"{off['p50_ms']:.3f} ms = {added:+.3f} ms per frame (ratio {on['p50_ms'] / off['p50_ms']:.3f}x)   "
              f"target <= 0.1 ms   "
              f"{'OK' if added <= 0.1 else 'MISSED'};  {clients} clients: {many[ours[0]]:.1f} vs "
              f"{many[MONITORING_OFF]:.1f} frames/s ({many[ours[0]] / many[MONITORING_OFF]:.3f}x)")
    bare, naive = one["bare"], one["naive"]
    print(f"\n1 client: contenders took turns in blocks of 25 requests, {n} each (same machine load for all)")
    print(_fmt("(a) bare onnxruntime, 1 frame at a time", bare))
    print(_fmt("(d) naive FastAPI + onnxruntime, 1 client", naive))
    for label in ours:
        print(_fmt(f"(b) ours, {label}, 1 client", one[label]))
    if "torch" in one:
        print(_fmt("(c) torch-eager FastAPI server, 1 client", one["torch"]) + "   (information only)")
    print(f"\n{clients} clients (median of {len(res['bare_batched_runs'])} turns each):")
    print(f"{'(a) bare onnxruntime, best batched':<44} {'':>36}{res['bare_batched_fps']:8.1f} frames/s   "
          f"runs {[round(x) for x in res['bare_batched_runs']]}")
    for label in ["naive", *ours]:
        name = "(d) naive FastAPI + onnxruntime" if label == "naive" else f"(b) ours, {label}"
        runs = [round(x) for x in res["many_fps_runs"][label]]
        print(f"{name:<44} {'':>36}{many[label]:8.1f} frames/s   runs {runs}")
    print(
        "\nserver CPU per frame (1 client; load distorts it least): "
        f"bare {bare['cpu_ms_per_frame']:.2f} ms (in-process), naive {naive['cpu_ms_per_frame']:.2f} ms, "
        + ", ".join(f"{label} {one[label]['cpu_ms_per_frame']:.2f} ms" for label in ours)
    )
    print(f"resident memory: naive {rss['naive']:.0f} MB" + "".join(f", {k} {v:.0f} MB" for k, v in rss.items()
                                                                   if k in ours))
    for label in ours:
        b = one[label]
        print(f"-- {label}")
        ratio = b["p50_ms"] / naive["p50_ms"]
        print(f"   p50 ours / naive (1 client):       {ratio:.2f}x   target <= 1.25x   "
              f"{'OK' if ratio <= 1.25 else 'MISSED'}   (+{b['p50_ms'] - naive['p50_ms']:.2f} ms per frame; "
              f"vs bare {b['p50_ms'] / bare['p50_ms']:.2f}x)")
        tail = b["p99_ms"] / b["p50_ms"]
        print(f"   p99 / p50 (1 client):              {tail:.2f}x   target <= 2x      "
              f"{'OK' if tail <= 2 else 'MISSED'}")
        share = many[label] / many["naive"]
        print(f"   {clients} clients fps ours / naive:        {share:.2f}    target >= 1.0     "
              f"{'OK' if share >= 1.0 else 'MISSED'}")
        bb = many[label] / res["bare_batched_fps"]
        print(f"   {clients} clients fps ours / bare batched: {bb:.2f}    target >= 0.8 for resnet18 at 224 px   "
              f"{'OK' if bb >= 0.8 else 'below'}")
        print(f"   resident memory:                   {rss[label]:.0f} MB   target <= 400 MB   "
              f"{'OK' if rss[label] <= 400 else 'MISSED'}")


if __name__ == "__main__":
    raise SystemExit(main())
