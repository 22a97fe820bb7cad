"""Serving fixtures: a real tiny ONNX model in a registry, real settings, the real app and log."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inspection.registry import ModelRegistry
from serving.app import create_app
from serving.settings import ROLES, ServeSettings, build_settings, hash_key
from tests.helpers.tiny_model import make_model_version

STATION = "press-1"
CAMERAS = ["top", "side"]
SINGLE = "press-2"  # a one-camera station


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    make_model_version(root, version="v1")
    registry = ModelRegistry(root)
    registry.promote("tiny", "v1", station=STATION)
    registry.promote("tiny", "v1", station=SINGLE)
    return root


@pytest.fixture
def keys() -> dict[str, str]:
    """A fresh random key per role."""
    return {role: secrets.token_urlsafe(24) for role in ROLES}


def settings_data(tmp_path: Path, models_dir: Path, keys: dict[str, str], **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "models_dir": str(models_dir),
        "log_url": f"sqlite:///{tmp_path / 'var' / 'log.db'}",
        "log_sqlite_synchronous": "NORMAL",
        "stations": {
            STATION: {"cameras": CAMERAS, "part_deadline_ms": 400},
            SINGLE: {"cameras": ["cam"], "part_deadline_ms": 400},
        },
        "reload_poll_s": 0.05,
        "api_keys": [{"name": f"{role}-key", "role": role, "sha256": hash_key(k)} for role, k in keys.items()],
    }
    data.update(over)
    return data


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path, keys: dict[str, str]) -> ServeSettings:
    return build_settings(settings_data(tmp_path, models_dir, keys))


@pytest.fixture
def client(settings: ServeSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def auth(keys: dict[str, str], role: str = "line") -> dict[str, str]:
    return {"Authorization": f"Bearer {keys[role]}"}


def post_frame(client: TestClient, keys: dict[str, str], body: bytes, *, station: str = SINGLE, camera: str = "cam",
               part_id: str | None = "p-1", content_type: str = "image/png", role: str = "line",
               headers: dict[str, str] | None = None, **params: Any) -> Any:
    """POST a frame with its target as query parameters (None leaves one out)."""
    query = {"station": station, "camera": camera, "part_id": part_id, **params}
    query = {k: v for k, v in query.items() if v is not None}
    return client.post("/v1/inspections", params=query, content=body,
                       headers={**auth(keys, role), "content-type": content_type, **(headers or {})})


def all_records(client: TestClient) -> list[Any]:
    """Every record of the app's log, oldest first."""
    from inspection.log.query import query_records

    store = client.app.state.log  # type: ignore[attr-defined]
    out: list[Any] = []
    cursor = None
    while True:
        page = query_records(store, None, cursor=cursor, limit=1000, order="asc")
        out += page.records
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


def decided(client: TestClient, keys: dict[str, str], part_id: str, station: str = SINGLE) -> dict[str, Any]:
    """The part's decision, waiting for it (part records are written right after the view's answer)."""
    r = client.get(f"/v1/parts/{part_id}/decision", params={"station": station, "wait_ms": 5000}, headers=auth(keys))
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def no_infrastructure_details() -> Iterator[None]:
    """Every answer any httpx client gets during the test is checked for hosts, ports, paths, SQL,
    driver messages and tracebacks (tests/helpers/leaks.py); the test fails listing each leak."""
    from tests.helpers.leaks import watching_responses

    with watching_responses() as leaks:
        yield
    assert not leaks, "answers carried infrastructure details:\n" + "\n".join(leaks[:20])
