"""Icareus over HTTPS: the simulator serves TLS with a test CA made here (trustme), the client
verifies it against `icareus.ca_file` on both HTTP libraries. A certificate the bridge cannot
verify (another CA, no ca_file, another host name) is the bridge's own fault, like a refused
signature: never a rejection for CRM; the dispatcher on a real broker holds and retries the
request, then dead-letters it `TLS_FAILED` and parks its subscription, readiness false with a
detail naming the base_url and the verification failure."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from confluent_kafka import Producer

from icareus_bridge.codec import Codec
from icareus_bridge.config import ConfigError, IcareusSettings, Settings, load_settings
from icareus_bridge.core.model import ProvisioningRequest, SubscriberProfile, SubscriptionRecord
from icareus_bridge.core.plan import plan
from icareus_bridge.icareus.client import IcareusClient
from icareus_bridge.icareus.errors import (
    TLS_CERTIFICATE_UNVERIFIED,
    PermanentIcareusError,
    TlsIcareusError,
    TransientIcareusError,
)
from icareus_bridge.icareus.simulator import (
    SimulatorAdmin,
    SimulatorConfig,
    SimulatorHandle,
    SimulatorTls,
    start_simulator_process,
    start_simulator_thread,
)
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
from tests.integration.test_icareus_auth import new_subscriber

KEY = "https-organization-key"
MAX_ATTEMPTS = 3
TLS_METRIC = "icareus_bridge_icareus_tls_failures_total"
AUTH_METRIC = "icareus_bridge_icareus_auth_failures_total"
BACKENDS = ("aiohttp", "httpx")
PRODUCTS = ("1001", "1002")
CODEC = Codec()


@dataclass(frozen=True)
class Pki:
    """PEM files of a test CA, a server certificate it signed for 127.0.0.1 and localhost, a
    client certificate of another CA, a CA Icareus' certificate does not come from, and a
    certificate of the right CA for localhost only."""

    ca: Path
    server: SimulatorTls
    other_ca: Path
    wrong_host: SimulatorTls
    client_ca: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other, client_ca = trustme.CA(), trustme.CA(), trustme.CA()

    def server(name: str, *hosts: str) -> SimulatorTls:
        cert = ca.issue_cert(*hosts)
        cert.private_key_and_cert_chain_pem.write_to_path(str(d / f"{name}.pem"))
        cert.private_key_pem.write_to_path(str(d / f"{name}.key"))
        return SimulatorTls(d / f"{name}.pem", d / f"{name}.key")

    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    other.cert_pem.write_to_path(str(d / "other-ca.pem"))
    client_ca.cert_pem.write_to_path(str(d / "client-ca.pem"))
    client = client_ca.issue_cert("icareus-bridge")
    client.cert_chain_pems[0].write_to_path(str(d / "client.pem"))
    client.private_key_pem.write_to_path(str(d / "client.key"))
    return Pki(
        ca=d / "ca.pem",
        server=server("server", "127.0.0.1", "localhost"),
        other_ca=d / "other-ca.pem",
        wrong_host=server("wrong-host", "localhost"),  # called as 127.0.0.1
        client_ca=d / "client-ca.pem",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
    )


def icareus_settings(base_url: str, backend: str = "aiohttp", **tls: Any) -> IcareusSettings:
    return Settings(
        icareus={
            "base_url": base_url,
            "key": KEY,
            "http_backend": backend,
            "connect_timeout_seconds": 2.0,
            "retry": {
                "max_attempts": MAX_ATTEMPTS,
                "max_total_seconds": 5.0,
                "initial_backoff_seconds": 0.02,
                "max_backoff_seconds": 0.05,
                "jitter_seconds": 0.0,
            },
            **{k: str(v) for k, v in tls.items()},
        }
    ).icareus


@pytest.fixture(scope="module")
def https_simulator(pki: Pki) -> Iterator[SimulatorHandle]:
    config = SimulatorConfig.from_settings(Settings(icareus={"key": KEY}), extra_products=PRODUCTS)
    handle = start_simulator_thread(config, tls=pki.server, ca_file=pki.ca)
    yield handle
    handle.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_client_provisions_over_https_verifying_icareus_against_ca_file(
    https_simulator: SimulatorHandle, pki: Pki, backend: str
) -> None:
    assert https_simulator.base_url.startswith("https://127.0.0.1:")
    settings = icareus_settings(https_simulator.base_url, backend, ca_file=pki.ca)
    account = f"N-{uuid.uuid4().hex[:8]}-VP1"
    profile = SubscriberProfile(first_name="Eleni", last_name="Kyriakou")

    async def story() -> tuple[str | None, frozenset[str]]:
        async with IcareusClient(settings) as client:
            added = await client.add_user(account, profile, idempotency_key=f"{account}-1")
            assert added.user_id is not None
            await client.activate_products(
                added.user_id, ["1002", "1001"], idempotency_key=f"{account}-2"
            )
            found = await client.get_user(external_id=account)
            assert found.user is not None
            return added.user_id, found.user.products

    user_id, products = asyncio.run(story())
    assert products == {"1001", "1002"}
    with https_simulator.admin() as admin:  # the admin API is on the same TLS listener
        users = {u["externalId"]: u for u in admin.state()["users"]}
    assert users[account]["userId"] == user_id


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("trust", "served", "why"),
    [
        ("other_ca", "server", "unable to get local issuer certificate"),
        (None, "server", "unable to get local issuer certificate"),
        ("ca", "wrong_host", "IP address mismatch"),
    ],
    ids=["certificate-of-another-ca", "no-ca-file", "certificate-for-another-host"],
)
def test_a_certificate_the_bridge_cannot_verify_is_refused_retried_and_never_a_rejection(
    pki: Pki, backend: str, trust: str | None, served: str, why: str
) -> None:
    config = SimulatorConfig.from_settings(Settings(icareus={"key": KEY}), extra_products=PRODUCTS)
    tls: SimulatorTls = getattr(pki, served)
    with start_simulator_thread(config, tls=tls, ca_file=pki.ca) as sim:
        settings = icareus_settings(
            sim.base_url, backend, **({"ca_file": getattr(pki, trust)} if trust else {})
        )
        refused: list[TlsIcareusError] = []
        retries: list[str] = []

        async def call() -> None:
            async with IcareusClient(
                settings, on_retry=retries.append, on_auth_failure=refused.append
            ) as client:
                await client.add_user("N-TLS-VP1", idempotency_key="tls-1")

        with pytest.raises(TlsIcareusError) as caught:
            asyncio.run(call())
        error = caught.value
        assert isinstance(error, TransientIcareusError)
        assert not isinstance(error, PermanentIcareusError)
        assert error.code == TLS_CERTIFICATE_UNVERIFIED and error.reason == "tls"
        assert sim.base_url in str(error) and why in str(error)
        assert "icareus.ca_file" in str(error)
        assert error.attempts == MAX_ATTEMPTS and len(refused) == MAX_ATTEMPTS
        assert retries == ["tls"] * (MAX_ATTEMPTS - 1)
        # Nothing crossed an unverified link (asked by a name every certificate here holds).
        with SimulatorAdmin(f"https://localhost:{sim.port}/_sim", ca_file=pki.ca) as admin:
            assert admin.stats()["calls"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_client_certificate_is_presented_where_icareus_requires_one(
    pki: Pki, backend: str
) -> None:
    config = SimulatorConfig.from_settings(Settings(icareus={"key": KEY}), extra_products=PRODUCTS)
    tls = SimulatorTls(pki.server.cert_file, pki.server.key_file, pki.client_ca)
    with start_simulator_thread(config, tls=tls, ca_file=pki.ca) as sim:
        with_cert = icareus_settings(
            sim.base_url,
            backend,
            ca_file=pki.ca,
            client_cert_file=pki.client_cert,
            client_key_file=pki.client_key,
        )
        without = icareus_settings(sim.base_url, backend, ca_file=pki.ca)

        async def lookup(settings: IcareusSettings) -> None:
            async with IcareusClient(settings) as client:
                await client.get_user(external_id="N-MTLS-VP1")

        asyncio.run(lookup(with_cert))
        # Under TLS 1.3 the server refuses a missing client certificate after the client's
        # handshake is over: the client sees the connection closed (reset), a transient
        # failure, so never a rejection either.
        with pytest.raises(TransientIcareusError) as caught:
            asyncio.run(lookup(without))
        assert not isinstance(caught.value, PermanentIcareusError)


def test_the_simulator_cli_serves_https_with_the_given_certificate(pki: Pki) -> None:
    sim = start_simulator_process(
        key=KEY, tls=pki.server, ca_file=pki.ca, latency_ms=0, jitter_ms=0
    )
    try:
        assert sim.base_url.startswith("https://127.0.0.1:")
        settings = icareus_settings(sim.base_url, ca_file=pki.ca)

        async def call() -> str | None:
            async with IcareusClient(settings) as client:
                return (await client.add_user("N-CLI-VP1", idempotency_key="cli-1")).user_id

        assert asyncio.run(call()) == "100001"
        with sim.admin() as admin:
            assert admin.stats()["effects"] == 1
    finally:
        sim.stop()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--tls-cert", "{server}"], "--tls-key"),
        (["--tls-cert", "{missing}", "--tls-key", "{key}"], "--tls-cert"),
        (["--tls-client-ca", "{ca}"], "--tls-client-ca"),
    ],
)
def test_the_simulator_cli_refuses_unusable_tls_arguments_naming_them(
    pki: Pki, args: list[str], named: str, tmp_path: Path
) -> None:
    paths = {
        "server": pki.server.cert_file,
        "key": pki.server.key_file,
        "ca": pki.ca,
        "missing": tmp_path / "absent.pem",
    }
    argv = [a.format(**paths) for a in args]
    done = subprocess.run(
        [sys.executable, "-m", "icareus_bridge.cli", "simulator", "--port", "0", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert named in done.stderr


@pytest.mark.parametrize(
    ("icareus", "named"),
    [
        ({"base_url": "http://127.0.0.1:8085/api", "ca_file": "{ca}"}, "icareus.ca_file"),
        ({"ca_file": "{missing}"}, "icareus.ca_file"),
        ({"ca_file": "{not_pem}"}, "icareus.ca_file"),
        ({"ca_file": "{key_only}"}, "icareus.ca_file"),
        ({"client_cert_file": "{client}"}, "icareus.client_key_file"),
        (
            {"client_cert_file": "{client}", "client_key_file": "{ca}"},
            "icareus.client_cert_file",
        ),
    ],
    ids=["ca-file-on-http", "missing", "not-pem", "no-certificate", "cert-no-key", "bad-key"],
)
def test_tls_settings_that_cannot_work_stop_the_start_naming_the_key(
    pki: Pki, tmp_path: Path, icareus: dict[str, str], named: str
) -> None:
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(b"\x30\x82\x01\x0a")
    paths = {
        "ca": pki.ca,
        "missing": tmp_path / "absent.pem",
        "not_pem": not_pem,
        "key_only": pki.client_key,
        "client": pki.client_cert,
    }
    section = {"base_url": "https://icareus.example/api", "key_file": str(pki.client_key)}
    section.update({k: v.format(**paths) for k, v in icareus.items()})
    config = tmp_path / "bridge.yaml"
    config.write_text(yaml.safe_dump({"icareus": section}), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert named in str(caught.value)


# --- the dispatcher on a real broker --------------------------------------------------------


@dataclass
class Rig:
    settings: Settings
    sim: SimulatorHandle
    producer: Producer
    running: list[Dispatcher] = field(default_factory=list)
    states: dict[str, SubscriptionRecord | None] = field(default_factory=dict)

    def start(self, ca_file: Path) -> Dispatcher:
        icareus = self.settings.icareus.model_copy(update={"ca_file": ca_file})
        settings = self.settings.model_copy(update={"icareus": icareus})
        return start_dispatcher(settings, self.running)

    def stop(self) -> None:
        stop_dispatchers(self.running)

    def crm(self, sub_id: str, version: int, products: list[str]) -> list[ProvisioningRequest]:
        ev = new_subscriber(sub_id, version, products)
        decision = plan(self.states.get(sub_id), ev, self.settings.provider)
        self.states[sub_id] = decision.state
        for request in decision.requests:
            self.producer.produce(
                self.settings.topics.requests,
                key=sub_id.encode(),
                value=CODEC.encode_request(request),
            )
        self.producer.flush(10)
        return list(decision.requests)


@pytest.fixture
def rig(kafka_bootstrap: str, make_topic: Callable[..., str], pki: Pki) -> Iterator[Rig]:
    unique = uuid.uuid4().hex[:8]
    config = SimulatorConfig.from_settings(Settings(icareus={"key": KEY}), extra_products=PRODUCTS)
    sim = start_simulator_thread(config, tls=pki.server, ca_file=pki.ca)
    settings = Settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "partitions": 2},
        topics={
            "input": make_topic("crm", partitions=2),
            "requests": make_topic("requests", partitions=2),
            "results": make_topic("results", partitions=2),
            "dlq": make_topic("dlq", partitions=1),
            "state": make_topic("state", partitions=2, compacted=True),
        },
        icareus={
            "base_url": sim.base_url,
            "key": KEY,
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
            "distributors": [{"code": "VP1"}],
            "service_mapping": {"BASIC-TV": "1001", "SPORTS": "1002"},
        },
        dispatcher={
            "group_id": f"dispatcher-{unique}",
            "instance_id": f"tls-{unique}",
            "shutdown_grace_seconds": 10,
            "commit_interval_ms": 50,
        },
    )
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "partitioner": "murmur2_random"})
    r = Rig(settings=settings, sim=sim, producer=producer)
    try:
        yield r
    finally:
        abandon_dispatchers(r.running)
        sim.stop()


@pytest.mark.kafka
def test_an_unverified_icareus_certificate_is_an_outage_of_the_bridge_not_a_rejection(
    rig: Rig, pki: Pki
) -> None:
    first = rig.crm("sub-tls", 1, ["BASIC-TV"])
    dispatcher = rig.start(ca_file=pki.other_ca)
    bootstrap = rig.settings.kafka.bootstrap_servers
    dlq = TopicReader(bootstrap, rig.settings.topics.dlq)
    results = TopicReader(bootstrap, rig.settings.topics.results)

    # Readiness goes false at the first refused handshake, naming the URL and the failure.
    wait_for(lambda: metric(dispatcher.metrics, TLS_METRIC) >= 1, "a counted TLS failure")
    check = dispatcher.icareus_check()
    assert check["ready"] is False and dispatcher.readiness.ready is False
    assert TLS_CERTIFICATE_UNVERIFIED in check["detail"]
    assert rig.sim.base_url in check["detail"]
    assert "unable to get local issuer certificate" in check["detail"]
    assert metric(dispatcher.metrics, AUTH_METRIC) == 0  # not the organization key

    # Held and retried under the budget, then dead-lettered TLS_FAILED, the key parked.
    dead = dlq.until(lambda rs: len(rs) >= len(first))
    assert [CODEC.decode_request(m.value()).request_id for m in dead] == [
        r.request_id for r in first
    ]
    assert header(dead[0], "dlq.reason") == "TLS_FAILED"
    assert header(dead[0], "dlq.stage") == "dispatch"
    assert header(dead[0], "dlq.attempts") == str(MAX_ATTEMPTS)
    assert rig.sim.base_url in (header(dead[0], "dlq.error.message") or "")
    assert {header(m, "dlq.reason") for m in dead[1:]} == {"PARKED"}
    assert {header(m, PARKED_BEHIND) for m in dead[1:]} == {first[0].request_id}

    # Nothing reached CRM and nothing reached Icareus.
    results.read(2.0)
    assert results.records == []
    with rig.sim.admin() as admin:
        assert admin.stats()["calls"] == 0
    dead_letters = re.search(
        r'^icareus_bridge_dead_letters_total\{reason="TLS_FAILED",stage="dispatch"\} (\S+)$',
        dispatcher.metrics.render().decode(),
        re.MULTILINE,
    )
    assert dead_letters is not None and float(dead_letters.group(1)) == 1
    rig.stop()

    # The right CA configured and the bridge restarted: ready again, and the dead letters,
    # put back in their order as replay does, complete.
    fixed = rig.start(ca_file=pki.ca)
    wait_for(lambda: fixed.icareus_check()["ready"], "Icareus readiness with the right CA")
    put_back(rig.producer, rig.settings.topics.requests, dead)
    done = results.until(lambda rs: len(rs) >= len(dead))
    rig.stop()
    got = [CODEC.decode_result(m.value()) for m in done]
    assert [r.request_id for r in got] == [CODEC.decode_request(m.value()).request_id for m in dead]
    assert {r.life_cycle_state.value for r in got} == {"COMPLETED"}
    assert metric(fixed.metrics, TLS_METRIC) == 0  # exported while all is well
    dlq.close()
    results.close()
