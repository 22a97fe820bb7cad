"""Every path that decodes an image reads its header first: a small file declaring a huge image
is refused, naming the file, the declared size and the limit, by dataset import, labelling
imports (``dataset import-unlabelled``) and ``dataset build``, and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspection import labels as L
from inspection.cli import main as cli
from inspection.dataset.importers import import_dataset
from inspection.errors import FrameTooLargeError
from inspection.log.records import LogEntry
from inspection.log.store import open_log
from tests.helpers.hostile_frames import bomb_set
from tests.inspection.test_labels_build import CLASSES, base, png  # noqa: F401  (base: a fixture)

BOMB = bomb_set()["png"]  # 65,535 x 65,535 declared in a few hundred bytes
DECLARED = "declares 65535 x 65535 = 4,294,836,225 pixels, over the limit of 64,000,000 pixels"


def test_dataset_import_refuses_a_lying_header_naming_the_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for cls, level in (("good", 200), ("dent", 40)):
        (src / cls).mkdir(parents=True)
        for i in range(3):
            (src / cls / f"{i}.png").write_bytes(png(level, i))
    (src / "dent" / "bomb.png").write_bytes(BOMB)
    with pytest.raises(FrameTooLargeError, match=rf"dent/bomb\.png: PNG header {DECLARED}.*--exclude"):
        import_dataset(src, tmp_path / "out", layout="folders")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no dataset, no temp folder


def test_labelling_import_refuses_a_lying_header_before_writing(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "new"
    src.mkdir()
    (src / "a.png").write_bytes(png(90, 1))
    (src / "b.png").write_bytes(BOMB)
    url = f"sqlite:///{tmp_path / 'log.db'}"
    assert cli(["dataset", "import-unlabelled", str(src), "--log-url", url]) == 2
    assert f"b.png: PNG header {DECLARED}" in capsys.readouterr().err
    with open_log(url) as log:
        assert log.head() is None or not L.labelling_queue(log)  # a.png was not imported either


def test_dataset_build_refuses_a_lying_header_stored_in_the_log(base: Path, tmp_path: Path,  # noqa: F811
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    # A frame logged before the guard existed (the log stores bytes as they came): build decodes
    # every labelled frame, so it must refuse it there.
    url = f"sqlite:///{tmp_path / 'log.db'}"
    out = tmp_path / "v2"
    with open_log(url) as log:
        rec = log.append(LogEntry(kind="inspection", station="s1", camera="cam", part_id="A", decision="reject",
                                  scores={"good": 0.4, "scratch": 0.6}, threshold=0.5, model_name="m",
                                  model_version="v1"), frame=BOMB)
        L.add_label(log, rec.entry.inspection_id, "spot", classes=CLASSES, actor="ann", expected_revision=0)
    assert cli(["dataset", "build", "--base", str(base), "--log-url", url, "--out", str(out)]) == 2
    assert DECLARED in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".v2.*"))
