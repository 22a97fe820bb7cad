"""Schemathesis against the app's OpenAPI schema (the /v1/audit operations): no input,
valid or not, makes the audit API answer 5xx. Bounded: a few examples per operation."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.generation.modes import GenerationMode

from inspection.log.records import LogEntry
from serving import admin, audit
from serving.app import create_app
from serving.settings import ServeSettings
from tests.helpers.fuzz import assert_never_5xx
from tests.helpers.logdb import log_factory
from tests.serving.conftest import auth

EXAMPLES = {"positive": 12, "negative": 8}


@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_audit_api_never_answers_5xx(
    settings: ServeSettings, keys: dict[str, str], tmp_path: Path, mode: str, store: str
) -> None:
    # The real app factory, with the routers this test is about (health + audit), so another
    # router's schema problem cannot hide or fake a result here.
    routers = [admin.build_health_router, audit.build_router]
    with log_factory(store, tmp_path) as factory:
        # SQLite: the store the app opens from its settings; PostgreSQL: one in a schema of its own.
        log_store = None if store == "sqlite" else factory.open()
        with TestClient(create_app(settings, routers=routers, log_store=log_store)) as client:
            _run(client, keys, mode)


def _run(client: TestClient, keys: dict[str, str], mode: str) -> None:
    log = client.app.state.log
    real = log.append(LogEntry(kind="inspection", part_id="P1", decision="reject", scores={"ok": 0.1}),
                      frame=b"\x89PNG\r\n\x1a\nnot-really")
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app).include(path_regex="^/v1/audit")
    headers = auth(keys, "auditor")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/audit/records", "/v1/audit/records/{inspection_id}",
                                              "/v1/audit/export", "/v1/audit/verify"}
    seen: dict[str, set[int]] = {}

    for op in operations:
        strategies = [op.as_strategy(GenerationMode(mode))]
        if "{inspection_id}" in op.path:
            strategies.append(
                op.as_strategy(GenerationMode(mode), path_parameters={"inspection_id": real.entry.inspection_id})
            )
        for strategy in strategies:
            assert_never_5xx(op.path, strategy, headers=headers, mode=mode, max_examples=EXAMPLES[mode], seen=seen)
    assert log.verify().ok
    # Every operation with something to vary was exercised, including with invalid input.
    assert {"/v1/audit/records", "/v1/audit/export", "/v1/audit/records/{inspection_id}/dispositions"} <= set(seen)


def _route_roles(app: Any) -> dict[tuple[str, str], str | None]:
    """(METHOD, path) -> a role the route admits (None for open routes), read from its Require."""
    from fastapi.routing import APIRoute, iter_route_contexts

    from serving.auth import Require

    out: dict[tuple[str, str], str | None] = {}
    for ctx in iter_route_contexts(app.routes):
        route = ctx.original_route
        if not isinstance(route, APIRoute):
            continue
        stack, roles = [getattr(ctx, "dependant", None) or route.dependant], set()
        while stack:
            dep = stack.pop()
            if isinstance(dep.call, Require):
                roles |= dep.call.roles
            stack.extend(dep.dependencies)
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", ctx.path)  # the schema names {part_id}, not {part_id:path}
        for method in ctx.methods or route.methods:
            out[(method.upper(), path)] = min(roles) if roles else None
    return out


def test_whole_app_schema_never_answers_5xx(client: TestClient, keys: dict[str, str]) -> None:
    # Every HTTP operation of the assembled app, called with a key its route admits; a few
    # valid and a few invalid examples each (bounded: the audit operations get more above).
    roles = _route_roles(client.app)
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    seen: dict[str, set[int]] = {}

    for result in schema.get_all_operations():
        op = result.ok()
        role = roles[(op.method.upper(), op.path)]
        for mode in ("positive", "negative"):
            assert_never_5xx(op.path, op.as_strategy(GenerationMode(mode)), headers=auth(keys, role) if role else {},
                             mode=mode, max_examples=5, seen=seen)
    assert len(seen) >= 10
    # The keys were right: the audit routes answered something other than 401/403.
    assert seen["/v1/audit/verify"] == {200}
