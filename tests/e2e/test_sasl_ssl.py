"""The bridge end to end over Kafka with TLS and SASL/SCRAM-SHA-512 (the session's
`secure_kafka`): `icareus-bridge run` configured by environment overrides, CRM producing and
reading back as a SCRAM user of its own; the password in no log line; a bridge with a wrong
password or trusting another CA stops at start with exit 4 and a message naming the keys."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from icareus_bridge.core.model import SubscriptionState
from icareus_bridge.icareus.simulator import SimulatorAdmin, SimulatorHandle
from icareus_bridge.service import EXIT_STARTUP
from tests.conftest import SecureKafka, local_kafka
from tests.e2e.harness import (
    BRIDGE,
    Bridge,
    Crm,
    CrmSubscription,
    TopicReader,
    box,
    bridge_config,
    service,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

VP1 = "ICAREUS-VP1"
ENV = "ICAREUS_BRIDGE__KAFKA__"
START_SECONDS = 90.0


def secure_environment(broker: SecureKafka, **overrides: str) -> dict[str, str]:
    """The kafka security settings of the bridge as environment overrides, the way a
    deployment would set them (the YAML file keeps its PLAINTEXT defaults)."""
    env = {
        f"{ENV}SECURITY_PROTOCOL": "SASL_SSL",
        f"{ENV}SASL_MECHANISM": "SCRAM-SHA-512",
        f"{ENV}SASL_USERNAME": "bridge",
        f"{ENV}SSL_CA_LOCATION": str(broker.ca_file),
    }
    env.update({f"{ENV}{k.upper()}": v for k, v in overrides.items()})
    return env


class SecureBridge(Bridge):
    """`icareus-bridge run` as the harness starts it (with its environment overrides), and its
    log."""

    def output(self) -> str:
        return "\n".join(
            path.read_text(errors="replace") for path in sorted(self.workdir.glob("bridge-*.log"))
        )


class SecureReader(TopicReader):
    """The harness's committed-records reader, over SASL_SSL."""

    def __init__(self, conf: dict[str, Any], topic: str) -> None:
        self.consumer = Consumer(
            {
                **conf,
                "group.id": f"crm-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        self.consumer.subscribe([topic])
        self.records = []


class SecureCrm(Crm):
    """CRM's side of Kafka as SCRAM user `crm`."""

    def __init__(self, conf: dict[str, Any], topics: dict[str, str]) -> None:
        self.topics = topics
        self.producer = Producer({**conf, "partitioner": "murmur2_random"})
        self.results = SecureReader(conf, topics["results"])
        self.dead_letters = SecureReader(conf, topics["dlq"])


@pytest.fixture(scope="module")
def password_file(secure_kafka: SecureKafka, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "kafka.password"
    path.write_text(secure_kafka.users["bridge"] + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def secure_bridge(
    secure_kafka: SecureKafka,
    simulator: SimulatorHandle,
    password_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SecureBridge]:
    process = SecureBridge(
        bridge_config(secure_kafka.bootstrap_servers, simulator.base_url),
        tmp_path_factory.mktemp("secure-bridge"),
        secure_environment(secure_kafka, sasl_password_file=str(password_file)),
    )
    try:
        process.start().wait_ready(START_SECONDS)
        yield process
    finally:
        process.stop_quietly()


@pytest.fixture(scope="module")
def secure_crm(secure_kafka: SecureKafka, secure_bridge: SecureBridge) -> Iterator[SecureCrm]:
    side = SecureCrm(secure_kafka.client_config("crm"), secure_bridge.topics)
    yield side
    side.close()


def test_new_subscription_is_provisioned_over_sasl_ssl(
    secure_kafka: SecureKafka,
    secure_bridge: SecureBridge,
    secure_crm: SecureCrm,
    icareus: SimulatorAdmin,
) -> None:
    sub = CrmSubscription(f"tls-{uuid.uuid4().hex[:6]}")
    ev = sub.act(
        "BECOME_SUBSCRIBER",
        state=SubscriptionState.EFFECTIVE,
        services=(service("s1", "BASIC-TV", VP1),),
        items=(box("SN-TLS", VP1),),
    )
    secure_crm.publish(ev)
    results = secure_crm.results_of(ev, 3)

    assert sorted((r.type.value, r.life_cycle_state.value) for r in results) == [
        ("ACTIVATE_PRODUCTS", "COMPLETED"),
        ("ADD_DEVICE", "COMPLETED"),
        ("ADD_USER", "COMPLETED"),
    ]
    users = [u for u in icareus.state()["users"] if u["externalId"] == sub.account(VP1)]
    assert len(users) == 1 and users[0]["products"] == ["1001"]
    assert [d["deviceId"] for d in users[0]["devices"]] == ["SN-TLS"]

    # The SCRAM password in no output: results (raw value, key, headers), the /metrics scrape,
    # the operator commands run with the password in their environment (the worst case), and,
    # after a clean stop, every log line of the run.
    password = secure_kafka.users["bridge"]
    raw = [
        (m.key() or b"") + (m.value() or b"") + b"".join(v or b"" for _, v in m.headers() or [])
        for m in secure_crm.results.records
    ]
    assert raw and not [r for r in raw if password.encode() in r]
    assert password not in secure_bridge.metrics()
    cli_env = {
        **secure_bridge.environment(),
        **secure_environment(secure_kafka, sasl_password=password),
    }
    cli_env.pop(f"{ENV}SASL_PASSWORD_FILE", None)  # the password itself, not its file
    for args in (
        ["status", "--subscription", sub.id],
        ["replay", "--dry-run"],
        ["replay", "--history"],
        ["status", "--help"],
        ["replay", "--help"],
    ):
        done = subprocess.run(
            [str(BRIDGE), *args, "--config", str(secure_bridge.config_path)],
            capture_output=True,
            text=True,
            env=cli_env,
            timeout=120,
        )
        assert done.returncode in (0, 1), (args, done.stdout, done.stderr)
        assert password not in done.stdout + done.stderr, args
    assert secure_bridge.terminate() == 0
    output = secure_bridge.output()
    assert '"topic ready"' in output  # the log really is this run's
    assert password not in output


def _refused_start(
    broker: SecureKafka, simulator: SimulatorHandle, workdir: Path, env: dict[str, str]
) -> str:
    process = SecureBridge(
        bridge_config(broker.bootstrap_servers, simulator.base_url), workdir, env
    )
    try:
        process.start()
        assert process.proc is not None
        code = process.proc.wait(timeout=START_SECONDS)
    finally:
        process.stop_quietly()
    output = process.output()
    assert code == EXIT_STARTUP, output
    return output


def test_run_with_a_wrong_password_exits_at_start_without_printing_it(
    secure_kafka: SecureKafka, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex[:12]}"

    output = _refused_start(
        secure_kafka, simulator, tmp_path, secure_environment(secure_kafka, sasl_password=wrong)
    )

    assert "refused the credentials of kafka.sasl_username=bridge" in output
    assert "kafka.sasl_password" in output
    assert wrong not in output and secure_kafka.users["bridge"] not in output


def test_run_trusting_another_ca_exits_at_start_naming_the_ca_setting(
    secure_kafka: SecureKafka, simulator: SimulatorHandle, password_file: Path, tmp_path: Path
) -> None:
    other = local_kafka.write_test_pki(tmp_path / "other-ca", name="unknown")
    env = secure_environment(
        secure_kafka, sasl_password_file=str(password_file), ssl_ca_location=str(other.ca_file)
    )

    output = _refused_start(secure_kafka, simulator, tmp_path, env)

    assert "TLS handshake with the broker failed" in output
    assert "kafka.ssl_ca_location" in output
    assert secure_kafka.users["bridge"] not in output
