"""Follow the plant's central model registry: pull, verify, promote locally, swap.

With ``registry.url`` set, a line PC reads the central promotion of each of its stations every
``registry.poll_s``. A change is pulled into ``models_dir`` (every file against its stored
sha256 and the card's, golden frames re-scored: ``inspection.central``), promoted in the
local ``active.json``, and the model manager swaps it in exactly as for a local promotion
(verifying it once more on load). Nothing unverified is ever promoted locally.

When the registry does not answer, the station keeps serving its current verified model; the
watch says so on ``/readyz`` (``registry``: reachable false, since when, why — the server stays
ready: it has a trusted model) and on ``/metrics`` (``inspection_registry_reachable`` 0), and
catches up at the first answer. At start an unreachable registry is served through from the
local copy (``registry.offline_start``, default) or refuses the start with the reason.
A central version that fails its checks, or cannot be pulled (disk full: the path is named), is
refused (logged, ``inspection_registry_refused_total``, ``/readyz`` names it) and the station
stays on what it has. A pass that fails otherwise (writing ``active.json``, say) does not end the
watch: ``/readyz`` shows it as ``registry.error``, ``inspection_registry_watch_failures_total``
counts it, and the next poll tries again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge

from inspection.config import safe_url
from inspection.errors import InspectionError
from serving.errors import scrub
from serving.tasks import running

log = logging.getLogger(__name__)


class RegistryWatch:
    """The central registry as this server sees it: reachable or not, and what it last refused."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.settings = app.state.settings
        self.reachable: bool | None = None
        self.since = time.time()
        self.error: str | None = None
        self.refused: dict[str, str] = {}
        self.last_sync: float | None = None
        self._central: Any = None
        metrics = app.state.metrics
        self.g_reachable = Gauge("inspection_registry_reachable",
                                 "1 while the central model registry answers, 0 when not", registry=metrics.registry)
        self.g_last = Gauge("inspection_registry_last_sync_timestamp_seconds",
                            "When the central registry last answered (unix time)", registry=metrics.registry)
        self.c_refused = Counter("inspection_registry_refused_total",
                                 "Central versions refused by their checks", ["station"], registry=metrics.registry)
        self.c_failed = Counter("inspection_registry_watch_failures_total",
                                "Passes following the central registry that failed (tried again at the next poll)",
                                registry=metrics.registry)

    def close(self) -> None:
        if self._central is not None:
            self._central.close()
        self.app.state.metrics.unregister(self.g_reachable, self.g_last, self.c_refused, self.c_failed)

    def status(self) -> dict[str, Any]:
        """For /readyz: not a readiness problem (a verified model keeps serving), but visible."""
        return {
            "url": self._url(),
            "reachable": self.reachable,
            "since": datetime.fromtimestamp(self.since, UTC).isoformat(),
            "last_sync": datetime.fromtimestamp(self.last_sync, UTC).isoformat() if self.last_sync else None,
            "error": self.error,
            "refused": self.refused,
        }

    def _url(self) -> str:
        return safe_url(self.settings.registry.url)

    def _mark(self, reachable: bool, error: str | None) -> None:
        if reachable != self.reachable:
            self.since = time.time()
            if reachable:
                log.info("central model registry %s answers", self._url())
            else:
                log.warning("central model registry unreachable (stations keep their verified models): %s", error)
        self.reachable, self.error = reachable, error
        self.g_reachable.set(1 if reachable else 0)
        if reachable:
            self.last_sync = time.time()
            self.g_last.set(self.last_sync)

    def sync_once(self) -> list[str]:
        """One pass over the stations (blocking: run in a thread); returns the stations changed."""
        from inspection.central import CentralRegistry, RegistryUnreachable, sync_station
        from inspection.registry import ModelRegistry

        reg = self.settings.registry
        changed: list[str] = []
        try:
            if self._central is None:
                self._central = CentralRegistry(reg.url, ModelRegistry(self.settings.models_dir),
                                                timeout_s=reg.timeout_s)
            for station in self.settings.stations:
                try:
                    result = sync_station(self._central, station)
                except RegistryUnreachable:
                    raise
                except InspectionError as exc:
                    reason = scrub(str(exc))
                    if self.refused.get(station) != reason:
                        log.error("station %s: central version refused, keeping the current model: %s", station, exc)
                        self.c_refused.labels(station).inc()
                    self.refused[station] = reason
                    continue
                self.refused.pop(station, None)
                if result.changed:
                    log.info("station %s follows the central registry: %s", station, result.central)
                    changed.append(station)
        except RegistryUnreachable as exc:
            self._mark(False, scrub(str(exc)))
            return changed
        self._mark(True, None)
        return changed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registry.poll_s)
            try:
                await self.step()
            except Exception as exc:  # noqa: BLE001 -- the watch must outlive any one pass (full disk, a race)
                self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        """A pass that failed unexpectedly: shown as ``error`` on /readyz (until a pass succeeds),
        counted on /metrics; logged with its traceback once per distinct failure."""
        reason = scrub(f"following the central registry failed: {type(exc).__name__}: {exc}")
        if reason != self.error:
            log.exception("following the central registry failed; tried again every %s s",
                          self.settings.registry.poll_s)
        self.error = reason
        self.c_failed.inc()

    async def step(self) -> None:
        changed = await asyncio.to_thread(self.sync_once)
        if changed:
            await self.app.state.models.check()  # swap now rather than at the next active.json poll


@asynccontextmanager
async def lifespan_hook(app: Any) -> AsyncIterator[None]:
    """Follow the central registry while the app runs (nothing when ``registry.url`` is unset).

    Raises:
        InspectionError: at start, the registry is unreachable and ``registry.offline_start`` is off.
    """
    settings = app.state.settings
    if not settings.registry.url:
        yield
        return
    watch = RegistryWatch(app)
    app.state.registry_watch = watch
    try:
        await watch.step()
        if not watch.reachable and not settings.registry.offline_start:
            raise InspectionError(f"the central model registry is unreachable at start and registry.offline_start "
                                  f"is off: {watch.error}")
        async with running(watch.run(), "registry-watch"):
            yield
    finally:
        app.state.registry_watch = None
        watch.close()
