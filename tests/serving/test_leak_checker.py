"""The checker the fault tests use to refuse infrastructure details in answers (tests/helpers/leaks.py)
finds each kind, lets ordinary answers through, and sees answers from every kind of httpx client."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from tests.helpers.leaks import infrastructure_details, watching_responses

LEAKS = [
    ("host:port", "could not connect to server at db.plant.example:5432"),
    ("ip address", "connection to 10.1.2.3 refused"),
    ("localhost", "connection refused (localhost)"),
    ("file path", "No space left on device: '/var/lib/inspection/frames/ab/cd.png'"),
    ("database url", "engine sqlite:///data/log.db"),
    ("driver", "psycopg.OperationalError: server closed the connection unexpectedly"),
    ("sql", "[SQL: INSERT INTO inspection_log (seq, entry) VALUES (?, ?)]"),
    ("traceback", 'Traceback (most recent call last):\n  File "x.py", line 3, in <module>'),
]

CLEAN = [
    ('{"error": "log_unavailable", "detail": "the inspection log cannot commit or be read right now; details are in '
    'the server log (incident 3fa2b1c0d9e8)", "incident": "3fa2b1c0d9e8"}'),
    ('{"decision": "reject", "scores": {"good": 0.25, "dent": 0.75}, "model_version": "v1.2", '
    '"captured_at": "2026-12-04T01:02:03.456Z"}'),
    "model tiny/v1 failed its golden-frame check: output differs by 0.03 (model.onnx)",
]


@pytest.mark.parametrize(("kind", "text"), LEAKS, ids=[k for k, _ in LEAKS])
def test_each_kind_of_leak_is_found(kind: str, text: str) -> None:
    assert any(d.startswith(f"{kind}:") for d in infrastructure_details(text)), infrastructure_details(text)


@pytest.mark.parametrize("text", CLEAN)
def test_ordinary_answers_pass(text: str) -> None:
    assert infrastructure_details(text) == []


def _leaky_app() -> FastAPI:
    app = FastAPI()

    @app.get("/leak")
    def leak() -> JSONResponse:
        return JSONResponse({"error": "log_unavailable", "detail": "connection to 127.0.0.1:5432 refused"}, 503)

    @app.get("/fine")
    def fine() -> dict[str, str]:
        return {"ok": "yes"}

    return app


@pytest.mark.asyncio
async def test_answers_to_sync_and_async_clients_are_watched() -> None:
    app = _leaky_app()
    with watching_responses() as leaks:
        with TestClient(app) as client:
            assert client.get("/fine").status_code == 200
            assert client.get("/leak").status_code == 503
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            await http.get("/leak")
    assert all(line.startswith("GET /leak -> 503: ") for line in leaks)  # not /fine
    assert sum("host:port: '127.0.0.1:5432'" in line for line in leaks) == 2  # one per answer, both clients
    watched = len(leaks)
    with TestClient(app) as client:  # no longer watched
        client.get("/leak")
    assert len(leaks) == watched
