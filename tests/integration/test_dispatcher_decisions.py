"""What the dispatcher decides for one request, driven through its public entry on a real broker
with the Icareus simulator over HTTP: parked keys and the replay that unparks them, user ids
known late or only to Icareus, removals from accounts Icareus does not hold, and a refused
ADD_USER. The rig (topics, simulator, a dispatcher thread) is test_dispatcher.py's, whose
stories cover the rest: the retry budget running out (dead letter, park), and a partition
handed to another dispatcher mid-call (its late work dropped: no double results)."""

from __future__ import annotations

import asyncio

import pytest

from icareus_bridge.core.model import ProvisioningRequest, RequestType
from icareus_bridge.icareus.client import IcareusClient
from icareus_bridge.pipeline.dead_letter import PARKED_BEHIND, REASON, REPLAY_COUNT
from icareus_bridge.pipeline.parking import ParkedKey, encode_marker, marker_key
from tests.integration.dispatcher_support import (
    CODEC,
    Rig,
    TopicReader,
    header,
    results_of,
    rig_fixture,  # noqa: F401  (the `rig` fixture)
)

pytestmark = pytest.mark.kafka

PARTITION = 0  # requests are put on it explicitly, as the planner puts them (co-partitioned)


def request(
    sub: str,
    n: int,
    type_: RequestType,
    *,
    event: str = "ev-1",
    user: str | None = None,
    products: tuple[str, ...] = (),
    device: str | None = None,
) -> ProvisioningRequest:
    return ProvisioningRequest(
        request_id=f"{sub}-req-{n}",
        number=f"PR-{sub}-{n}",
        type=type_,
        subscription_id=sub,
        subscription_number=f"N-{sub}",
        distributor="VP1",
        account_key=f"N-{sub}-VP1",
        event_id=event,
        action_code="BECOME_SUBSCRIBER",
        sequence=n,
        created_at=1,
        user_id=user,
        product_ids=products,
        device_id=device,
        device_type="SET_TOP_BOX" if device else None,
    )


def send(to: Rig, req: ProvisioningRequest, *, replayed: bool = False) -> None:
    to.producer.produce(
        to.topics.requests,
        key=req.subscription_id.encode(),
        value=CODEC.encode_request(req),
        partition=PARTITION,
        headers=[(REPLAY_COUNT, b"1")] if replayed else [],
    )


def test_a_parked_subscription_dead_letters_in_order_until_the_request_that_parked_it_is_back(
    rig: Rig,
) -> None:
    first = request("sub-p", 0, RequestType.ADD_USER)
    parked = ParkedKey("sub-p", first.request_id, PARTITION, 1)
    rig.producer.produce(
        rig.topics.state,
        key=marker_key("sub-p"),
        value=encode_marker(parked),
        partition=PARTITION,
    )
    later = request("sub-p", 1, RequestType.ADD_DEVICE, user="u-old", device="SN-1")
    send(rig, later)  # parked: follows the first to the DLQ
    send(rig, first)  # the same id, but not back from the DLQ: still parked
    send(rig, first, replayed=True)  # back from the DLQ: unparks the key and runs
    after = request("sub-p", 2, RequestType.ADD_DEVICE, device="SN-2")
    send(rig, after)  # planned before the user id was known: takes the ADD_USER's
    rig.producer.flush(10)
    rig.start()
    bootstrap = rig.settings.kafka.bootstrap_servers
    dlq = TopicReader(bootstrap, rig.topics.dlq)
    results = TopicReader(bootstrap, rig.topics.results)
    state = TopicReader(bootstrap, rig.topics.state)
    dead = dlq.until(lambda rs: len(rs) >= 2)
    done = results_of(results.until(lambda rs: len(rs) >= 2))
    markers = state.until(lambda rs: any(m.value() is None for m in rs))
    rig.stop()

    assert [CODEC.decode_request(m.value()).request_id for m in dead] == [
        later.request_id,
        first.request_id,
    ]
    assert [(header(m, REASON), header(m, PARKED_BEHIND)) for m in dead] == [
        ("PARKED", first.request_id)
    ] * 2
    assert [(r.request_id, r.life_cycle_state.value) for r in done] == [
        (first.request_id, "COMPLETED"),
        (after.request_id, "COMPLETED"),
    ]
    tombstones = [m for m in markers if m.value() is None]
    assert [(m.key(), m.partition()) for m in tombstones] == [(marker_key("sub-p"), PARTITION)]
    user = rig.users()["N-sub-p-VP1"]
    assert done[1].reference_number == done[0].reference_number == user["userId"]
    assert [d["deviceId"] for d in user["devices"]] == ["SN-2"]  # SN-1 was never sent
    for reader in (dlq, results, state):
        reader.close()


def test_user_ids_come_from_icareus_and_what_icareus_lacks_is_not_called_for(
    rig: Rig,
) -> None:
    async def register(external_id: str) -> str | None:
        async with IcareusClient(rig.settings.icareus) as client:
            registered = await client.add_user(external_id, idempotency_key="before-restart")
            return registered.user_id

    known = asyncio.run(register("N-sub-k-VP1"))
    rig.admin.set_faults(
        error_code="INVALID_PROFILE",
        script=[{"fault": "status_error", "action": "addUser", "times": 1}],
    )
    # Planned while the ADD_USER's result was not fed back yet (or before a restart).
    activate = request("sub-k", 1, RequestType.ACTIVATE_PRODUCTS, products=("1001",))
    # A removal from an account Icareus never held.
    remove = request("sub-g", 1, RequestType.REMOVE_USER)
    # A refused ADD_USER; a later request of the same plan, and one of a later plan.
    refused = request("sub-r", 0, RequestType.ADD_USER)
    same_plan = request("sub-r", 1, RequestType.ACTIVATE_PRODUCTS, products=("1001",))
    later_plan = request(
        "sub-r", 2, RequestType.ACTIVATE_PRODUCTS, event="ev-2", products=("1001",)
    )
    for req in (activate, remove, refused, same_plan, later_plan):
        send(rig, req)
    rig.producer.flush(10)
    rig.start()
    results = TopicReader(rig.settings.kafka.bootstrap_servers, rig.topics.results)
    got = {r.request_id: r for r in results_of(results.until(lambda rs: len(rs) >= 5))}
    rig.stop()

    assert got[activate.request_id].life_cycle_state.value == "COMPLETED"
    assert got[activate.request_id].reference_number == known
    assert rig.users()["N-sub-k-VP1"]["products"] == ["1001"]

    assert got[remove.request_id].life_cycle_state.value == "COMPLETED"
    assert rig.admin.calls(action="removeUser") == []

    assert got[refused.request_id].error_code == "ICAREUS_REJECTED"
    assert (got[same_plan.request_id].error_code, got[same_plan.request_id].attempts) == (
        "DEPENDENCY_REJECTED",
        0,
    )
    # A later plan is not the same plan: no user known, and Icareus has none either.
    assert got[later_plan.request_id].error_code == "ACCOUNT_NOT_REGISTERED"
    assert "N-sub-r-VP1" not in rig.users()
    assert len(rig.admin.calls(action="activateProducts")) == 1  # sub-k's only
    results.close()
