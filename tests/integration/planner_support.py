"""What the planner's integration tests share: CRM event stories, the expected requests (the
state machine run over the same events, per subscription), topic readers and writers, and
the planner run in a thread or as an `icareus-bridge run --role planner` process."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import traceback
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from icareus_bridge.codec import default_codec
from icareus_bridge.config import ProviderSettings, Settings
from icareus_bridge.core.feedback import apply_result
from icareus_bridge.core.model import (
    Action,
    InstalledItem,
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
from icareus_bridge.observability.http import Readiness
from icareus_bridge.observability.metrics import Metrics
from icareus_bridge.pipeline.planner import Planner, PlannerLogic

REPO_ROOT = Path(__file__).resolve().parents[2]
BRIDGE = REPO_ROOT / ".venv" / "bin" / "icareus-bridge"
PARTITIONS = 3

PROVIDER: dict[str, Any] = {
    "effective": True,
    "max_viewing_points": 4,
    "distributors": [
        {"code": "ICAREUS-VP1", "name": "Living room", "allowed_products": []},
        {"code": "ICAREUS-VP2", "name": "Bedroom", "allowed_products": []},
    ],
    "service_mapping": {"BASIC-TV": "1001", "SPORTS": "1002", "MOVIES": "1003"},
    "physical_goods_mapping": {"STB-4K": "SET_TOP_BOX", "SMARTCARD": "SMART_CARD"},
}


# --- topics and settings ------------------------------------------------------------------


@dataclass(frozen=True)
class Topics:
    input: str
    requests: str
    results: str
    dlq: str
    state: str

    def as_dict(self) -> dict[str, str]:
        return {
            "input": self.input,
            "requests": self.requests,
            "results": self.results,
            "dlq": self.dlq,
            "state": self.state,
        }


def make_topics(make_topic: Callable[..., str], partitions: int = PARTITIONS) -> Topics:
    return Topics(
        input=make_topic("lifecycle", partitions=partitions),
        requests=make_topic("requests", partitions=partitions),
        results=make_topic("results", partitions=partitions),
        dlq=make_topic("dlq", partitions=partitions),
        state=make_topic("state", partitions=partitions, compacted=True),
    )


def settings_for(bootstrap: str, topics: Topics, *, group: str, instance: str) -> Settings:
    return Settings(
        kafka={"bootstrap_servers": bootstrap, "partitions": PARTITIONS},
        topics=topics.as_dict(),
        icareus={"key": "test-key"},
        provider=PROVIDER,
        http={"port": 0},
        planner={"group_id": group, "instance_id": instance, "batch_max_ms": 50},
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- CRM stories ----------------------------------------------------------------------------


def event(
    sub_id: str,
    version: int,
    action: str,
    *,
    products: Iterable[tuple[str, str]] = (("BASIC-TV", "ICAREUS-VP1"),),
    devices: Iterable[tuple[str, str]] = (),
    state: SubscriptionState = SubscriptionState.EFFECTIVE,
    service_state: ServiceState = ServiceState.EFFECTIVE,
    event_id: str | None = None,
) -> LifecycleEvent:
    """One CRM action on subscription `sub_id`: its services (product, distributor) and
    installed items (serial, distributor) as they stand after the action."""
    return LifecycleEvent(
        event_id=event_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{sub_id}/{version}/{action}")),
        occurred_at=1_790_000_000_000 + version,
        action=Action(code=action),
        subscription=Subscription(
            id=sub_id,
            number=f"N-{sub_id}",
            version=version,
            state=state,
            subscriber=Subscriber(account_number=f"A-{sub_id}", first_name="Ann", last_name="Lee"),
            services=tuple(
                Service(id=f"svc-{p}", product_code=p, state=service_state, distributor=d)
                for p, d in products
            ),
            installed_items=tuple(
                InstalledItem(
                    id=f"item-{s}", serial_number=s, physical_good_code="STB-4K", distributor=d
                )
                for s, d in devices
            ),
        ),
    )


def story(sub_id: str) -> list[LifecycleEvent]:
    """A subscription's life: joins with a box, adds sports, moves to a second room, swaps the
    box, stops sports, and is cancelled."""
    vp1, vp2 = "ICAREUS-VP1", "ICAREUS-VP2"
    box, box2 = f"SN-{sub_id}-1", f"SN-{sub_id}-2"
    return [
        event(sub_id, 1, "BECOME_SUBSCRIBER", devices=[(box, vp1)]),
        event(sub_id, 2, "ADD_SERVICE", products=[("BASIC-TV", vp1), ("SPORTS", vp1)],
              devices=[(box, vp1)]),
        event(sub_id, 3, "ADD_INSTALLED_ITEM", products=[("BASIC-TV", vp1), ("SPORTS", vp1)],
              devices=[(box, vp1), (box2, vp2)]),
        event(sub_id, 4, "SWAP_INSTALLED_ITEM", products=[("BASIC-TV", vp1), ("SPORTS", vp1)],
              devices=[(f"{box}-new", vp1), (box2, vp2)]),
        event(sub_id, 5, "STOP_SERVICE", products=[("BASIC-TV", vp1)],
              devices=[(f"{box}-new", vp1), (box2, vp2)]),
        event(sub_id, 6, "TERMINATE_SUBSCRIPTION", products=[("BASIC-TV", vp1)],
              devices=[(f"{box}-new", vp1), (box2, vp2)], state=SubscriptionState.CANCELLED,
              service_state=ServiceState.CANCELLED),
    ]


def expected_requests(
    events: Iterable[LifecycleEvent], state: dict[str, SubscriptionRecord] | None = None
) -> list[ProvisioningRequest]:
    """What the planner must produce for `events` (in order per subscription): `plan` over
    them, every planned request assumed to complete (no feedback in between)."""
    provider = ProviderSettings(**PROVIDER)
    known: dict[str, SubscriptionRecord] = state if state is not None else {}
    out: list[ProvisioningRequest] = []
    for ev in events:
        d = plan(known.get(ev.subscription.id), ev, provider)
        if d.skipped is None:
            known[ev.subscription.id] = d.state
            out.extend(d.requests)
    return out


# --- producing and reading ----------------------------------------------------------------


def producer(bootstrap: str) -> Producer:
    return Producer(
        {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5}
    )


def produce_events(bootstrap: str, topic: str, events: Iterable[LifecycleEvent]) -> int:
    codec = default_codec()
    p = producer(bootstrap)
    n = 0
    for ev in events:
        p.produce(topic, key=ev.subscription.id.encode(), value=codec.encode_event(ev))
        n += 1
        if n % 1000 == 0:
            p.poll(0)
    assert p.flush(30) == 0
    return n


def produce_raw(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]
) -> None:
    p = producer(bootstrap)
    for key, value in records:
        p.produce(topic, key=key, value=value)
    assert p.flush(30) == 0


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expect: int | None = None,
    timeout: float = 60.0,
    settle: float = 0.0,
) -> list[Record]:
    """Every committed record of `topic` (read_committed, from the beginning). With `expect`,
    wait until at least that many are there (and then `settle` seconds more for extras)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("reader"),
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        parts = sorted(md.partitions)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out: list[Record] = []
        eof: set[int] = set()
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < deadline:
            for m in c.consume(num_messages=1000, timeout=0.2):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        eof.add(m.partition())
                        continue
                    raise AssertionError(f"read {topic}: {err}")
                eof.discard(m.partition())
                headers = {
                    k: (v.decode() if isinstance(v, bytes) else str(v))
                    for k, v in (m.headers() or [])
                }
                out.append(Record(m.partition(), m.offset(), m.key(), m.value(), headers))
            done = len(eof) == len(parts) and (expect is None or len(out) >= expect)
            if done:
                if settle_until is None:
                    settle_until = time.monotonic() + settle
                if time.monotonic() >= settle_until:
                    return out
        if expect is not None:
            raise AssertionError(f"{topic}: {len(out)} records after {timeout}s, wanted {expect}")
        return out
    finally:
        c.close()


def decoded_requests(records: Iterable[Record]) -> list[ProvisioningRequest]:
    codec = default_codec()
    return [codec.decode_request(r.value) for r in records if r.value is not None]


def by_subscription(reqs: Iterable[ProvisioningRequest]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in reqs:
        out.setdefault(r.subscription_id, []).append(r.request_id)
    return out


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")


# --- the planner in this process ------------------------------------------------------------


@dataclass
class RunningPlanner:
    planner: Planner
    metrics: Metrics
    readiness: Readiness
    stop: threading.Event
    thread: threading.Thread
    errors: list[BaseException]


@contextmanager
def planner_thread(settings: Settings) -> Iterator[RunningPlanner]:
    """The planner in a thread of the test process; stopped (gracefully) on exit."""
    from icareus_bridge.kafka.admin import ensure_topics

    ensure_topics(settings.kafka, settings.topics)
    metrics, readiness, stop = Metrics(), Readiness(), threading.Event()
    logic = PlannerLogic(settings, default_codec(), plan, apply_result)
    planner = Planner(settings, logic, metrics, readiness)
    errors: list[BaseException] = []

    def body() -> None:
        try:
            planner.run(stop)
        except BaseException as exc:  # surfaced by the test
            errors.append(exc)

    t = threading.Thread(target=body, name="planner-under-test", daemon=True)
    t.start()
    running = RunningPlanner(planner, metrics, readiness, stop, t, errors)
    try:
        wait_for(lambda: readiness.ready or bool(errors), 60, "planner ready")
        assert not errors, errors
        yield running
    finally:
        stop.set()
        t.join(30)
        assert not t.is_alive(), "planner did not stop"
        assert not errors, "".join(traceback.format_exception(errors[0]))


# --- the planner as a process -----------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PlannerProcess:
    """`icareus-bridge run --role planner` with a YAML file for the provider and environment
    variables for the broker, topics, group, instance and HTTP port."""

    def __init__(self, tmp: Path, bootstrap: str, topics: Topics, *, group: str, instance: str):
        self.config = tmp / "bridge.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "icareus": {"key": "test-key"},
                    "provider": PROVIDER,
                    "logging": {"level": "INFO", "format": "json"},
                }
            )
        )
        self.port = free_port()
        self.log_path = tmp / f"planner-{instance}.log"
        self.env = dict(os.environ)
        self.env.update(
            {
                "ICAREUS_BRIDGE__KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                "ICAREUS_BRIDGE__KAFKA__PARTITIONS": str(PARTITIONS),
                "ICAREUS_BRIDGE__TOPICS__INPUT": topics.input,
                "ICAREUS_BRIDGE__TOPICS__REQUESTS": topics.requests,
                "ICAREUS_BRIDGE__TOPICS__RESULTS": topics.results,
                "ICAREUS_BRIDGE__TOPICS__DLQ": topics.dlq,
                "ICAREUS_BRIDGE__TOPICS__STATE": topics.state,
                "ICAREUS_BRIDGE__PLANNER__GROUP_ID": group,
                "ICAREUS_BRIDGE__PLANNER__INSTANCE_ID": instance,
                "ICAREUS_BRIDGE__PLANNER__BATCH_MAX_EVENTS": "200",
                "ICAREUS_BRIDGE__HTTP__HOST": "127.0.0.1",
                "ICAREUS_BRIDGE__HTTP__PORT": str(self.port),
            }
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PlannerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(BRIDGE), "run", "--role", "planner", "--config", str(self.config)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def http_status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                status: int = r.status
                return status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def http_text(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            body: bytes = r.read()
            return body.decode()

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"planner exited {self.proc.returncode}:\n{self.log_tail()}")
            return self.http_status("/readyz") == 200

        wait_for(ready, timeout, "planner /readyz")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log_tail(self, n: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])
