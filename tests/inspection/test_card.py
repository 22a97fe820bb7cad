"""The model card schema: round trip, consistency checks, hashes, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inspection.card import load_card, save_card, verify_files
from inspection.errors import ModelCardError, ModelIntegrityError
from tests.helpers.tiny_model import make_model_version


@pytest.fixture
def version(tmp_path: Path):
    return make_model_version(tmp_path / "models", classes=("good", "scratch", "dent"), per_class={"dent": 0.3})


def test_card_round_trips_and_names_defect_classes(version) -> None:
    card = load_card(version.path)
    assert card == version.card
    assert card.defect_classes == ["scratch", "dent"]
    assert card.model_id == "tiny/v1"
    assert card.input.input_name == "pixels" and card.input.output_name == "probabilities"
    save_card(card, version.path)
    assert load_card(version.path) == card


def _edit(folder: Path, **changes) -> None:
    raw = json.loads((folder / "model.json").read_text())
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    (folder / "model.json").write_text(json.dumps(raw))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"classes": ["good", "good", "dent"]}, "classes must be unique"),
        ({"good_class": "ok"}, "good_class 'ok' is not one of classes"),
        ({"thresholds__per_class": {"good": 0.2}}, "allowed only for defect classes"),
        ({"normalization__mean": [0.5, 0.5, 0.5]}, "normalization has 3 values, the input has 1"),
        ({"thresholds__reject": 1.5}, "thresholds.reject"),
        # NaN compares false: the class that must never pass would never be rejected by its threshold.
        ({"thresholds__per_class": {"scratch": float("nan")}}, "thresholds.per_class.scratch"),
        ({"thresholds__per_class": {"scratch": 1.5}}, "thresholds.per_class.scratch"),
        ({"files": {"golden.npz": "0" * 64}}, "must list the model file 'model.onnx'"),
        ({"surprise": 1}, "surprise"),
        ({"input__resize": "lanczos"}, "input.resize"),
    ],
)
def test_invalid_cards_are_refused_with_the_reason(version, changes: dict, message: str) -> None:
    _edit(version.path, **changes)
    with pytest.raises(ModelCardError, match=message):
        load_card(version.path)


def test_missing_and_non_json_cards(tmp_path: Path) -> None:
    with pytest.raises(ModelCardError, match="no model card"):
        load_card(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelCardError, match="not valid JSON"):
        load_card(tmp_path)


def test_verify_files_catches_a_changed_or_missing_file(version) -> None:
    verify_files(version.card, version.path)
    model = version.path / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError, match="'model.onnx' has sha256"):
        verify_files(version.card, version.path)
    model.unlink()
    with pytest.raises(ModelIntegrityError, match="missing"):
        verify_files(version.card, version.path)
