"""Every rule of DOMAIN.md, one named test each (the action table is test_plan_actions.py)."""

from __future__ import annotations

import pytest

from icareus_bridge.core.feedback import apply_result, observed_state, rejection_result
from icareus_bridge.core.model import (
    EFFECTIVE_SERVICE_STATES,
    LifeCycleState,
    ProvisioningRequest,
    ProvisioningResult,
    RejectionCode,
    ServiceState,
    SkipReason,
    Subscription,
    SubscriptionRecord,
    SubscriptionState,
)
from icareus_bridge.core.plan import plan, request_id
from tests.unit.crm_events import SUB_ID, SUB_NUMBER, event, item, provider, subscription, svc
from tests.unit.test_plan_actions import (
    ACTIVATE,
    ADD_DEVICE,
    ADD_USER,
    BASE,
    CANCEL,
    PROVIDER,
    REMOVE_DEVICE,
    REMOVE_USER,
    known,
    summary,
)


def result_of(r: ProvisioningRequest, state: LifeCycleState, **kw: object) -> ProvisioningResult:
    return ProvisioningResult(
        request_id=r.request_id,
        number=r.number,
        type=r.type,
        subscription_id=r.subscription_id,
        subscription_number=r.subscription_number,
        distributor=r.distributor,
        account_key=r.account_key,
        event_id=r.event_id,
        action_code=r.action_code,
        life_cycle_state=state,
        attempts=1,
        user_id=r.user_id,
        product_ids=r.product_ids,
        device_id=r.device_id,
        device_type=r.device_type,
        **kw,  # type: ignore[arg-type]
    )


# --- accounts -------------------------------------------------------------------------------


def test_one_icareus_account_per_subscription_and_distributor_keyed_number_dash_code() -> None:
    sub = subscription(
        1,
        [svc("a", "BASIC-TV", "VP1"), svc("b", "SPORTS", "VP1")],
        [item("i", "SN1", "STB-4K", "VP2")],
    )
    decision = plan(None, event("BECOME_SUBSCRIBER", sub), PROVIDER)
    users = [r for r in decision.requests if r.type is ADD_USER]
    assert [(r.distributor, r.account_key) for r in users] == [
        ("VP1", f"{SUB_NUMBER}-VP1"),
        ("VP2", f"{SUB_NUMBER}-VP2"),
    ]
    assert users[0].profile is not None and users[0].profile.first_name == "Maria"
    assert list(decision.state.accounts) == ["VP1", "VP2"]


def test_services_and_items_of_other_providers_distributors_are_ignored() -> None:
    sub = subscription(
        1,
        [svc("a", "BASIC-TV", "OTHER-DTH"), svc("b", "SPORTS", None)],
        [item("i", "SN1", "STB-4K", "OTHER-DTH")],
    )
    decision = plan(None, event("BECOME_SUBSCRIBER", sub), PROVIDER)
    assert decision.requests == () and decision.rejections == ()
    assert decision.state.accounts == {}


@pytest.mark.parametrize("state", list(ServiceState))
def test_only_effective_service_states_activate_products(state: ServiceState) -> None:
    sub = subscription(1, [svc("a", "BASIC-TV", "VP1", state)])
    decision = plan(None, event("ADD_SERVICE", sub), PROVIDER)
    wanted = state in EFFECTIVE_SERVICE_STATES
    assert [r.type for r in decision.requests] == ([ADD_USER, ACTIVATE] if wanted else [])


def test_an_installed_item_alone_registers_the_account() -> None:
    sub = subscription(1, [], [item("i", "SN1", "STB-4K", "VP1")])
    decision = plan(None, event("ADD_INSTALLED_ITEM", sub), PROVIDER)
    assert [r.type for r in decision.requests] == [ADD_USER, ADD_DEVICE]


def test_order_within_an_account_user_first_then_devices_then_products() -> None:
    state = known(
        subscription(1, [svc("a", "BASIC-TV", "VP1")], [item("i", "SN1", "STB-4K", "VP1")])
    )
    sub = subscription(
        2,
        [
            svc("a", "BASIC-TV", "VP1", ServiceState.SWAPPED),
            svc("b", "MOVIES", "VP1"),
            svc("c", "BASIC-TV", "VP2"),
        ],
        [item("j", "SN9", "STB-4K", "VP1"), item("k", "SN8", "STB-HD", "VP2")],
    )
    decision = plan(state, event("SWAP_INSTALLED_ITEM", sub), PROVIDER)
    assert [(r.type, r.distributor) for r in decision.requests] == [
        (ADD_USER, "VP2"),
        (REMOVE_DEVICE, "VP1"),
        (ADD_DEVICE, "VP1"),
        (ADD_DEVICE, "VP2"),
        (CANCEL, "VP1"),
        (ACTIVATE, "VP1"),
        (ACTIVATE, "VP2"),
    ]


def test_activate_products_carries_all_product_ids_of_an_account_in_ascending_order() -> None:
    sub = subscription(
        1, [svc(f"s{p}", p, "VP1") for p in ["PREMIUM-HD", "BASIC-TV", "NEWS", "SPORTS"]]
    )
    decision = plan(None, event("BECOME_SUBSCRIBER", sub), PROVIDER)
    activations = [r for r in decision.requests if r.type is ACTIVATE]
    assert [r.product_ids for r in activations] == [("1001", "1002", "1005", "1008")]


def test_two_services_of_one_product_cancel_it_only_when_both_stop() -> None:
    state = known(subscription(1, [svc("a", "BASIC-TV", "VP1"), svc("b", "BASIC-TV", "VP1")]))
    one_left = subscription(
        2, [svc("a", "BASIC-TV", "VP1"), svc("b", "BASIC-TV", "VP1", ServiceState.REMOVED)]
    )
    assert plan(state, event("REMOVE_SERVICE", one_left), PROVIDER).requests == ()


def test_deactivation_keeps_the_user_and_its_devices() -> None:
    state = known(BASE)
    sub = subscription(
        2,
        [svc("sv-1", "BASIC-TV", "VP1", ServiceState.NOT_EFFECTIVE)],
        [item("ii-1", "SN1", "STB-4K", "VP1")],
        state=SubscriptionState.NOT_EFFECTIVE,
    )
    decision = plan(state, event("DEACTIVATE_SUBSCRIPTION", sub), PROVIDER)
    types = {r.type for r in decision.requests}
    assert REMOVE_USER not in types and ADD_DEVICE not in types
    assert decision.state.accounts["VP1"].devices == {"SN1": "SET_TOP_BOX"}
    assert decision.state.accounts["VP1"].registered


@pytest.mark.parametrize("terminal", [SubscriptionState.CANCELLED, SubscriptionState.REGRETTED])
def test_termination_removes_devices_and_products_then_the_user_last(
    terminal: SubscriptionState,
) -> None:
    state = known(BASE)
    decision = plan(
        state, event("TERMINATE_SUBSCRIPTION", subscription(2, state=terminal)), PROVIDER
    )
    types = [r.type for r in decision.requests]
    assert types[-2:] == [REMOVE_USER, REMOVE_USER]
    assert types.count(REMOVE_DEVICE) == 3 and types.count(CANCEL) == 2
    assert decision.state.accounts == {}


def test_move_installed_item_between_rooms_removes_before_it_adds_whatever_the_room_order() -> None:
    sub1 = subscription(
        1,
        [svc("a", "BASIC-TV", "VP1"), svc("b", "BASIC-TV", "VP2")],
        [item("c", "SC1", "SMARTCARD", "VP2")],
    )
    state = known(sub1)
    sub2 = subscription(2, sub1.services, [item("c", "SC1", "SMARTCARD", "VP1")])
    decision = plan(state, event("MOVE_INSTALLED_ITEM", sub2), PROVIDER)
    assert [(r.type, r.distributor) for r in decision.requests] == [
        (REMOVE_DEVICE, "VP2"),
        (ADD_DEVICE, "VP1"),
    ]


# --- the business example -------------------------------------------------------------------

ROOMS = {
    "VP1": ["BASIC-TV", "SPORTS", "MOVIES"],
    "VP2": ["BASIC-TV", "DOCUMENTARIES"],
    "VP3": ["BASIC-TV", "KIDS"],
    "VP4": ["NEWS", "MUSIC"],
}


def four_rooms(version: int, room2_box: str = "BOX-2", fifth: bool = False):  # type: ignore[no-untyped-def]
    rooms = dict(ROOMS, VP5=["PREMIUM-HD"]) if fifth else ROOMS
    services = [svc(f"{d}-{p}", p, d) for d, ps in rooms.items() for p in ps]
    items = []
    for n, d in enumerate(rooms, 1):
        items.append(item(f"box-{n}", room2_box if n == 2 else f"BOX-{n}", "STB-4K", d))
        items.append(item(f"card-{n}", f"CARD-{n}", "SMARTCARD", d))
    return subscription(version, services, items)


def test_four_viewing_points_each_with_its_own_channel_package() -> None:
    decision = plan(None, event("BECOME_SUBSCRIBER", four_rooms(1)), PROVIDER)
    assert [r.distributor for r in decision.requests if r.type is ADD_USER] == list(ROOMS)
    assert {r.distributor: r.product_ids for r in decision.requests if r.type is ACTIVATE} == {
        "VP1": ("1001", "1002", "1003"),
        "VP2": ("1001", "1006"),
        "VP3": ("1001", "1004"),
        "VP4": ("1005", "1007"),
    }
    assert sum(r.type is ADD_DEVICE for r in decision.requests) == 8
    assert decision.rejections == ()


def test_swap_installed_item_moves_the_device_in_room_2_only() -> None:
    state = known(four_rooms(1))
    decision = plan(
        state, event("SWAP_INSTALLED_ITEM", four_rooms(2, room2_box="BOX-2B")), PROVIDER
    )
    assert summary(decision.requests) == [
        (REMOVE_DEVICE, "VP2", "u-VP2", ("BOX-2", "SET_TOP_BOX")),
        (ADD_DEVICE, "VP2", "u-VP2", ("BOX-2B", "SET_TOP_BOX")),
    ]


def test_viewing_point_limit_rejects_a_fifth_distributor() -> None:
    state = known(four_rooms(1))
    decision = plan(state, event("ADD_SERVICE", four_rooms(2, fifth=True)), PROVIDER)
    assert decision.requests == ()
    assert [(j.code, j.type, j.distributor) for j in decision.rejections] == [
        (RejectionCode.VIEWING_POINT_LIMIT, ADD_USER, "VP5")
    ]
    assert "VP5" not in decision.state.accounts and len(decision.state.accounts) == 4


def test_viewing_point_limit_keeps_the_first_distributors_by_appearance() -> None:
    decision = plan(
        None, event("BECOME_SUBSCRIBER", four_rooms(1, fifth=True)), provider(max_viewing_points=2)
    )
    assert [r.distributor for r in decision.requests if r.type is ADD_USER] == ["VP1", "VP2"]
    assert [j.distributor for j in decision.rejections] == ["VP3", "VP4", "VP5"]
    assert {j.code for j in decision.rejections} == {RejectionCode.VIEWING_POINT_LIMIT}


# --- error rules ----------------------------------------------------------------------------


def test_unmapped_product_is_rejected_and_the_rest_still_provisioned() -> None:
    sub = subscription(1, [svc("a", "BASIC-TV", "VP1"), svc("b", "KARAOKE", "VP1")])
    decision = plan(None, event("BECOME_SUBSCRIBER", sub), PROVIDER)
    assert [r.type for r in decision.requests] == [ADD_USER, ACTIVATE]
    [rej] = decision.rejections
    assert (rej.code, rej.type, rej.distributor) == (
        RejectionCode.UNMAPPED_PRODUCT,
        ACTIVATE,
        "VP1",
    )
    assert "KARAOKE" in rej.detail


def test_unmapped_physical_good_is_rejected() -> None:
    sub = subscription(1, [svc("a", "BASIC-TV", "VP1")], [item("i", "X1", "SATELLITE-DISH", "VP1")])
    decision = plan(None, event("BECOME_SUBSCRIBER", sub), PROVIDER)
    assert [r.type for r in decision.requests] == [ADD_USER, ACTIVATE]
    [rej] = decision.rejections
    assert (rej.code, rej.type) == (RejectionCode.UNMAPPED_PHYSICAL_GOOD, ADD_DEVICE)
    assert "SATELLITE-DISH" in rej.detail


def test_product_not_allowed_on_the_distributor_is_rejected() -> None:
    sub = subscription(1, [svc("a", "KIDS", "VP3"), svc("b", "SPORTS", "VP3")])
    decision = plan(None, event("BECOME_SUBSCRIBER", sub), PROVIDER)
    assert summary(decision.requests) == [
        (ADD_USER, "VP3", None, None),
        (ACTIVATE, "VP3", None, ("1004",)),
    ]
    [rej] = decision.rejections
    assert (rej.code, rej.distributor) == (RejectionCode.PRODUCT_NOT_ALLOWED, "VP3")
    assert "SPORTS" in rej.detail


def test_a_rejection_is_reported_once_not_on_every_later_event() -> None:
    sub1 = subscription(1, [svc("a", "BASIC-TV", "VP1"), svc("b", "KARAOKE", "VP1")])
    first = plan(None, event("BECOME_SUBSCRIBER", sub1), PROVIDER)
    sub2 = subscription(2, [*sub1.services, svc("c", "NEWS", "VP1")])
    second = plan(first.state, event("ADD_SERVICE", sub2), PROVIDER)
    assert second.rejections == ()
    assert summary(second.requests) == [(ACTIVATE, "VP1", None, ("1005",))]


def test_provider_not_effective_rejects_every_request_and_keeps_the_state() -> None:
    decision = plan(None, event("BECOME_SUBSCRIBER", BASE), provider(effective=False))
    assert decision.requests == ()
    assert {j.code for j in decision.rejections} == {RejectionCode.PROVIDER_NOT_EFFECTIVE}
    assert [j.type for j in decision.rejections][:2] == [ADD_USER, ADD_USER]
    assert len(decision.rejections) == 7
    assert decision.state.accounts == {} and decision.state.last_version == 1
    # Switched on again: the next event plans the whole difference.
    again = plan(
        decision.state,
        event("ADD_SERVICE", subscription(2, BASE.services, BASE.installed_items)),
        PROVIDER,
    )
    assert len(again.requests) == 7


def refused(sub: Subscription) -> SubscriptionRecord:
    """The state after `sub` was planned and Icareus refused every ADD_USER of it (the rest of
    those accounts' requests rejected with it)."""
    first = plan(None, event("BECOME_SUBSCRIBER", sub), PROVIDER)
    state = first.state
    for r in first.requests:
        state = apply_result(
            state, result_of(r, LifeCycleState.REJECTED, error_code="ICAREUS_REJECTED")
        )
    return state


def test_a_refused_registration_is_tried_again_by_the_next_action_that_wants_the_account() -> None:
    sub1 = subscription(1, [svc("a", "BASIC-TV", "VP1")])
    state = refused(sub1)
    vp1 = state.accounts["VP1"]
    assert (vp1.registered, vp1.registration_rejected, vp1.products) == (False, True, frozenset())

    sub2 = subscription(
        2, [*sub1.services, svc("b", "SPORTS", "VP1")], [item("i", "SN1", "STB-4K", "VP1")]
    )
    decision = plan(state, event("ADD_SERVICE", sub2), PROVIDER)
    # Exactly like a new account: ADD_USER once, then everything the account should hold.
    assert summary(decision.requests) == [
        (ADD_USER, "VP1", None, None),
        (ADD_DEVICE, "VP1", None, ("SN1", "SET_TOP_BOX")),
        (ACTIVATE, "VP1", None, ("1001", "1002")),
    ]
    assert decision.requests[0].profile is not None
    assert decision.rejections == ()
    vp1 = decision.state.accounts["VP1"]
    assert (vp1.registered, vp1.registration_rejected) == (True, False)

    # Refused again: the next action that wants the account tries again (once per event).
    again_refused = apply_result(
        decision.state,
        result_of(decision.requests[0], LifeCycleState.REJECTED, error_code="ICAREUS_REJECTED"),
    )
    assert again_refused.accounts["VP1"].registration_rejected
    sub3 = subscription(3, [*sub2.services, svc("c", "MOVIES", "VP1")], sub2.installed_items)
    third = plan(again_refused, event("ADD_SERVICE", sub3), PROVIDER)
    assert [r.type for r in third.requests] == [ADD_USER, ADD_DEVICE, ACTIVATE]
    assert third.requests[2].product_ids == ("1001", "1002", "1003")

    # This time Icareus registers it: the user id is recorded, the refusal is history.
    done = apply_result(
        third.state,
        result_of(third.requests[0], LifeCycleState.COMPLETED, reference_number="u-9"),
    )
    vp1 = done.accounts["VP1"]
    assert (vp1.registered, vp1.registration_rejected, vp1.user_id) == (True, False, "u-9")
    assert vp1.products == frozenset({"1001", "1002", "1003"}) and vp1.devices == {
        "SN1": "SET_TOP_BOX"
    }


@pytest.mark.parametrize("action", ["REMOVE_SERVICE", "TERMINATE_SUBSCRIPTION"])
def test_an_action_that_only_removes_things_from_an_unregistered_account_is_rejected_account_not_registered(  # noqa: E501
    action: str,
) -> None:
    """Nothing is left to register the account for, and what the action took away from it
    cannot be sent: ACCOUNT_NOT_REGISTERED, reported once, for what the action changed."""
    sub1 = subscription(
        1,
        [svc("a", "BASIC-TV", "VP1"), svc("b", "SPORTS", "VP1"), svc("c", "BASIC-TV", "VP2")],
        [item("i", "SN1", "STB-4K", "VP1")],
    )
    first = plan(None, event("BECOME_SUBSCRIBER", sub1), PROVIDER)
    state = first.state
    for r in first.requests:
        if r.distributor == "VP1":
            state = apply_result(state, result_of(r, LifeCycleState.REJECTED))
        elif r.type is ADD_USER:
            state = apply_result(
                state, result_of(r, LifeCycleState.COMPLETED, reference_number="u-VP2")
            )
    if action == "REMOVE_SERVICE":
        sub2 = subscription(
            2,
            [
                svc("a", "BASIC-TV", "VP1", ServiceState.REMOVED),
                svc("b", "SPORTS", "VP1", ServiceState.REMOVED),
                svc("c", "BASIC-TV", "VP2"),
            ],
        )
        expected_requests: list[tuple[object, ...]] = []
    else:
        sub2 = subscription(
            2, sub1.services, sub1.installed_items, state=SubscriptionState.CANCELLED
        )
        expected_requests = [
            (CANCEL, "VP2", "u-VP2", ("1001",)),
            (REMOVE_USER, "VP2", "u-VP2", None),
        ]
    decision = plan(state, event(action, sub2), PROVIDER)

    assert summary(decision.requests) == expected_requests
    assert [
        (j.code, j.type, j.distributor, j.user_id, j.product_ids, j.device_id, j.device_type)
        for j in decision.rejections
    ] == [
        (
            RejectionCode.ACCOUNT_NOT_REGISTERED,
            REMOVE_DEVICE,
            "VP1",
            None,
            (),
            "SN1",
            "SET_TOP_BOX",
        ),
        (RejectionCode.ACCOUNT_NOT_REGISTERED, CANCEL, "VP1", None, ("1001", "1002"), None, None),
    ]
    assert decision.rejections[0].account_key == f"{SUB_NUMBER}-VP1"
    if action == "TERMINATE_SUBSCRIPTION":
        assert decision.state.accounts == {}  # forgotten with the rest
        return
    vp1 = decision.state.accounts["VP1"]
    assert (vp1.registered, vp1.registration_rejected) == (False, True)
    # Reported once: a later action that changes nothing on VP1 reports nothing there.
    sub3 = subscription(3, [*sub2.services, svc("d", "SPORTS", "VP2")])
    later = plan(decision.state, event("ADD_SERVICE", sub3), PROVIDER)
    assert later.rejections == ()
    assert summary(later.requests) == [(ACTIVATE, "VP2", "u-VP2", ("1002",))]


# --- staleness and repeats ------------------------------------------------------------------


def test_repeated_event_id_plans_nothing_and_says_so() -> None:
    ev = event("BECOME_SUBSCRIBER", BASE)
    first = plan(None, ev, PROVIDER)
    again = plan(first.state, ev, PROVIDER)
    assert again.skipped is SkipReason.DUPLICATE_EVENT
    assert again.requests == () and again.rejections == () and again.state is first.state


@pytest.mark.parametrize("version", [0, 1])
def test_stale_version_plans_nothing_and_says_so(version: int) -> None:
    state = known(BASE)
    late = subscription(version, [], state=SubscriptionState.CANCELLED)
    decision = plan(state, event("TERMINATE_SUBSCRIPTION", late, event_id="late"), PROVIDER)
    assert decision.skipped is SkipReason.STALE_VERSION
    assert decision.requests == () and decision.state is state


def test_reset_after_a_rejected_add_user_registers_the_account_again() -> None:
    first = plan(None, event("BECOME_SUBSCRIBER", BASE), PROVIDER)
    state = first.state
    for r in first.requests:
        if r.distributor == "VP1":
            state = apply_result(state, result_of(r, LifeCycleState.REJECTED))
    observed = observed_state(state, SUB_ID, SUB_NUMBER, [])
    decision = plan(observed, event("RESET_SUBSCRIPTION", BASE, event_id="reset"), PROVIDER)
    assert [r.distributor for r in decision.requests if r.type is ADD_USER] == ["VP1", "VP2"]


def test_reset_older_than_the_last_applied_version_is_stale() -> None:
    state = known(BASE, subscription(2, BASE.services, BASE.installed_items))
    decision = plan(state, event("RESET_SUBSCRIPTION", BASE, event_id="r"), PROVIDER)
    assert decision.skipped is SkipReason.STALE_VERSION


# --- identity of requests -------------------------------------------------------------------


def test_request_ids_are_derived_so_the_same_input_yields_the_same_requests() -> None:
    a = plan(None, event("BECOME_SUBSCRIBER", BASE), PROVIDER)
    b = plan(None, event("BECOME_SUBSCRIBER", BASE), PROVIDER)
    assert a == b
    ids = [r.request_id for r in a.requests] + [j.request_id for j in a.rejections]
    assert ids[0] == request_id(SUB_ID, 1, 1)
    assert len(set(ids)) == len(ids)
    assert a.requests[0].number == f"{SUB_NUMBER}-1-01"


def test_rejections_follow_the_requests_in_the_same_sequence_space() -> None:
    sub = subscription(1, [svc("a", "BASIC-TV", "VP1"), svc("b", "KARAOKE", "VP1")])
    decision = plan(None, event("BECOME_SUBSCRIBER", sub), PROVIDER)
    assert [r.sequence for r in decision.requests] == [1, 2]
    assert decision.rejections[0].sequence == 3
    assert decision.rejections[0].request_id == request_id(SUB_ID, 1, 3)


# --- feedback -------------------------------------------------------------------------------


def test_decision_state_assumes_completion_with_user_ids_still_unknown() -> None:
    decision = plan(None, event("BECOME_SUBSCRIBER", BASE), PROVIDER)
    vp1 = decision.state.accounts["VP1"]
    assert vp1.registered and vp1.user_id is None
    assert vp1.products == frozenset({"1001", "1002"})


def test_completed_add_user_records_the_icareus_user_id() -> None:
    decision = plan(None, event("BECOME_SUBSCRIBER", BASE), PROVIDER)
    state = apply_result(
        decision.state,
        result_of(decision.requests[0], LifeCycleState.COMPLETED, reference_number="777"),
    )
    assert state.accounts["VP1"].user_id == "777"
    later = plan(state, event("STOP_SERVICE", subscription(2, [], BASE.installed_items)), PROVIDER)
    assert {r.user_id for r in later.requests if r.distributor == "VP1"} == {"777"}


def test_rejected_activation_and_device_are_not_held() -> None:
    decision = plan(None, event("BECOME_SUBSCRIBER", BASE), PROVIDER)
    state = decision.state
    for r in decision.requests:
        if r.type in (ACTIVATE, ADD_DEVICE) and r.distributor == "VP1":
            state = apply_result(state, result_of(r, LifeCycleState.REJECTED))
    assert state.accounts["VP1"].products == frozenset() and state.accounts["VP1"].devices == {}
    assert state.accounts["VP2"] == decision.state.accounts["VP2"]


def test_rejected_removals_put_back_what_icareus_still_holds() -> None:
    state = known(BASE)
    decision = plan(
        state,
        event("TERMINATE_SUBSCRIPTION", subscription(2, state=SubscriptionState.CANCELLED)),
        PROVIDER,
    )
    after = decision.state
    for r in decision.requests:
        after = apply_result(after, result_of(r, LifeCycleState.REJECTED))
    assert after.accounts == state.accounts


def test_planner_rejections_fed_back_change_nothing() -> None:
    sub = subscription(1, [svc("a", "BASIC-TV", "VP1"), svc("b", "KARAOKE", "VP1")])
    decision = plan(
        None, event("BECOME_SUBSCRIBER", four_rooms(1, fifth=True)), provider(effective=False)
    )
    ev = event("BECOME_SUBSCRIBER", sub)
    for d in (decision, plan(None, ev, PROVIDER)):
        state = d.state
        for j in d.rejections:
            state = apply_result(state, rejection_result(j, ev))
        assert state == d.state
