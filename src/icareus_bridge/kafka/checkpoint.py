"""One transaction's worth of exactly-once work between topics.

A `Checkpoint` collects what a stage produced while it processed a batch of input records —
output records (requests, results, dead letters), changelog writes (last value per key) and
the offsets it has processed — and `commit()` makes all of it visible at once, or none of it.
The stage starts a new `Checkpoint` after every commit or abort.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

Header = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class OutboundRecord:
    """A record to produce; `partition` None lets the (murmur2) partitioner pick by key."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: list[Header] | None = None


@dataclass(slots=True)
class StateWrite:
    """A pending changelog write: the object the stage may read back before the commit
    (read-your-writes within the batch) and, once encoded at commit, its bytes (None = a
    tombstone)."""

    obj: Any
    value: bytes | None = None


@dataclass(frozen=True, slots=True)
class CommitStats:
    input_records: int
    produced: int
    state_writes: int
    seconds: float


class TransactionAborted(Exception):
    """The transaction was aborted; the consumer was rewound to the batch's first offsets and
    the stage must drop what it derived from the batch (its pending state) and read again."""


class TransactionFatal(Exception):
    """The producer can no longer be used (fenced by a newer instance, or a fatal error);
    the consumer was rewound. The stage must build a new producer (or stop)."""


def _kafka_error(exc: BaseException) -> KafkaError | None:
    err = exc.args[0] if exc.args else None
    return err if isinstance(err, KafkaError) else None


@dataclass
class Checkpoint:
    """Collects one batch's output, state writes and processed offsets; see `commit()`.

    `changelog_topic` receives the state writes, each in the partition number of the input
    record that caused it (co-partitioning does not depend on any partitioner)."""

    producer: Producer
    consumer: Consumer
    changelog_topic: str
    # Encodes a state object for the changelog; called once per key at commit, so a key
    # written many times in one batch is encoded once. None: objects are already bytes.
    encode_state: Callable[[Any], bytes | None] | None = None
    max_records: int = 500
    max_seconds: float = 0.1
    commit_timeout: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _started_at: float | None = field(default=None, init=False)
    _in_transaction: bool = field(default=False, init=False)
    _next_offsets: dict[tuple[str, int], int] = field(default_factory=dict, init=False)
    _first_offsets: dict[tuple[str, int], int] = field(default_factory=dict, init=False)
    _offset_metadata: dict[tuple[str, int], str] = field(default_factory=dict, init=False)
    _state: dict[tuple[int, bytes], StateWrite] = field(default_factory=dict, init=False)
    _records: int = field(default=0, init=False)
    _produced: int = field(default=0, init=False)

    # --- collecting ---------------------------------------------------------------------

    def _begin(self) -> None:
        if not self._in_transaction:
            self.producer.begin_transaction()
            self._in_transaction = True

    def produce(self, record: OutboundRecord) -> None:
        """Produce inside this checkpoint's transaction (begun on the first record)."""
        if not self._in_transaction:
            self._begin()
        partition = -1 if record.partition is None else record.partition  # -1: partitioner
        while True:
            try:
                if record.headers:
                    headers: list[tuple[str, str | bytes | None]] = list(record.headers)
                    self.producer.produce(
                        record.topic, record.value, record.key, partition=partition, headers=headers
                    )
                else:
                    self.producer.produce(record.topic, record.value, record.key, partition)
                break
            except BufferError:
                # Local queue full: let librdkafka send, then try again.
                self.producer.poll(0.05)
        self._produced += 1

    def put_state(self, partition: int, key: bytes, obj: Any) -> None:
        """Record a changelog write (obj None = tombstone); only the last write per key is
        encoded and produced, at commit."""
        self._state[(partition, key)] = StateWrite(obj)

    def pending_state(self, partition: int, key: bytes) -> StateWrite | None:
        """The write this checkpoint holds for the key, if any (read-your-writes)."""
        return self._state.get((partition, key))

    def state_writes(self) -> Iterator[tuple[int, bytes, StateWrite]]:
        for (partition, key), write in self._state.items():
            yield partition, key, write

    def mark_processed(self, topic: str, partition: int, offset: int) -> None:
        """Offset `offset` of `topic`/`partition` is fully handled by this checkpoint."""
        tp = (topic, partition)
        if tp not in self._first_offsets:
            self._first_offsets[tp] = offset
        self._next_offsets[tp] = offset + 1
        self._records += 1
        if self._started_at is None:
            self._started_at = self.clock()

    def commit_offset(
        self, topic: str, partition: int, next_offset: int, metadata: str = ""
    ) -> None:
        """Commit `next_offset` (the next one to read) of `topic`/`partition` with this
        transaction, `metadata` stored beside it: for a stage whose records finish out of order
        (the dispatcher), which computes the commit point itself. Not an input record."""
        self._next_offsets[(topic, partition)] = next_offset
        self._offset_metadata[(topic, partition)] = metadata

    # --- deciding -----------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        return self._records == 0 and not self._in_transaction and not self._next_offsets

    @property
    def records(self) -> int:
        return self._records

    def due(self) -> bool:
        """Full (count) or old enough (time) to commit."""
        if self._records == 0:
            return False
        if self._records >= self.max_records:
            return True
        return self._started_at is not None and self.clock() - self._started_at >= self.max_seconds

    def partitions(self) -> set[tuple[str, int]]:
        return set(self._next_offsets)

    # --- committing ---------------------------------------------------------------------

    def commit(self) -> CommitStats:
        """Make the batch visible atomically. Steps, in order:

        1. Begin the transaction if nothing was produced yet (offsets alone still need one).
        2. Produce the changelog: the last write per key, encoded now, to the partition of
           the input record that caused it.
        3. `send_offsets_to_transaction`: the next offset of every processed partition, with
           the consumer's group metadata (generation-fenced: a member that lost its partitions
           in a rebalance cannot commit them).
        4. `commit_transaction`: flushes every produced record, then commits; retried while
           the error is retriable.

        On an abortable error: abort, rewind, raise `TransactionAborted`. On a fatal one
        (fenced): rewind, raise `TransactionFatal`. A checkpoint is spent after `commit()`.
        """
        started = time.monotonic()
        if self.empty:
            return CommitStats(0, 0, 0, 0.0)
        try:
            self._begin()  # 1
            encode = self.encode_state
            for partition, key, write in self.state_writes():  # 2
                if write.obj is None:
                    write.value = None
                elif encode is not None:
                    write.value = encode(write.obj)
                else:
                    write.value = write.obj
                self.produce(
                    OutboundRecord(self.changelog_topic, key, write.value, partition=partition)
                )
            if self._next_offsets:  # 3
                offsets = [
                    TopicPartition(t, p, o, self._offset_metadata[(t, p)])
                    if (t, p) in self._offset_metadata
                    else TopicPartition(t, p, o)
                    for (t, p), o in self._next_offsets.items()
                ]
                self.producer.send_offsets_to_transaction(
                    offsets, self.consumer.consumer_group_metadata(), self.commit_timeout
                )
            self._commit_transaction()  # 4
            self.producer.poll(0)  # serve the producer's queued events (client logs, errors)
        except KafkaException as exc:
            self._fail(exc)
        stats = CommitStats(
            input_records=self._records,
            produced=self._produced,
            state_writes=len(self._state),
            seconds=time.monotonic() - started,
        )
        self._in_transaction = False
        return stats

    def _commit_transaction(self) -> None:
        attempts = 0
        while True:
            try:
                self.producer.commit_transaction(self.commit_timeout)
                return
            except KafkaException as exc:
                err = _kafka_error(exc)
                attempts += 1
                if err is not None and err.retriable() and attempts < 5:
                    continue
                raise

    def _fail(self, exc: KafkaException) -> None:
        err = _kafka_error(exc)
        self.rewind()
        if err is not None and err.fatal():
            self._in_transaction = False
            raise TransactionFatal(f"transaction failed fatally: {err}") from exc
        self.abort()
        raise TransactionAborted(f"transaction aborted: {err or exc}") from exc

    def abort(self) -> None:
        """Abort the open transaction, if any (nothing of it becomes visible)."""
        if self._in_transaction:
            try:
                self.producer.abort_transaction(self.commit_timeout)
            except KafkaException as exc:
                err = _kafka_error(exc)
                self._in_transaction = False
                raise TransactionFatal(f"abort failed: {err or exc}") from exc
            self._in_transaction = False

    def rewind(self) -> None:
        """Seek the consumer back to the first offset this checkpoint processed, per
        partition, so the batch is read again (those are the last committed offsets)."""
        for (topic, partition), offset in self._first_offsets.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException:
                # Partition no longer assigned: its new owner starts from the committed offset.
                continue
