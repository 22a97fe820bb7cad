"""The ``inspection`` command line: thin entry points that parse and call library functions.

Each subcommand group lives in its own module with a ``register(subparsers)`` function. The
core's are ``dataset``, ``models`` and ``audit``; ``serve`` (serving), ``train`` (training)
and ``demo`` (sim) are contributed by their packages through the ``inspection.commands``
entry-point group (``cli.commands``), and only where those packages and their extras are
installed. Heavy dependencies are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from inspection.errors import InspectionError

from . import audit, dataset, models
from .commands import add_contributed

_CORE = (dataset, models, audit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inspection",
        description="AI visual inspection for line cameras: datasets, training, serving, inspection log.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _CORE:
        group.register(sub)
    add_contributed(sub)
    return parser


#: Exit code after the reader of our output went away (``inspection audit export | head``): the
#: code a process killed by SIGPIPE reports in a shell (128 + 13), without a traceback.
EXIT_CLOSED_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 2 bad input or domain error, 141 when
    the output pipe was closed)."""
    try:
        args = build_parser().parse_args(argv)
        # Per-request and per-migration INFO lines from libraries drown what the user should read.
        for noisy in ("httpx", "httpcore", "alembic"):
            logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
        code = run_command(lambda: args.func(args), verbose=args.verbose)
        sys.stdout.flush()  # here, not at interpreter exit, where a closed pipe prints a traceback
        return code
    except BrokenPipeError:  # --help, a parse error or the final flush into a closed pipe
        return closed_pipe()


def closed_pipe() -> int:
    """The reader of stdout went away: point stdout at /dev/null so that the interpreter's final
    flush does not fail again (Python's documented recipe), and exit quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout has no file descriptor (a test's capture): nothing to flush
        pass
    return EXIT_CLOSED_PIPE


def run_command(command: Callable[[], int | None], *, verbose: bool) -> int:
    """A command line program's frame around ``command()``: logging to stderr, then its exit
    code; a domain error prints ``error: ...`` and exits 2, Ctrl-C exits 130.

    Shared by ``inspection`` and the training program (``python -m training``).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(command() or 0)
    except InspectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return closed_pipe()
