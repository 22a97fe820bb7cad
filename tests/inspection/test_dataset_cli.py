"""`inspection dataset generate|import|info` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inspection.cli import main
from inspection.dataset import read_dataset
from tests.helpers.tiny_model import frame_png


def _generate(out: Path, *extra: str) -> int:
    return main(["dataset", "generate", "--out", str(out), "--seed", "3", "--good", "6", "--per-defect", "2",
                 "--size", "40", *extra])


def test_generate_then_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _generate(tmp_path / "coat") == 0
    out = capsys.readouterr().out
    ds = read_dataset(tmp_path / "coat", verify=True)
    assert f"wrote 16 images to {tmp_path / 'coat'}" in out and ds.fingerprint in out
    assert main(["dataset", "info", str(tmp_path / "coat"), "--json", "--min-per-class", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == ds.counts() and report["problems"] == []
    assert main(["dataset", "info", str(tmp_path / "coat")]) == 0
    text = capsys.readouterr().out
    assert "16 images, 6 classes (good class: good)" in text and "warning: tiny_class" in text


def test_generate_refuses_an_existing_folder_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _generate(tmp_path / "coat") == 0
    fingerprint = read_dataset(tmp_path / "coat").fingerprint
    capsys.readouterr()
    assert main(["dataset", "generate", "--out", str(tmp_path / "coat"), "--seed", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err and "--overwrite" in err
    assert read_dataset(tmp_path / "coat").fingerprint == fingerprint
    assert _generate(tmp_path / "coat", "--overwrite") == 0


def test_overwrite_replaces_only_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("keep", encoding="utf-8")
    assert _generate(notes, "--overwrite") == 2
    assert f"{notes} is a folder with no manifest.json, not a dataset" in capsys.readouterr().err
    assert [p.name for p in notes.iterdir()] == ["notes.txt"]
    assert _generate(tmp_path / "coat") == 0
    labels = tmp_path / "coat" / "labels.csv"
    text = labels.read_text(encoding="utf-8")
    capsys.readouterr()
    assert _generate(labels, "--overwrite") == 2
    assert f"{labels} is a file with no manifest.json" in capsys.readouterr().err
    assert labels.read_text(encoding="utf-8") == text
    assert sorted(p.name for p in (tmp_path / "coat").iterdir()) == ["images", "labels.csv", "manifest.json"]
    src = tmp_path / "coat" / "images"
    assert main(["dataset", "import", "--layout", "folders", str(src), "--out", str(notes), "--overwrite"]) == 2
    assert "not a dataset" in capsys.readouterr().err and [p.name for p in notes.iterdir()] == ["notes.txt"]


def test_overwrite_keeps_a_file_named_like_the_old_dataset_aside(tmp_path: Path) -> None:
    assert _generate(tmp_path / "coat") == 0
    (tmp_path / ".coat.old").write_text("someone's file", encoding="utf-8")
    assert _generate(tmp_path / "coat", "--overwrite") == 0
    assert (tmp_path / ".coat.old").read_text(encoding="utf-8") == "someone's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".coat.old", "coat"]


@pytest.mark.parametrize("out", ["", ".", ".."])
def test_out_naming_no_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str], out: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "manifest.json").write_text("{}", encoding="utf-8")  # even a dataset-looking folder
    monkeypatch.chdir(work)
    assert main(["dataset", "generate", "--out", out, "--good", "2", "--per-defect", "1", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and "names no folder of its own" in err
    assert [p.name for p in work.iterdir()] == ["manifest.json"]


def test_generate_bad_size_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataset", "generate", "--out", str(tmp_path / "x"), "--size", "4"]) == 2
    assert "size=4 is out of range 32..2048" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("seed", "message"), [("-1", "seed=-1 is out of range 0..4294967295"),
                                               ("4294967296", "seed=4294967296 is out of range")])
def test_generate_bad_seed_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: str, message: str) -> None:
    assert main(["dataset", "generate", "--out", str(tmp_path / "x"), "--seed", seed]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "x").exists()


def test_import_folders_with_exclude_and_pattern(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _generate(tmp_path / "gen") == 0
    src = tmp_path / "src"
    for s in read_dataset(tmp_path / "gen").samples:  # MT-like: Cls_<label>/Imgs/<n>.png + a .bmp "mask"
        target = src / f"Cls_{s.label}" / "Imgs" / Path(s.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((tmp_path / "gen" / s.path).read_bytes())
        target.with_suffix(".bmp").write_bytes(b"BM not really")
    capsys.readouterr()
    rc = main(["dataset", "import", "--layout", "folders", str(src), "--out", str(tmp_path / "imp"),
               "--exclude", "*.bmp", "--class-from-dir-pattern", "Cls_(?P<label>[^/]+)/", "--good", "good"])
    assert rc == 0, capsys.readouterr().err
    ds = read_dataset(tmp_path / "imp", verify=True)
    assert ds.counts() == read_dataset(tmp_path / "gen").counts() and ds.classes[0] == "good"
    assert f"imported 16 images to {tmp_path / 'imp'}" in capsys.readouterr().out


def test_import_bad_input_exits_2_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    (src / "good").mkdir(parents=True)
    (src / "good" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    rc = main(["dataset", "import", "--layout", "folders", str(src), "--out", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{src / 'good' / 'a.png'}: PNG header" in err
    assert not (tmp_path / "out").exists()
    (tmp_path / "l.csv").write_text("path,label\nsrc/good/a.png,good\n")
    rc = main(["dataset", "import", "--layout", "csv", str(tmp_path / "l.csv"), "--out", str(tmp_path / "out"),
               "--classes", "ok,dent"])
    assert rc == 2
    assert "label 'good' is not in the class list ['ok', 'dent']" in capsys.readouterr().err


def test_unknown_layout_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["dataset", "import", "--layout", "tree", "src", "--out", "x"])
    assert exc.value.code == 2
    assert "invalid choice: 'tree'" in capsys.readouterr().err


def test_info_on_a_folder_without_a_dataset_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataset", "info", str(tmp_path)]) == 2
    assert "has no manifest.json" in capsys.readouterr().err
    (tmp_path / "afile.txt").write_text("x", encoding="utf-8")
    assert main(["dataset", "info", str(tmp_path / "afile.txt")]) == 2
    assert f"dataset folder {tmp_path / 'afile.txt'} is a file, not a dataset folder" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--min-per-class", "--min-units-per-class"])
def test_info_refuses_a_negative_minimum(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str) -> None:
    assert _generate(tmp_path / "coat") == 0
    capsys.readouterr()
    assert main(["dataset", "info", str(tmp_path / "coat"), flag, "-3"]) == 2
    assert f"error: {flag} -3 is not allowed; give 0 or more" in capsys.readouterr().err


@pytest.mark.parametrize("good_dir", ["OK", "Free", "good"])
def test_import_warns_when_a_good_like_class_is_not_named_good(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                               good_dir: str) -> None:
    src = tmp_path / "src"
    for k, label in enumerate((good_dir, "scratch")):
        (src / label).mkdir(parents=True)
        for i in range(2):
            (src / label / f"{i}.png").write_bytes(frame_png(40 + 100 * i + 30 * k))  # no duplicates
    with caplog.at_level("WARNING", logger="inspection.dataset.importers"):
        assert main(["dataset", "import", "--layout", "folders", str(src), "--out", str(tmp_path / "a")]) == 0
    assert f"class {good_dir!r} looks like the 'no defect' class, but --good was not given" in caplog.text
    assert f"re-import with --good {good_dir}" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="inspection.dataset.importers"):
        assert main(["dataset", "import", "--layout", "folders", str(src), "--out", str(tmp_path / "b"),
                     "--good", good_dir]) == 0
    assert "looks like the 'no defect' class" not in caplog.text


@pytest.mark.parametrize(("damage", "message"), [
    ("labels_latin1", "labels.csv: cannot read (not UTF-8: byte 0xe9 at offset"),
    ("manifest_folder", "manifest.json: cannot read (Is a directory)"),
    ("manifest_list", "manifest.json holds a JSON list; a manifest is a JSON object"),
])
def test_an_unreadable_dataset_exits_2_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       damage: str, message: str) -> None:
    assert _generate(tmp_path / "coat") == 0
    root = tmp_path / "coat"
    if damage == "labels_latin1":
        (root / "labels.csv").write_bytes((root / "labels.csv").read_bytes() + "images/good/café.png,good\n"
                                          .encode("latin-1"))
    elif damage == "manifest_folder":
        (root / "manifest.json").unlink()
        (root / "manifest.json").mkdir()
    else:
        (root / "manifest.json").write_text("[]", encoding="utf-8")
    capsys.readouterr()
    assert main(["dataset", "info", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    if damage == "manifest_list":
        assert main(["dataset", "set-orientation", str(root), "free"]) == 2
        assert message in capsys.readouterr().err
        assert (root / "manifest.json").read_text(encoding="utf-8") == "[]"
