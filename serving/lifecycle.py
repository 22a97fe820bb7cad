"""Which model scores which station, and live swaps when ``models/active.json`` changes.

At start every station's active version (``ModelRegistry.active``) is loaded and verified
(hashes, then the golden frames: ``inspection.golden``). A version that fails verification, or
cannot be read (its folder gone, its card invalid), does not stop the start: each station is
resolved on its own, and the server comes up **not ready** for that station, answers each of its
frames with a fail-safe reject (reason ``model_untrusted: ...``) and raises the model alarm
(``serving.modeltrust``): a PLC gets rejects, not timeouts, and the operator sees why. Afterwards a watcher polls
``active.json`` (mtime, size, inode); on a change it loads and verifies the newly active
versions in a worker thread and then swaps the station's reference in one assignment. A
request holds the ``LoadedModel`` it started with, so in-flight frames finish on the old
model and every answer names the version that really decided it. A version refused on
reload leaves the station on its current model; the refusal is logged and counted, and
``/readyz`` names it under ``refused``. A station whose active version cannot be read is
tried again at every poll until it can.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from inspection.errors import InspectionError, ModelError, ModelUntrustedError
from inspection.registry import ModelRegistry, ModelVersion
from serving.errors import scrub
from serving.model import LoadedModel, load_model
from serving.settings import ServeSettings
from serving.telemetry import ServingMetrics

log = logging.getLogger(__name__)


class ModelManager:
    """The loaded model per station."""

    def __init__(self, settings: ServeSettings, metrics: ServingMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.registry = ModelRegistry(settings.models_dir)
        self._current: dict[str, LoadedModel | None] = {s: None for s in settings.stations}
        self.errors: dict[str, str] = {}
        #: Station -> why its active model was not trusted at start (until a trusted one loads).
        self.untrusted: dict[str, str] = {}
        self._stamp: tuple[int, int, int] | None = None
        # Stations whose active version could not be resolved (tried again at every check until
        # none), and station -> version refused since active.json last changed (not re-verified
        # by those retries).
        self._unresolved: set[str] = set()
        self._refused: dict[str, str] = {}
        # active.json's stamp and each station's last promotion time, read once per change.
        self._promoted: tuple[tuple[int, int, int] | None, dict[str, str | None]] = (None, {})
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self.swaps = 0

    # -- queries -------------------------------------------------------------------------
    def current(self, station: str) -> LoadedModel:
        """The model scoring ``station`` now.

        Raises:
            ModelUntrustedError: the station's active model failed verification at start.
            ModelError: the station has no verified active model.
        """
        model = self._current.get(station)
        if model is None:
            if station in self.untrusted:
                raise ModelUntrustedError(f"station {station!r} cannot score frames: {self.untrusted[station]}")
            why = self.errors.get(station) or f"no model is active for station {station!r} in {self.registry.root}"
            raise ModelError(f"station {station!r} cannot score frames: {why}")
        return model

    def ready(self) -> dict[str, str | None]:
        """Station -> problem (None when it has a model); ``/readyz`` shows it, so paths and
        addresses are scrubbed (``serving.errors.scrub``)."""
        return {s: (None if m is not None else scrub(self.errors.get(s) or "no active model"))
                for s, m in self._current.items()}

    def kept(self) -> dict[str, str]:
        """Station -> why it still scores with a model that is not its active version (refused on
        reload, or unreadable): not a readiness problem, but ``/readyz`` shows it; scrubbed."""
        return {s: scrub(self.errors[s]) for s, m in self._current.items() if m is not None and s in self.errors}

    def status(self) -> list[dict[str, Any]]:
        """Per station its model and error (scrubbed: /v1/models and /v1/home show it)."""
        out = []
        for station, model in self._current.items():
            error = self.errors.get(station)
            out.append({
                "station": station,
                "model_version": model.model_id if model else None,
                "model_sha256": model.model_sha256 if model else None,
                "classes": model.card.classes if model else None,
                "threshold": model.card.thresholds.reject if model else None,
                "golden_max_diff": model.golden_max_diff if model else None,
                "error": scrub(error) if error else None,
            })
        return out

    def promoted_at(self, station: str) -> str | None:
        """When ``station``'s active model was promoted (the registry's history), if known.

        ``active.json`` is read again only when it changed (its stamp): the /line page's event
        streams ask every second each.
        """
        stamp = self._stat()
        known_stamp, times = self._promoted
        if stamp is None or stamp != known_stamp:
            times = {}
            if stamp is not None:
                try:
                    stations = self.registry.read_state()["stations"]
                except (InspectionError, OSError, KeyError, TypeError):
                    return None  # unreadable now: not cached, tried again next time
                for name, entry in stations.items():
                    events = (entry or {}).get("events") or []
                    times[name] = events[-1].get("at") if events else None
            self._promoted = (stamp, times)
        return times.get(station)

    # -- loading -------------------------------------------------------------------------
    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.registry.active_path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _wanted(self) -> tuple[dict[str, ModelVersion | None], dict[str, Exception]]:
        """Each station's active version, and the stations whose version cannot be resolved.

        Resolved one station at a time: a version folder that is gone or a card that does not
        parse is that station's problem (like a failed verification), not every station's.

        Raises:
            RegistryError: ``active.json`` itself cannot be read (every station's problem).
        """
        self.registry.read_state()
        wanted: dict[str, ModelVersion | None] = {}
        failed: dict[str, Exception] = {}
        for station in self._current:
            try:
                wanted[station] = self.registry.active(station)
            except (InspectionError, OSError) as exc:
                failed[station] = exc
        return wanted, failed

    def load_all(self) -> None:
        """Load every station's active model (start-up).

        A version that fails verification, or cannot be read (folder gone, card invalid), is not
        used: its stations are marked untrusted (``untrusted``; their frames are fail-safe
        rejected) and the start goes on.

        Raises:
            RegistryError: ``active.json`` cannot be read.
        """
        self._stamp = self._stat()
        by_id: dict[str, LoadedModel] = {}
        refused: dict[str, InspectionError] = {}
        wanted, failed = self._wanted()
        self._unresolved = set(failed)  # the watcher tries them again (check)
        for station, exc in failed.items():
            self.untrusted[station] = f"its active version cannot be read at start: {exc}"
            self.errors[station] = f"model_untrusted: {self.untrusted[station]}"
            log.error("ALARM: station %s: %s; its frames are fail-safe rejected until a readable version is "
                      "active", station, self.untrusted[station])
        for station, version in wanted.items():
            if version is None:
                self.errors[station] = f"no model is active for station {station!r} in {self.registry.root}"
                log.warning("%s", self.errors[station])
                continue
            if version.model_id not in by_id and version.model_id not in refused:
                try:
                    by_id[version.model_id] = load_model(version, self._settings.runtime)
                except InspectionError as exc:
                    refused[version.model_id] = exc
                    self._metrics.model_load_failures.labels(version.model_id).inc()
            if version.model_id in refused:
                why = refused[version.model_id]
                self._refused[station] = version.model_id
                self.untrusted[station] = f"{version.model_id} failed verification at start: {why}"
                self.errors[station] = f"model_untrusted: {self.untrusted[station]}"
                log.error("ALARM: station %s: %s; its frames are fail-safe rejected until a trusted version is "
                          "active (inspection models verify %s)", station, self.untrusted[station], version.model_id)
                continue
            self._set(station, by_id[version.model_id])

    def _set(self, station: str, model: LoadedModel) -> None:
        old = self._current.get(station)
        if old is not None:
            self._metrics.model_info.labels(station, old.model_id).set(0)
        self._current[station] = model  # the atomic swap: one reference assignment
        self.errors.pop(station, None)
        self.untrusted.pop(station, None)
        self._metrics.model_info.labels(station, model.model_id).set(1)

    def reload(self) -> list[str]:
        """Bring every station to its active version (blocking; run in a thread).

        Returns the stations that changed model. Never raises for a bad version: the station
        keeps its current model and the error is kept in ``errors``. A station whose active
        version cannot be resolved (folder gone, card invalid) is left in ``_unresolved``:
        ``check`` tries it again at the next poll.
        """
        try:
            wanted, failed = self._wanted()
        except InspectionError as exc:
            why = f"active.json unreadable, staying on current model: {exc}"
            if any(self.errors.get(s) != why for s in self._current):  # tried again at every poll: logged once
                log.error("cannot read the active models: %s", exc)
            for station in self._current:
                self.errors[station] = why
            self._unresolved = set(self._current)
            return []
        self._unresolved = set(failed)
        for station, problem in failed.items():
            current = self._current.get(station)
            why = f"cannot read its active version, staying on {current.model_id if current else 'no model'}: {problem}"
            if self.errors.get(station) != why:  # tried again at every poll: logged once
                log.error("station %s %s", station, why)
            self.errors[station] = why
        changed: list[str] = []
        loaded: dict[str, LoadedModel] = {m.model_id: m for m in self._current.values() if m is not None}
        for station, version in wanted.items():
            current = self._current.get(station)
            if version is None:
                continue
            if current is not None and current.model_id == version.model_id:
                # Already on its active version (a rollback past a refused one): that refusal is over.
                self.errors.pop(station, None)
                continue
            if self._refused.get(station) == version.model_id:
                continue  # refused since active.json last changed: not re-verified at every retry
            try:
                model = loaded.get(version.model_id) or load_model(version, self._settings.runtime)
            except InspectionError as exc:
                self.errors[station] = f"refused {version.model_id}: {exc}"
                self._refused[station] = version.model_id
                self._metrics.model_load_failures.labels(version.model_id).inc()
                log.error("station %s stays on %s: %s", station, current.model_id if current else "no model", exc)
                continue
            loaded[version.model_id] = model
            self._set(station, model)
            self.swaps += 1
            changed.append(station)
            log.info("station %s now scores with %s (was %s)", station, model.model_id,
                     current.model_id if current else "none")
        return changed

    async def check(self) -> list[str]:
        """Reload if active.json changed since the last look (one reload at a time).

        A station whose active version could not be resolved (folder gone, card invalid) is
        tried again at every call until it is, even when active.json did not change again.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            stamp = self._stat()
            if stamp == self._stamp and not self._unresolved:
                return []
            if stamp != self._stamp:  # a new change: a version refused before gets another try
                self._refused.clear()
            self._stamp = stamp
            return await asyncio.to_thread(self.reload)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reload_poll_s)
            try:
                await self.check()
            except Exception:  # the watcher must survive anything a bad file throws at it
                log.exception("model watcher failed; will retry")

    def start_watching(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="model-watcher")

    async def stop_watching(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
