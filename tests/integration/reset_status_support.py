"""What the `reset` and `status` command tests share: the Icareus simulator over HTTP, the
bridge as an `icareus-bridge run` process on topics of its own, CRM's side of Kafka, the
operator commands run as subprocesses, and drift made in Icareus behind the bridge's back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from icareus_bridge.config import Settings
from icareus_bridge.icareus.client import IcareusClient
from icareus_bridge.icareus.simulator import SimulatorAdmin, SimulatorHandle
from icareus_bridge.ops.state_lookup import KnownState, StateLookup, UnknownSubscription
from tests.e2e.harness import BRIDGE, Bridge, Crm, bridge_config, running_bridge, running_simulator

NO_FAULTS = {"latency_ms": 0, "jitter_ms": 0, "outage": False, "rates": {}, "script": []}
PERSONAL = ("Maria", "Georgiou", "maria@example.org")
WAIT_SECONDS = 60.0


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorHandle]:
    with running_simulator() as handle:
        yield handle


@pytest.fixture(scope="module")
def icareus(simulator: SimulatorHandle) -> Iterator[SimulatorAdmin]:
    admin = simulator.admin()
    admin.set_faults(**NO_FAULTS)
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


def cli(
    bridge: Bridge, *args: str, config: Path | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """One operator command against the bridge's configuration (its own process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICAREUS_BRIDGE__")}
    path = config if config is not None else bridge.config_path
    return subprocess.run(
        [str(BRIDGE), args[0], "--config", str(path), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def config_with(bridge: Bridge, workdir: Path, **overrides: dict[str, Any]) -> Path:
    """A copy of the bridge's configuration with some keys changed."""
    cfg = json.loads(json.dumps(bridge.config))
    for section, values in overrides.items():
        cfg[section].update(values)
    path = workdir / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def known_state(
    bridge: Bridge,
    subscription_id: str,
    done: Callable[[KnownState], bool],
    timeout: float = WAIT_SECONDS,
) -> KnownState:
    """The subscription's committed state, once `done` holds for it."""
    settings = Settings(**bridge.config)
    deadline = time.monotonic() + timeout
    last: KnownState | None = None
    with StateLookup(settings) as lookup:
        while time.monotonic() < deadline:
            try:
                last = lookup.find(subscription_id)
            except UnknownSubscription:
                last = None
            if last is not None and done(last):
                return last
            time.sleep(0.2)
    raise AssertionError(f"state of {subscription_id} not as wanted in time: {last}")


def users_registered(state: KnownState) -> bool:
    return bool(state.record.accounts) and all(a.user_id for a in state.record.accounts.values())


def holding(icareus: SimulatorAdmin, account_key: str) -> dict[str, Any] | None:
    """What the simulator holds for an account: products and device ids, or None."""
    for u in icareus.state()["users"]:
        if u["externalId"] == account_key:
            return {
                "products": sorted(u["products"]),
                "devices": sorted(d["deviceId"] for d in u["devices"]),
            }
    return None


def wait_for(check: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def drift(bridge: Bridge, calls: Callable[[IcareusClient], Any]) -> None:
    """Change Icareus behind the bridge's back, with signed calls of the Icareus API itself
    (what an operator in the Icareus console does)."""

    async def run() -> None:
        async with IcareusClient(Settings(**bridge.config).icareus) as client:
            await calls(client)

    asyncio.run(run())


__all__ = [
    "NO_FAULTS",
    "PERSONAL",
    "bridge",
    "cli",
    "config_with",
    "crm",
    "drift",
    "holding",
    "icareus",
    "known_state",
    "simulator",
    "users_registered",
    "wait_for",
]
