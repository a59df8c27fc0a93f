"""The operator commands' Kafka edge on the real broker: `kafka.publish` (transactions under a
fixed id, fencing, the idempotent publisher), `kafka.replay_io` (topics, a compacted topic
created once, committed records read from the start) and `kafka.archive_io` (watermarks, reads
that stop per partition, committed group offsets, DeleteRecords)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from icareus_bridge.config import KafkaSettings
from icareus_bridge.kafka.archive_io import ArchiveKafka
from icareus_bridge.kafka.publish import (
    BrokerError,
    IdempotentPublisher,
    OutgoingRecord,
    TransactionalPublisher,
)
from icareus_bridge.kafka.replay_io import create_compacted_topic, probe_topics, read_from_start

pytestmark = pytest.mark.kafka


def _kafka(bootstrap: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=bootstrap)


def _tid() -> str:
    return f"ops-io-{uuid.uuid4().hex[:12]}"


def test_committed_transactions_are_read_back_and_an_aborted_one_is_not(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    kafka = _kafka(kafka_bootstrap)
    topic = make_topic("ops-io", partitions=2)
    tx = TransactionalPublisher(kafka, _tid(), init_timeout=30.0)
    tx.begin()
    tx.publish(
        [
            OutgoingRecord(topic, key=b"a", value=b"one", headers=[("h", b"1")], partition=1),
            OutgoingRecord(topic, key=b"b", value=b"two", partition=1),
        ]
    )
    tx.commit(30.0)
    tx.begin()
    tx.publish([OutgoingRecord(topic, key=b"c", value=b"aborted", partition=0)])
    tx.abort(10.0)
    tx.begin()
    tx.publish([OutgoingRecord(topic, key=b"d", value=None, partition=0)])
    tx.commit(30.0)
    assert tx.flush(5) == 0

    got = read_from_start(kafka, topic, range(2), timeout=60.0, watermark_timeout=10.0)
    seen = sorted((r.partition, r.key, r.value, r.headers) for r in got)
    assert seen == [
        (0, b"d", None, None),
        (1, b"a", b"one", [("h", b"1")]),
        (1, b"b", b"two", None),
    ]
    offsets = [r.offset for r in got if r.partition == 1]
    assert offsets == sorted(offsets) and len(set(offsets)) == 2


def test_a_second_publisher_with_the_same_id_fences_the_first(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    kafka = _kafka(kafka_bootstrap)
    topic = make_topic("ops-io")
    tid = _tid()
    first = TransactionalPublisher(kafka, tid, init_timeout=30.0)
    first.begin()
    first.publish([OutgoingRecord(topic, key=b"k", value=b"fenced")])
    second = TransactionalPublisher(kafka, tid, init_timeout=30.0)
    with pytest.raises(BrokerError):
        first.commit(30.0)
    second.begin()
    second.publish([OutgoingRecord(topic, key=b"k", value=b"kept")])
    second.commit(30.0)
    got = read_from_start(kafka, topic, [0], timeout=60.0, watermark_timeout=10.0)
    assert [r.value for r in got] == [b"kept"]


def test_the_idempotent_publisher_delivers_to_the_partition_named(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    kafka = _kafka(kafka_bootstrap)
    topic = make_topic("ops-io", partitions=3)
    failed: list[str] = []
    pub = IdempotentPublisher(kafka)
    pub.publish(OutgoingRecord(topic, key=b"x", value=b"1", partition=2), failed.append)
    pub.publish(OutgoingRecord(topic, key=b"y", value=b"2", partition=2), failed.append)
    assert pub.flush(30.0) == 0
    assert failed == []
    got = read_from_start(kafka, topic, range(3), timeout=60.0, watermark_timeout=10.0)
    assert [(r.partition, r.value) for r in got] == [(2, b"1"), (2, b"2")]


def test_topics_are_probed_and_a_compacted_topic_is_created_once(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    kafka = _kafka(kafka_bootstrap)
    existing = make_topic("ops-io", partitions=3)
    assert probe_topics(kafka, 10.0)[existing] == 3
    name = f"ops-io-log-{uuid.uuid4().hex[:12]}"
    create_compacted_topic(kafka, name)
    create_compacted_topic(kafka, name)  # exists already: fine
    assert read_from_start(kafka, name, [0], timeout=30.0, watermark_timeout=10.0) == []


def test_the_archive_edge_reads_stops_deletes_and_reads_group_offsets(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    kafka = _kafka(kafka_bootstrap)
    topic = make_topic("ops-io", partitions=2)
    pub = IdempotentPublisher(kafka)
    failed: list[str] = []
    for i in range(4):
        pub.publish(OutgoingRecord(topic, key=None, value=b"%d" % i, partition=0), failed.append)
    pub.publish(OutgoingRecord(topic, key=None, value=b"p1", partition=1), failed.append)
    assert pub.flush(30.0) == 0
    assert failed == []

    edge = ArchiveKafka(kafka, 30.0)
    assert edge.partitions[topic] == 2
    assert edge.watermarks(topic, [0, 1]) == {0: (0, 4), 1: (0, 1)}
    seen: list[tuple[int, int, bytes | None]] = []

    def take(p: int, offset: int, ts: int, value: bytes | None) -> bool:
        assert ts > 0
        if value == b"2":
            return False  # partition 0 stops before its third record
        seen.append((p, offset, value))
        return True

    ends = edge.read(topic, {0: 0, 1: 0}, take)
    assert ends == {0: 2, 1: 1}
    assert sorted(seen) == [(0, 0, b"0"), (0, 1, b"1"), (1, 0, b"p1")]
    assert edge.read(topic, {0: 4, 1: 1}, take) == {0: 4, 1: 1}  # at the end: nothing read

    assert edge.committed(f"ops-io-group-{uuid.uuid4().hex[:8]}", topic, [0, 1]) == {
        0: None,
        1: None,
    }
    assert edge.delete_before(topic, {0: 2}) == {0: 2}
    assert edge.watermarks(topic, [0])[0] == (2, 4)
