"""Reading a changelog partition from its beginning to its end, for state restore.

A plain `assign()` consumer (no group) reads committed records only; the end is where the
broker reports end-of-partition (the last stable offset for a read_committed reader), so an
aborted or still-open transaction is never restored."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from icareus_bridge.config import KafkaSettings
from icareus_bridge.kafka.clients import assign_only_consumer, is_partition_eof, kafka_error

# Errors that only mean "the partition's leader is not known yet".
_NOT_YET = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError._TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)

# (partition, key, value) -> None; value None is a tombstone.
ApplyRecord = Callable[[int, bytes, bytes | None], None]


class RestoreError(Exception):
    """The changelog could not be read to its end (broker unreachable, timeout)."""


def _watermarks(consumer: Consumer, topic: str, partition: int, deadline: float) -> tuple[int, int]:
    """The partition's low and high watermarks. Right after the bridge creates its topics the
    leaders may still be elected: a retriable error (NOT_LEADER_FOR_PARTITION,
    LEADER_NOT_AVAILABLE, a timeout) is asked again until `deadline`, not raised."""
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition),
                timeout=max(1.0, min(10.0, deadline - time.monotonic())),
            )
            return int(low), int(high)
        except KafkaException as exc:
            err = kafka_error(exc)
            retriable = err is not None and (err.retriable() or err.code() in _NOT_YET)
            if not retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read_to_end(
    kafka: KafkaSettings,
    topic: str,
    partitions: Iterable[int],
    apply: ApplyRecord,
    *,
    timeout: float = 600.0,
    batch: int = 10000,
) -> dict[int, int]:
    """Feed every committed record of `topic`'s `partitions`, in offset order, to `apply`;
    return the number of records read per partition. Raises `RestoreError` after `timeout`."""
    parts = sorted(set(partitions))
    counts = dict.fromkeys(parts, 0)
    if not parts:
        return counts
    consumer = assign_only_consumer(kafka)
    try:
        deadline = time.monotonic() + timeout
        pending: set[int] = set()
        for p in parts:
            low, high = _watermarks(consumer, topic, p, deadline)
            if high > low:
                pending.add(p)
        if not pending:
            return counts
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(pending)])
        while pending:
            if time.monotonic() > deadline:
                raise RestoreError(
                    f"topic {topic}: partitions {sorted(pending)} not read to the end "
                    f"within {timeout:.0f}s"
                )
            for msg in consumer.consume(num_messages=batch, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if is_partition_eof(err):
                        pending.discard(msg.partition() or 0)
                        continue
                    if err.fatal() or not err.retriable():
                        raise RestoreError(f"topic {topic}: {err}")
                    continue
                part = msg.partition()
                key = msg.key()
                if part is None or key is None:
                    continue
                apply(part, key, msg.value())
                counts[part] += 1
        return counts
    except KafkaException as exc:
        raise RestoreError(f"topic {topic}: {exc}") from exc
    finally:
        consumer.close()
