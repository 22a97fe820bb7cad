"""What goes into the inspection log, and the interface every store implements.

One record per event: a frame's inspection, a part's decision across cameras, a human
disposition or label, a model promotion or rollback, a frame pruning, a PLC acknowledgement.
Records are never updated: a later fact about an inspection is a new record whose ``ref``
names the original's ``inspection_id``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, runtime_checkable

RecordKind = Literal[
    "inspection",   # one frame scored (or fail-safe rejected) by a model
    "part",         # the part-level decision across a station's cameras
    "disposition",  # a human confirms/overrides a decision (auditor, engineer)
    "label",        # an engineer labels a stored frame (labelling page)
    "promotion",    # a model version became active for a station
    "rollback",     # the previous model version was re-activated
    "prune",        # frames removed by the retention policy (records are kept)
    "plc_ack",      # the PLC acknowledged (or failed to acknowledge) a result
    "event",        # other operational facts (e.g. MQTT messages dropped)
    "checkpoint",   # the chain head signed with the server's key (inspection.log.checkpoints)
    "alarm",        # a line alarm raised or cleared (control chart, drift, PLC link, fail-safe rate)
]


def new_id() -> str:
    """A new inspection id: a UUID version 7 (RFC 9562) as 32 hex digits.

    Unique across stations sharing one log (74 random bits per millisecond) and ordered by
    creation time: the log's unique index on ids then grows at its right edge instead of
    touching a random page per record (a random UUID4 made every commit ~30 % slower at
    60k records, and worse as the log grows past what the page cache holds).
    """
    ms = time.time_ns() // 1_000_000
    rand = os.urandom(10)
    return (ms.to_bytes(6, "big") + bytes((0x70 | (rand[0] & 0x0F), rand[1], 0x80 | (rand[2] & 0x3F))) + rand[3:]).hex()


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A record as the caller hands it to the log (the log adds seq and hashes)."""

    kind: RecordKind
    inspection_id: str = field(default_factory=new_id)
    time: datetime = field(default_factory=utc_now)
    station: str | None = None
    camera: str | None = None
    part_id: str | None = None
    frame_sha256: str | None = None
    decision: str | None = None            # "pass" | "reject" for inspection/part records
    defect_class: str | None = None
    scores: dict[str, float] | None = None
    threshold: float | None = None
    model_name: str | None = None
    model_version: str | None = None
    model_sha256: str | None = None
    latency_ms: float | None = None
    failsafe_reason: str | None = None     # set on every fail-safe reject
    ref: str | None = None                 # inspection_id of the record this one is about
    actor: str | None = None               # who did it (API key name, CLI user)
    data: dict[str, Any] | None = None     # kind-specific payload (label, reason, ack, ...)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as stored: the entry plus its position and hash chain links."""

    seq: int
    entry: LogEntry
    prev_hash: str
    hash: str


@runtime_checkable
class InspectionLog(Protocol):
    """The store interface serving, the CLI and the PLC/labelling code depend on.

    Every member is part of the contract: callers use them directly, never probing with
    ``hasattr``; a store (or a test double) implements all of them.
    """

    #: Fraction of passed frames whose image is kept (rejects' frames are always kept). A
    #: caller may skip handing over a pass's frame when this is 0.
    frame_sample_rate: float
    #: Set by a server to "nothing else is in flight right now": the store may then commit a
    #: lone record on the caller's event-loop thread. None (the default): never. A store that
    #: cannot commit inline keeps the value and ignores it.
    inline_commit_when: Callable[[], bool] | None

    def append(self, entry: LogEntry, *, frame: bytes | None = None, defect_map: bytes | None = None) -> StoredRecord:
        """Append durably (returns only after commit); ``frame`` and its ``defect_map`` PNG are
        stored content-addressed."""
        ...

    async def append_async(self, entry: LogEntry, *, frame: bytes | None = None,
                           defect_map: bytes | None = None) -> StoredRecord:
        """As ``append``, without blocking the event loop; concurrent appends share a commit."""
        ...

    def get(self, inspection_id: str) -> StoredRecord:
        """Raises NotFoundError when no record has that id."""
        ...

    def close(self) -> None: ...
