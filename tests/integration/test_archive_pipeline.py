"""The archive of what the bridge itself wrote: `icareus-bridge run` (planner and dispatcher)
against the simulator provisions CRM subscriptions; `archive --older-than 0` exports every
result with the request the planner wrote for it, record for record, and `archive --delete`
removes them from the live topics while the bridge goes on working."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from icareus_bridge.codec import default_codec
from icareus_bridge.config import Settings
from icareus_bridge.core.model import SubscriptionState
from icareus_bridge.core.plan import plan
from icareus_bridge.icareus.simulator import (
    SimulatorConfig,
    SimulatorHandle,
    start_simulator_thread,
)
from tests.e2e.harness import Bridge, Crm, CrmSubscription, box, bridge_config, service
from tests.integration.archive_support import as_request, as_result, cli, manifest, read_back
from tests.integration.planner_support import read_topic

VP1, VP3 = "ICAREUS-VP1", "ICAREUS-VP3"


@pytest.fixture
def simulator() -> Iterator[SimulatorHandle]:
    cfg = bridge_config("unused:9092", "http://127.0.0.1:1/api")
    handle = start_simulator_thread(SimulatorConfig.from_settings(Settings(**cfg)))
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def bridge(kafka_bootstrap: str, simulator: SimulatorHandle, tmp_path: Path) -> Iterator[Bridge]:
    process = Bridge(bridge_config(kafka_bootstrap, simulator.base_url), tmp_path)
    try:
        process.start().wait_ready()
        yield process
    finally:
        process.stop_quietly()


@pytest.fixture
def crm(kafka_bootstrap: str, bridge: Bridge) -> Iterator[Crm]:
    side = Crm(kafka_bootstrap, bridge.topics)
    try:
        yield side
    finally:
        side.close()


def _joined(crm_sub: CrmSubscription, crm: Crm, bridge: Bridge) -> None:
    """BECOME_SUBSCRIBER with a box and BASIC-TV in the living room and SPORTS in the kids'
    room (where it is not allowed); waits for every result the plan says will come."""
    ev = crm_sub.act(
        "BECOME_SUBSCRIBER",
        state=SubscriptionState.EFFECTIVE,
        services=(service("s1", "BASIC-TV", VP1), service("s2", "SPORTS", VP3)),
        items=(box(f"SN-{crm_sub.id}", VP1),),
    )
    decision = plan(None, ev, Settings(**bridge.config).provider)
    n = len(decision.requests) + len(decision.rejections)
    assert n >= 3, decision
    crm.publish(ev)
    crm.results_of(ev, n)


def _lows(bootstrap: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "archive-lows"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] for p in parts
        }
    finally:
        c.close()


def next_offsets_of(out: Path) -> dict[int, int]:
    return {int(k): v for k, v in manifest(out)["next_offsets"].items()}


def _wait_committed(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    from confluent_kafka import Consumer

    from tests.integration.planner_support import wait_for

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})  # never subscribes

    def caught_up() -> bool:
        tps = c.committed([TopicPartition(topic, p) for p in offsets], timeout=10)
        return all(tp.offset >= offsets[tp.partition] for tp in tps)

    try:
        wait_for(caught_up, 60, f"{group} committed on {topic} up to {offsets}")
    finally:
        c.close()


def test_archive_exports_what_the_bridge_wrote_and_delete_leaves_it_working(
    kafka_bootstrap: str, bridge: Bridge, crm: Crm, tmp_path: Path
) -> None:
    subs = [CrmSubscription(f"arch-{i}") for i in range(4)]
    for s in subs:
        # VP1: user, box, BASIC-TV; VP3 (Kids room) refuses SPORTS or registers a user.
        _joined(s, crm, bridge)
    topics = bridge.topics
    codec = default_codec()
    results = read_topic(kafka_bootstrap, topics["results"])
    requests = {
        r.request_id: r
        for r in (
            codec.decode_request(m.value or b"")
            for m in read_topic(kafka_bootstrap, topics["requests"])
        )
    }
    assert results
    out = tmp_path / "archive"

    done = cli("archive", "--config", str(bridge.config_path), "--older-than", "0",
               "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr

    archived = {(r["result_partition"], r["result_offset"]): r for r in read_back(out)}
    assert len(archived) == len(results)
    for m in results:
        rec = archived[(m.partition, m.offset)]
        result = codec.decode_result(m.value or b"")
        assert as_result(rec["result"]) == result
        if result.attempts == 0:
            assert rec["request"] is None
        else:
            assert as_request(rec["request"]) == requests[result.request_id]
    add_users = [r for r in archived.values() if r["result"]["type"] == "ADD_USER"]
    assert add_users and all(r["request"]["profile"] is not None for r in add_users)

    found = cli("archive", "search", "--subscription", "arch-2", "--json", str(out))
    assert found.returncode == 0, found.stderr
    rows = [json.loads(line) for line in found.stdout.splitlines()]
    assert rows and {r["subscription_id"] for r in rows} == {"arch-2"}
    assert sorted(r["request_id"] for r in rows) == sorted(
        codec.decode_result(m.value or b"").request_id
        for m in results
        if codec.decode_result(m.value or b"").subscription_id == "arch-2"
    )

    # Once the bridge's groups have committed past everything (it is idle), deletion reaches
    # the archived offsets, and the bridge goes on working on what comes next.
    _wait_committed(kafka_bootstrap, bridge.config["planner"]["group_id"], topics["results"],
                    next_offsets_of(out))
    deleted = cli("archive", "--config", str(bridge.config_path), "--older-than", "0",
                  "--out", str(out), "--delete")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    next_offsets = next_offsets_of(out)
    lows = _lows(kafka_bootstrap, topics["results"])
    for p, low in lows.items():
        assert low <= next_offsets.get(p, 0)
    assert sum(lows.values()) > 0, deleted.stdout
    assert sum(_lows(kafka_bootstrap, topics["requests"]).values()) > 0, deleted.stdout

    late = CrmSubscription("arch-late")
    _joined(late, crm, bridge)
    assert bridge.ready()
