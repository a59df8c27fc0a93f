"""Fixtures of the end-to-end stories: one simulator and one bridge process per module, on
topics of their own; CRM's producer and readers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from icareus_bridge.config import Settings
from icareus_bridge.icareus.simulator import (
    SimulatorAdmin,
    SimulatorConfig,
    SimulatorHandle,
    start_simulator_thread,
)
from tests.e2e.harness import Bridge, Crm, bridge_config

NO_FAULTS = {"latency_ms": 0, "jitter_ms": 0, "outage": False, "rates": {}, "script": []}


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorHandle]:
    cfg = bridge_config("unused:9092", "http://127.0.0.1:1/api")
    handle = start_simulator_thread(SimulatorConfig.from_settings(Settings(**cfg)))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def icareus(simulator: SimulatorHandle) -> Iterator[SimulatorAdmin]:
    admin = simulator.admin()
    yield admin
    admin.close()


@pytest.fixture(scope="module")
def bridge(
    kafka_bootstrap: str, simulator: SimulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bridge]:
    workdir: Path = tmp_path_factory.mktemp("bridge")
    process = Bridge(bridge_config(kafka_bootstrap, simulator.base_url), workdir)
    process.start().wait_ready()
    yield process
    process.stop_quietly()


@pytest.fixture(scope="module")
def crm(kafka_bootstrap: str, bridge: Bridge) -> Iterator[Crm]:
    side = Crm(kafka_bootstrap, bridge.topics)
    yield side
    side.close()


@pytest.fixture(autouse=True)
def healthy_icareus(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every story starts and ends with an Icareus without injected faults."""
    if "icareus" not in request.fixturenames:
        yield
        return
    admin: SimulatorAdmin = request.getfixturevalue("icareus")
    admin.set_faults(**NO_FAULTS)
    yield
    admin.set_faults(**NO_FAULTS)
