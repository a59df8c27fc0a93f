"""Fixtures of the end-to-end stories: one simulator and one bridge process per module, on
topics of their own; CRM's producer and readers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from icareus_bridge.icareus.simulator import SimulatorAdmin, SimulatorHandle
from tests.e2e.harness import Bridge, Crm, bridge_config, running_bridge, running_simulator

NO_FAULTS = {"latency_ms": 0, "jitter_ms": 0, "outage": False, "rates": {}, "script": []}


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorHandle]:
    with running_simulator() as handle:
        yield handle


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
    with running_bridge(bridge_config(kafka_bootstrap, simulator.base_url), workdir) as process:
        yield process


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
