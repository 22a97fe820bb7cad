"""Frame and part routes: ``POST /v1/inspections``, ``WS /v1/stream``, ``GET /v1/parts/{id}/decision``.

``POST /v1/inspections`` — the body is the frame:

* ``Content-Type: image/png | image/jpeg | image/bmp | image/tiff`` — an encoded image, or
* ``Content-Type: application/octet-stream`` — raw 8-bit pixels, row-major, channels last
  (BGR when 3), with ``width``, ``height`` and ``channels`` (1 or 3) given.

Where the frame goes, each as a query parameter or a header (the query parameter wins):

==============  ===============  =========================================================
query           header           meaning
==============  ===============  =========================================================
station         X-Station        a configured station
camera          X-Camera         one of that station's cameras
part_id         X-Part-Id        the part's serial (1..max_part_id_length printable chars)
capture_time    X-Capture-Time   optional; ISO 8601 (``2026-01-31T08:00:00.123Z``) or Unix s
width/height    X-Width/X-Height raw frames only
channels        X-Channels       raw frames only (1 or 3)
map             X-Map            optional flag (1/0): answer the defect map's place for a
                                 pass too; refused (409) when the station's model has no map
==============  ===============  =========================================================

Header values must be UTF-8. The answer is ``{inspection_id, part_id, station, camera,
decision, defect_class, score, threshold, model_version, latency_ms}`` plus, for a reject by a
model with defect maps (or any frame asked with ``map=1``), ``defect_map: {peak: [x, y],
peak_value, box: [x, y, w, h], extent: [x, y, w, h]}`` in the frame's pixels
(``inspection.defectmap``), sent only after the
inspection record is durable in the log. A request with a bad station, camera or part id gets
its 4xx and nothing is recorded; any later failure (bad frame or media type, body over the
limit, model error, overload) gets its 4xx/5xx *and* fail-safe rejects that part's view.

``WS /v1/stream?station=S&camera=C`` — for a camera streaming many frames: send a text
message ``{"part_id": ..., "content_type": ..., "capture_time"?, "width"?, "height"?,
"channels"?}`` followed by one binary message with the frame; each frame is answered, in
order, with the same JSON as the POST, or ``{"error", "detail", "status", "failsafe"?}``.
Up to 8 frames may be in flight on one connection (they batch with everyone else's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, WebSocket, WebSocketDisconnect
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import get_route_path
from starlette.types import Receive, Scope, Send

from inspection.errors import InspectionError, PayloadTooLargeError, ValidationError
from inspection.preprocess import RAW_TYPE
from serving.auth import Principal, Require
from serving.deps import ServiceDep
from serving.errors import domain_error_response, error_body, status_for
from serving.service import FrameRequest, InspectionService
from serving.settings import ServeSettings

LINE = Require("line")
_STREAM_IN_FLIGHT = 8
MAX_WAIT_MS = 60_000


#: Built once (``json.dumps`` with options builds an encoder per call); compact answers.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def _header(conn: HTTPConnection, name: bytes) -> str | None:
    for key, value in conn.scope["headers"]:
        if key == name:
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise ValidationError(
                    f"header {name.decode('latin-1').title()} is not valid UTF-8 ({value[:40]!r}); send UTF-8 text"
                ) from None
    return None


def _param(conn: HTTPConnection, query: str, header: bytes) -> str | None:
    value = conn.query_params.get(query)
    if value is not None:
        if "\ufffd" in value:
            raise ValidationError(f"query parameter {query} is not valid UTF-8 ({value[:40]!r})")
        return value
    return _header(conn, header)


def _int(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValidationError(f"{name}={value[:40]!r} is not an integer") from None


def parse_capture_time(value: str | None) -> datetime | None:
    """ISO 8601 (naive = UTC) or Unix seconds -> aware datetime.

    Raises:
        ValidationError: neither format.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return datetime.fromtimestamp(float(text), tz=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        parsed = datetime.fromisoformat(text)  # Python 3.11+ reads a trailing Z as UTC
    except ValueError:
        raise ValidationError(f"capture_time {text[:40]!r} is neither ISO 8601 nor Unix seconds") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def parse_map_flag(value: str | None) -> bool:
    """``map`` / ``X-Map``: answer the defect map's place for a pass too.

    Raises:
        ValidationError: not one of 1/true/yes/0/false/no.
    """
    if value is None:
        return False
    flag = _FLAGS.get(value.strip().lower())
    if flag is None:
        raise ValidationError(f"map={value[:40]!r} is not a flag; use map=1 (or true/yes) or map=0 (false/no)")
    return flag


def raw_shape(width: str | None, height: str | None, channels: str | None) -> tuple[int, int, int] | None:
    """(width, height, channels) when any is given; all three are then required.

    Raises:
        ValidationError: some missing or not integers.
    """
    given = {"width": width, "height": height, "channels": channels}
    if all(v is None for v in given.values()):
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValidationError(f"raw frames need width, height and channels; missing {missing}")
    w, h, c = (_int(k, v) for k, v in given.items())
    assert w is not None and h is not None and c is not None
    return w, h, c


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        size = _int("Content-Length", declared)
        if size is not None and size > limit:
            raise PayloadTooLargeError(f"body of {size} bytes is over the limit of {limit} bytes (max_body_bytes)")
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise PayloadTooLargeError(f"body is over the limit of {limit} bytes (max_body_bytes)")
            chunks.append(chunk)
    except ClientDisconnect:
        # Not an answer anyone reads, but the view must still be logged as the reject it is.
        raise ValidationError(f"the frame's body was cut off: the client disconnected after {total} bytes") from None
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def _json(data: dict[str, Any], status: int = 200) -> Response:
    return Response(_COMPACT.encode(data), status_code=status, media_type="application/json")


INSPECTIONS_PATH = "/v1/inspections"


async def inspect_frame(request: Request, who: Principal, service: InspectionService) -> Response:
    """``POST /v1/inspections``: validate, read the frame, score it, answer once it is logged."""
    started = time.perf_counter()
    station, camera, part_id = service.check_target(
        _param(request, "station", b"x-station"), _param(request, "camera", b"x-camera"),
        _param(request, "part_id", b"x-part-id"))
    want_map = parse_map_flag(_param(request, "map", b"x-map"))
    service.check_map(station, want_map)
    ticket = service.parts.open_view(station, part_id, camera)
    req = FrameRequest(station, camera, part_id, content_type="", actor=who.name, started=started, ticket=ticket)
    try:
        with service.batcher.arriving() as arrival:
            try:
                shape = raw_shape(_param(request, "width", b"x-width"), _param(request, "height", b"x-height"),
                                  _param(request, "channels", b"x-channels"))
                media = service.check_media(request.headers.get("content-type"), shape)
                capture = parse_capture_time(_param(request, "capture_time", b"x-capture-time"))
                body = await _read_body(request, service.settings.max_body_bytes)
            except InspectionError as exc:
                arrival.done()
                await service.reject_failsafe(req, exc)
                raise
            req = FrameRequest(station, camera, part_id, content_type=media,
                               raw_shape=shape if media == RAW_TYPE else None, capture_time=capture,
                               actor=who.name, started=started, want_map=want_map, ticket=ticket)
            return _json(await service.inspect(req, body, arrival=arrival))
    finally:
        service.parts.release(ticket)  # nothing where its view was reported; else the part goes on


def is_frame_request(scope: Scope) -> bool:
    """``POST /v1/inspections``: what ``answer_frame`` serves ahead of the router."""
    return scope["type"] == "http" and scope["method"] == "POST" and get_route_path(scope) == INSPECTIONS_PATH


async def answer_frame(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer ``POST /v1/inspections`` without FastAPI's per-request machinery.

    The frame endpoint is on every part's critical path. FastAPI's telemetry check, its
    middleware stack, routing through ~40 routes and dependency resolution cost ~0.1 ms per
    request, a tenth of a small model's inference. ``serving.app.InspectionApp`` calls this
    first; the checks are the same: the ``line`` role via ``Require`` (401/403 as on every
    route), ``inspect_frame``, and domain errors answered by ``serving.errors`` as the app's
    handler does. An unexpected exception propagates to the server (a 500, logged).
    """
    request = Request(scope, receive)
    try:
        who = await LINE(request)
        # The app's service as ``serving.deps.get_service`` finds it, minus the check: frames
        # reach this lane only once the app serves (uvicorn runs the lifespan first).
        response = await inspect_frame(request, who, scope["app"].state.service)
    except InspectionError as exc:
        response = await domain_error_response(request, exc)
    await response(scope, receive, send)


def build_router(settings: ServeSettings) -> APIRouter:
    """The frame, stream and part-decision routes."""
    router = APIRouter(tags=["frames"])

    @router.post(INSPECTIONS_PATH, summary="Score one frame of a part and answer pass/reject")
    async def post_inspection(request: Request, who: Annotated[Principal, Depends(LINE)],
                              service: ServiceDep) -> Response:
        # Normally answered by ``answer_frame`` before routing (same function, same errors); this
        # route documents the endpoint (OpenAPI, role x route test) and serves any app without it.
        return await inspect_frame(request, who, service)

    # ``:path``: a part id may hold "/" (serials such as LOT-7/SN-42), sent as is or as %2F.
    @router.get("/v1/parts/{part_id:path}/decision", summary="The part's decision across the station's cameras")
    async def part_decision(
        part_id: str,
        who: Annotated[Principal, Depends(LINE)],
        service: ServiceDep,
        station: Annotated[str | None, Query(description="needed when several stations are configured")] = None,
        wait_ms: Annotated[float, Query(ge=0, le=MAX_WAIT_MS)] = 0.0,
    ) -> Response:
        service.check_part_id(part_id)
        if station is None:
            # The line PC's stations, not this process's: a worker of `serve --workers` holding one
            # station would otherwise answer (and open a part) for a query meant for another.
            every = sorted({*settings.stations, *settings.served_elsewhere})
            if len(every) != 1:
                raise ValidationError(f"station is required with several stations configured: {every}")
            station = next(iter(settings.stations))
        service.check_station(station)
        part = await service.parts.wait(station, part_id, wait_ms / 1000.0)
        summary = part.summary()
        return _json(summary, 200 if summary["status"] == "decided" else 202)

    @router.websocket("/v1/stream")
    async def stream(websocket: WebSocket, who: Annotated[Principal, Depends(LINE)], service: ServiceDep) -> None:
        station, camera, _ = service.check_target(
            _param(websocket, "station", b"x-station"), _param(websocket, "camera", b"x-camera"), "-")
        await websocket.accept()
        pending: deque[asyncio.Task[dict[str, Any]]] = deque()
        sender_wakeup = asyncio.Event()
        done = False

        async def send_answers() -> None:
            while True:
                while pending:
                    answer = await pending[0]
                    pending.popleft()
                    await websocket.send_text(_COMPACT.encode(answer))
                if done:
                    return
                sender_wakeup.clear()
                await sender_wakeup.wait()

        sender = asyncio.create_task(send_answers())
        out_of_step: ValidationError | None = None
        try:
            while out_of_step is None:
                header, frame = None, b""
                try:
                    header = await _stream_message(websocket, "text")
                    frame = await _stream_message(websocket, "bytes")
                except ValidationError as exc:
                    out_of_step = exc  # its header's part (if any) is answered and fail-safe rejected
                    if header is None:
                        pending.append(asyncio.create_task(_error_answer(exc)))
                        sender_wakeup.set()
                        break
                started = time.perf_counter()
                while len(pending) >= _STREAM_IN_FLIGHT:
                    await asyncio.sleep(0)
                    await asyncio.wait({pending[0]})
                answer = _stream_frame(service, station, camera, who, header, frame, started, out_of_step)
                pending.append(asyncio.create_task(answer))
                sender_wakeup.set()
        except WebSocketDisconnect:
            pass
        finally:
            done = True
            sender_wakeup.set()
            try:
                await sender
            except (WebSocketDisconnect, RuntimeError):
                for task in pending:
                    await asyncio.gather(task, return_exceptions=True)
        if out_of_step is not None:
            # Which message is a header and which a frame cannot be told any more: say why and end.
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # unless the client left first
                await websocket.close(code=1003, reason=str(out_of_step)[:120])

    return router


async def _stream_message(websocket: WebSocket, kind: str) -> Any:
    """The next message's ``text`` or ``bytes``, as the stream's protocol expects it next.

    Raises:
        WebSocketDisconnect: the client went away.
        ValidationError: the message is of the other kind (the stream is out of step).
    """
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
    value = message.get(kind)
    if value is None:
        expected = "a text message (the frame's JSON header)" if kind == "text" else "a binary message (the frame)"
        raise ValidationError(f"stream out of step: expected {expected}, got a "
                              f"{'binary' if kind == 'text' else 'text'} message; the stream is closed (1003)")
    return value


async def _error_answer(exc: InspectionError) -> dict[str, Any]:
    return {**error_body(exc, where="WS /v1/stream"), "status": status_for(exc)}


async def _stream_frame(service: InspectionService, station: str, camera: str, who: Principal,
                        header: str, frame: bytes, started: float,
                        error: InspectionError | None = None) -> dict[str, Any]:
    """One streamed frame -> its answer dict (errors become error answers, never exceptions).

    ``error``: the frame did not come (the stream went out of step after this header): the
    header's part gets the fail-safe reject of a view that failed with it.
    """
    try:
        try:
            meta = json.loads(header)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"frame header is not JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise ValidationError("frame header must be a JSON object with part_id and content_type")
        given = meta.get("part_id")
        _, _, part_id = service.check_target(station, camera, given if isinstance(given, str) else None)
        str_or_none = lambda k: None if meta.get(k) is None else str(meta.get(k))
        want_map = parse_map_flag(str_or_none("map"))
        service.check_map(station, want_map)
        req = FrameRequest(station, camera, part_id, content_type="", actor=who.name, started=started,
                           ticket=service.parts.open_view(station, part_id, camera))
    except InspectionError as exc:
        return {**error_body(exc, where="WS /v1/stream"), "status": status_for(exc)}
    try:
        try:
            if error is not None:
                raise error
            shape = raw_shape(str_or_none("width"), str_or_none("height"), str_or_none("channels"))
            media = service.check_media(str_or_none("content_type"), shape)
            capture = parse_capture_time(str_or_none("capture_time"))
            if len(frame) > service.settings.max_body_bytes:
                raise PayloadTooLargeError(f"frame of {len(frame)} bytes is over the limit of "
                                           f"{service.settings.max_body_bytes} bytes (max_body_bytes)")
        except InspectionError as exc:
            await service.reject_failsafe(req, exc)
            return {**error_body(exc, where="WS /v1/stream"), "status": status_for(exc)}
        req = FrameRequest(station, camera, part_id, content_type=media,
                           raw_shape=shape if media == RAW_TYPE else None, capture_time=capture, actor=who.name,
                           started=started, want_map=want_map, ticket=req.ticket)
        try:
            return await service.inspect(req, frame)
        except InspectionError as exc:
            return {**error_body(exc, where="WS /v1/stream"), "status": status_for(exc)}
    finally:
        service.parts.release(req.ticket)  # nothing where its view was reported; else the part goes on
