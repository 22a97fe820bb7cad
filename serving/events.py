"""In-process fan-out of decisions to line integrations (PLC, OPC UA, MQTT).

The decision path calls ``DecisionBus.publish`` after the decision is durable in the
inspection log and before the HTTP answer goes out. Publishing never blocks and never
fails: each subscriber has a bounded queue of its own, and when a subscriber falls behind
its oldest event is dropped and counted, so a stuck broker or a slow PLC cannot add
latency to the reject decision.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from inspection.log.records import StoredRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DecisionEvent:
    """A decision as line integrations see it: the log record that was just committed."""

    kind: Literal["inspection", "part"]
    record: StoredRecord

    @property
    def station(self) -> str | None:
        return self.record.entry.station


@dataclass
class Subscription:
    name: str
    queue: asyncio.Queue[DecisionEvent]
    dropped: int = 0
    kinds: frozenset[str] = field(default_factory=lambda: frozenset({"inspection", "part"}))
    #: With ``keep_dropped``: the dropped events, oldest first, for a subscriber that must account for
    #: each one (the PLC side logs them); at most as many as the queue holds, older ones only counted.
    lost: deque[DecisionEvent] | None = None


class DecisionBus:
    """Fan-out with bounded per-subscriber queues (drop-oldest, counted)."""

    def __init__(self) -> None:
        self._subs: dict[str, Subscription] = {}

    def subscribe(self, name: str, *, maxsize: int = 1024, kinds: frozenset[str] | None = None,
                  keep_dropped: bool = False) -> Subscription:
        """A new subscriber's queue; ``keep_dropped`` keeps what it loses in ``Subscription.lost``.

        Raises:
            ValueError: ``name`` is already subscribed.
        """
        if name in self._subs:
            raise ValueError(f"subscriber {name!r} already registered")
        sub = Subscription(name, asyncio.Queue(maxsize=maxsize))
        if keep_dropped:
            sub.lost = deque(maxlen=maxsize)
        if kinds is not None:
            sub.kinds = kinds
        self._subs[name] = sub
        return sub

    def unsubscribe(self, name: str) -> None:
        self._subs.pop(name, None)

    def publish(self, event: DecisionEvent) -> None:
        """Hand ``event`` to every subscriber; never blocks, never raises."""
        for sub in self._subs.values():
            if event.kind not in sub.kinds:
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                try:
                    oldest = sub.queue.get_nowait()
                except asyncio.QueueEmpty:
                    pass
                else:
                    if sub.lost is not None:
                        sub.lost.append(oldest)
                sub.dropped += 1
                log.warning("subscriber %s is behind; dropped its oldest event (%d so far)", sub.name, sub.dropped)
                sub.queue.put_nowait(event)

    def dropped(self) -> dict[str, int]:
        return {name: sub.dropped for name, sub in self._subs.items()}
