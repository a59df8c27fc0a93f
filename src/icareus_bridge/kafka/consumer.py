"""The consuming half of the Kafka edge, for both stages: a group consumer that hands out
plain `ConsumedRecord`s, partition callbacks with (topic, partition) pairs, lag from the cached
watermarks, and client errors as plain values (`ClientError`). An assignment that names a topic
the stage does not read (a static member handed what its instance held before a subscription
change, see `clients.foreign_topics`), or one the stage's `on_assign` refuses, is taken back
(`assign([])`): `on_refused` hears why, and the consumer leaves the group and joins again (at
the next `poll()`, or when the stage calls `rejoin()`). confluent-kafka stays inside kafka/."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from icareus_bridge.config import KafkaSettings
from icareus_bridge.kafka import clients

Header = tuple[str, bytes]


class Partition(NamedTuple):
    topic: str
    partition: int


class ConsumedRecord(msgspec.Struct, frozen=True, gc=False):
    """One consumed record, detached from the Kafka client (header values are bytes; a header
    without a value reads b""). A Struct, like the other per-record values of the stages: a
    frozen dataclass sets each field through `object.__setattr__`, ten times the cost."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ClientError:
    """A Kafka client's error as a plain value; `str()` is the client's own text."""

    code: str  # librdkafka's name of the error, e.g. "_TRANSPORT"
    text: str
    fatal: bool
    all_brokers_down: bool

    def __str__(self) -> str:
        return self.text


def client_error(err: Any) -> ClientError:
    """The plain value of a librdkafka error (an error callback's or a record's)."""
    return ClientError(
        code=str(err.name()) if isinstance(err, KafkaError) else str(err.code()),
        text=str(err),
        fatal=clients.is_fatal(err),
        all_brokers_down=clients.is_all_brokers_down(err),
    )


class ConsumerFailed(Exception):
    """The consumer reported an error it cannot recover from (`error`, when it came from
    the client)."""

    def __init__(self, message: str, error: ClientError | None = None) -> None:
        super().__init__(message)
        self.error = error


AssignCallback = Callable[[list[Partition]], str | None]
PartitionsCallback = Callable[[list[Partition]], None]
ReasonCallback = Callable[[str], None]
ErrorCallback = Callable[[ClientError], None]


def _headers(raw: Any) -> tuple[Header, ...]:
    if isinstance(raw, dict):
        raw = list(raw.items())
    return tuple((name, value if isinstance(value, bytes) else b"") for name, value in raw)


def _record(msg: Any) -> ConsumedRecord:
    ts_type, ts = msg.timestamp()
    raw_headers = msg.headers()
    return ConsumedRecord(
        msg.topic() or "",
        msg.partition() or 0,
        msg.offset() or 0,
        msg.key(),
        msg.value(),
        _headers(raw_headers) if raw_headers else (),
        ts if ts_type != 0 else None,
    )


class GroupConsumer:
    """A stage's group consumer of `topics` (read_committed, no auto-commit, static membership
    with `instance_id`). The callbacks run inside `poll()`, on the caller's thread; `on_assign`
    may return a reason to refuse the assignment. `role` names the stage in refusals."""

    def __init__(
        self,
        kafka: KafkaSettings,
        group_id: str,
        topics: Sequence[str],
        *,
        instance_id: str | None,
        on_assign: AssignCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
        on_refused: ReasonCallback | None = None,
        on_error: ErrorCallback | None = None,
        on_record_error: ErrorCallback | None = None,
        role: str = "stage",
        rejoin_on_poll: bool = True,
    ) -> None:
        self.topics = tuple(topics)
        self.role = role
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lost = on_lost
        self._on_refused = on_refused
        self._on_record_error = on_record_error
        self._rejoin_on_poll = rejoin_on_poll
        self.rejoin_reason: str | None = None
        error_cb = None if on_error is None else (lambda err: on_error(client_error(err)))
        self.raw: Consumer = clients.consumer(
            kafka, group_id, instance_id=instance_id, error_cb=error_cb
        )
        self._subscribe()

    # --- membership ---------------------------------------------------------------------

    def _subscribe(self) -> None:
        self.raw.subscribe(
            list(self.topics),
            on_assign=self._assigned,
            on_revoke=self._revoked,
            on_lost=self._lost,
        )

    def _assigned(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        foreign = clients.foreign_topics(self.topics, partitions)
        if foreign:
            self._refuse(
                consumer,
                f"assigned partitions of {', '.join(foreign)}, which this {self.role} does not "
                "read (kept from before a subscription change); rejoining the group",
            )
            return
        reason = self._on_assign(_partitions(partitions))
        if reason is not None:
            self._refuse(consumer, reason)

    def _refuse(self, consumer: Any, reason: str) -> None:
        """Take none of the assignment; the consumer rejoins (see the module doc)."""
        consumer.assign([])
        self.rejoin_reason = reason
        if self._on_refused is not None:
            self._on_refused(reason)

    def _revoked(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self._on_revoke(_partitions(partitions))

    def _lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self._on_lost(_partitions(partitions))

    def rejoin(self) -> None:
        """Leave the group and join again as a new member (librdkafka's unsubscribe sends
        LeaveGroup also for a static member), so the coordinator rebalances."""
        self.rejoin_reason = None
        self.raw.unsubscribe()
        self._subscribe()

    # --- reading ------------------------------------------------------------------------

    def poll(self, max_records: int, timeout: float = 0.0) -> list[ConsumedRecord]:
        """Up to `max_records` records. End-of-partition events are skipped, other transient
        errors go to `on_record_error` (librdkafka retries by itself); a fatal one raises
        `ConsumerFailed`."""
        if self._rejoin_on_poll and self.rejoin_reason is not None:
            self.rejoin()
        out: list[ConsumedRecord] = []
        for msg in self.raw.consume(num_messages=max_records, timeout=timeout):
            err = msg.error()
            if err is None:
                out.append(_record(msg))
            elif clients.is_fatal(err):
                raise ConsumerFailed(f"topic {', '.join(self.topics)}: {err}", client_error(err))
            elif not clients.is_partition_eof(err) and self._on_record_error is not None:
                self._on_record_error(client_error(err))
        return out

    def committed(
        self, partitions: Sequence[Partition], timeout: float = 30.0
    ) -> dict[Partition, tuple[int, str]]:
        """Per partition: (committed offset, its metadata); partitions never committed omitted."""
        tps = [TopicPartition(t, p) for t, p in partitions]
        out: dict[Partition, tuple[int, str]] = {}
        try:
            for tp in self.raw.committed(tps, timeout=timeout):
                if tp.offset >= 0:
                    out[Partition(tp.topic, tp.partition)] = (tp.offset, tp.metadata or "")
        except KafkaException as exc:
            topics = ", ".join(self.topics)
            raise ConsumerFailed(f"topic {topics}: committed offsets unreadable: {exc}") from exc
        return out

    def seek(self, topic: str, partition: int, offset: int | None) -> None:
        """Read `partition` again from `offset` (None: from its beginning)."""
        target = OFFSET_BEGINNING if offset is None or offset < 0 else offset
        self.raw.seek(TopicPartition(topic, partition, target))

    def pause(self, partitions: Iterable[Partition]) -> None:
        tps = [TopicPartition(t, p) for t, p in partitions]
        if tps:
            self.raw.pause(tps)

    def resume(self, partitions: Iterable[Partition]) -> None:
        tps = [TopicPartition(t, p) for t, p in partitions]
        if tps:
            self.raw.resume(tps)

    # --- lag and reachability -------------------------------------------------------------

    def lag(self, topic: str, partition: int, position: int) -> int | None:
        """Records after `position` in the partition (cached high watermark, no broker call)."""
        try:
            _, high = self.raw.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        except KafkaException:
            return None
        return None if high < 0 else max(high - position, 0)

    def partition_lag(self, partitions: Iterable[tuple[str, int]]) -> list[clients.PartitionLag]:
        """Records between the consumer's position and the end of each partition."""
        return clients.partition_lag(self.raw, partitions)

    def reachable(self, timeout: float = 1.0) -> bool:
        """True when the cluster answers a metadata call within `timeout`."""
        try:
            self.raw.list_topics(self.topics[0], timeout=timeout)
        except Exception:
            return False
        return True

    def close(self) -> None:
        self.raw.close()


def _partitions(partitions: list[TopicPartition]) -> list[Partition]:
    return [Partition(tp.topic, tp.partition) for tp in partitions]


__all__ = [
    "ClientError",
    "ConsumedRecord",
    "ConsumerFailed",
    "GroupConsumer",
    "Partition",
    "client_error",
]
