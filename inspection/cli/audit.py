"""`inspection audit` subcommands: list, show, export, verify and prune the inspection log."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from inspection.errors import ConfigError, ValidationError


def _time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO-8601 time (e.g. 2026-05-04T08:00:00Z)") from None


#: The most days --max-age-days takes: a century, far past any log's age, well below where
#: ``timedelta`` overflows.
MAX_AGE_DAYS = 36500


def _age_days(value: str) -> float:
    # float() also takes "nan" and "inf", which no comparison with a frame's age makes sense of.
    try:
        days = float(value)
    except ValueError:
        days = float("nan")
    if not 0 <= days <= MAX_AGE_DAYS:
        raise argparse.ArgumentTypeError(f"{value!r} is not allowed; give a number of days from 0 to {MAX_AGE_DAYS}")
    return days


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-url", default=None,
                   help="sqlite:///path/log.db or postgresql+psycopg://user@host/db (default: $INSPECTION_LOG_URL)")
    p.add_argument(
        "--frames-dir", type=Path, default=None, help="where the log keeps frames (default: <log>.frames for SQLite)"
    )
    p.add_argument("--schema", default=None, help="PostgreSQL schema holding the log")


def _filters(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters")
    g.add_argument("--from", dest="time_from", type=_time, help="records at or after this UTC time")
    g.add_argument("--to", dest="time_to", type=_time, help="records before this UTC time")
    for name in (
        "station",
        "camera",
        "part-id",
        "decision",
        "defect-class",
        "model-name",
        "model-version",
        "kind",
        "ref",
    ):
        g.add_argument(f"--{name}", dest=name.replace("-", "_"),
                       help="NAME/VERSION, or the version alone" if name == "model-version" else None)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `audit` subcommand(s) to the CLI."""
    audit = sub.add_parser("audit", help="inspect, export and verify the inspection log")
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    p = asub.add_parser("list", help="records matching filters, newest first")
    _common(p)
    _filters(p)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor", type=int, default=None, help="continue after this seq (printed as next cursor)")
    p.add_argument("--order", choices=("asc", "desc"), default="desc")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_list)

    p = asub.add_parser("show", help="one record, its dispositions and chain status")
    _common(p)
    p.add_argument("inspection_id")
    p.set_defaults(func=cmd_show)

    p = asub.add_parser("export", help="records as CSV or JSON Lines (streamed)")
    _common(p)
    _filters(p)
    p.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    p.add_argument("-o", "--output", type=Path, default=None, help="file to write (default: stdout)")
    p.set_defaults(func=cmd_export)

    p = asub.add_parser("verify", help="verify the chain, frames and signed checkpoints; exit 1 naming what was "
                                       "tampered with")
    _common(p)
    p.add_argument("--public-key", default=None,
                   help="the server's checkpoint public key (64 hex digits, or a file holding it): checks every "
                        "signed checkpoint, so a rewrite of the whole chain is found")
    p.add_argument("--checkpoints", action="append", default=[], metavar="FILE|mqtt://HOST[:PORT]/TOPIC",
                   help="checkpoints kept outside the database (the server's checkpoint file, or its retained "
                        "MQTT topic); repeatable; needs --public-key")
    p.add_argument("--no-frames", action="store_true", help="do not re-hash the stored frames")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_verify)

    p = asub.add_parser("prune", help="remove frames by age or total size (records are kept; a prune record is added)")
    _common(p)
    p.add_argument("--max-age-days", type=_age_days, default=None,
                   help=f"remove frames older than this many days (0..{MAX_AGE_DAYS})")
    p.add_argument("--max-bytes", type=int, default=None)
    p.set_defaults(func=cmd_prune)


def require_existing_log(url: str) -> None:
    """For commands that read a log: opening a SQLite url creates the file, so a typo would read an
    empty log as if it were the real one.

    Raises:
        ConfigError: ``url`` names a SQLite file that does not exist.
    """
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ConfigError(
                f"no inspection log at {path}; allowed: an existing SQLite log file or a postgresql+psycopg:// url"
            )


def _open(args: argparse.Namespace) -> Any:
    from inspection.log.store import open_log

    url = args.log_url or os.environ.get("INSPECTION_LOG_URL")
    if not url:
        raise ConfigError("no log given: pass --log-url sqlite:///path/log.db (or set INSPECTION_LOG_URL)")
    require_existing_log(url)
    # Opening the log creates a missing frames folder: `verify` would then report every frame
    # as deleted (a false tampering report), and the others would read no frames.
    if args.frames_dir is not None and not args.frames_dir.is_dir():
        raise ConfigError(f"--frames-dir {args.frames_dir} is not a folder; give the folder the log keeps its "
                          "frames in (default: <log>.frames beside a SQLite log)")
    log = open_log(url, frames_dir=args.frames_dir, schema=args.schema)
    if args.frames_dir is None:
        # The frames are where the server kept them (it records that in the log), not where a
        # command would guess.
        from inspection.log.query import recorded_frames_dir

        recorded = recorded_frames_dir(log)
        here = str(log.frames.root.resolve()) if log.frames is not None else None
        if recorded and recorded != here and Path(recorded).is_dir():
            log.close()
            log = open_log(url, frames_dir=Path(recorded), schema=args.schema)
    return log


def _filter(args: argparse.Namespace) -> Any:
    from inspection.log.query import RecordFilter

    names = ("time_from", "time_to", "station", "camera", "part_id", "decision", "defect_class", "model_name",
             "model_version", "kind", "ref")
    return RecordFilter(**{n: getattr(args, n) for n in names})


def cmd_list(args: argparse.Namespace) -> int:
    from inspection.log.export import record_dict
    from inspection.log.query import model_notation, query_records

    with _open(args) as log:
        page = query_records(log, _filter(args), cursor=args.cursor, limit=args.limit, order=args.order)
    if args.json:
        for rec in page.records:
            print(json.dumps(record_dict(rec), ensure_ascii=False))
    else:
        cols = (
            "seq",
            "time",
            "kind",
            "station",
            "camera",
            "part_id",
            "decision",
            "defect_class",
            "model",
            "inspection_id",
        )
        dicts = [record_dict(r) for r in page.records]
        for d in dicts:  # one notation everywhere: name/version
            d["model"] = model_notation(d.get("model_name"), d.get("model_version"))
        rows = [["-" if d[c] is None else str(d[c]) for c in cols] for d in dicts]
        widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(cols)]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
        for row in rows:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    if page.next_cursor is not None:
        print(f"next cursor: {page.next_cursor} (pass --cursor {page.next_cursor})", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from inspection.log.export import record_dict
    from inspection.log.query import RecordFilter, query_records

    with _open(args) as log:
        rec = log.get(args.inspection_id)
        related = query_records(log, RecordFilter(ref=args.inspection_id), limit=1000, order="asc").records
        out = record_dict(rec)
        out["frame_stored"] = log.has_frame(rec.entry.frame_sha256)
        out["related"] = [record_dict(r) for r in related]
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


def _check_output(path: Path) -> None:
    """Raises ConfigError where ``-o`` cannot be a file to write (checked before the log is read)."""
    if not path.name or path.is_dir():  # Path("") is the current folder
        raise ConfigError(f"-o {str(path)!r} is a folder; give a file to write, e.g. export.csv")
    if not path.parent.is_dir():
        raise ConfigError(f"-o {path}: folder {path.parent} does not exist; create it first")


def cmd_export(args: argparse.Namespace) -> int:
    from inspection.log.export import iter_export

    if args.output is not None:
        _check_output(args.output)
    with _open(args) as log:
        chunks = iter_export(log, args.format, _filter(args))
        if args.output is None:
            for chunk in chunks:
                sys.stdout.write(chunk)
            sys.stdout.flush()
            return 0
        # Temp + rename: an interrupted export never leaves a file that looks complete.
        tmp = args.output.with_name(args.output.name + ".part")
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                for chunk in chunks:
                    fh.write(chunk)
            os.replace(tmp, args.output)
        finally:
            tmp.unlink(missing_ok=True)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 when everything verifies, 1 with the report naming each problem otherwise."""
    check = _checkpoint_check(args.public_key, args.checkpoints)
    with _open(args) as log:
        report = log.verify(check_frames=not args.no_frames, checkpoint_check=check)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0 if report.ok else 1
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if report.ok:
        head = f"head seq {report.head_seq} hash {report.head_hash}"
        print(f"chain OK: {report.records} records, {head}; {report.frames_checked} frame(s) re-hashed, "
              f"{report.checkpoints_checked} signed checkpoint(s) checked")
        return 0
    print(f"log NOT verified: {len(report.problems)} problem(s); {report.records} record(s) chain correctly "
          "before the first break")
    for problem in report.problems:
        where = f"record {problem.seq}" if problem.seq is not None else "log"
        print(f"  {where}: {problem.kind}: {problem.detail}")
    return 1


def _checkpoint_check(public_key: str | None, sources: list[str]) -> Any:
    if public_key is None:
        if sources:
            raise ValidationError("--checkpoints needs --public-key (the key their signatures are checked with)")
        return None
    from inspection.log import checkpoints

    key = checkpoints.load_public_key(public_key)
    external: list[Any] = []
    notes: list[str] = []
    for source in sources:
        if source.startswith("mqtt://"):
            found = checkpoints.fetch_mqtt(source)
            if not found:
                notes.append(f"no checkpoint is retained at {source}")
            external += found
        else:
            cps, bad = checkpoints.read_file(Path(source))
            external += cps
            notes += bad
    return checkpoints.make_check(key, external, external_notes=notes)


def cmd_prune(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from inspection.log.retention import prune_frames

    if args.max_age_days is None and args.max_bytes is None:
        raise ValidationError("prune needs --max-age-days and/or --max-bytes")
    with _open(args) as log:
        result = prune_frames(
            log,
            max_age=timedelta(days=args.max_age_days) if args.max_age_days is not None else None,
            max_bytes=args.max_bytes,
            actor=os.environ.get("USER") or "cli",
        )
    print(f"removed {len(result.removed)} frame(s), {result.bytes_freed} bytes; {result.kept} kept")
    return 0
