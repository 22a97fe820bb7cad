"""`inspection serve --new-key`: the key is printed once, and its entry is what settings accept; bad flags
are refused before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspection.cli import main
from serving.settings import hash_key, load_settings


def test_new_key_prints_a_key_and_the_settings_entry_that_accepts_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--new-key", "line:plc-gateway"]) == 0
    out = capsys.readouterr().out.splitlines()
    key = out[0].rsplit(": ", 1)[1]
    entry = out[-1]
    path = tmp_path / "serve.yaml"
    path.write_text(f"stations: {{s: {{cameras: [top]}}}}\napi_keys:\n{entry}\n", encoding="utf-8")
    [api_key] = load_settings(path).api_keys
    assert (api_key.name, api_key.role, api_key.sha256) == ("plc-gateway", "line", hash_key(key))
    assert main(["serve", "--new-key", "line:plc-gateway"]) == 0
    assert capsys.readouterr().out.splitlines()[0].rsplit(": ", 1)[1] != key  # a new random key every time


@pytest.mark.parametrize("spec", ["boss:x", "line", "line:", ":x"])
def test_new_key_refuses_an_unknown_role_or_a_missing_name(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--new-key", spec]) == 2
    err = capsys.readouterr().err
    roles = "['line', 'engineer', 'auditor', 'admin', 'viewer']"
    assert f"--new-key {spec!r}: expected ROLE:NAME with ROLE one of {roles}" in err


@pytest.mark.parametrize("port", ["70000", "-1", "65536", "http"])
def test_a_port_outside_0_to_65535_is_refused(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--demo", f"--port={port}"])
    assert exc.value.code == 2
    assert f"argument --port: {port!r} is not a TCP port; allowed 0..65535" in capsys.readouterr().err
