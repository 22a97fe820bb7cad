"""Schemathesis against the labelling API (/v1/labelling) on both stores: no input, valid or
not, makes it answer 5xx, and nothing it refuses is written. Bounded: a few examples each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from inspection import labels as L
from serving import admin, labelling
from serving.app import create_app
from serving.settings import build_settings
from tests.helpers.logdb import LogFactory, pg_schema, pg_unreachable_reason
from tests.helpers.tiny_model import frame_png
from tests.serving.conftest import auth, settings_data


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_labelling_api_never_answers_5xx(tmp_path: Path, models_dir: Path, keys: dict[str, str], store: str) -> None:
    settings = build_settings(settings_data(tmp_path, models_dir, keys, frame_sample_rate=1.0,
                                            labelling={"classes": ["good", "scratch", "dent"]}))
    routers = [admin.build_health_router, labelling.build_router]
    if store == "sqlite":
        with TestClient(create_app(settings, routers=routers)) as client:
            _run(client, keys)
        return
    reason = pg_unreachable_reason()
    if reason:
        pytest.skip(reason)
    with pg_schema() as schema:
        factory = LogFactory("postgresql", tmp_path, schema)
        try:
            with TestClient(create_app(settings, routers=routers, log_store=factory.open(frame_sample_rate=1.0))) as client:
                _run(client, keys)
        finally:
            factory.close_all()


def _run(client: TestClient, keys: dict[str, str]) -> None:
    log = client.app.state.log  # type: ignore[attr-defined]
    (frame,) = L.import_unlabelled(log, [("a.png", frame_png(90))], actor="test")
    fid = frame.entry.inspection_id
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app).include(path_regex="^/v1/labelling")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 5
    seen: dict[str, set[int]] = {}

    def run(path: str, strategy: Any, mode: str) -> None:
        @given(case=strategy)
        @settings(max_examples=6, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            response = case.call(headers=auth(keys, "engineer"))
            seen.setdefault(path, set()).add(response.status_code)
            assert response.status_code < 500, f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"

        try:
            check()
        except Unsatisfiable:
            assert mode == "negative", path

    for op in operations:
        for mode in ("positive", "negative"):
            run(op.path, op.as_strategy(GenerationMode(mode)), mode)
            if "{frame_id}" in op.path:
                run(op.path, op.as_strategy(GenerationMode(mode), path_parameters={"frame_id": fid}), mode)
    assert log.verify().ok
    # Every stored label is valid: a class of the list, a consecutive revision.
    hist = L.history(log, fid)
    assert [h.revision for h in hist.history] == list(range(1, hist.revision + 1))
    assert all(h.label in (None, "good", "scratch", "dent") for h in hist.history)
    assert {"/v1/labelling/queue", "/v1/labelling/frames/{frame_id}/labels"} <= set(seen)
