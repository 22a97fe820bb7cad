"""The model alarm: a station whose active model is not trusted raises a retained MQTT alarm.

``serving.lifecycle.ModelManager`` marks a station untrusted when its active version fails
verification at start (its frames are then fail-safe rejected with ``model_untrusted: ...``
and ``/readyz`` names the reason). This hook tells the line: on
``<topic_prefix>/<station>/alarm/model`` (retained, QoS 1) it publishes
``{"alarm": "model_untrusted", "state": "raised", "station", "reason", "time"}`` and, once a
trusted version is active (a promotion or rollback picked up by the watcher), the same with
``"state": "cleared"``. The log's alarm has its own topic (``<station>/alarm``), so neither
overwrites the other's retained message.

The broker may connect after the server starts; each state is re-sent every
``RETRY_S`` until a station's publisher takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from serving.errors import scrub
from serving.tasks import running

log = logging.getLogger(__name__)

RETRY_S = 0.5
SUBTOPIC = "alarm/model"


def alarm_payload(station: str, reason: str | None) -> dict[str, Any]:
    """The alarm message for ``station`` (``reason`` None: cleared)."""
    return {"alarm": "model_untrusted", "state": "raised" if reason else "cleared", "station": station,
            "reason": scrub(reason) if reason else None, "time": datetime.now(UTC).isoformat()}


async def watch(app: Any) -> None:
    """Publish each station's trust state whenever it differs from what its publisher last took."""
    sent: dict[str, str | None] = {}
    while True:
        models = app.state.models
        publishers = getattr(getattr(app.state, "line", None), "mqtt", None) or {}
        for station in app.state.settings.stations:
            reason = models.untrusted.get(station)
            if sent.get(station, None) == reason and (station in sent or reason is None):
                continue  # nothing new (a trusted station with nothing raised needs no message)
            publisher = publishers.get(station)
            if publisher is None:
                continue
            body = json.dumps(alarm_payload(station, reason), separators=(",", ":")).encode("utf-8")
            try:
                taken = publisher.publish_side(f"{station}/{SUBTOPIC}", body, retain=True)
            except Exception:  # an alarm channel failing must not stop the watch
                log.exception("could not publish the model alarm of station %s", station)
                taken = False
            if taken:
                sent[station] = reason
                log.warning("model alarm of station %s %s on MQTT", station, "raised" if reason else "cleared")
        await asyncio.sleep(RETRY_S)


@contextlib.asynccontextmanager
async def lifespan_hook(app: Any) -> AsyncIterator[None]:
    """The app's lifespan hook: keep the model alarm on MQTT in step with the stations' trust."""
    async with running(watch(app), "model-alarm"):
        yield
