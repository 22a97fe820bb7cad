"""Typed dependencies on the app's state, for route handlers.

``create_app`` puts the settings and metrics on ``app.state`` when it builds the app, and the
models, log, batcher and service when its lifespan starts. A handler declares what it needs as
a parameter typed with one of these aliases (as ``SessionDep`` in the FastAPI template), so no
handler looks up ``request.app.state`` by name, and a request served before start-up gets a
clear 503 instead of an ``AttributeError``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from inspection.errors import NotReadyError
from inspection.log.store import SqlInspectionLog
from serving.batching import MicroBatcher
from serving.lifecycle import ModelManager
from serving.service import InspectionService
from serving.settings import ServeSettings
from serving.telemetry import ServingMetrics


def _state(conn: HTTPConnection, name: str, what: str) -> Any:
    value = getattr(conn.app.state, name, None)
    if value is None:
        raise NotReadyError(f"the server has not started yet: its {what} is not up (retry once /readyz answers 200)")
    return value


def get_settings(conn: HTTPConnection) -> ServeSettings:
    """The settings the app was built with."""
    settings: ServeSettings = conn.app.state.settings
    return settings


def get_metrics(conn: HTTPConnection) -> ServingMetrics:
    """The app's Prometheus metrics."""
    metrics: ServingMetrics = conn.app.state.metrics
    return metrics


def is_ready(conn: HTTPConnection) -> bool:
    """Whether start-up finished (models verified, log open, integrations up) and shutdown has not begun."""
    return bool(getattr(conn.app.state, "ready", False))


def get_models(conn: HTTPConnection) -> ModelManager:
    """The stations' models. Raises NotReadyError before start-up."""
    models: ModelManager = _state(conn, "models", "model manager")
    return models


def get_batcher(conn: HTTPConnection) -> MicroBatcher:
    """The micro-batcher in front of the models. Raises NotReadyError before start-up."""
    batcher: MicroBatcher = _state(conn, "batcher", "micro-batcher")
    return batcher


def get_service(conn: HTTPConnection) -> InspectionService:
    """The decision path (frames, parts). Raises NotReadyError before start-up."""
    service: InspectionService = _state(conn, "service", "inspection service")
    return service


def get_log(conn: HTTPConnection) -> SqlInspectionLog:
    """The app's inspection log (queries need the SQL store). Raises NotReadyError before start-up."""
    log: SqlInspectionLog = _state(conn, "log", "inspection log")
    return log


SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
ReadyDep = Annotated[bool, Depends(is_ready)]
ModelsDep = Annotated[ModelManager, Depends(get_models)]
BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]
ServiceDep = Annotated[InspectionService, Depends(get_service)]
LogDep = Annotated[SqlInspectionLog, Depends(get_log)]
