"""`inspection demo`'s argument checks: bad input is refused before --out is touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspection.cli import main
from inspection.errors import ConfigError
from sim.demo import _clear_out


def _demo(tmp_path: Path, *extra: str) -> int:
    return main(["demo", "--datasets-dir", str(tmp_path / "datasets"), "--models-dir", str(tmp_path / "models"),
                 *extra])


@pytest.mark.parametrize(("flags", "named"), [
    (("--epochs", "0"), "epochs=0"),
    (("--parts", "-5"), "--parts -5"),
    (("--seed", "-1"), "--seed -1"),
])
def test_a_bad_argument_is_refused_before_out_is_cleared(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], named: str) -> None:
    out = tmp_path / "somefolder"
    out.mkdir()
    (out / "serve.yaml").write_text("port: 1\n", encoding="utf-8")  # an earlier demo's output
    assert _demo(tmp_path, "--out", str(out), *flags) == 2
    assert named in capsys.readouterr().err
    assert (out / "serve.yaml").read_text(encoding="utf-8") == "port: 1\n"
    assert not (tmp_path / "datasets").exists()


@pytest.mark.parametrize("given", ["", ".", ".."])
def test_out_the_current_folder_or_above_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], given: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("keep", encoding="utf-8")
    monkeypatch.chdir(work)
    assert _demo(tmp_path, "--out", given) == 2
    assert "is the current folder or one above it" in capsys.readouterr().err
    assert (work / "notes.txt").read_text(encoding="utf-8") == "keep"


def test_out_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile.txt").write_text("keep", encoding="utf-8")
    assert _demo(tmp_path, "--out", str(tmp_path / "afile.txt")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "afile.txt is a file" in err and "Traceback" not in err
    assert (tmp_path / "afile.txt").read_text(encoding="utf-8") == "keep"


@pytest.mark.parametrize("names", [["notes.txt"], ["serve.yaml", "notes.txt"], ["server.log"]])
def test_a_folder_the_demo_did_not_write_is_kept(tmp_path: Path, names: list[str]) -> None:
    for name in names:
        (tmp_path / "out" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "out" / name).write_text("keep", encoding="utf-8")
    with pytest.raises(ConfigError, match="the demo did not write"):
        _clear_out(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)


def test_an_earlier_demo_output_missing_or_empty_folder_is_made_empty(tmp_path: Path) -> None:
    earlier = tmp_path / "earlier"
    (earlier / "frames" / "line1").mkdir(parents=True)
    for name in ("serve.yaml", "server.log", "log.db", "log.db-wal"):
        (earlier / name).write_text("x", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    for given in (earlier, tmp_path / "empty", tmp_path / "missing" / "out"):
        assert _clear_out(given) == given.resolve() and list(given.iterdir()) == []
