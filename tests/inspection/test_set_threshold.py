"""`inspection models set-threshold`: a new version re-calibrated from stored scores, no retraining."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from inspection.calibration import SCORES_FILE, load_scores, save_scores
from inspection.card import hash_files, load_card, save_card, sha256_file
from inspection.cli import main as cli
from inspection.decisions import defect_scores, reject_mask
from inspection.errors import ValidationError
from inspection.metrics import escape_overkill
from inspection.recalibrate import rescore_golden, set_threshold
from inspection.registry import ModelRegistry, ModelVersion
from tests.helpers.tiny_model import make_model_version, score

CLASSES = ("good", "scratch", "dent")


def _probs(rng: np.random.Generator, labels: np.ndarray, separation: float) -> np.ndarray:
    """Probabilities whose P(defect) is Beta(separation, 2) for defects and Beta(2, separation) for good parts."""
    d = labels != 0
    p_defect = np.where(d, rng.beta(separation, 2, labels.size), rng.beta(2, separation, labels.size))
    share = rng.uniform(0.2, 0.8, labels.size)
    return np.stack([1 - p_defect, p_defect * share, p_defect * (1 - share)], axis=1).astype(np.float32)


def _labels(rng: np.random.Generator, n_def: int, n_good: int) -> np.ndarray:
    return rng.permutation(np.r_[rng.integers(1, 3, n_def), np.zeros(n_good, dtype=np.int64)])


def _with_scores(mv: ModelVersion, *, n_val_def: int = 200, n_val_good: int = 400, separation: float = 2.5,
                 report: bool = True) -> ModelVersion:
    """Add scores.npz (and a stand-in report) to a tiny model version, as training will write them."""
    rng = np.random.default_rng(7)
    val_labels, test_labels = _labels(rng, n_val_def, n_val_good), _labels(rng, 120, 300)
    save_scores(mv.path / SCORES_FILE, val_probs=_probs(rng, val_labels, separation), val_labels=val_labels,
                test_probs=_probs(rng, test_labels, separation), test_labels=test_labels)
    names = [*mv.card.files, SCORES_FILE]
    if report:
        (mv.path / "report.html").write_text("<html>threshold 0.5</html>", encoding="utf-8")
        names.append("report.html")
    card = mv.card.model_copy(update={
        "thresholds": mv.card.thresholds.model_copy(update={"target": {"max_escape": 0.01}}),
        "metrics": {"test": {"accuracy": 0.9, "int8": {"accuracy": 0.89, "escape_rate": 0.1}}},
        "files": hash_files(mv.path, names),
    })
    save_card(card, mv.path)
    return ModelRegistry(mv.path.parents[1]).get(card.name, card.version, verify=True)


@pytest.fixture()
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    _with_scores(make_model_version(root, classes=CLASSES))
    return root


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())}


def _registry_listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("target", [0.05, 0.1])
def test_set_threshold_writes_a_new_version_meeting_the_target_on_stored_validation_scores(
        models: Path, target: float, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(models / "tiny" / "v1")
    assert cli(["models", "set-threshold", "tiny/v1", "--max-escape", str(target), "--models-dir", str(models)]) == 0
    out = capsys.readouterr().out
    assert "tiny/v2 written" in out and "re-calibrated from tiny/v1" in out and "val escape [95% CI]" in out

    new = ModelRegistry(models).get("tiny", "v2", verify=True)  # every hash verifies
    card = new.card
    scores = load_scores(new.path / SCORES_FILE)
    val_defect = scores.val_labels != 0
    s = defect_scores(scores.val_probs, card)
    t = card.thresholds.reject
    assert card.thresholds.target == {"max_escape": target}
    n = int(val_defect.sum())
    # as training calibrates: a new defect passes with probability (misses + 1) / (n + 1) <= target
    assert (np.sum(val_defect & (s < t)) + 1) / (n + 1) <= target
    # the highest such threshold: the next defect score up would let one more defect pass
    higher = np.min(s[val_defect & (s > t)])
    assert (np.sum(val_defect & (s < higher)) + 1) / (n + 1) > target
    assert t != pytest.approx(0.5)  # moved from the source's threshold

    # test operating point recomputed from the stored test scores with the shared reject rule
    test_defect = scores.test_labels != 0
    rates = escape_overkill(test_defect, reject_mask(scores.test_probs, card))
    op = card.metrics["test"]["operating_point"]
    assert (
        op["threshold"] == t
        and op["escape"] == rates["escape"].as_dict()
        and op["overkill"] == rates["overkill"].as_dict()
    )
    assert card.metrics["test"]["accuracy"] == 0.9  # threshold-free figures carried
    assert (
        "escape_rate" not in card.metrics["test"]["int8"] and "not recomputed" in card.metrics["test"]["int8"]["note"]
    )
    assert len(card.metrics["test"]["tradeoff"]) == 5

    calibration = card.thresholds.calibration
    assert calibration["recalibrated_from"] == "tiny/v1" and len(calibration["tradeoff"]) == 5
    lineage = card.training["lineage"]
    assert lineage["recalibrated_from"] == "tiny/v1" and "re-calibrated from tiny/v1" in lineage["note"]
    assert lineage["source_threshold"] == 0.5 and lineage["not_carried"] == ["report.html"]
    assert sorted(card.files) == ["golden.npz", "model.onnx", SCORES_FILE]
    assert card.files["model.onnx"] == before["model.onnx"] and card.version == "v2" and card.name == "tiny"
    assert rescore_golden(card, new.path) <= card.golden.tolerance

    assert _snapshot(models / "tiny" / "v1") == before  # the source version is untouched
    assert not (models / ".staging").exists()


def test_a_strict_escape_target_warns_and_still_writes(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["models", "set-threshold", "tiny/v1", "--max-escape", "0.01", "--models-dir", str(models)]) == 0
    out = capsys.readouterr().out
    card = load_card(models / "tiny" / "v2")
    warning = card.thresholds.calibration["warning"]
    assert "target escape 1.0% forces overkill" in warning and "above the limit 20.0%" in warning
    assert "set-threshold tiny/v2 --max-escape" in warning
    assert f"WARNING: {warning}" in out
    assert cli(["models", "show", "tiny/v2", "--models-dir", str(models)]) == 0
    shown = capsys.readouterr().out
    assert f"WARNING   {warning}" in shown
    # how the threshold was placed: the new version says so; its source predates the recorded rule
    assert "calibrated at most floor(r*(n+1))-1 of the n validation parts" in shown and "split-conformal" in shown
    assert cli(["models", "show", "tiny/v1", "--models-dir", str(models)]) == 0
    assert "calibrated at most floor(r*n) of the n validation parts" in capsys.readouterr().out
    # a looser target on the same model does not warn
    assert cli(["models", "set-threshold", "tiny/v2", "--max-escape", "0.1", "--overkill-limit", "0.8",
                "--models-dir", str(models)]) == 0
    v3 = load_card(models / "tiny" / "v3")
    assert "warning" not in v3.thresholds.calibration
    assert v3.training["lineage"]["recalibrated_from"] == "tiny/v2"


def test_max_overkill_target(models: Path) -> None:
    new = set_threshold(ModelRegistry(models), "tiny/v1", {"max_overkill": 0.05})
    scores = load_scores(new.path / SCORES_FILE)
    good = scores.val_labels == 0
    rejected_good = np.sum(good & (defect_scores(scores.val_probs, new.card) >= new.card.thresholds.reject))
    assert (rejected_good + 1) / (good.sum() + 1) <= 0.05  # a new good part, rejected with probability <= 5%
    assert new.card.thresholds.target == {"max_overkill": 0.05}


def test_the_monitoring_reject_rate_is_the_validation_reject_rate_at_the_new_threshold(tmp_path: Path) -> None:
    # Serving centres the reject-rate chart on it until 1,000 parts: the source's, at the old
    # threshold, raised false alarms (or hid real ones) after a threshold move.
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 256, (400, 1, 1, 1))
    frames = np.clip(levels + rng.integers(-10, 11, (400, 1, 32, 32)), 0, 255).astype(np.uint8)
    source = make_model_version(tmp_path / "models", classes=CLASSES, reference_frames=frames)
    # As training stores them: the probabilities of the validation frames the reference was built from.
    probs = score(source.path / "model.onnx", frames)
    labels = np.where(levels.ravel() < 128, 1, 0)
    save_scores(source.path / SCORES_FILE, val_probs=probs, val_labels=labels, test_probs=probs, test_labels=labels)
    save_card(source.card.model_copy(update={"files": hash_files(source.path, [*source.card.files, SCORES_FILE])}),
              source.path)
    assert source.card.monitoring is not None
    assert source.card.monitoring.reject_rate == pytest.approx(float(np.mean(reject_mask(probs, source.card))))

    new = set_threshold(ModelRegistry(tmp_path / "models"), "tiny/v1", {"max_overkill": 0.3}, overkill_limit=None)
    assert new.card.thresholds.reject != source.card.thresholds.reject
    assert new.card.monitoring is not None
    expected = float(np.mean(reject_mask(probs, new.card)))
    assert new.card.monitoring.reject_rate == pytest.approx(expected)
    assert abs(expected - source.card.monitoring.reject_rate) > 0.05
    assert new.card.monitoring.stats == source.card.monitoring.stats  # the frames' statistics do not move


@pytest.mark.parametrize(("args", "message"), [
    (["tiny/v9", "--max-escape", "0.05"], "no model tiny/v9"),
    (["tiny", "--max-escape", "0.05"], "model 'tiny' is not of the form NAME/VERSION"),
    (["tiny/v1", "--max-escape", "1.5"], "--max-escape 1.5: a rate must be between 0 and 1"),
    (["tiny/v1", "--max-escape", "0"], "--max-escape 0.0: a rate must be between 0 and 1"),
    (["tiny/v1", "--max-overkill", "-0.1"], "--max-overkill -0.1: a rate must be between 0 and 1"),
    (["tiny/v1", "--max-escape", "nan"], "--max-escape nan: a rate must be between 0 and 1"),
    (["tiny/v1", "--max-escape", "0.001"],
     "--max-escape 0.001 needs at least 1000 defective images in the validation split"),
    (["tiny/v1", "--max-escape", "0.05", "--overkill-limit", "2"], "overkill limit 2.0: allowed (0, 1]"),
])
def test_bad_input_exits_2_naming_the_value_and_writes_nothing(
        models: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    listing = _registry_listing(models)
    assert cli(["models", "set-threshold", *args, "--models-dir", str(models)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert _registry_listing(models) == listing


def test_an_unresolvable_target_names_the_smallest_allowed(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["models", "set-threshold", "tiny/v1", "--max-escape", "0.001", "--models-dir", str(models)]) == 2
    err = capsys.readouterr().err
    assert "validation has 200" in err and "Allowed with this split: --max-escape >= 0.005" in err
    assert "tiny/v1: choose a target this split resolves" in err


def test_both_targets_or_none_is_a_usage_error(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--max-escape", "0.05", "--max-overkill", "0.05"], []):
        with pytest.raises(SystemExit) as exc:
            cli(["models", "set-threshold", "tiny/v1", *args, "--models-dir", str(models)])
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "not allowed with argument" in err and "one of the arguments --max-escape --max-overkill is required" in err


def test_a_version_without_stored_scores_says_to_retrain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_model_version(tmp_path / "models", name="old", classes=CLASSES)
    assert (
        cli(["models", "set-threshold", "old/v1", "--max-escape", "0.05", "--models-dir", str(tmp_path / "models")])
        == 2
    )
    err = capsys.readouterr().err
    assert "old/v1 has no stored scores (scores.npz" in err and "retrain it" in err
    assert not (tmp_path / "models" / "old" / "v2").exists()


def test_a_model_without_good_class_is_refused(tmp_path: Path) -> None:
    make_model_version(tmp_path / "models", name="types", classes=("scratch", "dent"), good_class=None)
    with pytest.raises(ValidationError, match="types/v1 has no good class"):
        set_threshold(ModelRegistry(tmp_path / "models"), "types/v1", {"max_escape": 0.05})


def test_a_tampered_source_is_refused_before_anything_is_written(
    models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = models / "tiny" / "v1" / SCORES_FILE
    data = dict(np.load(path))
    data["val_probs"] = data["val_probs"][::-1].copy()
    np.savez(path, **data)
    assert cli(["models", "set-threshold", "tiny/v1", "--max-escape", "0.05", "--models-dir", str(models)]) == 2
    assert "file 'scores.npz' has sha256" in capsys.readouterr().err
    assert not (models / "tiny" / "v2").exists() and not (models / ".staging").exists()


def test_golden_frames_that_no_longer_rescore_stop_the_new_version(
    models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A source whose golden file is consistent with its card's hash but not with its model:
    # set-threshold re-scores the frames with onnxruntime, so it must refuse.
    folder = models / "tiny" / "v1"
    with np.load(folder / "golden.npz") as g:
        inputs, probs = g["inputs"], g["probabilities"]
    np.savez(folder / "golden.npz", inputs=inputs, probabilities=probs[:, ::-1])
    card = load_card(folder)
    save_card(card.model_copy(update={"files": hash_files(folder, list(card.files))}), folder)
    assert cli(["models", "set-threshold", "tiny/v1", "--max-escape", "0.05", "--models-dir", str(models)]) == 2
    err = capsys.readouterr().err
    assert "tiny/v2: golden frames re-scored with max abs difference" in err and "nothing was written" in err
    assert not (models / "tiny" / "v2").exists() and not (models / ".staging").exists()


def test_without_onnxruntime_the_message_names_the_serve_extra(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as on a machine without the serve extra
    with pytest.raises(ValidationError, match=r"needs onnxruntime: install the serve extra"):
        set_threshold(ModelRegistry(models), "tiny/v1", {"max_escape": 0.05})
    assert not (models / "tiny" / "v2").exists() and not (models / ".staging").exists()
