"""The one place where domain errors become HTTP answers.

Every route raises ``inspection.errors`` exceptions; ``install`` registers a single handler
that picks the status code from ``STATUS`` (most specific class first) and answers
``{"error": code, "detail": message}`` plus, when the request fail-safe rejected a part,
``"failsafe": {...}``. ``OverloadedError`` adds ``Retry-After``. WebSocket handshakes get the
same answer as an HTTP denial response.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse

from inspection import errors as E

log = logging.getLogger(__name__)

#: Domain error -> HTTP status. Looked up along the exception's MRO, so subclasses inherit.
STATUS: dict[type[E.InspectionError], int] = {
    E.AuthenticationError: 401,
    E.PermissionDeniedError: 403,
    E.NotFoundError: 404,
    E.RegistryError: 404,
    E.ConflictError: 409,
    E.PayloadTooLargeError: 413,
    E.UnsupportedMediaError: 415,
    E.ImageError: 422,
    E.ValidationError: 400,
    E.ConfigError: 500,
    E.ModelError: 503,
    E.ModelCardError: 503,
    E.OverloadedError: 503,
    E.NotReadyError: 503,
    E.LogIntegrityError: 500,
    E.InspectionError: 500,
}


def status_for(exc: E.InspectionError) -> int:
    """The HTTP status of a domain error."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 500


def error_body(exc: E.InspectionError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": exc.code, "detail": str(exc)}
    failsafe = getattr(exc, "failsafe", None)
    if failsafe is not None:
        body["failsafe"] = failsafe
    return body


def error_response(exc: E.InspectionError) -> JSONResponse:
    status = status_for(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, E.OverloadedError):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, E.AuthenticationError):
        headers["WWW-Authenticate"] = 'Bearer realm="inspection"'
    return JSONResponse(error_body(exc), status_code=status, headers=headers)


async def _domain_handler(conn: HTTPConnection, exc: Exception) -> JSONResponse:
    assert isinstance(exc, E.InspectionError)
    return await domain_error_response(conn, exc)


async def domain_error_response(conn: HTTPConnection, exc: E.InspectionError) -> JSONResponse:
    """The answer to a domain error (counted, logged when a 5xx); also used outside the router."""
    metrics = getattr(conn.app.state, "metrics", None)
    if metrics is not None:
        metrics.bad_requests.labels(exc.code).inc()
    if status_for(exc) >= 500 and not isinstance(exc, E.OverloadedError):
        log.warning("%s %s: %s", conn.scope.get("method", "WS"), conn.url.path, exc)
    return error_response(exc)


async def _validation_handler(conn: HTTPConnection, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ())) or 'request'}: {err.get('msg')}" for err in exc.errors()
    )
    return await _domain_handler(conn, E.ValidationError(f"invalid request: {problems}"))


def attach_failsafe(exc: E.InspectionError, failsafe: dict[str, Any]) -> E.InspectionError:
    """Note on an error that its request fail-safe rejected a part (shown in the error body)."""
    exc.failsafe = failsafe  # type: ignore[attr-defined]
    return exc


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(E.InspectionError, _domain_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
