"""The auditor's routes: query, inspect, export and verify the inspection log; record dispositions.

``audit_router()`` is mounted by ``serving.app.create_app``; ``audit_page_router()`` serves the
audit web page (``static/audit.html``), which calls these routes with the key the auditor
pastes in. Routes are thin: they call ``inspection.log`` and let the app's domain-error handler
map ``NotFoundError``/``ValidationError``/... to 404/400/...
"""


import asyncio
import functools
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import HTTPConnection, Request

from inspection.card import ModelCard
from inspection.decisions import explain
from inspection.errors import ConflictError, InspectionError, NotFoundError
from inspection.log.chain import VerifyReport
from inspection.log.export import MEDIA_TYPES, iter_export, record_dict
from inspection.log.framestore import check_sha
from inspection.log.query import MAX_LIMIT, RecordFilter, count_records, model_notation, query_records
from inspection.log.records import LogEntry, RecordKind, StoredRecord
from inspection.log.retention import prune_frames
from inspection.log.store import SqlInspectionLog
from inspection.log.verify import pruned_after
from inspection.registry import ModelRegistry
from serving.deps import get_log as app_log
from serving.frames import CardLookup, frame_view, stored_frame
from serving.pages import static_page_router

log = logging.getLogger(__name__)

AUDIT_ROLES: tuple[Literal["auditor"], Literal["admin"]] = ("auditor", "admin")
#: Records a disposition may be about (a human confirms or overrides a machine decision).
DISPOSABLE_KINDS = ("inspection", "part")


def registry_cards(models_dir: Path) -> CardLookup:
    """``(name, version) -> card`` from the model registry (None when the version is gone)."""

    @functools.lru_cache(maxsize=128)
    def card(name: str, version: str) -> ModelCard | None:
        try:
            return ModelRegistry(models_dir).get(name, version).card
        except InspectionError:
            return None

    return card


def summary(rec: StoredRecord, cards: CardLookup | None = None) -> str | None:
    """What decided, in words (the record list and detail show it on every decision)."""
    e = rec.entry
    if e.kind not in ("inspection", "part"):
        return None
    if e.failsafe_reason and e.kind == "part":
        # A part's reason is its views' reasons, each after its camera ("top: unsupported_media_type";
        # serving.parts), or the deadline's: no one code to pull out of its front.
        return f"fail-safe reject: {e.failsafe_reason}"
    if e.failsafe_reason:
        code, _, why = e.failsafe_reason.partition(": ")
        return f"fail-safe reject ({code}): {why or code}"
    if e.kind == "part":
        views = (e.data or {}).get("views") or []
        rejected = [v.get("camera") for v in views if v.get("decision") == "reject"]
        if e.decision == "reject":
            who = ", ".join(map(str, rejected)) or "a view"
            return f"part reject: rejected by {who} ({len(rejected)} of {len(views)} views)"
        return f"part pass: all {len(views)} view(s) passed"
    card = cards(e.model_name, e.model_version) if cards and e.model_name and e.model_version else None
    if not e.scores or e.threshold is None:
        return f"{e.decision}"
    if card is None:
        top = max(e.scores, key=e.scores.__getitem__)
        return (f"threshold {e.threshold:.3f}, most likely {top} ({e.scores[top]:.3f}) → {e.decision} "
                "(the model's card is not in this registry)")
    late = (e.data or {}).get("model_decision")
    why = explain(e.scores, good_class=card.good_class, threshold=e.threshold, per_class=card.thresholds.per_class,
                  decision=str(late or e.decision))
    return why if not late else f"{why}, but the part was already decided → reject (late view)"


def record_json(rec: StoredRecord, log: SqlInspectionLog | None = None,
                cards: CardLookup | None = None) -> dict[str, Any]:
    """A stored record as the API returns it, plus whether its frame is kept, the model as
    ``name/version`` and the decision in words."""
    out = record_dict(rec)
    if log is not None:
        out["frame_stored"] = log.has_frame(rec.entry.frame_sha256)
    e = rec.entry
    out["model"] = model_notation(e.model_name, e.model_version)
    out["summary"] = summary(rec, cards)
    if e.decision == "pass" and not e.failsafe_reason:
        out["defect_class"] = None  # the class a pass resembled is not a defect found (scores keep it)
    return out


class FilterParams(BaseModel):
    """Query-string filters shared by the list and export routes."""

    model_config = ConfigDict(extra="forbid")

    time_from: datetime | None = Field(None, description="inclusive, ISO-8601 (naive = UTC)")
    time_to: datetime | None = Field(None, description="exclusive, ISO-8601 (naive = UTC)")
    station: str | None = Field(None, max_length=128)
    camera: str | None = Field(None, max_length=128)
    part_id: str | None = Field(None, max_length=256)
    decision: str | None = Field(None, max_length=32)
    defect_class: str | None = Field(None, max_length=128)
    model_name: str | None = Field(None, max_length=128)
    model_version: str | None = Field(None, max_length=128)
    kind: RecordKind | None = None
    ref: str | None = Field(None, max_length=64)

    def to_filter(self) -> RecordFilter:
        """The store's filter (``model_version`` may be ``name/version``: ``RecordFilter`` splits it)."""
        return RecordFilter(**self.model_dump())


class ListParams(FilterParams):
    cursor: int | None = Field(None, ge=0, le=2**62, description="next_cursor of the previous page")
    limit: int = Field(100, ge=1, le=MAX_LIMIT)
    order: Literal["asc", "desc"] = "desc"


class ExportParams(FilterParams):
    format: Literal["csv", "jsonl"] = "csv"


class DispositionIn(BaseModel):
    """An auditor's verdict on a decision: confirm it, or override it with another decision."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["confirm", "override"]
    decision: Literal["pass", "reject"] | None = Field(
        None, description="required for override: the decision that should have been made")
    defect_class: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]*$")
    note: str | None = Field(None, max_length=2000, pattern=r"^[^\x00]*$")

    @model_validator(mode="after")
    def _override_needs_decision(self) -> "DispositionIn":
        if self.action == "override" and self.decision is None:
            raise ValueError("an override needs the decision that should have been made: 'pass' or 'reject'")
        return self


def _chain_status(log: SqlInspectionLog, rec: StoredRecord) -> dict[str, Any]:
    """Whether this one record still hashes to its stored hash and links to its neighbours."""
    from inspection.log.chain import GENESIS, record_hash
    from inspection.log.store import normalise_entry

    hash_ok = record_hash(rec.seq, rec.prev_hash, normalise_entry(rec.entry)) == rec.hash
    if rec.seq == 1:
        prev_ok = rec.prev_hash == GENESIS
    else:
        try:
            prev_ok = log.get_seq(rec.seq - 1).hash == rec.prev_hash
        except NotFoundError:
            prev_ok = False
    head_seq, head_hash = log.head()
    if rec.seq == head_seq:
        next_ok = head_hash == rec.hash
    else:
        try:
            next_ok = log.get_seq(rec.seq + 1).prev_hash == rec.hash
        except NotFoundError:
            next_ok = False
    return {"hash_ok": hash_ok, "links_previous": prev_ok, "linked_by_next": next_ok,
            "ok": hash_ok and prev_ok and next_ok}


def frame_status(log: SqlInspectionLog, rec: StoredRecord) -> dict[str, Any]:
    """The record's frame, re-hashed now, in words: ``state`` is ``none`` (no frame named),
    ``intact``, ``altered`` or ``deleted`` (tampering), ``pruned`` (retention, with its record),
    ``not_kept`` (a pass not sampled) or ``no_store`` (this log keeps no frames)."""
    sha = rec.entry.frame_sha256
    if not sha:
        return {"state": "none", "text": "This record names no frame."}
    if log.frames is None:
        return {"state": "no_store", "text": "This log keeps no frames here (no frames directory)."}
    try:
        verdict = log.frames.check(check_sha(sha))
    except InspectionError as exc:
        return {"state": "unreadable", "tampering": False, "text": f"The frame could not be read: {exc}"}
    if verdict is None:
        return {"state": "intact", "tampering": False,
                "text": f"Frame matches its sha256 {sha[:12]}… (re-hashed now)."}
    if verdict != "missing":
        return {"state": "altered", "tampering": True,
                "text": f"TAMPERED: the stored frame no longer hashes to {sha[:12]}…: it was swapped or edited."}
    kept = isinstance(rec.entry.data, dict) and rec.entry.data.get("frame_kept") is True
    if not kept:
        return {"state": "not_kept", "tampering": False,
                "text": "Frame not kept: passes are stored only at the sample rate."}
    with log.engine.connect() as conn:  # every prune after this record, however many (not one page)
        pruned = pruned_after(conn, sha, rec.seq)
    if pruned:
        return {"state": "pruned", "tampering": False, "text": "Frame removed by retention (a prune record lists it)."}
    return {"state": "deleted", "tampering": True,
            "text": "TAMPERED: the frame was stored with this record and is gone, and no prune record removed it."}


def _defect_map(log: SqlInspectionLog, rec: StoredRecord) -> dict[str, Any] | None:
    """The reject's defect map as the record names it (peak, box, extent in frame pixels), and
    where to fetch its PNG when it is stored intact (re-hashed on every read)."""
    named = (rec.entry.data or {}).get("defect_map")
    if not isinstance(named, dict):
        return None
    sha = named.get("sha256")
    stored = isinstance(sha, str) and log.has_frame(sha)
    url = f"/v1/audit/records/{rec.entry.inspection_id}/map" if stored else None
    return {**named, "stored": stored, "url": url}


def app_cards(conn: HTTPConnection) -> CardLookup | None:
    """The app's card lookup (one per app, cached), from its settings' model registry."""
    state = conn.app.state
    lookup = getattr(state, "audit_cards", None)
    if lookup is None:
        settings = getattr(state, "settings", None)
        if settings is None:
            return None
        lookup = state.audit_cards = registry_cards(settings.models_dir)
    return lookup


def audit_router(
    *,
    require: Any = None,
    get_log: Callable[[HTTPConnection], SqlInspectionLog] = app_log,
) -> APIRouter:
    """The ``/v1/audit`` routes. ``require`` is the auth dependency (default: auditor or admin),
    ``get_log`` the dependency finding the log (default: the app's, ``serving.deps.get_log``)."""
    if require is None:
        from serving.auth import Require

        require = Require(*AUDIT_ROLES)
    LogDep = Annotated[SqlInspectionLog, Depends(get_log)]
    WhoDep = Annotated[Any, Depends(require)]
    CardsDep = Annotated[CardLookup | None, Depends(app_cards)]
    router = APIRouter(prefix="/v1/audit", tags=["audit"])

    @router.get("/records", summary="Records matching the filters, one page at a time (cursor = seq)")
    def list_records(who: WhoDep, log: LogDep, cards: CardsDep,
                     params: Annotated[ListParams, Query()]) -> dict[str, Any]:
        flt = FilterParams.model_validate(params.model_dump(include=set(FilterParams.model_fields))).to_filter()
        page = query_records(log, flt, cursor=params.cursor, limit=params.limit, order=params.order)
        out: dict[str, Any] = {"records": [record_json(r, log, cards) for r in page.records],
                               "next_cursor": page.next_cursor}
        if params.cursor is None:  # the first page of a search carries its total
            out["total"] = count_records(log, flt)
        return out

    @router.get("/records/{inspection_id}", summary="One record, its dispositions, frame and chain status")
    def get_record(who: WhoDep, log: LogDep, cards: CardsDep, inspection_id: str) -> dict[str, Any]:
        rec = log.get(inspection_id)
        refs = query_records(log, RecordFilter(ref=inspection_id), limit=MAX_LIMIT, order="asc")
        sha = rec.entry.frame_sha256
        return {
            "record": record_json(rec, log, cards),
            "related": [record_json(r, log, cards) for r in refs.records],
            "frame": {"sha256": sha, "stored": (kept := log.has_frame(sha)),
                      "url": f"/v1/audit/records/{inspection_id}/frame" if kept else None,
                      "view_url": f"/v1/audit/records/{inspection_id}/frame/view" if kept else None,
                      **frame_status(log, rec)},
            "chain": _chain_status(log, rec),
            "defect_map": _defect_map(log, rec),
        }

    @router.get("/records/{inspection_id}/frame", summary="The record's frame byte for byte as the camera sent it "
                "(404 if not kept or pruned); raw pixels with their layout in X-Frame-Width/-Height/-Channels",
                response_class=Response, responses={200: {"content": {
                    "image/png": {}, "image/jpeg": {}, "image/bmp": {}, "image/tiff": {},
                    "application/octet-stream": {}}}})
    def get_frame(who: WhoDep, log: LogDep, inspection_id: str) -> Response:
        return stored_frame(log, log.get(inspection_id))

    @router.get("/records/{inspection_id}/frame/view", summary="The record's frame as an image a browser shows, "
                "same size: 8-bit PNG/JPEG/BMP unchanged; TIFF, 16-bit and raw frames as an 8-bit PNG (16-bit "
                "through the deciding model's levels); 422 for a frame refused as undecodable",
                response_class=Response, responses={200: {"content": {
                    "image/png": {}, "image/jpeg": {}, "image/bmp": {}}}})
    def get_frame_view(who: WhoDep, log: LogDep, cards: CardsDep, inspection_id: str) -> Response:
        return frame_view(log, log.get(inspection_id), cards)

    @router.get("/records/{inspection_id}/map", summary="The reject's defect map as stored: 8-bit PNG, one pixel "
                "per map cell (404 when the record has none)",
                response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def get_map(who: WhoDep, log: LogDep, inspection_id: str) -> Response:
        rec = log.get(inspection_id)
        named = (rec.entry.data or {}).get("defect_map")
        if not isinstance(named, dict) or not named.get("sha256"):
            raise NotFoundError(f"record {inspection_id!r} has no defect map: only rejects decided by a model "
                                "with maps keep one (passes, fail-safe rejects and older models' records do not)")
        data = log.frame(check_sha(named["sha256"]))
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=86400",
                                                               "ETag": f'"{named["sha256"]}"',
                                                               "X-Content-Type-Options": "nosniff"})

    @router.get("/export", summary="All matching records as CSV or JSON Lines, streamed (ascending seq)",
                response_class=StreamingResponse,
                responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}})
    def export(who: WhoDep, log: LogDep, params: Annotated[ExportParams, Query()]) -> StreamingResponse:
        flt = FilterParams.model_validate(params.model_dump(exclude={"format"})).to_filter()
        chunks = iter_export(log, params.format, flt)
        # The first chunk is read before the answer starts: a log that cannot be read gets a
        # structured error, not a stream that dies after its 200 header.
        first = next(chunks, "")
        filename = f"inspection-log.{params.format}"
        return StreamingResponse(itertools.chain([first], chunks), media_type=MEDIA_TYPES[params.format],
                                 headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    @router.post("/verify", summary="Verify the chain, the frames (re-hashed) and the signed checkpoints; "
                                     "200 with ok:false and every problem named when anything was tampered with")
    def verify(request: Request, who: WhoDep, log: LogDep) -> dict[str, Any]:
        checkpointer = getattr(request.app.state, "checkpointer", None)
        check = checkpointer.check() if checkpointer is not None else None
        report: VerifyReport = log.verify(checkpoint_check=check)
        return report.as_dict()

    @router.post("/records/{inspection_id}/dispositions", status_code=201,
                 summary="Confirm or override a decision: a new record referencing the original")
    def add_disposition(who: WhoDep, log: LogDep, inspection_id: str,
                        body: Annotated[DispositionIn, Body()]) -> dict[str, Any]:
        original = log.get(inspection_id)
        if original.entry.kind not in DISPOSABLE_KINDS:
            raise ConflictError(f"record {inspection_id!r} is a {original.entry.kind!r} record; "
                                f"dispositions apply to {list(DISPOSABLE_KINDS)} records")
        e = original.entry
        decision = e.decision if body.action == "confirm" else body.decision
        entry = LogEntry(
            kind="disposition", ref=inspection_id, station=e.station, camera=e.camera, part_id=e.part_id,
            frame_sha256=e.frame_sha256, decision=decision,
            defect_class=(body.defect_class if body.defect_class is not None
                          else e.defect_class if body.action == "confirm" else None),
            model_name=e.model_name, model_version=e.model_version, model_sha256=e.model_sha256,
            actor=getattr(who, "name", None),
            data={"action": body.action, "note": body.note, "original_decision": e.decision,
                  "original_defect_class": e.defect_class, "original_seq": original.seq},
        )
        return {"record": record_json(log.append(entry), log)}

    return router


def audit_page_router() -> APIRouter:
    """``GET /audit``: the audit page (static; it asks for an API key and calls the API)."""
    return static_page_router("/audit", "audit.html")


def retention_lifespan(settings: Any) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A lifespan applying the frame retention policy every ``retention_interval_s``.

    It rides on the audit router (FastAPI nests a router's lifespan inside the app's), so it
    starts after the app's lifespan opened the log and stops before the log closes.
    """

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        max_age = getattr(settings, "frames_max_age_days", None)
        max_bytes = getattr(settings, "frames_max_bytes", None)
        if max_age is None and max_bytes is None:
            yield
            return
        task = asyncio.create_task(_retention_loop(app, max_age, max_bytes, float(settings.retention_interval_s)))
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    return lifespan


async def _retention_loop(app: Any, max_age_days: float | None, max_bytes: int | None, interval_s: float) -> None:
    max_age = timedelta(days=max_age_days) if max_age_days is not None else None
    while True:
        log_ = getattr(app.state, "log", None)
        if log_ is not None and not (isinstance(log_, SqlInspectionLog) and log_.frames is not None):
            log.warning("frame retention is configured but the log keeps no frames; retention is off")
            return
        if log_ is not None:
            try:
                result = await asyncio.to_thread(prune_frames, log_, max_age=max_age, max_bytes=max_bytes,
                                                 actor="retention")
                if result.removed:
                    log.info("retention removed %d frame(s), %d bytes; %d kept",
                             len(result.removed), result.bytes_freed, result.kept)
            except InspectionError as exc:
                log.error("frame retention failed: %s", exc)
        await asyncio.sleep(interval_s)


def build_router(settings: Any = None) -> APIRouter:
    """The app's router factory: the ``/v1/audit`` API (auditor, admin), the ``/audit`` page and,
    when ``settings`` sets a frame retention limit, the periodic pruning."""
    router = APIRouter(lifespan=retention_lifespan(settings)) if settings is not None else APIRouter()
    router.include_router(audit_router())
    router.include_router(audit_page_router())
    return router
