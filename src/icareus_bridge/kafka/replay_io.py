"""Kafka reads for the operator commands: which topics the cluster holds, a compacted topic
created when missing, and every committed record of a topic read from its start (the dead
letters `replay` chooses from). Failures come back as `BrokerError`, `ReadIncomplete` or
`PartitionFailed`; the callers word them with their own config keys."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported at runtime
    AdminClient,
    NewTopic,
)

from icareus_bridge.config import KafkaSettings
from icareus_bridge.kafka.admin import admin_client, first_contact
from icareus_bridge.kafka.clients import (
    assign_only_consumer,
    base_config,
    is_partition_eof,
    kafka_error,
)
from icareus_bridge.kafka.publish import BrokerError, broker_error


class ReadIncomplete(Exception):
    """The topic was not read to its end within the time given."""


class PartitionFailed(Exception):
    """A partition reported an error that retrying does not cure; `str()` is the client's words."""


Headers = list[tuple[str, bytes | str | None]]


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One committed record as it lies in the log."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers | None


def _headers(raw: Headers | dict[str, bytes | str | None] | None) -> Headers | None:
    if raw is None:
        return None
    return list(raw.items()) if isinstance(raw, dict) else list(raw)


def probe_topics(kafka: KafkaSettings, timeout: float) -> dict[str, int]:
    """Topic name -> partition count. `KafkaRefused` at once when the broker refuses the
    credentials or the TLS handshake; `BrokerError` when nothing answered within `timeout`."""
    admin, errors = admin_client(kafka)
    try:
        md = first_contact(admin, kafka, errors, timeout)
    except KafkaException as exc:
        raise broker_error(exc) from exc
    return {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}


def create_compacted_topic(kafka: KafkaSettings, name: str, *, partitions: int = 1) -> None:
    """Creates `name` (cleanup.policy compact, `kafka.replication_factor` replicas); a topic
    that exists already is fine. Any other refusal raises `BrokerError`."""
    admin = AdminClient(base_config(kafka))
    new = NewTopic(
        name,
        num_partitions=partitions,
        replication_factor=kafka.replication_factor,
        config={"cleanup.policy": "compact"},
    )
    for _, fut in admin.create_topics([new], request_timeout=30).items():
        try:
            fut.result(timeout=30)
        except KafkaException as exc:
            err = kafka_error(exc)
            if not (err is not None and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise broker_error(exc) from exc


def read_from_start(
    kafka: KafkaSettings,
    topic: str,
    partitions: Iterable[int],
    *,
    timeout: float,
    watermark_timeout: float,
    batch: int = 1000,
) -> list[StoredRecord]:
    """Every committed record of `topic`'s `partitions`, from the start of the log to its end,
    in the order the consumer delivers them."""
    consumer = assign_only_consumer(kafka)
    out: list[StoredRecord] = []
    try:
        pending: set[int] = set()
        for p in partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=watermark_timeout
            )
            if high > low:
                pending.add(p)
        if pending:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(pending)])
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise ReadIncomplete(f"not read to its end within {timeout:.0f}s")
            for msg in consumer.consume(num_messages=batch, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if is_partition_eof(err):
                        pending.discard(msg.partition() or 0)
                    elif err.fatal() or not err.retriable():
                        raise PartitionFailed(err.str())
                    continue
                out.append(
                    StoredRecord(
                        partition=int(msg.partition() or 0),
                        offset=int(msg.offset() or 0),
                        key=msg.key(),
                        value=msg.value(),
                        headers=_headers(msg.headers()),
                    )
                )
    except KafkaException as exc:
        raise broker_error(exc) from exc
    finally:
        consumer.close()
    return out


__all__ = [
    "BrokerError",
    "PartitionFailed",
    "ReadIncomplete",
    "StoredRecord",
    "create_compacted_topic",
    "probe_topics",
    "read_from_start",
]
