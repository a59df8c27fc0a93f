"""The planner on the real broker: CRM events in, the exact Icareus requests out (read as a
read_committed consumer reads them), bad input dead-lettered without stopping anything."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka.admin import AdminClient

from icareus_bridge.codec import default_codec
from icareus_bridge.kafka.admin import StartupError, ensure_topics
from icareus_bridge.pipeline.planner import READINESS_CHECK
from tests.integration.planner_support import (
    Topics,
    by_subscription,
    decoded_requests,
    event,
    expected_requests,
    make_topics,
    planner_thread,
    produce_events,
    produce_raw,
    read_topic,
    settings_for,
    story,
    unique,
    wait_for,
)

pytestmark = pytest.mark.kafka


def test_a_stream_of_crm_actions_becomes_exactly_the_planned_requests(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topics = make_topics(make_topic)
    settings = settings_for(
        kafka_bootstrap, topics, group=unique("planner"), instance=unique("i")
    )
    events = [ev for n in range(20) for ev in story(f"sub-{n:03d}")]
    want = expected_requests(events)
    with planner_thread(settings) as running:
        assert running.readiness.snapshot()[READINESS_CHECK]["ready"]
        produce_events(kafka_bootstrap, topics.input, events)
        got = decoded_requests(
            read_topic(kafka_bootstrap, topics.requests, expect=len(want), settle=1.0)
        )
    assert len(got) == len(want)
    # Same requests, same order within each subscription (its key's partition keeps order).
    assert by_subscription(got) == by_subscription(want)
    assert {r.request_id: r for r in got} == {r.request_id: r for r in want}
    # Co-partitioned: a subscription's requests and state are in its events' partition.
    requests = read_topic(kafka_bootstrap, topics.requests)
    states = read_topic(kafka_bootstrap, topics.state)
    events_read = read_topic(kafka_bootstrap, topics.input)
    part_of = {r.key: r.partition for r in events_read}
    assert all(part_of[r.key] == r.partition for r in requests)
    assert all(part_of[r.key] == r.partition for r in states)
    planned = running.metrics.events.labels("BECOME_SUBSCRIBER", "planned")._value.get()
    assert planned == 20


def test_poison_inputs_go_to_the_dead_letter_topic_and_later_events_are_still_planned(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topics = make_topics(make_topic)
    group = unique("planner")
    settings = settings_for(kafka_bootstrap, topics, group=group, instance=unique("i"))
    codec = default_codec()
    good = codec.encode_event(event("sub-poison", 1, "BECOME_SUBSCRIBER"))
    header = good[:10]
    unknown_action = codec.encode_event(event("sub-poison", 2, "FLY_TO_THE_MOON"))
    poison: list[tuple[str, str, bytes, bytes | None]] = [
        ("decode", "NOT_AVRO", b"sub-poison", b'{"event_id": "json is not avro"}'),
        ("decode", "UNKNOWN_SCHEMA", b"sub-poison", b"\xc3\x01" + b"\x00" * 8 + good[10:]),
        ("decode", "MALFORMED", b"sub-poison", header + good[10:40]),
        ("validate", "INVALID", b"sub-poison", unknown_action),
        ("decode", "NOT_AVRO", b"sub-poison", None),
        ("validate", "KEY_MISMATCH", b"another-key", good),
    ]
    with planner_thread(settings) as running:
        produce_raw(kafka_bootstrap, topics.input, [(k, v) for _, _, k, v in poison])
        after = [event("sub-poison", 3, "BECOME_SUBSCRIBER")]
        produce_events(kafka_bootstrap, topics.input, after)
        want = expected_requests(after)
        got = decoded_requests(read_topic(kafka_bootstrap, topics.requests, expect=len(want)))
        dead = read_topic(kafka_bootstrap, topics.dlq, expect=len(poison))
        assert running.metrics.dead_letters.labels("decode", "NOT_AVRO")._value.get() == 2
    assert [r.request_id for r in got] == [r.request_id for r in want]
    assert len(dead) == len(poison)
    # In produce order: the key-mismatch record went to another partition, so it sorts last.
    by_offset = sorted(
        dead, key=lambda r: (r.key != b"sub-poison", int(r.headers["dlq.original.offset"]))
    )
    for (stage, reason, key, value), rec in zip(poison, by_offset, strict=True):
        assert (rec.headers["dlq.stage"], rec.headers["dlq.reason"]) == (stage, reason)
        assert rec.key == key and rec.value == value  # untouched bytes
        h = rec.headers
        assert h["dlq.original.topic"] == topics.input
        assert h["dlq.consumer.group"] == group
        assert h["dlq.original.timestamp"].endswith("Z")
        assert h["dlq.attempts"] == "1" and h["dlq.replay.count"] == "0"
        assert {"dlq.error.class", "dlq.error.message", "dlq.original.partition",
                "dlq.first.failure.at", "dlq.last.failure.at"} <= h.keys()


def test_repeated_and_late_events_are_skipped_not_dead_lettered(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topics = make_topics(make_topic)
    settings = settings_for(kafka_bootstrap, topics, group=unique("planner"), instance=unique("i"))
    first, second = story("sub-late")[:2]
    stream = [first, second, first, second, event("sub-late", 1, "ADD_SERVICE")]
    marker = event("sub-marker", 1, "BECOME_SUBSCRIBER")
    want = expected_requests([first, second, marker])
    with planner_thread(settings) as running:
        produce_events(kafka_bootstrap, topics.input, [*stream, marker])
        got = decoded_requests(read_topic(kafka_bootstrap, topics.requests, expect=len(want)))
        m = running.metrics.events
        wait_for(
            lambda: m.labels("BECOME_SUBSCRIBER", "skipped")._value.get()
            + m.labels("ADD_SERVICE", "skipped")._value.get()
            == 3,
            10,
            "three skipped events",
        )
    assert sorted(r.request_id for r in got) == sorted(r.request_id for r in want)
    assert read_topic(kafka_bootstrap, topics.dlq) == []


def test_a_state_topic_without_compaction_stops_start_up(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topics = make_topics(make_topic)
    plain = make_topic("state-not-compacted", partitions=3)
    settings = settings_for(kafka_bootstrap, topics, group="g", instance="i")
    bad = settings.model_copy(
        update={"topics": settings.topics.model_copy(update={"state": plain})}
    )
    with pytest.raises(StartupError, match=rf"{plain}.*cleanup.policy.*compact"):
        ensure_topics(bad.kafka, bad.topics)


def test_missing_topics_are_created_with_a_compacted_state_topic(kafka_bootstrap: str) -> None:
    names = {k: unique(f"created-{k}") for k in ("input", "requests", "results", "dlq", "state")}
    settings = settings_for(kafka_bootstrap, Topics(**names), group="g", instance="i")
    try:
        reports = {r.name: r for r in ensure_topics(settings.kafka, settings.topics)}
        assert all(r.created and r.partitions == 3 for r in reports.values())
        assert reports[names["state"]].cleanup_policy == "compact"
        again = ensure_topics(settings.kafka, settings.topics)
        assert not any(r.created for r in again)
    finally:
        AdminClient({"bootstrap.servers": kafka_bootstrap}).delete_topics(list(names.values()))


@pytest.mark.parametrize("role", ["results", "requests"])
def test_a_results_or_requests_topic_with_other_partition_count_stops_start_up(
    kafka_bootstrap: str, make_topic: Callable[..., str], role: str
) -> None:
    topics = make_topics(make_topic)
    other = make_topic(f"{role}-2", partitions=2)
    settings = settings_for(kafka_bootstrap, topics, group="g", instance="i")
    bad = settings.topics.model_copy(update={role: other})
    with pytest.raises(StartupError, match=rf"{other} \(topics.{role}\).*2 partitions.*3"):
        ensure_topics(settings.kafka, bad)
