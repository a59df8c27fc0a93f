"""The dispatcher test rig: a dispatcher (or several) in threads against a real broker and the
Icareus simulator over HTTP, requests planned with `plan` and put on the requests topic as the
planner would, readers of the results and dead letters, and CRM story builders."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from icareus_bridge.icareus.simulator import (
    SimulatorAdmin,
    SimulatorConfig,
    SimulatorHandle,
    start_simulator_thread,
)
from icareus_bridge.observability.http import Readiness
from icareus_bridge.observability.metrics import Metrics
from icareus_bridge.pipeline.dead_letter import REPLAY_COUNT
from icareus_bridge.pipeline.dispatcher import run_dispatcher

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
    metrics: list[Metrics] = field(default_factory=list)  # of each dispatcher started

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

        metrics = Metrics()
        self.metrics.append(metrics)

        def target() -> None:
            try:
                run_dispatcher(settings, metrics, readiness, stop)
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
            self.read(0.2)
        return self.records

    def poll(self, seconds: float) -> list[Any]:
        """Keep reading for `seconds` (to see that nothing more arrives)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.read(0.2)
        return self.records

    def read(self, timeout: float) -> None:
        for msg in self.consumer.consume(num_messages=100, timeout=timeout):
            if msg.error() is None:
                self.records.append(msg)

    def close(self) -> None:
        self.consumer.close()


def results_of(records: list[Any]) -> list[ProvisioningResult]:
    return [CODEC.decode_result(m.value()) for m in records]


def header(msg: Any, name: str) -> str | None:
    for k, v in msg.headers() or []:
        if k == name:
            return bytes(v).decode()
    return None


def put_back(producer: Producer, topic: str, dead: list[Any]) -> None:
    """Put dead letters back on the requests topic in their order, as replay does: their
    `dlq.*` headers dropped, a replay count of 1 added."""
    for msg in dead:
        kept = [(k, v) for k, v in msg.headers() if not k.startswith("dlq.")]
        producer.produce(
            topic, key=msg.key(), value=msg.value(), headers=[*kept, (REPLAY_COUNT, b"1")]
        )
    producer.flush(10)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def metric(metrics: Metrics, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", metrics.render().decode(), re.MULTILINE)
    assert found is not None, f"{name} is not exported"
    return float(found.group(1))


@dataclass
class Dispatcher:
    """One dispatcher running in a thread, with its own readiness and metrics."""

    readiness: Readiness
    metrics: Metrics
    thread: threading.Thread
    stop: threading.Event
    errors: list[BaseException] = field(default_factory=list)

    def icareus_check(self) -> dict[str, Any]:
        default = {"ready": False, "detail": "not registered yet"}
        check: dict[str, Any] = self.readiness.snapshot().get("icareus", default)
        return check


def start_dispatcher(settings: Settings, running: list[Dispatcher]) -> Dispatcher:
    """Start a dispatcher on `settings` in a thread, added to `running` (to be stopped)."""
    readiness, metrics, stop = Readiness(), Metrics(), threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_dispatcher(settings, metrics, readiness, stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="dispatcher", daemon=True)
    dispatcher = Dispatcher(readiness, metrics, thread, stop, errors)
    running.append(dispatcher)
    thread.start()
    return dispatcher


def stop_dispatchers(running: list[Dispatcher]) -> None:
    """Stop them all; each must drain within its grace and end without an error."""
    for d in running:
        d.stop.set()
        d.thread.join(timeout=30)
        assert not d.thread.is_alive(), "dispatcher did not drain within its grace"
        assert not d.errors, d.errors
    running.clear()


def abandon_dispatchers(running: list[Dispatcher]) -> None:
    """A fixture's cleanup: tell every dispatcher still running to stop, and wait for it."""
    for d in running:
        d.stop.set()
        d.thread.join(timeout=30)


@contextmanager
def running_rig(base: Settings) -> Iterator[Rig]:
    """A rig on `base`: the simulator started from it (its URL put into the settings) and a
    producer; on exit every dispatcher the rig started is stopped and the simulator with it."""
    sim = start_simulator_thread(SimulatorConfig.from_settings(base))
    settings = base.model_copy(
        update={"icareus": base.icareus.model_copy(update={"base_url": sim.base_url})}
    )
    producer = Producer(
        {"bootstrap.servers": base.kafka.bootstrap_servers, "partitioner": "murmur2_random"}
    )
    r = Rig(settings=settings, sim=sim, admin=sim.admin(), producer=producer)
    try:
        yield r
    finally:
        for thread, stop in r.threads:
            stop.set()
            thread.join(timeout=30)
        r.admin.close()
        sim.stop()


@pytest.fixture(name="rig")
def rig_fixture(kafka_bootstrap: str, make_topic: Callable[..., str]) -> Iterator[Rig]:
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
    with running_rig(base) as r:
        yield r
