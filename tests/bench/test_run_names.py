"""The quality benches refuse two runs of one name before they train, and leave nothing behind."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("script", "prefix"), [("train_quality.py", "train-quality-"),
                                                ("epoch_curves.py", "epoch-curves-")])
def test_two_datasets_of_one_name_are_refused_without_a_stray_work_folder(tmp_path, script, prefix) -> None:
    for parent in ("a", "b"):
        folder = tmp_path / parent / "line"
        folder.mkdir(parents=True)
        (folder / "labels.csv").write_text("path,label\n")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--only", "--dataset", str(tmp_path / "a" / "line"),
         "--dataset", str(tmp_path / "b" / "line")],
        check=False, capture_output=True, text=True, cwd=ROOT, env={"TMPDIR": str(scratch), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "would both run as 'line'" in done.stderr
    assert not [p.name for p in scratch.iterdir() if p.name.startswith(prefix)]
