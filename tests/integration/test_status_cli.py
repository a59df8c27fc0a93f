"""`icareus-bridge status` against a real broker, the simulator over HTTP and a running bridge:
the JSON of a known subscription, a parked key (an Icareus outage longer than the retry budget)
and what reset says about it, a subscription whose records are not in the murmur2 partition,
unknown ids and an unreachable broker."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from icareus_bridge.core.model import SubscriptionState
from icareus_bridge.icareus.simulator import SimulatorAdmin
from icareus_bridge.kafka.scan import default_partition
from tests.e2e.harness import CODEC, Bridge, Crm, CrmSubscription, box, free_port, header, service
from tests.integration.reset_status_support import (
    NO_FAULTS,
    PERSONAL,
    bridge,
    cli,
    config_with,
    crm,
    icareus,
    known_state,
    simulator,
    users_registered,
)

pytestmark = [pytest.mark.kafka]
__all__ = ["bridge", "crm", "icareus", "simulator"]  # module fixtures

VP1, VP2 = "ICAREUS-VP1", "ICAREUS-VP2"
EFFECTIVE = SubscriptionState.EFFECTIVE


def status(bridge: Bridge, sid: str) -> dict[str, Any]:
    result = cli(bridge, "status", "--subscription", sid)
    assert result.returncode == 0, result.stderr
    assert not any(p in result.stdout for p in PERSONAL)
    assert bridge.config["icareus"]["key"] not in result.stdout
    print(result.stdout)
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def test_status_of_a_known_subscription(bridge: Bridge, crm: Crm) -> None:
    sub = CrmSubscription("known")
    first = sub.act(
        "BECOME_SUBSCRIBER",
        state=EFFECTIVE,
        services=(service("s1", "BASIC-TV", VP1), service("s2", "SPORTS", VP2)),
        items=(box("SN-K1", VP1),),
    )
    second = sub.act("ADD_SERVICE", services=sub.services_with(service("s3", "MOVIES", VP1)))
    crm.publish(first, second)
    crm.results_of(second, 1)
    state = known_state(
        bridge, sub.id, lambda s: users_registered(s) and s.record.last_version == 2
    )

    doc = status(bridge, sub.id)

    assert doc["subscription_id"] == sub.id
    assert doc["subscription_number"] == sub.snapshot.number
    assert doc["subscription_state"] == "EFFECTIVE"
    assert doc["last_applied_version"] == 2
    assert doc["last_applied_at"].endswith("Z")
    assert doc["last_event_id"] == second.event_id
    assert [
        (a["distributor"], a["account_key"], a["products"], a["devices"], a["registered"])
        for a in doc["accounts"]
    ] == [
        (
            VP1,
            sub.account(VP1),
            ["1001", "1003"],
            [{"device_id": "SN-K1", "device_type": "SET_TOP_BOX"}],
            True,
        ),
        (VP2, sub.account(VP2), ["1002"], [], True),
    ]
    assert [a["user_id"] for a in doc["accounts"]] == [
        state.record.accounts[VP1].user_id,
        state.record.accounts[VP2].user_id,
    ]
    assert doc["parked"] is False and doc["parked_behind"] is None
    assert doc["dead_letters"] == 0
    # Newest first: the ADD_SERVICE's activation, then the first event's five results.
    results = doc["last_results"]
    assert results[0]["type"] == "ACTIVATE_PRODUCTS" and results[0]["event_id"] == second.event_id
    assert sorted((r["type"], r["state"], r["error_code"]) for r in results) == sorted(
        [("ADD_USER", "COMPLETED", None)] * 2
        + [("ADD_DEVICE", "COMPLETED", None)]
        + [("ACTIVATE_PRODUCTS", "COMPLETED", None)] * 3
    )
    assert all(r["executed_at"].endswith("Z") for r in results)


def test_a_parked_key_is_shown_with_the_request_behind_it_and_reset_is_refused(
    bridge: Bridge, crm: Crm, icareus: SimulatorAdmin
) -> None:
    sub = CrmSubscription("parked")
    icareus.set_faults(outage=True)
    try:
        ev = sub.act("BECOME_SUBSCRIBER", state=EFFECTIVE, services=(service("s1", "NEWS", VP1),))
        crm.publish(ev)
        letters = crm.dead_letters.until(
            lambda rs: any(m.key() == sub.id.encode() for m in rs), timeout=60
        )
    finally:
        icareus.set_faults(**NO_FAULTS)
    mine = [m for m in letters if m.key() == sub.id.encode()]
    first = CODEC.decode_request(mine[0].value())
    assert header(mine[0], "dlq.reason") == "RETRIES_EXHAUSTED"
    known_state(bridge, sub.id, lambda s: s.parked is not None)

    doc = status(bridge, sub.id)

    assert doc["parked"] is True
    assert doc["parked_behind"] == first.request_id
    assert doc["parked_at"].endswith("Z")
    assert doc["dead_letters"] >= 1
    assert doc["dead_letters_by_reason"]["dispatch:RETRIES_EXHAUSTED"] == 1
    refused = cli(bridge, "reset", "--subscription", sub.id)
    assert refused.returncode == 1
    assert f"parked behind request {first.request_id}" in refused.stderr
    assert "replay" in refused.stderr


def test_a_subscription_outside_its_murmur2_partition_is_found(bridge: Bridge, crm: Crm) -> None:
    # CRM may partition otherwise: the state follows the input record's partition.
    sub = CrmSubscription(f"elsewhere-{uuid.uuid4().hex[:6]}")
    ev = sub.act("BECOME_SUBSCRIBER", state=EFFECTIVE, services=(service("s1", "KIDS", VP2),))
    partitions = bridge.config["kafka"]["partitions"]
    other = (default_partition(sub.id.encode(), partitions) + 1) % partitions
    producer = Producer({"bootstrap.servers": bridge.config["kafka"]["bootstrap_servers"]})
    producer.produce(
        bridge.topics["input"], key=sub.id.encode(), value=CODEC.encode_event(ev), partition=other
    )
    producer.flush(10)
    crm.results_of(ev, 2)
    known_state(bridge, sub.id, users_registered)

    doc = status(bridge, sub.id)

    assert doc["kafka"]["state_partition"] == other
    assert [a["products"] for a in doc["accounts"]] == [["1004"]]
    assert sorted(r["type"] for r in doc["last_results"]) == ["ACTIVATE_PRODUCTS", "ADD_USER"]


def test_an_unknown_subscription_exits_2_and_says_so(bridge: Bridge) -> None:
    result = cli(bridge, "status", "--subscription", "never-seen")

    assert result.returncode == 2
    assert "unknown subscription 'never-seen'" in result.stderr
    assert result.stdout == ""


def test_an_unreachable_broker_exits_4_naming_the_address(bridge: Bridge, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = config_with(bridge, tmp_path, kafka={"bootstrap_servers": address})

    result = cli(bridge, "status", "--subscription", "any", config=config, timeout=60)

    assert result.returncode == 4
    assert f"Kafka unreachable at {address}" in result.stderr


def test_librdkafka_murmur2_puts_keys_where_default_partition_says(
    kafka_bootstrap: str, make_topic: Any
) -> None:
    topic = make_topic("murmur2", partitions=7)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "partitioner": "murmur2_random"})
    placed: dict[bytes, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        assert err is None
        placed[msg.key()] = msg.partition()

    keys = [f"sub-{i}-{'x' * (i % 5)}".encode() for i in range(200)]
    for key in keys:
        producer.produce(topic, key=key, value=b"v", on_delivery=delivered)
    assert producer.flush(15) == 0

    assert placed == {k: default_partition(k, 7) for k in keys}
