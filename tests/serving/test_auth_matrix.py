"""Every route x every role: 401 without a key, 403 for a role the route does not admit.

The matrix is read from the app's own routes (each declares its roles with
``Depends(Require(...))``), so routes added by other packages are covered automatically; a
route with no role declaration must be listed in ``serving.auth.OPEN_ROUTES`` or this test fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from fastapi.testclient import TestClient
from starlette.routing import Route
from starlette.testclient import WebSocketDenialResponse

from serving.auth import OPEN_ROUTES, Require
from serving.settings import ROLES, build_settings
from tests.serving.conftest import SINGLE, settings_data

OPEN = OPEN_ROUTES


def _required_roles(dependant) -> frozenset[str] | None:  # type: ignore[no-untyped-def]
    found: set[str] = set()
    declared = False
    stack = [dependant]
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, Require):
            declared = True
            found |= dep.call.roles
        stack.extend(dep.dependencies)
    return frozenset(found) if declared else None


def _routes(app) -> Iterator[tuple[str, str, frozenset[str] | None]]:  # type: ignore[no-untyped-def]
    # iter_route_contexts flattens included routers (with their prefixes) the way FastAPI serves them.
    for ctx in iter_route_contexts(app.routes):
        route = ctx.original_route
        dependant = getattr(ctx, "dependant", None) or getattr(route, "dependant", None)
        if isinstance(route, APIRoute):
            for method in sorted((ctx.methods or route.methods) - {"HEAD"}):
                yield method, ctx.path, _required_roles(dependant)
        elif isinstance(route, APIWebSocketRoute):
            yield "WS", ctx.path, _required_roles(dependant)
        elif isinstance(route, Route):
            yield "GET", ctx.path, None
        else:
            raise TypeError(f"unexpected route type {type(route).__name__} at {ctx.path}")


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def _call(client: TestClient, method: str, path: str, headers: dict[str, str]) -> int:
    url = _concrete(path)
    if method == "WS":
        try:
            with client.websocket_connect(f"{url}?station={SINGLE}&camera=cam", headers=headers) as ws:
                ws.close()
            return 101
        except WebSocketDenialResponse as denial:
            return denial.status_code
    params = {"station": SINGLE, "wait_ms": 0} if "/parts/" in path else {}
    return client.request(method, url, params=params, headers=headers).status_code


@pytest.fixture
def app_client(tmp_path, models_dir, keys):
    from serving.app import create_app

    with TestClient(create_app(build_settings(settings_data(tmp_path, models_dir, keys)))) as client:
        yield client


def test_every_route_answers_401_403_or_serves_by_role(app_client: TestClient, keys) -> None:
    routes = list(_routes(app_client.app))
    assert ("POST", "/v1/inspections", frozenset({"line"})) in routes
    assert any(method == "WS" for method, _, _ in routes)
    undeclared = [(m, p) for m, p, roles in routes if roles is None and p not in OPEN]
    assert undeclared == [], f"routes without Require(...) and not in OPEN: {undeclared}"
    problems = []
    for method, path, roles in routes:
        if roles is None:
            status = _call(app_client, method, path, {})
            if status in (401, 403):
                problems.append((method, path, "open", status))
            continue
        for who, headers in [("no key", {}), ("unknown key", {"X-API-Key": "not-a-configured-key"})]:
            status = _call(app_client, method, path, headers)
            if status != 401:
                problems.append((method, path, who, status))
        for role in ROLES:
            # Both header styles are accepted; alternate them across roles.
            headers = {"Authorization": f"Bearer {keys[role]}"} if ROLES.index(role) % 2 else {"X-API-Key": keys[role]}
            status = _call(app_client, method, path, headers)
            expected_denied = role not in roles
            if expected_denied and status != 403:
                problems.append((method, path, role, status))
            if not expected_denied and status in (401, 403):
                problems.append((method, path, role, status))
    assert problems == []


def test_keys_are_refused_when_empty_or_default_outside_demo(tmp_path, models_dir) -> None:
    from inspection.errors import ConfigError
    from serving.settings import hash_key

    base = settings_data(tmp_path, models_dir, {})
    with pytest.raises(ConfigError, match="no api_keys configured"):
        build_settings({**base, "api_keys": []})
    for weak in ("", "changethis", "demo-line"):
        with pytest.raises(ConfigError, match="well-known default key"):
            build_settings({**base, "api_keys": [{"name": "k", "role": "line", "sha256": hash_key(weak)}]})
    assert build_settings({**base, "demo": True, "api_keys": []}).demo


def test_demo_mode_without_keys_is_open_and_records_the_demo_actor(tmp_path, models_dir) -> None:
    from serving.app import create_app
    from tests.helpers.tiny_model import BRIGHT, frame_png

    settings = build_settings({**settings_data(tmp_path, models_dir, {}), "demo": True, "api_keys": []})
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/inspections", params={"station": SINGLE, "camera": "cam", "part_id": "d1"},
                        content=frame_png(BRIGHT), headers={"content-type": "image/png"})
        assert r.status_code == 200
        assert client.app.state.log.get(r.json()["inspection_id"]).entry.actor == "demo"
