"""Logs never carry personal data or secrets; /healthz, /readyz and /metrics answer as the roles
report."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request

import structlog

from icareus_bridge.core.model import Subscriber
from icareus_bridge.observability import (
    HealthServer,
    Metrics,
    Readiness,
    configure_logging,
    get_logger,
    redact,
)
from icareus_bridge.observability.logging import redaction_processor


def test_personal_data_and_secrets_are_redacted_wherever_they_are() -> None:
    assert redact(
        {
            "subscription_id": "s1",
            "account_key": "N1-VP1",
            "profile": {"first_name": "Ann"},
            "params": {"emailAddress": "a@b.c", "token": "01abc", "user_id": "7"},
            "items": [{"phone": "+357"}],
        }
    ) == {
        "subscription_id": "s1",
        "account_key": "N1-VP1",
        "profile": "<redacted>",
        "params": {"emailAddress": "<redacted>", "token": "<redacted>", "user_id": "7"},
        "items": [{"phone": "<redacted>"}],
    }


def test_a_value_nested_deeper_than_redaction_looks_is_not_shown() -> None:
    nested: object = {"phone": "+357"}
    for _ in range(12):
        nested = {"inner": nested}
    assert "+357" not in json.dumps(redact(nested))


def test_a_domain_object_passed_to_a_log_call_is_redacted_field_by_field() -> None:
    subscriber = Subscriber(
        account_number="AC1", first_name="Ann", last_name="Lee", email="ann@example.org"
    )
    shown = redaction_processor(
        None, "info", {"event": "x", "who": subscriber, "all": [subscriber]}
    )
    text = json.dumps(shown)
    assert "Ann" not in text and "Lee" not in text and "ann@example.org" not in text
    assert shown["who"]["account_number"] == "AC1"


def test_a_log_line_is_json_with_the_ids_and_without_the_secrets() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging("INFO", "json", stream=out)
    try:
        get_logger("test").info(
            "request sent",
            request_id="r1",
            subscription_id="s1",
            last_name="Lee",
            sasl_password="x",
        )
    finally:  # leave the process's logging as other tests expect it
        structlog.reset_defaults()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    line = json.loads(out.getvalue().splitlines()[-1])
    assert line["request_id"] == "r1" and line["subscription_id"] == "s1"
    assert line["last_name"] == "<redacted>" and line["sasl_password"] == "<redacted>"
    assert line["level"] == "info" and line["event"] == "request sent"


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_ready_only_when_every_registered_role_is_ready() -> None:
    metrics, readiness = Metrics(), Readiness()
    server = HealthServer("127.0.0.1", 0, metrics, readiness).start()
    try:
        assert _get(server.port, "/healthz")[0] == 200
        assert _get(server.port, "/readyz")[0] == 503  # nothing registered yet
        readiness.register("planner")
        readiness.register("dispatcher")
        readiness.set("planner", True, "6 partitions")
        status, body = _get(server.port, "/readyz")
        assert status == 503
        assert json.loads(body)["checks"]["dispatcher"]["ready"] is False
        readiness.set("dispatcher", True)
        assert _get(server.port, "/readyz")[0] == 200
        metrics.events.labels("ADD_SERVICE", "planned").inc()
        status, text = _get(server.port, "/metrics")
        assert status == 200
        assert b'icareus_bridge_events_total{action="ADD_SERVICE",outcome="planned"} 1.0' in text
        assert _get(server.port, "/nope")[0] == 404
    finally:
        server.stop()
