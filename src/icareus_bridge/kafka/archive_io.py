"""Kafka for `icareus-bridge archive`: the broker checked at once, watermarks, the committed
positions of consumer groups, DeleteRecords, and committed records read from given offsets to
the end a partition had when the read began. Failures raise `KafkaUnreachable`, naming
`kafka.bootstrap_servers`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition

from icareus_bridge.config import KafkaSettings
from icareus_bridge.kafka.admin import KafkaRefused, admin_client, first_contact
from icareus_bridge.kafka.clients import KafkaUnreachable, assign_only_consumer, is_partition_eof

# (partition, offset, Kafka timestamp, value) -> False to stop reading that partition
OnRecord = Callable[[int, int, int, "bytes | None"], bool]


class ArchiveKafka:
    """The Kafka calls of one archive run, against one admin client; the broker is asked for
    its topics when this is made."""

    def __init__(self, kafka: KafkaSettings, timeout: float) -> None:
        self.kafka = kafka
        self.timeout = timeout
        self._admin, self._errors = admin_client(kafka)
        self.partitions = self._topics()

    def _unreachable(self, exc: object) -> KafkaUnreachable:
        return KafkaUnreachable(
            f"kafka.bootstrap_servers={self.kafka.bootstrap_servers}: Kafka unreachable: {exc}"
        )

    def _topics(self) -> dict[str, int]:
        try:
            md = first_contact(self._admin, self.kafka, self._errors, self.timeout)
        except KafkaRefused as exc:
            raise KafkaUnreachable(str(exc)) from None
        except KafkaException as exc:
            raise self._unreachable(exc) from exc
        return {n: len(t.partitions) for n, t in md.topics.items() if t.error is None}

    def watermarks(self, topic: str, partitions: Iterable[int]) -> dict[int, tuple[int, int]]:
        """(low, high) per partition."""
        consumer = assign_only_consumer(self.kafka)
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
            futures = self._admin.list_consumer_group_offsets(
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
            futures = self._admin.delete_records(
                tps, request_timeout=self.timeout, operation_timeout=self.timeout
            )
            return {tp.partition: fut.result().low_watermark for tp, fut in futures.items()}
        except KafkaException as exc:
            raise self._unreachable(exc) from exc

    def read(self, topic: str, start: dict[int, int], on_record: OnRecord) -> dict[int, int]:
        """Read each partition (read_committed) from its start offset to its end as it was when
        reading began; `on_record(partition, offset, timestamp, value)` returns False to stop that
        partition. Returns per partition the offset after the last record handed over."""
        marks = self.watermarks(topic, start)
        todo = {p for p, o in start.items() if o < marks[p][1]}
        ends = {p: start[p] for p in start}
        if not todo:
            return ends
        consumer = assign_only_consumer(self.kafka, read_committed=True)
        try:
            consumer.assign([TopicPartition(topic, p, start[p]) for p in sorted(todo)])
            last_heard = time.monotonic()
            while todo:
                messages = consumer.consume(num_messages=1000, timeout=0.5)
                if messages:
                    last_heard = time.monotonic()
                elif time.monotonic() - last_heard > self.timeout:
                    raise KafkaUnreachable(
                        f"kafka.bootstrap_servers={self.kafka.bootstrap_servers}: "
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


__all__ = ["ArchiveKafka", "KafkaUnreachable", "OnRecord"]
