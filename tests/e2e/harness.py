"""What the end-to-end stories share: the bridge as an `icareus-bridge run` process (both roles)
over unique topics, the Icareus simulator over HTTP, CRM's side of Kafka (publishing lifecycle
events, reading results and dead letters) and CRM subscriptions that change version by
version as CRM actions happen."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, Producer

from icareus_bridge.codec import default_codec
from icareus_bridge.config import Settings, default_config_path
from icareus_bridge.core.model import (
    Action,
    InstalledItem,
    LifecycleEvent,
    ProvisioningResult,
    Service,
    ServiceState,
    Subscriber,
    Subscription,
    SubscriptionState,
)
from icareus_bridge.icareus.simulator import (
    SimulatorConfig,
    SimulatorHandle,
    start_simulator_thread,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BRIDGE = REPO_ROOT / ".venv" / "bin" / "icareus-bridge"
WAIT_SECONDS = 60.0
CODEC = default_codec()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- the bridge process ----------------------------------------------------------------------


def bridge_config(bootstrap: str, icareus_url: str, **overrides: Any) -> dict[str, Any]:
    """The embedded default configuration on unique topics and group ids, a short retry
    budget (an outage is given up on within seconds) and a free HTTP port."""
    unique = uuid.uuid4().hex[:8]
    cfg: dict[str, Any] = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))
    cfg["kafka"].update({"bootstrap_servers": bootstrap, "partitions": 3})
    cfg["topics"] = {
        name: f"e2e-{unique}-{name}" for name in ("input", "requests", "results", "dlq", "state")
    }
    cfg["icareus"].update(
        {
            "base_url": icareus_url,
            "key": "e2e-key",
            "connect_timeout_seconds": 1.0,
            "read_timeout_seconds": 1.0,
            "total_timeout_seconds": 2.0,
            "max_in_flight": 32,
            "retry": {
                "max_attempts": 4,
                "max_total_seconds": 4.0,
                "initial_backoff_seconds": 0.1,
                "max_backoff_seconds": 0.5,
                "jitter_seconds": 0.05,
            },
        }
    )
    cfg["http"] = {"host": "127.0.0.1", "port": free_port()}
    cfg["planner"].update({"group_id": f"e2e-{unique}-planner", "instance_id": f"p-{unique}"})
    cfg["dispatcher"].update(
        {
            "group_id": f"e2e-{unique}-dispatcher",
            "instance_id": f"d-{unique}",
            "shutdown_grace_seconds": 10,
            "commit_interval_ms": 50,
        }
    )
    cfg["logging"] = {"level": "INFO", "format": "json"}
    for section, values in overrides.items():
        cfg[section].update(values)
    return cfg


class Bridge:
    """`icareus-bridge run` with a config file; its log goes to a file kept for failures. `env`:
    extra environment (configuration overrides, secrets), as a deployment would set it."""

    def __init__(
        self, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.config = config
        self.env = dict(env or {})
        self.workdir = workdir
        self.config_path = workdir / "bridge.yaml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.config['http']['port']}"

    @property
    def topics(self) -> dict[str, str]:
        topics: dict[str, str] = self.config["topics"]
        return topics

    def start(self) -> Bridge:
        self.starts += 1
        log = (self.workdir / f"bridge-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [str(BRIDGE), "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.environment(),
        )
        log.close()
        return self

    def environment(self) -> dict[str, str]:
        """The bridge's environment (for its commands too): this one without its
        `ICAREUS_BRIDGE__` overrides, plus `env`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ICAREUS_BRIDGE__")}
        env.update(self.env)
        return env

    def wait_ready(self, timeout: float = WAIT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log_tail()
            try:
                with urllib.request.urlopen(self.http + "/readyz", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise AssertionError("bridge not ready in time\n" + self.log_tail())

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.http + "/readyz", timeout=2) as answer:
                return bool(answer.status == 200)
        except urllib.error.HTTPError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(self.http + "/metrics", timeout=5) as answer:
            text: str = answer.read().decode()
            return text

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        path = self.workdir / f"bridge-{self.starts}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- CRM's side of Kafka ---------------------------------------------------------------------


@contextmanager
def running_simulator() -> Iterator[SimulatorHandle]:
    """The Icareus simulator in a thread, configured as `bridge_config` configures the bridge
    (key, organization, products); stopped on exit."""
    cfg = bridge_config("unused:9092", "http://127.0.0.1:1/api")
    handle = start_simulator_thread(SimulatorConfig.from_settings(Settings(**cfg)))
    try:
        yield handle
    finally:
        handle.stop()


@contextmanager
def running_bridge(config: dict[str, Any], workdir: Path) -> Iterator[Bridge]:
    """A bridge started and ready; stopped on exit (also when it never got ready)."""
    process = Bridge(config, workdir)
    try:
        process.start().wait_ready()
        yield process
    finally:
        process.stop_quietly()


class Crm:
    """Publishes lifecycle events; reads results and dead letters (committed records only)."""

    def __init__(self, bootstrap: str, topics: dict[str, str]) -> None:
        self.topics = topics
        self.producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
        self.results = TopicReader(bootstrap, topics["results"])
        self.dead_letters = TopicReader(bootstrap, topics["dlq"])

    def publish(self, *events: LifecycleEvent) -> None:
        for ev in events:
            self.producer.produce(
                self.topics["input"],
                key=ev.subscription.id.encode(),
                value=CODEC.encode_event(ev),
            )
        self.producer.flush(10)

    def results_of(self, ev: LifecycleEvent, n: int) -> list[ProvisioningResult]:
        """The results of one event's requests, in sequence order, once there are `n`."""

        def mine(records: list[Any]) -> list[ProvisioningResult]:
            out = [CODEC.decode_result(m.value()) for m in records]
            return [r for r in out if r.event_id == ev.event_id]

        self.results.until(lambda rs: len(mine(rs)) >= n)
        return sorted(mine(self.results.records), key=lambda r: r.sequence)

    def all_results(self) -> list[ProvisioningResult]:
        return [CODEC.decode_result(m.value()) for m in self.results.records]

    def close(self) -> None:
        self.results.close()
        self.dead_letters.close()


class TopicReader:
    """Reads a topic from its start (read_committed), keeping everything it has seen."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"crm-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        self.consumer.subscribe([topic])
        self.records: list[Any] = []

    def poll(self, seconds: float) -> list[Any]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._read()
        return self.records

    def until(self, done: Callable[[list[Any]], bool], timeout: float = WAIT_SECONDS) -> list[Any]:
        deadline = time.monotonic() + timeout
        while not done(self.records):
            assert time.monotonic() < deadline, f"gave up waiting; {len(self.records)} records"
            self._read()
        return self.records

    def _read(self) -> None:
        for msg in self.consumer.consume(num_messages=500, timeout=0.2):
            if msg.error() is None:
                self.records.append(msg)

    def close(self) -> None:
        self.consumer.close()


def header(msg: Any, name: str) -> str | None:
    for key, value in msg.headers() or []:
        if key == name:
            return bytes(value).decode()
    return None


# --- CRM subscriptions -----------------------------------------------------------------------


@dataclass
class CrmSubscription:
    """A subscription as CRM holds it; every action bumps the version and yields its event."""

    id: str
    snapshot: Subscription = field(init=False)

    def __post_init__(self) -> None:
        self.snapshot = Subscription(
            id=self.id,
            number=f"N{self.id}",
            version=0,
            state=SubscriptionState.DRAFT,
            subscriber=Subscriber(
                account_number=f"AC-{self.id}",
                first_name="Maria",
                last_name="Georgiou",
                email="maria@example.org",
                country_code="CY",
            ),
        )

    def account(self, distributor: str) -> str:
        return f"{self.snapshot.number}-{distributor}"

    def act(
        self,
        code: str,
        *,
        state: SubscriptionState | None = None,
        services: tuple[Service, ...] | None = None,
        items: tuple[InstalledItem, ...] | None = None,
    ) -> LifecycleEvent:
        s = self.snapshot
        self.snapshot = replace_subscription(
            s,
            version=s.version + 1,
            state=state if state is not None else s.state,
            services=services if services is not None else s.services,
            installed_items=items if items is not None else s.installed_items,
        )
        return LifecycleEvent(
            event_id=str(uuid.uuid4()),
            occurred_at=int(time.time() * 1000),
            action=Action(code=code),
            subscription=self.snapshot,
        )

    def services_with(self, *changes: Service) -> tuple[Service, ...]:
        """The services with `changes` applied (same id replaces, new id appends)."""
        by_id = {s.id: s for s in self.snapshot.services}
        for c in changes:
            by_id[c.id] = c
        return tuple(by_id.values())


def replace_subscription(s: Subscription, **changes: Any) -> Subscription:
    return s.model_copy(update=changes)


def service(
    sid: str, product: str, distributor: str, state: ServiceState = ServiceState.EFFECTIVE
) -> Service:
    return Service(id=sid, product_code=product, state=state, distributor=distributor)


def box(serial: str, distributor: str, good: str = "STB-4K") -> InstalledItem:
    return InstalledItem(
        id=f"ii-{serial}", serial_number=serial, physical_good_code=good, distributor=distributor
    )


__all__ = [
    "BRIDGE",
    "Bridge",
    "Crm",
    "CrmSubscription",
    "TopicReader",
    "box",
    "bridge_config",
    "header",
    "replace",
    "service",
]
