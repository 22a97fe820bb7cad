"""The train/val/test split: stratified, seeded, and honest about what belongs together.

Samples are split in *groups*, never one by one. A group is every sample linked, transitively,
by any of:

* the same non-empty ``source`` (views of one part);
* the same non-empty ``group`` (``labels.csv``: part serial, lot, physical item);
* exact duplicates (same bytes or same decoded pixels) and near duplicates (perceptual hash
  and thumbnail correlation, see :mod:`inspection.dataset.duplicates`) - only through
  :func:`split_dataset`, which decodes the images, or ``make_split(..., together=...)``.

Groups are drawn per label (the group's most common label), so each class is split in
proportion; a class with at least 3 groups gets at least one group in val and in test. A split
given in ``labels.csv`` is kept; when one group holds different given splits (a copy in train
of a test image), the whole group goes to the most held-out of them (test, then val) so the
evaluation sets stay as the dataset defined them and the copies leave training; the paths moved
are reported.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from inspection.dataset.duplicates import (
    Duplicates,
    connected,
    find_duplicates,
    read_signatures,
    refuse_label_conflicts,
)
from inspection.dataset.layout import SPLITS, Sample
from inspection.errors import DatasetError

if TYPE_CHECKING:
    from inspection.dataset.layout import Dataset

log = logging.getLogger(__name__)

SPLIT_FILE = "split.csv"
_HELD_OUT_FIRST = ("test", "val", "train")


def split_groups(samples: Sequence[Sample], together: Iterable[Iterable[str]] = ()) -> list[list[Sample]]:
    """The groups of ``samples`` that must share a split (see the module docstring), sorted by key.

    Raises:
        DatasetError: ``together`` names a path that is not one of ``samples``.
    """
    by_path = {s.path: s for s in samples}
    links: list[list[str]] = [list(g) for g in together]
    for attr in ("source", "group"):
        shared: dict[str, list[str]] = {}
        for s in samples:
            value = getattr(s, attr)
            if value:
                shared.setdefault(value, []).append(s.path)
        links.extend(shared.values())
    unknown = sorted({p for g in links for p in g} - by_path.keys())
    if unknown:
        raise DatasetError(f"{len(unknown)} path(s) to keep together are not samples of the dataset: {unknown[:5]}")
    # A group's key is the smallest of its members' keys (source, or the path), so a dataset
    # without groups or duplicates splits exactly as before grouping existed.
    groups = [[by_path[p] for p in comp] for comp in connected(by_path, links)]
    keyed = [(min(s.source or f"\0{s.path}" for s in g), g) for g in groups]
    return [g for _, g in sorted(keyed, key=lambda kg: kg[0])]


def group_label(members: Iterable[Sample]) -> str:
    """The label a group is drawn under: its members' most common one."""
    return Counter(m.label for m in members).most_common(1)[0][0]


def _assign(samples: Sequence[Sample], *, seed: int, val_fraction: float, test_fraction: float,
            together: Iterable[Iterable[str]], held_out: Collection[str] = ()
            ) -> tuple[dict[str, str], dict[str, int], list[str]]:
    assigned: dict[str, str] = {}
    moved: list[str] = []
    free_by_label: dict[str, list[list[Sample]]] = {}
    groups = split_groups(samples, together)
    for members in groups:
        given = {m.split for m in members if m.split}
        if given:
            split = next(s for s in _HELD_OUT_FIRST if s in given)
            for m in members:
                if m.split and m.split != split:
                    moved.append(m.path)
                assigned[m.path] = split
        else:
            label = group_label(members)
            free_by_label.setdefault(label, []).append(members)
    rng = np.random.default_rng(seed)
    for label in sorted(free_by_label):
        keys = free_by_label[label]
        order = rng.permutation(len(keys))
        keys = [keys[i] for i in order]
        n = len(keys)
        n_test = round(n * test_fraction)
        n_val = round(n * val_fraction)
        if n >= 3:
            n_test, n_val = max(n_test, 1), max(n_val, 1)
        n_test, n_val = min(n_test, n), min(n_val, max(n - n_test - 1, 0))
        if label in held_out:
            # Never trained on (anomaly mode's defects): half for validation, half for test.
            n_test = n // 2
            n_val = n - n_test
        for i, members in enumerate(keys):
            split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
            for m in members:
                assigned[m.path] = split
    units = {m.path: i for i, members in enumerate(groups) for m in members}
    return assigned, units, sorted(moved)


def make_split(samples: Sequence[Sample], *, seed: int, val_fraction: float, test_fraction: float,
               together: Iterable[Iterable[str]] = ()) -> dict[str, str]:
    """Assign train/val/test to every sample (``{path: split}``), stratified by label, reproducible by seed.

    Samples sharing a ``source`` or a ``group``, and each collection of paths in ``together``
    (e.g. :meth:`Duplicates.together`), land in one split. Given splits are kept (see the module
    docstring for a group holding several). Each class with at least 3 groups gets at least one
    group in val and in test.

    Raises:
        DatasetError: ``together`` names a path that is not one of ``samples``.
    """
    return _assign(samples, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, together=together)[0]


@dataclass(frozen=True)
class SplitResult:
    """A dataset's split and what shaped it."""

    split: dict[str, str]            # path -> "train" | "val" | "test"
    duplicates: Duplicates           # exact and near-duplicate groups found in the images
    units: dict[str, int]            # path -> the unit it was drawn in (samples joined by source, group, duplicates)
    moved: list[str]                 # paths whose given split changed to keep their group in one split

    @property
    def groups(self) -> int:
        """How many units were drawn."""
        return len(set(self.units.values()))

    def summary(self) -> str:
        """One line for the training log."""
        d = self.duplicates
        text = (f"split {len(self.split)} images in {self.groups} groups; duplicates kept together: "
                f"{len(d.exact)} exact group(s) ({sum(map(len, d.exact))} images), {len(d.near)} near group(s) "
                f"({sum(map(len, d.near))} images; pHash <= {d.max_hamming} bits and thumbnail correlation >= "
                f"{d.min_correlation})")
        if self.moved:
            text += f"; {len(self.moved)} given split(s) changed to keep a group together (e.g. {self.moved[0]})"
        return text


def split_dataset(ds: Dataset, *, seed: int, val_fraction: float, test_fraction: float, near: bool = True,
                  workers: int | None = None, held_out: Collection[str] = ()) -> SplitResult:
    """Split ``ds`` honestly: decode every image once, group duplicates, then :func:`make_split`.

    Groups of a ``held_out`` label (by majority) go to validation and test only, half each.

    Raises:
        DatasetError: an image cannot be decoded (all named), or identical images (bytes or
            pixels) carry different labels (every such group listed).
    """
    sigs = read_signatures(ds, workers=workers)
    dups = find_duplicates(sigs, near=near)
    refuse_label_conflicts(dups.exact, {s.path: s.label for s in ds.samples})
    split, units, moved = _assign(ds.samples, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                                  together=dups.together(), held_out=held_out)
    result = SplitResult(split, dups, units, moved)
    log.info("%s: %s", ds.name, result.summary())
    return result


def crossing_groups(split: dict[str, str], groups: Iterable[Sequence[str]]) -> list[list[str]]:
    """The groups (of paths) whose members sit in more than one split (paths without a split ignored)."""
    return [list(g) for g in groups if len({split[p] for p in g if split.get(p)}) > 1]


def split_counts(samples: Sequence[Sample], split: dict[str, str], classes: list[str]) -> dict[str, dict[str, int]]:
    """``{split: {class: count}}`` for the card."""
    out: dict[str, dict[str, int]] = {name: {c: 0 for c in classes} for name in SPLITS}
    for s in samples:
        out[split[s.path]][s.label] += 1
    return out


def write_split(path: Path, samples: Sequence[Sample], split: dict[str, str],
                units: Mapping[str, int] | None = None) -> None:
    """Save the split as CSV (path,label,split,source[,group][,unit]), sorted by path.

    ``unit`` (where given) numbers the units the split drew: images that share one were kept in
    one split, and a figure on the test split is resolved by its units, not its images.
    """
    with_group = any(s.group for s in samples)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "split", "source", *(["group"] if with_group else []),
                     *(["unit"] if units is not None else [])])
    for s in sorted(samples, key=lambda s: s.path):
        writer.writerow([s.path, s.label, split[s.path], s.source, *([s.group] if with_group else []),
                         *([units[s.path]] if units is not None else [])])
    Path(path).write_text(buf.getvalue(), encoding="utf-8")


def read_split(path: Path) -> dict[str, str]:
    """Read a split.csv back into ``{path: split}``."""
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["path"]: row["split"] for row in csv.DictReader(fh)}


def read_units(path: Path) -> dict[str, int] | None:
    """A split.csv's ``{path: unit}``; None for a file written before units were recorded."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "unit" not in rows[0]:
        return None
    return {row["path"]: int(row["unit"]) for row in rows}
