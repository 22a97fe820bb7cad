"""A line PC following the plant's central registry (real PostgreSQL, the network to it cut by a real proxy)."""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import NoReturn

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from inspection.central import CentralRegistry
from inspection.errors import InspectionError
from inspection.registry import ModelRegistry
from serving.app import create_app
from serving.settings import build_settings
from tests.helpers.logdb import PG_URL, pg_schema, pg_unreachable_reason
from tests.helpers.tcpproxy import TcpProxy
from tests.helpers.tiny_model import BRIGHT, frame_png, make_model_version
from tests.serving.conftest import SINGLE, STATION, auth, post_frame, settings_data

pytestmark = [pytest.mark.postgres,
              pytest.mark.skipif(bool(pg_unreachable_reason()), reason=str(pg_unreachable_reason()))]


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[tuple[CentralRegistry, str, TcpProxy]]:
    """The central registry (tiny/v1 and v2 pushed, v1 active on both stations) and its url
    as the line PC reaches it: through a proxy the test can cut."""
    with pg_schema() as schema:
        workstation = ModelRegistry(tmp_path / "trained")
        make_model_version(workstation.root, version="v1")
        make_model_version(workstation.root, version="v2", bias=0.3)
        central = CentralRegistry(PG_URL, workstation, schema=schema)
        for v in ("v1", "v2"):
            central.push(workstation.get("tiny", v), actor="qe")
        for station in (STATION, SINGLE):
            central.promote("tiny", "v1", station=station, actor="qe")
        parsed = make_url(PG_URL)
        proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432))
        url = parsed.set(port=proxy.port, query={"options": f"-csearch_path={schema}"})
        try:
            yield central, url.render_as_string(hide_password=False), proxy
        finally:
            proxy.close()
            central.close()


def _settings(tmp_path: Path, keys: dict[str, str], url: str, **registry: object) -> object:
    return build_settings(settings_data(tmp_path, tmp_path / "line-pc", keys,
                                        registry={"url": url, "poll_s": 0.1, "timeout_s": 1, **registry}))


def _until(check: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_a_line_pc_starts_from_the_central_registry_and_follows_promotions(
    tmp_path: Path, keys: dict[str, str], plant: tuple[CentralRegistry, str, TcpProxy]
) -> None:
    central, url, _ = plant
    with TestClient(create_app(_settings(tmp_path, keys, url))) as client:  # type: ignore[arg-type]
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["models"][SINGLE] == "tiny/v1"
        assert ready["registry"]["reachable"] is True and ready["registry"]["last_sync"]
        central.promote("tiny", "v2", station=SINGLE, actor="qe", reason="new defect type")
        _until(lambda: client.get("/readyz").json()["models"][SINGLE] == "tiny/v2")
        answer = post_frame(client, keys, frame_png(BRIGHT), part_id="after-swap").json()
        assert answer["model_version"] == "tiny/v2"
        assert client.get("/readyz").json()["models"][STATION] == "tiny/v1"  # the other station stays
        history = ModelRegistry(tmp_path / "line-pc").history(SINGLE)
        assert [e["actor"] for e in history] == ["central-registry", "central-registry"]


def test_an_unreachable_registry_keeps_the_verified_model_serving_and_is_reported(
    tmp_path: Path, keys: dict[str, str], plant: tuple[CentralRegistry, str, TcpProxy]
) -> None:
    central, url, proxy = plant
    settings = _settings(tmp_path, keys, url)
    with TestClient(create_app(settings)) as client:  # type: ignore[arg-type]
        proxy.cut()
        _until(lambda: client.get("/readyz").json()["registry"]["reachable"] is False)
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["registry"]["error"]  # still ready: verified model
        assert "inspection_registry_reachable 0.0" in client.get("/metrics", headers=auth(keys, "admin")).text
        assert post_frame(client, keys, frame_png(BRIGHT), part_id="offline").json()["model_version"] == "tiny/v1"
        central.promote("tiny", "v2", station=SINGLE, actor="qe")  # while the line PC cannot see it
        time.sleep(0.5)
        assert client.get("/readyz").json()["models"][SINGLE] == "tiny/v1"
        proxy.restore()  # the registry returns: the line PC catches up
        _until(lambda: client.get("/readyz").json()["models"][SINGLE] == "tiny/v2")
        assert client.get("/readyz").json()["registry"]["reachable"] is True
        assert "inspection_registry_reachable 1.0" in client.get("/metrics", headers=auth(keys, "admin")).text

    # A restart while the registry is down serves the verified local copy (offline_start) ...
    proxy.cut()
    with TestClient(create_app(settings)) as client:  # type: ignore[arg-type]
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["models"][SINGLE] == "tiny/v2"
        assert ready["registry"]["reachable"] is False
    # ... or refuses to start when the plant asks for that.
    strict = _settings(tmp_path, keys, url, offline_start=False)
    with (pytest.raises(InspectionError, match="central model registry is unreachable at start"),
          TestClient(create_app(strict))):  # type: ignore[arg-type]
        pass


def _no_space(*args: object, **kwargs: object) -> NoReturn:
    raise OSError(errno.ENOSPC, "No space left on device", str(args[0]) if args else None)


def test_a_full_disk_while_following_the_registry_is_reported_and_the_watch_goes_on(
    tmp_path: Path, keys: dict[str, str], plant: tuple[CentralRegistry, str, TcpProxy],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    import inspection.central
    import inspection.registry

    central, url, _ = plant
    with TestClient(create_app(_settings(tmp_path, keys, url))) as client:  # type: ignore[arg-type]
        # The line PC's disk fills up: first while pulling the promoted version ...
        monkeypatch.setattr(inspection.central, "tempfile", SimpleNamespace(mkdtemp=_no_space))
        central.promote("tiny", "v2", station=SINGLE, actor="qe")
        _until(lambda: SINGLE in client.get("/readyz").json()["registry"]["refused"])
        refused = client.get("/readyz").json()["registry"]["refused"][SINGLE]
        assert "cannot pull tiny/v2" in refused and "No space left on device" in refused
        # ... then while promoting it locally (active.json cannot be written)
        monkeypatch.undo()
        monkeypatch.setattr(inspection.registry, "tempfile", SimpleNamespace(mkstemp=_no_space))
        _until(lambda: "No space left on device" in (client.get("/readyz").json()["registry"]["error"] or ""))
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["models"][SINGLE] == "tiny/v1"  # still serving v1
        metrics = client.get("/metrics", headers=auth(keys, "admin")).text
        failures = re.search(r"^inspection_registry_watch_failures_total (\S+)$", metrics, re.MULTILINE)
        assert failures and float(failures[1]) >= 1
        # Room again: the watch, still running, follows the promotion.
        monkeypatch.undo()
        _until(lambda: client.get("/readyz").json()["models"][SINGLE] == "tiny/v2")
        registry = client.get("/readyz").json()["registry"]
        assert registry["error"] is None and registry["refused"] == {}
