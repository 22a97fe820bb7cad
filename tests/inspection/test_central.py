"""The plant's shared model registry in a real PostgreSQL (a schema of its own per test)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from inspection.central import CentralRegistry, RegistryUnreachable, sync_station
from inspection.errors import ConfigError, ModelIntegrityError, PromotionRefused, RegistryError
from inspection.promotion import promote_gated
from inspection.registry import ModelRegistry, ModelVersion
from tests.helpers.logdb import PG_URL, pg_schema, pg_unreachable_reason
from tests.helpers.tiny_model import make_model_version, tamper_weights

pytestmark = pytest.mark.skipif(bool(pg_unreachable_reason()), reason=str(pg_unreachable_reason()))


@pytest.fixture
def schema() -> Iterator[str]:
    with pg_schema() as name:
        yield name


_opened: list[CentralRegistry] = []


@pytest.fixture(autouse=True)
def _close_registries() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


@pytest.fixture
def workstation(tmp_path: Path) -> ModelRegistry:
    """The engineer's folder, where versions are trained."""
    root = tmp_path / "trained"
    make_model_version(root, version="v1")
    make_model_version(root, version="v2")
    return ModelRegistry(root)


def _central(schema: str, cache: Path) -> CentralRegistry:
    central = CentralRegistry(PG_URL, ModelRegistry(cache), schema=schema)
    _opened.append(central)
    return central


def test_a_pushed_version_is_pulled_byte_for_byte_on_another_machine(
    schema: str, workstation: ModelRegistry, tmp_path: Path
) -> None:
    central = _central(schema, workstation.root)
    assert central.push(workstation.get("tiny", "v1")) is True
    assert central.push(workstation.get("tiny", "v1")) is False  # the same version again: nothing to do
    line_pc = _central(schema, tmp_path / "line-pc")
    pulled = line_pc.get("tiny", "v1")
    source = workstation.get("tiny", "v1")
    for name in [*source.card.files, "model.json"]:
        assert (pulled.path / name).read_bytes() == (source.path / name).read_bytes()
    assert [v["version"] for v in line_pc.list_versions("tiny")] == ["v1"]
    assert not any((tmp_path / "line-pc" / ".staging").rglob("*.onnx"))


def test_processes_sharing_a_cache_pull_a_version_once(
    schema: str, workstation: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `serve --workers 2`: two processes, one models_dir, the same promotion followed at once.
    import inspection.golden

    _central(schema, workstation.root).push(workstation.get("tiny", "v1"))
    workers = [_central(schema, tmp_path / "line-pc") for _ in range(2)]
    real, scored = inspection.golden.verify_version, []

    def slow(card: object, folder: Path) -> None:  # the golden frames take a while: the pulls overlap
        scored.append(folder)
        time.sleep(0.3)
        real(card, folder)  # type: ignore[arg-type]

    monkeypatch.setattr(inspection.golden, "verify_version", slow)
    with ThreadPoolExecutor(2) as pool:
        pulled = list(pool.map(lambda w: w.get("tiny", "v1", verify=True).model_id, workers))
    assert pulled == ["tiny/v1", "tiny/v1"]
    assert len(scored) == 1  # the second waited, then used the first one's folder (hashes checked)


@pytest.mark.parametrize("when", ["before the move", "during the move"])
def test_a_version_folder_placed_meanwhile_is_used_when_it_matches_the_central_card(
    schema: str, workstation: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    # A writer that takes no lock (another program) places the folder while this one pulls.
    import inspection.golden

    central = _central(schema, workstation.root)
    for v in ("v1", "v2"):
        central.push(workstation.get("tiny", v))
    line_pc = _central(schema, tmp_path / "line-pc")
    hook = "verify_version" if when == "before the move" else "replace"
    module = inspection.golden if hook == "verify_version" else os
    real = getattr(module, hook)
    placing: list[Path] = []

    def place_meanwhile(*args: object) -> None:
        if placing:
            target = tmp_path / "line-pc" / "tiny" / placing[0].name
            shutil.copytree(placing.pop(), target)
        real(*args)

    monkeypatch.setattr(module, hook, place_meanwhile)
    placing.append(workstation.root / "tiny" / "v1")
    assert line_pc.get("tiny", "v1").model_id == "tiny/v1"
    altered = tmp_path / "altered" / "v2"
    shutil.copytree(workstation.root / "tiny" / "v2", altered)
    (altered / "model.onnx").write_bytes((altered / "model.onnx").read_bytes() + b"\x00")  # card the central one
    placing.append(altered)
    with pytest.raises(ModelIntegrityError, match="model.onnx"):
        line_pc.get("tiny", "v2")


def test_promotions_are_central_and_line_pcs_follow_them(
    schema: str, workstation: ModelRegistry, tmp_path: Path
) -> None:
    central = _central(schema, workstation.root)
    for v in ("v1", "v2"):
        central.push(workstation.get("tiny", v))
    # The promotion gate runs on the central registry as on a folder.
    promote_gated(central, "tiny", "v1", station="line1", actor="qe", reason="first")  # type: ignore[arg-type]
    line_pc = _central(schema, tmp_path / "line-pc")
    first = sync_station(line_pc, "line1")
    assert first.changed and first.central == "tiny/v1"
    assert line_pc.cache.active("line1").model_id == "tiny/v1"  # type: ignore[union-attr]
    assert sync_station(line_pc, "line1").changed is False

    central.promote("tiny", "v2", station="line1", actor="qe", reason="new defects")
    assert sync_station(line_pc, "line1").central == "tiny/v2"
    assert line_pc.cache.active("line1").model_id == "tiny/v2"  # type: ignore[union-attr]
    event = central.rollback(station="line1", actor="qe", reason="overkill up")
    assert (event["model"], event["previous"]) == ("tiny/v1", "tiny/v2")
    sync_station(line_pc, "line1")
    assert line_pc.cache.active("line1").model_id == "tiny/v1"  # type: ignore[union-attr]
    actions = [(e["action"], e["model"], e["actor"]) for e in central.history("line1")]
    assert actions == [("promote", "tiny/v1", "qe"), ("promote", "tiny/v2", "qe"), ("rollback", "tiny/v1", "qe")]
    with pytest.raises(RegistryError, match="no earlier model to roll back to"):
        central.rollback(station="line1")
        central.rollback(station="line1")


def test_promoting_over_the_default_model_a_station_ran_makes_that_model_its_previous_one(
    schema: str, workstation: ModelRegistry
) -> None:
    central = _central(schema, workstation.root)
    for v in ("v1", "v2"):
        central.push(workstation.get("tiny", v))
    central.promote("tiny", "v1")  # station "default": line1 follows it
    assert central.active_id("line1") == "tiny/v1"
    assert central.promote("tiny", "v2", station="line1")["previous"] == "tiny/v1"
    back = central.rollback(station="line1")
    assert (back["model"], back["previous"]) == ("tiny/v1", "tiny/v2") and central.active_id("line1") == "tiny/v1"


def test_promoting_the_version_already_active_changes_nothing(schema: str, workstation: ModelRegistry) -> None:
    # As the folder registry: a second entry would make rollback "return" to the same version.
    central = _central(schema, workstation.root)
    for v in ("v1", "v2"):
        central.push(workstation.get("tiny", v))
        central.promote("tiny", v, station="line1")
    again = central.promote("tiny", "v2", station="line1", actor="qe")
    assert (again["action"], again["model"], again["previous"]) == ("already_active", "tiny/v2", "tiny/v2")
    assert [e["action"] for e in central.history("line1")] == ["promote", "promote"]  # not recorded
    back = central.rollback(station="line1")
    assert (back["model"], back["previous"]) == ("tiny/v1", "tiny/v2") and central.active_id("line1") == "tiny/v1"


def test_a_rollback_whose_check_refuses_the_earlier_version_changes_nothing(
    schema: str, workstation: ModelRegistry
) -> None:
    # `rollback_logged` passes the golden-frame check; it runs before the station's stack changes.
    central = _central(schema, workstation.root)
    for v in ("v1", "v2"):
        central.push(workstation.get("tiny", v))
        central.promote("tiny", v, station="line1")
    checked: list[str] = []

    def refuse(target: ModelVersion) -> None:
        checked.append(target.model_id)
        raise PromotionRefused(f"{target.model_id}: golden frames differ")

    with pytest.raises(PromotionRefused, match="tiny/v1: golden frames differ"):
        central.rollback(station="line1", check=refuse)
    assert checked == ["tiny/v1"] and central.active_id("line1") == "tiny/v2"
    assert [e["action"] for e in central.history("line1")] == ["promote", "promote"]


def test_a_version_whose_files_do_not_match_its_card_is_refused_at_push(
    schema: str, workstation: ModelRegistry
) -> None:
    central = _central(schema, workstation.root)
    (workstation.root / "tiny" / "v2" / "model.onnx").write_bytes(b"not the model")
    with pytest.raises(ModelIntegrityError, match="model.onnx"):
        central.push(workstation.get("tiny", "v2"))
    assert central.list_versions() == []


def test_a_version_altered_centrally_is_refused_on_every_line_pc(
    schema: str, workstation: ModelRegistry, tmp_path: Path
) -> None:
    central = _central(schema, workstation.root)
    central.push(workstation.get("tiny", "v1"))
    central.push(workstation.get("tiny", "v2"))
    central.promote("tiny", "v1", station="line1")
    line_pc = _central(schema, tmp_path / "line-pc")
    sync_station(line_pc, "line1")
    # Someone with database access swaps v2's weights (and even fixes the stored sha256).
    tampered = tmp_path / "tampered"
    make_model_version(tampered, version="v2")
    tamper_weights(tampered / "tiny" / "v2")
    content = (tampered / "tiny" / "v2" / "model.onnx").read_bytes()
    engine = sa.create_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE registry_files SET content = :c WHERE version = 'v2' AND path = 'model.onnx'"),
                     {"c": content})
    engine.dispose()
    central.promote("tiny", "v2", station="line1")  # the workstation's cache still holds the true v2
    with pytest.raises(ModelIntegrityError, match="tiny/v2: central file 'model.onnx' does not match"):
        sync_station(line_pc, "line1")
    assert line_pc.cache.active("line1").model_id == "tiny/v1"  # type: ignore[union-attr]  # still serving v1
    assert not (tmp_path / "line-pc" / "tiny" / "v2").exists()


def test_a_different_version_under_a_taken_name_is_refused(
    schema: str, workstation: ModelRegistry, tmp_path: Path
) -> None:
    central = _central(schema, workstation.root)
    central.push(workstation.get("tiny", "v1"))
    other = ModelRegistry(tmp_path / "other")
    make_model_version(other.root, version="v1", bias=0.5)
    with pytest.raises(RegistryError, match="already in the central registry with a different card"):
        central.push(other.get("tiny", "v1"))


def test_unreachable_and_bad_urls_are_named(tmp_path: Path) -> None:
    with pytest.raises(RegistryUnreachable, match="unreachable while opening the registry"):
        CentralRegistry("postgresql+psycopg://postgres@127.0.0.1:1/x", ModelRegistry(tmp_path), timeout_s=1)
    with pytest.raises(ConfigError, match="the central registry lives in PostgreSQL"):
        CentralRegistry("sqlite:///x.db", ModelRegistry(tmp_path))
    with pytest.raises(ConfigError, match="not a database url"):
        CentralRegistry("models/", ModelRegistry(tmp_path))


def test_the_cli_pushes_pulls_and_promotes_centrally(
    schema: str, workstation: ModelRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inspection.cli import main as cli

    url = make_url(PG_URL).set(query={"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    trained, line_pc = str(workstation.root), str(tmp_path / "line-pc")
    assert cli(["models", "push", "tiny/v1", "--models-dir", trained, "--registry-url", url, "--actor", "qe"]) == 0
    assert "tiny/v1 stored in the central registry" in capsys.readouterr().out
    assert cli(["models", "promote", "tiny/v1", "--models-dir", trained, "--registry-url", url,
                "--station", "line1"]) == 0
    assert cli(["models", "pull", "tiny/v1", "--models-dir", line_pc, "--registry-url", url]) == 0
    assert "golden frames re-scored" in capsys.readouterr().out
    assert ModelRegistry(Path(line_pc)).get("tiny", "v1", verify=True)
    central = _central(schema, Path(line_pc))
    assert central.active_id("line1") == "tiny/v1"
    capsys.readouterr()
    assert cli(["models", "list", "--registry-url", url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["model"], v["pushed_by"], v["active_for"]) for v in listed] == [("tiny/v1", "qe", ["line1"])]
    # Bad input: a version the central registry lacks, no url at all.
    assert cli(["models", "pull", "tiny/v9", "--models-dir", line_pc, "--registry-url", url]) == 2
    assert "no model tiny/v9 in the central registry; known: ['tiny/v1']" in capsys.readouterr().err
    assert cli(["models", "push", "tiny/v1", "--models-dir", trained, "--registry-url", ""]) == 2
    assert "no central registry given: pass --registry-url" in capsys.readouterr().err


def test_promotions_at_the_same_moment_are_both_kept(schema: str, workstation: ModelRegistry) -> None:
    import threading

    central = _central(schema, workstation.root)
    for v in ("v1", "v2"):
        central.push(workstation.get("tiny", v))
    others = [_central(schema, workstation.root) for _ in range(2)]
    start = threading.Barrier(2)

    def promote(reg: CentralRegistry, version: str) -> None:
        start.wait()
        reg.promote("tiny", version, station="line1", actor=version)

    threads = [threading.Thread(target=promote, args=(reg, v)) for reg, v in zip(others, ("v1", "v2"), strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    history = central.history("line1")
    assert sorted(e["model"] for e in history) == ["tiny/v1", "tiny/v2"]
    # The row lock ordered them: the second names the first as its previous model.
    assert history[0]["previous"] is None and history[1]["previous"] == history[0]["model"]
    assert central.active_id("line1") == history[1]["model"]
