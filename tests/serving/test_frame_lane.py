"""The frame lane answers frames ahead of all middleware, so it refuses to run with any."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from fastapi.testclient import TestClient
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response

from inspection.errors import ConfigError
from serving.app import create_app
from serving.settings import ServeSettings
from tests.helpers.tiny_model import BRIGHT, frame_png
from tests.serving.conftest import auth, post_frame


async def _stamp(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await call_next(request)
    response.headers["x-stamped"] = "yes"
    return response


def test_middleware_added_to_an_app_with_the_lane_is_refused_naming_it_and_the_way_out(settings: ServeSettings) -> None:
    app = create_app(settings)
    assert app.frame_lane
    with pytest.raises(ConfigError, match=r"middleware BaseHTTPMiddleware would be skipped.*frame_lane=False"):
        app.add_middleware(BaseHTTPMiddleware, dispatch=_stamp)
    with pytest.raises(ConfigError, match="would be skipped for frames"):
        app.middleware("http")(_stamp)
    assert app.user_middleware == []


def test_middleware_slipped_past_add_middleware_stops_the_app_at_start(settings: ServeSettings) -> None:
    app = create_app(settings)
    app.user_middleware.append(Middleware(BaseHTTPMiddleware, dispatch=_stamp))
    with pytest.raises(ConfigError, match="would be skipped for frames"), TestClient(app):
        pass


def test_without_the_lane_frames_go_through_the_middleware(settings: ServeSettings, keys: dict[str, str]) -> None:
    app = create_app(settings, frame_lane=False)
    app.add_middleware(BaseHTTPMiddleware, dispatch=_stamp)
    assert not app.frame_lane
    with TestClient(app) as client:
        r = post_frame(client, keys, frame_png(BRIGHT), part_id="M1")
        assert r.status_code == 200 and r.json()["decision"] == "pass"
        assert r.headers["x-stamped"] == "yes"
        r = client.get("/v1/parts/M1/decision", headers=auth(keys))
        assert r.headers["x-stamped"] == "yes"
