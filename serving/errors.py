"""The one place where domain errors become HTTP answers.

Every route raises ``inspection.errors`` exceptions; ``install`` registers a single handler
that picks the status code from ``STATUS`` (most specific class first) and answers
``{"error": code, "detail": message}`` plus, when the request fail-safe rejected a part,
``"failsafe": {...}``. ``OverloadedError`` adds ``Retry-After``. WebSocket handshakes get the
same answer as an HTTP denial response.

Errors say what, not where. A 4xx message is about the client's own request and is sent as it
is. A server-side failure (5xx) is answered with its reason class (``error``: ``log_unavailable``,
``storage_full``, ``model_error``, ...) and an ``incident`` id; hosts, ports, file paths, SQL and
driver messages go only to the server log, on a line carrying the same incident id
(``incident=<id>``). Model errors keep their message (it names the model version and what
failed, which the operator needs) with paths and addresses scrubbed (``scrub``); the log's and
storage's errors, configuration and anything unexpected get a fixed sentence per class.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
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
    E.MisdirectedError: 421,
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


#: What a client is told of a server-side failure whose message may carry infrastructure details
#: (looked up along the MRO). The reason class and the incident id come with it.
PUBLIC_DETAIL: dict[type[E.InspectionError], str] = {
    E.StorageFullError: "the inspection log's storage is full",
    E.StorageError: "the inspection log's storage cannot be written",
    E.LogUnavailableError: "the inspection log cannot commit or be read right now",
    E.LogIntegrityError: "the inspection log's hash chain does not verify",
    E.ConfigError: "the server's configuration is invalid",
    E.InspectionError: "the server failed to handle the request",
}

#: 5xx errors whose message is the client's to read (ours, naming no infrastructure).
_SAFE_5XX = (E.OverloadedError, E.NotReadyError)

# What ``scrub`` removes from a message: URLs (database, broker), absolute file paths, IPv4/IPv6
# addresses and host:port pairs.
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:\\|/)(?:[^\s'\"(),:;]+[/\\])*([^\s'\"(),:;/\\]+)")
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?\b")
_IPV6 = re.compile(r"\[[0-9a-fA-F:.]+\](?::\d{1,5})?|(?<![\w:])(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}(?![\w:])"
                   r"|(?<![\w:])(?:[0-9a-fA-F]{1,4}:){1,6}:(?:[0-9a-fA-F]{1,4}(?::[0-9a-fA-F]{1,4})*)?(?![\w:])")
_HOSTPORT = re.compile(r"\b(?:localhost|[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+):\d{1,5}\b")


def scrub(text: str) -> str:
    """``text`` without URLs, host:port pairs, IP addresses and directories of file paths (a path
    keeps its file name: ``/srv/models/tiny/v1/model.onnx`` -> ``model.onnx``)."""
    text = _URL.sub("<url>", text)
    text = _IPV4.sub("<address>", text)
    text = _IPV6.sub("<address>", text)
    text = _HOSTPORT.sub("<address>", text)
    return _PATH.sub(lambda m: m.group(1), text)


def new_incident() -> str:
    """A short random id that ties a client's 5xx answer to its line in the server log."""
    return secrets.token_hex(6)


def _public_detail(exc: E.InspectionError) -> str:
    for cls in type(exc).__mro__:
        if cls in PUBLIC_DETAIL:
            return PUBLIC_DETAIL[cls]  # type: ignore[index]
    return PUBLIC_DETAIL[E.InspectionError]


def error_body(exc: E.InspectionError, *, where: str = "") -> dict[str, Any]:
    """The JSON answer to ``exc``: ``{"error", "detail", "incident"?, "failsafe"?}``.

    A 5xx other than overload/not-ready gets an incident id, and its full message is logged
    with that id (``where`` names the request in that line).
    """
    body: dict[str, Any] = {"error": exc.code, "detail": str(exc)}
    if status_for(exc) >= 500 and not isinstance(exc, _SAFE_5XX):
        incident = getattr(exc, "incident", None) or new_incident()
        exc.incident = incident  # type: ignore[attr-defined]  # one id however often it is answered
        if isinstance(exc, E.ModelError | E.ModelCardError):
            detail = scrub(str(exc))
        else:
            detail = f"{_public_detail(exc)}; details are in the server log"
        body["detail"] = f"{detail} (incident {incident})"
        body["incident"] = incident
        if not getattr(exc, "incident_logged", False):
            exc.incident_logged = True  # type: ignore[attr-defined]
            log.warning("incident=%s %s%s: %s", incident, f"{where}: " if where else "", exc.code, exc)
    failsafe = getattr(exc, "failsafe", None)
    if failsafe is not None:
        body["failsafe"] = failsafe
    return body


def error_response(exc: E.InspectionError, *, where: str = "") -> JSONResponse:
    status = status_for(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, E.OverloadedError):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, E.AuthenticationError):
        headers["WWW-Authenticate"] = 'Bearer realm="inspection"'
    return JSONResponse(error_body(exc, where=where), status_code=status, headers=headers)


async def _domain_handler(conn: HTTPConnection, exc: Exception) -> JSONResponse:
    assert isinstance(exc, E.InspectionError)
    return await domain_error_response(conn, exc)


async def domain_error_response(conn: HTTPConnection, exc: E.InspectionError) -> JSONResponse:
    """The answer to a domain error (counted, logged when a 5xx); also used outside the router."""
    metrics = getattr(conn.app.state, "metrics", None)
    if metrics is not None:
        metrics.bad_requests.labels(exc.code).inc()
    # A 5xx is logged (with its incident id) by ``error_body``; the client sees only its reason class.
    return error_response(exc, where=f"{conn.scope.get('method', 'WS')} {conn.url.path}")


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
