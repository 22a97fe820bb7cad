"""`inspection models` — the model registry: list, show, promote, rollback, compare, set-threshold, verify.

Each action is a small ``_add_<action>(sub)`` function listed in ``_ACTIONS``; a new action
(e.g. ``compare``, a promotion gate) adds one function to the tuple. Handlers are thin: they
call ``inspection.registry.ModelRegistry`` and print.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inspection.calibration import DEFAULT_OVERKILL_LIMIT, target_text, tradeoff_text
from inspection.card import InputSpec
from inspection.cli import compare as _gate
from inspection.cli.compare import add_compare, add_gate_arguments, add_registry_url
from inspection.errors import ModelIntegrityError
from inspection.golden import verify_version
from inspection.metrics import Rate
from inspection.recalibrate import set_threshold
from inspection.registry import DEFAULT_STATION, ModelRegistry, parse_model_id


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `models` subcommand(s) to the CLI."""
    p = sub.add_parser("models", help="list, inspect, promote and roll back model versions",
                       description="The model registry: models/<name>/<version>/ and the active version per station.")
    actions = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    for add in _ACTIONS:
        add(actions)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="registry root (default: models)")


def _add_list(actions: Any) -> None:
    p = actions.add_parser("list", help="every model version, and which is active where")
    _common(p)
    p.add_argument("--name", help="only versions of this model")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_registry_url(p, "list the plant's central registry instead of --models-dir")
    p.set_defaults(func=_list)


def _add_show(actions: Any) -> None:
    p = actions.add_parser("show", help="a version's card: classes, threshold, test figures, files")
    _common(p)
    p.add_argument("model", help="NAME/VERSION")
    p.add_argument("--verify", action="store_true", help="also check every file against its sha256")
    p.add_argument("--json", action="store_true", help="print the whole card as JSON")
    p.set_defaults(func=_show)


def _add_promote(actions: Any) -> None:
    p = actions.add_parser(
        "promote", help="make a version active for a station (refuses files that do not match the card)"
    )
    _common(p)
    p.add_argument("model", help="NAME/VERSION")
    p.add_argument("--station", default=DEFAULT_STATION, help=f"station or line (default: {DEFAULT_STATION})")
    p.add_argument("--reason", default="", help="why (kept in the promotion history)")
    p.add_argument("--actor", default="cli", help="who (kept in the promotion history)")
    add_gate_arguments(p, promote=True)
    p.set_defaults(func=_gate.promote)


def _add_rollback(actions: Any) -> None:
    p = actions.add_parser("rollback", help="re-activate the previous version of a station")
    _common(p)
    p.add_argument("--station", default=DEFAULT_STATION, help=f"station or line (default: {DEFAULT_STATION})")
    p.add_argument("--reason", default="")
    p.add_argument("--actor", default="cli")
    add_gate_arguments(p, promote=False)
    p.set_defaults(func=_gate.rollback)


def _add_set_threshold(actions: Any) -> None:
    p = actions.add_parser(
        "set-threshold", help="move a version's operating point without retraining (writes a new version)",
        description="Re-calibrate the reject threshold from the version's stored validation scores and write the "
                    "result as the model's next version (same ONNX file, golden frames re-scored). The source "
                    "version is not changed; promote the new one when it suits the line.")
    _common(p)
    p.add_argument("model", help="NAME/VERSION to re-calibrate")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--max-escape", type=float, help="highest escape rate (defects passed) on validation, e.g. 0.02"
    )
    target.add_argument(
        "--max-overkill", type=float, help="highest overkill rate (good rejected) on validation, e.g. 0.05"
    )
    p.add_argument(
        "--overkill-limit",
        type=float,
        default=DEFAULT_OVERKILL_LIMIT,
        help=f"warn when the escape target costs more overkill than this (default {DEFAULT_OVERKILL_LIMIT:g})",
    )
    p.set_defaults(func=_set_threshold)


def _add_verify(actions: Any) -> None:
    p = actions.add_parser("verify", help="check a version's files (sha256) and re-score its golden frames",
                           description="What promotion and the server check before trusting a version: every "
                                       "file against the card's sha256, then the golden frames re-scored with "
                                       "ONNX Runtime against the card's outputs. Exit 0 trusted, 1 not trusted, "
                                       "2 unknown version or bad input.")
    _common(p)
    p.add_argument("model", help="NAME/VERSION")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_verify)


def _add_push(actions: Any) -> None:
    p = actions.add_parser("push", help="store a version in the plant's central registry (PostgreSQL)",
                           description="Checks the version first (every file against the card's sha256, golden "
                                       "frames re-scored), then stores its card and files centrally. Pushing the "
                                       "same version again does nothing; a different one under a taken name is "
                                       "refused.")
    _common(p)
    p.add_argument("model", help="NAME/VERSION")
    p.add_argument("--actor", default="cli", help="who (kept with the version)")
    add_registry_url(p, "the central registry")
    p.set_defaults(func=_push)


def _add_pull(actions: Any) -> None:
    p = actions.add_parser("pull", help="copy a version from the central registry into --models-dir, checked",
                           description="Every file is checked against the sha256 stored with it and the card's, "
                                       "then the golden frames are re-scored; only then is the version placed in "
                                       "--models-dir.")
    _common(p)
    p.add_argument("model", help="NAME/VERSION")
    add_registry_url(p, "the central registry")
    p.set_defaults(func=_pull)


_ACTIONS: tuple[Callable[[Any], None], ...] = (_add_list, _add_show, _add_promote, _add_rollback, add_compare,
                                               _add_set_threshold, _add_verify, _add_push, _add_pull)


def _active_by_model(reg: ModelRegistry) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for station, entry in reg.read_state()["stations"].items():
        if entry.get("history"):
            out.setdefault(entry["history"][-1]["model"], []).append(station)
    return out


def _headline(card: Any) -> str:
    test = card.metrics.get("test", {})
    parts = [f"acc {test['accuracy']:.4f}" if isinstance(test.get("accuracy"), float) else "acc n/a"]
    op = test.get("operating_point")
    if op:
        esc, ovk = op["escape"], op["overkill"]
        if esc.get("n"):
            parts.append(f"escape {esc['rate']:.2%}")
        if ovk.get("n"):
            parts.append(f"overkill {ovk['rate']:.2%}")
    return ", ".join(parts)


def _list(args: argparse.Namespace) -> int:
    if args.registry_url:
        return _list_central(args)
    reg = ModelRegistry(args.models_dir)
    active = _active_by_model(reg)
    versions = reg.list_versions(args.name)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "model": v.model_id,
                        "created": v.card.created.isoformat(),
                        "arch": v.card.arch,
                        "classes": v.card.classes,
                        "active_for": active.get(v.model_id, []),
                    }
                    for v in versions
                ],
                indent=2,
            )
        )
        return 0
    if not versions:
        print(f"no model versions under {reg.root}")
        return 0
    rows = [["model", "created (UTC)", "arch", "test", "active for"]]
    rows += [[v.model_id, f"{v.card.created:%Y-%m-%d %H:%M}", v.card.arch, _headline(v.card),
              ", ".join(sorted(active.get(v.model_id, []))) or "-"] for v in versions]
    print(_table(rows))
    return 0


def _list_central(args: argparse.Namespace) -> int:
    central = _central(args)
    try:
        versions = central.list_versions(args.name)
        where: dict[str, list[str]] = {}
        for station, model in central.active_by_station().items():
            where.setdefault(model, []).append(station)
    finally:
        central.close()
    listed = []
    for v in versions:
        model = f"{v['name']}/{v['version']}"
        listed.append({**v, "model": model, "active_for": sorted(where.get(model, []))})
    if args.json:
        print(json.dumps([{k: v[k] for k in ("model", "created", "pushed_at", "pushed_by", "active_for")}
                          for v in listed], indent=2))
        return 0
    if not listed:
        print(f"no model versions in the central registry at {central.url}")
        return 0
    rows = [["model", "created (UTC)", "pushed (UTC)", "by", "active for"]]
    rows += [[v["model"], v["created"][:16].replace("T", " "), v["pushed_at"][:16].replace("T", " "), v["pushed_by"],
              ", ".join(v["active_for"]) or "-"] for v in listed]
    print(_table(rows))
    return 0


def _table(rows: list[list[str]]) -> str:
    """Rows as aligned columns, the first row the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _split_table(counts: dict[str, dict[str, int]], classes: list[str]) -> str:
    order = ("train", "val", "test")
    splits = [s for s in order if s in counts] + [s for s in counts if s not in order]
    rows = [["class", *splits]] + [[c, *(str(counts[s].get(c, 0)) for s in splits)] for c in classes]
    rows.append(["total", *(str(sum(counts[s].values())) for s in splits)])
    return "\n".join("          " + line for line in _table(rows).splitlines())


def _calibration_rule(calibration: dict[str, Any]) -> str:
    """How the threshold was placed: cards calibrated before the rule was recorded used the older,
    looser one (inspection.calibration's docstring), which `set-threshold` replaces."""
    rule = calibration.get("threshold_rule")
    if rule:
        return str(rule)
    return ("at most floor(r*n) of the n validation parts on the wrong side (the rule before 2026-12-06: "
            "a new part's chance of that miss may exceed r by up to 1/(n+1); `inspection models set-threshold` "
            "re-calibrates)")


def _input_text(spec: InputSpec) -> str:
    """How a frame becomes the graph's input, in one line."""
    text = f"{spec.channels}x{spec.height}x{spec.width} uint8, resize {spec.resize}, {spec.geometry}"
    if spec.roi is not None:
        x, y, w, h = spec.roi
        text += f", region of interest x={x} y={y} {w}x{h}"
    if spec.tiles is not None:
        t = spec.tiles
        text += f", {t.rows}x{t.cols} tiles of {t.tile_width}x{t.tile_height} (frame = most suspicious tile)"
    return text


def _show(args: argparse.Namespace) -> int:
    reg = ModelRegistry(args.models_dir)
    mv = reg.get(*parse_model_id(args.model), verify=args.verify)
    card = mv.card
    if args.json:
        print(card.model_dump_json(indent=2))
        return 0
    t = card.thresholds
    lines = [
        f"{card.model_id}  ({mv.path})",
        f"created   {card.created.isoformat()}   code {card.code_version}   arch {card.arch}",
        f"classes   {', '.join(card.classes)}  (good class: {card.good_class or 'none'})",
        f"input     {_input_text(card.input)}",
        f"threshold reject when P(defect) >= {t.reject:.6g}  target: {target_text(t.target)}  per-class: "
        + (", ".join(f"{c} >= {v:.6g}" for c, v in t.per_class.items()) or "-")
        + ("" if t.calibration.get("supported", True) else "  WARNING: target NOT supported by validation"),
        *([f"WARNING   {t.calibration['warning']}"] if t.calibration.get("warning") else []),
        *([f"calibrated {_calibration_rule(t.calibration)}"] if t.target else []),
        f"dataset   {card.dataset.name} (fingerprint {card.dataset.fingerprint[:12]}…), split:",
        *([_split_table(card.dataset.split_counts, card.classes)] if card.dataset.split_counts else []),
        (f"parity    max |torch - onnx| {card.parity.max_abs_diff:.2g} on {card.parity.n_images} test images "
         f"(tolerance {card.parity.tolerance:g}, {'passed' if card.parity.passed else 'FAILED'})"),
        f"test      {_headline(card)}",
        f"files     {', '.join(sorted(card.files))}" + ("  (sha256 verified)" if args.verify else ""),
        *(f"recipe    {c['setting']} = {c['value']}  ({c['reason']})" for c in card.training.get("recipe", [])),
        *([f"kept      {card.training['selection']['reason']}"] if card.training.get("selection") else []),
    ]
    print("\n".join(lines))
    return 0


def _verify(args: argparse.Namespace) -> int:
    mv = ModelRegistry(args.models_dir).get(*parse_model_id(args.model))
    try:
        result = verify_version(mv.card, mv.path)
    except ModelIntegrityError as exc:
        report: dict[str, Any] = {"model": mv.model_id, "trusted": False, "reason": str(exc)}
        print(json.dumps(report) if args.json else f"{mv.model_id}: NOT trusted: {exc}")
        return 1
    report = {"model": mv.model_id, "trusted": True, "files": sorted(mv.card.files), "golden_frames": result.frames,
              "golden_max_diff": result.max_diff, "tolerance": result.tolerance}
    print(json.dumps(report) if args.json else
          f"{mv.model_id}: trusted: {len(mv.card.files)} file(s) match their sha256; {result.frames} golden frame(s) "
          f"re-score within {result.tolerance:g} (max abs difference {result.max_diff:.3g})")
    return 0


def _set_threshold(args: argparse.Namespace) -> int:
    target = {"max_escape": args.max_escape} if args.max_escape is not None else {"max_overkill": args.max_overkill}
    mv = set_threshold(ModelRegistry(args.models_dir), args.model, target, overkill_limit=args.overkill_limit)
    t = mv.card.thresholds
    op = mv.card.metrics.get("test", {}).get("operating_point", {})
    lines = [
        f"{mv.model_id} written ({mv.path}), re-calibrated from {args.model}: reject when P(defect) >= {t.reject:.6g}"
    ]
    for split, esc, ovk in (("validation", t.calibration["val_escape"], t.calibration["val_overkill"]),
                            ("test", op.get("escape"), op.get("overkill"))):
        if esc and ovk:
            lines.append(f"{split:10s} escape {Rate(**esc)}  overkill {Rate(**ovk)}")
    lines.append(tradeoff_text(t.calibration["tradeoff"]))
    if t.calibration.get("warning"):
        lines.append(f"WARNING: {t.calibration['warning']}")
    lines.append(f"not active anywhere yet: inspection models promote {mv.model_id} --station STATION")
    print("\n".join(lines))
    return 0



def _central(args: argparse.Namespace) -> Any:
    from inspection.central import CentralRegistry
    from inspection.errors import ConfigError

    if not args.registry_url:
        raise ConfigError("no central registry given: pass --registry-url postgresql+psycopg://... "
                          "(or set INSPECTION_REGISTRY_URL)")
    return CentralRegistry(args.registry_url, ModelRegistry(args.models_dir))


def _push(args: argparse.Namespace) -> int:
    central = _central(args)
    try:
        mv = central.cache.get(*parse_model_id(args.model))
        stored = central.push(mv, actor=args.actor)
    finally:
        central.close()
    print(f"{mv.model_id} {'stored in' if stored else 'was already in'} the central registry at {central.url}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    central = _central(args)
    try:
        mv = central.get(*parse_model_id(args.model), verify=True)
    finally:
        central.close()
    print(f"{mv.model_id} -> {mv.path} (files match their sha256, golden frames re-scored)")
    return 0
