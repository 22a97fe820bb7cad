"""`inspection serve` as a real process for tests: a free port, start, wait until ready."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(settings: Path, port: int, *, env: Mapping[str, str] | None = None,
                 capture: bool = False, cwd: Path | None = None) -> subprocess.Popen[str]:
    """``inspection serve --settings settings --port port`` (output captured, or discarded), run in
    ``cwd`` (default: the repository)."""
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "inspection", "serve", "--settings", str(settings), "--port", str(port)],
        cwd=REPO if cwd is None else cwd,
        env=None if env is None else dict(env),
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )


def start_logged(settings: Path, port: int, log_file: Path, timeout_s: float = 60.0) -> subprocess.Popen[bytes]:
    """``inspection serve`` with its output appended to ``log_file`` (kept across restarts), once
    ``/readyz`` answers 200; fails with the log's tail if it exits or never gets ready."""
    with log_file.open("ab") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "inspection", "serve", "--settings", str(settings), "--port", str(port)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the server did not become ready (exit code {proc.returncode}): "
                                 f"{log_file.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def stop_server(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM (a clean stop), SIGKILL if it is not gone within 30 s."""
    from serving.workers import stop_process

    stop_process(proc)


def wait_ready(proc: subprocess.Popen[str], base: str, timeout_s: float = 60.0) -> None:
    """Until ``/readyz`` answers 200; fails (with the server's output) if it exits or never does."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the server did not become ready (exit code {proc.returncode}): {out}")
        time.sleep(0.1)


@contextlib.contextmanager
def uvicorn_in_thread(app: Any, timeout_s: float = 30.0) -> Iterator[str]:
    """The real app under uvicorn on a free port, in a thread of this process; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def until(predicate: Callable[[], Any], what: str, timeout_s: float = 10.0, step_s: float = 0.01) -> None:
    """Wait until ``predicate()`` is true; AssertionError naming ``what`` after ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step_s)
