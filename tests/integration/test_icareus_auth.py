"""A bridge whose signature Icareus refuses (INVALID_TOKEN: a wrong organization key, or a clock
off by more than Icareus' window) is failing itself, not CRM's requests: the dispatcher against a
real broker and the simulator over HTTP, the simulator started with another key than the
bridge's. No REJECTED result reaches CRM; readiness is false; the refusals are counted; each
request is retried under the retry budget and then dead-lettered `AUTH_FAILED` with its
subscription parked; with the right key, the replayed dead letters complete."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from confluent_kafka import Producer
from pydantic import SecretStr

from icareus_bridge.codec import Codec
from icareus_bridge.config import Settings
from icareus_bridge.core.model import (
    Action,
    LifecycleEvent,
    ProvisioningRequest,
    Service,
    ServiceState,
    Subscriber,
    Subscription,
    SubscriptionRecord,
    SubscriptionState,
)
from icareus_bridge.core.plan import plan
from icareus_bridge.icareus.simulator import (
    SimulatorAdmin,
    SimulatorConfig,
    SimulatorHandle,
    start_simulator_thread,
)
from icareus_bridge.observability.metrics import Metrics
from icareus_bridge.pipeline.dead_letter import PARKED_BEHIND
from tests.integration.dispatcher_support import (
    Dispatcher,
    TopicReader,
    abandon_dispatchers,
    header,
    metric,
    put_back,
    start_dispatcher,
    stop_dispatchers,
    wait_for,
)

pytestmark = pytest.mark.kafka

WAIT_SECONDS = 60.0
CODEC = Codec()
SIMULATOR_KEY = "the-organization-key"
STALE_KEY = "last-years-key"
AUTH_METRIC = "icareus_bridge_icareus_auth_failures_total"
MAX_ATTEMPTS = 3


def new_subscriber(sub_id: str, version: int, products: list[str]) -> LifecycleEvent:
    sub = Subscription(
        id=sub_id,
        number=f"N-{sub_id}",
        version=version,
        state=SubscriptionState.EFFECTIVE,
        subscriber=Subscriber(account_number="AC1", first_name="Maria", last_name="Georgiou"),
        services=tuple(
            Service(id=f"s-{p}", product_code=p, state=ServiceState.EFFECTIVE, distributor="VP1")
            for p in products
        ),
        installed_items=(),
    )
    code = "BECOME_SUBSCRIBER" if version == 1 else "ADD_SERVICE"
    return LifecycleEvent(
        event_id=str(uuid.uuid4()),
        occurred_at=int(time.time() * 1000),
        action=Action(code=code),
        subscription=sub,
    )


def auth_failures(metrics: Metrics) -> float:
    return metric(metrics, AUTH_METRIC)


@dataclass
class Rig:
    settings: Settings
    sim: SimulatorHandle
    admin: SimulatorAdmin
    producer: Producer
    running: list[Dispatcher] = field(default_factory=list)
    states: dict[str, SubscriptionRecord | None] = field(default_factory=dict)

    def start(self, key: str) -> Dispatcher:
        icareus = self.settings.icareus.model_copy(update={"key": SecretStr(key)})
        settings = self.settings.model_copy(update={"icareus": icareus})
        return start_dispatcher(settings, self.running)

    def stop(self) -> None:
        stop_dispatchers(self.running)

    def crm(self, ev: LifecycleEvent) -> list[ProvisioningRequest]:
        """Plan the event as the planner would (all requests assumed to complete), publish."""
        sub = ev.subscription
        decision = plan(self.states.get(sub.id), ev, self.settings.provider)
        self.states[sub.id] = decision.state
        for request in decision.requests:
            self.producer.produce(
                self.settings.topics.requests,
                key=sub.id.encode(),
                value=CODEC.encode_request(request),
            )
        self.producer.flush(10)
        return list(decision.requests)


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
            "key": SIMULATOR_KEY,
            "organization_id": "1001",
            "max_in_flight": 16,
            "retry": {
                "max_attempts": MAX_ATTEMPTS,
                "max_total_seconds": 2.0,
                "initial_backoff_seconds": 0.05,
                "max_backoff_seconds": 0.2,
                "jitter_seconds": 0.01,
            },
        },
        provider={
            "distributors": [{"code": "VP1"}, {"code": "VP2"}],
            "service_mapping": {"BASIC-TV": "1001", "SPORTS": "1002"},
        },
        dispatcher={
            "group_id": f"dispatcher-{unique}",
            "instance_id": f"auth-{unique}",
            "shutdown_grace_seconds": 10,
            "commit_interval_ms": 50,
        },
    )
    sim = start_simulator_thread(SimulatorConfig.from_settings(base))  # the right key
    settings = base.model_copy(
        update={"icareus": base.icareus.model_copy(update={"base_url": sim.base_url})}
    )
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "partitioner": "murmur2_random"})
    r = Rig(settings=settings, sim=sim, admin=sim.admin(), producer=producer)
    try:
        yield r
    finally:
        abandon_dispatchers(r.running)
        r.admin.close()
        sim.stop()


def test_a_refused_signature_is_an_outage_of_the_bridge_not_a_rejection_for_crm(
    rig: Rig,
) -> None:
    first = rig.crm(new_subscriber("sub-auth", 1, ["BASIC-TV"]))
    dispatcher = rig.start(key=STALE_KEY)
    bootstrap = rig.settings.kafka.bootstrap_servers
    dlq = TopicReader(bootstrap, rig.settings.topics.dlq)
    results = TopicReader(bootstrap, rig.settings.topics.results)

    # Readiness goes false at the first refusal, saying why.
    wait_for(lambda: auth_failures(dispatcher.metrics) >= 1, "a counted refusal")
    check = dispatcher.icareus_check()
    assert check["ready"] is False and "INVALID_TOKEN" in check["detail"]
    assert "key" in check["detail"] and STALE_KEY not in check["detail"]
    assert dispatcher.readiness.ready is False

    # The first request is held and retried under the budget, then dead-lettered; its
    # subscription is parked, so the next request of it follows into the DLQ, in order.
    dead = dlq.until(lambda rs: len(rs) >= 2)
    assert [CODEC.decode_request(m.value()).request_id for m in dead] == [
        r.request_id for r in first
    ]
    gave_up = dead[0]
    assert header(gave_up, "dlq.reason") == "AUTH_FAILED"
    assert header(gave_up, "dlq.stage") == "dispatch"
    assert header(gave_up, "dlq.attempts") == str(MAX_ATTEMPTS)
    assert "INVALID_TOKEN" in (header(gave_up, "dlq.response.excerpt") or "")
    assert header(dead[1], "dlq.reason") == "PARKED"
    assert header(dead[1], PARKED_BEHIND) == first[0].request_id
    later = rig.crm(new_subscriber("sub-auth", 2, ["BASIC-TV", "SPORTS"]))
    dead = dlq.until(lambda rs: len(rs) >= 2 + len(later))
    assert {header(m, "dlq.reason") for m in dead[2:]} == {"PARKED"}

    # Nothing reached CRM: no result at all, so above all no REJECTED one; Icareus holds nothing.
    results.read(2.0)
    assert results.records == []
    assert rig.admin.state() == {"users": []}
    # Every refused attempt is counted: the held request's and the readiness probe's.
    # (The metric is read first: a refusal is counted by the simulator before the bridge sees it.)
    counted = auth_failures(dispatcher.metrics)
    assert MAX_ATTEMPTS + 1 <= counted <= rig.admin.stats()["auth_failures"]
    assert dispatcher.icareus_check()["ready"] is False
    rig.stop()

    # The key is fixed and the bridge restarted: ready again, and the dead letters, put back in
    # their order as replay does, complete.
    fixed = rig.start(key=SIMULATOR_KEY)
    wait_for(lambda: fixed.icareus_check()["ready"], "Icareus readiness with the right key")
    put_back(rig.producer, rig.settings.topics.requests, dead)
    done = results.until(lambda rs: len(rs) >= len(dead))
    rig.stop()
    got = [CODEC.decode_result(m.value()) for m in done]
    assert [r.request_id for r in got] == [CODEC.decode_request(m.value()).request_id for m in dead]
    assert {r.life_cycle_state.value for r in got} == {"COMPLETED"}
    assert auth_failures(fixed.metrics) == 0  # exported while all is well, for the alert
    users = {u["externalId"]: u for u in rig.admin.state()["users"]}
    assert users["N-sub-auth-VP1"]["products"] == ["1001", "1002"]
    dlq.close()
    results.close()
