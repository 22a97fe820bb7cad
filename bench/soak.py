"""Soak: 8 clients against a real server for 10 minutes while faults are injected on a schedule.

Faults, one after another, round robin every ``--fault-every-s``:

* ``kill``: the server is killed with SIGKILL and restarted (clients see connection errors
  meanwhile: those frames were never answered, so nothing is owed for them);
* ``disk``: the log's filesystem is filled to within ``--disk-headroom-kb`` of full for
  ``--fault-s`` seconds, then freed (needs root: the log then lives on its own small tmpfs;
  without root this fault is skipped and said so);
* ``promote``: model version v2 is promoted and, next time, v1 again (a live swap);
* ``plc``: the simulated PLC (``sim.plc``, polling the station's Modbus server and acknowledging
  every result) disconnects for ``--fault-s`` seconds, then reconnects; the server must keep
  answering frames, and the PLC must get results again afterwards (a kill also drops the link:
  the PLC reconnects when the server is back, as a real one would);
* ``postgres``: the PostgreSQL server the log is on is restarted (``pg_ctl restart -m fast``).
  With ``--private-pg`` the soak makes a PostgreSQL cluster of its own (``initdb`` in the work
  directory, a free port; needs the server binaries) and puts the log there; or give
  ``--pg-url`` and ``--pg-restart-cmd`` for one you run (never the shared test server).
  Without either the fault is skipped, and said so.

At the end it prints frames sent, acknowledged (200), fail-safe answers by reason, whether
every acknowledged answer has its record in the log, the chain and signed-checkpoint
verification (``inspection audit verify --public-key --checkpoints``), 5xx answers without a
fail-safe body (must be 0), and the server's RSS growth (first sample after warm-up vs the
largest later one, per server process). Run:

    .venv/bin/python bench/soak.py                 # 10 minutes, 8 clients
    .venv/bin/python bench/soak.py --minutes 1     # a short check that everything works

The model is the tests' tiny ONNX model (no training, no torch): the soak is about the server,
the log and the faults, not the network.
"""

from __future__ import annotations

import argparse
import collections
import errno
import itertools
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serving.workers import stop_process

STATION, CAMERA = "soak", "cam"
FAULTS = ("kill", "disk", "promote", "plc", "postgres")


class Plc:
    """The line's PLC: one ``SimulatedPlc`` at a time, reconnected whenever its link dropped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.current: Any = None
        self.acked_before = 0  # results acknowledged by earlier connections
        self.down = False
        self.connections = 0
        self.acked_at_last_reconnect = 0

    @property
    def acked(self) -> int:
        return self.acked_before + (self.current.acked if self.current is not None else 0)

    def ensure(self) -> None:
        """Reconnect unless the fault holds the link down (called every second)."""
        from sim.plc import SimulatedPlc

        if self.down or (self.current is not None and self.current.is_alive()):
            return
        if self.current is not None:
            self.acked_before += self.current.acked
        self.current = SimulatedPlc("127.0.0.1", self.port, poll_s=0.005)
        self.current.start()
        self.connections += 1

    def disconnect(self) -> None:
        self.down = True
        if self.current is not None:
            self.current.stop()

    def reconnect(self) -> None:
        self.down = False
        self.ensure()
        self.acked_at_last_reconnect = self.acked


class Server:
    """``inspection serve`` as a child process that can be killed and restarted."""

    def __init__(self, settings: Path, port: int, log_file: Path) -> None:
        self.settings, self.port, self.log_file = settings, port, log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.rss: list[list[float]] = []  # MiB samples per process

    def start(self) -> None:
        import httpx

        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "inspection", "serve", "--settings", str(self.settings),
                                          "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        self.rss.append([])
        end = time.monotonic() + 90
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.log_file}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit("server did not start within 90 s")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def sample_rss(self) -> None:
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.rss[-1].append(psutil.Process(self.proc.pid).memory_info().rss / 2**20)
        except psutil.Error:
            pass


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.acked: list[str] = []
        self.failsafe: collections.Counter[str] = collections.Counter()
        self.bare_5xx = 0
        self.other: collections.Counter[str] = collections.Counter()
        self.conn_errors = 0


def client_loop(n: int, port: int, key: str, frames: list[bytes], tally: Tally, stop: threading.Event) -> None:
    import httpx

    url = f"http://127.0.0.1:{port}/v1/inspections"
    headers = {"Authorization": f"Bearer {key}", "content-type": "image/png"}
    with httpx.Client(timeout=30) as http:
        for i in itertools.count():
            if stop.is_set():
                return
            params = {"station": STATION, "camera": CAMERA, "part_id": f"c{n}-{i}-{secrets.token_hex(3)}"}
            try:
                r = http.post(url, params=params, content=frames[(n + i) % len(frames)], headers=headers)
            except httpx.HTTPError:
                with tally.lock:
                    tally.conn_errors += 1
                time.sleep(0.2)
                continue
            with tally.lock:
                tally.sent += 1
                if r.status_code == 200:
                    tally.acked.append(r.json()["inspection_id"])
                    continue
                try:
                    body = r.json()
                except ValueError:
                    body = {}
                if isinstance(body, dict) and body.get("failsafe"):
                    tally.failsafe[str(body.get("error"))] += 1
                elif r.status_code >= 500 and not (isinstance(body, dict) and body.get("error")):
                    tally.bare_5xx += 1
                else:
                    tally.other[f"{r.status_code} {body.get('error') if isinstance(body, dict) else ''}"] += 1


def _mount_small_fs(path: Path, mb: int) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(path)],
                          capture_output=True, check=False).returncode == 0


def _fill(where: Path, headroom_kb: int) -> Path:
    st = os.statvfs(where)
    size = max(0, st.f_bavail * st.f_frsize - headroom_kb * 1024)
    ballast = where / "ballast"
    with ballast.open("wb", buffering=0) as fh:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            try:
                fh.write(chunk[: min(size, len(chunk))])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break  # the log took the rest meanwhile: the disk is as full as intended
            size -= len(chunk)
    return ballast


class PrivatePostgres:
    """A PostgreSQL cluster of the soak's own (initdb in ``folder``), so restarting it harms nobody."""

    def __init__(self, folder: Path, port: int) -> None:
        import glob

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found:
            raise SystemExit("--private-pg needs the PostgreSQL server binaries (apt-get install postgresql)")
        self.bin = Path(found[-1]).parent
        self.folder, self.port = folder, port
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    @staticmethod
    def _as_postgres(cmd: list[str]) -> list[str]:
        # PostgreSQL refuses to run as root: as root, run it as the postgres user.
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def _run(self, *cmd: str) -> None:
        done = subprocess.run(self._as_postgres(list(cmd)), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[:2])} failed: {done.stderr.strip()[-400:]}")

    def ctl(self, action: str) -> list[str]:
        return [str(self.bin / "pg_ctl"), "-D", str(self.folder), "-w", "-m", "fast", "-l",
                str(self.folder / "server.log"), "-o", f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1",
                action]

    def start(self) -> None:
        self.folder.mkdir(parents=True)
        if os.geteuid() == 0:
            import shutil

            shutil.chown(self.folder, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.folder), "-A", "trust", "-U", "postgres", "--no-sync")
        self._run(*self.ctl("start"))

    def restart_cmd(self) -> str:
        return shlex.join(self._as_postgres(self.ctl("restart")))

    def stop(self) -> None:
        subprocess.run(self._as_postgres(self.ctl("stop")), capture_output=True, check=False)


def setup(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    from inspection.log.checkpoints import generate_signing_key
    from inspection.registry import ModelRegistry
    from serving.settings import hash_key
    from tests.helpers.tiny_model import make_model_version

    models = work / "models"
    make_model_version(models, version="v1")
    make_model_version(models, version="v2", bias=0.2)
    ModelRegistry(models).promote("tiny", "v1", station=STATION)
    logfs = work / "logfs"
    small = _mount_small_fs(logfs, args.log_fs_mb)
    logfs.mkdir(exist_ok=True)
    public = generate_signing_key(work / "keys" / "cp.key")
    key = secrets.token_urlsafe(24)
    from tests.helpers.server import free_port

    modbus_port = free_port()
    log_url = args.pg_url or f"sqlite:///{logfs / 'log.db'}"
    data = {
        "models_dir": str(models), "log_url": log_url, "frames_dir": str(logfs / "frames"),
        "frame_sample_rate": 0.05, "log_sqlite_synchronous": "FULL", "log_min_free_bytes": 256 * 1024,
        "stations": {STATION: {"cameras": [CAMERA], "part_deadline_ms": 1000,
                               "line": {"modbus": {"enabled": True, "port": modbus_port}}}},
        "checkpoints": {"signing_key": str(work / "keys" / "cp.key"), "every_records": 500, "every_s": 10,
                        "file": str(work / "checkpoints.jsonl")},
        "api_keys": [{"name": "soak", "role": "line", "sha256": hash_key(key)},
                     {"name": "eng", "role": "engineer", "sha256": hash_key(key + "e")}],
    }
    settings = work / "serve.yaml"
    settings.write_text(yaml.safe_dump(data), encoding="utf-8")
    return {"settings": settings, "key": key, "public": public, "logfs": logfs, "small_fs": small,
            "log_url": log_url, "models": models, "modbus_port": modbus_port}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--fault-every-s", type=float, default=45.0)
    ap.add_argument("--fault-s", type=float, default=8.0, help="how long the disk stays nearly full")
    ap.add_argument("--disk-headroom-kb", type=int, default=64)
    ap.add_argument("--log-fs-mb", type=int, default=64, help="size of the log's own tmpfs (root only)")
    ap.add_argument("--pg-url", default=None, help="put the log on this PostgreSQL (with --pg-restart-cmd)")
    ap.add_argument("--pg-restart-cmd", default=None, help="shell command restarting that PostgreSQL server")
    ap.add_argument("--private-pg", action="store_true",
                    help="put the log on a PostgreSQL cluster of the soak's own and restart it as a fault")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--faults", default=",".join(FAULTS),
                    help=f"comma-separated faults to inject, from {','.join(FAULTS)}; 'none' for a plain "
                         "memory soak (how RSS grows without restarts)")
    args = ap.parse_args(argv)
    faults = [] if args.faults == "none" else args.faults.split(",")
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        ap.error(f"--faults {args.faults!r}: unknown {unknown}; allowed: {', '.join(FAULTS)} or none")

    from serving.settings import hash_key  # noqa: F401 -- fail early without the serve extra
    from tests.helpers.server import free_port

    work = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    private_pg = None
    if args.private_pg:
        if args.pg_url:
            ap.error("--private-pg and --pg-url: give one of them")
        os.chmod(work, 0o755)  # the postgres user must reach its data directory
        private_pg = PrivatePostgres(work / "pg", free_port())
        private_pg.start()
        args.pg_url, args.pg_restart_cmd = private_pg.url, private_pg.restart_cmd()
    try:
        return _soak(work, args, faults)
    finally:
        if private_pg is not None:
            private_pg.stop()


def _soak(work: Path, args: argparse.Namespace, faults: list[str]) -> int:
    from tests.helpers.server import free_port
    from tests.helpers.tiny_model import DARK, frame_png

    env = setup(work, args)
    frames = [frame_png(DARK if i % 5 == 0 else 230, size=64, seed=i) for i in range(50)]
    server = Server(env["settings"], free_port(), work / "server.log")
    server.start()
    plc = Plc(env["modbus_port"])
    plc.ensure()
    tally = Tally()
    stop = threading.Event()
    threads = [threading.Thread(target=client_loop, args=(n, server.port, env["key"], frames, tally, stop),
                                daemon=True) for n in range(args.clients)]
    for t in threads:
        t.start()
    done: collections.Counter[str] = collections.Counter()
    skipped: set[str] = set()
    end = time.monotonic() + args.minutes * 60
    next_fault = time.monotonic() + min(args.fault_every_s, args.minutes * 60 / 3) if faults else end
    promoted = "v1"
    for fault in itertools.cycle(faults or [""]):
        while time.monotonic() < min(next_fault, end):
            server.sample_rss()
            plc.ensure()
            time.sleep(1.0)
        if time.monotonic() >= end:
            break
        next_fault = time.monotonic() + args.fault_every_s
        print(f"[{time.strftime('%H:%M:%S')}] fault: {fault}", flush=True)
        if fault == "kill":
            server.kill()
            time.sleep(1.0)
            server.start()
        elif fault == "disk":
            if not env["small_fs"]:
                skipped.add("disk (needs root for a tmpfs of its own)")
                continue
            ballast = _fill(env["logfs"], args.disk_headroom_kb)
            time.sleep(args.fault_s)
            ballast.unlink()
        elif fault == "promote":
            from inspection.registry import ModelRegistry

            promoted = "v2" if promoted == "v1" else "v1"
            ModelRegistry(env["models"]).promote("tiny", promoted, station=STATION)
        elif fault == "plc":
            plc.disconnect()
            time.sleep(args.fault_s)
            plc.reconnect()
        elif fault == "postgres":
            if not (args.pg_url and args.pg_restart_cmd):
                skipped.add("postgres (give --private-pg, or --pg-url and --pg-restart-cmd for a server of its own)")
                continue
            subprocess.run(args.pg_restart_cmd, shell=True, check=False)  # the operator's own command
        done[fault] += 1
    stop.set()
    for t in threads:
        t.join(timeout=40)
    plc_after = plc.acked - plc.acked_at_last_reconnect if done["plc"] else None
    plc.disconnect()
    server.stop()
    return report(env, tally, server, done, skipped, work, plc, plc_after)


def report(env: dict[str, Any], tally: Tally, server: Server, done: collections.Counter[str], skipped: set[str],
           work: Path, plc: Plc, plc_after: int | None) -> int:
    from inspection.log.store import open_log

    log = open_log(env["log_url"], frames_dir=env["logfs"] / "frames")
    try:
        with log.read() as conn:
            ids = {r[0] for r in conn.exec_driver_sql("SELECT inspection_id FROM inspection_records")}
    finally:
        log.close()
    missing = [i for i in tally.acked if i not in ids]
    verify = subprocess.run([sys.executable, "-m", "inspection", "audit", "verify", "--log-url", env["log_url"],
                             "--frames-dir", str(env["logfs"] / "frames"), "--public-key", env["public"],
                             "--checkpoints", str(work / "checkpoints.jsonl"), "--json"],
                            capture_output=True, text=True, check=False)
    try:
        verdict = json.loads(verify.stdout)
    except ValueError:
        verdict = {"ok": False, "detail": verify.stderr.strip()[-300:]}
    growth = []
    for samples in server.rss:
        if len(samples) > 10:
            base = samples[min(len(samples) - 1, 10)]  # after ~10 s of warm-up
            growth.append((max(samples[10:]) - base) / base * 100)
    asgi = (work / "server.log").read_text(errors="replace").count("Exception in ASGI application")
    print()
    print(f"frames sent          {tally.sent}  (+{tally.conn_errors} connection errors while the server was down)")
    print(f"acknowledged (200)   {len(tally.acked)}")
    print(f"fail-safe by reason  {dict(tally.failsafe) or '-'}")
    print(f"other answers        {dict(tally.other) or '-'}")
    print(f"records found        {len(tally.acked) - len(missing)}/{len(tally.acked)} acknowledged answers "
          f"({len(missing)} missing)")
    verdict_word = "verify" if verdict.get("ok") else "DO NOT verify"
    print(f"chain + checkpoints  {verdict_word}: {verdict.get('records')} records, "
          f"{verdict.get('checkpoints_checked')} checkpoints, {verdict.get('frames_checked')} frames "
          f"{'' if verdict.get('ok') else verdict.get('detail')}")
    print(f"5xx without failsafe {tally.bare_5xx}   ('Exception in ASGI application' in the server log: {asgi})")
    print(f"max RSS growth       {max(growth, default=float('nan')):.1f}% (per server process, after warm-up)")
    for n, samples in enumerate(server.rss):
        if len(samples) > 10:  # one sample a second: the curve shows a leak (rising) from a fill (levelling off)
            marks = [f"{samples[i]:.0f}" for i in range(10, len(samples), 60)] + [f"{samples[-1]:.0f}"]
            print(f"  process {n + 1} RSS MiB at 10 s, then every minute: {' '.join(marks)}")
    print(f"PLC                  {plc.acked} results acknowledged over {plc.connections} connection(s); "
          f"after the last reconnect: {'-' if plc_after is None else plc_after}")
    print(f"faults injected      {dict(done)}; skipped: {sorted(skipped) or '-'}")
    plc_ok = plc.acked > 0 and (plc_after is None or plc_after > 0)
    ok = (not missing and verdict.get("ok") and tally.bare_5xx == 0 and asgi == 0 and max(growth, default=0) <= 10
          and plc_ok)
    print(f"targets              {'MET' if ok else 'NOT MET'} (every answer logged, 0 bare 5xx, verified, RSS <= 10%, "
          f"the PLC gets results after reconnecting)")
    if env["small_fs"]:
        subprocess.run(["umount", "-l", str(env["logfs"])], capture_output=True, check=False)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
