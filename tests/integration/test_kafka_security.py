"""Kafka over TLS with SASL/SCRAM-SHA-512 on a real broker (the session's `secure_kafka`): the
bridge's own clients get through with the settings of the `kafka` section; a wrong password,
a plaintext client and a client that trusts another CA are refused."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from icareus_bridge.config import Settings, default_config_path
from icareus_bridge.kafka import clients
from icareus_bridge.kafka.admin import StartupError, ensure_topics
from tests.conftest import SecureKafka, local_kafka
from tests.e2e.harness import BRIDGE

pytestmark = pytest.mark.kafka

REFUSAL_SECONDS = 30.0  # a refused client retries; its first error comes well before this


def config_for(
    broker: SecureKafka, tmp_path: Path, password: str | None = None, **kafka: Any
) -> dict[str, Any]:
    """The embedded configuration on unique topics, reaching `broker` as user `bridge` with
    its password in a file, as an operator would configure it."""
    unique = uuid.uuid4().hex[:8]
    secret = tmp_path / f"kafka-{unique}.password"
    secret.write_text((password or broker.users["bridge"]) + "\n", encoding="utf-8")
    cfg = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))
    cfg["kafka"].update(
        {
            "bootstrap_servers": broker.bootstrap_servers,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "bridge",
            "sasl_password_file": str(secret),
            "ssl_ca_location": str(broker.ca_file),
            "partitions": 1,
            **kafka,
        }
    )
    cfg["topics"] = {
        name: f"sec-{unique}-{name}" for name in ("input", "requests", "results", "dlq", "state")
    }
    return cfg


def settings_for(
    broker: SecureKafka, tmp_path: Path, password: str | None = None, **kafka: Any
) -> Settings:
    return Settings(**config_for(broker, tmp_path, password, **kafka))


class Errors:
    """A client's error callback: every error it reported, served by poll()."""

    def __init__(self) -> None:
        self.seen: list[KafkaError] = []

    def __call__(self, err: KafkaError) -> None:
        self.seen.append(err)

    def codes(self) -> set[int]:
        return {e.code() for e in self.seen}

    def text(self) -> str:
        return "\n".join(e.str() for e in self.seen)


def refused_admin(conf: dict[str, Any], expected: int) -> Errors:
    """Asks for metadata with `conf` until the client reports an error with code `expected`;
    asserts no attempt got metadata; returns the client's errors."""
    errors = Errors()
    admin = AdminClient({**conf, "error_cb": errors})
    deadline = time.monotonic() + REFUSAL_SECONDS
    while expected not in errors.codes():
        assert time.monotonic() < deadline, f"no error {expected} yet: {errors.text()}"
        with pytest.raises(KafkaException):
            admin.list_topics(timeout=1)
        admin.poll(0.1)
    return errors


def test_bridge_clients_produce_and_read_over_sasl_ssl(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    settings = settings_for(secure_kafka, tmp_path)
    reports = ensure_topics(settings.kafka, settings.topics)
    assert {r.name for r in reports if r.created} == {
        settings.topics.input,
        settings.topics.requests,
        settings.topics.results,
        settings.topics.dlq,
        settings.topics.state,
    }

    producer = clients.transactional_producer(settings.kafka, f"sec-{uuid.uuid4().hex[:8]}")
    producer.begin_transaction()
    producer.produce(settings.topics.results, key=b"k", value=b"over-tls")
    producer.commit_transaction(30)

    consumer = clients.assign_only_consumer(settings.kafka)
    try:
        consumer.assign([TopicPartition(settings.topics.results, 0, 0)])
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while not values and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                values.append(msg.value())
        assert values == [b"over-tls"]
    finally:
        consumer.close()


def test_wrong_password_is_refused_with_an_authentication_error(
    secure_kafka: SecureKafka,
) -> None:
    errors = refused_admin(
        secure_kafka.client_config("bridge", password="not-the-password"),
        KafkaError._AUTHENTICATION,
    )

    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in errors.text()


def test_start_up_with_a_wrong_password_stops_at_once_naming_the_keys(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex[:12]}"
    settings = settings_for(secure_kafka, tmp_path, password=wrong)

    with pytest.raises(StartupError) as caught:
        ensure_topics(settings.kafka, settings.topics, timeout=30)

    message = str(caught.value)
    assert "refused the credentials of kafka.sasl_username=bridge" in message
    assert "kafka.sasl_password_file" in message
    assert wrong not in message


def test_user_of_another_mechanism_is_refused(secure_kafka: SecureKafka) -> None:
    # SCRAM-SHA-256 credentials were never created and the listener does not enable it.
    conf = {**secure_kafka.client_config("bridge"), "sasl.mechanism": "SCRAM-SHA-256"}

    errors = refused_admin(conf, KafkaError._AUTHENTICATION)

    assert "SCRAM-SHA-256" in errors.text()


def test_plaintext_client_is_refused_and_writes_nothing(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    settings = settings_for(secure_kafka, tmp_path)
    ensure_topics(settings.kafka, settings.topics)
    plaintext = {"bootstrap.servers": secure_kafka.bootstrap_servers}

    refused_admin(plaintext, KafkaError._ALL_BROKERS_DOWN)

    delivery: list[KafkaError | None] = []
    producer = Producer({**plaintext, "message.timeout.ms": 3000})
    producer.produce(
        settings.topics.input, value=b"in the clear", on_delivery=lambda e, _m: delivery.append(e)
    )
    producer.flush(15)
    assert len(delivery) == 1 and delivery[0] is not None
    assert delivery[0].code() == KafkaError._MSG_TIMED_OUT

    consumer = clients.assign_only_consumer(settings.kafka)
    try:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(settings.topics.input, 0), timeout=15
        )
        assert (low, high) == (0, 0)
    finally:
        consumer.close()


def test_client_trusting_another_ca_is_refused(secure_kafka: SecureKafka, tmp_path: Path) -> None:
    other = local_kafka.write_test_pki(tmp_path / "other-ca", name="unknown")
    conf = {**secure_kafka.client_config("bridge"), "ssl.ca.location": str(other.ca_file)}

    errors = refused_admin(conf, KafkaError._SSL)

    assert "certificate verify failed" in errors.text()


def test_start_up_trusting_another_ca_stops_naming_the_ca_setting(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    other = local_kafka.write_test_pki(tmp_path / "other-ca", name="unknown")
    settings = settings_for(secure_kafka, tmp_path, ssl_ca_location=str(other.ca_file))

    with pytest.raises(StartupError) as caught:
        ensure_topics(settings.kafka, settings.topics, timeout=30)

    assert "TLS handshake with the broker failed" in str(caught.value)
    assert "kafka.ssl_ca_location" in str(caught.value)


def _operator_command(cfg: dict[str, Any], tmp_path: Path, *args: str) -> Any:
    config = tmp_path / f"bridge-{uuid.uuid4().hex[:6]}.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICAREUS_BRIDGE__")}
    return subprocess.run(
        [str(BRIDGE), *args[:1], "--config", str(config), *args[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_operator_commands_reach_kafka_over_sasl_ssl(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    cfg = config_for(secure_kafka, tmp_path)
    settings = Settings(**cfg)
    ensure_topics(settings.kafka, settings.topics)

    replay = _operator_command(cfg, tmp_path, "replay", "--dry-run")
    archive = _operator_command(
        cfg, tmp_path, "archive", "--older-than", "0", "--out", str(tmp_path / "archive")
    )

    assert replay.returncode == 0, replay.stderr
    assert "0 dead letters" in replay.stdout
    assert archive.returncode == 0, archive.stderr
    assert "archived 0 results" in archive.stdout
    for done in (replay, archive):
        assert secure_kafka.users["bridge"] not in done.stdout + done.stderr


@pytest.mark.parametrize("command", ["replay", "archive"])
def test_operator_command_with_a_wrong_password_names_the_keys(
    secure_kafka: SecureKafka, tmp_path: Path, command: str
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex[:12]}"
    cfg = config_for(secure_kafka, tmp_path, password=wrong)
    out = str(tmp_path / "archive")
    args = ("--dry-run",) if command == "replay" else ("--older-than", "0", "--out", out)

    done = _operator_command(cfg, tmp_path, command, *args)

    assert done.returncode != 0
    assert "refused the credentials of kafka.sasl_username=bridge" in done.stderr
    assert wrong not in done.stdout + done.stderr
