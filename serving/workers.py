"""``inspection serve --workers N``: N serving processes on one line PC, one per group of stations.

Why processes split by station and not uvicorn's workers on one port: a part is decided from
the views of all its cameras, held in the memory of the process that got them; with uvicorn's
workers the kernel would hand the views of one part to different processes. Here process ``i``
answers the stations ``i, i+N, ...`` of the sorted station names on ``port + i``
(``serving.settings.worker_groups``: the documented sticky rule), and a frame sent to the wrong
process gets 421 naming the right one. All of them append to the one log (PostgreSQL: the chain
head is taken under a row lock, so the chain stays one chain); process 0 alone writes the signed
checkpoints and applies frame retention.

The supervisor starts the processes, forwards SIGINT/SIGTERM, and when one process ends it stops
the others and exits with that process's code (a supervisor such as systemd restarts the set).
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from typing import Any

from inspection.errors import ConfigError
from serving.settings import ServeSettings, worker_groups

log = logging.getLogger(__name__)


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 30.0) -> None:
    """Stop a serving process cleanly: SIGTERM (open parts are decided, the log closed), SIGKILL
    when it is not gone within ``timeout_s``; waits for it either way."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _child_argv(args: argparse.Namespace, index: int, workers: int) -> list[str]:
    argv = [sys.executable, "-m", "inspection", "serve", "--worker", f"{index}/{workers}"]
    if args.settings is not None:
        argv += ["--settings", str(args.settings)]
    if args.host:
        argv += ["--host", args.host]
    if args.port is not None:
        argv += ["--port", str(args.port)]
    if args.demo:
        argv.append("--demo")
    return argv


def run_workers(args: argparse.Namespace, settings: ServeSettings) -> int:
    """Run ``args.workers`` serving processes until one ends or a signal stops them; returns the exit code.

    Raises:
        ConfigError: a bad worker count, or the log is SQLite (one writer process per file).
    """
    workers = int(args.workers)
    groups = worker_groups(settings, workers)
    if settings.log_url.startswith("sqlite"):
        raise ConfigError(f"--workers {workers} needs a log several processes can append to at once: set log_url "
                          "to PostgreSQL (postgresql+psycopg://...); a SQLite log has one writer")
    host, port = args.host or settings.host, settings.port if args.port is None else args.port
    procs: list[subprocess.Popen[bytes]] = []
    for i, group in enumerate(groups):
        procs.append(subprocess.Popen(_child_argv(args, i, workers)))
        print(f"serving process {i} (pid {procs[-1].pid}) on {host}:{port + i}: stations {', '.join(group)}",
              flush=True)
    stopping: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        stopping.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            ended = [p for p in procs if p.poll() is not None]
            if ended:
                break
            time.sleep(0.2)
        first = ended[0]
        if not stopping:
            log.error("serving process %d (pid %d) ended with code %s: stopping the others",
                      procs.index(first), first.pid, first.returncode)
        for p in procs:
            stop_process(p)
        return 0 if stopping and all(p.returncode in (0, -signal.SIGTERM, -signal.SIGINT) for p in procs) \
            else (first.returncode or 1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
