"""The dispatcher alone against a real broker and the Icareus simulator over HTTP: requests are
planned here with `plan` and put on the requests topic, as the planner would, and the test reads
the results and dead letters and looks at what Icareus holds."""

from __future__ import annotations

import asyncio
import time

import pytest

from icareus_bridge.core.model import (
    ProvisioningRequest,
)
from icareus_bridge.icareus.client import IcareusClient
from icareus_bridge.pipeline.dead_letter import PARKED_BEHIND
from tests.integration.dispatcher_support import (
    CODEC,
    WAIT_SECONDS,
    Rig,
    TopicReader,
    box,
    event,
    header,
    put_back,
    results_of,
    rig_fixture,  # noqa: F401  (the `rig` fixture)
    subscription,
    tv,
)

pytestmark = pytest.mark.kafka


# --- stories ---------------------------------------------------------------------------------


def test_new_subscription_with_two_viewing_points_is_provisioned_with_user_ids_filled_in(
    rig: Rig,
) -> None:
    sub = subscription(
        "sub-a",
        1,
        services=[tv("BASIC-TV", "VP1"), tv("SPORTS", "VP1"), tv("BASIC-TV", "VP2")],
        items=(box("SN-1", "VP1"), box("SN-2", "VP2")),
    )
    requests = rig.crm(event("BECOME_SUBSCRIBER", sub))
    rig.start()
    results = TopicReader(rig.settings.kafka.bootstrap_servers, rig.topics.results)
    got = results_of(results.until(lambda rs: len(rs) >= len(requests)))
    rig.stop()

    assert sorted(r.request_id for r in got) == sorted(r.request_id for r in requests)
    # Each result counted once in the time-to-committed-result histogram, once committed.
    scrape = rig.metrics[0].render().decode()
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in scrape.splitlines()
        if line.startswith("icareus_bridge_event_to_committed_result_seconds_count{")
    )
    assert counted == len(requests)
    assert {r.life_cycle_state.value for r in got} == {"COMPLETED"}
    users = rig.users()
    assert users["N-sub-a-VP1"]["products"] == ["1001", "1002"]
    assert users["N-sub-a-VP2"]["products"] == ["1001"]
    assert [d["deviceId"] for d in users["N-sub-a-VP1"]["devices"]] == ["SN-1"]
    add_user = {r.account_key: r.reference_number for r in got if r.type.value == "ADD_USER"}
    device = next(r for r in got if r.type.value == "ADD_DEVICE" and r.device_id == "SN-2")
    assert device.reference_number == add_user["N-sub-a-VP2"] == users["N-sub-a-VP2"]["userId"]
    # One call per request, each carrying its request id as the Idempotency-Key.
    assert rig.admin.stats()["duplicates_suppressed"] == 0
    results.close()


def test_refused_add_user_rejects_the_rest_of_the_accounts_plan_without_calls(rig: Rig) -> None:
    rig.admin.set_faults(
        error_code="INVALID_PROFILE",
        script=[{"fault": "status_error", "action": "addUser", "times": 1}],
    )
    sub = subscription("sub-b", 1, services=[tv("BASIC-TV", "VP1")], items=(box("SN-9", "VP1"),))
    requests = rig.crm(event("BECOME_SUBSCRIBER", sub))
    rig.start()
    results = TopicReader(rig.settings.kafka.bootstrap_servers, rig.topics.results)
    got = {r.type.value: r for r in results_of(results.until(lambda rs: len(rs) >= 3))}
    rig.stop()

    assert len(requests) == 3
    assert got["ADD_USER"].error_code == "ICAREUS_REJECTED"
    assert "INVALID_PROFILE" in (got["ADD_USER"].error_description or "")
    for later in ("ADD_DEVICE", "ACTIVATE_PRODUCTS"):
        assert got[later].life_cycle_state.value == "REJECTED"
        assert got[later].error_code == "DEPENDENCY_REJECTED"
        assert got[later].attempts == 0
    assert rig.users() == {}
    provisioning_calls = [c["action"] for c in rig.admin.calls() if c["action"] != "getUser"]
    assert provisioning_calls == ["addUser"]
    results.close()


def test_outage_past_the_retry_budget_parks_the_subscription_and_replay_unparks_it(
    rig: Rig,
) -> None:
    broken = subscription("sub-c", 1, services=[tv("BASIC-TV", "VP1")])
    healthy = subscription("sub-d", 1, services=[], items=(box("SN-4", "VP1"),))
    rig.admin.set_faults(script=[{"fault": "http_503", "action": "activateProducts", "times": 50}])
    parked_requests = rig.crm(event("BECOME_SUBSCRIBER", broken))
    healthy_requests = rig.crm(event("BECOME_SUBSCRIBER", healthy))
    rig.start()
    bootstrap = rig.settings.kafka.bootstrap_servers
    dlq = TopicReader(bootstrap, rig.topics.dlq)
    results = TopicReader(bootstrap, rig.topics.results)
    dlq.until(lambda rs: len(rs) >= 1)
    # A later event of the parked subscription follows its first dead letter, in order.
    later = rig.crm(
        event(
            "ADD_SERVICE",
            subscription("sub-c", 2, services=[tv("BASIC-TV", "VP1"), tv("SPORTS", "VP1")]),
        )
    )
    dead = dlq.until(lambda rs: len(rs) >= 2)
    done = results.until(lambda rs: len(rs) >= 1 + len(healthy_requests))

    first, second = dead[0], dead[1]
    assert CODEC.decode_request(first.value()).type.value == "ACTIVATE_PRODUCTS"
    assert header(first, "dlq.reason") == "RETRIES_EXHAUSTED"
    assert header(first, "dlq.stage") == "dispatch"
    assert header(first, "dlq.http.status") == "503"
    parked_behind = CODEC.decode_request(first.value()).request_id
    assert header(second, PARKED_BEHIND) == parked_behind
    assert CODEC.decode_request(second.value()).request_id == later[0].request_id
    # The other subscription never waited; the parked one's ADD_USER had completed.
    finished = {r.request_id: r.life_cycle_state.value for r in results_of(done)}
    assert all(finished[r.request_id] == "COMPLETED" for r in healthy_requests)
    assert finished[parked_requests[0].request_id] == "COMPLETED"

    # A restart keeps the key parked.
    rig.stop()
    rig.start()
    more = rig.crm(
        event(
            "ADD_SERVICE",
            subscription(
                "sub-c",
                3,
                services=[tv("BASIC-TV", "VP1"), tv("SPORTS", "VP1"), tv("MOVIES", "VP1")],
            ),
        )
    )
    dead = dlq.until(lambda rs: len(rs) >= 3)
    assert CODEC.decode_request(dead[2].value()).request_id == more[0].request_id
    assert header(dead[2], PARKED_BEHIND) == parked_behind

    # Icareus is back; the dead letters are put back in order (as replay does): all finish.
    rig.admin.set_faults(script=[])
    put_back(rig.producer, rig.topics.requests, dead)
    n = len(done) + 3
    got = results_of(results.until(lambda rs: len(rs) >= n))
    rig.stop()
    replayed = [
        r for r in got if r.subscription_id == "sub-c" and r.type.value == "ACTIVATE_PRODUCTS"
    ]
    assert [r.life_cycle_state.value for r in replayed] == ["COMPLETED"] * 3
    assert rig.users()["N-sub-c-VP1"]["products"] == ["1001", "1002", "1003"]
    dlq.close()
    results.close()


def test_reset_reads_icareus_and_applies_the_difference(rig: Rig) -> None:
    sub = subscription("sub-e", 1, services=[tv("BASIC-TV", "VP1")], items=(box("SN-5", "VP1"),))
    requests = rig.crm(event("BECOME_SUBSCRIBER", sub))
    rig.start()
    bootstrap = rig.settings.kafka.bootstrap_servers
    results = TopicReader(bootstrap, rig.topics.results)
    results.until(lambda rs: len(rs) >= len(requests))
    # Icareus drifts behind CRM's back: the box is gone and a product appeared.
    user = rig.users()["N-sub-e-VP1"]

    async def drift() -> None:
        async with IcareusClient(rig.settings.icareus) as client:
            await client.remove_device(user["userId"], "SN-5", idempotency_key="drift-1")
            await client.activate_products(user["userId"], ["1003"], idempotency_key="drift-2")

    asyncio.run(drift())
    rig.reset(event("RESET_SUBSCRIPTION", sub))
    got = results_of(results.until(lambda rs: len(rs) >= len(requests) + 2))
    rig.stop()
    fixes = {r.type.value: r for r in got[len(requests) :]}
    assert set(fixes) == {"ADD_DEVICE", "CANCEL_PRODUCTS"}
    assert fixes["CANCEL_PRODUCTS"].product_ids == ("1003",)
    after = rig.users()["N-sub-e-VP1"]
    assert after["products"] == ["1001"]
    assert [d["deviceId"] for d in after["devices"]] == ["SN-5"]
    results.close()


def test_a_second_dispatcher_joining_mid_stream_takes_over_partitions_without_double_results(
    rig: Rig,
) -> None:
    rig.admin.set_faults(latency_ms=400)
    planned: list[ProvisioningRequest] = []
    for i in range(48):
        sub = subscription(f"sub-r{i}", 1, services=[tv("BASIC-TV", "VP1"), tv("SPORTS", "VP2")])
        planned += rig.crm(event("BECOME_SUBSCRIBER", sub))
    rig.start()
    results = TopicReader(rig.settings.kafka.bootstrap_servers, rig.topics.results)
    results.until(lambda rs: len(rs) >= 10)
    second = rig.start(instance="second")
    deadline = time.monotonic() + WAIT_SECONDS
    while not second.ready:  # the group has rebalanced: it holds a partition of its own
        assert time.monotonic() < deadline, second.snapshot()
        time.sleep(0.05)
    handed_over_at = len(results.records)
    results.until(lambda rs: len(rs) >= len(planned))
    got = results_of(results.poll(1.0))
    rig.stop()

    assert handed_over_at < len(planned), "the stream was over before the second one joined"

    assert sorted(r.request_id for r in got) == sorted(r.request_id for r in planned)
    by_sub: dict[str, list[int]] = {}
    for r in got:
        by_sub.setdefault(r.subscription_id, []).append(r.sequence)
    assert all(seqs == sorted(seqs) for seqs in by_sub.values()), "results out of order"
    results.close()
