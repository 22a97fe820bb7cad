"""`inspection train` (also `python -m training`) — train, calibrate, export and verify a model version.

The training package contributes this command to the ``inspection`` CLI through the
``inspection.commands`` entry-point group (``register``). Where the ``train`` extra is missing
this module cannot be imported, so ``inspection --help`` does not offer ``train``. torch is
imported only inside the handler: building the ``inspection`` parser stays torch-free. The handler
parses flags into overrides; ``training.config.load_config`` merges them over the YAML
defaults and ``training.train.main`` does the work, in this process.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inspection.cli import run_command
from inspection.cli.commands import require_extra
from inspection.errors import ConfigError
from training.config import CONFIG_DIR

require_extra("train", "torch", "torchvision", "albumentations", "onnx")

#: flag dest -> config key (flags left at None are "not given": the YAML value stands).
_OVERRIDES = (
    "data",
    "arch",
    "epochs",
    "batch_size",
    "lr",
    "image_size",
    "channels",
    "seed",
    "max_escape",
    "max_overkill",
    "name",
    "models_dir",
    "resume",
    "val_fraction",
    "test_fraction",
    "patience",
    "threads",
    "nproc",
    "pretrained_path",
    "geometry",
    "tiles",
    "roi",
    "budget_minutes",
    "device",
    "precision",
    "overkill_limit",
    "tta",
    "mode",
    "anomaly_method",
)

_DESCRIPTION = (
    "Train on DATASET (standard layout), calibrate the reject threshold on validation, evaluate on "
    "test, export ONNX with parity/golden checks and write models/<name>/<version>/."
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `train` subcommand to the ``inspection`` CLI (entry point ``inspection.commands: train``)."""
    p = sub.add_parser(
        "train", help="train a defect classifier and export a verified model version", description=_DESCRIPTION
    )
    _add_arguments(p)
    # `inspection train ... -v` as well as `inspection -v train ...`: SUPPRESS leaves the main
    # parser's value alone when the flag is not given here.
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    p.set_defaults(func=_train)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m training`` (the same flags as `inspection train`)."""
    p = argparse.ArgumentParser(prog="python -m training", description=_DESCRIPTION)
    _add_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", type=Path, required=False, help="dataset folder (standard layout); required unless --resume"
    )
    p.add_argument("--arch", help="architecture (see --list-archs); default from the config")
    p.add_argument(
        "--config",
        type=Path,
        help="YAML config with defaults (flags still win): a file, or a bundled name "
        f"({', '.join(sorted(c.stem for c in CONFIG_DIR.glob('*.yaml')))})",
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument(
        "--image-size",
        type=int,
        help="the model input's shorter side in pixels, rounded to a multiple of 16 (default: by rule, from the "
        "frames' resolution and the compute budget; the other side follows the frames' aspect ratio)",
    )
    p.add_argument(
        "--channels",
        type=int,
        choices=[1, 3],
        help="the network's input channels, 1 (gray) or 3 (colour); default: by rule, colour where at least "
        "half of a sample of the training frames are colour (R=G=B frames count as gray)",
    )
    p.add_argument(
        "--geometry",
        choices=["letterbox", "stretch"],
        help="letterbox keeps each frame's aspect ratio (default); stretch squashes it to the input",
    )
    p.add_argument(
        "--tiles",
        metavar="ROWSxCOLS",
        help="cut the input into ROWSxCOLS overlapping tiles inside the graph; the frame scores as its "
        "most suspicious tile (for frames much larger than the defects)",
    )
    p.add_argument(
        "--roi",
        type=_roi,
        metavar="X,Y,W,H",
        help="region of interest in camera pixels, cropped before everything (cameras that see more than the part)",
    )
    p.add_argument(
        "--budget-minutes",
        type=float,
        help="compute budget the automatic steps and input size fit into, in wall minutes on this machine (default 20)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto: CUDA with mixed precision when present")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        help="what the training steps compute in (default: bf16 where this CPU runs it faster, fp16 on CUDA)",
    )
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average the frame and its mirror image inside the exported graph (one more inference at serving; "
        "default: on where the dataset's orientation allows a mirror)",
    )
    p.add_argument(
        "--mode",
        choices=["classify", "anomaly"],
        help="classify (default): learn the dataset's classes; anomaly: learn from the good images alone and "
        "reject what does not look like them (defective images only validate and test)",
    )
    p.add_argument(
        "--anomaly-method",
        choices=["auto", "synthetic", "memory"],
        help="anomaly mode: synthetic (from scratch, synthetic anomalies), memory (a memory of good patches in "
        "pretrained ResNet features: needs --arch resnet18 and its weights); default auto: memory where the "
        "weights are here, else synthetic",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--test-fraction", type=float)
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the cores free now)")
    p.add_argument(
        "--nproc",
        type=int,
        help="data-parallel worker processes on this machine (DistributedDataParallel: gloo on CPU, NCCL with "
        "one GPU each; several machines: torchrun -m training, see docs/scale.md)",
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument(
        "--max-escape", type=float, help="calibrate for at most this escape rate on validation (default 0.01)"
    )
    target.add_argument("--max-overkill", type=float, help="calibrate for at most this overkill rate on validation")
    p.add_argument(
        "--overkill-limit",
        type=float,
        help="warn, with the escape-overkill trade-off table, when the target forces more overkill "
        "than this (default 0.2)",
    )
    p.add_argument(
        "--allow-unsupported-target",
        action="store_true",
        default=None,
        help="calibrate even when validation has too few parts for the target; the card says supported: false",
    )
    p.add_argument(
        "--int8", action="store_true", default=None, help="also write model.int8.onnx and report its accuracy change"
    )
    p.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_false",
        default=None,
        help="do not look for pretrained weights in the local torch cache",
    )
    p.add_argument("--pretrained-path", type=Path, help="pretrained torchvision weights file (never downloaded)")
    p.add_argument(
        "--name",
        help="model name: letters A-Z a-z, digits and _ . - (default: the dataset's name in those characters)",
    )
    p.add_argument("--models-dir", type=Path, help="registry root (default: models)")
    p.add_argument(
        "--resume",
        type=Path,
        help="checkpoint.pt (or its folder) of an interrupted run; it runs with the checkpoint's settings (flags "
        "other than --threads, --nproc, --int8, --no-progress that differ from them are refused)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bars")
    p.add_argument(
        "--result-json",
        type=Path,
        help="also write {path, name, version} of the new version to this file (for scripts)",
    )
    p.add_argument("--list-archs", action="store_true", help="list the registered architectures and exit")


def _roi(value: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--roi {value!r}: give four integers X,Y,WIDTH,HEIGHT, e.g. 0,40,640,400"
        ) from None
    return x, y, w, h


def _check_result_json(path: Path) -> None:
    """Raises ConfigError where ``path`` cannot be written: found after training, the model
    version would be written and the script that asked for the file told it failed."""
    if path.is_dir() or not path.name:
        raise ConfigError(f"--result-json {str(path)!r} is a folder; give a file name, e.g. result.json")
    if not path.parent.is_dir():
        raise ConfigError(f"--result-json {path}: folder {path.parent} does not exist; create it first")


def resolve_config(value: Path | None) -> Path | None:
    """A config path, or the name of a bundled config (``demo`` -> training/configs/demo.yaml).

    Raises:
        ConfigError: neither an existing file nor a bundled config name.
    """
    if value is None or value.is_file():
        return value
    bundled = CONFIG_DIR / f"{value}.yaml"
    if value.suffix == "" and bundled.is_file():
        return bundled
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"--config {value}: no such file, and not a bundled config; bundled: {names}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m training``; returns the exit code (2 for bad input, with `error: ...`)."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _train(args), verbose=args.verbose)


def _train(args: argparse.Namespace) -> int:
    if args.list_archs:
        from training.models import list_models, model_info

        for name in list_models():
            print(f"{name:22s} {model_info(name).description}")
        return 0
    from training.config import load_config
    from training.train import run as train_model

    overrides: dict[str, Any] = {key: getattr(args, key) for key in _OVERRIDES}
    overrides.update(
        allow_unsupported_target=args.allow_unsupported_target,
        int8=args.int8,
        pretrained=args.pretrained,
        progress=args.progress,
    )
    cfg = load_config(resolve_config(args.config), overrides)
    if args.result_json is not None:
        _check_result_json(args.result_json)
    result = train_model(cfg)
    if result is None:
        return 0  # a rank other than 0 under torchrun: rank 0 prints the result
    print(result.summary)
    print(f"report: {result.path / 'report.html'}")
    sys.stdout.flush()
    if args.result_json is not None:
        args.result_json.write_text(
            json.dumps({"path": str(result.path), "name": result.card.name, "version": result.card.version}),
            encoding="utf-8",
        )
    return 0
