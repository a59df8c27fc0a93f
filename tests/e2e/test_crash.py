"""Fault drill: the whole bridge is killed with SIGKILL in the middle of a stream of CRM actions
and started again. Every request still ends with exactly one result, no Icareus effect is
applied twice (repeated calls are recognised by their Idempotency-Key), and Icareus ends as CRM
says. Then a SIGTERM drains the bridge and it exits 0."""

from __future__ import annotations

import signal
import time

import pytest

from icareus_bridge.core.model import SubscriptionState
from icareus_bridge.icareus.simulator import SimulatorAdmin
from tests.e2e.harness import CODEC, Bridge, Crm, CrmSubscription, TopicReader, box, service

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

VP1, VP2 = "ICAREUS-VP1", "ICAREUS-VP2"
SUBSCRIPTIONS = 30
REQUESTS_PER_SUBSCRIPTION = 9  # 6 to subscribe on two rooms, 1 to add a service, 2 to swap a box
KILL_AFTER_RESULTS = 30


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
    seen_before_kill = len(crm.results.poll(0.5))
    expected = SUBSCRIPTIONS * REQUESTS_PER_SUBSCRIPTION
    assert seen_before_kill < expected, "the stream was over before the kill"

    bridge.start().wait_ready()
    requests = TopicReader(kafka_bootstrap, bridge.topics["requests"])
    planned = requests.until(lambda rs: len(rs) >= expected)
    request_ids = [CODEC.decode_request(m.value()).request_id for m in planned]
    results = crm.results.until(lambda rs: len(rs) >= expected)
    crm.results.poll(1.0)  # anything beyond one result per request would show up now
    requests.close()

    result_ids = [r.request_id for r in crm.all_results()]
    assert len(set(request_ids)) == len(request_ids) == expected
    assert sorted(result_ids) == sorted(request_ids), "not exactly one result per request"
    assert {r.life_cycle_state.value for r in crm.all_results()} == {"COMPLETED"}
    assert len(results) == expected

    users = {u["externalId"]: u for u in icareus.state()["users"]}
    for sub in subs:
        living, bedroom = users[sub.account(VP1)], users[sub.account(VP2)]
        assert living["products"] == ["1001", "1002", "1003"]
        assert [d["deviceId"] for d in living["devices"]] == [f"{sub.id}-A2"]
        assert bedroom["products"] == ["1001"]
        assert [d["deviceId"] for d in bedroom["devices"]] == [f"{sub.id}-B"]
    stats = icareus.stats()
    assert stats["effects"] == expected, stats

    # A SIGTERM now drains and exits 0 within the shutdown grace.
    assert bridge.terminate(timeout=bridge.config["dispatcher"]["shutdown_grace_seconds"] + 5) == 0


def test_sigterm_lets_in_flight_calls_finish_and_commits_them_a_second_one_exits_at_once(
    bridge: Bridge, crm: Crm, icareus: SimulatorAdmin
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
    deadline = time.monotonic() + 30
    while icareus.stats()["calls"] - calls_before < len(subs):  # every ADD_USER is in flight
        assert time.monotonic() < deadline
        time.sleep(0.05)

    started = time.monotonic()
    assert bridge.terminate(timeout=bridge.config["dispatcher"]["shutdown_grace_seconds"]) == 0
    assert time.monotonic() - started < bridge.config["dispatcher"]["shutdown_grace_seconds"]
    # The calls that were in flight finished and their results were committed.
    finished = [
        r
        for r in crm.results.poll(1.0)
        if CODEC.decode_result(r.value()).event_id in {e.event_id for e in events}
    ]
    assert len(finished) >= len(subs)

    duplicates = icareus.stats()["duplicates_suppressed"]
    bridge.start().wait_ready()
    for ev in events:
        crm.results_of(ev, 2)
    assert icareus.stats()["duplicates_suppressed"] == duplicates, "a finished call was repeated"

    # A second SIGTERM does not wait for anything.
    icareus.set_faults(latency_ms=5000)
    late = CrmSubscription("drain-late")
    crm.publish(
        late.act(
            "BECOME_SUBSCRIBER",
            state=SubscriptionState.EFFECTIVE,
            services=(service("s1", "BASIC-TV", VP1),),
        )
    )
    time.sleep(1.0)
    assert bridge.proc is not None
    bridge.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    started = time.monotonic()
    bridge.proc.send_signal(signal.SIGTERM)
    assert bridge.proc.wait(timeout=5) != 0
    assert time.monotonic() - started < 3
