"""The Kafka side of `icareus-bridge archive`: reading the results topic up to the cut-off, the
requests that belong to them, the committed positions of consumer groups, and DeleteRecords."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition

from icareus_bridge.codec import REQUEST, RESULT, Codec, DecodeError, DecodeReason
from icareus_bridge.config import Settings
from icareus_bridge.kafka.admin import KafkaRefused, admin_client, first_contact
from icareus_bridge.kafka.clients import assign_only_consumer, is_partition_eof


class KafkaUnreachable(Exception):
    """No broker answered; the message names `kafka.bootstrap_servers`."""


class TopicMissing(Exception):
    """A configured topic does not exist; the message names the config key."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """One record read from Kafka: where it lay, its Kafka timestamp, its decoded value."""

    partition: int
    offset: int
    timestamp: int
    value: dict[str, Any]


@dataclass
class ResultsRead:
    records: list[Fetched] = field(default_factory=list)
    # partition -> offset of a result that does not decode (the partition stops before it)
    undecodable: dict[int, tuple[int, str]] = field(default_factory=dict)


@dataclass
class RequestsRead:
    found: dict[str, Fetched] = field(default_factory=dict)  # request id -> the request
    # partition -> (offset, request id or None when it does not decode), in offset order;
    # only collected when asked for (the deletion of requests needs it)
    log: dict[int, list[tuple[int, str | None]]] = field(default_factory=dict)
    # partition -> the offset after the last record read
    end: dict[int, int] = field(default_factory=dict)


class Cluster:
    """An admin client for one archive run, with the broker checked at once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timeout = settings.archive.kafka_timeout_seconds
        self.admin, self._errors = admin_client(settings.kafka)
        self.partitions = self._topics()

    def _unreachable(self, exc: Exception) -> KafkaUnreachable:
        return KafkaUnreachable(
            f"kafka.bootstrap_servers={self.settings.kafka.bootstrap_servers}: "
            f"Kafka unreachable: {exc}"
        )

    def _topics(self) -> dict[str, int]:
        try:
            md = first_contact(self.admin, self.settings.kafka, self._errors, self.timeout)
        except KafkaRefused as exc:
            raise KafkaUnreachable(str(exc)) from None
        except KafkaException as exc:
            raise self._unreachable(exc) from exc
        return {n: len(t.partitions) for n, t in md.topics.items() if t.error is None}

    def require(self, key: str, topic: str) -> list[int]:
        """The partition numbers of `topic`, the value of config key `key`."""
        n = self.partitions.get(topic)
        if not n:
            raise TopicMissing(f"{key}: topic {topic} does not exist on the broker")
        return list(range(n))

    def watermarks(self, topic: str, partitions: Iterable[int]) -> dict[int, tuple[int, int]]:
        consumer = assign_only_consumer(self.settings.kafka)
        try:
            out: dict[int, tuple[int, int]] = {}
            for p in partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=self.timeout
                )
                out[p] = (low, high)
            return out
        except KafkaException as exc:
            raise self._unreachable(exc) from exc
        finally:
            consumer.close()

    def committed(self, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int | None]:
        """The group's committed offset per partition of `topic`; None where it has none."""
        tps = [TopicPartition(topic, p) for p in partitions]
        request = ConsumerGroupTopicPartitions(group, tps)
        try:
            futures = self.admin.list_consumer_group_offsets(
                [request], request_timeout=self.timeout
            )
            answer = futures[group].result(timeout=self.timeout)
        except KafkaException as exc:
            raise self._unreachable(exc) from exc
        return {
            tp.partition: (tp.offset if tp.offset >= 0 else None)
            for tp in answer.topic_partitions
        }

    def delete_before(self, topic: str, offsets: dict[int, int]) -> dict[int, int]:
        """DeleteRecords: every record of each partition before its offset leaves the log.
        Returns the new low watermark per partition."""
        if not offsets:
            return {}
        tps = [TopicPartition(topic, p, o) for p, o in sorted(offsets.items())]
        try:
            futures = self.admin.delete_records(
                tps, request_timeout=self.timeout, operation_timeout=self.timeout
            )
            return {tp.partition: fut.result().low_watermark for tp, fut in futures.items()}
        except KafkaException as exc:
            raise self._unreachable(exc) from exc

    # -- reading -----------------------------------------------------------------------------

    def _read(
        self,
        topic: str,
        start: dict[int, int],
        on_record: Any,
    ) -> dict[int, int]:
        """Read each partition (read_committed) from its start offset to its end as it was when
        reading began; `on_record(partition, offset, timestamp, value)` returns False to stop that
        partition. Returns per partition the offset after the last record handed over."""
        marks = self.watermarks(topic, start)
        todo = {p for p, o in start.items() if o < marks[p][1]}
        ends = {p: start[p] for p in start}
        if not todo:
            return ends
        consumer = assign_only_consumer(self.settings.kafka, read_committed=True)
        try:
            consumer.assign([TopicPartition(topic, p, start[p]) for p in sorted(todo)])
            last_heard = time.monotonic()
            while todo:
                messages = consumer.consume(num_messages=1000, timeout=0.5)
                if messages:
                    last_heard = time.monotonic()
                elif time.monotonic() - last_heard > self.timeout:
                    raise KafkaUnreachable(
                        f"kafka.bootstrap_servers={self.settings.kafka.bootstrap_servers}: "
                        f"no records from {topic} for {self.timeout:.0f} s, partitions "
                        f"{sorted(todo)} not read to their end"
                    )
                for m in messages:
                    p = m.partition()
                    if p not in todo:
                        continue
                    err = m.error()
                    if err is not None:
                        if is_partition_eof(err):
                            todo.discard(p)
                            continue
                        if err.fatal() or not err.retriable():
                            raise self._unreachable(KafkaException(err))
                        continue
                    offset = m.offset()
                    assert offset is not None
                    if not on_record(p, offset, m.timestamp()[1], m.value()):
                        todo.discard(p)
                        continue
                    ends[p] = offset + 1
                    if ends[p] >= marks[p][1]:
                        todo.discard(p)
            return ends
        finally:
            consumer.close()

    def read_results(
        self, codec: Codec, topic: str, start: dict[int, int], cutoff_ms: int
    ) -> ResultsRead:
        """Every committed result from `start` per partition whose Kafka timestamp is at or
        before the cut-off, stopping each partition at its first younger record (so what is
        archived of a partition is always one run of offsets, and the next run goes on from
        there)."""
        out = ResultsRead()

        def take(p: int, offset: int, ts: int, value: bytes | None) -> bool:
            if ts > cutoff_ms:
                return False
            try:
                name, obj = codec.decode(value or b"")
                if name != RESULT:
                    raise DecodeError(
                        DecodeReason.UNKNOWN_SCHEMA, f"a {name} record on the results topic"
                    )
            except DecodeError as exc:
                out.undecodable[p] = (offset, str(exc))
                return False
            out.records.append(Fetched(p, offset, ts, obj))
            return True

        self._read(topic, start, take)
        return out

    def read_requests(
        self, codec: Codec, topic: str, partitions: list[int], wanted: set[str], keep_log: bool
    ) -> RequestsRead:
        """The requests of `wanted` (by request id) found on `topic`, read from the start of the
        log to its end. A request replayed from the dead-letter topic is on the topic twice;
        the later copy is the one that ran."""
        out = RequestsRead()
        marks = self.watermarks(topic, partitions)

        def take(p: int, offset: int, ts: int, value: bytes | None) -> bool:
            try:
                name, obj = codec.decode(value or b"")
                request_id = obj["request_id"] if name == REQUEST else None
            except DecodeError:
                request_id = None
            if keep_log:
                out.log.setdefault(p, []).append((offset, request_id))
            if request_id is not None and request_id in wanted:
                out.found[request_id] = Fetched(p, offset, ts, obj)
            return True

        out.end = self._read(topic, {p: marks[p][0] for p in partitions}, take)
        return out
