"""Prometheus metrics of one app instance (its own registry, so several apps can coexist in tests)."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets from 0.25 ms to 2.5 s: a line answer is a few ms, a stalled one is seconds.
_LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
                    0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)


class ServingMetrics:
    """The serving metrics; other modules add theirs to ``registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.e2e_latency = Histogram(
            "inspection_request_latency_seconds",
            "Frame received to decision ready (decode, preprocess, queue, model, log append)",
            ["station"], buckets=_LATENCY_BUCKETS, registry=r)
        self.model_latency = Histogram(
            "inspection_model_latency_seconds", "One onnxruntime call (a whole batch)",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.decisions = Counter(
            "inspection_decisions_total", "Frame decisions by station, decision and most likely class",
            ["station", "decision", "predicted_class"], registry=r)
        self.part_decisions = Counter(
            "inspection_part_decisions_total", "Part decisions across cameras", ["station", "decision"], registry=r)
        self.failsafe = Counter(
            "inspection_failsafe_rejects_total", "Fail-safe rejects by reason", ["station", "reason"], registry=r)
        self.batch_size = Histogram(
            "inspection_batch_size", "Frames per onnxruntime call", buckets=_BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge(
            "inspection_queue_depth", "Frames waiting for or in the model", registry=r)
        self.bad_requests = Counter(
            "inspection_rejected_requests_total", "Requests answered with an error, by error code", ["code"],
            registry=r)
        self.model_info = Gauge(
            "inspection_active_model", "1 for the model version active on a station", ["station", "model"], registry=r)
        self.model_load_failures = Counter(
            "inspection_model_load_failures_total", "Model versions refused on (re)load", ["model"], registry=r)

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: the per-frame path skips the lock and label
        checks of ``labels()``. Label values here are bounded (stations, decisions, classes, models)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def unregister(self, *metrics: Any) -> None:
        """Take back metrics another module added (the app and its registry can outlive one
        lifespan: tests restart it, so does an embedding server; the next start adds them again)."""
        for metric in metrics:
            with contextlib.suppress(KeyError):
                self.registry.unregister(metric)

    def render(self) -> bytes:
        return generate_latest(self.registry)
