"""The dispatcher's logic without Kafka: one consumed record of the requests topic -> its results,
dead letters and parked-key markers, against a small fake of the Icareus port. The same
decisions run on a real broker with the simulator in tests/integration/test_dispatcher*.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
import structlog

from icareus_bridge.codec import Codec
from icareus_bridge.config import Settings
from icareus_bridge.core.model import (
    LifeCycleState,
    ProvisioningRequest,
    ProvisioningResult,
    RejectionCode,
    RequestType,
)
from icareus_bridge.icareus.client import CallResult, IcareusUser
from icareus_bridge.icareus.errors import (
    AuthIcareusError,
    PermanentIcareusError,
    TlsIcareusError,
    TransientIcareusError,
)
from icareus_bridge.kafka.checkpoint import OutboundRecord
from icareus_bridge.kafka.dispatch import ConsumedRecord
from icareus_bridge.observability.http import Readiness
from icareus_bridge.observability.metrics import Metrics
from icareus_bridge.pipeline.dead_letter import (
    ATTEMPTS,
    HTTP_STATUS,
    PARKED_BEHIND,
    REASON,
    REPLAY_COUNT,
    STAGE,
)
from icareus_bridge.pipeline.dispatch_logic import (
    DispatchLogic,
    IcareusHealth,
    IcareusPort,
    WorkItem,
)
from icareus_bridge.pipeline.parking import ParkedKey, decode_marker, marker_key
from tests.unit.crm_events import event, item, subscription, svc

NOW = 1_795_000_000_000
PARTITION = 3
SETTINGS = Settings(
    icareus={"key": "k"},
    provider={
        "distributors": [{"code": "VP1"}, {"code": "VP2"}],
        "service_mapping": {"BASIC-TV": "1001", "SPORTS": "1002", "MOVIES": "1003"},
        "physical_goods_mapping": {"STB-4K": "SET_TOP_BOX"},
    },
)
T = SETTINGS.topics
CODEC = Codec()


@dataclass
class FakeIcareus:
    """Icareus as the port sees it: users by account key; `failure` is raised by every call,
    `refusals` by the send of the request ids named."""

    users: dict[str, IcareusUser] = field(default_factory=dict)
    failure: Exception | None = None
    refusals: dict[str, Exception] = field(default_factory=dict)
    sent: list[tuple[str, str | None]] = field(default_factory=list)  # (request id, user id)
    lookups: list[str] = field(default_factory=list)

    async def get_user(self, *, external_id: str) -> CallResult:
        if self.failure is not None:
            raise self.failure
        self.lookups.append(external_id)
        user = self.users.get(external_id)
        return _call("get_user", user=user, code=None if user else "USER_NOT_FOUND")

    async def send(self, request: ProvisioningRequest, user_id: str | None = None) -> CallResult:
        if self.failure is not None:
            raise self.failure
        if request.request_id in self.refusals:
            raise self.refusals[request.request_id]
        self.sent.append((request.request_id, user_id))
        if request.type is RequestType.ADD_USER:
            new = f"u-{len(self.users) + 1}"
            self.users[request.account_key] = IcareusUser(new, request.account_key, frozenset(), {})
            return _call("add_user", user_id=new)
        return _call(request.type.value.lower())


def _call(
    operation: str,
    *,
    user: IcareusUser | None = None,
    user_id: str | None = None,
    code: str | None = None,
) -> CallResult:
    return CallResult(
        operation, {}, {"status": "ok"}, 200, 1, 0.01, code=code, user_id=user_id, user=user
    )


@dataclass
class Rig:
    icareus: FakeIcareus
    logic: DispatchLogic
    readiness: Readiness
    metrics: Metrics
    offset: int = 0

    def consume(self, value: bytes | None, key: str = "sub-1", replayed: bool = False) -> WorkItem:
        self.offset += 1
        headers = ((REPLAY_COUNT, b"1"),) if replayed else ()
        record = ConsumedRecord(
            T.requests, PARTITION, self.offset, key.encode(), value, headers, NOW - 10
        )
        order_key, work = self.logic.work_item(record, generation=1)
        assert order_key == work.subscription_id
        return work

    def run(
        self, value: bytes | None, key: str = "sub-1", replayed: bool = False
    ) -> list[OutboundRecord]:
        work = self.consume(value, key, replayed)
        return self.logic.settle(work, asyncio.run(self.logic.process(work)))

    def send(self, req: ProvisioningRequest, replayed: bool = False) -> list[OutboundRecord]:
        return self.run(CODEC.encode_request(req), req.subscription_id, replayed)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


@pytest.fixture
def rig() -> Rig:
    readiness, metrics = Readiness(), Metrics()
    log = structlog.get_logger("test")
    health = IcareusHealth(readiness, metrics, log)
    icareus = FakeIcareus()
    port: IcareusPort = icareus
    logic = DispatchLogic(
        SETTINGS, port, codec=CODEC, metrics=metrics, health=health, log=log, clock_ms=lambda: NOW
    )
    return Rig(icareus, logic, readiness, metrics)


def request(
    n: int,
    type_: RequestType,
    *,
    sub: str = "sub-1",
    event_id: str = "ev-1",
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
        event_id=event_id,
        action_code="BECOME_SUBSCRIBER",
        sequence=n,
        created_at=NOW - 1000,
        user_id=user,
        product_ids=products,
        device_id=device,
        device_type="SET_TOP_BOX" if device else None,
    )


def results(records: list[OutboundRecord]) -> list[ProvisioningResult]:
    out = []
    for r in records:
        if r.topic == T.results:
            assert r.partition == PARTITION
            assert r.value is not None
            out.append(CODEC.decode_result(r.value))
    return out


def dead_letters(records: list[OutboundRecord]) -> list[dict[str, str]]:
    return [{k: v.decode() for k, v in r.headers or []} for r in records if r.topic == T.dlq]


def markers(records: list[OutboundRecord]) -> list[tuple[str, ParkedKey | None]]:
    out = []
    for r in records:
        if r.topic == T.state:
            assert r.key is not None and r.partition == PARTITION
            out.append(decode_marker(r.key, r.value))
    return out


def test_later_requests_of_an_account_get_the_user_id_its_add_user_returned(rig: Rig) -> None:
    add = rig.send(request(0, RequestType.ADD_USER))
    products = rig.send(request(1, RequestType.ACTIVATE_PRODUCTS, products=("1001",)))
    [added], [activated] = results(add), results(products)
    assert added.life_cycle_state is LifeCycleState.COMPLETED
    assert added.reference_number == "u-1"
    assert activated.life_cycle_state is LifeCycleState.COMPLETED
    assert rig.icareus.sent == [("sub-1-req-0", None), ("sub-1-req-1", "u-1")]
    assert rig.icareus.lookups == []
    assert rig.readiness.snapshot()["icareus"] == {"ready": True, "detail": "answering"}
    assert rig.sample("icareus_bridge_results_total", type="ADD_USER", state="COMPLETED") == 1


def test_a_refused_add_user_rejects_the_rest_of_its_plan_without_calls(rig: Rig) -> None:
    refusal = PermanentIcareusError(
        "refused", operation="add_user", code="INVALID_PROFILE", icareus_message="bad email"
    )
    rig.icareus.refusals["sub-1-req-0"] = refusal
    [refused] = results(rig.send(request(0, RequestType.ADD_USER)))
    [dependent] = results(rig.send(request(1, RequestType.ADD_DEVICE, device="SN-1")))
    [other_plan] = results(rig.send(request(2, RequestType.ADD_DEVICE, event_id="ev-2")))
    assert refused.error_code == RejectionCode.ICAREUS_REJECTED
    assert dependent.error_code == RejectionCode.DEPENDENCY_REJECTED
    assert dependent.attempts == 0
    # Another plan of the account is not held by the refusal: it looks the user up, finds none.
    assert other_plan.error_code == RejectionCode.ACCOUNT_NOT_REGISTERED
    assert rig.icareus.sent == []
    assert rig.icareus.lookups == ["N-sub-1-VP1"]
    refusals = rig.sample(
        "icareus_bridge_icareus_refusals_total", type="ADD_USER", code="INVALID_PROFILE"
    )
    assert refusals == 1


def test_user_ids_unknown_in_memory_come_from_icareus_and_removals_without_user_hold(
    rig: Rig,
) -> None:
    rig.icareus.users["N-sub-1-VP1"] = IcareusUser("u-9", "N-sub-1-VP1", frozenset(), {})
    [found] = results(rig.send(request(0, RequestType.ADD_DEVICE, device="SN-1")))
    [again] = results(rig.send(request(1, RequestType.ACTIVATE_PRODUCTS, products=("1001",))))
    [removed] = results(rig.send(request(0, RequestType.REMOVE_USER, sub="sub-2")))
    [missing] = results(rig.send(request(1, RequestType.ADD_DEVICE, sub="sub-2", device="X")))
    assert found.life_cycle_state is again.life_cycle_state is LifeCycleState.COMPLETED
    assert rig.icareus.sent == [("sub-1-req-0", "u-9"), ("sub-1-req-1", "u-9")]
    assert rig.icareus.lookups == ["N-sub-1-VP1", "N-sub-2-VP1", "N-sub-2-VP1"]
    assert removed.life_cycle_state is LifeCycleState.COMPLETED  # nothing there to remove
    assert missing.error_code == RejectionCode.ACCOUNT_NOT_REGISTERED


def test_retry_budget_running_out_parks_the_subscription_until_that_request_is_replayed(
    rig: Rig,
) -> None:
    outage = TransientIcareusError(
        "connection refused", operation="add_user", reason="connect", http_status=503
    )
    outage.attempts, outage.first_failure_at, outage.last_failure_at = 5, 100.0, 160.5
    rig.icareus.failure = outage
    first = request(0, RequestType.ADD_USER)
    gave_up = rig.send(first)
    [letter] = dead_letters(gave_up)
    assert (letter[STAGE], letter[REASON], letter[ATTEMPTS]) == (
        "dispatch",
        "RETRIES_EXHAUSTED",
        "5",
    )
    assert letter[HTTP_STATUS] == "503"
    assert results(gave_up) == []
    [(sub, parked)] = markers(gave_up)
    assert sub == "sub-1" and parked == ParkedKey("sub-1", first.request_id, PARTITION, NOW)
    assert rig.logic.parked.get("sub-1") == parked
    assert rig.readiness.snapshot()["icareus"]["ready"] is False
    rig.icareus.failure = None
    # Later requests of the subscription follow it to the DLQ, in order, without a call.
    follower = rig.send(request(1, RequestType.ADD_DEVICE, device="SN-1"))
    [held] = dead_letters(follower)
    assert (held[REASON], held[PARKED_BEHIND]) == ("PARKED", first.request_id)
    assert markers(follower) == [] and rig.icareus.sent == []
    # The request that parked it, back from the DLQ, unparks it and runs.
    replayed = rig.send(first, replayed=True)
    assert markers(replayed) == [("sub-1", None)]
    assert replayed[-1] == OutboundRecord(T.state, marker_key("sub-1"), None, partition=PARTITION)
    assert [r.life_cycle_state for r in results(replayed)] == [LifeCycleState.COMPLETED]
    assert "sub-1" not in rig.logic.parked
    assert rig.sample("icareus_bridge_parked_keys") == 0
    dlq = "icareus_bridge_dead_letters_total"
    assert rig.sample(dlq, stage="dispatch", reason="RETRIES_EXHAUSTED") == 1
    assert rig.sample(dlq, stage="dispatch", reason="PARKED") == 1


@pytest.mark.parametrize(
    ("failure", "reason", "counter"),
    [
        (
            AuthIcareusError("refused", operation="add_user", code="INVALID_TOKEN"),
            "AUTH_FAILED",
            "icareus_bridge_icareus_auth_failures_total",
        ),
        (
            TlsIcareusError(
                "no TLS", operation="add_user", code="TLS_HANDSHAKE_FAILED", detail="eof"
            ),
            "TLS_FAILED",
            "icareus_bridge_icareus_tls_failures_total",
        ),
    ],
)
def test_refused_credentials_or_tls_dead_letter_with_their_reason(
    rig: Rig, failure: AuthIcareusError, reason: str, counter: str
) -> None:
    rig.logic.health.auth_failed(failure)  # what the client reports at each refused attempt
    assert rig.sample(counter) == 1
    assert rig.readiness.snapshot()["icareus"]["ready"] is False
    rig.icareus.failure = failure
    out = rig.send(request(0, RequestType.ADD_USER))
    assert [d[REASON] for d in dead_letters(out)] == [reason]
    assert [s for s, _ in markers(out)] == ["sub-1"]
    rig.icareus.failure = None
    rig.send(request(0, RequestType.ADD_USER, sub="sub-2"))
    assert rig.readiness.snapshot()["icareus"] == {"ready": True, "detail": "answering"}


def test_a_failure_of_the_dispatcher_itself_dead_letters_and_parks(rig: Rig) -> None:
    rig.icareus.failure = RuntimeError("bug")
    out = rig.send(request(0, RequestType.ADD_USER))
    assert [d[REASON] for d in dead_letters(out)] == ["DISPATCH_FAILED"]
    assert [s for s, _ in markers(out)] == ["sub-1"]


def test_records_that_are_no_request_are_dead_lettered_without_a_call(rig: Rig) -> None:
    not_a_reset = CODEC.encode_event(event("BECOME_SUBSCRIBER", subscription(1)))
    letters = [dead_letters(rig.run(value)) for value in (None, not_a_reset, b"\x00junk")]
    assert [(d[STAGE], d[REASON]) for [d] in letters] == [
        ("decode", "NOT_AVRO"),
        ("decode", "UNKNOWN_SCHEMA"),
        ("decode", "NOT_AVRO"),  # the request's decode error, not the event's
    ]
    assert rig.icareus.sent == [] and rig.icareus.lookups == []
    assert rig.logic.parked.get("sub-1") is None


def test_a_reset_reads_icareus_and_runs_the_difference_in_the_subscriptions_turn(
    rig: Rig,
) -> None:
    sub = subscription(2, services=[svc("s1", "BASIC-TV")], items=[item("i1", "SN-5")])
    account = f"{sub.number}-VP1"
    # Icareus drifted: the box is gone and a product appeared.
    rig.icareus.users[account] = IcareusUser("u-7", account, frozenset({"1001", "1003"}), {})
    work = rig.consume(CODEC.encode_event(event("RESET_SUBSCRIPTION", sub)), key=sub.id)
    assert work.reset is not None and work.request is None
    out = rig.logic.settle(work, asyncio.run(rig.logic.process(work)))
    fixes = {r.type.value: r for r in results(out)}
    assert set(fixes) == {"ADD_DEVICE", "CANCEL_PRODUCTS"}
    assert fixes["CANCEL_PRODUCTS"].product_ids == ("1003",)
    assert all(r.life_cycle_state is LifeCycleState.COMPLETED for r in fixes.values())
    assert rig.icareus.lookups == [account, f"{sub.number}-VP2"]
    assert [user for _, user in rig.icareus.sent] == ["u-7", "u-7"]
    assert rig.logic.accounts.user_id(account) == "u-7"


@pytest.mark.parametrize(
    ("failure", "ready", "detail"),
    [
        (None, True, "answering"),
        (
            TransientIcareusError("connection refused", operation="get_user", reason="connect"),
            False,
            "unreachable: connection refused",
        ),
        (
            PermanentIcareusError(
                "refused", operation="get_user", code="INVALID_ORG", icareus_message="no such org"
            ),
            False,
            "refuses the bridge: INVALID_ORG",
        ),
    ],
)
def test_the_icareus_probe_sets_the_readiness_check_from_its_answer(
    rig: Rig, failure: Exception | None, ready: bool, detail: str
) -> None:
    rig.icareus.failure = failure
    health = rig.logic.health
    assert rig.readiness.snapshot()["icareus"] == {"ready": False, "detail": "not reached yet"}

    async def probe_once() -> None:
        task = asyncio.create_task(health.probe(rig.icareus, lambda: False))
        while rig.readiness.snapshot()["icareus"]["detail"] == "not reached yet":
            await asyncio.sleep(0.001)
        task.cancel()

    asyncio.run(asyncio.wait_for(probe_once(), timeout=10))
    assert rig.readiness.snapshot()["icareus"] == {"ready": ready, "detail": detail}
    assert rig.icareus.lookups == ([] if failure else ["icareus-bridge-readiness-probe"])
