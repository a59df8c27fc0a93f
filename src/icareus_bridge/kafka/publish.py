"""Publishing for the operator commands: records written in Kafka transactions under one fixed
transactional id (`replay`), or through an idempotent producer with a delivery report per record
(`reset`). The commands hand over `OutgoingRecord`s and see `BrokerError`, never a librdkafka
object."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException

from icareus_bridge.config import KafkaSettings
from icareus_bridge.kafka.clients import idempotent_producer, kafka_error, transactional_producer


class BrokerError(Exception):
    """A Kafka call failed; `str()` is the client's own words (`KafkaError.str()`)."""


def broker_error(exc: KafkaException) -> BrokerError:
    """The exception in the client's own words (`KafkaError.str()`, not its repr)."""
    err = kafka_error(exc)
    return BrokerError(str(err.str()) if err is not None else str(exc))


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    """One record to publish; `partition` None lets the producer's partitioner choose."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None

    def produce_args(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"key": self.key, "value": self.value}
        if self.headers is not None:
            kwargs["headers"] = self.headers
        if self.partition is not None:
            kwargs["partition"] = self.partition
        return kwargs


class TransactionalPublisher:
    """Records published in transactions under `transactional_id`. Opening it fences any
    earlier producer with the same id (its open transaction is aborted). Every failing call
    raises `BrokerError`."""

    def __init__(
        self, kafka: KafkaSettings, transactional_id: str, *, init_timeout: float = 30.0
    ) -> None:
        try:
            self._producer = transactional_producer(
                kafka, transactional_id, init_timeout=init_timeout
            )
        except KafkaException as exc:
            raise broker_error(exc) from exc

    def begin(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise broker_error(exc) from exc

    def publish(self, records: Iterable[OutgoingRecord]) -> None:
        """Hands the records to the open transaction, in order."""
        try:
            for r in records:
                self._producer.produce(r.topic, **r.produce_args())
            self._producer.poll(0)
        except KafkaException as exc:
            raise broker_error(exc) from exc

    def commit(self, timeout: float) -> None:
        try:
            self._producer.commit_transaction(timeout)
        except KafkaException as exc:
            raise broker_error(exc) from exc

    def abort(self, timeout: float = 10.0) -> None:
        """Aborts the open transaction if there is one; never raises."""
        with suppress(Exception):
            self._producer.abort_transaction(timeout)

    def flush(self, timeout: float) -> int:
        """Waits for what is in flight; the number of records still undelivered."""
        return int(self._producer.flush(timeout))


class IdempotentPublisher:
    """Records published one by one (no duplicates from internal retries, order kept per
    partition); a record the broker did not take is told to its `on_failure` with the error."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._producer = idempotent_producer(kafka)

    def publish(self, record: OutgoingRecord, on_failure: Callable[[str], None]) -> None:
        """Queues the record (waiting while the producer's queue is full)."""

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                on_failure(str(err))

        while True:
            try:
                self._producer.produce(
                    record.topic, on_delivery=delivered, **record.produce_args()
                )
                break
            except BufferError:
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout: float) -> int:
        """Waits for delivery; the number of records still undelivered."""
        return int(self._producer.flush(timeout))


__all__ = [
    "BrokerError",
    "IdempotentPublisher",
    "OutgoingRecord",
    "TransactionalPublisher",
    "broker_error",
]
