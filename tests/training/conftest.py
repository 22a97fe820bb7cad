"""Small seeded datasets for the training tests (generated in tmp_path, never real data)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from inspection.dataset.layout import Dataset, Sample, write_dataset


def draw(label: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A gray texture; defects are drawn large and high-contrast so a few epochs learn them."""
    img = rng.normal(128, 12, (size, size)).clip(0, 255).astype(np.uint8)
    c = int(rng.integers(size // 4, 3 * size // 4))
    if label == "scratch":
        cv2.line(img, (0, c), (size - 1, int(rng.integers(0, size))), 20, max(2, size // 16))
    elif label == "spot":
        cv2.circle(img, (c, int(rng.integers(size // 4, 3 * size // 4))), max(3, size // 6), 245, -1)
    return img


def make_dataset(
    dest: Path,
    *,
    classes: tuple[str, ...] = ("good", "scratch", "spot"),
    counts: dict[str, int] | None = None,
    size: int = 32,
    seed: int = 0,
    good_class: str | None = "good",
    sources: bool = False,
) -> Dataset:
    """Write a small dataset in the standard layout (PNG, grayscale)."""
    rng = np.random.default_rng(seed)
    counts = counts or {c: (40 if c == good_class else 24) for c in classes}
    items = []
    for c in classes:
        for i in range(counts[c]):
            ok, buf = cv2.imencode(".png", draw(c, rng, size))
            assert ok
            source = f"part{i // 2:03d}-{c}" if sources else ""
            items.append((Sample(f"images/{c}/{i:03d}.png", c, source=source), buf.tobytes()))
    return write_dataset(dest, name=dest.name, classes=list(classes), good_class=good_class, items=items)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Dataset:
    return make_dataset(tmp_path / "tiny")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    # The 2 test cores are shared; two OpenMP threads under contention spin and run far slower.
    import torch

    torch.set_num_threads(1)
