"""Run the app under uvicorn, tuned for latency (uvloop + httptools when installed, no access log)."""

from __future__ import annotations

import importlib.util
import logging

from inspection.errors import ConfigError
from serving.settings import ServeSettings

log = logging.getLogger(__name__)


def uvicorn_config(settings: ServeSettings, *, host: str | None = None, port: int | None = None, app=None):  # type: ignore[no-untyped-def]
    """The uvicorn ``Config`` for ``settings`` (one worker: models and batching live in-process)."""
    import uvicorn

    from serving.app import create_app

    fast = importlib.util.find_spec("uvloop") is not None
    return uvicorn.Config(
        app if app is not None else create_app(settings),
        host=host or settings.host,
        port=settings.port if port is None else port,
        loop="uvloop" if fast else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") is not None else "h11",
        ws="websockets-sansio" if importlib.util.find_spec("websockets") is not None else "auto",
        lifespan="on",
        access_log=False,
        log_level="warning",
        # Frames come in bursts from a few clients; keep their connections open.
        timeout_keep_alive=30,
        # Without a bound uvicorn waits for every connection on SIGTERM, and a /line page's event
        # stream never ends: one wall screen kept the server from stopping until it was killed,
        # skipping the clean stop (open parts decided, the log closed).
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )


def serve(settings: ServeSettings, *, host: str | None = None, port: int | None = None) -> None:
    """Serve until interrupted.

    Raises:
        ModelIntegrityError / ModelCardError: an active model failed verification at start.
        ConfigError: the server could not start (e.g. the port is taken).
    """
    import uvicorn

    from serving.app import create_app

    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(settings, host=host, port=port, app=app))
    try:
        server.run()
    except SystemExit:
        # uvicorn exits(3) when the lifespan fails; surface the domain error instead.
        error = getattr(app.state, "startup_error", None)
        if error is not None:
            raise error from None
        raise
    error = getattr(app.state, "startup_error", None)
    if error is not None:
        raise error
    if not server.started:
        raise ConfigError(f"the server did not start on {host or settings.host}:"
                          f"{settings.port if port is None else port} (see the log above)")
