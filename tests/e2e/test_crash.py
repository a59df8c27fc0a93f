"""Fault drill: the whole bridge is killed with SIGKILL in the middle of a stream of CRM actions
and started again. Every request still ends with exactly one result, no Icareus effect is
applied twice (repeated calls are recognised by their Idempotency-Key), and Icareus ends as CRM
says. Then a SIGTERM drains the bridge and it exits 0.

Nothing here waits a fixed time or measures one: each step waits for what it needs (a call
arriving at Icareus, a group's committed offsets, the end of a topic), and "nothing more comes"
is shown by the groups having committed past every record, then reading each topic to its end."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from icareus_bridge.core.model import SubscriptionState
from icareus_bridge.icareus.simulator import SimulatorAdmin
from icareus_bridge.service import EXIT_FORCED
from tests.e2e.harness import CODEC, WAIT_SECONDS, Bridge, Crm, CrmSubscription, box, service

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

VP1, VP2 = "ICAREUS-VP1", "ICAREUS-VP2"
SUBSCRIPTIONS = 30
REQUESTS_PER_SUBSCRIPTION = 9  # 6 to subscribe on two rooms, 1 to add a service, 2 to swap a box
KILL_AFTER_RESULTS = 30


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)


def committed_records(bootstrap: str, topic: str, partitions: Iterable[int]) -> list[Any]:
    """Every committed record of `topic`, read until the end of each partition: a positive
    proof of what is visible now, without waiting out a timeout."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"e2e-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        pending = set()
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                pending.add(p)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(pending)])
        out: list[Any] = []
        deadline = time.monotonic() + WAIT_SECONDS
        while pending:
            assert time.monotonic() < deadline, f"{topic}: partitions {pending} not read to the end"
            for msg in consumer.consume(num_messages=500, timeout=0.5):
                err = msg.error()
                if err is None:
                    out.append(msg)
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                else:
                    raise AssertionError(f"{topic}: {err}")
        return out
    finally:
        consumer.close()


def committed_offsets(
    bootstrap: str, group: str, topic: str, partitions: Iterable[int]
) -> dict[int, int]:
    """The offsets `group` has committed on `topic` (-1001 where none), asked without joining."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def planner_has_committed_every_event(bridge: Bridge, bootstrap: str) -> bool:
    topic = bridge.topics["input"]
    partitions = range(bridge.config["kafka"]["partitions"])
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-w-{uuid.uuid4().hex[:8]}"})
    try:
        ends = {
            p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
    finally:
        reader.close()
    done = committed_offsets(bootstrap, bridge.config["planner"]["group_id"], topic, partitions)
    return all(done[p] >= end for p, end in ends.items() if end > 0)


def dispatcher_has_committed_past(bridge: Bridge, bootstrap: str, requests: list[Any]) -> bool:
    last: dict[int, int] = {}
    for msg in requests:
        last[msg.partition()] = max(last.get(msg.partition(), -1), msg.offset())
    group = bridge.config["dispatcher"]["group_id"]
    done = committed_offsets(bootstrap, group, bridge.topics["requests"], sorted(last))
    return all(done[p] > offset for p, offset in last.items())


def log_of(bridge: Bridge) -> str:
    return bridge.log_tail(lines=1_000_000)


def test_kill_9_mid_stream_then_restart_gives_one_result_per_request_and_no_double_effect(
    bridge: Bridge, crm: Crm, icareus: SimulatorAdmin, kafka_bootstrap: str
) -> None:
    icareus.set_faults(latency_ms=150, jitter_ms=50)
    subs = [CrmSubscription(f"crash-{i:02d}") for i in range(SUBSCRIPTIONS)]
    for sub in subs:
        crm.publish(
            sub.act(
                "BECOME_SUBSCRIBER",
                state=SubscriptionState.EFFECTIVE,
                services=(
                    service("s1", "BASIC-TV", VP1),
                    service("s2", "SPORTS", VP1),
                    service("s3", "BASIC-TV", VP2),
                ),
                items=(box(f"{sub.id}-A", VP1), box(f"{sub.id}-B", VP2)),
            ),
            sub.act("ADD_SERVICE", services=sub.services_with(service("s4", "MOVIES", VP1))),
            sub.act(
                "SWAP_INSTALLED_ITEM",
                items=(box(f"{sub.id}-A2", VP1), box(f"{sub.id}-B", VP2)),
            ),
        )

    crm.results.until(lambda rs: len(rs) >= KILL_AFTER_RESULTS)
    bridge.kill()
    expected = SUBSCRIPTIONS * REQUESTS_PER_SUBSCRIPTION
    assert icareus.stats()["effects"] < expected, "the stream was over before the kill"

    bridge.start().wait_ready()
    partitions = range(bridge.config["kafka"]["partitions"])
    wait_for(
        lambda: planner_has_committed_every_event(bridge, kafka_bootstrap),
        "the planner to commit every event",
    )
    planned = committed_records(kafka_bootstrap, bridge.topics["requests"], partitions)
    request_ids = [CODEC.decode_request(m.value()).request_id for m in planned]
    assert len(set(request_ids)) == len(request_ids) == expected
    wait_for(
        lambda: dispatcher_has_committed_past(bridge, kafka_bootstrap, planned),
        "the dispatcher to commit every request",
    )
    results = [
        CODEC.decode_result(m.value())
        for m in committed_records(kafka_bootstrap, bridge.topics["results"], partitions)
    ]

    assert sorted(r.request_id for r in results) == sorted(request_ids), (
        "not exactly one result per request"
    )
    assert {r.life_cycle_state.value for r in results} == {"COMPLETED"}

    users = {u["externalId"]: u for u in icareus.state()["users"]}
    for sub in subs:
        living, bedroom = users[sub.account(VP1)], users[sub.account(VP2)]
        assert living["products"] == ["1001", "1002", "1003"]
        assert [d["deviceId"] for d in living["devices"]] == [f"{sub.id}-A2"]
        assert bedroom["products"] == ["1001"]
        assert [d["deviceId"] for d in bedroom["devices"]] == [f"{sub.id}-B"]
    stats = icareus.stats()
    assert stats["effects"] == expected, stats

    # A SIGTERM now drains and exits 0.
    assert bridge.terminate(timeout=WAIT_SECONDS) == 0
    assert "dispatcher drained" in log_of(bridge)


def test_sigterm_lets_in_flight_calls_finish_and_commits_them_a_second_one_exits_at_once(
    bridge: Bridge, crm: Crm, icareus: SimulatorAdmin, kafka_bootstrap: str
) -> None:
    if bridge.proc is None or bridge.proc.poll() is not None:
        bridge.start().wait_ready()
    icareus.set_faults(latency_ms=700)
    subs = [CrmSubscription(f"drain-{i}") for i in range(5)]
    events = [
        sub.act(
            "BECOME_SUBSCRIBER",
            state=SubscriptionState.EFFECTIVE,
            services=(service("s1", "BASIC-TV", VP1),),
        )
        for sub in subs
    ]
    calls_before = icareus.stats()["calls"]
    crm.publish(*events)
    wait_for(
        lambda: icareus.stats()["calls"] - calls_before >= len(subs), "every ADD_USER in flight"
    )

    assert bridge.terminate(timeout=WAIT_SECONDS) == 0
    # The drain let the calls in flight finish (no call was cut off at the end of the grace),
    # and their results were committed.
    log = log_of(bridge)
    assert "dispatcher drained" in log
    assert "shutdown grace ran out" not in log
    partitions = range(bridge.config["kafka"]["partitions"])
    ids = {e.event_id for e in events}
    finished = [
        r
        for m in committed_records(kafka_bootstrap, bridge.topics["results"], partitions)
        if (r := CODEC.decode_result(m.value())).event_id in ids
    ]
    assert len(finished) >= len(subs)

    duplicates = icareus.stats()["duplicates_suppressed"]
    bridge.start().wait_ready()
    for ev in events:
        crm.results_of(ev, 2)
    assert icareus.stats()["duplicates_suppressed"] == duplicates, "a finished call was repeated"

    # A second SIGTERM does not wait for the drain: the process ends at once, forced.
    icareus.set_faults(latency_ms=5000)
    late = CrmSubscription("drain-late")
    calls_before = icareus.stats()["calls"]
    crm.publish(
        late.act(
            "BECOME_SUBSCRIBER",
            state=SubscriptionState.EFFECTIVE,
            services=(service("s1", "BASIC-TV", VP1),),
        )
    )
    wait_for(lambda: icareus.stats()["calls"] > calls_before, "the late ADD_USER in flight")
    assert bridge.proc is not None
    bridge.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "signal received" in log_of(bridge), "the first SIGTERM to be handled")
    bridge.proc.send_signal(signal.SIGTERM)
    assert bridge.proc.wait(timeout=WAIT_SECONDS) == EXIT_FORCED
    assert "second signal, exiting at once" in log_of(bridge)
