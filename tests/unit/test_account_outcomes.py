"""Within a plan, a refused ADD_USER rejects the account's later requests; a completed one
gives them its user id."""

from __future__ import annotations

from icareus_bridge.core.model import ProvisioningRequest, RequestType
from icareus_bridge.pipeline.accounts import AccountOutcomes


def request(
    type_: RequestType,
    *,
    request_id: str,
    event_id: str = "ev-1",
    account_key: str = "S-100-ICAREUS-VP1",
    user_id: str | None = None,
) -> ProvisioningRequest:
    return ProvisioningRequest(
        request_id=request_id,
        number=request_id,
        type=type_,
        subscription_id="sub-1",
        subscription_number="S-100",
        distributor="ICAREUS-VP1",
        account_key=account_key,
        event_id=event_id,
        action_code="BECOME_SUBSCRIBER",
        sequence=0,
        created_at=0,
        user_id=user_id,
    )


def test_refused_add_user_blocks_the_rest_of_that_accounts_plan() -> None:
    memory = AccountOutcomes()
    add_user = request(RequestType.ADD_USER, request_id="r1")
    memory.registration_rejected(add_user, "INVALID_PROFILE")
    activate = request(RequestType.ACTIVATE_PRODUCTS, request_id="r2")
    blocking = memory.blocking_rejection(activate)
    assert blocking is not None and blocking.request_id == "r1"


def test_refused_add_user_does_not_block_other_accounts_or_later_plans() -> None:
    memory = AccountOutcomes()
    memory.registration_rejected(request(RequestType.ADD_USER, request_id="r1"), "X")
    other_account = request(
        RequestType.ADD_DEVICE, request_id="r2", account_key="S-100-ICAREUS-VP2"
    )
    next_event = request(RequestType.ADD_USER, request_id="r3", event_id="ev-2")
    assert memory.blocking_rejection(other_account) is None
    assert memory.blocking_rejection(next_event) is None


def test_completed_add_user_fills_the_user_id_of_requests_planned_before_it() -> None:
    memory = AccountOutcomes()
    memory.registered("S-100-ICAREUS-VP1", "u-42")
    later = request(RequestType.ADD_DEVICE, request_id="r2")
    assert memory.resolve_user_id(later) == "u-42"
    known = request(RequestType.ADD_DEVICE, request_id="r3", user_id="u-7")
    assert memory.resolve_user_id(known) == "u-7"


def test_removed_user_is_forgotten() -> None:
    memory = AccountOutcomes()
    memory.registered("S-100-ICAREUS-VP1", "u-42")
    memory.removed("S-100-ICAREUS-VP1")
    assert memory.user_id("S-100-ICAREUS-VP1") is None


def test_memory_is_bounded() -> None:
    memory = AccountOutcomes(capacity=2)
    for i in range(3):
        memory.registered(f"acct-{i}", f"u-{i}")
    assert memory.user_id("acct-0") is None
    assert memory.user_id("acct-2") == "u-2"
