"""`inspection train`: runs the training pipeline (``python -m training``) as its own process.

Training needs torch, torchvision and albumentations (the ``train`` extra); the core and the
serving path must not import them, so this command hands its arguments to the training
program instead of importing it. On a line PC without the extra it says what to install.
Every flag is the training program's: ``inspection train --help`` lists them.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys

from inspection.errors import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `train` subcommand; its flags are parsed by the training program."""
    p = sub.add_parser("train", add_help=False, prefix_chars="\x00",
                       help="train a defect classifier and export a verified model version (needs the train extra)")
    p.set_defaults(func=_train, passthrough=True)


def run_training(argv: list[str]) -> int:
    """Run ``python -m training ARGV`` in this interpreter; returns its exit code.

    Raises:
        ConfigError: the training extra is not installed here.
    """
    missing = [m for m in ("torch", "torchvision", "albumentations", "training") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"`inspection train` needs the training extra ({', '.join(missing)} not installed): "
                          "pip install 'inspection[train]'")
    return subprocess.call([sys.executable, "-m", "training", *argv])


def _train(args: argparse.Namespace) -> int:
    return run_training(list(args.extra))
