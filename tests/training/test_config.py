"""Config: YAML defaults, flags win, targets exclusive, errors name the key, saved and reloaded."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from inspection.errors import ConfigError
from training.config import CONFIG_DIR, TrainConfig, load_config, save_config


def test_defaults_then_file_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 7\nimage_size: 96\naugment:\n  rot90: false\n  noise_p: 0.5\n")
    cfg = load_config(f, {"epochs": 3, "arch": None})
    assert cfg.epochs == 3  # flag wins
    assert cfg.image_size == 96  # file beats default
    assert cfg.arch == "linecnn"  # None flag = not given: default.yaml's value stands
    assert cfg.augment.rot90 is False and cfg.augment.noise_p == 0.5
    assert cfg.augment.hflip is None  # left to the recipe (the dataset's orientation)


def test_default_leaves_data_dependent_settings_to_the_recipe() -> None:
    cfg = load_config(None, {})
    open_settings = {
        k
        for k in ("image_size", "input_shape", "epochs", "batch_size", "patience", "min_epochs", "balance", "threads")
        if getattr(cfg, k) is None
    }
    assert open_settings == {
        "image_size",
        "input_shape",
        "epochs",
        "batch_size",
        "patience",
        "min_epochs",
        "balance",
        "threads",
    }
    assert cfg.geometry == "letterbox" and cfg.ema


def test_max_overkill_flag_replaces_the_default_escape_target() -> None:
    assert load_config(None, {}).target == {"max_escape": 0.01}
    assert load_config(None, {"max_overkill": 0.02}).target == {"max_overkill": 0.02}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "epochs=0"),
        ({"max_escape": 1.5}, "max_escape=1.5"),
        ({"val_fraction": 0.45, "test_fraction": 0.45}, "leaves too little to train"),
        ({"balance": "magic"}, "balance='magic'"),
        ({"unknown_key": 1}, "unknown_key"),
        ({"seed": -1}, "seed=-1: Input should be greater than or equal to 0"),
        ({"seed": 2**32}, "seed=4294967296: Input should be less than 4294967296"),
        ({"tiles": "99x99"}, "tiles='99x99': Value error, rows and columns must each be 1..16"),
        ({"tiles": "2x17"}, "tiles='2x17'"),
        ({"roi": (0, 0, 0, 0)}, "roi=(0, 0, 0, 0): Value error, x, y >= 0 and width, height > 0 are required"),
        ({"roi": (-5, -5, 10, 10)}, "roi=(-5, -5, 10, 10)"),
        # The card takes no other name: refused at start, not after the whole run.
        ({"name": "prüfung"}, "name='prüfung': Value error, a model name takes letters A-Z a-z, digits and _ . -"),
        ({"name": "x" * 129}, "a model name takes"),
    ],
)
def test_invalid_values_name_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml is not UTF-8 text \(byte 0xe9 at offset 9\)"):
        load_config(latin1)
    with pytest.raises(ConfigError, match=r"cannot be read \(Is a directory\)"):
        load_config(tmp_path)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
def test_shipped_configs_are_valid(name: str) -> None:
    load_config(CONFIG_DIR / name)


def test_saved_config_reloads_to_the_same_config(tmp_path: Path) -> None:
    cfg = load_config(None, {"data": tmp_path, "epochs": 4, "max_overkill": 0.05})
    save_config(cfg, tmp_path / "config.yaml")
    again = TrainConfig.model_validate(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == cfg


def test_an_escape_target_given_for_an_anomaly_model_is_refused_naming_the_overkill_target(tmp_path: Path) -> None:
    # It was silently replaced by max_overkill 0.01; the packaged default escape target still is.
    with pytest.raises(ConfigError, match=r"--max-escape 0\.05 \(flag or config file\) with --mode anomaly: .* "
                                          r"give --max-overkill RATE instead"):
        load_config(None, {"mode": "anomaly", "max_escape": 0.05})
    line = tmp_path / "line.yaml"
    line.write_text("max_escape: 0.05\n")
    with pytest.raises(ConfigError, match="--max-overkill"):
        load_config(line, {"mode": "anomaly"})
    assert load_config(line, {"mode": "anomaly", "max_overkill": 0.02}).target == {"max_overkill": 0.02}
    assert load_config(None, {"mode": "anomaly"}).max_overkill is None  # training.train then sets 0.01
