"""The golden-frame check in one place: promotion refuses a re-hashed tampered version, `models verify` says why."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from inspection.cli import main as cli
from inspection.errors import ModelIntegrityError, PromotionRefused
from inspection.golden import check_golden, verify_version
from inspection.log.store import open_log
from inspection.promotion import promote_gated, rollback_logged
from inspection.registry import ModelRegistry
from tests.helpers.tiny_model import make_model_version, tamper_weights


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    make_model_version(root, version="v1")
    make_model_version(root, version="v2")
    ModelRegistry(root).promote("tiny", "v1", station="line1")
    return root


def test_check_golden_passes_a_true_version_and_names_the_difference_of_a_tampered_one(models: Path) -> None:
    reg = ModelRegistry(models)
    good = reg.get("tiny", "v1")
    result = verify_version(good.card, good.path)
    assert result.frames == good.card.golden.count and result.max_diff <= result.tolerance
    tamper_weights(models / "tiny" / "v2")
    bad = reg.get("tiny", "v2", verify=True)  # the hashes agree: only behaviour tells
    with pytest.raises(ModelIntegrityError, match=r"tiny/v2: golden frames re-scored with max abs difference "
                                                  r"0\.\d+, beyond the card's tolerance 0\.0001"):
        check_golden(bad.card, bad.path)


def test_check_golden_refuses_an_unreadable_or_misshapen_golden_file(models: Path) -> None:
    mv = ModelRegistry(models).get("tiny", "v2")
    (mv.path / "golden.npz").write_bytes(b"not a numpy file")
    with pytest.raises(ModelIntegrityError, match="golden file golden.npz cannot be read"):
        check_golden(mv.card, mv.path)
    np.savez(mv.path / "golden.npz", inputs=np.zeros((2, 1, 8, 8), np.uint8), probabilities=np.zeros((2, 3)))
    with pytest.raises(ModelIntegrityError, match=r"golden pixels are uint8\[2, 1, 8, 8\], expected uint8\[N, 1, 32, "
                                                  r"32\]"):
        check_golden(mv.card, mv.path)


def test_promote_refuses_a_tampered_version_and_changes_nothing(models: Path, tmp_path: Path) -> None:
    tamper_weights(models / "tiny" / "v2")
    reg = ModelRegistry(models)
    active_before = (models / "active.json").read_bytes()
    with open_log(f"sqlite:///{tmp_path / 'log.db'}") as log:
        with pytest.raises(PromotionRefused, match=r"promotion of tiny/v2 refused: golden-frame check failed: .*"
                                                   r"max abs difference"):
            promote_gated(reg, "tiny", "v2", station="line1", log=log, force=True, reason="override attempt")
        assert log.head()[0] == 0  # nothing recorded
    assert (models / "active.json").read_bytes() == active_before
    assert reg.active("line1").model_id == "tiny/v1"


def test_promote_records_the_golden_check_of_a_true_version(models: Path, tmp_path: Path) -> None:
    with open_log(f"sqlite:///{tmp_path / 'log.db'}") as log:
        result = promote_gated(ModelRegistry(models), "tiny", "v2", station="line1", log=log)
        assert result.record is not None
        golden = result.record.entry.data["golden"]
        assert golden["frames"] >= 1 and 0 <= golden["max_diff"] <= golden["tolerance"] == 1e-4


def test_rollback_refuses_a_version_tampered_since_and_changes_nothing(models: Path, tmp_path: Path) -> None:
    # Hashes alone let it through: weights altered and the card re-hashed, as promote's check exists for.
    reg = ModelRegistry(models)
    promote_gated(reg, "tiny", "v2", station="line1")
    tamper_weights(models / "tiny" / "v1")
    active_before = (models / "active.json").read_bytes()
    with open_log(f"sqlite:///{tmp_path / 'log.db'}") as log:
        with pytest.raises(PromotionRefused, match=r"rollback of station 'line1' to tiny/v1 refused: golden-frame "
                                                   r"check failed: .*max abs difference"):
            rollback_logged(reg, station="line1", reason="v2 lets scratches through", log=log)
        assert log.head()[0] == 0  # nothing recorded
    assert (models / "active.json").read_bytes() == active_before
    assert reg.active("line1").model_id == "tiny/v2"


def test_rollback_records_the_golden_check_of_the_version_it_returns_to(models: Path, tmp_path: Path) -> None:
    reg = ModelRegistry(models)
    promote_gated(reg, "tiny", "v2", station="line1")
    with open_log(f"sqlite:///{tmp_path / 'log.db'}") as log:
        event, record = rollback_logged(reg, station="line1", reason="overkill up", log=log)
    assert event["model"] == "tiny/v1" and reg.active("line1").model_id == "tiny/v1"
    assert record is not None and record.entry.kind == "rollback"
    golden = record.entry.data["golden"]
    assert golden["frames"] >= 1 and 0 <= golden["max_diff"] <= golden["tolerance"] == 1e-4


def test_models_verify_cli_exit_codes(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["models", "verify", "tiny/v1", "--models-dir", str(models)]) == 0
    assert "tiny/v1: trusted: 2 file(s) match their sha256" in capsys.readouterr().out
    tamper_weights(models / "tiny" / "v2")
    assert cli(["models", "verify", "tiny/v2", "--models-dir", str(models), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["trusted"] is False and "golden frames re-scored" in report["reason"]
    (models / "tiny" / "v1" / "golden.npz").write_bytes(b"x")  # a file that no longer matches its hash
    assert cli(["models", "verify", "tiny/v1", "--models-dir", str(models)]) == 1
    assert "NOT trusted: tiny/v1: file 'golden.npz' has sha256" in capsys.readouterr().out
    assert cli(["models", "verify", "tiny/v9", "--models-dir", str(models)]) == 2  # unknown version: bad input


def test_golden_module_imports_onnxruntime_only_when_it_scores() -> None:
    import subprocess

    code = "import sys, inspection.golden, inspection.promotion; print('onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
