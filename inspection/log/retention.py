"""Frame retention: prune frames by age or total size, keep every record, log each pruning."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from inspection.errors import ConfigError
from inspection.log.records import LogEntry, StoredRecord
from inspection.log.store import SqlInspectionLog

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PruneResult:
    removed: list[str] = field(default_factory=list)  # sha256 of every frame removed
    bytes_freed: int = 0
    kept: int = 0
    record: StoredRecord | None = None  # the ``prune`` record (None when nothing was removed)


def prune_frames(
    log_: SqlInspectionLog,
    *,
    max_age: timedelta | None = None,
    max_bytes: int | None = None,
    now: float | None = None,
    actor: str | None = None,
) -> PruneResult:
    """Remove frames older than ``max_age``, then the oldest until at most ``max_bytes`` remain.

    Records are never touched. A ``prune`` record listing every removed sha256 is committed
    BEFORE the files are deleted, so no frame disappears without a record saying so (a
    crash in between leaves files a later run removes). Raises ConfigError when neither
    limit is given, a limit is negative, or the log keeps no frames.
    """
    if max_age is None and max_bytes is None:
        raise ConfigError("prune_frames needs max_age or max_bytes (or both)")
    if max_age is not None and max_age < timedelta(0):
        raise ConfigError(f"max_age {max_age} must not be negative")
    if max_bytes is not None and max_bytes < 0:
        raise ConfigError(f"max_bytes {max_bytes} must not be negative")
    if log_.frames is None:
        raise ConfigError("this log keeps no frames (no frames directory configured); nothing to prune")
    now = time.time() if now is None else now
    frames = sorted(log_.frames.iter_frames(), key=lambda f: (f.mtime, f.sha256))
    doomed = []
    if max_age is not None:
        cutoff = now - max_age.total_seconds()
        doomed = [f for f in frames if f.mtime < cutoff]
        frames = [f for f in frames if f.mtime >= cutoff]
    if max_bytes is not None:
        total = sum(f.size for f in frames)
        while frames and total > max_bytes:
            oldest = frames.pop(0)
            doomed.append(oldest)
            total -= oldest.size
    if not doomed:
        return PruneResult(kept=len(frames))
    policy = {"max_age_s": max_age.total_seconds() if max_age is not None else None, "max_bytes": max_bytes}
    record = log_.append(LogEntry(
        kind="prune",
        actor=actor,
        data={"removed": [f.sha256 for f in doomed], "bytes": sum(f.size for f in doomed), "policy": policy},
    ))
    freed = 0
    for f in doomed:
        try:
            freed += log_.frames.remove(f.sha256)
        except OSError as exc:  # recorded as removed; the next run retries
            log.warning("could not remove frame %s: %s", f.sha256, exc)
    return PruneResult(removed=[f.sha256 for f in doomed], bytes_freed=freed, kept=len(frames), record=record)
