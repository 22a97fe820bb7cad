"""Export memory does not grow with the number of records (streamed through the cursor)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("log_export_memory", REPO / "bench" / "log_export_memory.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_csv_export_peak_memory_is_flat_from_1k_to_4k_rows(log: Any, tmp_path: Path) -> None:
    bench = _bench()
    bench.fill(log, 1000, seed=1)
    peak_1k, size_1k, _ = bench.export_peak(log, "csv", tmp_path / "1k.csv")
    bench.fill(log, 3000, seed=2)
    peak_4k, size_4k, _ = bench.export_peak(log, "csv", tmp_path / "4k.csv")
    assert size_4k > 3.5 * size_1k  # four times the rows really went out ...
    assert peak_4k < 1.25 * peak_1k, (peak_1k, peak_4k)  # ... through the same memory
    assert log.verify().ok
