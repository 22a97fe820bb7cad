"""`inspection models compare` and the promotion gate's flags (used by ``cli.models``).

Kept apart from ``cli.models`` so the registry actions stay small: ``add_compare`` is one of
its ``_ACTIONS``, ``add_gate_arguments`` extends ``promote``/``rollback``, and ``promote`` /
``rollback`` are their handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from inspection.registry import ModelRegistry, Registry, parse_model_id


def add_compare(actions: Any) -> None:
    p = actions.add_parser(
        "compare", help="score two versions on the same held-out test set: escape, overkill, per-class recall",
        description="Runs both ONNX models (onnxruntime) on the test split of DATASET, each at its own operating "
                    "point, and reports escape rate, overkill rate and per-class recall with 95% intervals, and the "
                    "differences B - A with 95% intervals for paired proportions.")
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="registry root (default: models)")
    p.add_argument("a", metavar="A", help="NAME/VERSION (reference, e.g. the active model)")
    p.add_argument("b", metavar="B", help="NAME/VERSION (candidate)")
    p.add_argument("--data", type=Path, required=True, metavar="DATASET", help="dataset folder (standard layout)")
    p.add_argument("--split", choices=("test", "all"), default="test", help="images to score (default: the test split)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=compare)


def add_gate_arguments(p: argparse.ArgumentParser, *, promote: bool) -> None:
    """The gate's flags on ``promote`` (and ``--log-url`` on ``rollback``)."""
    if promote:
        p.add_argument("--data", type=Path, default=None, metavar="DATASET",
                       help="comparison set: the candidate may not have a higher escape rate than the active model "
                            "on its test split (without it: the cards' own test figures)")
        p.add_argument("--split", choices=("test", "all"), default="test")
        p.add_argument("--force", action="store_true", help="promote despite the gate (needs --reason, recorded)")
    p.add_argument("--log-url", default=None, help="inspection log to record this in, e.g. sqlite:///var/log.db")
    add_registry_url(p, "promote and roll back in the plant's central registry (every line PC following it "
                        "swaps); versions are pulled into --models-dir and checked first")


def add_registry_url(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--registry-url", default=os.environ.get("INSPECTION_REGISTRY_URL"),
                   help=f"{what} (postgresql+psycopg://...; default: $INSPECTION_REGISTRY_URL)")


@contextmanager
def registry(args: argparse.Namespace) -> Iterator[Registry]:
    """The folder ``--models-dir``, or the central registry with that folder as its cache."""
    if not getattr(args, "registry_url", None):
        yield ModelRegistry(args.models_dir)
        return
    from inspection.central import CentralRegistry

    central = CentralRegistry(args.registry_url, ModelRegistry(args.models_dir))
    try:
        yield central
    finally:
        central.close()


@contextmanager
def _log(url: str | None) -> Iterator[Any]:
    if url is None:
        yield None
        return
    from inspection.log.store import open_log

    with open_log(url) as log:
        yield log


def compare(args: argparse.Namespace) -> int:
    from inspection.compare import compare_models, format_comparison

    reg = ModelRegistry(args.models_dir)
    a = reg.get(*parse_model_id(args.a), verify=True)
    b = reg.get(*parse_model_id(args.b), verify=True)
    report = compare_models(a, b, args.data, split=args.split)
    print(json.dumps(report.as_dict(), indent=2) if args.json else format_comparison(report))
    return 0


def promote(args: argparse.Namespace) -> int:
    from inspection.promotion import promote_gated

    name, version = parse_model_id(args.model)
    with registry(args) as reg, _log(args.log_url) as log:
        result = promote_gated(reg, name, version, station=args.station, data=args.data, split=args.split,
                               force=args.force, reason=args.reason, actor=args.actor, log=log)
    gate, event = result.gate, result.event
    if event["action"] == "already_active":
        print(f"{event['model']} is already active for station {args.station!r}; nothing changed")
        return 0
    if gate["status"] == "skipped":
        print(f"note: escape-rate gate skipped: {gate['why']}", file=sys.stderr)
    elif gate["status"] == "overridden":
        print(f"warning: gate overridden (--force, reason: {args.reason!r}): {gate['why']}", file=sys.stderr)
    else:
        print(f"gate passed: {gate['why']}")
    print(f"{event['model']} is now active for station {args.station!r} (previous: {event['previous'] or 'none'})")
    if result.record is not None:
        print(f"recorded in the inspection log as record {result.record.seq} ({result.record.entry.inspection_id})")
    return 0


def rollback(args: argparse.Namespace) -> int:
    from inspection.promotion import rollback_logged

    with registry(args) as reg, _log(args.log_url) as log:
        event, record = rollback_logged(reg, station=args.station, actor=args.actor, reason=args.reason, log=log)
    print(f"station {args.station!r} rolled back to {event['model']} (was {event['previous']})")
    if record is not None:
        print(f"recorded in the inspection log as record {record.seq} ({record.entry.inspection_id})")
    return 0
