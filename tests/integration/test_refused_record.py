"""A record the broker refuses inside a transaction (over the topic's `max.message.bytes`, or
invalid for it) on the real broker: the refused record goes to the dead-letter topic with a
reason, everything else of its batch is committed, and the transactions after it commit too
(librdkafka leaves the partition's sequence numbers behind after such a refusal; the next
transaction there failed with OUT_OF_ORDER_SEQUENCE_NUMBER before the producer was replaced)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from icareus_bridge.codec import default_codec
from icareus_bridge.config import KafkaSettings
from icareus_bridge.core.model import Subscriber
from icareus_bridge.kafka import clients
from icareus_bridge.kafka.checkpoint import (
    Checkpoint,
    DeadLetterRoute,
    OutboundRecord,
    TransactionAborted,
)
from icareus_bridge.kafka.state import StateTransaction
from tests.integration.planner_support import (
    Record,
    event,
    expected_requests,
    make_topics,
    planner_thread,
    read_topic,
    settings_for,
    unique,
)

pytestmark = pytest.mark.kafka

LIMIT = 2000  # the small topics' max.message.bytes


@pytest.fixture
def small_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """`small_topic(prefix, partitions=1, limit=LIMIT)`: a topic refusing records over `limit`
    bytes; deleted after the test."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def make(prefix: str, partitions: int = 1, limit: int = LIMIT) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        config = {"max.message.bytes": str(limit)}
        admin.create_topics([NewTopic(name, partitions, 1, config=config)])[name].result(60)
        created.append(name)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            meta = admin.list_topics(topic=name, timeout=5).topics.get(name)
            if (
                meta is not None
                and meta.error is None
                and all(p.leader >= 0 for p in meta.partitions.values())
                and len(meta.partitions) == partitions
            ):
                return name
            time.sleep(0.05)
        raise TimeoutError(f"topic {name} has no leader")

    yield make
    for future in admin.delete_topics(created, operation_timeout=10).values():
        with contextlib.suppress(Exception):
            future.result(timeout=15)


def _kafka(bootstrap: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=bootstrap)


def _fill(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        producer.produce(topic, value, b"k", 0)
    assert producer.flush(30) == 0


def _consume(consumer: Consumer, topic: str, n: int) -> list[Any]:
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + 60
    while len(out) < n and time.monotonic() < deadline:
        out += [m for m in consumer.consume(n - len(out), 0.5) if m.error() is None]
    assert len(out) == n, f"read {len(out)} of {n}"
    return out


def _committed(bootstrap: str, group: str, topic: str) -> int:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        [tp] = probe.committed([TopicPartition(topic, 0)], timeout=10)
        return int(tp.offset)
    finally:
        probe.close()


def test_a_record_over_the_topic_limit_is_dead_lettered_and_the_next_transactions_commit(
    kafka_bootstrap: str, make_topic: Callable[..., str], small_topic: Callable[..., str]
) -> None:
    source, dlq = make_topic("rr-in"), make_topic("rr-dlq")
    state = make_topic("rr-state", compacted=True)
    sink = small_topic("rr-out")
    group, tid = unique("rr"), unique("rr-tx")
    kafka = _kafka(kafka_bootstrap)
    _fill(kafka_bootstrap, source, [b"e0", b"e1", b"e2", b"e3", b"e4"])
    consumer = clients.consumer(kafka, group)

    def new_producer() -> Producer:
        return clients.transactional_producer(kafka, tid)

    route = DeadLetterRoute(dlq, stage="plan", group=group)
    producer = new_producer()
    big = b"B" * (LIMIT * 3)
    try:
        msgs = _consume(consumer, source, 5)
        # e0 causes a record the topic refuses (and a small one, in the same broker batch).
        cp = Checkpoint(
            producer,
            consumer,
            StateTransaction(state),
            dead_letters=route,
            new_producer=new_producer,
        )
        for msg in msgs[:2]:
            cp.produce(OutboundRecord(sink, b"a", b"out-" + msg.value(), partition=0))
            if msg.value() == b"e0":
                cp.produce(OutboundRecord(sink, b"a", big, partition=0))
            cp.state.set(0, b"a", msg.value())
            cp.mark_processed(msg.topic(), msg.partition(), msg.offset())
        stats = cp.commit()
        assert stats.dead_lettered == 1
        # The next transactions write to the same partition and commit.
        for msg in msgs[2:]:
            cp = Checkpoint(
                cp.producer,
                consumer,
                StateTransaction(state),
                dead_letters=route,
                new_producer=new_producer,
            )
            cp.produce(OutboundRecord(sink, b"a", b"out-" + msg.value(), partition=0))
            cp.mark_processed(msg.topic(), msg.partition(), msg.offset())
            assert cp.commit().dead_lettered == 0
    finally:
        consumer.close()
    out = read_topic(kafka_bootstrap, sink, expect=5)
    assert [r.value for r in out] == [b"out-e0", b"out-e1", b"out-e2", b"out-e3", b"out-e4"]
    [dead] = read_topic(kafka_bootstrap, dlq, expect=1)
    assert dead.key == b"a" and dead.value == big  # the original bytes, untouched
    h = dead.headers
    assert (h["dlq.stage"], h["dlq.reason"]) == ("plan", "RECORD_TOO_LARGE")
    assert (h["dlq.original.topic"], h["dlq.original.offset"]) == (source, "0")
    assert (h["dlq.refused.topic"], h["dlq.refused.partition"]) == (sink, "0")
    assert h["dlq.record.bytes"] == str(len(big)) and "dlq.truncated" not in h
    assert h["dlq.consumer.group"] == group and "MSG_SIZE_TOO_LARGE" in h["dlq.error.message"]
    assert [r.value for r in read_topic(kafka_bootstrap, state, expect=1)] == [b"e1"]
    assert _committed(kafka_bootstrap, group, source) == 5


def test_a_dead_letter_too_large_for_the_dead_letter_topic_is_truncated_but_named(
    kafka_bootstrap: str, make_topic: Callable[..., str], small_topic: Callable[..., str]
) -> None:
    source, state = make_topic("rr-in"), make_topic("rr-state", compacted=True)
    sink, dlq = small_topic("rr-out"), small_topic("rr-dlq")
    group, tid = unique("rr"), unique("rr-tx")
    kafka = _kafka(kafka_bootstrap)
    _fill(kafka_bootstrap, source, [b"e0", b"e1"])
    consumer = clients.consumer(kafka, group)

    def new_producer() -> Producer:
        return clients.transactional_producer(kafka, tid)

    codec = default_codec()
    ev = event("sub-big", 1, "BECOME_SUBSCRIBER")
    huge_name = ev.model_copy(
        update={
            "subscription": ev.subscription.model_copy(
                update={
                    "subscriber": Subscriber(
                        account_number="A", first_name="N" * 5000, last_name="L"
                    )
                }
            )
        }
    )
    [add_user, *_] = expected_requests([huge_name])
    big = codec.encode_request(add_user)
    route = DeadLetterRoute(dlq, stage="plan", group=group)
    try:
        msgs = _consume(consumer, source, 2)
        cp = Checkpoint(
            new_producer(),
            consumer,
            StateTransaction(state),
            dead_letters=route,
            new_producer=new_producer,
        )
        cp.produce(OutboundRecord(sink, b"sub-big", big, partition=0))
        cp.mark_processed(msgs[0].topic(), 0, msgs[0].offset())
        assert cp.commit().dead_lettered == 1
        cp = Checkpoint(
            cp.producer,
            consumer,
            StateTransaction(state),
            dead_letters=route,
            new_producer=new_producer,
        )
        cp.produce(OutboundRecord(sink, b"sub-1", b"small", partition=0))
        cp.mark_processed(msgs[1].topic(), 0, msgs[1].offset())
        cp.commit()
    finally:
        consumer.close()
    assert [r.value for r in read_topic(kafka_bootstrap, sink, expect=1)] == [b"small"]
    [dead] = read_topic(kafka_bootstrap, dlq, expect=1)
    h = dead.headers
    assert dead.key == b"sub-big" and dead.value is None
    assert (h["dlq.reason"], h["dlq.truncated"]) == ("RECORD_TOO_LARGE", "value")
    assert h["dlq.request.id"] == add_user.request_id
    assert h["dlq.record.schema"] == "ProvisioningRequest"
    assert (h["dlq.original.topic"], h["dlq.original.partition"]) == (source, "0")
    assert h["dlq.original.offset"] == "0" and h["dlq.record.bytes"] == str(len(big))
    assert "N" * 50 not in "".join(h.values())  # no personal data in the headers
    assert _committed(kafka_bootstrap, group, source) == 2


def test_without_a_dead_letter_route_the_batch_is_aborted_and_the_producer_replaced(
    kafka_bootstrap: str, make_topic: Callable[..., str], small_topic: Callable[..., str]
) -> None:
    source, state, sink = (
        make_topic("rr-in"),
        make_topic("rr-state", compacted=True),
        small_topic("rr-out"),
    )
    group, tid = unique("rr"), unique("rr-tx")
    kafka = _kafka(kafka_bootstrap)
    _fill(kafka_bootstrap, source, [b"e0"])
    consumer = clients.consumer(kafka, group)

    def new_producer() -> Producer:
        return clients.transactional_producer(kafka, tid)

    first = new_producer()
    try:
        [msg] = _consume(consumer, source, 1)
        cp = Checkpoint(first, consumer, StateTransaction(state), new_producer=new_producer)
        cp.produce(OutboundRecord(sink, b"a", b"B" * (LIMIT * 3), partition=0))
        cp.mark_processed(msg.topic(), 0, msg.offset())
        with pytest.raises(TransactionAborted, match="MSG_SIZE_TOO_LARGE"):
            cp.commit()
        assert cp.producer is not first
        [again] = _consume(consumer, source, 1)  # rewound: read again
        cp = Checkpoint(cp.producer, consumer, StateTransaction(state), new_producer=new_producer)
        cp.produce(OutboundRecord(sink, b"a", b"small", partition=0))
        cp.mark_processed(again.topic(), 0, again.offset())
        cp.commit()
    finally:
        consumer.close()
    assert again.offset() == 0
    assert [r.value for r in read_topic(kafka_bootstrap, sink, expect=1)] == [b"small"]
    assert _committed(kafka_bootstrap, group, source) == 1


def test_the_planner_dead_letters_a_request_over_the_topic_limit_and_plans_on(
    kafka_bootstrap: str, make_topic: Callable[..., str], small_topic: Callable[..., str]
) -> None:
    topics = make_topics(make_topic)
    topics = type(topics)(**{**topics.as_dict(), "requests": small_topic("rr-requests", 3)})
    settings = settings_for(kafka_bootstrap, topics, group=unique("planner"), instance=unique("i"))
    codec = default_codec()
    before = event("sub-a", 1, "BECOME_SUBSCRIBER")
    ev = event("sub-big", 1, "BECOME_SUBSCRIBER")
    # A valid event (each name within limits.max_string_length) whose ADD_USER request is
    # still over the requests topic's max.message.bytes: the broker, not validation, refuses.
    most = settings.limits.max_string_length
    big = ev.model_copy(
        update={
            "subscription": ev.subscription.model_copy(
                update={
                    "subscriber": Subscriber(
                        account_number="A", first_name="N" * most, last_name="L" * most
                    )
                }
            )
        }
    )
    after = [event("sub-c", 1, "BECOME_SUBSCRIBER"), event("sub-a", 2, "TERMINATE_SUBSCRIPTION")]
    # Every event in partition 0: the transactions after the refusal write where it happened.
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for e in [before, big, *after]:
        p.produce(topics.input, codec.encode_event(e), e.subscription.id.encode(), 0)
    assert p.flush(30) == 0
    want = expected_requests([before, big, *after])
    [too_large] = [r for r in want if r.subscription_id == "sub-big" and r.type == "ADD_USER"]
    with planner_thread(settings) as running:
        got = read_topic(kafka_bootstrap, topics.requests, expect=len(want) - 1, timeout=90)
        [dead] = read_topic(kafka_bootstrap, topics.dlq, expect=1)
        assert running.metrics.dead_letters.labels("plan", "RECORD_TOO_LARGE")._value.get() == 1
        # The replacement producer fenced the one before it: that is no fatal error of the
        # planner, which plans the next event in a transaction of its own.
        later = event("sub-d", 1, "BECOME_SUBSCRIBER")
        p.produce(topics.input, codec.encode_event(later), b"sub-d", 0)
        assert p.flush(30) == 0
        more = expected_requests([later])
        got_all = read_topic(
            kafka_bootstrap, topics.requests, expect=len(want) - 1 + len(more), timeout=90
        )
        assert not running.errors and running.thread.is_alive()
    ids = [codec.decode_request(r.value).request_id for r in got if r.value is not None]
    assert ids == [r.request_id for r in want if r.request_id != too_large.request_id]
    ids_all = [codec.decode_request(r.value).request_id for r in got_all if r.value is not None]
    assert ids_all == ids + [r.request_id for r in more]
    _check_dead(dead, topics.input, too_large.request_id)


def _check_dead(dead: Record, input_topic: str, request_id: str) -> None:
    h = dead.headers
    assert (h["dlq.stage"], h["dlq.reason"]) == ("plan", "RECORD_TOO_LARGE")
    assert h["dlq.request.id"] == request_id and dead.key == b"sub-big"
    assert (h["dlq.original.topic"], h["dlq.original.partition"]) == (input_topic, "0")
    assert h["dlq.original.offset"] == "1"


def test_a_dead_letter_the_dead_letter_topic_refuses_keeps_its_own_headers_truncated(
    kafka_bootstrap: str, make_topic: Callable[..., str], small_topic: Callable[..., str]
) -> None:
    source, state, dlq = (
        make_topic("rr-in"),
        make_topic("rr-state", compacted=True),
        small_topic("rr-dlq"),
    )
    group, tid = unique("rr"), unique("rr-tx")
    kafka = _kafka(kafka_bootstrap)
    _fill(kafka_bootstrap, source, [b"e0"])
    consumer = clients.consumer(kafka, group)

    def new_producer() -> Producer:
        return clients.transactional_producer(kafka, tid)

    # An input the planner dead-letters (say INVALID), too large for the dead-letter topic.
    huge_key = b"K" * 3000
    headers = [
        ("dlq.stage", b"validate"),
        ("dlq.reason", b"INVALID"),
        ("dlq.original.topic", source.encode()),
        ("dlq.original.offset", b"0"),
    ]
    route = DeadLetterRoute(dlq, stage="plan", group=group)
    try:
        [msg] = _consume(consumer, source, 1)
        cp = Checkpoint(
            new_producer(),
            consumer,
            StateTransaction(state),
            dead_letters=route,
            new_producer=new_producer,
        )
        cp.produce(OutboundRecord(dlq, huge_key, b"V" * (LIMIT * 2), headers=headers))
        cp.mark_processed(msg.topic(), 0, msg.offset())
        [refusal] = cp.commit().refused
    finally:
        consumer.close()
    assert refusal.truncated and refusal.topic == dlq
    [dead] = read_topic(kafka_bootstrap, dlq, expect=1)
    h = dead.headers
    assert dead.value is None and dead.key == huge_key[:1024]
    assert (h["dlq.stage"], h["dlq.reason"], h["dlq.truncated"]) == (
        "validate",
        "INVALID",
        "value,key",
    )
    assert (h["dlq.original.topic"], h["dlq.original.offset"]) == (source, "0")
    assert h["dlq.record.bytes"] == str(LIMIT * 2)
    assert _committed(kafka_bootstrap, group, source) == 1
