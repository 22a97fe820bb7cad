"""Schemathesis against the labelling API (/v1/labelling) on both stores: no input, valid or
not, makes it answer 5xx, and nothing it refuses is written. Bounded: a few examples each."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.generation.modes import GenerationMode

from inspection import labels as L
from serving import admin, labelling
from serving.app import create_app
from serving.settings import build_settings
from tests.helpers.fuzz import assert_never_5xx
from tests.helpers.logdb import log_factory
from tests.helpers.tiny_model import frame_png
from tests.serving.conftest import auth, settings_data


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_labelling_api_never_answers_5xx(tmp_path: Path, models_dir: Path, keys: dict[str, str], store: str) -> None:
    settings = build_settings(settings_data(tmp_path, models_dir, keys, frame_sample_rate=1.0,
                                            labelling={"classes": ["good", "scratch", "dent"]}))
    routers = [admin.build_health_router, labelling.build_router]
    with log_factory(store, tmp_path) as factory:
        # SQLite: the store the app opens from its settings; PostgreSQL: one in a schema of its own.
        log_store = None if store == "sqlite" else factory.open(frame_sample_rate=1.0)
        with TestClient(create_app(settings, routers=routers, log_store=log_store)) as client:
            _run(client, keys)


def _run(client: TestClient, keys: dict[str, str]) -> None:
    log = client.app.state.log  # type: ignore[attr-defined]
    (frame,) = L.import_unlabelled(log, [("a.png", frame_png(90))], actor="test")
    fid = frame.entry.inspection_id
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app).include(path_regex="^/v1/labelling")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 5
    seen: dict[str, set[int]] = {}

    headers = auth(keys, "engineer")
    for op in operations:
        for mode in ("positive", "negative"):
            strategies = [op.as_strategy(GenerationMode(mode))]
            if "{frame_id}" in op.path:
                strategies.append(op.as_strategy(GenerationMode(mode), path_parameters={"frame_id": fid}))
            for strategy in strategies:
                assert_never_5xx(op.path, strategy, headers=headers, mode=mode, max_examples=6, seen=seen)
    assert log.verify().ok
    # Every stored label is valid: a class of the list, a consecutive revision.
    hist = L.history(log, fid)
    assert [h.revision for h in hist.history] == list(range(1, hist.revision + 1))
    assert all(h.label in (None, "good", "scratch", "dent") for h in hist.history)
    assert {"/v1/labelling/queue", "/v1/labelling/frames/{frame_id}/labels"} <= set(seen)
