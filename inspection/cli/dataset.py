"""`inspection dataset` subcommands: generate, import, set-orientation, info, build, import-unlabelled."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from inspection.dataset.info import MIN_UNITS_PER_CLASS
from inspection.dataset.layout import ORIENTATIONS


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `dataset` subcommand(s) to the CLI."""
    parser = sub.add_parser("dataset", help="generate, import and inspect datasets (standard layout)")
    dsub = parser.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")

    gen = dsub.add_parser(
        "generate",
        help="generate the synthetic electrode-coating dataset (good + 5 defect types)",
        description="Deterministic grayscale line-camera frames of battery electrode coating.",
    )
    gen.add_argument("--out", type=Path, required=True, help="dataset folder to create, e.g. datasets/coating")
    gen.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical dataset (default 0)")
    gen.add_argument("--good", type=int, default=500, dest="n_good", help="good frames (default 500)")
    gen.add_argument(
        "--per-defect", type=int, default=100, dest="n_per_defect", help="frames per defect type (default 100)"
    )
    gen.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    gen.set_defaults(func=_generate)

    imp = dsub.add_parser(
        "import",
        help="convert a dataset found in the wild into the standard layout",
        description=(
            "Layouts: 'folders' (class = folder name, or the 'label' group of --class-from-dir-pattern), "
            "'prefix' (class = file name before the last _<digits>, e.g. rolled-in_scale_12.jpg), "
            "'csv' (a CSV of path,label; paths relative to the CSV). Image bytes are copied unchanged."
        ),
    )
    imp.add_argument("--layout", choices=("folders", "prefix", "csv"), required=True, help="how SRC stores labels")
    imp.add_argument("src", type=Path, metavar="SRC", help="source folder (folders, prefix) or CSV file (csv)")
    imp.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    imp.add_argument("--good", default=None, metavar="CLASS", help="the class meaning 'no defect' (none if omitted)")
    imp.add_argument("--name", default=None, help="dataset name (default: the --out folder name)")
    imp.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="only files whose path (relative to SRC) matches; repeatable (default: all images)",
    )
    imp.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip files whose path (relative to SRC) matches, e.g. '*.png' for masks; repeatable",
    )
    imp.add_argument(
        "--class-from-dir-pattern",
        default=None,
        metavar="REGEX",
        help="folders: regex searched in the file's relative path; its 'label' group is the class, "
        "e.g. 'MT_(?P<label>[^/]+)/'. Default: the top-level folder name",
    )
    imp.add_argument(
        "--group-from-pattern",
        default=None,
        metavar="REGEX",
        help="fill the labels.csv group column (part serial, lot, item: one split per group) from the "
        "'group' group of a regex searched in the file's relative path, e.g. '(?P<group>SN[0-9]+)_'",
    )
    imp.add_argument(
        "--classes",
        default=None,
        metavar="A,B,...",
        help="the allowed classes, in model output order (default: the labels found, sorted, good first)",
    )
    imp.add_argument(
        "--orientation",
        choices=ORIENTATIONS,
        default=None,
        help="which flips/rotations leave a part valid (training augments only with those): free = any "
        "flip or 90-degree turn (textures), flip = mirror images, hflip = left-right only, fixed = "
        "none. Default: not recorded (training then uses flips, no rotations)",
    )
    imp.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    imp.set_defaults(func=_import)

    ori = dsub.add_parser("set-orientation", help="record which flips/rotations leave a part valid (see import)")
    ori.add_argument("dataset", type=Path, metavar="DATASET", help="dataset folder (standard layout)")
    ori.add_argument("orientation", choices=ORIENTATIONS, help="free, flip, hflip or fixed")
    ori.set_defaults(func=_set_orientation)

    info = dsub.add_parser("info", help="class counts, image sizes, channels, duplicates and problems of a dataset")
    info.add_argument("dataset", type=Path, metavar="DATASET", help="dataset folder (standard layout)")
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    info.add_argument("--min-per-class", type=int, default=10, help="flag classes with fewer images (default 10)")
    info.add_argument("--min-units-per-class", type=int, default=MIN_UNITS_PER_CLASS,
                      help="flag classes whose images collapse into fewer independent units (views of one part, "
                           f"duplicates, groups) than this (default {MIN_UNITS_PER_CLASS})")
    info.set_defaults(func=_info)

    build = dsub.add_parser(
        "build",
        help="a new dataset version: a base dataset + the production labels from the inspection log",
        description="Copies the base dataset and every labelled frame (latest label wins) from the log's frame store; "
        "production samples get a seeded split; the manifest records the lineage (records and labels).",
    )
    build.add_argument(
        "--base", type=Path, required=True, metavar="DATASET", help="base dataset folder (standard layout)"
    )
    build.add_argument("--log-url", required=True, help="inspection log, e.g. sqlite:///var/log.db")
    build.add_argument(
        "--frames-dir", type=Path, default=None, help="the log's frame store (default: beside a SQLite log)"
    )
    build.add_argument("--out", type=Path, required=True, help="dataset folder to create, e.g. datasets/coating-v2")
    build.add_argument("--name", default=None, help="dataset name (default: the --out folder name)")
    build.add_argument("--seed", type=int, default=0, help="split seed for the production samples (default 0)")
    build.add_argument("--val-fraction", type=float, default=0.2)
    build.add_argument("--test-fraction", type=float, default=0.2)
    build.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    build.set_defaults(func=_build)

    unl = dsub.add_parser(
        "import-unlabelled",
        help="bring image files without labels into the inspection log, for the labelling page's queue",
    )
    unl.add_argument("src", type=Path, metavar="SRC", help="folder of images (searched recursively) or one image")
    unl.add_argument("--log-url", required=True, help="inspection log, e.g. sqlite:///var/log.db")
    unl.add_argument(
        "--frames-dir", type=Path, default=None, help="the log's frame store (default: beside a SQLite log)"
    )
    unl.add_argument("--station", default=None, help="station whose model shows its prediction on the page")
    unl.add_argument("--actor", default="cli", help="who imported them (recorded)")
    unl.set_defaults(func=_import_unlabelled)


def _generate(args: argparse.Namespace) -> int:
    from inspection.dataset.synthetic import generate_dataset

    ds = generate_dataset(
        args.out,
        seed=args.seed,
        n_good=args.n_good,
        n_per_defect=args.n_per_defect,
        size=args.size,
        overwrite=args.overwrite,
    )
    counts = ", ".join(f"{c} {n}" for c, n in ds.counts().items())
    print(f"wrote {len(ds.samples)} images to {ds.root} ({counts})")
    print(f"fingerprint {ds.fingerprint}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from inspection.dataset.importers import import_dataset

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    ds = import_dataset(
        args.src,
        args.out,
        layout=args.layout,
        good_class=args.good,
        name=args.name,
        include=args.include,
        exclude=args.exclude,
        class_pattern=args.class_from_dir_pattern,
        classes=classes,
        group_pattern=args.group_from_pattern,
        orientation=args.orientation,
        overwrite=args.overwrite,
    )
    counts = ", ".join(f"{c} {n}" for c, n in ds.counts().items())
    groups = len({s.group for s in ds.samples if s.group})
    print(f"imported {len(ds.samples)} images to {ds.root} ({counts})" + (f"; {groups} groups" if groups else ""))
    print(f"fingerprint {ds.fingerprint}")
    return 0


def _set_orientation(args: argparse.Namespace) -> int:
    from inspection.dataset.layout import set_orientation

    set_orientation(args.dataset, args.orientation)
    print(f"{args.dataset}: orientation {args.orientation}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from inspection.dataset.info import dataset_info, format_info

    report = dataset_info(args.dataset, min_per_class=args.min_per_class,
                          min_units_per_class=args.min_units_per_class)
    print(json.dumps(report, indent=2) if args.json else format_info(report))
    return 0


def _build(args: argparse.Namespace) -> int:
    from inspection.cli.audit import require_existing_log
    from inspection.dataset.build import build_dataset
    from inspection.log.store import open_log

    require_existing_log(args.log_url)  # else a typo builds a copy of the base from a new, empty log
    with open_log(args.log_url, frames_dir=args.frames_dir) as log:
        ds = build_dataset(
            args.base,
            log,
            args.out,
            log_url=args.log_url,
            name=args.name,
            seed=args.seed,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            overwrite=args.overwrite,
        )
    lineage = ds.manifest["lineage"]
    counts = ", ".join(f"{c} {n}" for c, n in ds.counts().items())
    print(f"wrote {len(ds.samples)} images to {ds.root} ({counts})")
    print(
        f"base {lineage['base']['name']} ({lineage['base']['count']} images) + {len(lineage['labels'])} labelled "
        f"frame(s) from the log ({len(lineage['in_base'])} more already in the base); new classes: "
        f"{lineage['new_classes'] or 'none'}; skipped: {len(lineage['skipped'])}"
    )
    not_held_out = lineage["split"]["not_held_out"]
    if not_held_out:
        # Parts are never forced into val or test (that would move a part between versions).
        missing = ", ".join(f"{c} ({'/'.join(sp)})" for c, sp in not_held_out.items())
        print(f"classes without val or test images: {missing}; their recall cannot be measured on this version "
              "until more of their parts are labelled")
    print(f"fingerprint {ds.fingerprint}")
    return 0


def _import_unlabelled(args: argparse.Namespace) -> int:
    from inspection.dataset.importers import IMAGE_EXTENSIONS
    from inspection.errors import DatasetError
    from inspection.labels import import_unlabelled
    from inspection.log.store import open_log

    src: Path = args.src
    if src.is_file():
        files = [src]
    elif src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    else:
        raise DatasetError(f"{src} is neither an image file nor a folder")
    if not files:
        raise DatasetError(f"{src} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    with open_log(args.log_url, frames_dir=args.frames_dir) as log:
        recs = import_unlabelled(log, ((str(p), p.read_bytes()) for p in files), actor=args.actor, station=args.station)
    print(f"imported {len(recs)} new frame(s) of {len(files)} into the log (the rest were already there)")
    return 0
