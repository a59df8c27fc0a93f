"""CRM stories end to end: lifecycle events in on Kafka, the bridge (`icareus-bridge run`, both
roles) in between, the Icareus simulator over HTTP; each story checks what Icareus holds in the
end and the results CRM reads back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from icareus_bridge.config import Settings
from icareus_bridge.core.model import ProvisioningResult, ServiceState, SubscriptionState
from icareus_bridge.icareus.client import IcareusClient
from icareus_bridge.icareus.simulator import SimulatorAdmin
from tests.e2e.harness import (
    CODEC,
    Bridge,
    Crm,
    CrmSubscription,
    TopicReader,
    box,
    header,
    service,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

VP1, VP2 = "ICAREUS-VP1", "ICAREUS-VP2"
EFFECTIVE = SubscriptionState.EFFECTIVE


def user(icareus: SimulatorAdmin, account_key: str) -> dict[str, Any] | None:
    for u in icareus.state()["users"]:
        if u["externalId"] == account_key:
            return dict(u)
    return None


def devices(u: dict[str, Any] | None) -> list[str]:
    assert u is not None
    return sorted(d["deviceId"] for d in u["devices"])


def summary(results: list[ProvisioningResult]) -> list[tuple[str, str, str | None]]:
    return [(r.type.value, r.life_cycle_state.value, r.error_code) for r in results]


def test_new_subscription_with_two_viewing_points(crm: Crm, icareus: SimulatorAdmin) -> None:
    sub = CrmSubscription("new-2vp")
    ev = sub.act(
        "BECOME_SUBSCRIBER",
        state=EFFECTIVE,
        services=(
            service("s1", "BASIC-TV", VP1),
            service("s2", "SPORTS", VP1),
            service("s3", "BASIC-TV", VP2),
        ),
        items=(box("SN-LR", VP1), box("SN-BR", VP2)),
    )
    crm.publish(ev)
    results = crm.results_of(ev, 6)

    assert sorted(summary(results)) == sorted(
        [("ADD_USER", "COMPLETED", None)] * 2
        + [("ADD_DEVICE", "COMPLETED", None)] * 2
        + [("ACTIVATE_PRODUCTS", "COMPLETED", None)] * 2
    )
    living, bedroom = user(icareus, sub.account(VP1)), user(icareus, sub.account(VP2))
    assert living is not None and bedroom is not None
    assert living["products"] == ["1001", "1002"] and devices(living) == ["SN-LR"]
    assert bedroom["products"] == ["1001"] and devices(bedroom) == ["SN-BR"]
    registered = {r.account_key: r.reference_number for r in results if r.type.value == "ADD_USER"}
    assert registered == {sub.account(VP1): living["userId"], sub.account(VP2): bedroom["userId"]}


def test_swap_installed_item_moves_the_account_to_the_new_box(
    crm: Crm, icareus: SimulatorAdmin
) -> None:
    sub = CrmSubscription("swap-box")
    first = sub.act(
        "BECOME_SUBSCRIBER",
        state=EFFECTIVE,
        services=(service("s1", "BASIC-TV", VP1),),
        items=(box("SN-OLD", VP1),),
    )
    swap = sub.act("SWAP_INSTALLED_ITEM", items=(box("SN-NEW", VP1),))
    crm.publish(first, swap)
    crm.results_of(first, 3)
    results = crm.results_of(swap, 2)

    assert summary(results) == [
        ("REMOVE_DEVICE", "COMPLETED", None),
        ("ADD_DEVICE", "COMPLETED", None),
    ]
    assert [r.device_id for r in results] == ["SN-OLD", "SN-NEW"]
    assert devices(user(icareus, sub.account(VP1))) == ["SN-NEW"]


def test_swap_service_replaces_the_product(crm: Crm, icareus: SimulatorAdmin) -> None:
    sub = CrmSubscription("swap-svc")
    first = sub.act("BECOME_SUBSCRIBER", state=EFFECTIVE, services=(service("s1", "SPORTS", VP1),))
    swap = sub.act(
        "SWAP_SERVICE",
        services=sub.services_with(
            service("s1", "SPORTS", VP1, ServiceState.SWAPPED), service("s2", "MOVIES", VP1)
        ),
    )
    crm.publish(first, swap)
    crm.results_of(first, 2)
    results = crm.results_of(swap, 2)

    assert summary(results) == [
        ("CANCEL_PRODUCTS", "COMPLETED", None),
        ("ACTIVATE_PRODUCTS", "COMPLETED", None),
    ]
    u = user(icareus, sub.account(VP1))
    assert u is not None and u["products"] == ["1003"]


def test_deactivate_then_activate_keeps_the_user_and_its_box(
    crm: Crm, icareus: SimulatorAdmin
) -> None:
    sub = CrmSubscription("deact-act")
    services = (service("s1", "BASIC-TV", VP1), service("s2", "MOVIES", VP1))
    first = sub.act(
        "BECOME_SUBSCRIBER", state=EFFECTIVE, services=services, items=(box("SN-D", VP1),)
    )
    crm.publish(first)
    crm.results_of(first, 3)
    user_id = user(icareus, sub.account(VP1))["userId"]  # type: ignore[index]

    off = sub.act(
        "DEACTIVATE_SUBSCRIPTION",
        state=SubscriptionState.NOT_EFFECTIVE,
        services=tuple(
            s.model_copy(update={"state": ServiceState.NOT_EFFECTIVE}) for s in services
        ),
    )
    crm.publish(off)
    assert summary(crm.results_of(off, 1)) == [("CANCEL_PRODUCTS", "COMPLETED", None)]
    u = user(icareus, sub.account(VP1))
    assert u is not None and u["products"] == [] and devices(u) == ["SN-D"]

    on = sub.act("ACTIVATE_SUBSCRIPTION", state=EFFECTIVE, services=services)
    crm.publish(on)
    assert summary(crm.results_of(on, 1)) == [("ACTIVATE_PRODUCTS", "COMPLETED", None)]
    u = user(icareus, sub.account(VP1))
    assert u is not None and u["userId"] == user_id and u["products"] == ["1001", "1003"]


def test_terminate_removes_the_user_after_its_products_and_devices(
    crm: Crm, icareus: SimulatorAdmin
) -> None:
    sub = CrmSubscription("terminate")
    first = sub.act(
        "BECOME_SUBSCRIBER",
        state=EFFECTIVE,
        services=(service("s1", "BASIC-TV", VP1),),
        items=(box("SN-T", VP1),),
    )
    end = sub.act(
        "TERMINATE_SUBSCRIPTION",
        state=SubscriptionState.CANCELLED,
        services=(service("s1", "BASIC-TV", VP1, ServiceState.CANCELLED),),
        items=(),
    )
    crm.publish(first, end)
    crm.results_of(first, 3)
    results = crm.results_of(end, 3)

    assert summary(results) == [
        ("REMOVE_DEVICE", "COMPLETED", None),
        ("CANCEL_PRODUCTS", "COMPLETED", None),
        ("REMOVE_USER", "COMPLETED", None),
    ]
    assert user(icareus, sub.account(VP1)) is None


def test_the_fifth_viewing_point_is_rejected(crm: Crm, icareus: SimulatorAdmin) -> None:
    sub = CrmSubscription("five-rooms")
    rooms = [f"ICAREUS-VP{i}" for i in range(1, 6)]
    ev = sub.act(
        "BECOME_SUBSCRIBER",
        state=EFFECTIVE,
        services=tuple(service(f"s{i}", "BASIC-TV", d) for i, d in enumerate(rooms)),
        items=tuple(box(f"SN-5VP-{i}", d) for i, d in enumerate(rooms)),
    )
    crm.publish(ev)
    results = crm.results_of(ev, 13)

    rejected = [r for r in results if r.life_cycle_state.value == "REJECTED"]
    assert [(r.distributor, r.error_code, r.attempts) for r in rejected] == [
        ("ICAREUS-VP5", "VIEWING_POINT_LIMIT", 0)
    ]
    for room in rooms[:4]:
        u = user(icareus, sub.account(room))
        assert u is not None and u["products"] == ["1001"]
    assert user(icareus, sub.account(rooms[4])) is None


def test_refused_add_user_then_account_not_registered_then_registered_again(
    crm: Crm, icareus: SimulatorAdmin, kafka_bootstrap: str
) -> None:
    icareus.set_faults(
        error_code="INVALID_PROFILE",
        script=[{"fault": "status_error", "action": "addUser", "times": 1}],
    )
    sub = CrmSubscription("refused")
    first = sub.act(
        "BECOME_SUBSCRIBER",
        state=EFFECTIVE,
        services=(service("s1", "BASIC-TV", VP1),),
    )
    crm.publish(first)
    assert summary(crm.results_of(first, 2)) == [
        ("ADD_USER", "REJECTED", "ICAREUS_REJECTED"),
        ("ACTIVATE_PRODUCTS", "REJECTED", "DEPENDENCY_REJECTED"),
    ]
    # The planner folds the refusal into its state (registered=false, registration_rejected).
    state = TopicReader(kafka_bootstrap, crm.topics["state"])
    try:

        def refused(records: list[Any]) -> bool:
            for m in reversed(records):
                if m.key() == sub.id.encode() and m.value():
                    record = CODEC.decode_state(m.value())
                    account = record.accounts.get(VP1) if record else None
                    return account is not None and account.registration_rejected
            return False

        state.until(refused)
    finally:
        state.close()

    # The room's only service stops: nothing left to register the account for, and the
    # cancellation cannot be sent.
    stop = sub.act(
        "STOP_SERVICE",
        services=sub.services_with(service("s1", "BASIC-TV", VP1, ServiceState.NOT_EFFECTIVE)),
    )
    crm.publish(stop)
    [stopped] = crm.results_of(stop, 1)
    assert (stopped.type.value, stopped.life_cycle_state.value, stopped.error_code) == (
        "CANCEL_PRODUCTS",
        "REJECTED",
        "ACCOUNT_NOT_REGISTERED",
    )
    assert stopped.product_ids == ("1001",) and stopped.attempts == 0
    assert user(icareus, sub.account(VP1)) is None

    # A new service wants the account again: ADD_USER again (the fault was for one call).
    more = sub.act("ADD_SERVICE", services=sub.services_with(service("s2", "MOVIES", VP1)))
    box_in = sub.act("ADD_INSTALLED_ITEM", items=(box("SN-R", VP1),))
    crm.publish(more, box_in)
    results = crm.results_of(more, 2)
    assert summary(results) == [
        ("ADD_USER", "COMPLETED", None),
        ("ACTIVATE_PRODUCTS", "COMPLETED", None),
    ]
    assert results[1].product_ids == ("1003",)
    assert summary(crm.results_of(box_in, 1)) == [("ADD_DEVICE", "COMPLETED", None)]

    u = user(icareus, sub.account(VP1))
    assert u is not None and u["userId"] == results[0].reference_number
    assert u["products"] == ["1003"] and devices(u) == ["SN-R"]


def test_outage_past_the_retry_budget_parks_only_that_subscription_in_order(
    crm: Crm, icareus: SimulatorAdmin, bridge: Bridge
) -> None:
    stuck, other = CrmSubscription("outage-stuck"), CrmSubscription("outage-other")
    icareus.set_faults(outage=True)
    first = stuck.act(
        "BECOME_SUBSCRIBER", state=EFFECTIVE, services=(service("s1", "BASIC-TV", VP1),)
    )
    crm.publish(first)
    crm.dead_letters.until(
        lambda rs: any(header(m, "dlq.reason") == "RETRIES_EXHAUSTED" for m in rs)
    )
    assert not bridge.ready(), "Icareus is down: the bridge is not ready"
    icareus.set_faults(outage=False)
    later = stuck.act("ADD_SERVICE", services=stuck.services_with(service("s2", "SPORTS", VP1)))
    unaffected = other.act(
        "BECOME_SUBSCRIBER",
        state=EFFECTIVE,
        services=(service("s1", "BASIC-TV", VP1),),
        items=(box("SN-O", VP1),),
    )
    crm.publish(later, unaffected)

    assert summary(crm.results_of(unaffected, 3)) == [
        ("ADD_USER", "COMPLETED", None),
        ("ADD_DEVICE", "COMPLETED", None),
        ("ACTIVATE_PRODUCTS", "COMPLETED", None),
    ]
    assert bridge.ready()
    mine = crm.dead_letters.until(
        lambda rs: len([m for m in rs if m.key() == stuck.id.encode()]) >= 3
    )
    letters = [m for m in mine if m.key() == stuck.id.encode()]
    requests = [CODEC.decode_request(m.value()) for m in letters]
    assert [(r.type.value, r.event_id) for r in requests] == [
        ("ADD_USER", first.event_id),
        ("ACTIVATE_PRODUCTS", first.event_id),
        ("ACTIVATE_PRODUCTS", later.event_id),
    ]
    assert [header(m, "dlq.reason") for m in letters] == [
        "RETRIES_EXHAUSTED",
        "PARKED",
        "PARKED",
    ]
    assert header(letters[0], "dlq.http.status") == "503"
    assert int(header(letters[0], "dlq.attempts") or 0) >= 2
    assert [header(m, "dlq.parked.behind") for m in letters[1:]] == [requests[0].request_id] * 2
    # A dead-lettered request is not finished: CRM has no result for it.
    assert not [r for r in crm.all_results() if r.subscription_id == stuck.id]
    assert user(icareus, stuck.account(VP1)) is None
    assert "icareus_bridge_parked_keys 1.0" in bridge.metrics()


def test_transient_faults_are_absorbed_by_retries(crm: Crm, icareus: SimulatorAdmin) -> None:
    icareus.set_faults(
        retry_after_seconds=1,
        slow_ms=3000,
        script=[
            {"fault": "http_503", "action": "addUser", "times": 2},
            {"fault": "http_429", "action": "addDevice", "times": 1},
            {"fault": "slow", "action": "activateProducts", "times": 1},
        ],
    )
    before = icareus.stats()
    sub = CrmSubscription("transient")
    ev = sub.act(
        "BECOME_SUBSCRIBER",
        state=EFFECTIVE,
        services=(service("s1", "BASIC-TV", VP1),),
        items=(box("SN-X", VP1),),
    )
    crm.publish(ev)
    results = crm.results_of(ev, 3)

    assert [(r.type.value, r.life_cycle_state.value, r.attempts) for r in results] == [
        ("ADD_USER", "COMPLETED", 3),
        ("ADD_DEVICE", "COMPLETED", 2),
        ("ACTIVATE_PRODUCTS", "COMPLETED", 2),
    ]
    u = user(icareus, sub.account(VP1))
    assert u is not None and u["products"] == ["1001"] and devices(u) == ["SN-X"]
    # The slow answer had been applied: its retry was recognised by its Idempotency-Key.
    after = icareus.stats()
    assert after["duplicates_suppressed"] - before["duplicates_suppressed"] == 1


def test_reset_brings_icareus_back_in_line_with_crm(
    crm: Crm, icareus: SimulatorAdmin, bridge: Bridge
) -> None:
    icareus.set_faults(
        error_code="INVALID_PROFILE",
        script=[{"fault": "status_error", "action": "addUser", "times": 1}],
    )
    sub = CrmSubscription("reset")
    first = sub.act(
        "BECOME_SUBSCRIBER",
        state=EFFECTIVE,
        services=(service("s1", "BASIC-TV", VP1), service("s2", "SPORTS", VP2)),
        items=(box("SN-RS1", VP1),),
    )
    crm.publish(first)
    assert sorted(
        (r.account_key, r.type.value, r.error_code) for r in crm.results_of(first, 5)
    ) == sorted(
        [
            (sub.account(VP1), "ADD_USER", "ICAREUS_REJECTED"),
            (sub.account(VP1), "ADD_DEVICE", "DEPENDENCY_REJECTED"),
            (sub.account(VP1), "ACTIVATE_PRODUCTS", "DEPENDENCY_REJECTED"),
            (sub.account(VP2), "ADD_USER", None),
            (sub.account(VP2), "ACTIVATE_PRODUCTS", None),
        ]
    )
    # Behind CRM's back the bedroom account loses its product in Icareus.
    bedroom = user(icareus, sub.account(VP2))
    assert bedroom is not None

    async def drift() -> None:
        settings = Settings(**bridge.config)
        async with IcareusClient(settings.icareus) as client:
            await client.cancel_products(bedroom["userId"], ["1002"], idempotency_key="drift")

    asyncio.run(drift())
    reset = sub.act("RESET_SUBSCRIPTION")
    crm.publish(reset)
    results = crm.results_of(reset, 4)

    assert sorted((r.account_key, r.type.value, r.life_cycle_state.value) for r in results) == (
        sorted(
            [
                (sub.account(VP1), "ADD_USER", "COMPLETED"),
                (sub.account(VP1), "ADD_DEVICE", "COMPLETED"),
                (sub.account(VP1), "ACTIVATE_PRODUCTS", "COMPLETED"),
                (sub.account(VP2), "ACTIVATE_PRODUCTS", "COMPLETED"),
            ]
        )
    )
    living, bedroom = user(icareus, sub.account(VP1)), user(icareus, sub.account(VP2))
    assert living is not None and living["products"] == ["1001"]
    assert devices(living) == ["SN-RS1"]
    assert bedroom is not None and bedroom["products"] == ["1002"]
