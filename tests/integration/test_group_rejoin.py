"""A restart with other topic names and the same group ids (an upgrade that renames a topic)
plans and dispatches at once. Both stages are static group members; before the fix, the broker
handed the restarted member the assignment it held for the old topic names (KAFKA-12759), the
stages consumed nothing, and /readyz still said ready.

Each step is one `icareus-bridge run` process (both roles) stopped with SIGTERM or SIGKILL, the
next started at once: config A, then config B (other topic names), then config B again."""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from icareus_bridge.core.model import SubscriptionState
from icareus_bridge.icareus.simulator import SimulatorHandle
from tests.e2e.harness import (
    CODEC,
    WAIT_SECONDS,
    Bridge,
    CrmSubscription,
    bridge_config,
    running_simulator,
    service,
)
from tests.integration.planner_support import produce_events, read_topic

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorHandle]:
    with running_simulator() as handle:
        yield handle


def renamed(config: dict[str, Any]) -> dict[str, Any]:
    """The same bridge (group ids, instance ids, port) on other topic names."""
    other = copy.deepcopy(config)
    suffix = uuid.uuid4().hex[:6]
    other["topics"] = {name: f"{topic}-b{suffix}" for name, topic in config["topics"].items()}
    return other


def assigned_partitions(bridge: Bridge, logger: str) -> list[Any]:
    """The `partitions` of every 'partitions assigned' line one stage logged."""
    out = []
    log = bridge.workdir / f"bridge-{bridge.starts}.log"
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("logger") == logger and str(entry.get("event", "")).startswith(
            "partitions assigned"
        ):
            out.append(entry.get("partitions"))
    return out


def provision_one_subscription(bootstrap: str, topics: dict[str, str]) -> list[Any]:
    """A new subscriber published on `topics`; its results, once both requests have one.
    Reads with `assign()` (no group to join or leave), from the start of the results topic."""
    sub = CrmSubscription(f"rejoin-{uuid.uuid4().hex[:8]}")
    ev = sub.act(
        "BECOME_SUBSCRIBER",
        state=SubscriptionState.EFFECTIVE,
        services=(service("s1", "BASIC-TV", "ICAREUS-VP1"),),
    )
    produce_events(bootstrap, topics["input"], [ev])
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        records = read_topic(bootstrap, topics["results"], timeout=10)
        mine = [CODEC.decode_result(r.value) for r in records if r.value is not None]
        mine = [r for r in mine if r.event_id == ev.event_id]
        if len(mine) >= 2:
            return sorted(mine, key=lambda r: r.sequence)
        time.sleep(0.5)
    raise AssertionError(f"no 2 results of event {ev.event_id} within {WAIT_SECONDS} s")


def one_subscription_is_provisioned(bridge: Bridge, bootstrap: str) -> None:
    """A new subscriber on the bridge's current topics gets its two requests done."""
    results = provision_one_subscription(bootstrap, bridge.topics)
    assert [(r.type, r.life_cycle_state) for r in results] == [
        ("ADD_USER", "COMPLETED"),
        ("ACTIVATE_PRODUCTS", "COMPLETED"),
    ], bridge.log_tail()


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_a_restart_on_renamed_topics_with_the_same_group_ids_plans_and_dispatches(
    stop: str, kafka_bootstrap: str, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    config_a = bridge_config(kafka_bootstrap, simulator.base_url)
    config_b = renamed(config_a)
    steps = [("A", config_a), ("B", config_b), ("B again", config_b)]
    for n, (name, config) in enumerate(steps):
        workdir = tmp_path / f"step-{n}"
        workdir.mkdir()
        bridge = Bridge(config, workdir)
        try:
            bridge.start().wait_ready()
            one_subscription_is_provisioned(bridge, kafka_bootstrap)
            planner_views = assigned_partitions(bridge, "icareus_bridge.planner")
            dispatcher_views = assigned_partitions(bridge, "icareus_bridge.dispatcher")
            # Every partition of the renamed topics is owned by this, the only, process.
            assert planner_views and planner_views[-1] == [0, 1, 2], (name, planner_views)
            assert dispatcher_views and dispatcher_views[-1] == [0, 1, 2], (name, dispatcher_views)
            if stop == "SIGTERM":
                assert bridge.terminate() == 0, bridge.log_tail()
            else:
                bridge.kill()
        finally:
            bridge.stop_quietly()


def test_a_member_that_owns_none_of_its_topic_while_partitions_go_unowned_is_not_ready(
    kafka_bootstrap: str, make_topic: Any
) -> None:
    """The broker's side of the defect, and what readiness makes of it: a static member that
    comes back within its session on another topic is handed its old topic's partitions."""
    from confluent_kafka import Consumer

    from icareus_bridge.config import KafkaSettings
    from icareus_bridge.kafka.admin import OwnershipWatch

    old, new = make_topic("old", partitions=3), make_topic("new", partitions=3)
    group = f"rejoin-{uuid.uuid4().hex[:8]}"

    def member(topic: str) -> tuple[Consumer, list[str]]:
        seen: list[str] = []
        c = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": group,
                "group.instance.id": "same-instance",
                "partition.assignment.strategy": "range",
                "session.timeout.ms": 30000,
            }
        )
        c.subscribe([topic], on_assign=lambda _c, ps: seen.extend(tp.topic for tp in ps))
        return c, seen

    def poll_until_assigned(c: Consumer, seen: list[str]) -> None:
        for _ in range(300):
            c.poll(0.1)
            if seen:
                return
        raise AssertionError("no assignment")

    first, seen = member(old)
    poll_until_assigned(first, seen)
    first.close()
    second, seen = member(new)
    try:
        poll_until_assigned(second, seen)
        assert set(seen) == {old}  # the assignment of the old subscription, kept
        kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
        verdict = OwnershipWatch(kafka, group, new).check()
        assert verdict is not None and not verdict.ready
        assert f"partitions [0, 1, 2] of it have no owner in group {group}" in verdict.detail
        idle = OwnershipWatch(kafka, group, old).check()
        assert idle is not None and idle.ready
    finally:
        second.close()
