"""The decision path shared by the HTTP and WebSocket frame endpoints.

``InspectionService.inspect`` takes a validated frame request and returns the answer dict:
decode + preprocess (as the card says) -> micro-batched model call -> decision rule ->
inspection record appended to the log (durable) -> decision bus -> part bookkeeping -> answer.
Every failure after the request named a valid station/camera/part is a **fail-safe reject**
of that view: an ``inspection`` record with ``decision="reject"`` and ``failsafe_reason``,
then the domain error is re-raised (with the fail-safe attached) for ``serving.errors`` to
answer with the right status.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from inspection.decisions import decide
from inspection.defectmap import encode_png, locate
from inspection.errors import (
    ConflictError,
    InspectionError,
    MisdirectedError,
    ModelError,
    NotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaError,
    ValidationError,
)
from inspection.frameview import RawLayout
from inspection.imageheader import MAX_FRAME_PIXELS
from inspection.log.records import InspectionLog, LogEntry, StoredRecord, new_id
from inspection.preprocess import ENCODED_TYPES, RAW_TYPE, declared_size
from serving.batching import Arrival, MicroBatcher
from serving.decoding import FrameDecoder
from serving.errors import attach_failsafe
from serving.events import DecisionBus, DecisionEvent
from serving.lifecycle import ModelManager
from serving.model import LoadedModel
from serving.monitoring.live import LineMonitor
from serving.parts import Part, PartTracker, View, ViewTicket
from serving.settings import ServeSettings
from serving.telemetry import ServingMetrics

log = logging.getLogger(__name__)

ACCEPTED_TYPES = (*ENCODED_TYPES, RAW_TYPE)


def raw_layout(shape: tuple[int, int, int]) -> dict[str, int]:
    """A raw frame's (width, height, channels) as its record keeps them: the bytes have no header,
    and the pages and ``dataset build`` read the frame back by them (``inspection.frameview``)."""
    return RawLayout(*shape).as_dict()


@dataclass(frozen=True, slots=True)
class FrameRequest:
    """A frame request whose station, camera and part id are already validated."""

    station: str
    camera: str
    part_id: str
    content_type: str
    raw_shape: tuple[int, int, int] | None = None
    capture_time: datetime | None = None
    actor: str | None = None
    started: float = 0.0  # perf_counter() when the request arrived
    #: Answer the defect map's place for a pass too (a reject's is always answered and logged).
    want_map: bool = False
    #: The frame counted on its part since it arrived (``PartTracker.open_view``).
    ticket: ViewTicket | None = None


class InspectionService:
    """Scores frames, keeps the log and the part decisions; one per app."""

    def __init__(self, *, settings: ServeSettings, models: ModelManager, batcher: MicroBatcher,
                 log_store: InspectionLog, bus: DecisionBus, metrics: ServingMetrics) -> None:
        self.settings = settings
        self.models = models
        self.batcher = batcher
        self.log = log_store
        self.bus = bus
        self.metrics = metrics
        self.parts = PartTracker(settings, self._record_part)
        self.decoder = FrameDecoder(settings.decoding)
        self._pixel_limits = {name: station.frame_pixel_limit() for name, station in settings.stations.items()}
        self.line = LineMonitor(settings, active=self._active_model)

    def _active_model(self, station: str) -> str | None:
        try:
            return self.models.current(station).model_id
        except ModelError:
            return None

    # -- validation (nothing is recorded for a request that fails here) ---------------------
    def check_target(self, station: str | None, camera: str | None, part_id: str | None) -> tuple[str, str, str]:
        """Validate station, camera and part id.

        Raises:
            ValidationError: a value is missing, or the part id is empty, too long or has control characters.
            NotFoundError: the station or camera is not configured.
        """
        station = self.check_station(station)
        cameras = self.settings.stations[station].cameras
        if not camera:
            raise ValidationError(f"camera is required (query ?camera= or header X-Camera); "
                                  f"station {station!r} has {cameras}")
        if camera not in cameras:
            raise NotFoundError(f"unknown camera {camera!r} for station {station!r}; it has {cameras}")
        self.check_part_id(part_id)
        assert part_id is not None
        return station, camera, part_id

    def check_station(self, station: str | None) -> str:
        """Raises ValidationError when missing, NotFoundError when not configured."""
        if not station:
            raise ValidationError("station is required (query ?station= or header X-Station); "
                                  f"configured: {sorted(self.settings.stations)}")
        if station not in self.settings.stations:
            if where := self.settings.served_elsewhere.get(station):
                raise MisdirectedError(f"station {station!r} is served by the serving process at {where} of this "
                                       f"line PC (serve --workers); send its frames there")
            raise NotFoundError(f"unknown station {station!r}; configured: {sorted(self.settings.stations)}")
        return station

    def check_map(self, station: str, want_map: bool) -> None:
        """A map asked of a station whose model has none is refused before anything is recorded.

        Raises:
            ConflictError: the station's model card has no defect map (exported before maps existed).
        """
        if not want_map:
            return
        try:
            model = self.models.current(station)
        except ModelError:
            return  # no model: the frame itself gets the fail-safe reject that says so
        if model.card.defect_map is None:
            raise ConflictError(f"model {model.model_id} on station {station!r} has no defect map (its card was "
                                "exported before maps existed): ask without map=1, or retrain and promote a "
                                "version that has one")

    def check_part_id(self, part_id: str | None) -> str:
        """Raises ValidationError unless ``part_id`` is 1..max_part_id_length printable characters."""
        limit = self.settings.max_part_id_length
        if part_id is None or not part_id.strip():
            raise ValidationError(f"part id is required and must not be empty or blank (1..{limit} characters)")
        if len(part_id) > limit:
            raise ValidationError(f"part id has {len(part_id)} characters; at most {limit} are allowed")
        if not part_id.isprintable():
            raise ValidationError(f"part id {part_id!r} contains control characters; only printable text is allowed")
        return part_id

    def check_media(self, content_type: str | None, raw_shape: tuple[int, int, int] | None) -> str:
        """The bare media type, checked against what can be decoded.

        Raises:
            UnsupportedMediaError: a type other than PNG/JPEG/BMP/TIFF/octet-stream.
            ValidationError: raw pixels without width/height/channels.
        """
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media not in ACCEPTED_TYPES:
            raise UnsupportedMediaError(f"content type {content_type!r} is not accepted; "
                                        f"send one of {list(ACCEPTED_TYPES)}")
        if media == RAW_TYPE and raw_shape is None:
            raise ValidationError(f"{RAW_TYPE} frames need width, height and channels "
                                  "(query or X-Width/X-Height/X-Channels)")
        return media

    # -- the decision path --------------------------------------------------------------
    async def inspect(self, req: FrameRequest, body: bytes, *, arrival: Arrival | None = None) -> dict[str, Any]:
        """Score one frame and return the answer (after its record is durable).

        Raises:
            ImageError, ModelError, OverloadedError, InspectionError (log failure): each after
            the view was fail-safe rejected (the error carries ``failsafe``).
        """
        started = req.started or time.perf_counter()
        model: LoadedModel | None = None
        try:
            try:
                model = self.models.current(req.station)
                self.batcher.check_capacity()
                # The header is checked here, before any decoding; small frames come back decoded,
                # large ones as the pool's pending result (serving.decoding).
                decoded = self.decoder.start(body, model.card.input, raw_shape=req.raw_shape,
                                             source=f"frame of part {req.part_id!r}",
                                             max_pixels=self._pixel_limits[req.station],
                                             limit_name=f"max_frame_pixels of station {req.station!r}")
            finally:
                if arrival is not None:
                    arrival.done()  # queued next, or given up: a forming batch need not wait for it
            pixels = decoded if isinstance(decoded, np.ndarray) else await decoded
            # Statistics before scoring: a frame far outside the reference is never scored as fine.
            stats = self.line.check(req.station, model, pixels)
            probs, heat, model_ms = await self.batcher.submit(model, pixels)
        except InspectionError as exc:
            # A frame that cannot be decoded is kept as evidence; one over a size limit is not
            # (a bomb must not fill the frame store).
            await self.reject_failsafe(req, exc, frame=None if isinstance(exc, PayloadTooLargeError) else body,
                                       model=model)
            raise
        return await self._record_decision(req, model, probs, heat, model_ms, body, started, stats)

    async def _record_decision(self, req: FrameRequest, model: LoadedModel, probs: Any, heat: np.ndarray | None,
                               model_ms: float, body: bytes, started: float,
                               stats: tuple[float, ...]) -> dict[str, Any]:
        decision = decide(probs, model.card)
        self.line.scored(req.station, model, stats, decision.score)
        verdict = decision.decision
        failsafe_reason = None
        data: dict[str, Any] = {"model_ms": round(model_ms, 3)}
        if req.capture_time is not None:
            data["capture_time"] = req.capture_time.isoformat()
        if req.raw_shape is not None:
            data["raw"] = raw_layout(req.raw_shape)
        if self.parts.is_late(req.station, req.part_id):
            # The part was already decided (fail-safe) without this view: say reject, as the part is.
            data["model_decision"] = verdict
            verdict, failsafe_reason = "reject", "late_view: the part was decided before this frame arrived"
        place = png = None
        if heat is not None and (verdict == "reject" or req.want_map):
            place = self._locate(req, model, heat, body)
            if verdict == "reject":
                # The reject's record keeps the map (content-addressed beside its frame).
                png = encode_png(heat)
                data["defect_map"] = {**place, "sha256": hashlib.sha256(png).hexdigest(),
                                      "cells": [int(heat.shape[0]), int(heat.shape[1])]}
        latency_ms = (time.perf_counter() - started) * 1000.0
        frame_sha256, frame = self._frame_for_log(verdict, failsafe_reason, body)
        entry = LogEntry(
            kind="inspection", inspection_id=new_id(), station=req.station, camera=req.camera, part_id=req.part_id,
            frame_sha256=frame_sha256, decision=verdict, defect_class=decision.defect_class, scores=decision.scores,
            threshold=decision.threshold, model_name=model.card.name, model_version=model.card.version,
            model_sha256=model.model_sha256, latency_ms=round(latency_ms, 3), failsafe_reason=failsafe_reason,
            actor=req.actor, data=data,
        )
        commit = asyncio.ensure_future(self._commit(entry, frame, png))
        if frame is not None:
            await asyncio.wait({commit})  # the frame is written first (worker thread); keep record order
        # Without a frame, the append is queued in the commit task's first step; a part record this
        # view completes is queued by the next task in the same loop iteration, right after it, and
        # the log hands the appends of one loop iteration to its writer together: ONE transaction
        # (one fsync instead of two).
        await self.parts.add_view(req.station, req.part_id, View(req.camera, entry.inspection_id, verdict,
                                                                 model.model_id, failsafe_reason, commit), req.ticket)
        try:
            await commit
        except InspectionError as exc:
            log.error("inspection record not stored, fail-safe reject of part %s: %s", req.part_id, exc)
            self.metrics.failsafe.labels(req.station, "log_error").inc()
            raise attach_failsafe(exc, {"decision": "reject", "reason": "log_error", "part_id": req.part_id})
        predicted = max(decision.scores, key=decision.scores.__getitem__)
        metrics = self.metrics
        metrics.child(metrics.decisions, req.station, verdict, predicted).inc()
        if failsafe_reason:
            metrics.failsafe.labels(req.station, "late_view").inc()
        elapsed = time.perf_counter() - started
        metrics.child(metrics.e2e_latency, req.station).observe(elapsed)
        answer: dict[str, Any] = {
            "inspection_id": entry.inspection_id,
            "part_id": req.part_id,
            "station": req.station,
            "camera": req.camera,
            "decision": verdict,
            "defect_class": decision.defect_class,
            "score": decision.score,
            "threshold": decision.threshold,
            "model_version": model.model_id,
            "latency_ms": round(latency_ms, 3),
        }
        if place is not None:
            answer["defect_map"] = place
        self.line.answered(req.station, answer, elapsed * 1000.0)
        return answer

    def _frame_for_log(self, verdict: str, failsafe_reason: str | None, body: bytes) -> tuple[str | None, bytes | None]:
        """(frame_sha256 for the entry, frame to hand to the log): one of them is None.

        The log keeps every reject's frame and passes' frames at its sample rate. When it would
        not keep this frame anyway (a pass, sample rate 0) only its sha256 is recorded, computed
        here: that spares the log a worker-thread hop per frame.
        """
        if verdict == "pass" and not failsafe_reason and self.log.frame_sample_rate == 0.0:
            return hashlib.sha256(body).hexdigest(), None
        return None, body

    @staticmethod
    def _locate(req: FrameRequest, model: LoadedModel, heat: np.ndarray, body: bytes) -> dict[str, Any]:
        """The map's peak, box and extent in the frame's pixels (the frame's size from its header:
        it was decoded already, so the header is known good)."""
        if req.raw_shape is not None:
            width, height = req.raw_shape[0], req.raw_shape[1]
        else:
            width, height = declared_size(body, max_pixels=MAX_FRAME_PIXELS)
        return locate(heat, model.card.input, width, height).as_dict()

    async def _commit(self, entry: LogEntry, frame: bytes | None, defect_map: bytes | None = None) -> StoredRecord:
        """Append one inspection record and publish it once durable."""
        record = await self.log.append_async(entry, frame=frame, defect_map=defect_map if frame is not None else None)
        self.bus.publish(DecisionEvent("inspection", record))
        return record

    # -- fail-safe -------------------------------------------------------------------------
    async def reject_failsafe(self, req: FrameRequest, exc: InspectionError, *, frame: bytes | None = None,
                              model: LoadedModel | None = None) -> StoredRecord | None:
        """Record a fail-safe reject of ``req``'s view because of ``exc`` and attach it to ``exc``.

        ``model``: the model that handled the frame, where one did; else the station's current one.
        (Read again here, a promotion that landed while the frame was scored named the new model
        beside the old one's error.)
        """
        code = exc.failsafe_code  # declared on the error's class (inspection.errors)
        reason = f"{code}: {exc}"
        model_version: str | None = None
        if model is None:
            try:
                model = self.models.current(req.station)
            except ModelError:
                model = None
        if model is not None:
            model_version = model.model_id
        entry = LogEntry(
            kind="inspection", inspection_id=new_id(), station=req.station, camera=req.camera, part_id=req.part_id,
            decision="reject", failsafe_reason=reason[:4000], actor=req.actor,
            model_name=model.card.name if model else None, model_version=model.card.version if model else None,
            latency_ms=round((time.perf_counter() - req.started) * 1000.0, 3) if req.started else None,
            data={"error": exc.code, **({"raw": raw_layout(req.raw_shape)} if req.raw_shape is not None else {})},
        )
        record: StoredRecord | None = None
        try:
            # A frame that cannot be decoded is still kept (evidence); an over-limit body never is.
            record = await self.log.append_async(entry, frame=frame or None)
        except InspectionError as log_exc:
            log.error("fail-safe record of part %s not stored: %s", req.part_id, log_exc)
        if record is not None:
            self.bus.publish(DecisionEvent("inspection", record))
        self.metrics.failsafe.labels(req.station, code).inc()
        self.line.failsafe(req.station, code, model)
        await self._view_failed(req, entry.inspection_id, code, model_version)
        # The id names a record only where one was stored (the log may be why the frame failed).
        attach_failsafe(exc, {"decision": "reject", "reason": code,
                              "inspection_id": entry.inspection_id if record is not None else None,
                              "stored": record is not None, "part_id": req.part_id, "station": req.station,
                              "camera": req.camera, "model_version": model_version})
        return record

    async def _view_failed(self, req: FrameRequest, inspection_id: str, code: str, model_version: str | None) -> None:
        view = View(req.camera, inspection_id, "reject", model_version, code)
        await self.parts.add_view(req.station, req.part_id, view, req.ticket)

    def _view_not_stored(self, part: Part) -> None:
        part.decision = "reject"
        part.failsafe_reason = "log_error: a view's inspection record could not be stored"
        self.metrics.failsafe.labels(part.station, "log_error").inc()

    def _part_entry(self, part: Part, views: list[View]) -> LogEntry:
        # The model that decided every view, when it is one and the same.
        models = {v.model_version for v in views if v.model_version}
        name = version = None
        if len(models) == 1:
            name, _, version = next(iter(models)).partition("/")
        return LogEntry(
            kind="part", inspection_id=new_id(), station=part.station, part_id=part.part_id,
            decision=part.decision, failsafe_reason=(part.failsafe_reason or None) and part.failsafe_reason[:4000],
            model_name=name, model_version=version,
            data={"views": [{"camera": v.camera, "inspection_id": v.inspection_id, "decision": v.decision,
                             "model_version": v.model_version, "failsafe_reason": v.failsafe_reason} for v in views],
                  "missing_cameras": part.missing},
        )

    async def _record_part(self, part: Part) -> None:
        views = [v for vs in part.views.values() for v in vs]
        if part.decision == "pass" and any(_failed(v.committed) for v in views):
            # A view's record already failed (a frame written first, then its record): the pass
            # part record must not be written at all, not even to be superseded below.
            self._view_not_stored(part)
        try:
            record: StoredRecord | None = await self.log.append_async(self._part_entry(part, views))
        except InspectionError as exc:
            log.error("part record of %s/%s not stored: %s", part.station, part.part_id, exc)
            record = None
        # Subscribers see a part after its views (their records share the commit or precede it).
        committed = [v.committed for v in views if v.committed is not None]
        outcomes = await asyncio.gather(*committed, return_exceptions=True)
        for v in views:
            # Decided parts stay remembered (parts_remembered) for late views and decision
            # queries: they must not keep each view's record, or a failed commit's traceback
            # with the frame's bytes, alive with them.
            v.committed = None
        if part.decision == "pass" and any(isinstance(o, BaseException) for o in outcomes):
            # A view's own record could not be stored: that view never became evidence, so the
            # part cannot pass. Record (or try to) the fail-safe reject that supersedes the pass.
            # (Only where the view's append was still in flight: it shares the part's commit, so
            # a failure of that commit left no pass record behind either.)
            self._view_not_stored(part)
            try:
                record = await self.log.append_async(self._part_entry(part, views))
            except InspectionError as exc:
                log.error("fail-safe part record of %s/%s not stored: %s", part.station, part.part_id, exc)
                record = None
        part.inspection_id = record.entry.inspection_id if record is not None else None
        if record is not None:
            self.bus.publish(DecisionEvent("part", record))
        self.metrics.child(self.metrics.part_decisions, part.station, part.decision or "reject").inc()
        missing = any(r.startswith("missing_view") for r in (part.failsafe_reason or "").split("; "))
        self.line.part(part.station, part.decision or "reject", failsafe=bool(part.failsafe_reason),
                       missing_views=max(len(part.missing), 1) if missing else 0)
        if missing:
            self.metrics.failsafe.labels(part.station, "missing_view").inc()


def _failed(commit: asyncio.Future[Any] | None) -> bool:
    """A view's log append that has already ended in an error."""
    return commit is not None and commit.done() and (commit.cancelled() or commit.exception() is not None)
