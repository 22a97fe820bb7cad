"""The server's signed checkpoints: every N records or T seconds, the chain head signed and published.

With ``checkpoints.signing_key`` set, the server loads the key at start (a key readable by group
or others, or not an Ed25519 key, stops the start with ``ConfigError``), then appends a
``checkpoint`` record (``inspection.log.checkpoints``) after every ``every_records`` new
records, or ``every_s`` after the last one when records were added since, and once more at
shutdown. Each checkpoint also goes to the checkpoint file (``checkpoints.file``, append-only,
fsynced) and, retained, to ``<topic_prefix>/log/checkpoint`` on every MQTT broker the stations
use. ``POST /v1/audit/verify`` checks the log against them with the server's public key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import Counter

from inspection.errors import InspectionError
from inspection.log import checkpoints
from inspection.log.records import LogEntry, utc_now
from inspection.log.store import SqlInspectionLog
from serving.tasks import running

log = logging.getLogger(__name__)


class Checkpointer:
    """Signs and publishes the chain head of one log store."""

    def __init__(self, store: Any, settings: Any, signer: checkpoints.Signer, *, app: Any = None,
                 registry: Any = None) -> None:
        self.store = store
        self.settings = settings
        self.signer = signer
        self.app = app
        self.last_record_seq = 0          # seq of the last checkpoint record written
        self._records_at_last = store.stats.records
        self._time_at_last = time.monotonic()
        kw = {"registry": registry} if registry is not None else {}
        self.written = Counter("inspection_log_checkpoints_total", "Signed checkpoints appended to the log", **kw)
        self.failed = Counter("inspection_log_checkpoint_failures_total",
                              "Checkpoints that could not be written or published, by where", ["where"], **kw)

    def check(self) -> Any:
        """The checkpoint check for ``SqlInspectionLog.verify``: this server's key, the log's checkpoints
        and those in the checkpoint file."""
        external: list[checkpoints.Checkpoint] = []
        notes: list[str] = []
        if self.settings.file is not None and self.settings.file.exists():
            try:
                external, notes = checkpoints.read_file(self.settings.file)
            except InspectionError as exc:
                notes = [f"checkpoint file not read: {exc}"]
        key = checkpoints.load_public_key(self.signer.public_key)
        return checkpoints.make_check(key, external, external_notes=notes)

    def due(self) -> bool:
        new = self.store.stats.records - self._records_at_last
        if new >= self.settings.every_records:
            return True
        return new > 0 and time.monotonic() - self._time_at_last >= self.settings.every_s

    async def checkpoint(self) -> checkpoints.Checkpoint | None:
        """Sign the current head and publish it; None when nothing was added since the last one.

        Raises InspectionError when the log cannot be read or appended to (the next round retries).
        """
        seq, head_hash = await asyncio.to_thread(self.store.head)
        self._time_at_last = time.monotonic()
        self._records_at_last = self.store.stats.records
        if seq == 0 or seq == self.last_record_seq:
            return None
        cp = self.signer.sign(seq, head_hash, utc_now())
        record = await self.store.append_async(LogEntry(kind="checkpoint", actor="server", data=cp.as_dict()))
        self.last_record_seq = record.seq
        self._records_at_last = self.store.stats.records
        self.written.inc()
        if self.settings.file is not None:
            try:
                await asyncio.to_thread(checkpoints.append_to_file, self.settings.file, cp)
            except InspectionError as exc:
                self.failed.labels("file").inc()
                log.error("checkpoint at seq %d not written to the checkpoint file: %s", seq, exc)
        if self.settings.mqtt and self.app is not None:
            self._publish_mqtt(cp)
        return cp

    def _publish_mqtt(self, cp: checkpoints.Checkpoint) -> None:
        line = getattr(self.app.state, "line", None)
        publishers = list((getattr(line, "mqtt", None) or {}).values())
        body = json.dumps(cp.as_dict(), separators=(",", ":")).encode("utf-8")
        done: set[tuple[str, int, str]] = set()
        for pub in publishers:
            target = (pub.settings.host, pub.settings.port, pub.settings.topic_prefix)
            if target in done:
                continue
            if pub.publish_side("log/checkpoint", body, retain=True):
                done.add(target)
            else:
                self.failed.labels("mqtt").inc()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.settings.every_s))
            if not self.due():
                continue
            try:
                await self.checkpoint()
            except InspectionError as exc:
                self.failed.labels("log").inc()
                log.error("checkpoint not written (retrying): %s", exc)
            except Exception:  # the task must outlive anything the database throws
                self.failed.labels("log").inc()
                log.exception("checkpoint failed (retrying)")


@contextlib.asynccontextmanager
async def lifespan_hook(app: Any) -> AsyncIterator[None]:
    """The app's lifespan hook: checkpoints while the server runs (``app.state.checkpointer``)."""
    settings = app.state.settings.checkpoints
    store = app.state.log
    if settings.signing_key is None or not isinstance(store, SqlInspectionLog):
        if settings.signing_key is None:
            log.warning("no checkpoints.signing_key: the log is hash-chained but not anchored; a rewrite of the "
                        "whole chain by someone with database access would not be detected")
        yield
        return
    try:
        signer = checkpoints.Signer.from_file(settings.signing_key)
    except InspectionError as exc:
        app.state.startup_error = exc  # the CLI reports it; uvicorn only logs a failed start
        raise
    cp = Checkpointer(store, settings, signer, app=app, registry=app.state.metrics.registry)
    app.state.checkpointer = cp
    log.info("checkpoints signed with public key %s (every %d records or %.0f s)", signer.public_key,
             settings.every_records, settings.every_s)
    try:
        async with running(cp.run(), "log-checkpoints"):
            yield
    finally:
        try:
            await cp.checkpoint()  # the tail is anchored too
        except Exception as exc:  # noqa: BLE001 -- shutting down: say it, do not stop the shutdown
            log.error("final checkpoint not written: %s", exc)
