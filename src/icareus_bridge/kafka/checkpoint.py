"""One transaction's worth of exactly-once work between topics.

A `Checkpoint` collects what a stage produced while it processed a batch of input records —
output records (requests, results, dead letters) and the offsets it has processed — and is
handed the batch's `StateTransaction` (kafka/state.py, the changelog writes); `commit()` makes
all of it visible at once, or none of it, and only then applies the state writes to the store
(an abort or rewind discards them).
The stage starts a new `Checkpoint` after every commit or abort, with `checkpoint.producer`
(which `commit()` may have replaced, see "Refused records").

Refused records. The broker may refuse a record for good (over the topic's `max.message.bytes`,
invalid for the topic). The transaction can then only be aborted, and librdkafka (2.16) keeps
the partition's producer sequence numbers where they were: the next transaction writing to that
partition fails with OUT_OF_ORDER_SEQUENCE_NUMBER ("requires epoch bump"), and only its abort
bumps the epoch. So after such a refusal `commit()` replaces the producer (a new one with the
same transactional id: `init_transactions` fences the old one and starts with a new epoch and
fresh sequences, KIP-360) and, given a `DeadLetterRoute`, runs the batch again with each refused
record replaced by a dead letter naming it (reason RECORD_TOO_LARGE or RECORD_INVALID); a dead
letter refused in turn is sent truncated (no value, key cut to 1 KiB), still naming the record.

Stalled calls. With a `new_producer`, the calls that wait on the transaction coordinator
(`send_offsets_to_transaction`, `commit_transaction`, `abort_transaction`) run on a worker
thread under a watchdog: `commit_timeout` plus `STALL_GRACE` seconds. librdkafka 2.16 can block
in them far past their own timeout after the broker was stopped and started again (its cached
group coordinator is never looked up again, cf. confluentinc/librdkafka#5511). When a call
outlives the watchdog, the producer is abandoned (never called into again, never closed: its
thread may stay blocked), `on_stall` is told why, a new producer with the same transactional id
is made (`init_transactions` fences the stuck one and aborts its open transaction), the
consumer is rewound and `TransactionStalled` (a `TransactionAborted`) is raised: the stage
reads the batch again, as after any abort. A producer found in an erroneous state when a record
is produced (`_STATE`, e.g. after a broker freeze made the transaction fail in flight) is handled
like a refusal in flight: the producer is replaced and the batch run again at commit.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from icareus_bridge.kafka.clients import kafka_error
from icareus_bridge.kafka.state import StateTransaction
from icareus_bridge.pipeline.dead_letter import refused_dead_letter

Header = tuple[str, bytes]

# Produce errors by which the broker (or the client, before sending) refuses a record for good:
# sending it again cannot succeed. -> the dead letter's reason.
REFUSALS: dict[int, str] = {
    KafkaError.MSG_SIZE_TOO_LARGE: "RECORD_TOO_LARGE",
    KafkaError.RECORD_LIST_TOO_LARGE: "RECORD_TOO_LARGE",
    KafkaError.INVALID_MSG_SIZE: "RECORD_TOO_LARGE",
    KafkaError.INVALID_RECORD: "RECORD_INVALID",
    KafkaError.INVALID_MSG: "RECORD_INVALID",
}
_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)
MAX_RECOVERY_ATTEMPTS = 20
# Seconds a transactional call may run past its own timeout before its producer is abandoned.
STALL_GRACE = 5.0
# Attempts at a replacement producer after a stall (each init_transactions waits up to 60 s).
STALL_REPLACE_ATTEMPTS = 5
# Abandoned producers stay referenced: destroying one whose call is still blocked could block
# whichever thread drops the last reference.
_ABANDONED: list[Producer] = []


class OutboundRecord(msgspec.Struct, frozen=True, gc=False):
    """A record to produce; `partition` None lets the (murmur2) partitioner pick by key."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: list[Header] | None = None


@dataclass(frozen=True, slots=True)
class DeadLetterRoute:
    """Where a stage's refused records go: the dead-letter topic, the stage (`dlq.stage`) and
    the consumer group (`dlq.consumer.group`) the dead letters name."""

    topic: str
    stage: str
    group: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """A record the broker refused: its topic and partition, the dead letter's reason and the
    client's error text."""

    topic: str
    partition: int
    reason: str
    error: str
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class CommitStats:
    input_records: int
    produced: int
    state_writes: int
    seconds: float
    refused: tuple[Refusal, ...] = ()

    @property
    def dead_lettered(self) -> int:
        return len(self.refused)


class TransactionAborted(Exception):
    """The transaction was aborted; the consumer was rewound to the batch's first offsets and
    the stage must drop what it derived from the batch (its pending state) and read again."""


def is_abandoned(producer: object) -> bool:
    """True for a producer abandoned after a stalled call (its errors are its fencing)."""
    return any(producer is p for p in _ABANDONED)


class TransactionStalled(TransactionAborted):
    """A transactional call outlived its watchdog; its producer was abandoned and replaced, the
    consumer rewound (see "Stalled calls" in the module doc)."""


class _Stalled(Exception):
    """Raised by the watchdog inside `commit()`; never leaves the checkpoint."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"{what} did not return within {seconds:.0f} s")
        self.what = what


class TransactionFatal(Exception):
    """The producer can no longer be used (fenced by a newer instance, or a fatal error);
    the consumer was rewound. The stage must build a new producer (or stop)."""


@dataclass
class Checkpoint:
    """Collects one batch's output and processed offsets, with its state transaction; see
    `commit()`.

    `state` (None: the stage keeps no state) holds the batch's changelog writes, each produced
    to the partition number of the input record that caused it (co-partitioning does not
    depend on any partitioner)."""

    producer: Producer
    consumer: Consumer
    state: StateTransaction[Any] | None = None
    # Refused records become dead letters here (None: the batch is aborted, as for any
    # abortable error, after the producer is replaced).
    dead_letters: DeadLetterRoute | None = None
    # Builds the replacement producer (same transactional id) after a refusal.
    new_producer: Callable[[], Producer] | None = None
    max_records: int = 500
    max_seconds: float = 0.1
    commit_timeout: float = 30.0
    # Told (with the reason) when a transactional call outlived its watchdog.
    on_stall: Callable[[str], None] | None = None
    stall_grace: float = STALL_GRACE
    clock: Callable[[], float] = time.monotonic
    wall_clock_ms: Callable[[], int] = field(default=lambda: int(time.time() * 1000))
    _started_at: float | None = field(default=None, init=False)
    _in_transaction: bool = field(default=False, init=False)
    _next_offsets: dict[tuple[str, int], int] = field(default_factory=dict, init=False)
    _first_offsets: dict[tuple[str, int], int] = field(default_factory=dict, init=False)
    _offset_metadata: dict[tuple[str, int], str] = field(default_factory=dict, init=False)
    _records: int = field(default=0, init=False)
    _produced: int = field(default=0, init=False)
    # Every record produced in this transaction, in order (to run the batch again after a
    # refusal); `_marks`: (records produced so far, input) at each `mark_processed`, so a
    # refused record names the input that caused it; `_refused`: by index in `_outputs`.
    _outputs: list[OutboundRecord] = field(default_factory=list, init=False)
    _marks: list[tuple[int, tuple[str, int, int]]] = field(default_factory=list, init=False)
    _refused: dict[int, Refusal] = field(default_factory=dict, init=False)
    _failed: KafkaException | None = field(default=None, init=False)

    # --- collecting ---------------------------------------------------------------------

    def _begin(self) -> None:
        if not self._in_transaction:
            self.producer.begin_transaction()
            self._in_transaction = True

    def produce(self, record: OutboundRecord) -> None:
        """Produce inside this checkpoint's transaction (begun on the first record). A record
        the client itself refuses (over its `message.max.bytes`) becomes a dead letter at once
        when there is a route; without one the KafkaException is raised."""
        index = len(self._outputs)
        self._outputs.append(record)
        self._produced += 1
        if self._failed is not None:
            return  # the transaction already failed; kept for the run after recovery
        try:
            self._begin()
            self._send_output(index)
        except KafkaException as exc:
            err = kafka_error(exc)
            if err is None or err.code() != KafkaError._STATE or self.new_producer is None:
                raise
            # An earlier record of this transaction was refused in flight, or the transaction
            # failed in flight (a broker frozen past the session timeout): it can only be
            # aborted now. commit() replaces the producer and runs the batch again.
            self._failed = exc

    def _send_output(self, index: int, on_delivery: Callable[..., None] | None = None) -> None:
        """Send output `index`, or its dead letter when it is known to be refused."""
        while True:
            refusal = self._refused.get(index)
            out = self._outputs[index] if refusal is None else self._dead_letter(index, refusal)
            try:
                self._send(out, on_delivery)
                return
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is None or err.code() not in REFUSALS or self.dead_letters is None:
                    raise
                if refusal is not None and refusal.truncated:
                    raise  # even the truncated dead letter is too large for the client
                self._refuse(index, err, self._outputs[index])

    def _send(self, record: OutboundRecord, on_delivery: Callable[..., None] | None) -> None:
        partition = -1 if record.partition is None else record.partition  # -1: partitioner
        extra: dict[str, Any] = {} if on_delivery is None else {"on_delivery": on_delivery}
        while True:
            try:
                if record.headers:
                    headers: list[tuple[str, str | bytes | None]] = list(record.headers)
                    self.producer.produce(
                        record.topic,
                        record.value,
                        record.key,
                        partition=partition,
                        headers=headers,
                        **extra,
                    )
                else:
                    self.producer.produce(
                        record.topic, record.value, record.key, partition, **extra
                    )
                return
            except BufferError:
                # Local queue full: let librdkafka send, then try again.
                self.producer.poll(0.05)

    def _refuse(self, index: int, err: KafkaError, record: OutboundRecord) -> None:
        """Output `index` was refused with `err`: next time send its dead letter, or, if that
        was refused too (or the output is a dead letter itself), the truncated dead letter."""
        before = self._refused.get(index)
        route = self.dead_letters
        is_dead_letter = route is not None and record.topic == route.topic
        partition = -1 if record.partition is None else record.partition
        self._refused[index] = Refusal(
            topic=record.topic,
            partition=partition,
            reason=before.reason if before is not None else REFUSALS.get(err.code(), "REFUSED"),
            error=before.error if before is not None else f"{err.name()}: {err.str()}",
            truncated=before is not None or is_dead_letter,
        )

    def _source(self, index: int) -> tuple[str, int, int] | None:
        # The input marked next after output `index` was produced is the one that caused it.
        for produced, source in self._marks:
            if produced > index:
                return source
        return None

    def _dead_letter(self, index: int, refusal: Refusal) -> OutboundRecord:
        route = self.dead_letters
        assert route is not None
        record = self._outputs[index]
        key, value, headers = refused_dead_letter(
            topic=record.topic,
            partition=refusal.partition,
            key=record.key,
            value=record.value,
            headers=record.headers,
            reason=refusal.reason,
            error=refusal.error,
            source=self._source(index),
            stage=route.stage,
            group=route.group,
            now_ms=self.wall_clock_ms(),
            truncated=refusal.truncated,
            is_dead_letter=record.topic == route.topic,
        )
        return OutboundRecord(route.topic, key, value, headers=headers)

    def mark_processed(self, topic: str, partition: int, offset: int) -> None:
        """Offset `offset` of `topic`/`partition` is fully handled by this checkpoint."""
        tp = (topic, partition)
        if tp not in self._first_offsets:
            self._first_offsets[tp] = offset
        self._next_offsets[tp] = offset + 1
        if self._outputs and (not self._marks or self._marks[-1][0] < len(self._outputs)):
            self._marks.append((len(self._outputs), (topic, partition, offset)))
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
        2. Produce the changelog: the state transaction's last write per key, encoded now, to
           the partition of the input record that caused it.
        3. `send_offsets_to_transaction`: the next offset of every processed partition, with
           the consumer's group metadata (generation-fenced: a member that lost its partitions
           in a rebalance cannot commit them).
        4. `commit_transaction`: flushes every produced record, then commits; retried while
           the error is retriable.

        5. Apply the state writes to the store.

        On an abortable error: abort, rewind, raise `TransactionAborted`. On a fatal one
        (fenced): rewind, raise `TransactionFatal`. Either way the state writes are discarded.
        A checkpoint is spent after `commit()`.
        """
        started = time.monotonic()
        if self.empty:
            return CommitStats(0, 0, 0, 0.0)
        try:
            self._commit_steps()
        except _Stalled as stall:
            self._abandon(stall)
        except BaseException:
            self._discard_state()
            raise
        writes = 0
        if self.state is not None:
            writes = len(self.state)
            self.state.flush()  # 5
        stats = CommitStats(
            input_records=self._records,
            produced=self._produced,
            state_writes=writes,
            seconds=time.monotonic() - started,
            refused=tuple(self._refused[i] for i in sorted(self._refused)),
        )
        self._in_transaction = False
        return stats

    def _commit_steps(self) -> None:
        try:
            self._begin()  # 1
            if self.state is not None:
                topic = self.state.topic
                for partition, key, value in self.state.prepare():  # 2
                    self.produce(OutboundRecord(topic, key, value, partition=partition))
            if self._failed is not None:
                raise self._failed
            self._send_offsets()  # 3
            self._commit_transaction()  # 4
            self.producer.poll(0)  # serve the producer's queued events (client logs, errors)
        except KafkaException as exc:
            if not self._refused_by_broker(exc):
                self._fail(exc)
            self._recover(exc)

    def _guarded(self, what: str, call: Callable[[], None]) -> None:
        """Run a transactional call under the watchdog (see "Stalled calls"); without a
        `new_producer` there is nothing to replace the producer with: called directly."""
        if self.new_producer is None:
            call()
            return
        failure: list[BaseException] = []
        done = threading.Event()

        def work() -> None:
            try:
                call()
            except BaseException as exc:  # handed to the caller's thread
                failure.append(exc)
            finally:
                done.set()

        deadline = self.commit_timeout + self.stall_grace
        threading.Thread(target=work, name=f"txn-{what}", daemon=True).start()
        if not done.wait(deadline):
            raise _Stalled(what, deadline)
        if failure:
            raise failure[0]

    def _abandon(self, stall: _Stalled) -> None:
        """A call outlived its watchdog: new producer, rewind, raise `TransactionStalled`."""
        reason = self._replace_stalled(f"transaction stalled: {stall}")
        self.rewind()
        raise TransactionStalled(reason) from stall

    def _replace_stalled(self, why: str) -> str:
        """Leave the producer to its blocked thread and take a new one with the same
        transactional id (its init_transactions aborts what the stuck one left open)."""
        reason = f"{why}; producer replaced, batch read again"
        if self.on_stall is not None:
            self.on_stall(reason)
        stuck = self.producer
        _ABANDONED.append(stuck)
        self._in_transaction = False
        assert self.new_producer is not None
        last: KafkaException | None = None
        for _attempt in range(STALL_REPLACE_ATTEMPTS):
            try:
                self.producer = self.new_producer()
                return reason
            except KafkaException as exc:
                last = exc
                err = kafka_error(exc)
                if err is not None and err.fatal():
                    break
        self.rewind()
        raise TransactionFatal(f"no new producer after: {why}: {last}")

    def _send_offsets(self) -> None:
        if self._next_offsets:
            offsets = [
                TopicPartition(t, p, o, self._offset_metadata[(t, p)])
                if (t, p) in self._offset_metadata
                else TopicPartition(t, p, o)
                for (t, p), o in self._next_offsets.items()
            ]
            metadata = self.consumer.consumer_group_metadata()
            producer = self.producer
            self._guarded(
                "send_offsets_to_transaction",
                lambda: producer.send_offsets_to_transaction(
                    offsets, metadata, self.commit_timeout
                ),
            )

    def _refused_by_broker(self, exc: KafkaException) -> bool:
        err = kafka_error(exc)
        # _STATE: produce() was refused because the transaction had already failed in flight.
        return (
            err is not None
            and (err.code() in REFUSALS or err.code() == KafkaError._STATE)
            and not err.fatal()
            and self.new_producer is not None
        )

    def _replace_producer(self) -> None:
        """Abort what is open and take a new producer with the same transactional id (see the
        module doc): the old one's sequence numbers of the refused partition are unusable."""
        assert self.new_producer is not None
        if self._in_transaction:
            # Replaced below anyway; its init_transactions aborts whatever is left open.
            producer = self.producer
            with contextlib.suppress(KafkaException):
                self._guarded(
                    "abort_transaction",
                    lambda: producer.abort_transaction(self.commit_timeout),
                )
            self._in_transaction = False
        try:
            self.producer = self.new_producer()
        except KafkaException as exc:
            self.rewind()
            raise TransactionFatal(f"no new producer after a refused record: {exc}") from exc

    def _recover(self, first: KafkaException) -> None:
        """After a refusal: new producer, then the batch again record by record (each flushed
        on its own, so a refused one is known by its delivery report), each refused record
        replaced by its dead letter, until the transaction commits. Without a dead-letter
        route: new producer, then abort as for any abortable error."""
        if self.dead_letters is None:
            self._replace_producer()
            self.rewind()
            raise TransactionAborted(f"transaction aborted: {kafka_error(first)}") from first
        exc: KafkaException = first
        for _attempt in range(MAX_RECOVERY_ATTEMPTS):
            self._replace_producer()
            try:
                if self._careful_attempt():
                    return
            except KafkaException as again:
                exc = again
                if not self._refused_by_broker(again):
                    self._fail(again)
        self._fail(exc)

    def _careful_attempt(self) -> bool:
        """One run of the whole batch; False when a record was refused (noted in `_refused`:
        the next run sends its dead letter instead)."""
        refused: list[tuple[int, KafkaError]] = []

        def delivered(index: int, err: KafkaError | None, _msg: Any) -> None:
            if err is not None and err.code() not in _PURGED:
                refused.append((index, err))

        self._begin()
        for index in range(len(self._outputs)):
            self._send_output(index, partial(delivered, index))
            self.producer.flush(self.commit_timeout)
            if refused:
                index, err = refused[0]
                before = self._refused.get(index)
                if err.code() not in REFUSALS or (before is not None and before.truncated):
                    self._fail(KafkaException(err))  # not a refusal, or nothing smaller to send
                self._refuse(index, err, self._outputs[index])
                return False
        self._send_offsets()
        self._commit_transaction()
        self.producer.poll(0)
        return True

    def _commit_transaction(self) -> None:
        attempts = 0
        producer = self.producer
        while True:
            try:
                self._guarded(
                    "commit_transaction",
                    lambda: producer.commit_transaction(self.commit_timeout),
                )
                return
            except KafkaException as exc:
                err = kafka_error(exc)
                attempts += 1
                if err is not None and err.retriable() and attempts < 5:
                    continue
                raise

    def _fail(self, exc: KafkaException) -> None:
        err = kafka_error(exc)
        self.rewind()
        if err is not None and err.fatal():
            self._in_transaction = False
            raise TransactionFatal(f"transaction failed fatally: {err}") from exc
        self.abort()
        raise TransactionAborted(f"transaction aborted: {err or exc}") from exc

    def _discard_state(self) -> None:
        if self.state is not None:
            self.state.discard()

    def abort(self) -> None:
        """Abort the open transaction, if any (nothing of it becomes visible; the state writes
        are discarded). An abort that
        stalls or fails without a fatal error (given a `new_producer`) replaces `producer`
        (read it again afterwards); a fatal one (fenced) raises `TransactionFatal`."""
        self._discard_state()
        if self._in_transaction:
            producer = self.producer
            try:
                self._guarded(
                    "abort_transaction",
                    lambda: producer.abort_transaction(self.commit_timeout),
                )
            except _Stalled as stall:
                # Replaced: the new producer's init_transactions aborts the transaction.
                self._replace_stalled(f"transaction stalled: {stall}")
                return
            except KafkaException as exc:
                err = kafka_error(exc)
                self._in_transaction = False
                if self.new_producer is not None and err is not None and not err.fatal():
                    self._replace_stalled(f"abort failed: {err}")
                    return
                raise TransactionFatal(f"abort failed: {err or exc}") from exc
            self._in_transaction = False

    def rewind(self) -> None:
        """Seek the consumer back to the first offset this checkpoint processed, per
        partition, so the batch is read again (those are the last committed offsets); the
        state writes derived from it are discarded."""
        self._discard_state()
        for (topic, partition), offset in self._first_offsets.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException:
                # Partition no longer assigned: its new owner starts from the committed offset.
                continue
