"""Hostile input through the planner's whole step, in the normal suite: 20,000 seeded inputs
(random bytes, mutated events and results, schema-valid monsters) plus hypothesis over raw
bytes and edited events. Every input is planned, skipped or dead-lettered with a reason; none
raises (`tests/fuzz/hostile.py` checks each one). `make drills` runs 1,000,000."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icareus_bridge.codec import EVENT
from icareus_bridge.kafka.consumer import ConsumedRecord
from tests.fuzz.hostile import SETTINGS, Hostile, event_dict, monster_dict

SEEDED_INPUTS = 20_000


def test_twenty_thousand_seeded_hostile_inputs_are_each_planned_or_dead_lettered() -> None:
    hostile = Hostile(seed=20261201)
    report = hostile.run(SEEDED_INPUTS)
    assert report["inputs"] == sum(hostile.counts.values()) == SEEDED_INPUTS
    assert set(report["by_kind"]) == {"random", "mutated", "monster"}
    outcomes = {key.split(" -> ")[1].split(":")[0] for key in hostile.counts}
    # The inputs reach every way out (else they prove nothing about one of them).
    assert {"planned", "skipped", "dead_lettered"} <= outcomes, hostile.counts
    reasons = {key.split(":", 2)[2] for key in hostile.counts if "dead_lettered" in key}
    assert {"NOT_AVRO", "MALFORMED", "INVALID", "KEY_MISMATCH"} <= reasons, reasons
    assert any(key.startswith("monster -> planned") for key in hostile.counts)


HOSTILE = Hostile(seed=1)


def _step(data: bytes, key: bytes | None, topic: str = SETTINGS.topics.input) -> str:
    return HOSTILE.step("hypothesis", 0, ConsumedRecord(topic, 0, 0, key, data))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=300), framed=st.booleans(), key=st.one_of(st.none(), st.binary()))
def test_any_bytes_are_dead_lettered_or_planned(
    body: bytes, framed: bool, key: bytes | None
) -> None:
    data = HOSTILE.header + body if framed else body
    _step(data, key)
    _step(data, key, SETTINGS.topics.results)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    version=st.integers(-(2**63), 2**63 - 1),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3),
    monster=st.booleans(),
)
def test_edited_and_extreme_events_are_dead_lettered_or_planned(
    seed: int, version: int, edits: list[tuple[int, int]], monster: bool
) -> None:
    rng = random.Random(seed)
    if monster:
        ev = monster_dict(rng, f"h-{seed}", scale=1)
    else:
        ev = event_dict(rng, f"h-{seed}", version)
    data = bytearray(HOSTILE.codec.encode(EVENT, ev))
    for at, byte in edits:
        data[10 + at % (len(data) - 10)] = byte
    _step(bytes(data), ev["subscription"]["id"].encode())
