"""deploy/prometheus/alerts.yml, checked by Prometheus' own promtool (syntax and the unit tests
of alerts_test.yml), and against the bridge: every metric a rule names is one the bridge
exports, every alert has a firing and a quiet test case and a runbook section."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from icareus_bridge.observability import Metrics

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "alerts_test.yml"
OPERATIONS = REPO / "docs" / "OPERATIONS.md"
# Metrics a rule may name that the bridge does not export: Prometheus' own `up`.
NOT_FROM_THE_BRIDGE = {"up"}
PROMQL_FUNCTIONS_AND_WORDS = {
    "sum",
    "max",
    "min",
    "by",
    "on",
    "and",
    "or",
    "unless",
    "rate",
    "increase",
    "deriv",
    "changes",
    "histogram_quantile",
    "group_left",
    "without",
}


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: install Debian's `prometheus` package (.ci/run does)"
    return found


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def exported_names() -> set[str]:
    names: set[str] = set()
    metrics = Metrics()
    metrics.lag_clock("group").read("topic", 0, 0, None)  # series appear once a record is read
    metrics.watch_readiness(lambda: {"planner": True})  # as the HTTP server does
    for family in text_string_to_metric_families(metrics.render().decode()):
        names.update(sample.name for sample in family.samples)
        # A family without a sample yet (labels only known when it happens) still exports:
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_labels)
    without_grouping = re.sub(
        r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_ranges
    )
    # Names not part of a number (1e9) and not called like a function (rate(...)).
    name = r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()"
    words = set(re.findall(name, without_grouping))
    return {w for w in words if w not in PROMQL_FUNCTIONS_AND_WORDS}


def github_anchor(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_promtool_runs_the_rule_unit_tests() -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts without a firing case"
    assert names - quiet == set(), "alerts without a quiet case"


def test_rules_name_only_metrics_the_bridge_exports() -> None:
    exported = exported_names()
    for rule in alert_rules():
        missing = metric_names(rule["expr"]) - exported - NOT_FROM_THE_BRIDGE
        assert missing == set(), f"{rule['alert']} names metrics nobody exports: {missing}"


def test_every_alert_has_a_runbook_section_and_labels() -> None:
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in OPERATIONS.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/OPERATIONS.md", url
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in OPERATIONS.md"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
