"""The live line: per-station monitoring on the decision path, alarms, and the ``/line`` page.

* ``settings`` — a station's ``monitoring:`` section (gate mode, windows, limits);
* ``live`` — ``LineMonitor``: the per-frame hooks the decision path calls (O(1)), the
  station monitors (``inspection.monitoring.station``) and the page's counters;
* ``alarms`` — alarm changes become an ``alarm`` log record, an MQTT message on
  ``<prefix>/<station>/alarms`` and Prometheus metrics; the lifespan task evaluating windows;
* ``page`` — ``GET /line`` (the page), ``/v1/line/...`` (stations, snapshot, server-sent events).

docs/monitoring.md describes the defaults and what each state means.
"""
