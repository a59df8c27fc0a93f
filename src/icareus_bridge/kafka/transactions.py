"""A stage's transactional producer and the checkpoints it commits through (the planner's
side of the Kafka edge; the dispatcher's is `DispatchTransactions` in kafka/dispatch.py).

`begin()` hands out the next `Checkpoint`; a checkpoint may replace the producer (after a
refused record or a stalled call, see kafka/checkpoint.py), and the next one starts with the
replacement. Errors of a producer abandoned after a stalled call are its fencing by the
replacement and are not reported."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer

from icareus_bridge.config import KafkaSettings
from icareus_bridge.kafka import clients
from icareus_bridge.kafka.checkpoint import Checkpoint, DeadLetterRoute, is_abandoned
from icareus_bridge.kafka.consumer import ClientError, GroupConsumer, client_error
from icareus_bridge.kafka.state import StateTransaction


class StageTransactions:
    """The transactional producer of `transactional_id` (made, with `init_transactions`, at
    construction: whatever an earlier process with this id left open is aborted) and the
    settings of every `Checkpoint` of the stage."""

    def __init__(
        self,
        kafka: KafkaSettings,
        transactional_id: str,
        *,
        dead_letters: DeadLetterRoute | None = None,
        on_error: Callable[[ClientError], None] | None = None,
        on_stall: Callable[[str], None] | None = None,
        max_records: int = 500,
        max_seconds: float = 0.1,
    ) -> None:
        self._kafka = kafka
        self.transactional_id = transactional_id
        self._dead_letters = dead_letters
        self._on_error = on_error
        self._on_stall = on_stall
        self._max_records = max_records
        self._max_seconds = max_seconds
        self._current: Checkpoint | None = None
        self._producer: Producer = self._new_producer()

    def _new_producer(self) -> Producer:
        made: list[Producer] = []
        report = self._on_error

        def on_error(err: Any) -> None:
            if report is not None and not (made and is_abandoned(made[0])):
                report(client_error(err))

        made.append(
            clients.transactional_producer(self._kafka, self.transactional_id, error_cb=on_error)
        )
        return made[0]

    @property
    def producer(self) -> Producer:
        """The producer in use (the last checkpoint's, which may have replaced it)."""
        return self._current.producer if self._current is not None else self._producer

    def begin(
        self, consumer: GroupConsumer, state: StateTransaction[Any] | None = None
    ) -> Checkpoint:
        """The next checkpoint, on the current producer, committing `consumer`'s offsets."""
        self._producer = self.producer
        self._current = Checkpoint(
            self._producer,
            consumer.raw,
            state,
            dead_letters=self._dead_letters,
            new_producer=self._new_producer,
            on_stall=self._on_stall,
            max_records=self._max_records,
            max_seconds=self._max_seconds,
        )
        return self._current

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (within `timeout`)."""
        self.producer.flush(timeout)


__all__ = ["StageTransactions"]
