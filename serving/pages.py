"""The app's web pages: static HTML files that ask for an API key once and call the JSON API."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

# The pages hold an API key in sessionStorage: allow only our own scripts and images, and
# never cache them (a shared line PC's browser must not keep an auditor's page around).
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                               "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'",
}


def static_page_router(path: str, filename: str) -> APIRouter:
    """``GET path`` answers ``serving/static/<filename>`` (read per request: pages are small)."""
    router = APIRouter(include_in_schema=False)

    @router.get(path, response_class=HTMLResponse)
    def page() -> HTMLResponse:
        html = resources.files("serving").joinpath(f"static/{filename}").read_text(encoding="utf-8")
        return HTMLResponse(html, headers=_HEADERS)

    return router


def static_script_router(path: str, filename: str) -> APIRouter:
    """``GET path`` answers ``serving/static/<filename>`` as JavaScript (a script the pages share)."""
    router = APIRouter(include_in_schema=False)

    @router.get(path)
    def script() -> Response:
        js = resources.files("serving").joinpath(f"static/{filename}").read_text(encoding="utf-8")
        return Response(js, media_type="text/javascript", headers={"Cache-Control": "no-store",
                                                                   "X-Content-Type-Options": "nosniff"})

    return router
