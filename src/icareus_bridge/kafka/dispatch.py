"""The dispatcher's Kafka edge: its group consumer of the requests topic (non-blocking polls from
the event loop, pause/resume, committed offsets with their metadata) and the transaction that
makes a batch of results, dead letters and parked-key markers visible together with the offsets
it finishes. Plain Python values cross this edge; confluent-kafka stays inside it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
)

from icareus_bridge.config import KafkaSettings
from icareus_bridge.kafka.checkpoint import Checkpoint, CommitStats, DeadLetterRoute, OutboundRecord
from icareus_bridge.kafka.clients import consumer as group_consumer
from icareus_bridge.kafka.clients import (
    foreign_topics,
    is_fatal,
    is_partition_eof,
    transactional_producer,
)

Header = tuple[str, bytes]
PartitionsCallback = Callable[[list[int]], None]
ReasonCallback = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ConsumedRecord:
    """One record of the requests topic, as read."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]
    timestamp_ms: int | None


class ConsumerFailed(Exception):
    """The consumer reported an error it cannot recover from."""


class RequestsConsumer:
    """Group consumer of one topic; `on_assign` / `on_revoke` receive partition numbers and
    run inside `poll()`, on the caller's thread. An assignment that names another topic (a
    static member handed what its instance held before a subscription change, see
    `clients.foreign_topics`) is refused: `on_refused` gets the reason, and the next `poll()`
    leaves the group and joins again."""

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
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lost = on_lost
        self._on_refused = on_refused
        self._rejoin_reason: str | None = None
        self.raw: Consumer = group_consumer(kafka, group_id, instance_id=instance_id)
        self._subscribe()

    def _subscribe(self) -> None:
        self.raw.subscribe(
            [self.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost
        )

    def _assigned(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        foreign = foreign_topics([self.topic], partitions)
        if foreign:
            consumer.assign([])
            reason = (
                f"assigned partitions of {', '.join(foreign)}, which this dispatcher does not "
                "read (kept from before a subscription change); rejoining the group"
            )
            self._rejoin_reason = reason
            if self._on_refused is not None:
                self._on_refused(reason)
            return
        self._on_assign(sorted(tp.partition for tp in partitions))

    def _revoked(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self._on_revoke(sorted(tp.partition for tp in partitions))

    def _lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self._on_lost(sorted(tp.partition for tp in partitions))

    def rejoin(self) -> None:
        """Leave the group and join again as a new member (librdkafka's unsubscribe sends
        LeaveGroup also for a static member), so the coordinator rebalances."""
        self._rejoin_reason = None
        self.raw.unsubscribe()
        self._subscribe()

    def poll(self, max_records: int, timeout: float = 0.0) -> list[ConsumedRecord]:
        if self._rejoin_reason is not None:
            self.rejoin()
        out: list[ConsumedRecord] = []
        for msg in self.raw.consume(num_messages=max_records, timeout=timeout):
            err = msg.error()
            if err is not None:
                if is_partition_eof(err):
                    continue
                if is_fatal(err):
                    raise ConsumerFailed(f"topic {self.topic}: {err}")
                continue  # transient: librdkafka retries by itself
            ts_type, ts = msg.timestamp()
            raw_headers = msg.headers() or []
            if isinstance(raw_headers, dict):
                raw_headers = list(raw_headers.items())
            out.append(
                ConsumedRecord(
                    topic=msg.topic() or self.topic,
                    partition=msg.partition() or 0,
                    offset=msg.offset() or 0,
                    key=msg.key(),
                    value=msg.value(),
                    headers=tuple(
                        (name, value if isinstance(value, bytes) else b"")
                        for name, value in raw_headers
                    ),
                    timestamp_ms=ts if ts_type != 0 else None,
                )
            )
        return out

    def committed(
        self, partitions: Sequence[int], timeout: float = 30.0
    ) -> dict[int, tuple[int, str]]:
        """Per partition: (committed offset, its metadata); partitions never committed omitted."""
        tps = [TopicPartition(self.topic, p) for p in partitions]
        out: dict[int, tuple[int, str]] = {}
        try:
            for tp in self.raw.committed(tps, timeout=timeout):
                if tp.offset >= 0:
                    out[tp.partition] = (tp.offset, tp.metadata or "")
        except KafkaException as exc:
            raise ConsumerFailed(
                f"topic {self.topic}: committed offsets unreadable: {exc}"
            ) from exc
        return out

    def seek(self, partition: int, offset: int | None) -> None:
        """Read `partition` again from `offset` (None: from its beginning)."""
        target = OFFSET_BEGINNING if offset is None or offset < 0 else offset
        self.raw.seek(TopicPartition(self.topic, partition, target))

    def pause(self, partitions: Iterable[int]) -> None:
        tps = [TopicPartition(self.topic, p) for p in partitions]
        if tps:
            self.raw.pause(tps)

    def resume(self, partitions: Iterable[int]) -> None:
        tps = [TopicPartition(self.topic, p) for p in partitions]
        if tps:
            self.raw.resume(tps)

    def lag(self, partition: int, position: int) -> int | None:
        """Records after `position` in the partition (cached high watermark, no broker call)."""
        try:
            _, high = self.raw.get_watermark_offsets(
                TopicPartition(self.topic, partition), cached=True
            )
        except KafkaException:
            return None
        return None if high < 0 else max(high - position, 0)

    def close(self) -> None:
        self.raw.close()


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
        checkpoint = Checkpoint(
            self.producer,
            self._consumer.raw,
            changelog_topic="",
            dead_letters=self._dead_letters,
            new_producer=self._new_producer,
        )
        try:
            for record in records:
                checkpoint.produce(record)
            for partition, (offset, metadata) in offsets.items():
                checkpoint.commit_offset(self._consumer.topic, partition, offset, metadata)
            return checkpoint.commit()
        finally:
            self.producer = checkpoint.producer  # replaced after a refused record

    def close(self, timeout: float = 10.0) -> None:
        self.producer.flush(timeout)


__all__ = [
    "ConsumedRecord",
    "ConsumerFailed",
    "DispatchTransactions",
    "RequestsConsumer",
]
