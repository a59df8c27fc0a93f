"""deploy/grafana/icareus-bridge.json offline: import-ready (no fixed data source, a data source
and an instance variable), the rows the runbook names, and every query filtered by instance and
naming only metrics the bridge exports. tests/e2e/test_prometheus_alerts.py runs the queries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.unit.test_alert_rules import exported_names, metric_names

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "icareus-bridge.json"


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return doc


def test_the_dashboard_is_import_ready_with_datasource_and_instance_variables() -> None:
    doc = dashboard()
    assert doc["id"] is None and doc["uid"] == "icareus-bridge"
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["type"] == "query"
    assert variables["instance"]["includeAll"] is True
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_dashboard_has_the_rows_of_the_runbook() -> None:
    rows = [p["title"] for p in dashboard()["panels"] if p["type"] == "row"]
    assert rows == [
        "Requests: rate, errors, duration",
        "Icareus",
        "Kafka",
        "Dead letters and parked keys",
    ]


def test_every_query_is_filtered_by_instance_and_names_exported_metrics() -> None:
    exported = exported_names()
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            assert 'instance=~"$instance"' in expr, f"{panel['title']}: {expr}"
            missing = metric_names(expr) - exported
            assert not missing, f"{panel['title']}: {missing}"
