"""The dispatcher, second stage of the running pipeline: provisioning requests in; Icareus calls
out; one result per finished request, dead letters and parked-key markers back to Kafka.

Requests of one subscription run strictly in order, different subscriptions concurrently up to
`icareus.max_in_flight` (`KeyedScheduler`). What a finished request produced is buffered and
made visible as soon as no commit is in flight, in one Kafka transaction with the offsets it
finishes (`OffsetTracker`: only offsets whose predecessors are finished; those
finished beyond travel in the commit metadata). So after a crash each request has exactly one
result: an unfinished request runs again, and its Idempotency-Key keeps Icareus from applying
it twice. See docs/PIPELINE.md, "Dispatcher".

Two halves, like the planner's: `DispatchLogic` (pipeline/dispatch_logic.py) turns one consumed
record into what it produced (no Kafka; Icareus through a port, the clock injected), and
`Dispatcher` here runs the consumer, the scheduler, the rebalances and the commits around it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Final, Protocol

from icareus_bridge.codec import Codec
from icareus_bridge.config import Settings
from icareus_bridge.icareus.client import IcareusClient
from icareus_bridge.kafka.admin import OwnershipWatch
from icareus_bridge.kafka.changelog import read_to_end
from icareus_bridge.kafka.checkpoint import (
    DeadLetterRoute,
    OutboundRecord,
    TransactionAborted,
    TransactionFatal,
    TransactionStalled,
)
from icareus_bridge.kafka.clients import FatalClientError, transactional_id
from icareus_bridge.kafka.dispatch import (
    ConsumedRecord,
    ConsumerFailed,
    DispatchTransactions,
    RequestsConsumer,
)
from icareus_bridge.kafka.stage import instance_id, now_ms
from icareus_bridge.observability.http import Readiness
from icareus_bridge.observability.logging import get_logger
from icareus_bridge.observability.metrics import Metrics
from icareus_bridge.pipeline.accounts import AccountOutcomes
from icareus_bridge.pipeline.dispatch_logic import (
    DispatchLogic,
    Finished,
    GaveUp,
    IcareusHealth,
    WorkItem,
)
from icareus_bridge.pipeline.offsets import OffsetTracker, decode_done_offsets
from icareus_bridge.pipeline.parking import ParkedKeys, is_parked_marker
from icareus_bridge.pipeline.scheduler import KeyedScheduler

ROLE: Final = "dispatcher"
READINESS_CHECK = "dispatcher"
POLL_BATCH = 500
# Idle polls back off from the first to the second (a record resets it).
IDLE_SLEEP_SECONDS = (0.002, 0.05)
# A partition whose commit point trails this many read offsets is paused: the finished ones
# beyond it must still fit in the commit metadata.
MAX_SPAN = 10_000
# Part of the shutdown grace kept for the last commit and leaving the group.
SHUTDOWN_RESERVE_SECONDS = 3.0
# How long a new assignment waits for a commit still in flight.
COMMIT_SETTLE_SECONDS = 60.0


class StopSignal(Protocol):
    def is_set(self) -> bool: ...


class Dispatcher:
    """The dispatcher's loop. `await run(stop)` works until `stop` is set, then drains: no new
    calls, in-flight calls finish within `dispatcher.shutdown_grace_seconds`, last commit."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        readiness: Readiness,
        *,
        codec: Codec | None = None,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.readiness = readiness
        self.codec = codec if codec is not None else Codec.from_settings(settings)
        self.clock_ms = clock_ms
        self.topics = settings.topics
        self.group = settings.dispatcher.group_id
        self.instance_id = instance_id(settings, ROLE)
        self.log = get_logger("icareus_bridge.dispatcher").bind(instance=self.instance_id)
        self.offsets = OffsetTracker()
        self.parked = ParkedKeys()
        self.accounts = AccountOutcomes()
        self._generations: dict[int, int] = {}
        self._generation = 0
        self._pending: dict[int, list[OutboundRecord]] = {}  # per partition, for the next commit
        # Per partition, (request type, event time in epoch ms) of each result in `_pending`.
        self._pending_results: dict[int, list[tuple[str, int]]] = {}
        self._commit_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # a request finished or a commit ended
        self._commit_future: concurrent.futures.Future[Any] | None = None
        self._last_commit: dict[int, tuple[int, str]] = {}
        self._paused = False
        self._failure: BaseException | None = None
        self._stalled = False  # not ready since a stalled transactional call, until a commit
        self._consumer: RequestsConsumer | None = None
        self._tx: DispatchTransactions | None = None
        self._client: IcareusClient | None = None
        self._committer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="dispatcher-commit"
        )
        max_in_flight = settings.icareus.max_in_flight
        self.scheduler: KeyedScheduler[WorkItem] = KeyedScheduler(
            self._handle,
            max_in_flight=max_in_flight,
            max_queued=max(settings.dispatcher.max_queued, max_in_flight),
            on_error=self._on_handler_error,
        )
        self._ownership = OwnershipWatch(settings.kafka, self.group, self.topics.requests)
        self._ownership_task: asyncio.Task[None] | None = None
        self._assigned_once = False
        readiness.register(READINESS_CHECK, "waiting for partitions")
        self.health = IcareusHealth(readiness, metrics, self.log)
        self._logic: DispatchLogic | None = None  # made with the Icareus client, in `run`

    @property
    def logic(self) -> DispatchLogic:
        """What one record produced; the shell around it only reads, schedules and commits."""
        assert self._logic is not None, "the dispatcher's logic exists while it runs"
        return self._logic

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self, stop: StopSignal) -> None:
        """Dispatch until `stop` is set, then drain and close."""
        self._client = IcareusClient(
            self.settings.icareus,
            on_retry=self._on_retry,
            on_auth_failure=self.health.auth_failed,
        )
        self._logic = DispatchLogic(
            self.settings,
            self._client,
            codec=self.codec,
            metrics=self.metrics,
            health=self.health,
            log=self.log,
            accounts=self.accounts,
            parked=self.parked,
            clock_ms=self.clock_ms,
        )
        probe = asyncio.create_task(
            self.health.probe(self._client, stop.is_set), name="icareus-probe"
        )
        try:
            self._start()
            await self._loop(stop)
            await self._drain()
        except (ConsumerFailed, TransactionFatal) as exc:
            # Fenced by a process with the same ids, or another fatal client error: the process
            # ends (a new producer or consumer would fence that other process in turn).
            tid = transactional_id(self.settings.kafka, ROLE, self.instance_id)
            raise FatalClientError(ROLE, self.instance_id, tid, exc) from exc
        finally:
            probe.cancel()
            self._close()
            await self._client.aclose()

    def _start(self) -> None:
        # The producer first: init_transactions aborts what an earlier incarnation of this
        # instance left open before any partition is read.
        kafka = self.settings.kafka
        tid = transactional_id(kafka, ROLE, self.instance_id)
        consumer = RequestsConsumer(
            kafka,
            self.group,
            self.topics.requests,
            instance_id=f"{ROLE}-{self.instance_id}",
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
            on_refused=self._on_refused,
        )
        self._consumer = consumer
        self._tx = DispatchTransactions(
            kafka,
            tid,
            consumer,
            dead_letters=DeadLetterRoute(self.topics.dlq, "dispatch", self.group),
        )
        self.log.info("dispatcher started", requests=self.topics.requests, group=self.group)

    async def _loop(self, stop: StopSignal) -> None:
        assert self._consumer is not None
        spacing = self.settings.dispatcher.commit_interval_ms / 1000.0
        next_commit = time.monotonic()
        idle = IDLE_SLEEP_SECONDS[0]
        while not stop.is_set():
            if self._failure is not None:
                raise self._failure
            records = self._consumer.poll(POLL_BATCH)
            for record in records:
                self._accept(record)
            self._apply_back_pressure()
            if self._assigned_once and not self._generations:
                self._watch_ownership()
            now = time.monotonic()
            # A commit starts as soon as something is finished and no commit is in flight
            # (and, if `commit_interval_ms` is set, that long after the previous one started).
            # It runs beside the loop: polling and calls go on meanwhile, and what finishes
            # then goes into the next transaction.
            if now >= next_commit and self._can_commit() and self._has_work():
                self._commit_task = asyncio.create_task(self._commit(), name="dispatcher-commit")
                next_commit = now + spacing
            if records:
                idle = IDLE_SLEEP_SECONDS[0]
                await asyncio.sleep(0)
            else:
                await self._idle(idle)
                idle = min(idle * 2, IDLE_SLEEP_SECONDS[1])

    def _can_commit(self) -> bool:
        return self._commit_task is None or self._commit_task.done()

    def _has_work(self) -> bool:
        """Records to produce, or a commit point that moved since the last commit."""
        if self._pending:
            return True
        points = self.offsets.commit_points()
        return any(self._last_commit.get(p) != v for p, v in points.items())

    async def _idle(self, seconds: float) -> None:
        """Sleep until a request finishes or a commit ends (either may start a commit), or
        `seconds` pass."""
        self._wake.clear()
        with suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _watch_ownership(self) -> None:
        """Owning no partition is fine when others own them all; not while some go unowned."""
        task = self._ownership_task
        if task is None or task.done():
            self._ownership_task = asyncio.create_task(self._check_ownership())

    async def _check_ownership(self) -> None:
        verdict = await asyncio.to_thread(self._ownership.check)
        if verdict is None or self._generations:
            return
        self.readiness.set(READINESS_CHECK, verdict.ready, verdict.detail)
        if verdict.rejoin and self._consumer is not None:
            self._ownership.reset()
            self.log.info("rejoining the consumer group", reason=verdict.detail)
            self._consumer.rejoin()

    async def _drain(self) -> None:
        """Stop taking work, let in-flight calls finish within the grace, commit."""
        assert self._consumer is not None
        self.readiness.set(READINESS_CHECK, False, "draining")
        self._consumer.pause(self.offsets.assigned())
        self.scheduler.close()  # queued requests are dropped: uncommitted, read again later
        grace = self.settings.dispatcher.shutdown_grace_seconds
        budget = max(grace - SHUTDOWN_RESERVE_SECONDS, grace / 2)
        running = len(self.scheduler.running())
        try:
            await asyncio.wait_for(self.scheduler.wait_running(), timeout=budget)
        except TimeoutError:
            self.log.warning("shutdown grace ran out; interrupting calls", in_flight=running)
            self.scheduler.cancel_running()
            await self.scheduler.wait_running()
        if self._commit_task is not None:
            await self._commit_task
        await self._commit()
        if self._failure is not None:
            raise self._failure
        self.log.info("dispatcher drained", finished_in_flight=running)

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()  # runs the revoke callback (nothing is left to commit)
            except Exception as exc:
                self.log.warning("consumer close failed", error=str(exc))
            self._consumer = None
        if self._tx is not None:
            self._tx.close()
            self._tx = None
        self._committer.shutdown(wait=True)

    # --- rebalance (run inside poll(), on the loop's thread) -------------------------------

    def _on_assign(self, partitions: list[int]) -> None:
        # A commit still in flight may hold offsets of these partitions (given back to us by
        # an eager rebalance): let it settle first, so the committed offsets are final.
        future = self._commit_future
        if future is not None and not future.done():
            concurrent.futures.wait([future], timeout=COMMIT_SETTLE_SECONDS)
        self._assigned_once = True
        self._ownership.reset()
        self._assign(partitions)

    def _assign(self, partitions: list[int], *, seek: bool = False) -> None:
        """Take partitions on from their committed offsets (and the finished offsets beyond,
        from the commit metadata) and restore their parked keys; `seek` reads them again."""
        assert self._consumer is not None
        self.readiness.set(READINESS_CHECK, False, f"restoring {len(partitions)} partitions")
        committed = self._consumer.committed(partitions)
        for p in partitions:
            self._generation += 1
            self._generations[p] = self._generation
            offset, metadata = committed.get(p, (-1, ""))
            done = decode_done_offsets(offset, metadata) if offset >= 0 else frozenset()
            self.offsets.assign(p, done)
            if offset >= 0:
                self._last_commit[p] = (offset, metadata)
            if seek:
                try:
                    self._consumer.seek(p, offset)
                except Exception as exc:  # cannot read it again here: start over instead
                    self._failure = RuntimeError(f"partition {p}: cannot seek back: {exc}")
        started = time.monotonic()
        read_to_end(
            self.settings.kafka,
            self.topics.state,
            partitions,
            lambda _p, key, value: self._restore_marker(key, value),
        )
        if self._paused:
            self._consumer.pause(partitions)
        self.metrics.parked_keys.set(len(self.parked))
        self.log.info(
            "partitions assigned",
            partitions=partitions,
            parked_keys=len(self.parked),
            restore_seconds=round(time.monotonic() - started, 3),
        )
        self.readiness.set(READINESS_CHECK, True, f"{len(self._generations)} partitions")

    def _restore_marker(self, key: bytes, value: bytes | None) -> None:
        if is_parked_marker(key):
            self.parked.restore([(key, value)])

    def _on_revoke(self, partitions: list[int]) -> None:
        # Nothing is committed here: a transaction's offset commit can wait for the very
        # rebalance that is waiting for this callback. What these partitions finished since the
        # last commit is dropped; their next owner runs it again (Idempotency-Key: no second
        # effect). A commit already in flight either lands before the new generation or is
        # fenced by it (aborted: nothing of it becomes visible).
        self._forget(partitions)
        self.log.info("partitions revoked", partitions=partitions)

    def _on_refused(self, reason: str) -> None:
        self.readiness.set(READINESS_CHECK, False, reason)
        self.log.warning("assignment refused", reason=reason)

    def _on_lost(self, partitions: list[int]) -> None:
        self._forget(partitions)
        self.log.warning("partitions lost", partitions=partitions)

    def _rewind(self, partitions: list[int]) -> None:
        """After an aborted transaction: read these partitions again from what is committed."""
        if not partitions:
            return
        self.log.warning(
            "reading partitions again from their committed offsets", partitions=partitions
        )
        self._forget(partitions)
        self._assign(partitions, seek=True)

    def _forget(self, partitions: list[int]) -> None:
        gone = set(partitions)
        for p in gone:
            self._pending.pop(p, None)
            self._pending_results.pop(p, None)
            self.offsets.revoke(p)
            self.parked.drop_partition(p)
            self._generations.pop(p, None)
            self._last_commit.pop(p, None)
            self.metrics.forget_partition(self.group, self.topics.requests, p)
        # Queued work of those partitions is dropped; running work finishes, but its results
        # are discarded (generation check): the partition's new owner runs it again.
        self.scheduler.discard_queued(lambda item: item.record.partition in gone)
        self.metrics.parked_keys.set(len(self.parked))
        if not self._generations:
            self.readiness.set(READINESS_CHECK, False, "no partitions")

    # --- intake --------------------------------------------------------------------------

    def _accept(self, record: ConsumedRecord) -> None:
        generation = self._generations.get(record.partition)
        if generation is None:
            return  # a late record of a partition that is no longer ours
        if not self.offsets.register(record.partition, record.offset):
            return  # finished before a restart: its result is already committed
        self.metrics.lag_clock(self.group).read(
            record.topic, record.partition, record.offset, record.timestamp_ms
        )
        self.scheduler.submit(*self.logic.work_item(record, generation))

    def _apply_back_pressure(self) -> None:
        assert self._consumer is not None
        assigned = self.offsets.assigned()
        too_far = any(
            (tracker := self.offsets.partition(p)) is not None and tracker.span() > MAX_SPAN
            for p in assigned
        )
        if not self._paused and (self.scheduler.saturated() or too_far):
            self._consumer.pause(assigned)
            self._paused = True
            self.log.debug("paused", load=self.scheduler.load)
        elif self._paused and self.scheduler.has_room() and not too_far:
            self._consumer.resume(assigned)
            self._paused = False
        self.metrics.in_flight_requests.set(self.scheduler.in_flight)

    # --- one item ------------------------------------------------------------------------

    async def _handle(self, item: WorkItem) -> None:
        finished = await self.logic.process(item)
        self._finish(item, finished)

    def _finish(self, item: WorkItem, finished: Finished) -> None:
        """Buffer what the item produced and mark its offset finished, in one step (nothing
        can run between them: the next commit takes both or neither)."""
        partition = item.record.partition
        if self._generations.get(partition) != item.generation:
            return  # revoked meanwhile: the new owner runs it again
        records = self.logic.settle(item, finished)
        self._pending.setdefault(partition, []).extend(records)
        if finished.results:
            self._pending_results.setdefault(partition, []).extend(
                (r.type.value, r.created_at) for r in finished.results if r.created_at
            )
        self.offsets.mark_done(partition, item.record.offset)
        self._wake.set()

    def _on_retry(self, reason: str) -> None:
        self.metrics.retries.labels(reason).inc()

    def _on_handler_error(self, item: WorkItem, exc: BaseException) -> None:
        # `_process` turns every failure into a dead letter; reaching here is a bug in the
        # bookkeeping itself, and going on could break the order or lose a result.
        self.log.error("dispatcher bookkeeping failed", request_id=item.record_id, error=repr(exc))
        self._failure = exc

    # --- committing ----------------------------------------------------------------------

    def _take_batch(self) -> _Batch:
        records = [r for p in sorted(self._pending) for r in self._pending[p]]
        touched = set(self._pending)
        results = [r for p in sorted(self._pending_results) for r in self._pending_results[p]]
        self._pending = {}
        self._pending_results = {}
        points = self.offsets.commit_points()
        changed = {p: v for p, v in points.items() if self._last_commit.get(p) != v}
        generations = {
            p: self._generations[p] for p in touched | set(changed) if p in self._generations
        }
        return _Batch(records, changed, generations, results)

    async def _commit(self) -> None:
        try:
            await self._commit_batch()
        finally:
            self._wake.set()  # what finished meanwhile may go out at once

    async def _commit_batch(self) -> None:
        """Results, dead letters and markers of finished requests, with their offsets, in one
        transaction. Aborted: the partitions it covered are read again from what is committed.
        Fatal (a newer instance fenced this one): the dispatcher stops."""
        batch = self._take_batch()
        if not batch.records and not batch.offsets:
            return
        assert self._tx is not None
        started = time.monotonic()
        future = self._committer.submit(self._tx.commit, batch.records, batch.offsets)
        self._commit_future = future
        try:
            stats = await asyncio.wrap_future(future)
        except TransactionAborted as exc:
            self.metrics.transactions.labels(ROLE, "aborted").inc()
            if isinstance(exc, TransactionStalled):
                # The producer was replaced; not ready until a transaction commits again.
                self._stalled = True
                self.readiness.set(READINESS_CHECK, False, str(exc))
                self.log.error("transactional call stalled", reason=str(exc))
            else:
                self.log.warning("transaction aborted", error=str(exc))
            still_ours = [p for p, g in batch.generations.items() if self._generations.get(p) == g]
            self._rewind(still_ours)
            return
        except Exception as exc:
            self.metrics.transactions.labels(ROLE, "fatal").inc()
            self.log.error("transaction failed", error=repr(exc))
            self._failure = exc
            return
        for refusal in stats.refused:
            self.metrics.dead_letters.labels("dispatch", refusal.reason).inc()
            self.log.error(
                "record refused by the broker, dead-lettered",
                reason=refusal.reason,
                topic=refusal.topic,
                error=refusal.error,
            )
        self._committed(batch, time.monotonic() - started)

    def _committed(self, batch: _Batch, seconds: float) -> None:
        self.metrics.transactions.labels(ROLE, "committed").inc()
        if self._stalled:
            self._stalled = False
            self.readiness.set(READINESS_CHECK, True, f"{len(self._generations)} partitions")
            self.log.info("transactions commit again")
        self.metrics.transaction_seconds.labels(ROLE).observe(seconds)
        self.metrics.transaction_events.labels(ROLE).observe(len(batch.records))
        now_ms = self.clock_ms()
        for request_type, created_at in batch.results:
            seconds = max(now_ms - created_at, 0) / 1000.0
            self.metrics.event_to_committed_result_seconds.labels(request_type).observe(seconds)
        assert self._consumer is not None
        for p, (offset, metadata) in batch.offsets.items():
            if self._generations.get(p) != batch.generations.get(p):
                continue  # changed hands meanwhile
            self._last_commit[p] = (offset, metadata)
            self.metrics.lag_clock(self.group).committed(self.topics.requests, p, offset)
            lag = self._consumer.lag(p, offset)
            if lag is not None:
                self.metrics.set_consumer_lag(self.group, self.topics.requests, p, lag)


@dataclass(frozen=True, slots=True)
class _Batch:
    """One transaction's worth: the records to produce, the commit point per partition, and
    the assignment generation of each partition it covers."""

    records: list[OutboundRecord]
    offsets: dict[int, tuple[int, str]]
    generations: dict[int, int]
    results: list[tuple[str, int]]  # (request type, event time in epoch ms) of its results


def run_dispatcher(
    settings: Settings, metrics: Metrics, readiness: Readiness, stop: StopSignal
) -> None:
    """The service's entry to the dispatcher role: blocks (its own event loop) until `stop`
    is set and the drain is over. Raises when the dispatcher cannot go on (the process should
    exit non-zero and be restarted: it resumes from its committed offsets)."""
    asyncio.run(Dispatcher(settings, metrics, readiness).run(stop))


__all__ = ["Dispatcher", "GaveUp", "WorkItem", "run_dispatcher"]
