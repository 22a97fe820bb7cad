"""Part decisions across a station's cameras.

A part (station + part id) collects one view per camera the station lists. It is decided
as soon as every camera has reported — ``reject`` if any view rejected — or, at the
station's ``part_deadline_ms`` after it was first seen (first frame or first decision
query), as a **fail-safe reject** naming the missing cameras. A view that failed (bad frame,
model error, overload) counts as a rejecting view with its reason. A view arriving after its
part was decided is late: it is logged, and the part stays as decided.

Every frame counts from its arrival (``open_view``) until its view is reported (``add_view``) or
given up (``release``): a part is not decided while a frame of it is still being read, scored or
written. Why: a camera triggered twice on one part sends two frames; when the passing one finished
first it completed the part as a pass, and the rejecting one, still writing its frame, came late.

The part record is appended to the inspection log (and published on the decision bus)
before anyone waiting for it is answered; the frame that completed the part is answered as
soon as its own inspection record is durable. The part record usually shares that frame's
commit, but not always (a reject's frame is written first; a deadline has its own commit), and
a part still waiting for cameras has none yet: a crash can leave views without their part's
decision. So before a server serves, ``PartTracker.repair_undecided`` appends a fail-safe
reject part record (reason ``server_restart: part undecided at crash``) for every part of its
stations whose views are logged and whose part record is not (``inspection.log.undecided``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from inspection.log.undecided import UndecidedPart, find_undecided
from serving.settings import ServeSettings

RESTART_REASON = "server_restart: part undecided at crash"

log = logging.getLogger(__name__)


@dataclass(slots=True)
class View:
    camera: str
    inspection_id: str
    decision: str
    model_version: str | None
    failsafe_reason: str | None = None
    #: The view's own log append, when still in flight (the part is published after it).
    committed: asyncio.Future[Any] | None = None


class Decided:
    """``asyncio.Event``'s ``set``/``is_set``/``wait``, with the event made only when someone waits.

    The tracker remembers ``parts_remembered`` (10,000) decided parts; an Event each (with its
    waiter deque) was ~0.75 KB of a part's ~1.8 KB, and almost no part is ever waited for.
    """

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: asyncio.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if self._set:
            return
        if self._event is None:
            self._event = asyncio.Event()
        await self._event.wait()


@dataclass(slots=True)
class Part:
    station: str
    part_id: str
    cameras: tuple[str, ...]
    first_seen: float = field(default_factory=time.monotonic)
    views: dict[str, list[View]] = field(default_factory=dict)
    decision: str | None = None
    failsafe_reason: str | None = None
    inspection_id: str | None = None  # of the part record, once logged
    decided: Decided = field(default_factory=Decided)
    #: Cameras of the frames received and not yet reported as views (one entry per frame).
    in_flight: list[str] = field(default_factory=list)
    _timer: asyncio.TimerHandle | None = None
    _finalizing: bool = False

    @property
    def missing(self) -> list[str]:
        return [c for c in self.cameras if c not in self.views]

    @property
    def settled(self) -> bool:
        """Decided, or being decided: a view now would be late."""
        return self.decided.is_set() or self._finalizing

    @property
    def complete(self) -> bool:
        """Every camera reported and no frame of the part is still on its way."""
        return not self.missing and not self.in_flight

    def summary(self) -> dict[str, Any]:
        """The decision as ``GET /v1/parts/{id}/decision`` answers it."""
        return {
            "part_id": self.part_id,
            "station": self.station,
            "status": "decided" if self.decided.is_set() else "pending",
            "decision": self.decision if self.decided.is_set() else None,
            "failsafe_reason": self.failsafe_reason,
            "inspection_id": self.inspection_id,
            "missing_cameras": self.missing,
            "views": [
                {"camera": v.camera, "inspection_id": v.inspection_id, "decision": v.decision,
                 "model_version": v.model_version, "failsafe_reason": v.failsafe_reason}
                for views in self.views.values() for v in views
            ],
        }


class ViewTicket:
    """One frame of a part, from its arrival until its view is reported or the frame is given up."""

    __slots__ = ("camera", "open", "part")

    def __init__(self, part: Part, camera: str, counted: bool) -> None:
        self.part = part
        self.camera = camera
        self.open = counted  # a frame of a part already decided holds nothing up

    def close(self) -> None:
        if self.open:
            self.open = False
            self.part.in_flight.remove(self.camera)


#: Called to make a part's decision durable: (part) -> None; must not raise.
Recorder = Callable[[Part], Awaitable[None]]


class PartTracker:
    """Open and recently decided parts, per station."""

    def __init__(self, settings: ServeSettings, recorder: Recorder) -> None:
        self._settings = settings
        self._record = recorder
        self._parts: OrderedDict[tuple[str, str], Part] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, station: str, part_id: str) -> Part | None:
        return self._parts.get((station, part_id))

    def touch(self, station: str, part_id: str) -> Part:
        """The part, created (and its deadline started) when first seen."""
        key = (station, part_id)
        part = self._parts.get(key)
        if part is not None:
            return part
        cameras = tuple(self._settings.stations[station].cameras)
        part = Part(station, part_id, cameras)
        self._parts[key] = part
        deadline = self._settings.stations[station].part_deadline_ms / 1000.0
        part._timer = asyncio.get_running_loop().call_later(deadline, self._on_deadline, part)
        self._forget_old()
        return part

    def _forget_old(self) -> None:
        limit = self._settings.parts_remembered
        while len(self._parts) > limit:
            key, oldest = next(iter(self._parts.items()))
            if not oldest.decided.is_set():
                break  # open parts are bounded by their deadline; never drop one undecided
            del self._parts[key]

    def open_view(self, station: str, part_id: str, camera: str) -> ViewTicket:
        """Count a frame of the part as on its way (its deadline starts if it is new): the part is
        not decided before this frame's view is reported (``add_view``) or given up (``release``)."""
        part = self.touch(station, part_id)
        counted = not part.settled
        if counted:
            part.in_flight.append(camera)
        return ViewTicket(part, camera, counted)

    def release(self, ticket: ViewTicket | None) -> None:
        """The ticket's frame ended without a view (nothing if its view was reported): the part is
        decided now if it was waiting only for this frame, else by its other views or deadline."""
        if ticket is None or not ticket.open:
            return
        ticket.close()
        part = ticket.part
        if part.complete and not part.settled:
            self._spawn(part, None)

    def is_late(self, station: str, part_id: str) -> bool:
        """True when the part was already decided (a view now would be late)."""
        part = self._parts.get((station, part_id))
        return part is not None and part.settled

    async def add_view(self, station: str, part_id: str, view: View, ticket: ViewTicket | None = None) -> Part:
        """Record a view (of the frame ``ticket`` counted, if any); when it was the last one the part
        waited for, the part is decided (and logged)."""
        if ticket is not None:
            ticket.close()
        part = self.touch(station, part_id)
        if part.settled:
            log.warning("late view %s of part %s/%s (already %s)", view.camera, station, part_id, part.decision)
            return part
        part.views.setdefault(view.camera, []).append(view)
        if part.complete:
            # The part record is written in the background: the frame's own answer waits only for
            # its inspection record, while the part's answer (decision query, decision bus) waits
            # for the part record. Both records are durable before the answer that reports them.
            self._spawn(part, None)
        return part

    def _spawn(self, part: Part, reason: str | None) -> None:
        part._finalizing = True
        task = asyncio.get_running_loop().create_task(self._finalize(part, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_deadline(self, part: Part) -> None:
        if part.settled:
            return
        deadline = self._settings.stations[part.station].part_deadline_ms
        why = [f"no frame from camera(s) {', '.join(part.missing)} within {deadline:g} ms"] if part.missing else []
        # A camera with a view may have sent another frame of the part that is still on its way.
        busy = [c for c in part.cameras if c in part.in_flight and c in part.views]
        if busy:
            why.append(f"a frame from camera(s) {', '.join(busy)} still on its way at the {deadline:g} ms deadline")
        self._spawn(part, "missing_view: " + " and ".join(why))

    async def _finalize(self, part: Part, deadline_reason: str | None) -> None:
        part._finalizing = True
        if part._timer is not None:
            part._timer.cancel()
            part._timer = None  # a remembered part keeps no handle
        all_views = [v for views in part.views.values() for v in views]
        reasons = [f"{v.camera}: {v.failsafe_reason}" for v in all_views if v.failsafe_reason]
        if deadline_reason:
            reasons.insert(0, deadline_reason)
        rejected = bool(deadline_reason) or any(v.decision != "pass" for v in all_views)
        part.decision = "reject" if rejected else "pass"
        part.failsafe_reason = "; ".join(reasons) or None
        try:
            await self._record(part)
        finally:
            part.decided.set()

    async def wait(self, station: str, part_id: str, wait_s: float) -> Part:
        """The part after at most ``wait_s`` seconds (decided sooner if all views come in)."""
        part = self.touch(station, part_id)
        if not part.decided.is_set() and wait_s > 0:
            try:
                await asyncio.wait_for(part.decided.wait(), wait_s)
            except TimeoutError:
                pass
        return part

    async def repair_undecided(self, store: Any) -> int:
        """Append the fail-safe part record of every undecided part a crash left in ``store``
        (``inspection.log.undecided``); returns how many. Run at start, before frames are served.

        Raises:
            LogUnavailableError: the log cannot be read.
        """
        found = await asyncio.to_thread(find_undecided, store, stations=self._settings.stations,
                                        window=self._settings.parts_repair_window)
        for undecided in found:
            part = self._restored(undecided)
            part._finalizing = True
            await self._record(part)  # logs (never raises); the part record says why it is a reject
            part.decided.set()
        if found:
            log.warning("%d part(s) had views in the log but no part record (server stopped before deciding "
                        "them): fail-safe rejected now (%s)", len(found), RESTART_REASON)
        return len(found)

    def _restored(self, undecided: UndecidedPart) -> Part:
        station = self._settings.stations.get(undecided.station)
        cameras = tuple(station.cameras) if station is not None else ()
        part = Part(undecided.station, undecided.part_id, cameras)
        for rec in undecided.views:
            e = rec.entry
            model = f"{e.model_name}/{e.model_version}" if e.model_name and e.model_version else None
            code = e.failsafe_reason.split(":", 1)[0] if e.failsafe_reason else None
            part.views.setdefault(e.camera or "", []).append(
                View(e.camera or "", e.inspection_id, e.decision or "reject", model, code))
        part.decision = "reject"
        missing = part.missing
        part.failsafe_reason = RESTART_REASON + (f"; missing_view: no frame from camera(s) {', '.join(missing)}"
                                                 if missing else "")
        return part

    async def close(self) -> None:
        """Decide every open part now (fail-safe) so nothing is left unlogged at shutdown."""
        for part in list(self._parts.values()):
            if not part.settled:
                self._spawn(part, "missing_view: server shut down before all views arrived")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
