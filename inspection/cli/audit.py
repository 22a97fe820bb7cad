"""`inspection audit` subcommands."""

from __future__ import annotations

import argparse


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the `audit` subcommand(s) to the CLI."""
