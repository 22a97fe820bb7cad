"""``GET /line`` (the live page) and its API: stations, one station's snapshot, server-sent events.

Roles: ``viewer`` (a wall screen: sees the line, nothing else), ``engineer``, ``auditor`` and
``admin``. The event stream sends the station's snapshot every ``SNAPSHOT_EVERY_S`` and each
alarm change as it happens. A client that stops reading costs a bounded amount: snapshots are
built when the stream is ready for the next one (none pile up) and alarm events wait in a
queue of ``EVENT_BUFFER`` that drops the oldest (the next snapshot carries the alarm states
anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response, StreamingResponse
from starlette.requests import Request

from inspection.errors import NotFoundError
from serving.audit import app_cards
from serving.auth import Principal, Require
from serving.deps import LogDep, ServiceDep
from serving.frames import frame_view
from serving.pages import static_page_router
from serving.settings import Role, ServeSettings

LINE_ROLES: tuple[Role, ...] = ("viewer", "engineer", "auditor", "admin")
VIEWER = Require(*LINE_ROLES)
#: Seconds between snapshots on the event stream.
SNAPSHOT_EVERY_S = 1.0
#: Alarm events waiting for a slow client, per stream.
EVENT_BUFFER = 64


def _station(request: Request, station: str) -> str:
    stations = request.app.state.settings.stations
    if station not in stations:
        raise NotFoundError(f"unknown station {station!r}; configured: {sorted(stations)}")
    return station


class AlarmSubscriber:
    """One event stream's alarm events for one station: a bounded queue that drops the oldest."""

    def __init__(self, station: str, size: int = EVENT_BUFFER) -> None:
        self.station = station
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=size)
        self.dropped = 0

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("station") != self.station:
            return
        if self.queue.full():  # a slow reader: the oldest alarm event goes (the snapshot has the state)
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)


def links(app_state: Any, station: str) -> dict[str, Any]:
    """The station's PLC and MQTT links as serving sees them (None: not configured)."""
    line = getattr(app_state, "line", None)
    plc = (getattr(line, "lines", None) or {}).get(station)
    mqtt = (getattr(line, "mqtt", None) or {}).get(station)
    out: dict[str, Any] = {"plc": None, "mqtt": None}
    if plc is not None:
        hs = plc.handshake
        last = hs.last_acked
        out["plc"] = {"pending": hs.pending, "oldest_wait_s": round(hs.oldest_wait_s, 3),
                      "acknowledged": hs.counters.acknowledged,
                      "last_ack": None if last is None else {"seq": last.seq, "inspection_id": last.inspection_id,
                                                              "decision_time": last.time.isoformat()}}
    if mqtt is not None:
        out["mqtt"] = {"connected": mqtt.connected, "queued": mqtt.queued, "published": mqtt.published}
    return out


def _snapshot(request: Request, service: Any, station: str) -> dict[str, Any]:
    snap = service.line.snapshot(station)
    snap["links"] = links(request.app.state, station)
    snap["promoted_at"] = request.app.state.models.promoted_at(station)
    return snap


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


def build_router(settings: ServeSettings) -> APIRouter:
    """The page (open: it asks for a key) and ``/v1/line/...`` (the line roles)."""
    router = APIRouter(tags=["line"])
    router.include_router(static_page_router("/line", "line.html"))

    @router.get("/v1/line", summary="Every station: model, counts of the shift, active alarms")
    async def stations(request: Request, who: Annotated[Principal, Depends(VIEWER)],
                       service: ServiceDep) -> dict[str, Any]:
        out = []
        for name in sorted(request.app.state.settings.stations):
            snap = service.line.snapshot(name)
            out.append({k: snap.get(k) for k in ("station", "model_version", "shift", "alarms", "notes")})
        return {"stations": out}

    @router.get("/v1/line/{station}", summary="One station now: rates, counts, p-chart, drift, alarms, latency")
    async def snapshot(request: Request, station: str, who: Annotated[Principal, Depends(VIEWER)],
                       service: ServiceDep) -> dict[str, Any]:
        return _snapshot(request, service, _station(request, station))

    @router.get("/v1/line/{station}/rejects/{inspection_id}/frame", response_class=Response,
                summary="The frame of one of the station's most recent rejects (the page's thumbnails), as an "
                        "image a browser shows (serving.frames.frame_view)",
                responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/bmp": {}}}})
    def reject_frame(request: Request, station: str, inspection_id: str,
                     who: Annotated[Principal, Depends(VIEWER)], service: ServiceDep, log: LogDep) -> Response:
        # Only what the page shows: a wall-screen key must not become a way to read the log.
        live = service.line.station(_station(request, station))
        shown = {r["inspection_id"] for r in (live.recent_rejects if live is not None else [])}
        if inspection_id not in shown:
            raise NotFoundError(f"{inspection_id!r} is not among station {station!r}'s most recent rejects")
        return frame_view(log, log.get(inspection_id), app_cards(request), max_age=3600)

    @router.get("/v1/line/{station}/events",
                summary="Server-sent events: a snapshot every second, alarms as they change")
    async def events(request: Request, station: str, who: Annotated[Principal, Depends(VIEWER)],
                     service: ServiceDep) -> StreamingResponse:
        name = _station(request, station)
        on_alarm = AlarmSubscriber(name)
        queue = on_alarm.queue
        alarms = getattr(request.app.state, "line_alarms", None)
        if alarms is not None:
            alarms.listeners.append(on_alarm)

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 2000\n\n"
                while True:
                    yield _sse("snapshot", _snapshot(request, service, name))
                    with contextlib.suppress(TimeoutError):
                        event = await asyncio.wait_for(queue.get(), timeout=SNAPSHOT_EVERY_S)
                        yield _sse("alarm", event)
                        while not queue.empty():
                            yield _sse("alarm", queue.get_nowait())
                    if await request.is_disconnected():
                        return
            finally:
                if alarms is not None and on_alarm in alarms.listeners:
                    alarms.listeners.remove(on_alarm)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return router
