"""Instance identity: `planner.instance_id` / `dispatcher.instance_id` (default: the host name)
give a process its `group.instance.id` and `transactional.id`. Two live processes with one id
fence each other, so a second one on the same host is refused at start, and a process that is
fenced anyway (same id on another host) ends with a message instead of staying up, "ready",
doing nothing."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from icareus_bridge.icareus.simulator import SimulatorHandle
from tests.e2e.harness import Bridge, bridge_config, free_port, running_simulator
from tests.integration.test_group_rejoin import provision_one_subscription

pytestmark = pytest.mark.kafka

EXIT_CONFIG = 2
EXIT_FAILED = 1


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorHandle]:
    with running_simulator() as handle:
        yield handle


def default_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration with the shipped default instance ids (empty: the host name)."""
    out = copy.deepcopy(config)
    out["planner"]["instance_id"] = ""
    out["dispatcher"]["instance_id"] = ""
    return out


def second_process(config: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(config)
    out["http"] = {"host": "127.0.0.1", "port": free_port()}
    return out


def provisioned(bridge: Bridge, bootstrap: str) -> None:
    results = provision_one_subscription(bootstrap, bridge.topics)
    assert [r.life_cycle_state for r in results] == ["COMPLETED", "COMPLETED"], bridge.log_tail()


def log_of(bridge: Bridge) -> str:
    return (bridge.workdir / f"bridge-{bridge.starts}.log").read_text(errors="replace")


def with_tmpdir(bridge: Bridge, tmpdir: Path) -> Bridge:
    """Start `bridge` with a TMPDIR of its own, as on another host with the same host name
    (a host's lock files are not shared)."""
    tmpdir.mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TMPDIR", str(tmpdir))
        bridge.start()
    return bridge


def test_a_second_process_on_the_same_host_with_the_default_ids_is_refused_at_start(
    kafka_bootstrap: str, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    config = default_identity(bridge_config(kafka_bootstrap, simulator.base_url))
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = Bridge(config, tmp_path / "first")
    second = Bridge(second_process(config), tmp_path / "second")
    try:
        first.start().wait_ready()
        second.start()
        assert second.proc is not None
        assert second.proc.wait(timeout=60) == EXIT_CONFIG, second.log_tail()
        text = log_of(second)
        assert "planner.instance_id" in text and "ICAREUS_BRIDGE__PLANNER__INSTANCE_ID" in text
        assert "already in use" in text
        # The first one was not disturbed: still ready, still working.
        assert first.ready()
        provisioned(first, kafka_bootstrap)
        # Its ids are stable: a restart (the lock dies with the process) takes them again.
        assert first.terminate() == 0
        again = Bridge(config, tmp_path / "first")
        again.starts = first.starts
        again.start().wait_ready()
        provisioned(again, kafka_bootstrap)
        assert again.terminate() == 0
    finally:
        first.stop_quietly()
        second.stop_quietly()


def test_a_process_fenced_by_another_with_its_ids_exits_naming_the_setting(
    kafka_bootstrap: str, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    config = bridge_config(kafka_bootstrap, simulator.base_url)
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = with_tmpdir(Bridge(config, tmp_path / "first"), tmp_path / "tmp-first")
    second = Bridge(second_process(config), tmp_path / "second")
    try:
        first.wait_ready()
        with_tmpdir(second, tmp_path / "tmp-second").wait_ready()
        assert first.proc is not None
        assert first.proc.wait(timeout=60) == EXIT_FAILED, first.log_tail()
        text = log_of(first)
        ids = {
            "planner": config["planner"]["instance_id"],
            "dispatcher": config["dispatcher"]["instance_id"],
        }
        named = re.findall(r"(planner|dispatcher) instance '([^']+)' stopped on a fatal", text)
        assert named, first.log_tail()
        assert all(ids[role] == instance for role, instance in named)
        role = named[0][0]
        assert f"{role}.instance_id (ICAREUS_BRIDGE__{role.upper()}__INSTANCE_ID)" in text
        provisioned(second, kafka_bootstrap)
    finally:
        first.stop_quietly()
        second.stop_quietly()
