"""Operational routes: health (open), metrics, models (engineer) and settings/keys (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serving.auth import Principal, Require
from serving.deps import BatcherDep, MetricsDep, ModelsDep, ReadyDep, SettingsDep, get_models
from serving.settings import ServeSettings

ENGINEER = Require("engineer", "admin")
ADMIN = Require("admin")
METRICS = Require("engineer", "admin", "auditor")


def build_health_router(settings: ServeSettings) -> APIRouter:
    """``/healthz`` (the process answers) and ``/readyz`` (every station can score); both open."""
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="Readiness: every station has a verified model and the log is open")
    async def readyz(request: Request, ready: ReadyDep) -> JSONResponse:
        if not ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        models = get_models(request)  # up once ready (a dependency would refuse /readyz before start-up)
        problems = {s: p for s, p in models.ready().items() if p}
        health = getattr(request.app.state, "log_health", None)
        if health is not None and (log_problem := health.problem()):
            problems["log"] = log_problem  # not ready while the log cannot commit: frames would all fail
        body = {"status": "ready" if not problems else "not_ready", "problems": problems,
                "models": {s["station"]: s["model_version"] for s in models.status()},
                # a station kept on its model when its active version was refused still scores
                "refused": models.kept()}
        watch = getattr(request.app.state, "registry_watch", None)
        if watch is not None:
            body["registry"] = watch.status()  # unreachable is not a problem: verified models keep serving
        return JSONResponse(body, status_code=200 if not problems else 503)

    return router


def build_ops_router(settings: ServeSettings) -> APIRouter:
    """Metrics, model status and reload, settings and key listing."""
    router = APIRouter(tags=["operations"])

    @router.get("/metrics", summary="Prometheus metrics")
    async def metrics(request: Request, who: Annotated[Principal, Depends(METRICS)], telemetry: MetricsDep,
                      batcher: BatcherDep) -> Response:
        telemetry.queue_depth.set(batcher.depth)
        health = getattr(request.app.state, "log_health", None)
        if health is not None:
            health.sync_metrics()
        return Response(telemetry.render(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/v1/models", summary="The model version scoring each station")
    async def models(who: Annotated[Principal, Depends(ENGINEER)], manager: ModelsDep) -> JSONResponse:
        return JSONResponse({"stations": manager.status(), "swaps": manager.swaps})

    @router.post("/v1/models/reload", summary="Check models/active.json now (instead of at the next poll)")
    async def reload(who: Annotated[Principal, Depends(ENGINEER)], manager: ModelsDep) -> JSONResponse:
        changed = await manager.check()
        return JSONResponse({"changed": changed, "stations": manager.status()})

    @router.get("/v1/admin/settings", summary="The running settings (key digests left out)")
    async def admin_settings(who: Annotated[Principal, Depends(ADMIN)], running: SettingsDep) -> JSONResponse:
        return JSONResponse(running.redacted())

    @router.get("/v1/admin/keys", summary="Configured API keys: names and roles")
    async def admin_keys(who: Annotated[Principal, Depends(ADMIN)], running: SettingsDep) -> JSONResponse:
        return JSONResponse({"keys": [{"name": k.name, "role": k.role} for k in running.api_keys]})

    return router
