"""What the dispatcher decides for one request, with Icareus replaced by a fake of the client's
port: parked keys, replay unparking, giving up, dependencies and late user ids."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from icareus_bridge.codec import Codec
from icareus_bridge.config import Settings
from icareus_bridge.core.model import ProvisioningRequest, RequestType
from icareus_bridge.icareus.client import CallResult, IcareusUser
from icareus_bridge.icareus.errors import PermanentIcareusError, TransientIcareusError
from icareus_bridge.kafka.dispatch import ConsumedRecord
from icareus_bridge.observability.http import Readiness
from icareus_bridge.observability.metrics import Metrics
from icareus_bridge.pipeline.dead_letter import PARKED_BEHIND, REASON, REPLAY_COUNT
from icareus_bridge.pipeline.dispatcher import Dispatcher, WorkItem
from icareus_bridge.pipeline.parking import ParkedKey, decode_marker

CODEC = Codec()
PARTITION = 1
ACCOUNT = "N1-ICAREUS-VP1"


class FakeIcareus:
    """The client's port: records calls, answers from a script."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str | None]] = []
        self.users: dict[str, str] = {}
        self.fail_with: Exception | None = None

    async def send(self, request: ProvisioningRequest, user_id: str | None = None) -> CallResult:
        self.sent.append((request.request_id, user_id))
        if self.fail_with is not None:
            raise self.fail_with
        uid = f"u-{request.account_key}" if request.type is RequestType.ADD_USER else None
        return CallResult(
            "op", {}, {"status": "ok"}, 200, attempts=1, latency_seconds=0.0, user_id=uid
        )

    async def get_user(self, external_id: str | None = None, **_: Any) -> CallResult:
        uid = self.users.get(external_id or "")
        user = IcareusUser(uid, external_id or "", frozenset(), {}) if uid else None
        return CallResult(
            "get_user",
            {},
            {"status": "ok"},
            200,
            attempts=1,
            latency_seconds=0.0,
            user_id=uid,
            user=user,
            code=None if uid else "USER_NOT_FOUND",
        )


def request(
    n: int, type_: RequestType, *, event: str = "ev-1", user: str | None = None
) -> ProvisioningRequest:
    return ProvisioningRequest(
        request_id=f"req-{n}",
        number=f"PR-{n}",
        type=type_,
        subscription_id="sub-1",
        subscription_number="N1",
        distributor="ICAREUS-VP1",
        account_key=ACCOUNT,
        event_id=event,
        action_code="BECOME_SUBSCRIBER",
        sequence=n,
        created_at=1,
        user_id=user,
    )


@pytest.fixture
def dispatcher() -> Dispatcher:
    settings = Settings(icareus={"key": "k"})
    d = Dispatcher(settings, Metrics(), Readiness(), codec=CODEC, clock_ms=lambda: 1_000)
    d._client = FakeIcareus()  # type: ignore[assignment]
    d._generations[PARTITION] = 7
    d.offsets.assign(PARTITION)
    return d


def item(offset: int, req: ProvisioningRequest, replayed: bool = False) -> WorkItem:
    headers = ((REPLAY_COUNT, b"1"),) if replayed else ()
    record = ConsumedRecord(
        "requests", PARTITION, offset, b"sub-1", CODEC.encode_request(req), headers, 1
    )
    return WorkItem(record=record, generation=7, subscription_id="sub-1", request=req)


def run(d: Dispatcher, work: WorkItem) -> list[Any]:
    """Run one item through the dispatcher; the records it buffered for the next commit."""
    d.offsets.register(PARTITION, work.record.offset)
    before = len(d._pending.get(PARTITION, []))
    asyncio.run(d._handle(work))
    return d._pending.get(PARTITION, [])[before:]


def headers_of(record: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers or []}


def fake(d: Dispatcher) -> FakeIcareus:
    client = d._client
    assert isinstance(client, FakeIcareus)
    return client


def test_a_parked_subscription_sends_its_next_request_to_the_dlq_behind_the_first(
    dispatcher: Dispatcher,
) -> None:
    dispatcher.parked.park(ParkedKey("sub-1", "req-0", PARTITION, 1))
    out = run(dispatcher, item(10, request(1, RequestType.ADD_DEVICE, user="u1")))

    assert [r.topic for r in out] == [dispatcher.topics.dlq]
    assert headers_of(out[0])[PARKED_BEHIND] == "req-0"
    assert headers_of(out[0])[REASON] == "PARKED"
    assert fake(dispatcher).sent == []
    assert dispatcher.offsets.partition(PARTITION).committable() == 11  # type: ignore[union-attr]


def test_the_replayed_request_that_parked_the_key_unparks_it_and_runs(
    dispatcher: Dispatcher,
) -> None:
    dispatcher.parked.park(ParkedKey("sub-1", "req-0", PARTITION, 1))
    out = run(dispatcher, item(11, request(0, RequestType.ADD_USER), replayed=True))

    assert "sub-1" not in dispatcher.parked
    topics = [r.topic for r in out]
    assert topics == [dispatcher.topics.results, dispatcher.topics.state]
    assert decode_marker(out[1].key, out[1].value) == ("sub-1", None)  # the tombstone
    assert out[1].partition == PARTITION


def test_a_request_that_is_not_replayed_does_not_unpark_even_with_the_same_id(
    dispatcher: Dispatcher,
) -> None:
    dispatcher.parked.park(ParkedKey("sub-1", "req-0", PARTITION, 1))
    out = run(dispatcher, item(12, request(0, RequestType.ADD_USER)))
    assert [r.topic for r in out] == [dispatcher.topics.dlq]
    assert "sub-1" in dispatcher.parked


def test_retry_budget_exhausted_dead_letters_and_parks_the_subscription(
    dispatcher: Dispatcher,
) -> None:
    error = TransientIcareusError(
        "down", operation="add_user", reason="server_error", http_status=503
    )
    error.attempts = 6
    fake(dispatcher).fail_with = error
    out = run(dispatcher, item(13, request(0, RequestType.ADD_USER)))

    dead, marker = out
    assert headers_of(dead)[REASON] == "RETRIES_EXHAUSTED"
    assert headers_of(dead)["dlq.attempts"] == "6"
    assert headers_of(dead)["dlq.http.status"] == "503"
    assert marker.topic == dispatcher.topics.state and marker.partition == PARTITION
    _, parked = decode_marker(marker.key, marker.value)
    assert parked is not None and parked.parked_behind == "req-0"
    assert dispatcher.parked.get("sub-1") == parked


def test_a_refused_add_user_rejects_the_accounts_later_requests_of_the_same_plan(
    dispatcher: Dispatcher,
) -> None:
    fake(dispatcher).fail_with = PermanentIcareusError(
        "no", operation="add_user", code="INVALID_PROFILE", icareus_message="bad email"
    )
    run(dispatcher, item(20, request(0, RequestType.ADD_USER)))
    fake(dispatcher).fail_with = None
    out = run(dispatcher, item(21, request(1, RequestType.ACTIVATE_PRODUCTS)))
    other_plan = run(dispatcher, item(22, request(2, RequestType.ACTIVATE_PRODUCTS, event="ev-2")))

    result = CODEC.decode_result(out[0].value)
    assert (result.error_code, result.attempts) == ("DEPENDENCY_REJECTED", 0)
    assert [rid for rid, _ in fake(dispatcher).sent] == ["req-0"]
    # A later plan is not the same plan: no user known, Icareus has none either.
    later = CODEC.decode_result(other_plan[0].value)
    assert later.error_code == "ACCOUNT_NOT_REGISTERED"


def test_the_user_id_of_a_completed_add_user_reaches_requests_planned_before_it(
    dispatcher: Dispatcher,
) -> None:
    run(dispatcher, item(30, request(0, RequestType.ADD_USER)))
    out = run(dispatcher, item(31, request(1, RequestType.ADD_DEVICE)))
    assert fake(dispatcher).sent[-1] == ("req-1", f"u-{ACCOUNT}")
    assert CODEC.decode_result(out[0].value).reference_number == f"u-{ACCOUNT}"


def test_after_a_restart_a_missing_user_id_is_looked_up_in_icareus(dispatcher: Dispatcher) -> None:
    fake(dispatcher).users[ACCOUNT] = "u-77"
    run(dispatcher, item(40, request(1, RequestType.ACTIVATE_PRODUCTS)))
    assert fake(dispatcher).sent == [("req-1", "u-77")]


def test_removing_from_an_account_icareus_does_not_have_is_already_done(
    dispatcher: Dispatcher,
) -> None:
    out = run(dispatcher, item(41, request(1, RequestType.REMOVE_USER)))
    assert CODEC.decode_result(out[0].value).life_cycle_state.value == "COMPLETED"
    assert fake(dispatcher).sent == []


def test_work_of_a_partition_revoked_meanwhile_is_discarded(dispatcher: Dispatcher) -> None:
    work = item(50, request(0, RequestType.ADD_USER))
    dispatcher._generations[PARTITION] = 8  # revoked and assigned again while it ran
    assert run(dispatcher, work) == []
