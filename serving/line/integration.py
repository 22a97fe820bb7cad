"""Start and stop the line integrations of every configured station (from the app's lifespan).

Per station, with its ``line:`` settings: a :class:`StationLine` (the PLC handshake) when
Modbus or OPC UA is enabled, the enabled servers on top of it, and an
:class:`MqttPublisher` when MQTT is enabled. Each subscribes to the app's DecisionBus with a
queue of its own, so none of them can slow the decision path or each other.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from inspection.errors import ConfigError, InspectionError
from serving.events import DecisionBus, Subscription
from serving.line.logsink import AppendsAsync, LogSink
from serving.line.settings import LineSettings, check_line_settings
from serving.line.telemetry import LineMetrics

log = logging.getLogger(__name__)

#: Bus queue per integration: far above any burst, so the bus never drops for us in practice;
#: if it ever does, the PLC side numbers and logs each lost decision as overflow (fail-safe).
BUS_QUEUE = 65_536


class _Server(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class LineIntegration:
    """Everything line-side for a set of stations; ``start()`` then ``stop()``."""

    def __init__(self, stations: Mapping[str, LineSettings], *, bus: DecisionBus, log_store: AppendsAsync | None,
                 demo: bool = False, registry: CollectorRegistry | None = None) -> None:
        self.stations = dict(stations)
        self.bus = bus
        self.demo = demo
        self.metrics = LineMetrics(registry)
        self.sink = LogSink(log_store)
        self.lines: dict[str, Any] = {}        # station -> StationLine
        self.servers: dict[str, dict[str, _Server]] = {}
        self.mqtt: dict[str, Any] = {}         # station -> MqttPublisher
        self._subs: list[str] = []

    async def start(self) -> None:
        """Start every enabled integration; on any failure, stop what started and re-raise.

        Raises:
            ConfigError: unsafe or conflicting line settings (see ``check_line_settings``).
            OSError: a server port cannot be bound.
        """
        check_line_settings(self.stations, demo=self.demo)
        self.sink.start()
        try:
            for name, line in self.stations.items():
                await self._start_station(name, line)
        except BaseException:
            await self.stop()
            raise

    async def _start_station(self, name: str, cfg: LineSettings) -> None:
        if cfg.modbus.enabled or cfg.opcua.enabled:
            from serving.line.station import StationLine

            sub = self._subscribe(f"line.plc.{name}", frozenset({cfg.plc.result_kind}), keep_dropped=True)
            line = StationLine(name, cfg.plc, sink=self.sink, metrics=self.metrics)
            self.lines[name] = line
            await line.start(sub)
            servers: dict[str, _Server] = {}
            self.servers[name] = servers
            if cfg.modbus.enabled:
                from serving.line.modbus import ModbusStationServer

                servers["modbus"] = ModbusStationServer(line.handshake, host=cfg.modbus.host, port=cfg.modbus.port)
                await servers["modbus"].start()
            if cfg.opcua.enabled:
                from serving.line.opcua import OpcUaStationServer

                servers["opcua"] = OpcUaStationServer(line.handshake, cfg.opcua)
                await servers["opcua"].start()
        if cfg.mqtt.enabled:
            from serving.line.mqtt import MqttPublisher

            sub = self._subscribe(f"line.mqtt.{name}", frozenset({"inspection", "part"}))
            plc = self.lines.get(name)
            extra: Callable[[], dict[str, Any]] | None = None
            if plc is not None:
                def extra(plc: Any = plc, servers: dict[str, _Server] = self.servers[name]) -> dict[str, Any]:
                    return plc_status(plc, servers)
            pub = MqttPublisher(name, cfg.mqtt, sink=self.sink, metrics=self.metrics, status_extra=extra)
            self.mqtt[name] = pub
            await pub.start(sub.queue)

    def _subscribe(self, name: str, kinds: frozenset[str], *, keep_dropped: bool = False) -> Subscription:
        sub = self.bus.subscribe(name, maxsize=BUS_QUEUE, kinds=kinds, keep_dropped=keep_dropped)
        self._subs.append(name)
        return sub

    async def stop(self) -> None:
        """Stop everything that started (MQTT first so it can drain, servers, then handshakes).

        The handshakes stop after the servers, so no acknowledgement races their
        ``unacknowledged_at_stop`` records, and before the log sink, which writes those records.
        """
        for pub in self.mqtt.values():
            await _quietly(pub.stop(), "MQTT publisher")
        for servers in self.servers.values():
            for server in servers.values():
                await _quietly(server.stop(), "PLC server")
        for line in self.lines.values():
            await _quietly(line.stop(), "PLC handshake")
        for name in self._subs:
            self.bus.unsubscribe(name)
        self._subs.clear()
        self.mqtt.clear()
        self.servers.clear()
        self.lines.clear()
        await self.sink.stop()


async def _quietly(coro: Any, what: str) -> None:
    try:
        await coro
    except Exception:
        log.exception("could not stop %s cleanly", what)


def plc_status(line: Any, servers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The PLC side's state for the MQTT status message (``servers``: the station's wire servers)."""
    hs = line.handshake
    c = hs.counters
    down = sorted(name for name, server in (servers or {}).items() if not getattr(server, "alive", True))
    return {"plc": {"ready": hs.running and not hs.full and not down, "busy": hs.full, "pending_results": hs.pending,
                    "servers_down": down,
                    "error_code": int(hs.error_code), "inspected": c.inspected, "rejected": c.rejected,
                    "failsafe": c.failsafe, "overflowed": c.overflowed, "ack_timeouts": c.ack_timeouts,
                    "acknowledged": c.acknowledged}}


def line_stations(settings: Any) -> dict[str, LineSettings]:
    """``{station: LineSettings}`` from the serving settings (stations without a ``line`` section get defaults)."""
    return {name: getattr(st, "line", None) or LineSettings() for name, st in settings.stations.items()}


@contextlib.asynccontextmanager
async def lifespan_hook(app: Any) -> AsyncIterator[None]:
    """The app's lifespan hook (``serving.app.default_lifespan_hooks``): run the line integrations.

    Does nothing when no station enables Modbus, OPC UA or MQTT.
    """
    settings = app.state.settings
    stations = {k: v for k, v in line_stations(settings).items() if v.any_enabled}
    if not stations:
        yield
        return
    registry = getattr(getattr(app.state, "metrics", None), "registry", None)
    integration = LineIntegration(stations, bus=app.state.bus, log_store=app.state.log,
                                  demo=bool(getattr(settings, "demo", False)), registry=registry)
    try:
        await integration.start()
    except InspectionError as exc:
        app.state.startup_error = exc  # the CLI reports it; uvicorn only logs a failed start
        raise
    except OSError as exc:
        error = ConfigError(f"line integration cannot start: {exc}")
        app.state.startup_error = error
        raise error from exc
    app.state.line = integration
    try:
        yield
    finally:
        await integration.stop()


__all__ = ["LineIntegration", "lifespan_hook", "line_stations", "plc_status"]
