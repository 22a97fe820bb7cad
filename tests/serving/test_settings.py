"""Settings: file (YAML/JSON) + explicit environment mapping, validated once, unsafe values refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inspection.errors import ConfigError
from serving.settings import hash_key, load_settings

KEY = {"name": "plc", "role": "line", "sha256": hash_key("a-long-random-key-for-tests")}


def _write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_file_then_environment_then_overrides(tmp_path: Path) -> None:
    path = _write_yaml(tmp_path / "serve.yaml", f"""
models_dir: models
frames_dir: var/frames
stations:
  press-1: {{cameras: [top, side], part_deadline_ms: 250}}
api_keys:
  - {json.dumps(KEY)}
""")
    env = {"INSPECTION_BATCHING__MAX_DELAY_MS": "1.5", "INSPECTION_RUNTIME__INTRA_OP_THREADS": "2",
           "INSPECTION_STATIONS__PRESS-1__PART_DEADLINE_MS": "300", "UNRELATED": "x", "INSPECTION_NOT_A_FIELD": "1"}
    settings = load_settings(path, env=env, overrides={"port": 9001})
    assert settings.models_dir == tmp_path / "models"  # relative to the file, not the cwd
    assert settings.frames_dir == tmp_path / "var" / "frames"
    assert settings.stations["press-1"].cameras == ["top", "side"]
    assert settings.stations["press-1"].part_deadline_ms == 300
    assert settings.batching.max_delay_ms == 1.5 and settings.batching.max_batch == 16
    assert settings.runtime.resolved_intra_op_threads() == 2
    assert settings.max_body_bytes == 20 * 1024 * 1024 and settings.port == 9001
    assert "sha256" not in json.dumps(settings.redacted())


def test_a_database_password_in_the_query_string_is_hidden_too() -> None:
    # libpq and psycopg take the password as ?password=... as well as in user:password@.
    from serving.settings import ServeSettings

    settings = ServeSettings(demo=True, stations={"s": {"cameras": ["c"]}},
                             log_url="postgresql+psycopg://inspector@db/log?password=S3cret&sslmode=require",
                             registry={"url": "postgresql+psycopg://reg:R3g@central/models?sslpassword=K3y"})
    shown = json.dumps(settings.redacted())
    assert "S3cret" not in shown and "R3g" not in shown and "K3y" not in shown
    assert "sslmode=require" in shown


def test_json_file_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"stations": {"s": {"cameras": ["c"]}}, "api_keys": [KEY]}), encoding="utf-8")
    assert load_settings(path).stations["s"].part_deadline_ms == 500


@pytest.mark.parametrize("text, message", [
    ("stations: {}\napi_keys: [" + json.dumps(KEY) + "]", "stations: Dictionary should have at least 1 item"),
    ("stations: {s: {cameras: []}}\napi_keys: [" + json.dumps(KEY) + "]", "stations.s.cameras"),
    ("stations: {s: {cameras: [a, a]}}\napi_keys: [" + json.dumps(KEY) + "]", "camera names must be unique"),
    ("stations: {'bad name': {cameras: [a]}}\napi_keys: [" + json.dumps(KEY) + "]",
     "station names ['bad name'] are invalid"),
    ("stations: {s: {cameras: [a]}}\nbatching: {max_delay_ms: -1}\napi_keys: [" + json.dumps(KEY) + "]",
     "batching.max_delay_ms"),
    ("stations: {s: {cameras: [a]}}\nbatchng: {}\napi_keys: [" + json.dumps(KEY) + "]", "batchng: Extra inputs"),
    ("stations: {s: {cameras: [a]}}\napi_keys: [{name: k, role: boss, sha256: " + KEY["sha256"] + "}]",
     "api_keys.0.role"),
    ("stations: {s: {cameras: [a]}}\napi_keys: [{name: k, role: line, sha256: abc}]", "64 hex digits"),
    ("stations: {s: {cameras: [a]}}\napi_keys: []", "no api_keys configured"),
    ("stations: {s: {cameras: [a]}}\napi_keys: [{name: k, role: admin, sha256: " + hash_key("changethis") + "}]",
     "well-known default key"),
    # A part id longer than the log's part_id column would be scored and then not logged.
    ("stations: {s: {cameras: [a]}}\nmax_part_id_length: 300\napi_keys: [" + json.dumps(KEY) + "]",
     "max_part_id_length: Input should be less than or equal to 256"),
    ("- just a list", "must hold a mapping"),
    ("stations: {s: [", "not valid YAML"),
])
def test_invalid_settings_are_refused_with_the_field_and_reason(tmp_path: Path, text: str, message: str) -> None:
    path = _write_yaml(tmp_path / "serve.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert message in str(err.value)


def test_missing_file_and_bad_environment_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    path = _write_yaml(tmp_path / "s.yaml", "stations: {s: {cameras: [a]}}\napi_keys: [" + json.dumps(KEY) + "]")
    with pytest.raises(ConfigError, match="INSPECTION_BATCHING__MAX_BATCH"):
        load_settings(path, env={"INSPECTION_BATCHING__MAX_BATCH": "[unclosed"})
    with pytest.raises(ConfigError, match="batching.max_batch"):
        load_settings(path, env={"INSPECTION_BATCHING__MAX_BATCH": "0"})
