"""Feedback: results of the dispatcher are folded into the planner's state, so the next event
of the subscription plans from what Icareus really holds."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from icareus_bridge.codec import default_codec
from icareus_bridge.core.model import (
    LifeCycleState,
    ProvisioningRequest,
    ProvisioningResult,
    RequestType,
    SubscriptionRecord,
)
from tests.integration.planner_support import (
    Topics,
    decoded_requests,
    event,
    make_topics,
    planner_thread,
    produce_events,
    producer,
    read_topic,
    settings_for,
    unique,
    wait_for,
)

pytestmark = pytest.mark.kafka
VP1 = "ICAREUS-VP1"


def _result(
    req: ProvisioningRequest, state: LifeCycleState, reference: str | None = None
) -> ProvisioningResult:
    return ProvisioningResult(
        request_id=req.request_id,
        number=req.number,
        type=req.type,
        subscription_id=req.subscription_id,
        subscription_number=req.subscription_number,
        distributor=req.distributor,
        account_key=req.account_key,
        event_id=req.event_id,
        action_code=req.action_code,
        life_cycle_state=state,
        error_code="ICAREUS_REJECTED" if state is LifeCycleState.REJECTED else None,
        reference_number=reference,
        attempts=1,
        created_at=req.created_at,
        executed_at=req.created_at + 5,
        sequence=req.sequence,
        user_id=reference,
        product_ids=req.product_ids,
        device_id=req.device_id,
        device_type=req.device_type,
    )


def _send_result(
    bootstrap: str, topics: Topics, partition: int, result: ProvisioningResult
) -> None:
    # As the dispatcher does: in the partition of the request it finished.
    p = producer(bootstrap)
    p.produce(
        topics.results,
        key=result.subscription_id.encode(),
        value=default_codec().encode_result(result),
        partition=partition,
    )
    assert p.flush(10) == 0


def _state_of(bootstrap: str, topics: Topics, sub_id: str) -> SubscriptionRecord | None:
    last = None
    for rec in read_topic(bootstrap, topics.state):
        if rec.key == sub_id.encode():
            last = default_codec().decode_state(rec.value)
    return last


def _requests_of(
    bootstrap: str, topics: Topics, sub_id: str, n: int
) -> list[tuple[int, ProvisioningRequest]]:
    recs = [r for r in read_topic(bootstrap, topics.requests) if r.key == sub_id.encode()]
    if len(recs) < n:
        return []
    return list(zip([r.partition for r in recs], decoded_requests(recs), strict=True))


def test_completed_add_user_gives_later_requests_the_icareus_user_id(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topics = make_topics(make_topic)
    settings = settings_for(kafka_bootstrap, topics, group=unique("planner"), instance=unique("i"))
    sub = "sub-feedback-ok"
    with planner_thread(settings):
        produce_events(kafka_bootstrap, topics.input, [event(sub, 1, "BECOME_SUBSCRIBER")])
        wait_for(lambda: bool(_requests_of(kafka_bootstrap, topics, sub, 2)), 30, "v1 requests")
        (part, add_user), (_, activate) = _requests_of(kafka_bootstrap, topics, sub, 2)
        assert (add_user.type, activate.type) == (
            RequestType.ADD_USER,
            RequestType.ACTIVATE_PRODUCTS,
        )
        assert activate.user_id is None  # not known yet: ADD_USER is in the same plan
        _send_result(
            kafka_bootstrap, topics, part, _result(add_user, LifeCycleState.COMPLETED, "u-77")
        )

        def user_id_known() -> bool:
            state = _state_of(kafka_bootstrap, topics, sub)
            return state is not None and state.accounts[VP1].user_id == "u-77"

        wait_for(user_id_known, 30, "user id folded into the state")
        produce_events(
            kafka_bootstrap,
            topics.input,
            [event(sub, 2, "ADD_SERVICE", products=[("BASIC-TV", VP1), ("SPORTS", VP1)])],
        )
        wait_for(lambda: bool(_requests_of(kafka_bootstrap, topics, sub, 3)), 30, "v2 request")
        _, third = _requests_of(kafka_bootstrap, topics, sub, 3)[2]
    assert third.type == RequestType.ACTIVATE_PRODUCTS
    assert third.product_ids == ("1002",)
    assert third.user_id == "u-77"


def test_a_rejected_add_user_result_makes_the_next_event_plan_add_user_again(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topics = make_topics(make_topic)
    settings = settings_for(kafka_bootstrap, topics, group=unique("planner"), instance=unique("i"))
    sub = "sub-feedback-rejected"
    codec = default_codec()
    with planner_thread(settings) as running:
        produce_events(kafka_bootstrap, topics.input, [event(sub, 1, "BECOME_SUBSCRIBER")])
        wait_for(lambda: bool(_requests_of(kafka_bootstrap, topics, sub, 2)), 30, "v1 requests")
        (part, add_user), _ = _requests_of(kafka_bootstrap, topics, sub, 2)
        _send_result(kafka_bootstrap, topics, part, _result(add_user, LifeCycleState.REJECTED))

        def refused() -> bool:
            state = _state_of(kafka_bootstrap, topics, sub)
            if state is None:
                return False
            account = state.accounts[VP1]
            return not account.registered and account.registration_rejected

        wait_for(refused, 30, "rejected registration folded into the state")
        assert running.metrics.feedback.labels("ADD_USER", "REJECTED", "applied")._value.get() == 1
        produce_events(
            kafka_bootstrap,
            topics.input,
            [event(sub, 2, "ADD_SERVICE", products=[("BASIC-TV", VP1), ("SPORTS", VP1)])],
        )
        wait_for(lambda: bool(_requests_of(kafka_bootstrap, topics, sub, 4)), 30, "v2 requests")
        requests = [r for _, r in _requests_of(kafka_bootstrap, topics, sub, 4)]

        def v2_applied() -> bool:
            state = _state_of(kafka_bootstrap, topics, sub)
            return state is not None and state.last_version == 2

        wait_for(v2_applied, 30, "v2 state")
        state = _state_of(kafka_bootstrap, topics, sub)
        planner_rejections = [
            r
            for r in (
                codec.decode_result(x.value)
                for x in read_topic(kafka_bootstrap, topics.results)
                if x.value
            )
            if r.subscription_id == sub and r.attempts == 0
        ]
    # The committed requests topic holds v1's ADD_USER + ACTIVATE_PRODUCTS, then v2 registers
    # the account again and provisions everything it should hold, like a new account.
    assert len(requests) == 4
    v2 = requests[2:]
    assert [(r.type, r.event_id != add_user.event_id) for r in v2] == [
        (RequestType.ADD_USER, True),
        (RequestType.ACTIVATE_PRODUCTS, True),
    ]
    assert v2[0].account_key == add_user.account_key and v2[0].profile is not None
    assert v2[1].product_ids == ("1001", "1002") and v2[1].user_id is None
    assert planner_rejections == []  # nothing reported ACCOUNT_NOT_REGISTERED
    assert state is not None
    account = state.accounts[VP1]
    assert (account.registered, account.registration_rejected) == (True, False)
