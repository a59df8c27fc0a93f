"""The metrics alert rules rely on: counters present at zero before anything happened, the
build info, time lag, readiness as a gauge; and the log helpers of the per-request path."""

from __future__ import annotations

import io
import json
import logging

import structlog
from prometheus_client.parser import text_string_to_metric_families

from icareus_bridge.core.model import ActionCode, ProvisioningRequest, RequestType
from icareus_bridge.observability import HealthServer, Metrics, Readiness, configure_logging
from icareus_bridge.observability.logging import (
    LIBRDKAFKA_LOGGER_NAME,
    RateLimiter,
    request_fields,
    resolve_format,
)
from icareus_bridge.observability.metrics import DEAD_LETTER_REASONS, LagClock
from tests.unit.crm_events import event, subscription


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_with_known_labels_start_at_zero() -> None:
    samples = _samples(Metrics())
    for action in ActionCode:
        for outcome in ("planned", "skipped", "dead_lettered"):
            key = ("icareus_bridge_events_total", (("action", action.value), ("outcome", outcome)))
            assert samples[key] == 0.0
    for t in RequestType:
        assert samples[("icareus_bridge_requests_planned_total", (("type", t.value),))] == 0.0
        for state in ("COMPLETED", "REJECTED"):
            assert (
                samples[("icareus_bridge_results_total", (("state", state), ("type", t.value)))]
                == 0.0
            )
        for outcome in ("ok", "permanent", "transient"):
            assert (
                samples[
                    (
                        "icareus_bridge_icareus_calls_total",
                        (("outcome", outcome), ("type", t.value)),
                    )
                ]
                == 0.0
            )
    for stage, reason in DEAD_LETTER_REASONS:
        key = ("icareus_bridge_dead_letters_total", (("reason", reason), ("stage", stage)))
        assert samples[key] == 0.0
    for role in ("planner", "dispatcher"):
        for outcome in ("committed", "aborted", "fatal"):
            key = ("icareus_bridge_transactions_total", (("outcome", outcome), ("role", role)))
            assert samples[key] == 0.0
    for reason in ("connect", "timeout", "reset", "throttled", "server_error", "bad_body"):
        assert samples[("icareus_bridge_retries_total", (("reason", reason),))] == 0.0


def test_build_info_and_process_start_time_are_exported() -> None:
    samples = _samples(Metrics())
    build = [k for k in samples if k[0] == "icareus_bridge_build_info"]
    assert len(build) == 1 and samples[build[0]] == 1.0
    assert dict(build[0][1])["version"]
    assert samples[("process_start_time_seconds", ())] > 0


def test_time_lag_is_the_age_of_the_oldest_unfinished_record() -> None:
    now = [100_000.0]
    clock = LagClock("g", now_ms=lambda: now[0], estimates_unread=True)
    assert clock.age_seconds() == {}
    clock.read("t", 0, 10, 90_000.0)
    clock.read("t", 0, 11, 95_000.0)
    assert clock.age_seconds() == {("t", 0): 10.0}
    clock.committed("t", 0, 11)  # offset 10 finished, 11 still open
    assert clock.age_seconds() == {("t", 0): 5.0}
    clock.committed("t", 0, 12)
    assert clock.age_seconds() == {("t", 0): 0.0}  # caught up
    clock.behind("t", 0, 3)  # records behind, none read: as old as the last one finished
    now[0] = 130_000.0
    assert clock.age_seconds() == {("t", 0): 35.0}
    clock.caught_up()
    assert clock.age_seconds() == {("t", 0): 0.0}
    clock.read("t", 0, 20, 129_000.0)
    clock.read("t", 0, 15, 128_000.0)  # read again from an earlier offset: starts over
    assert clock.age_seconds() == {("t", 0): 2.0}
    clock.forget("t", 0)
    assert clock.age_seconds() == {}


def test_a_clock_that_reads_ahead_ignores_the_offset_lag() -> None:
    now = [100_000.0]
    clock = LagClock("dispatcher", now_ms=lambda: now[0])
    clock.read("t", 0, 10, 90_000.0)
    clock.committed("t", 0, 11)
    clock.behind("t", 0, 1)  # a transaction marker after the last request: no work
    now[0] = 500_000.0
    assert clock.age_seconds() == {("t", 0): 0.0}


def test_time_lag_and_readiness_are_gauges_of_the_scrape() -> None:
    metrics, readiness = Metrics(), Readiness()
    server = HealthServer("127.0.0.1", 0, metrics, readiness).start()
    try:
        readiness.register("planner")
        readiness.register("dispatcher")
        readiness.set("planner", True)
        metrics.lag_clock("icareus-bridge-planner").read("in", 2, 5, None)
        samples = _samples(metrics)
        assert samples[("icareus_bridge_ready", ())] == 0.0
        assert samples[("icareus_bridge_readiness_check", (("check", "planner"),))] == 1.0
        assert samples[("icareus_bridge_readiness_check", (("check", "dispatcher"),))] == 0.0
        lag_key = (
            "icareus_bridge_consumer_lag_seconds",
            (("group", "icareus-bridge-planner"), ("partition", "2"), ("topic", "in")),
        )
        assert 0.0 <= samples[lag_key] < 5.0
        readiness.set("dispatcher", True)
        assert _samples(metrics)[("icareus_bridge_ready", ())] == 1.0
        metrics.set_consumer_lag("icareus-bridge-planner", "in", 2, 7)
        metrics.forget_partition("icareus-bridge-planner", "in", 2)
        assert lag_key not in _samples(metrics)
    finally:
        server.stop()


def test_the_rate_limiter_lets_a_burst_through_then_counts_what_it_held() -> None:
    now = [0.0]
    limiter = RateLimiter(burst=2, interval_seconds=10, clock=lambda: now[0])
    assert [limiter.allow("a")[0] for _ in range(5)] == [True, True, False, False, False]
    assert limiter.allow("b") == (True, 0)  # keys are apart
    now[0] = 10.0
    assert limiter.allow("a") == (True, 3)  # next window: says how many were held back


def test_librdkafka_lines_are_rate_limited() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging("INFO", "json", stream=out)
    try:
        noisy = logging.getLogger(LIBRDKAFKA_LOGGER_NAME)
        for _ in range(50):
            noisy.log(logging.WARNING, "%s [%s] %s", "FAIL", "rdkafka#1", "Connection refused")
    finally:
        structlog.reset_defaults()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert 1 <= len(lines) <= 5
    assert "Connection refused" in lines[0]["event"]


def test_auto_format_is_console_on_a_terminal_and_json_otherwise() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_format("auto", Tty()) == "console"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", Tty()) == "json"


def test_request_fields_name_the_request_path_ids() -> None:
    ev = event("BECOME_SUBSCRIBER", subscription(1))
    assert request_fields(ev) == {
        "event_id": ev.event_id,
        "subscription_id": ev.subscription.id,
        "action_code": "BECOME_SUBSCRIBER",
    }
    request = ProvisioningRequest(
        request_id="r1",
        number="1",
        type=RequestType.ADD_DEVICE,
        subscription_id=ev.subscription.id,
        subscription_number="N1",
        distributor="ICAREUS-VP1",
        account_key="N1-ICAREUS-VP1",
        event_id=ev.event_id,
        action_code="ADD_INSTALLED_ITEM",
        sequence=0,
        created_at=0,
    )
    assert request_fields(request) == {
        "event_id": ev.event_id,
        "request_id": "r1",
        "subscription_id": ev.subscription.id,
        "action_code": "ADD_INSTALLED_ITEM",
        "request_type": "ADD_DEVICE",
    }
