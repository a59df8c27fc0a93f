"""Reading a changelog partition from its beginning to its end, for state restore.

A plain `assign()` consumer (no group) reads committed records only; the end is where the
broker reports end-of-partition (the last stable offset for a read_committed reader), so an
aborted or still-open transaction is never restored."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from icareus_bridge.config import KafkaSettings
from icareus_bridge.kafka.clients import assign_only_consumer

# (partition, key, value) -> None; value None is a tombstone.
ApplyRecord = Callable[[int, bytes, bytes | None], None]


class RestoreError(Exception):
    """The changelog could not be read to its end (broker unreachable, timeout)."""


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
        pending: set[int] = set()
        for p in parts:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=min(timeout, 30.0)
            )
            if high > low:
                pending.add(p)
        if not pending:
            return counts
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(pending)])
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise RestoreError(
                    f"topic {topic}: partitions {sorted(pending)} not read to the end "
                    f"within {timeout:.0f}s"
                )
            for msg in consumer.consume(num_messages=batch, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
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
