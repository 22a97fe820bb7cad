"""Route handlers get the app's state through typed dependencies (serving.deps)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import ServeSettings
from tests.serving.conftest import auth


def test_a_request_before_start_up_gets_a_clear_503_not_an_attribute_error(settings: ServeSettings,
                                                                             keys: dict[str, str]) -> None:
    client = TestClient(create_app(settings))  # no `with`: the lifespan never runs
    r = client.get("/v1/models", headers=auth(keys, "engineer"))
    assert r.status_code == 503 and r.json()["error"] == "not_ready"
    assert "model manager is not up" in r.json()["detail"]
    r = client.get("/v1/audit/records", headers=auth(keys, "auditor"))
    assert r.status_code == 503 and "inspection log is not up" in r.json()["detail"]
    assert client.get("/readyz").json() == {"status": "starting"}
    # The key is checked first: no key is a 401 whether or not the server has started.
    assert client.get("/v1/models").status_code == 401


def test_started_routes_answer_from_the_app_state(settings: ServeSettings, keys: dict[str, str]) -> None:
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/models", headers=auth(keys, "engineer")).json()["stations"]
        assert client.get("/v1/admin/settings", headers=auth(keys, "admin")).status_code == 200
        metrics = client.get("/metrics", headers=auth(keys, "engineer"))
        assert metrics.status_code == 200 and "inspection_queue_depth 0.0" in metrics.text
