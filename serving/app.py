"""Assembles the serving app: ``create_app(settings)``. Routes live in their own modules.

Extending the app (other packages add one line each):

* a router: add its factory ``(settings) -> APIRouter | None`` to ``default_routers()``;
  every route declares its roles with ``Depends(serving.auth.Require(...))`` (the role x route
  test walks ``app.routes``, so a new route is covered without touching the test);
* start-up/shutdown work (a PLC server, an MQTT client): add a factory
  ``(app) -> async context manager`` to ``default_lifespan_hooks()``. Hooks are entered after
  the models, log, batcher and decision bus (``app.state.bus``) are up, and left before them.

Nothing is built at import time; tests pass their own settings (and may inject a log store).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import iter_route_contexts
from starlette.types import ASGIApp, Receive, Scope, Send

from inspection.errors import ConfigError, InspectionError
from inspection.log.records import InspectionLog
from inspection.log.store import SqlInspectionLog
from serving import errors, intake
from serving.auth import KeyStore
from serving.batching import MicroBatcher
from serving.events import DecisionBus
from serving.lifecycle import ModelManager
from serving.service import InspectionService
from serving.settings import ServeSettings
from serving.telemetry import ServingMetrics

log = logging.getLogger(__name__)

RouterFactory = Callable[[ServeSettings], "APIRouter | None"]
LifespanHook = Callable[[FastAPI], AbstractAsyncContextManager[None]]


class InspectionApp(FastAPI):
    """FastAPI, except that frames (``POST /v1/inspections``) are answered first, directly.

    See ``serving.intake.answer_frame``: the route still exists (OpenAPI, auth matrix), but
    the frames every line controller sends skip FastAPI's per-request work, middleware
    included. So the lane and user middleware exclude each other: ``enable_frame_lane``
    refuses an app with middleware, and ``add_middleware`` (``@app.middleware`` too) refuses
    once the lane is on; build the app with ``create_app(..., frame_lane=False)`` to put
    frames through the router and its middleware.
    """

    frame_lane: bool = False

    def enable_frame_lane(self) -> None:
        """Answer frames ahead of the router.

        Raises:
            ConfigError: middleware is configured, which the lane would skip for frames.
        """
        if self.user_middleware:
            raise ConfigError(_lane_conflict([m.cls for m in self.user_middleware]))
        self.frame_lane = True

    def add_middleware(self, middleware_class: Any, *args: Any, **kwargs: Any) -> None:
        """As Starlette's; raises ConfigError while the frame lane is on (frames would skip it)."""
        if self.frame_lane:
            raise ConfigError(_lane_conflict([middleware_class]))
        super().add_middleware(middleware_class, *args, **kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        # At start: middleware configured past add_middleware (user_middleware edited directly)
        # is refused here too, before the app serves anything.
        if self.frame_lane and self.user_middleware:
            raise ConfigError(_lane_conflict([m.cls for m in self.user_middleware]))
        return super().build_middleware_stack()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.frame_lane and intake.is_frame_request(scope):
            scope["app"] = self  # as Starlette sets it: handlers find app.state through the request
            await intake.answer_frame(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _lane_conflict(middleware: Sequence[Any]) -> str:
    names = ", ".join(getattr(m, "__name__", repr(m)) for m in middleware)
    return (f"middleware {names} would be skipped for frames: the frame lane answers {intake.INSPECTIONS_PATH} "
            "ahead of all middleware; either add no middleware, or build the app with "
            "create_app(..., frame_lane=False) so frames go through the router and its middleware")


def default_routers() -> list[RouterFactory]:
    """Every router the product serves."""
    from serving import admin, audit, home, intake, labelling
    from serving.monitoring import page as line_page

    return [admin.build_health_router, intake.build_router, admin.build_ops_router, audit.build_router,
            labelling.build_router, line_page.build_router, home.build_router]


def default_lifespan_hooks() -> list[LifespanHook]:
    """Start-up/shutdown work of optional integrations (line, PLC, MQTT)."""
    from serving import checkpointing, loghealth, modeltrust, registrywatch
    from serving.line.integration import lifespan_hook as line_hook
    from serving.monitoring import alarms

    # Line first: the log's, the model's and the line watch's alarms and the checkpoints are
    # published over the stations' MQTT.
    return [line_hook, loghealth.lifespan_hook, checkpointing.lifespan_hook, modeltrust.lifespan_hook,
            alarms.lifespan_hook, registrywatch.lifespan_hook]


def open_inspection_log(settings: ServeSettings) -> InspectionLog:
    """The store named by ``settings.log_url`` (SQLite default, PostgreSQL optional)."""
    from inspection.log.store import open_log

    options: dict[str, Any] = {}
    if settings.frame_sample_rate is not None:
        options["frame_sample_rate"] = settings.frame_sample_rate
    if settings.log_url.startswith("sqlite:///"):
        options["sqlite_synchronous"] = settings.log_sqlite_synchronous
    return open_log(settings.log_url, frames_dir=settings.frames_dir, min_free_bytes=settings.log_min_free_bytes,
                    **options)


async def _record_frame_store(store: SqlInspectionLog) -> None:
    """Record where this server keeps frames when the log does not say so yet (or says
    otherwise): ``inspection audit show`` reads it to find the frames (inspection.log.query)."""
    from inspection.log.query import FRAME_STORE_EVENT, recorded_frames_dir
    from inspection.log.records import LogEntry

    where = str(store.frames.root.resolve()) if store.frames is not None else None
    try:
        if recorded_frames_dir(store) != where:
            await store.append_async(LogEntry(kind="event", actor="server",
                                              data={"event": FRAME_STORE_EVENT, "frames_dir": where}))
    except InspectionError as exc:  # the log's own health watch reports a log that cannot write
        log.error("could not record the frame store in the log: %s", exc)


def create_app(
    settings: ServeSettings,
    *,
    log_store: InspectionLog | None = None,
    bus: DecisionBus | None = None,
    routers: Sequence[RouterFactory] | None = None,
    lifespan_hooks: Sequence[LifespanHook] | None = None,
    frame_lane: bool = True,
) -> InspectionApp:
    """Build the app. Models load and the log opens in the lifespan (at start, not here).

    ``log_store`` is used as given and left open at shutdown (the caller owns it); otherwise
    the store at ``settings.log_url`` is opened and closed by the app. ``frame_lane`` (when
    the frames router is mounted) answers frames ahead of FastAPI's routing and middleware
    (see ``InspectionApp``); turn it off to add middleware.

    A station whose active model fails verification at start (hashes or golden frames) or
    cannot be read is untrusted, not a failed start: its frames are fail-safe rejected
    (``serving.lifecycle``). Start-up raises ``RegistryError`` when ``active.json`` cannot be read.
    """
    hooks = list(default_lifespan_hooks() if lifespan_hooks is None else lifespan_hooks)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import asyncio

        state = app.state
        import cv2

        cv2.setNumThreads(settings.runtime.opencv_threads)  # why: RuntimeSettings.opencv_threads
        models = ModelManager(settings, state.metrics)
        owned = log_store is None
        from serving.settings import resolved_paths

        log.info("files: %s", ", ".join(f"{k}={v}" for k, v in resolved_paths(settings).items()))
        try:
            await asyncio.to_thread(models.load_all)
            store = open_inspection_log(settings) if owned else log_store
        except InspectionError as exc:
            state.startup_error = exc  # for the CLI: uvicorn only logs a failed start
            raise
        assert store is not None
        batcher = MicroBatcher(settings.batching, state.metrics)
        batcher.start()
        if settings.log_inline_commit:
            # A lone frame's records commit on the loop's thread (no hand-offs; SQLite only,
            # never waiting for its lock); under load they go to the group-commit writer.
            store.inline_commit_when = batcher.idle
        service = InspectionService(settings=settings, models=models, batcher=batcher, log_store=store,
                                    bus=state.bus, metrics=state.metrics)
        state.models, state.log, state.batcher, state.service = models, store, batcher, service
        if isinstance(store, SqlInspectionLog):
            # Parts a crash left without their decision get it (fail-safe) before anything is served.
            try:
                state.parts_repaired = await service.parts.repair_undecided(store)
            except InspectionError as exc:
                log.error("could not search the log for parts left undecided by a crash: %s", exc)
            await _record_frame_store(store)
        models.start_watching()
        try:
            async with AsyncExitStack() as stack:
                for hook in hooks:
                    await stack.enter_async_context(hook(app))
                state.ready = True
                try:
                    yield
                finally:
                    state.ready = False
                    # Open parts are fail-safe rejected (and published) while integrations still listen.
                    await service.parts.close()
        finally:
            await models.stop_watching()
            await batcher.close()
            service.decoder.close()
            if owned:
                store.close()

    app = InspectionApp(
        title="inspection serving",
        summary="Reject decisions for line controllers: frames in, pass/reject out, every decision logged.",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = ServingMetrics()
    app.state.bus = bus or DecisionBus()
    app.state.keys = KeyStore(settings.api_keys, open_access=settings.demo)
    app.state.ready = False
    errors.install(app)
    paths: set[str] = set()
    for factory in (default_routers() if routers is None else routers):
        router = factory(settings)
        if router is not None:
            app.include_router(router)
            # flattened the way FastAPI serves them (routers include routers: the audit API and page)
            paths.update(ctx.path for ctx in iter_route_contexts(router.routes) if ctx.path)
    app.state.route_paths = frozenset(paths)  # what the routers serve (serving.home offers pages from it)
    if frame_lane and intake.INSPECTIONS_PATH in paths:
        app.enable_frame_lane()
    return app
