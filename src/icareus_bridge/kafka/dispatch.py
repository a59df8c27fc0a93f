"""The dispatcher's Kafka edge: its group consumer of the requests topic (non-blocking polls from
the event loop, pause/resume, committed offsets with their metadata) and the transaction that
makes a batch of results, dead letters and parked-key markers visible together with the offsets
it finishes; the parked-key markers are the batch's state transaction (kafka/state.py), the
last write per key produced at commit. Plain Python values cross this edge; confluent-kafka
stays inside it. `ConsumedRecord` and `ConsumerFailed` live in kafka/consumer.py, shared with
the planner, and stay importable from here."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from confluent_kafka import Consumer, Producer

from icareus_bridge.config import KafkaSettings
from icareus_bridge.kafka.checkpoint import Checkpoint, CommitStats, DeadLetterRoute, OutboundRecord
from icareus_bridge.kafka.clients import transactional_producer
from icareus_bridge.kafka.consumer import ConsumedRecord, ConsumerFailed, GroupConsumer, Partition
from icareus_bridge.kafka.state import StateTransaction
from icareus_bridge.pipeline.parking import is_parked_marker

PartitionsCallback = Callable[[list[int]], None]
ReasonCallback = Callable[[str], None]


class RequestsConsumer:
    """Group consumer of one topic (a `GroupConsumer` of kafka/consumer.py); `on_assign` /
    `on_revoke` receive partition numbers and run inside `poll()`, on the caller's thread. An
    assignment that names another topic (a static member handed what its instance held before a
    subscription change, see `clients.foreign_topics`) is refused: `on_refused` gets the reason,
    and the next `poll()` leaves the group and joins again."""

    def __init__(
        self,
        kafka: KafkaSettings,
        group_id: str,
        topic: str,
        *,
        instance_id: str | None,
        on_assign: PartitionsCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
        on_refused: ReasonCallback | None = None,
    ) -> None:
        self.topic = topic

        def assigned(partitions: list[Partition]) -> None:
            on_assign(sorted(p.partition for p in partitions))

        self.group = GroupConsumer(
            kafka,
            group_id,
            [topic],
            instance_id=instance_id,
            on_assign=assigned,
            on_revoke=lambda ps: on_revoke(sorted(p.partition for p in ps)),
            on_lost=lambda ps: on_lost(sorted(p.partition for p in ps)),
            on_refused=on_refused,
            role="dispatcher",
        )
        self.raw: Consumer = self.group.raw

    def rejoin(self) -> None:
        """Leave the group and join again as a new member (librdkafka's unsubscribe sends
        LeaveGroup also for a static member), so the coordinator rebalances."""
        self.group.rejoin()

    def poll(self, max_records: int, timeout: float = 0.0) -> list[ConsumedRecord]:
        return self.group.poll(max_records, timeout)

    def committed(
        self, partitions: Sequence[int], timeout: float = 30.0
    ) -> dict[int, tuple[int, str]]:
        """Per partition: (committed offset, its metadata); partitions never committed omitted."""
        wanted = [Partition(self.topic, p) for p in partitions]
        return {tp.partition: v for tp, v in self.group.committed(wanted, timeout).items()}

    def seek(self, partition: int, offset: int | None) -> None:
        """Read `partition` again from `offset` (None: from its beginning)."""
        self.group.seek(self.topic, partition, offset)

    def pause(self, partitions: Iterable[int]) -> None:
        self.group.pause(Partition(self.topic, p) for p in partitions)

    def resume(self, partitions: Iterable[int]) -> None:
        self.group.resume(Partition(self.topic, p) for p in partitions)

    def lag(self, partition: int, position: int) -> int | None:
        """Records after `position` in the partition (cached high watermark, no broker call)."""
        return self.group.lag(self.topic, partition, position)

    def close(self) -> None:
        self.group.close()


class DispatchTransactions:
    """The dispatcher's transactional producer. `commit(records, offsets)` produces `records`
    and commits `offsets` ({partition: (next offset, metadata)}) in one transaction, through the
    shared `Checkpoint`; its exceptions (`TransactionAborted`, `TransactionFatal`) pass through.
    A record the broker refuses goes to `dead_letters` (when given) and the producer is
    replaced (see `Checkpoint`, "Refused records")."""

    def __init__(
        self,
        kafka: KafkaSettings,
        transactional_id: str,
        consumer: RequestsConsumer,
        *,
        dead_letters: DeadLetterRoute | None = None,
    ) -> None:
        self._consumer = consumer
        self._kafka = kafka
        self._transactional_id = transactional_id
        self._dead_letters = dead_letters
        self.producer: Producer = self._new_producer()

    def _new_producer(self) -> Producer:
        return transactional_producer(self._kafka, self._transactional_id)

    def commit(
        self, records: Sequence[OutboundRecord], offsets: dict[int, tuple[int, str]]
    ) -> CommitStats:
        markers, outputs = _split_markers(records)
        checkpoint = Checkpoint(
            self.producer,
            self._consumer.raw,
            markers,
            dead_letters=self._dead_letters,
            new_producer=self._new_producer,
        )
        try:
            for record in outputs:
                checkpoint.produce(record)
            for partition, (offset, metadata) in offsets.items():
                checkpoint.commit_offset(self._consumer.topic, partition, offset, metadata)
            return checkpoint.commit()
        finally:
            self.producer = checkpoint.producer  # replaced after a refused record

    def close(self, timeout: float = 10.0) -> None:
        self.producer.flush(timeout)


def _split_markers(
    records: Sequence[OutboundRecord],
) -> tuple[StateTransaction[bytes] | None, list[OutboundRecord]]:
    """Parked-key markers (pipeline/parking.py) become the batch's state transaction on the
    state topic (the last write per key, produced at commit); the other records are output."""
    markers: StateTransaction[bytes] | None = None
    outputs: list[OutboundRecord] = []
    for record in records:
        if record.partition is None or not is_parked_marker(record.key):
            outputs.append(record)
            continue
        assert record.key is not None
        if markers is None:
            markers = StateTransaction(record.topic)
        if record.value is None:
            markers.delete(record.partition, record.key)
        else:
            markers.set(record.partition, record.key, record.value)
    return markers, outputs


__all__ = [
    "ConsumedRecord",
    "ConsumerFailed",
    "DispatchTransactions",
    "RequestsConsumer",
]
