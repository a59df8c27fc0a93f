"""The planner's pure half: one input record -> the records it causes, without Kafka."""

from __future__ import annotations

from icareus_bridge.codec import Codec
from icareus_bridge.config import Settings
from icareus_bridge.core.feedback import apply_result
from icareus_bridge.core.model import (
    Action,
    LifecycleEvent,
    LifeCycleState,
    ProvisioningResult,
    Service,
    ServiceState,
    Subscriber,
    Subscription,
    SubscriptionRecord,
    SubscriptionState,
)
from icareus_bridge.core.plan import plan
from icareus_bridge.kafka.consumer import ConsumedRecord
from icareus_bridge.pipeline.outcomes import request_fields
from icareus_bridge.pipeline.planner import PlannerLogic

codec = Codec()
SETTINGS = Settings(
    icareus={"key": "k"},
    provider={
        "distributors": [{"code": "VP1"}],
        "service_mapping": {"TV": "1001"},
    },
)
logic = PlannerLogic(SETTINGS, codec, plan, apply_result, clock_ms=lambda: 1_795_000_000_000)
T = SETTINGS.topics


def _event(version: int, event_id: str | None = None) -> LifecycleEvent:
    return LifecycleEvent(
        event_id=event_id or f"e{version}",
        occurred_at=1_790_000_000_000,
        action=Action(code="BECOME_SUBSCRIBER"),
        subscription=Subscription(
            id="sub-1",
            number="N1",
            version=version,
            state=SubscriptionState.EFFECTIVE,
            subscriber=Subscriber(account_number="A", first_name="Ann", last_name="Lee"),
            services=(
                Service(
                    id="s1", product_code="TV", state=ServiceState.EFFECTIVE, distributor="VP1"
                ),
                Service(
                    id="s2", product_code="GOLF", state=ServiceState.EFFECTIVE, distributor="VP1"
                ),
            ),
        ),
    )


def _rec(value: bytes | None, key: bytes | None = b"sub-1", topic: str = T.input) -> ConsumedRecord:
    return ConsumedRecord(topic, 2, 17, key, value, timestamp_ms=1_790_000_000_001)


def test_an_event_becomes_requests_a_rejection_result_and_the_new_state_in_its_partition() -> None:
    h = logic.on_event(_rec(codec.encode_event(_event(1))), lambda p, k: None)
    assert h.outcome == "planned"
    assert h.request_types == ["ADD_USER", "ACTIVATE_PRODUCTS"]
    assert h.rejections == [("ACTIVATE_PRODUCTS", "UNMAPPED_PRODUCT")]
    topics = [(o.topic, o.partition, o.key) for o in h.outputs]
    assert topics == [
        (T.requests, 2, b"sub-1"),
        (T.requests, 2, b"sub-1"),
        (T.results, 2, b"sub-1"),
    ]
    result = codec.decode_result(h.outputs[2].value or b"")
    assert (result.attempts, result.life_cycle_state) == (0, LifeCycleState.REJECTED)
    assert h.state is not None and h.state.partition == 2
    assert h.state.record.last_version == 1


def test_a_repeated_event_is_skipped() -> None:
    first = logic.on_event(_rec(codec.encode_event(_event(1))), lambda p, k: None)
    assert first.state is not None
    known: SubscriptionRecord = first.state.record
    again = logic.on_event(_rec(codec.encode_event(_event(1))), lambda p, k: known)
    assert (again.outcome, again.outputs, again.state) == ("skipped", [], None)
    assert again.skip_reason == "DUPLICATE_EVENT"


def test_bad_input_becomes_one_dead_letter_with_the_original_bytes() -> None:
    for value, key, stage_reason in [
        (b"\x00garbage", b"sub-1", ("decode", "NOT_AVRO")),
        (None, b"sub-1", ("decode", "NOT_AVRO")),
        (codec.encode_event(_event(1)), b"other", ("validate", "KEY_MISMATCH")),
    ]:
        h = logic.on_event(_rec(value, key), lambda p, k: None)
        assert h.outcome == "dead_lettered" and h.dead_letter == stage_reason
        [dead] = h.outputs
        assert (dead.topic, dead.key, dead.value) == (T.dlq, key, value)
        assert dict(dead.headers or [])["dlq.original.offset"] == b"17"


def test_a_rejected_add_user_result_corrects_the_known_state() -> None:
    planned = logic.on_event(_rec(codec.encode_event(_event(1))), lambda p, k: None)
    assert planned.state is not None
    known = planned.state.record
    add_user = plan(None, _event(1), SETTINGS.provider).requests[0]
    result = ProvisioningResult(
        **request_fields(add_user),
        life_cycle_state=LifeCycleState.REJECTED,
        error_code="ICAREUS_REJECTED",
        attempts=1,
    )
    h = logic.on_result(
        _rec(codec.encode_result(result), topic=T.results),
        lambda p, k: known if p == 2 else None,
        lambda k: None,
    )
    assert h.outcome == "feedback_applied" and h.state is not None
    assert not h.state.record.accounts["VP1"].registered
    again = logic.on_result(
        _rec(codec.encode_result(result), topic=T.results),
        lambda p, k: h.state.record if h.state else None,
        lambda k: None,
    )
    assert again.outcome == "feedback_ignored"  # folding twice changes nothing


def test_feedback_for_a_subscription_the_planner_does_not_know_is_counted_not_failed() -> None:
    add_user = plan(None, _event(1), SETTINGS.provider).requests[0]
    result = ProvisioningResult(
        **request_fields(add_user),
        life_cycle_state=LifeCycleState.COMPLETED,
        reference_number="u1",
        attempts=1,
    )
    h = logic.on_result(
        _rec(codec.encode_result(result), topic=T.results), lambda p, k: None, lambda k: None
    )
    assert h.outcome == "feedback_unknown" and h.outputs == []
