"""The front door: ``GET /`` (a page) and ``GET /v1/home`` (what it shows, per caller).

A newcomer, an auditor or an engineer opens the server's address and finds the pages their role
may use, the stations with their active models, and the server's version. The page list is
built from the routes the app actually serves (a server built without the labelling router
offers no labelling page) and the roles each page's API admits: one source of truth.
"""

from __future__ import annotations

from importlib import metadata
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from starlette.requests import Request

from serving.audit import AUDIT_ROLES
from serving.auth import Principal, Require
from serving.deps import ModelsDep, SettingsDep
from serving.labelling import LABEL_ROLES
from serving.monitoring.page import LINE_ROLES
from serving.pages import static_page_router, static_script_router
from serving.settings import ROLES, ServeSettings

#: Every page a role may be offered: (path, title, what it is for, roles its API admits).
PAGES: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("/line", "Line", "live counts, the reject-rate control chart, drift and alarms per station", LINE_ROLES),
    ("/audit", "Audit log", "every decision, its frame, model and PLC acknowledgement; chain verification",
     AUDIT_ROLES),
    ("/label", "Labelling", "label frames from production for the next training", LABEL_ROLES),
    ("/docs", "API reference", "the HTTP API (OpenAPI)", ROLES),
]

ANYONE = Require(*ROLES)


def _version() -> str:
    try:
        return metadata.version("inspection")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_router(settings: ServeSettings) -> APIRouter:
    """``/`` (open: the page asks for a key) and ``/v1/home`` (any role)."""
    router = APIRouter(tags=["home"])
    router.include_router(static_page_router("/", "home.html"))
    # The defect-map overlay the audit and labelling pages share (no key needed: it is code).
    router.include_router(static_script_router("/static/defectmap.js", "defectmap.js"))

    @router.get("/v1/home", summary="The caller's pages, the stations with their active models, the version")
    async def home(request: Request, who: Annotated[Principal, Depends(ANYONE)], running: SettingsDep,
                   models: ModelsDep) -> dict[str, Any]:
        served = set(request.app.state.route_paths) | {"/docs"}  # /docs: FastAPI's own
        pages = [{"path": path, "title": title, "about": about}
                 for path, title, about, roles in PAGES if path in served and who.role in roles]
        active = {s["station"]: s for s in models.status()}
        stations = [{"station": name, "cameras": list(station.cameras),
                     "model": active.get(name, {}).get("model_version"),
                     "problem": active.get(name, {}).get("error")}
                    for name, station in sorted(running.stations.items())]
        return {"caller": {"name": who.name, "role": who.role}, "version": _version(), "pages": pages,
                "stations": stations}

    return router
