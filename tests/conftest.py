"""The real Kafka broker every test that needs one shares (one per test session).

Where it comes from, first that applies: `KAFKA_BOOTSTRAP_SERVERS` from the environment; a
container of the official `apache/kafka` image when a Docker engine answers; else a single-node
KRaft broker assembled from Maven Central by `tools/kafka/local_kafka.py` (Java 17 + Maven).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools" / "kafka"))

import local_kafka  # noqa: E402  (lives in tools/kafka, put on sys.path just above)

KAFKA_IMAGE = f"apache/kafka:{local_kafka.kafka_version()}"
TOPIC_READY_TIMEOUT_SECONDS = 30.0


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, no engine: all mean "no Docker"
        return False


def _containerised_broker() -> Iterator[str]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    # The port is mapped 1:1 so the advertised listener is known before the container starts.
    port = local_kafka.free_port()
    container = (
        DockerContainer(KAFKA_IMAGE)
        .with_bind_ports(port, port)
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env("KAFKA_LISTENERS", f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://localhost:9093")
        .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://localhost:{port}")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env(
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
        )
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS", "1")
        .with_env("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_NUM_PARTITIONS", "1")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    )
    with container:
        wait_for_logs(container, "Kafka Server started", timeout=local_kafka.READY_TIMEOUT_SECONDS)
        yield f"{container.get_container_host_ip()}:{port}"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """`host:port` of the session's broker."""
    from_env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if from_env:
        yield from_env
    elif _docker_answers():
        yield from _containerised_broker()
    else:
        with local_kafka.temporary_broker() as broker:
            yield broker.bootstrap_servers


@pytest.fixture
def kafka_config(kafka_bootstrap: str) -> dict[str, Any]:
    """A fresh librdkafka config dict for the session's broker; add to it freely."""
    return {"bootstrap.servers": kafka_bootstrap}


@pytest.fixture
def make_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """`make_topic(prefix="t", partitions=1, compacted=False) -> name`: a new topic with a unique
    name, existing with a leader for every partition when it returns; deleted after the test."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def make(prefix: str = "t", partitions: int = 1, compacted: bool = False) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        config = {"cleanup.policy": "compact"} if compacted else {}
        topic = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)
        admin.create_topics([topic])[name].result(timeout=TOPIC_READY_TIMEOUT_SECONDS)
        created.append(name)
        deadline = time.monotonic() + TOPIC_READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            meta = admin.list_topics(topic=name, timeout=5).topics.get(name)
            if (
                meta is not None
                and meta.error is None
                and len(meta.partitions) == partitions
                and all(p.leader >= 0 for p in meta.partitions.values())
            ):
                return name
            time.sleep(0.05)
        raise TimeoutError(f"topic {name} has no leader after {TOPIC_READY_TIMEOUT_SECONDS} s")

    yield make
    if created:
        # Best effort: keeps the shared broker small; a topic left behind harms no other test.
        for future in admin.delete_topics(created, operation_timeout=10).values():
            with contextlib.suppress(Exception):
                future.result(timeout=15)


@dataclass(frozen=True)
class SecureKafka:
    """A broker whose only client listener is SASL_SSL (SCRAM-SHA-512, certificate from a
    test CA made for the session); `users` maps SCRAM user names to their passwords."""

    broker: local_kafka.LocalKafka
    security: local_kafka.BrokerSecurity

    @property
    def bootstrap_servers(self) -> str:
        return self.broker.bootstrap_servers

    @property
    def ca_file(self) -> Path:
        return self.security.pki.ca_file

    @property
    def users(self) -> dict[str, str]:
        return dict(self.security.users)

    def client_config(self, user: str = "bridge", password: str | None = None) -> dict[str, Any]:
        """librdkafka settings of a client of `user` (its password unless `password`)."""
        return {
            "bootstrap.servers": self.bootstrap_servers,
            **self.security.client_config(user, password),
        }


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """The session's SASL_SSL broker (its own JVM, always the local one: the secured listener,
    the CA and the SCRAM users are made here). Users `bridge` and `crm`, random passwords."""
    root = tmp_path_factory.mktemp("secure-kafka")
    pki = local_kafka.write_test_pki(root / "pki")
    users = {name: f"{name}-scram-{uuid.uuid4().hex[:16]}" for name in ("bridge", "crm")}
    broker = local_kafka.LocalKafka(
        root / "broker", security=local_kafka.BrokerSecurity(pki, users)
    )
    try:
        broker.start()
        broker.wait_ready()
        assert broker.security is not None
        yield SecureKafka(broker, broker.security)
    finally:
        broker.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test that reaches a broker carries the `kafka` marker, so `-m "not kafka"` works.
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "kafka_bootstrap" in names or "secure_kafka" in names:
            item.add_marker(pytest.mark.kafka)
