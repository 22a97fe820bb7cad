"""deploy/: the Prometheus alert rules and the Grafana dashboard hold together and name only
metrics the server exports (``promtool check rules`` too where promtool is installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import ServeSettings
from tests.helpers.tiny_model import BRIGHT, frame_png
from tests.serving.conftest import auth, post_frame

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
_METRIC = re.compile(r"\binspection_[a-z0-9_]+")
_DURATION = re.compile(r"^\d+(ms|s|m|h|d)$")
# Series suffixes of counters and histograms; /metrics names the family without them.
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _family(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


@pytest.fixture
def exported(settings: ServeSettings, keys: dict[str, str]) -> set[str]:
    """Metric families on the running app's /metrics (after a frame, with the line watch up)."""
    with TestClient(create_app(settings)) as client:
        assert post_frame(client, keys, frame_png(BRIGHT)).status_code == 200
        text = client.get("/metrics", headers=auth(keys, "admin")).text
    return {_family(m.group(1)) for m in re.finditer(r"^# TYPE (\S+) ", text, re.MULTILINE)} | {
        m.group(1) for m in re.finditer(r"^# TYPE (\S+) ", text, re.MULTILINE)}


def test_alert_rules_are_well_formed_and_use_exported_metrics(exported: set[str]) -> None:
    doc = yaml.safe_load(RULES.read_text())
    groups = doc["groups"]
    assert groups and all(g["name"] and g["rules"] for g in groups)
    names = [r["alert"] for g in groups for r in g["rules"]]
    assert len(names) == len(set(names)), "alert names must be unique"
    for group in groups:
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
            assert _DURATION.match(str(rule.get("for", "0s"))), rule["for"]
            assert rule["labels"]["severity"] in {"page", "warning"}
            assert rule["annotations"]["summary"]
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule["expr"]
            used = {_family(m) for m in _METRIC.findall(rule["expr"])}
            assert used and used <= exported, f"{rule['alert']}: {sorted(used - exported)} not on /metrics"
    assert {"inspection_line_alarm_active", "inspection_failsafe_rejects"} <= {
        _family(m) for r in (r for g in groups for r in g["rules"]) for m in _METRIC.findall(r["expr"])}


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus'); the schema test above still runs")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_well_formed_and_uses_exported_metrics(exported: set[str]) -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["uid"] and isinstance(dash["schemaVersion"], int)
    assert any(v["name"] == "datasource" and v["type"] == "datasource" for v in dash["templating"]["list"])
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["type"] in {"timeseries", "stat", "gauge", "table", "state-timeline"}
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        for target in panel["targets"]:
            used = {_family(m) for m in _METRIC.findall(target["expr"])}
            assert used and used <= exported, f"{panel['title']}: {sorted(used - exported)} not on /metrics"
