"""The dispatcher alone against a real broker and the Icareus simulator over HTTP: requests are
planned here with `plan` and put on the requests topic, as the planner would, and the test reads
the results and dead letters and looks at what Icareus holds."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from icareus_bridge.codec import Codec
from icareus_bridge.config import Settings
from icareus_bridge.core.model import (
    Action,
    InstalledItem,
    LifecycleEvent,
    ProvisioningRequest,
    ProvisioningResult,
    Service,
    ServiceState,
    Subscriber,
    Subscription,
    SubscriptionRecord,
    SubscriptionState,
)
from icareus_bridge.core.plan import plan
from icareus_bridge.icareus.client import IcareusClient
from icareus_bridge.icareus.simulator import (
    SimulatorAdmin,
    SimulatorConfig,
    SimulatorHandle,
    start_simulator_thread,
)
from icareus_bridge.observability.http import Readiness
from icareus_bridge.observability.metrics import Metrics
from icareus_bridge.pipeline.dead_letter import PARKED_BEHIND, REPLAY_COUNT
from icareus_bridge.pipeline.dispatcher import run_dispatcher

pytestmark = pytest.mark.kafka

WAIT_SECONDS = 60.0
CODEC = Codec()


# --- CRM stories -----------------------------------------------------------------------------


def subscription(
    sub_id: str,
    version: int,
    *,
    services: list[Service],
    items: tuple[InstalledItem, ...] = (),
    state: SubscriptionState = SubscriptionState.EFFECTIVE,
) -> Subscription:
    return Subscription(
        id=sub_id,
        number=f"N-{sub_id}",
        version=version,
        state=state,
        subscriber=Subscriber(account_number="AC1", first_name="Maria", last_name="Georgiou"),
        services=tuple(services),
        installed_items=items,
    )


def event(code: str, sub: Subscription) -> LifecycleEvent:
    return LifecycleEvent(
        event_id=str(uuid.uuid4()),
        occurred_at=int(time.time() * 1000),
        action=Action(code=code),
        subscription=sub,
    )


def box(serial: str, distributor: str) -> InstalledItem:
    return InstalledItem(
        id=f"ii-{serial}",
        serial_number=serial,
        physical_good_code="STB-4K",
        distributor=distributor,
    )


def tv(product: str, distributor: str) -> Service:
    return Service(
        id=f"s-{product}-{distributor}",
        product_code=product,
        state=ServiceState.EFFECTIVE,
        distributor=distributor,
    )


# --- the rig ---------------------------------------------------------------------------------


@dataclass
class Rig:
    settings: Settings
    sim: SimulatorHandle
    admin: SimulatorAdmin
    producer: Producer
    states: dict[str, SubscriptionRecord | None] = field(default_factory=dict)
    threads: list[tuple[threading.Thread, threading.Event]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    @property
    def topics(self) -> Any:
        return self.settings.topics

    def start(self, instance: str | None = None) -> Readiness:
        """A dispatcher in a thread; another `instance` id joins the same group beside it."""
        stop = threading.Event()
        readiness = Readiness()
        settings = self.settings
        if instance is not None:
            dispatcher = settings.dispatcher.model_copy(update={"instance_id": instance})
            settings = settings.model_copy(update={"dispatcher": dispatcher})

        def target() -> None:
            try:
                run_dispatcher(settings, Metrics(), readiness, stop)
            except BaseException as exc:
                self.errors.append(exc)

        thread = threading.Thread(target=target, name="dispatcher", daemon=True)
        thread.start()
        self.threads.append((thread, stop))
        return readiness

    def stop(self) -> None:
        for thread, stop in self.threads:
            stop.set()
            thread.join(timeout=30)
            assert not thread.is_alive(), "dispatcher did not drain within its grace"
        self.threads.clear()
        assert not self.errors, self.errors

    def crm(self, ev: LifecycleEvent) -> list[ProvisioningRequest]:
        """Plan the event as the planner would (all requests assumed to complete), publish."""
        sub = ev.subscription
        decision = plan(self.states.get(sub.id), ev, self.settings.provider)
        self.states[sub.id] = decision.state
        assert not decision.rejections, decision.rejections
        for request in decision.requests:
            self.producer.produce(
                self.topics.requests, key=sub.id.encode(), value=CODEC.encode_request(request)
            )
        self.producer.flush(10)
        return list(decision.requests)

    def reset(self, ev: LifecycleEvent) -> None:
        """The planner forwards a RESET_SUBSCRIPTION event itself, in the subscription's turn."""
        self.producer.produce(
            self.topics.requests, key=ev.subscription.id.encode(), value=CODEC.encode_event(ev)
        )
        self.producer.flush(10)

    def users(self) -> dict[str, dict[str, Any]]:
        return {u["externalId"]: u for u in self.admin.state()["users"]}


class TopicReader:
    """Reads a topic (committed records only) from its start, keeping what it has seen."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        self.consumer.subscribe([topic])
        self.records: list[Any] = []

    def until(self, done: Callable[[list[Any]], bool], timeout: float = WAIT_SECONDS) -> list[Any]:
        deadline = time.monotonic() + timeout
        while not done(self.records):
            assert time.monotonic() < deadline, f"gave up waiting; have {len(self.records)}"
            for msg in self.consumer.consume(num_messages=100, timeout=0.2):
                if msg.error() is None:
                    self.records.append(msg)
        return self.records

    def poll(self, seconds: float) -> list[Any]:
        """Keep reading for `seconds` (to see that nothing more arrives)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(num_messages=100, timeout=0.2):
                if msg.error() is None:
                    self.records.append(msg)
        return self.records

    def close(self) -> None:
        self.consumer.close()


def results_of(records: list[Any]) -> list[ProvisioningResult]:
    return [CODEC.decode_result(m.value()) for m in records]


def header(msg: Any, name: str) -> str | None:
    for k, v in msg.headers() or []:
        if k == name:
            return bytes(v).decode()
    return None


@pytest.fixture
def rig(kafka_bootstrap: str, make_topic: Callable[..., str]) -> Iterator[Rig]:
    unique = uuid.uuid4().hex[:8]
    base = Settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "partitions": 2},
        topics={
            "input": make_topic("crm", partitions=2),
            "requests": make_topic("requests", partitions=2),
            "results": make_topic("results", partitions=2),
            "dlq": make_topic("dlq", partitions=1),
            "state": make_topic("state", partitions=2, compacted=True),
        },
        icareus={
            "base_url": "http://127.0.0.1:1/api",
            "key": "test-key",
            "organization_id": "1001",
            "max_in_flight": 16,
            "retry": {
                "max_attempts": 3,
                "max_total_seconds": 1.5,
                "initial_backoff_seconds": 0.05,
                "max_backoff_seconds": 0.2,
                "jitter_seconds": 0.01,
            },
        },
        provider={
            "distributors": [{"code": f"VP{i}"} for i in range(1, 6)],
            "service_mapping": {"BASIC-TV": "1001", "SPORTS": "1002", "MOVIES": "1003"},
            "physical_goods_mapping": {"STB-4K": "SET_TOP_BOX"},
        },
        dispatcher={
            "group_id": f"dispatcher-{unique}",
            "instance_id": f"test-{unique}",
            "shutdown_grace_seconds": 10,
            "commit_interval_ms": 50,
        },
    )
    sim = start_simulator_thread(SimulatorConfig.from_settings(base))
    settings = base.model_copy(
        update={"icareus": base.icareus.model_copy(update={"base_url": sim.base_url})}
    )
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "partitioner": "murmur2_random"})
    r = Rig(settings=settings, sim=sim, admin=sim.admin(), producer=producer)
    try:
        yield r
    finally:
        for thread, stop in r.threads:
            stop.set()
            thread.join(timeout=30)
        r.admin.close()
        sim.stop()


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
    for msg in dead:
        headers = [(k, v) for k, v in msg.headers() if not k.startswith("dlq.")]
        rig.producer.produce(
            rig.topics.requests,
            key=msg.key(),
            value=msg.value(),
            headers=[*headers, (REPLAY_COUNT, b"1")],
        )
    rig.producer.flush(10)
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
