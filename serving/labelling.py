"""The engineer's labelling routes and page.

``GET /label`` serves ``static/label.html`` (it asks for an engineer key and calls the API).
The API, for roles engineer and admin:

==========================================================  =====================================
``GET  /v1/labelling/queue?limit=&include_labelled=``       classes + frames to label, queue order
``GET  /v1/labelling/frames/{frame_id}``                   one frame: record, label history, the
                                                            current model's prediction and score
``GET  /v1/labelling/frames/{frame_id}/image``             the stored frame's bytes
``POST /v1/labelling/frames/{frame_id}/labels``            ``{label, expected_revision}`` -> 201
``POST /v1/labelling/frames/{frame_id}/undo``              ``{expected_revision}`` -> 201
==========================================================  =====================================

A label outside the class list is a 400, an unknown frame id a 404, a relabel by someone who
saw an older revision a 409 (see ``inspection.labels``); none of them writes anything.
"""

# No "from __future__ import annotations": FastAPI must resolve the route-local Annotated aliases.

import base64
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from inspection import labels as L
from inspection.errors import InspectionError
from inspection.log.framestore import check_sha
from inspection.log.query import MAX_LIMIT
from serving.audit import app_cards
from serving.auth import Principal, Require
from serving.deps import LogDep, ModelsDep, SettingsDep
from serving.frames import CardLookup, frame_view
from serving.lifecycle import ModelManager
from serving.pages import static_page_router
from serving.settings import Role, ServeSettings

LABEL_ROLES: tuple[Role, ...] = ("engineer", "admin")


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=128)
    #: The revision the labeller saw (0 = unlabelled); a newer one on the server -> 409.
    expected_revision: int = Field(ge=0, le=1_000_000)


class UndoIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expected_revision: int = Field(ge=1, le=1_000_000)


def label_classes(settings: ServeSettings, models: ModelManager) -> list[str]:
    """The configured label classes, else the union of the active models' classes (in order)."""
    if settings.labelling.classes:
        return list(settings.labelling.classes)
    out: list[str] = []
    for entry in models.status():
        for c in entry.get("classes") or []:
            if c not in out:
                out.append(c)
    return out


def _queue_options(settings: ServeSettings, models: ModelManager) -> L.QueueOptions:
    s = settings.labelling
    good: dict[str, str] = {}
    for v in models.registry.list_versions():
        if v.card.good_class is not None:
            good.setdefault(v.name, v.card.good_class)
    return L.QueueOptions(margin=s.margin, pass_sample=s.pass_sample, window=s.window, seed=s.seed, good_classes=good)


def _current_prediction(settings: ServeSettings, models: ModelManager, rec: Any, data: bytes) -> dict[str, Any]:
    """The station's model *now* on this frame (it may differ from the one that decided it)."""
    from inspection.decisions import decide, explain
    from inspection.defectmap import encode_png, locate
    from inspection.frameview import RawLayout, decode_stored
    from inspection.preprocess import to_model_input

    station = rec.entry.station or settings.labelling.import_station or next(iter(settings.stations))
    try:
        model = models.current(station)
        source = f"frame {rec.entry.inspection_id}"
        image = decode_stored(data, RawLayout.of_record(rec.entry.data), source=source)
        pixels = to_model_input(image, model.card.input, source=source)
        batch_probs, heat = model.score(pixels[np.newaxis])
        probs = batch_probs[0]
        # Where the current model sees the defect (a model without maps: nothing to overlay).
        where = None
        if heat is not None:
            where = {**locate(heat[0], model.card.input, image.shape[1], image.shape[0]).as_dict(),
                     "png": "data:image/png;base64," + base64.b64encode(encode_png(heat[0])).decode("ascii")}
    except InspectionError as exc:
        return {"station": station, "error": str(exc)}
    d = decide(probs, model.card)
    predicted = model.card.classes[int(np.argmax(probs))]
    why = explain(d.scores, good_class=model.card.good_class, threshold=d.threshold,
                  per_class=model.card.thresholds.per_class, decision=d.decision)
    return {"station": station, "model_version": model.model_id, "decision": d.decision, "predicted_class": predicted,
            "defect_class": d.defect_class, "score": d.score, "threshold": d.threshold, "scores": d.scores,
            "summary": why, "defect_map": where}


def labelling_router() -> APIRouter:
    """The ``/v1/labelling`` routes (engineer, admin)."""
    require = Require(*LABEL_ROLES)
    WhoDep = Annotated[Principal, Depends(require)]
    CardsDep = Annotated[CardLookup | None, Depends(app_cards)]
    router = APIRouter(prefix="/v1/labelling", tags=["labelling"])

    @router.get("/queue", summary="Frames to label: uncertain first, then rejects, sampled passes, imports")
    def queue(who: WhoDep, log: LogDep, settings: SettingsDep, models: ModelsDep,
              limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
              include_labelled: bool = False) -> dict[str, Any]:
        items, progress = L.queue_with_progress(log, options=_queue_options(settings, models), limit=limit,
                                                include_labelled=include_labelled)
        return {"classes": label_classes(settings, models), "items": [q.as_dict() for q in items],
                "progress": progress}

    @router.get("/frames/{frame_id}", summary="One frame: its record, label history and the current model's prediction")
    async def frame(who: WhoDep, log: LogDep, settings: SettingsDep, models: ModelsDep,
                    frame_id: str) -> dict[str, Any]:
        rec = await run_in_threadpool(L.frame_record, log, frame_id)
        data = await run_in_threadpool(log.frame, check_sha(rec.entry.frame_sha256 or ""))
        hist = await run_in_threadpool(L.history, log, frame_id)
        item = L.QueueItem(frame_id, "import" if L.is_import(rec) else "production", rec, hist.revision, hist.current)
        prediction = await run_in_threadpool(_current_prediction, settings, models, rec, data)
        return {"frame": item.as_dict(), "history": [h.as_dict() for h in hist.history],
                "prediction": prediction, "classes": label_classes(settings, models),
                "image_url": f"/v1/labelling/frames/{frame_id}/image"}

    @router.get("/frames/{frame_id}/image", summary="The frame as an image a browser shows, same size (8-bit "
                "PNG/JPEG/BMP as sent; TIFF, 16-bit and raw frames as an 8-bit PNG); the audit API gives it as sent",
                response_class=Response, responses={200: {"content": {"image/png": {}, "image/jpeg": {},
                                                                     "image/bmp": {}}}})
    def image(who: WhoDep, log: LogDep, cards: CardsDep, frame_id: str) -> Response:
        return frame_view(log, L.frame_record(log, frame_id), cards)

    @router.post("/frames/{frame_id}/labels", status_code=201, summary="Label a frame (a new label record)")
    def add_label(who: WhoDep, log: LogDep, settings: SettingsDep, models: ModelsDep, frame_id: str,
                  body: Annotated[LabelIn, Body()]) -> dict[str, Any]:
        lab = L.add_label(log, frame_id, body.label, classes=label_classes(settings, models), actor=who.name,
                          expected_revision=body.expected_revision)
        return {"label": lab.as_dict(), "revision": lab.revision}

    @router.post("/frames/{frame_id}/undo", status_code=201, summary="Undo the frame's latest label (a new record)")
    def undo(who: WhoDep, log: LogDep, frame_id: str, body: Annotated[UndoIn, Body()]) -> dict[str, Any]:
        lab = L.undo_label(log, frame_id, actor=who.name, expected_revision=body.expected_revision)
        return {"label": lab.as_dict(), "revision": lab.revision}

    return router


def label_page_router() -> APIRouter:
    """``GET /label``: the labelling page (static; it asks for an API key and calls the API)."""
    return static_page_router("/label", "label.html")


def build_router(settings: Any = None) -> APIRouter:
    """The app's router factory: the ``/v1/labelling`` API (engineer, admin) and the ``/label`` page."""
    router = APIRouter()
    router.include_router(labelling_router())
    router.include_router(label_page_router())
    return router
