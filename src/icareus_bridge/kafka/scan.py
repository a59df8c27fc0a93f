"""Bounded reads of topic partitions for the operator commands (`status`, `reset`): committed
records only, each range read up to a stop offset or to where the partition ends when the read
starts (the last stable offset, for a read_committed reader). No group, no commits.

Also Java's murmur2 key hash, the partition a keyed record lands in when its producer used
Kafka's default partitioner (the bridge's producers use librdkafka's `murmur2_random`, the same
hash), so a lookup can read the one partition that should hold a key first."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from icareus_bridge.config import KafkaSettings
from icareus_bridge.kafka.clients import (
    KafkaUnreachable,
    assign_only_consumer,
    error_text,
    is_partition_eof,
)

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF

# Client errors that mean the cluster cannot be reached at all (not a slow answer).
_UNREACHABLE = frozenset(
    {KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE, KafkaError._AUTHENTICATION}
)


def murmur2(data: bytes) -> int:
    """Kafka's `Utils.murmur2` (as an unsigned 32-bit value)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    end = length - length % 4
    for i in range(0, end, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length % 4
    if extra == 3:
        h ^= data[end + 2] << 16
    if extra >= 2:
        h ^= data[end + 1] << 8
    if extra >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def default_partition(key: bytes, partitions: int) -> int:
    """The partition Java's default partitioner (and librdkafka's murmur2) gives a keyed
    record: `toPositive(murmur2(key)) % partitions`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# librdkafka's logical offset "the last N records" (RD_KAFKA_OFFSET_TAIL).
_OFFSET_TAIL_BASE = -2000


@dataclass(frozen=True, slots=True)
class Range:
    """Offsets [start, stop) of one partition. `start` None = from the beginning; `tail` N
    instead = the last N offsets; `stop` None = to the partition's end as the read gets there
    (no watermark request is needed then)."""

    topic: str
    partition: int
    start: int | None = None
    stop: int | None = None
    tail: int | None = None


@dataclass(frozen=True, slots=True)
class Found:
    """One record a scan kept."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]


# (partition, offset, timestamp ms, key, value) -> None; for reads of every record.
Visit = Callable[[int, int, int | None, bytes, bytes | None], None]


class PartitionReader:
    """One assign-only consumer for a command's reads. Context manager; `probe()` first."""

    def __init__(self, kafka: KafkaSettings, *, timeout: float = 10.0) -> None:
        self.bootstrap = kafka.bootstrap_servers
        self.timeout = timeout
        self._down: str | None = None
        # (topic, partition) -> the first offset the last read of it returned.
        self.first_seen: dict[tuple[str, int], int] = {}
        self._consumer = assign_only_consumer(
            kafka,
            overrides={
                "error_cb": self._on_error,
                # A lookup reads whole partitions as fast as the broker sends them: large
                # fetches, and prefetch that keeps fetching while the records are looked at
                # (measured: a 167k-record partition read in half the time of 16 MiB fetches
                # with a 100k-record queue). Memory: up to a partition's size per partition.
                "queued.min.messages": 1000000,
                "queued.max.messages.kbytes": 524288,
                "fetch.max.bytes": 134217728,
                "max.partition.fetch.bytes": 134217728,
                "receive.message.max.bytes": 200000000,
                "socket.connection.setup.timeout.ms": max(int(timeout * 1000), 1000),
                # The broker answers a fetch at the end of a partition at once (end-of-partition
                # is known from that answer) instead of holding it for new records.
                "fetch.wait.max.ms": 10,
            },
        )

    def __enter__(self) -> PartitionReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._consumer.close()

    def _on_error(self, err: Any) -> None:
        if err is not None and err.code() in _UNREACHABLE:
            self._down = str(err.str())

    def _unreachable(self, detail: str) -> KafkaUnreachable:
        return KafkaUnreachable.at(self.bootstrap, self._down or detail)

    def partitions(self, topic: str) -> int | None:
        """The topic's partition count, None when the topic does not exist. Raises
        `KafkaUnreachable` when no broker answers within the reader's timeout."""
        deadline = time.monotonic() + self.timeout
        last = "no answer"
        while True:
            self._consumer.poll(0)  # serves error_cb
            if self._down is not None:
                raise self._unreachable(last)
            try:
                md = self._consumer.list_topics(topic, timeout=1.0)
            except KafkaException as exc:
                last = error_text(exc)
            else:
                meta = md.topics.get(topic)
                if meta is None or (
                    meta.error is not None and meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
                ):
                    return None
                if meta.error is None and meta.partitions:
                    return len(meta.partitions)
                last = str(meta.error)
            if time.monotonic() > deadline:
                raise self._unreachable(f"no metadata within {self.timeout:.0f}s ({last})")
            time.sleep(0.1)

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        try:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=self.timeout
            )
        except KafkaException as exc:
            raise self._unreachable(f"topic {topic}[{partition}]: {exc}") from exc
        return int(low), int(high)

    def scan(
        self,
        ranges: Iterable[Range],
        keys: set[bytes],
        *,
        timeout: float = 120.0,
    ) -> list[Found]:
        """Every committed record of `ranges` whose key is in `keys`, in offset order per
        partition."""
        found: list[Found] = []

        def keep(msg: Any) -> None:
            found.append(
                Found(
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    _timestamp(msg),
                    msg.key(),
                    msg.value(),
                    msg.headers() or (),
                )
            )

        self._read(ranges, keys, keep, timeout)
        return found

    def read_all(self, ranges: Iterable[Range], visit: Visit, *, timeout: float = 600.0) -> int:
        """Feed every committed keyed record of `ranges` to `visit`; the number read."""
        count = 0

        def each(msg: Any) -> None:
            nonlocal count
            count += 1
            visit(msg.partition(), msg.offset(), _timestamp(msg), msg.key(), msg.value())

        self._read(ranges, None, each, timeout)
        return count

    def _read(
        self,
        ranges: Iterable[Range],
        keys: set[bytes] | None,
        keep: Callable[[Any], None],
        timeout: float,
    ) -> None:
        """Feed the committed records of `ranges` whose key is in `keys` (None: every keyed
        record) to `keep`, each range up to its stop or end-of-partition."""
        deadline = time.monotonic() + timeout
        # (topic, partition) -> stop offset, or None: until end-of-partition.
        open_: dict[tuple[str, int], int | None] = {}
        assignment: list[TopicPartition] = []
        for r in ranges:
            if r.stop is not None:
                low, high = self.watermarks(r.topic, r.partition)
                stop = min(r.stop, high)
                start = low if r.start is None else max(r.start, low)
                if start >= stop:
                    continue
                offset = start
            elif r.tail is not None:
                offset, stop = _OFFSET_TAIL_BASE - r.tail, None
            else:
                offset, stop = (OFFSET_BEGINNING if r.start is None else r.start), None
            open_[(r.topic, r.partition)] = stop
            self.first_seen.pop((r.topic, r.partition), None)
            assignment.append(TopicPartition(r.topic, r.partition, offset))
        if not assignment:
            return
        consumer = self._consumer
        bounded = any(stop is not None for stop in open_.values())
        unseen = set(open_)  # partitions whose first offset is not known yet
        consumer.assign(assignment)
        try:
            while open_:
                if time.monotonic() > deadline:
                    raise self._unreachable(
                        f"partitions {sorted(open_)} not read within {timeout:.0f}s"
                    )
                if self._down is not None:
                    raise self._unreachable("connection lost")
                # A short wait: consume() waits the whole timeout unless the batch fills.
                batch: list[Any] = consumer.consume(num_messages=10000, timeout=0.02)
                for msg in batch:
                    key = msg.key()
                    # The hot path of a lookup: a record of another key, nothing to track.
                    if (
                        keys is not None
                        and key is not None
                        and key not in keys
                        and not bounded
                        and not unseen
                    ):
                        continue
                    err = msg.error()
                    where = (msg.topic(), msg.partition())
                    if err is not None:
                        if is_partition_eof(err):
                            open_.pop(where, None)
                        elif err.fatal() or not err.retriable():
                            raise self._unreachable(str(err))
                        continue
                    if where not in open_:
                        continue
                    if where in unseen:
                        unseen.discard(where)
                        self.first_seen[where] = msg.offset()
                    end = open_[where]
                    if end is not None and msg.offset() >= end:
                        del open_[where]
                        continue
                    if key is not None and (keys is None or key in keys):
                        keep(msg)
                    if end is not None and msg.offset() + 1 >= end:
                        del open_[where]
        except KafkaException as exc:
            raise self._unreachable(str(exc)) from exc
        finally:
            consumer.unassign()


def _timestamp(msg: Any) -> int | None:
    kind, ts = msg.timestamp()
    return int(ts) if kind != 0 and ts >= 0 else None


__all__ = [
    "Found",
    "KafkaUnreachable",
    "PartitionReader",
    "Range",
    "default_partition",
    "murmur2",
]
