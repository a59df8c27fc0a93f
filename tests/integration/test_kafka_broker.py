"""The test broker does what the bridge needs of Kafka: plain round trips, transactions that
commit consumer offsets atomically with their output (the planner's exactly-once step), aborted
transactions hidden from read_committed readers, and compacted topics (the state changelog)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

DEADLINE_SECONDS = 30.0


def _group() -> str:
    return f"g-{uuid.uuid4().hex[:12]}"


def _consumer(kafka_config: dict[str, Any], group: str, **extra: Any) -> Consumer:
    return Consumer(
        {
            **kafka_config,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **extra,
        }
    )


def _consume(consumer: Consumer, count: int, deadline: float = DEADLINE_SECONDS) -> list[Message]:
    """Poll until `count` records arrived or the deadline passes; returns what came."""
    got: list[Message] = []
    end = time.monotonic() + deadline
    while len(got) < count and time.monotonic() < end:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error() is not None:
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise AssertionError(f"consumer error: {msg.error()}")
        got.append(msg)
    return got


def _drain_until_eof(consumer: Consumer, partitions: int = 1) -> list[Message]:
    """Everything a consumer (with `enable.partition.eof`) can read, until every partition is at
    its end: a positive proof that nothing more is visible, without waiting out a timeout."""
    got: list[Message] = []
    eof: set[int] = set()
    end = time.monotonic() + DEADLINE_SECONDS
    while len(eof) < partitions:
        assert time.monotonic() < end, "partition end not reached before the deadline"
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error() is not None:
            assert msg.error().code() == KafkaError._PARTITION_EOF, str(msg.error())
            eof.add(msg.partition())
            continue
        got.append(msg)
    return got


def _produce(kafka_config: dict[str, Any], topic: str, records: list[tuple[str, str]]) -> None:
    producer = Producer({**kafka_config, "enable.idempotence": True})
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(DEADLINE_SECONDS) == 0


def test_produce_then_consume_round_trip(
    kafka_config: dict[str, Any], make_topic: Callable[..., str]
) -> None:
    topic = make_topic("roundtrip")
    sent = [(f"sub-{i}", f"event-{i}") for i in range(5)]
    _produce(kafka_config, topic, sent)

    consumer = _consumer(kafka_config, _group())
    consumer.subscribe([topic])
    try:
        got = _consume(consumer, len(sent))
    finally:
        consumer.close()

    assert [(m.key().decode(), m.value().decode()) for m in got] == sent


def _transactional_step(
    kafka_config: dict[str, Any], source: str, sink: str, group: str, commit: bool
) -> int:
    """Read everything from `source` as `group`, write it to `sink` and hand the group's
    positions to the transaction; commit or abort. Returns how many records were moved."""
    producer = Producer({**kafka_config, "transactional.id": f"tx-{uuid.uuid4().hex[:12]}"})
    producer.init_transactions(DEADLINE_SECONDS)
    consumer = _consumer(kafka_config, group, **{"isolation.level": "read_committed"})
    consumer.subscribe([source])
    try:
        records = _consume(consumer, 3)
        assert len(records) == 3
        producer.begin_transaction()
        for msg in records:
            producer.produce(sink, key=msg.key(), value=msg.value())
        producer.send_offsets_to_transaction(
            consumer.position(consumer.assignment()),
            consumer.consumer_group_metadata(),
            DEADLINE_SECONDS,
        )
        if commit:
            producer.commit_transaction(DEADLINE_SECONDS)
        else:
            # On the broker first: abort_transaction purges what is still queued locally, and
            # the test is about the broker hiding aborted records, not about the purge.
            assert producer.flush(DEADLINE_SECONDS) == 0
            producer.abort_transaction(DEADLINE_SECONDS)
    finally:
        consumer.close()
    return len(records)


def _committed_offset(kafka_config: dict[str, Any], group: str, topic: str) -> int:
    consumer = _consumer(kafka_config, group)
    try:
        [tp] = consumer.committed([TopicPartition(topic, 0)], timeout=DEADLINE_SECONDS)
        offset: int = tp.offset
        return offset
    finally:
        consumer.close()


def _read_all(kafka_config: dict[str, Any], topic: str, isolation: str) -> list[Message]:
    consumer = _consumer(
        kafka_config, _group(), **{"isolation.level": isolation, "enable.partition.eof": True}
    )
    consumer.subscribe([topic])
    try:
        return _drain_until_eof(consumer)
    finally:
        consumer.close()


def test_committed_transaction_is_visible_and_commits_the_group_offsets(
    kafka_config: dict[str, Any], make_topic: Callable[..., str]
) -> None:
    source, sink, group = make_topic("tx-in"), make_topic("tx-out"), _group()
    _produce(kafka_config, source, [(f"sub-{i}", f"event-{i}") for i in range(3)])

    moved = _transactional_step(kafka_config, source, sink, group, commit=True)

    committed = _read_all(kafka_config, sink, "read_committed")
    assert [m.value().decode() for m in committed] == [f"event-{i}" for i in range(moved)]
    assert _committed_offset(kafka_config, group, source) == moved


def test_aborted_transaction_is_hidden_from_read_committed_readers(
    kafka_config: dict[str, Any], make_topic: Callable[..., str]
) -> None:
    source, sink, group = make_topic("abort-in"), make_topic("abort-out"), _group()
    _produce(kafka_config, source, [(f"sub-{i}", f"event-{i}") for i in range(3)])

    _transactional_step(kafka_config, source, sink, group, commit=False)

    assert _read_all(kafka_config, sink, "read_committed") == []
    uncommitted = _read_all(kafka_config, sink, "read_uncommitted")
    assert [m.value().decode() for m in uncommitted] == [f"event-{i}" for i in range(3)]
    # The offsets went with the aborted transaction: the group has committed nothing.
    assert _committed_offset(kafka_config, group, source) < 0


def test_compacted_topic_reads_back_its_cleanup_policy(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic("state", partitions=3, compacted=True)

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    resource = ConfigResource(ResourceType.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=DEADLINE_SECONDS)

    assert configs["cleanup.policy"].value == "compact"
    assert len(admin.list_topics(topic=topic, timeout=10).topics[topic].partitions) == 3
