"""`inspection demo` subcommands."""

from __future__ import annotations

import argparse


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the `demo` subcommand(s) to the CLI."""
