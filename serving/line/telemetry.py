"""Prometheus metrics of the line integrations, registered on the app's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class LineMetrics:
    """Counters and gauges for PLC results and MQTT publishing, labelled by station."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # A private registry when none is given, so two apps in one process never collide.
        self.registry = registry if registry is not None else CollectorRegistry()
        self.plc_results = Counter(
            "inspection_plc_results", "PLC result outcomes (acknowledged, timeout, overflow)",
            ["station", "outcome"], registry=self.registry)
        self.plc_pending = Gauge(
            "inspection_plc_pending_results", "Results waiting for the PLC's acknowledgement",
            ["station"], registry=self.registry)
        self.mqtt_published = Counter(
            "inspection_mqtt_published", "Decisions the MQTT broker acknowledged (QoS 1)",
            ["station"], registry=self.registry)
        self.mqtt_dropped = Counter(
            "inspection_mqtt_dropped", "Decisions dropped because the MQTT queue was full",
            ["station"], registry=self.registry)
        self.mqtt_queue = Gauge(
            "inspection_mqtt_queue_depth", "Decisions waiting to be published to MQTT",
            ["station"], registry=self.registry)
        self.mqtt_connected = Gauge(
            "inspection_mqtt_connected", "1 while connected to the MQTT broker",
            ["station"], registry=self.registry)
