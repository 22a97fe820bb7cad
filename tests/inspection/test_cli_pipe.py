"""A closed output pipe (``inspection ... | head``) ends a command quietly: exit 141, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.tiny_model import make_model_version


def _into_closed_pipe(args: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read: the first write (or the final flush) fails with EPIPE
    try:
        return subprocess.run([sys.executable, "-m", "inspection", *args], stdout=write_end,
                              stderr=subprocess.PIPE, cwd=cwd, timeout=120, check=False)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [["--help"], ["models", "list", "--help"], ["models", "list"],
                                  ["models", "list", "--json"], ["models", "show", "tiny/v1"]])
def test_a_closed_pipe_gives_exit_141_and_no_traceback(tmp_path: Path, args: list[str]) -> None:
    make_model_version(tmp_path / "models", version="v1")
    result = _into_closed_pipe(args, tmp_path)
    assert b"Traceback" not in result.stderr and b"BrokenPipeError" not in result.stderr, result.stderr.decode()
    # argparse's --help exits 0 before anything notices the pipe; a command's output ends with 141
    assert result.returncode == (0 if "--help" in args else 141), result.stderr.decode()
