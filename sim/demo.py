"""`inspection demo`: the whole line, end to end, on the embedded defaults.

generate a sample dataset -> train, calibrate, export (escape/overkill report) -> promote to
the demo station -> start the reject API as its own process (SQLite inspection log) -> a
simulated line sends the held-out frames as parts while a simulated PLC acknowledges every
part result over Modbus TCP -> summary against ground truth (escapes, overkills, latency
percentiles) -> verify the inspection log's hash chain.

Each step is one library call (training in this process, the server as its own process, as
on a line); this module only sequences them and prints what a new user should see.
"""

# The demo composes dataset, training and serving, so it lives above all three (in `sim`) and is
# contributed to the `inspection` CLI through the `inspection.commands` entry-point group. It
# imports the `train` and `serve` command modules: where either extra is missing this module
# cannot be imported either, and `inspection` does not offer `demo`.

from __future__ import annotations

import argparse
import csv
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

import serving.cli  # noqa: F401 - only where the serve extra is installed (above)
from inspection.errors import ConfigError, InspectionError
from serving.settings import hash_key
from serving.workers import stop_process
from training.cli import resolve_config

STATION = "line1"
CAMERAS = ["top"]

#: Everything the demo writes into --out (the SQLite log's side files included). A folder that
#: holds ``serve.yaml`` and nothing else but these is an earlier demo's output and may be replaced.
_OUT_NAMES = frozenset({"serve.yaml", "server.log", "log.db", "log.db-wal", "log.db-shm", "log.db-journal",
                        "frames"})


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `demo` subcommand to the ``inspection`` CLI (entry point ``inspection.commands: demo``)."""
    p = sub.add_parser("demo", help="run the whole line end to end on a generated dataset (~5 minutes)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="where the demo's log, settings and frames go")
    p.add_argument("--datasets-dir", type=Path, default=Path("datasets"))
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--seed", type=int, default=7, help="dataset seed")
    p.add_argument("--epochs", type=int, default=None, help="override the demo config's epochs")
    p.add_argument("--parts", type=int, default=0, help="parts to send (default: every held-out test frame)")
    p.set_defaults(func=_run)


def _step(n: int, text: str) -> None:
    print(f"\n=== {n}. {text}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise InspectionError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise InspectionError(f"the server at {url} was not ready within {timeout_s:.0f} s")


def _clear_out(given: Path) -> Path:
    """Make ``given`` an empty folder for this run and return it resolved; only a missing folder,
    an empty one or an earlier demo's output (see ``_OUT_NAMES``) is accepted.

    Raises:
        ConfigError: ``given`` is a file, the current folder or one above it, or a folder holding
            anything the demo did not write.
    """
    out = given.resolve()
    cwd = Path.cwd().resolve()
    # Path("") is the current folder: clearing it, or a folder above it, would delete the user's work.
    if out == cwd or out in cwd.parents:
        raise ConfigError(f"--out {str(given)!r} is the current folder or one above it ({out}); "
                          "give a folder of its own, e.g. demo-output")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {given} is a file; give a folder (missing, empty or an earlier demo's output)")
    if out.is_dir():
        names = {p.name for p in out.iterdir()}
        if names and ("serve.yaml" not in names or not names <= _OUT_NAMES):
            other = sorted(names - _OUT_NAMES) or ["no serve.yaml"]
            raise ConfigError(f"--out {given} holds files the demo did not write ({', '.join(other[:5])}); "
                              "give a missing or empty folder, or an earlier demo's output")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"--out {given} cannot be created: {exc.strerror}") from None
    return out


def _run(args: argparse.Namespace) -> int:
    from inspection.dataset.synthetic import generate_dataset
    from inspection.registry import ModelRegistry

    started = time.monotonic()
    # Every argument is checked before --out is cleared: a typo must not cost an earlier demo's log.
    from training.config import load_config

    data_dir = args.datasets_dir / "demo"
    overrides = {"data": data_dir, "name": "demo", "models_dir": args.models_dir, "epochs": args.epochs}
    cfg = load_config(resolve_config(Path("demo")), overrides)
    if args.parts < 0:
        raise ConfigError(f"--parts {args.parts} is not allowed: give a count >= 1, or 0 for every held-out frame")
    if not 0 <= args.seed < 2**32:
        raise ConfigError(f"--seed {args.seed} is out of range 0..{2**32 - 1}")
    out = _clear_out(args.out)

    _step(1, "generate a sample CCD dataset (battery electrode coating, good + 5 defect types)")
    ds = generate_dataset(data_dir, seed=args.seed, overwrite=True)
    counts = ", ".join(f"{k} {v}" for k, v in ds.counts().items())
    print(f"{data_dir}: {len(ds.samples)} images ({counts}); fingerprint {ds.fingerprint[:16]}")

    _step(2, "train, calibrate the reject threshold, export ONNX with parity and golden checks")
    from training.train import main as train_model

    trained = train_model(cfg)
    print(trained.summary)
    print(f"report: {trained.path / 'report.html'}", flush=True)
    version_dir, card = trained.path, trained.card

    _step(3, f"promote {card.model_id} to station {STATION}")
    registry = ModelRegistry(args.models_dir)
    registry.promote(card.name, card.version, station=STATION, actor="demo", reason="demo run")
    print(f"active on {STATION}: {registry.active(STATION).model_id}")  # type: ignore[union-attr]

    _step(4, "start the reject API (FastAPI + onnxruntime, SQLite inspection log)")
    keys = {role: secrets.token_urlsafe(24) for role in ("line", "auditor", "engineer", "admin")}
    port, modbus_port = _free_port(), _free_port()
    log_url = f"sqlite:///{out / 'log.db'}"
    settings = {
        "models_dir": str(args.models_dir.resolve()),
        "log_url": log_url,
        "frames_dir": str(out / "frames"),
        "frame_sample_rate": 0.1,
        "stations": {STATION: {"cameras": CAMERAS, "part_deadline_ms": 1000,
                               "line": {"modbus": {"enabled": True, "host": "127.0.0.1", "port": modbus_port}}}},
        "api_keys": [{"name": f"demo-{r}", "role": r, "sha256": hash_key(k)} for r, k in keys.items()],
        "host": "127.0.0.1",
        "port": port,
    }
    settings_path = out / "serve.yaml"
    settings_path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    url = f"http://127.0.0.1:{port}"
    server_log = open(out / "server.log", "wb")  # noqa: SIM115 - closed in the finally below, after the server
    proc = subprocess.Popen([sys.executable, "-m", "inspection", "serve", "--settings", str(settings_path)],
                            stdout=server_log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_ready(url, proc)
        print(f"serving {url}  (settings {settings_path}; audit page {url}/audit with the auditor key "
              f"{keys['auditor']})")

        _step(5, f"a simulated line sends the held-out test frames as parts; a simulated PLC "
                 f"acknowledges each result over Modbus TCP (127.0.0.1:{modbus_port})")
        from sim.line import LinePart, run_line
        from sim.plc import SimulatedPlc

        parts = []
        with open(version_dir / "split.csv", newline="", encoding="utf-8") as fh:
            for i, row in enumerate(r for r in csv.DictReader(fh) if r["split"] == "test"):
                parts.append(LinePart(f"DEMO-{i:05d}", data_dir / row["path"], row["label"]))
        if args.parts:
            parts = parts[: args.parts]
        plc = SimulatedPlc("127.0.0.1", modbus_port, seed=args.seed)
        plc.start()
        try:
            # A conveyor brings 50 parts/s; the simulated PLC scans every 5 ms and takes a few
            # scans per handshake. Unpaced, the server now outruns it: results past the Modbus
            # buffer (8) are then fail-safe rejected by the PLC ("overflow"), as designed.
            report = run_line(url, parts, station=STATION, cameras=CAMERAS, api_key=keys["line"],
                              good_class=card.good_class, concurrency=4, rate_hz=50.0)
            deadline = time.monotonic() + 10.0
            while plc.acked < len(parts) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            plc.stop()
        seqs = [seq for seq, _, _ in plc.results]
        in_order = seqs == sorted(seqs)
        ng = sum(1 for _, _, verdict in plc.results if verdict == "NG")

        _step(6, "line summary against ground truth")
        print(report.summary())
        # Where the defect maps pointed, against where the generator drew each defect.
        from inspection.dataset.synthetic import defect_footprint
        from inspection.preprocess import read_image
        from sim.line import located

        by_id = {p.part_id: p.image for p in parts}
        hits, judged = located(report.outcomes, lambda o: defect_footprint(
            o.true_label, seed=args.seed, index=int(by_id[o.part_id].stem.lstrip("P")),
            size=read_image(by_id[o.part_id]).shape[0]), card.good_class)
        if judged:
            print(f"  defect maps: the reject's box covered the drawn defect in {hits} of {judged} "
                  f"rejected defective parts ({hits / judged:.0%})")
        print(f"  PLC (Modbus TCP): acknowledged {plc.acked} of {len(parts)} part results "
              f"({'in order' if in_order else 'OUT OF ORDER'}; {ng} NG = reject gate fired)")
    finally:
        stop_process(proc)
        server_log.close()

    _step(7, "verify the inspection log's hash chain")
    from inspection.log.query import RecordFilter, query_records
    from inspection.log.store import open_log

    log = open_log(log_url, frames_dir=out / "frames")
    try:
        verdict = log.verify()
        kinds = {}
        for kind in ("inspection", "part", "plc_ack"):
            n, cursor = 0, None
            while True:
                page = query_records(log, RecordFilter(kind=kind), cursor=cursor, limit=1000)
                n += len(page.records)
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            kinds[kind] = n
    finally:
        log.close()
    status = "verified" if verdict.ok else f"BROKEN at seq {verdict.first_bad_seq}: {verdict.detail}"
    print(f"{log_url}: {verdict.records} records ({kinds['inspection']} frame inspections, {kinds['part']} part "
          f"decisions, {kinds['plc_ack']} PLC acknowledgements), hash chain {status}")
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s. "
          f"Try: .venv/bin/inspection audit list --log-url {log_url}")
    return 0 if verdict.ok else 1
