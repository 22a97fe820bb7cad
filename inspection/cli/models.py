"""`inspection models` subcommands."""

from __future__ import annotations

import argparse


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the `models` subcommand(s) to the CLI."""
