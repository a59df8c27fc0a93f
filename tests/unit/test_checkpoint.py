"""The Checkpoint's commit protocol, against stand-ins of the producer and consumer that
record the calls: the order of the steps, one changelog write per key, and what happens when
the transaction fails (abort + rewind, or fatal)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from icareus_bridge.kafka.checkpoint import (
    Checkpoint,
    OutboundRecord,
    TransactionAborted,
    TransactionFatal,
)


class FakeProducer:
    def __init__(self, fail_commit: KafkaError | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_commit = fail_commit

    def begin_transaction(self) -> None:
        self.calls.append(("begin",))

    def produce(
        self, topic: str, value: Any = None, key: Any = None, partition: int = -1, **kw: Any
    ) -> None:
        self.calls.append(("produce", topic, key, value, partition))

    def poll(self, _t: float) -> int:
        return 0

    def send_offsets_to_transaction(self, offsets: list[Any], _meta: Any, _t: float) -> None:
        self.calls.append(("offsets", sorted((o.topic, o.partition, o.offset) for o in offsets)))

    def commit_transaction(self, _t: float) -> None:
        if self.fail_commit is not None:
            raise KafkaException(self.fail_commit)
        self.calls.append(("commit",))

    def abort_transaction(self, _t: float) -> None:
        self.calls.append(("abort",))


class FakeConsumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[str, int, int]] = []

    def consumer_group_metadata(self) -> object:
        return object()

    def seek(self, tp: Any) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))


def _checkpoint(producer: FakeProducer, consumer: FakeConsumer) -> Checkpoint:
    return Checkpoint(
        producer,  # type: ignore[arg-type]
        consumer,  # type: ignore[arg-type]
        "state",
        encode_state=lambda obj: f"enc:{obj}".encode(),
        max_records=3,
        max_seconds=10.0,
    )


def test_commit_produces_output_then_one_state_write_per_key_then_offsets_then_commits() -> None:
    producer, consumer = FakeProducer(), FakeConsumer()
    cp = _checkpoint(producer, consumer)
    cp.produce(OutboundRecord("requests", b"a", b"r1", partition=1))
    cp.put_state(1, b"a", "v1")
    cp.mark_processed("input", 1, 10)
    cp.put_state(1, b"a", "v2")
    cp.mark_processed("input", 1, 11)
    cp.mark_processed("results", 1, 4)
    assert cp.due()  # three records = max_records
    stats = cp.commit()
    assert producer.calls == [
        ("begin",),
        ("produce", "requests", b"a", b"r1", 1),
        ("produce", "state", b"a", b"enc:v2", 1),
        ("offsets", [("input", 1, 12), ("results", 1, 5)]),
        ("commit",),
    ]
    assert (stats.input_records, stats.state_writes) == (3, 1)


def test_offsets_alone_are_committed_in_a_transaction_too() -> None:
    producer = FakeProducer()
    cp = _checkpoint(producer, FakeConsumer())
    assert cp.empty and not cp.due()
    cp.mark_processed("input", 0, 0)  # e.g. a skipped stale event
    cp.commit()
    assert [c[0] for c in producer.calls] == ["begin", "offsets", "commit"]


def test_an_abortable_failure_aborts_and_rewinds_to_the_batch_start() -> None:
    err = KafkaError(KafkaError._FENCED, "x", txn_requires_abort=True)
    producer, consumer = FakeProducer(fail_commit=err), FakeConsumer()
    cp = _checkpoint(producer, consumer)
    cp.mark_processed("input", 2, 40)
    cp.mark_processed("input", 2, 41)
    with pytest.raises(TransactionAborted):
        cp.commit()
    assert producer.calls[-1] == ("abort",)
    assert consumer.seeks == [("input", 2, 40)]


def test_a_fatal_failure_rewinds_and_asks_for_a_new_producer() -> None:
    err = KafkaError(KafkaError._FENCED, "fenced", fatal=True)
    producer, consumer = FakeProducer(fail_commit=err), FakeConsumer()
    cp = _checkpoint(producer, consumer)
    cp.mark_processed("input", 0, 7)
    with pytest.raises(TransactionFatal):
        cp.commit()
    assert ("abort",) not in producer.calls
    assert consumer.seeks == [("input", 0, 7)]
