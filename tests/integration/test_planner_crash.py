"""Fault drill: the planner process is killed with SIGKILL in the middle of a stream and
started again. A read_committed reader of the requests topic then sees every planned request
exactly once: none lost with the killed process, none repeated by the restarted one."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.integration.planner_support import (
    PlannerProcess,
    by_subscription,
    decoded_requests,
    expected_requests,
    make_topics,
    produce_events,
    read_topic,
    story,
    unique,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SUBSCRIPTIONS = 250  # x 6 events = 1,500 events


def _uncommitted_requests(bootstrap: str, topic: str) -> int:
    """Records written to the topic so far, committed or not (high watermarks)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("peek")})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def test_kill_9_mid_stream_then_restart_plans_every_request_exactly_once(
    kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    topics = make_topics(make_topic)
    events = [ev for n in range(SUBSCRIPTIONS) for ev in story(f"sub-crash-{n:04d}")]
    # Interleave subscriptions the way CRM would: by version, then subscription.
    events.sort(key=lambda e: (e.subscription.version, e.subscription.id))
    want = expected_requests(events)
    planner = PlannerProcess(
        tmp_path, kafka_bootstrap, topics, group=unique("planner"), instance=unique("crash")
    )
    planner.start().wait_ready()
    assert planner.http_status("/healthz") == 200
    assert planner.http_status("/metrics") == 200

    def feed() -> None:  # the stream keeps flowing while the planner dies and comes back
        for i in range(0, len(events), 50):
            produce_events(kafka_bootstrap, topics.input, events[i : i + 50])
            time.sleep(0.02)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    processes = [planner]
    try:
        # Kill once part of the output is written: a transaction is almost surely open.
        wait_for(
            lambda: _uncommitted_requests(kafka_bootstrap, topics.requests) >= len(want) // 4,
            60,
            "a quarter of the requests written",
        )
        planner.kill9()
        written_at_kill = _uncommitted_requests(kafka_bootstrap, topics.requests)
        feeder.join(60)
        restarted = PlannerProcess(
            tmp_path,
            kafka_bootstrap,
            topics,
            group=planner.env["ICAREUS_BRIDGE__PLANNER__GROUP_ID"],
            instance=planner.env["ICAREUS_BRIDGE__PLANNER__INSTANCE_ID"],
        )
        processes.append(restarted)
        restarted.start().wait_ready()
        got = decoded_requests(
            read_topic(kafka_bootstrap, topics.requests, expect=len(want), timeout=90, settle=2.0)
        )
        metrics = restarted.http_text("/metrics")
        assert "icareus_bridge_state_restore_seconds" in metrics
        assert 'icareus_bridge_events_total{action="' in metrics
        assert restarted.terminate() == 0, restarted.log_tail()  # SIGTERM: clean exit
    finally:
        for p in processes:  # whatever failed above, no planner outlives the test
            if p.proc is not None and p.proc.poll() is None:
                p.kill9()
    counts = Counter(r.request_id for r in got)
    duplicates = {rid: n for rid, n in counts.items() if n > 1}
    missing = {r.request_id for r in want} - set(counts)
    assert not duplicates, f"{len(duplicates)} requests seen more than once"
    assert not missing, f"{len(missing)} requests missing"
    assert len(got) == len(want)
    assert by_subscription(got) == by_subscription(want)  # and in order per subscription
    assert read_topic(kafka_bootstrap, topics.dlq) == []
    # Offsets no read_committed reader sees: transaction markers, and the records of the
    # transaction the kill cut short (aborted by the restarted instance's init_transactions).
    hidden = _uncommitted_requests(kafka_bootstrap, topics.requests) - len(got)
    print(f"killed after {written_at_kill} request offsets; {hidden} offsets not visible")
