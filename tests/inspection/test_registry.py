"""The registry and `inspection models list | show | promote | rollback` on real version folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inspection.cli import main as cli
from inspection.errors import ModelIntegrityError, RegistryError
from inspection.registry import ModelRegistry, parse_model_id
from tests.helpers.tiny_model import make_model_version


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    make_model_version(root, version="v1")
    make_model_version(root, version="v2", threshold=0.3)
    return root


def test_versions_next_version_and_unknown_names(models: Path) -> None:
    reg = ModelRegistry(models)
    assert [v.model_id for v in reg.list_versions()] == ["tiny/v1", "tiny/v2"]
    assert reg.next_version("tiny") == "v3" and reg.next_version("other") == "v1"
    with pytest.raises(RegistryError, match=r"no model tiny/v9 .* known: \['tiny/v1', 'tiny/v2'\]"):
        reg.get("tiny", "v9")
    with pytest.raises(RegistryError, match="NAME/VERSION"):
        parse_model_id("tiny")


def test_promote_and_rollback_per_station(models: Path) -> None:
    reg = ModelRegistry(models)
    assert reg.active("line1") is None
    reg.promote("tiny", "v1", station="line1")
    event = reg.promote("tiny", "v2", station="line1", reason="better escape")
    assert event["previous"] == "tiny/v1"
    assert reg.active("line1").model_id == "tiny/v2"
    back = reg.rollback(station="line1")
    assert (back["model"], back["previous"]) == ("tiny/v1", "tiny/v2")
    assert reg.active("line1").model_id == "tiny/v1"
    assert [e["action"] for e in reg.history("line1")] == ["promote", "promote", "rollback"]
    with pytest.raises(RegistryError, match="no earlier model"):
        reg.rollback(station="line1")


def test_promoting_over_the_default_model_a_station_ran_makes_that_model_its_previous_one(models: Path) -> None:
    reg = ModelRegistry(models)
    reg.promote("tiny", "v1")  # station "default": every station without its own entry runs v1
    assert reg.active("line1").model_id == "tiny/v1"
    event = reg.promote("tiny", "v2", station="line1")
    assert event["previous"] == "tiny/v1"  # was None, and rollback found "no earlier model"
    back = reg.rollback(station="line1", reason="v2 lets scratches through")
    assert (back["model"], back["previous"]) == ("tiny/v1", "tiny/v2")
    assert reg.active("line1").model_id == "tiny/v1"
    reg.promote("tiny", "v2")  # line1 now has its own history: the default's next model is not line1's
    assert reg.active("line1").model_id == "tiny/v1" and reg.active("line2").model_id == "tiny/v2"
    # Pinning the model a station already runs through the default: no earlier model to invent.
    pinned = reg.promote("tiny", "v2", station="line2")
    assert pinned["action"] == "promote" and [h["model"] for h in reg.read_state()["stations"]["line2"]["history"]] \
        == ["tiny/v2"]
    with pytest.raises(RegistryError, match="no earlier model"):
        reg.rollback(station="line2")


def test_promote_refuses_a_version_whose_files_do_not_match_the_card(models: Path) -> None:
    golden = models / "tiny" / "v2" / "golden.npz"
    golden.write_bytes(golden.read_bytes()[:-1] + b"x")
    with pytest.raises(ModelIntegrityError, match="golden.npz"):
        ModelRegistry(models).promote("tiny", "v2")
    assert ModelRegistry(models).active() is None


def test_cli_list_show_promote_rollback(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--models-dir", str(models)]
    assert cli(["models", "promote", "tiny/v1", "--station", "s1", *d]) == 0
    assert cli(["models", "promote", "tiny/v2", "--station", "s1", *d]) == 0
    capsys.readouterr()
    assert cli(["models", "list", "--json", *d]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {m["model"]: m["active_for"] for m in listed} == {"tiny/v1": [], "tiny/v2": ["s1"]}
    assert cli(["models", "show", "tiny/v2", "--verify", *d]) == 0
    out = capsys.readouterr().out
    assert "P(defect) >= 0.3" in out and "sha256 verified" in out
    # words and tables, no Python reprs
    assert "classes   good, scratch, dent" in out and "['" not in out and "{'" not in out
    assert cli(["models", "rollback", "--station", "s1", *d]) == 0
    assert "rolled back to tiny/v1" in capsys.readouterr().out
    assert cli(["models", "list", *d]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["model", "created", "(UTC)", "arch", "test", "active", "for"]
    assert [r.split()[0] for r in rows] == ["tiny/v1", "tiny/v2"]
    assert rows[0].endswith("s1") and rows[1].endswith("-")


def test_cli_refusals_exit_2_with_the_reason(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (models / "tiny" / "v1" / "model.onnx").write_bytes(b"tampered")
    assert cli(["models", "promote", "tiny/v1", "--models-dir", str(models)]) == 2
    assert "error: tiny/v1: file 'model.onnx' has sha256" in capsys.readouterr().err
    assert cli(["models", "show", "nope/v1", "--models-dir", str(models)]) == 2
    assert "known:" in capsys.readouterr().err


def test_cli_models_dir_that_is_a_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile.txt"
    afile.write_text("keep", encoding="utf-8")
    assert cli(["models", "list", "--models-dir", str(afile)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read {afile / 'active.json'} (Not a directory); is {afile} a model registry")
    assert afile.read_text(encoding="utf-8") == "keep"


def test_promoting_the_active_version_again_changes_nothing(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = ModelRegistry(models)
    reg.promote("tiny", "v1", station="line1")
    state = reg.read_state()
    again = reg.promote("tiny", "v1", station="line1")
    assert (again["action"], again["model"], again["previous"]) == ("already_active", "tiny/v1", "tiny/v1")
    assert reg.read_state() == state
    d = ["--models-dir", str(models), "--station", "line1"]
    assert cli(["models", "promote", "tiny/v1", *d]) == 0
    assert "tiny/v1 is already active for station 'line1'; nothing changed" in capsys.readouterr().out
    assert reg.read_state() == state and [e["action"] for e in reg.history("line1")] == ["promote"]
    assert cli(["models", "rollback", *d]) == 2  # no earlier version: not the same one "again"
    assert "has no earlier model to roll back to" in capsys.readouterr().err
