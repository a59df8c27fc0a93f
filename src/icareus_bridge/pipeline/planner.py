"""The planner, first stage of the running pipeline: CRM lifecycle events in; Icareus requests,
the planner's own rejections (as results), state changelog records and dead letters out — all
of one batch in one Kafka transaction together with the input offsets. It also reads the
results topic and folds each outcome into the known state (feedback).

Two halves: `PlannerLogic` turns one input record into the records it causes (no Kafka, no
threads; the clock is injected), and `Planner` runs the consumer / transactional producer loop,
the state store and the rebalance protocol around it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

import msgspec

from icareus_bridge.codec import DecodeError
from icareus_bridge.config import Settings
from icareus_bridge.core.feedback import rejection_result
from icareus_bridge.core.model import (
    ActionCode,
    LifecycleEvent,
    LifeCycleState,
    ProvisioningRequest,
    ProvisioningResult,
    SubscriptionRecord,
)
from icareus_bridge.core.validation import check_event, check_event_size
from icareus_bridge.kafka import clients
from icareus_bridge.kafka.admin import OwnershipWatch
from icareus_bridge.kafka.checkpoint import (
    Checkpoint,
    DeadLetterRoute,
    OutboundRecord,
    TransactionAborted,
    TransactionFatal,
)
from icareus_bridge.kafka.consumer import (
    ClientError,
    ConsumedRecord,
    ConsumerFailed,
    GroupConsumer,
    Partition,
)
from icareus_bridge.kafka.stage import instance_id as stage_instance_id
from icareus_bridge.kafka.stage import now_ms
from icareus_bridge.kafka.state import StateTransaction
from icareus_bridge.kafka.transactions import StageTransactions
from icareus_bridge.observability.http import Readiness
from icareus_bridge.observability.logging import RateLimiter, get_logger
from icareus_bridge.observability.metrics import Metrics
from icareus_bridge.pipeline import reset_plan
from icareus_bridge.pipeline.dead_letter import Origin, dead_letter_headers, replay_count_of
from icareus_bridge.pipeline.state_store import StateStore

ROLE: Final = "planner"
READINESS_CHECK = "planner"

PlanFn = Callable[[SubscriptionRecord | None, LifecycleEvent, Any], Any]
FoldFn = Callable[[SubscriptionRecord, ProvisioningResult], SubscriptionRecord]
Lookup = Callable[[int, bytes], SubscriptionRecord | None]


class PlannerCodec(Protocol):
    """The part of the bridge's Avro codec the planner uses (`icareus_bridge.codec.Codec`)."""

    def decode_event(self, data: bytes) -> LifecycleEvent: ...
    def decode_result(self, data: bytes) -> ProvisioningResult: ...
    def encode_request(self, request: ProvisioningRequest) -> bytes: ...
    def encode_result(self, result: ProvisioningResult) -> bytes: ...
    def encode_state(self, record: SubscriptionRecord | None) -> bytes | None: ...
    def decode_state(self, data: bytes | None) -> SubscriptionRecord | None: ...


class StateChange(msgspec.Struct, frozen=True, gc=False):
    """The new known state of one subscription (encoded for the changelog at commit)."""

    partition: int
    key: bytes
    record: SubscriptionRecord


class Handled(msgspec.Struct, gc=False):
    """What one input record causes: records to produce and at most one state change.
    `outcome` is for metrics and tests: planned, skipped, dead_lettered, feedback_applied,
    feedback_ignored, feedback_unknown."""

    outcome: str
    outputs: list[OutboundRecord] = []  # msgspec copies an empty default per instance
    state: StateChange | None = None
    action: str = ""
    skip_reason: str | None = None
    dead_letter: tuple[str, str] | None = None  # (stage, reason)
    request_types: list[str] = []
    rejections: list[tuple[str, str]] = []  # (type, code)
    result_state: str = ""


class PlannerLogic:
    """One input record -> the records it causes. No Kafka client; state is read through
    `lookup` (which sees the open batch's own writes first)."""

    def __init__(
        self,
        settings: Settings,
        codec: PlannerCodec,
        plan: PlanFn,
        fold: FoldFn,
        *,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.group = settings.planner.group_id
        self.codec = codec
        self.plan = plan
        self.fold = fold
        self.clock_ms = clock_ms

    # --- dead letters -------------------------------------------------------------------

    def dead_letter(
        self, rec: ConsumedRecord, stage: str, reason: str, error: BaseException | str
    ) -> OutboundRecord:
        headers = dead_letter_headers(
            stage,  # type: ignore[arg-type]  # one of the planner's stages
            reason,
            error,
            Origin(rec.topic, rec.partition, rec.offset, rec.timestamp_ms),
            self.group,
            now_ms=self.clock_ms(),
            attempts=1,
            replay_count=replay_count_of(rec.headers),
        )
        return OutboundRecord(self.topics.dlq, rec.key, rec.value, headers=headers)

    def _dead(
        self, rec: ConsumedRecord, stage: str, reason: str, error: BaseException | str, action: str
    ) -> Handled:
        return Handled(
            outcome="dead_lettered",
            outputs=[self.dead_letter(rec, stage, reason, error)],
            action=action,
            dead_letter=(stage, reason),
        )

    # --- lifecycle events ---------------------------------------------------------------

    def on_event(self, rec: ConsumedRecord, lookup: Lookup) -> Handled:
        """decode → validate → state lookup → plan → requests, rejections, new state."""
        if rec.value is None:
            return self._dead(rec, "decode", "NOT_AVRO", "record has no value", "")
        limits = self.settings.limits
        try:
            check_event_size(len(rec.value), limits)
            event = check_event(self.codec.decode_event(rec.value), limits)
        except DecodeError as exc:
            return self._dead(rec, exc.stage, str(exc.reason), exc, "")
        sub = event.subscription
        key = sub.id.encode()
        action = event.action.code
        if rec.key is not None and rec.key != key:
            return self._dead(
                rec,
                "validate",
                "KEY_MISMATCH",
                "record key is not the event's subscription.id",
                action,
            )
        state = lookup(rec.partition, key)
        is_reset = action == ActionCode.RESET_SUBSCRIPTION
        try:
            if is_reset and state is not None:
                # The dispatcher plans the reset from what Icareus holds and re-registers what
                # it lacks (refused registrations included); the planner, which calls no
                # Icareus, plans it the same way from the accounts it knows registered, for its
                # skip check and its next known state (docs/PIPELINE.md, "Reset").
                registered = [a for a in state.accounts.values() if a.registered]
                decision = reset_plan.plan_reset(
                    event, registered, self.settings.provider, known=state, plan_fn=self.plan
                )
            else:
                decision = self.plan(state, event, self.settings.provider)
        except Exception as exc:  # a rule the state machine cannot apply: never stop the stage
            return self._dead(rec, "plan", "PLAN_FAILED", exc, action)
        if decision.skipped is not None:
            return Handled(outcome="skipped", action=action, skip_reason=str(decision.skipped))
        out: list[OutboundRecord] = []
        p = rec.partition
        if is_reset:
            # Reset runs in the dispatcher, in the subscription's turn, from what Icareus really
            # holds: it gets the event itself and plans and reports the requests.
            reset_state: SubscriptionRecord = decision.state
            return Handled(
                outcome="planned",
                outputs=[OutboundRecord(self.topics.requests, key, rec.value, partition=p)],
                state=StateChange(p, key, reset_state),
                action=action,
            )
        for request in decision.requests:
            out.append(
                OutboundRecord(
                    self.topics.requests, key, self.codec.encode_request(request), partition=p
                )
            )
        if decision.rejections:
            now = self.clock_ms()
            for rejection in decision.rejections:
                result = rejection_result(rejection, event, executed_at=now)
                out.append(
                    OutboundRecord(
                        self.topics.results, key, self.codec.encode_result(result), partition=p
                    )
                )
        new_state: SubscriptionRecord = decision.state
        change = StateChange(p, key, new_state)
        return Handled(
            outcome="planned",
            outputs=out,
            state=change,
            action=action,
            request_types=[r.type.value for r in decision.requests],
            rejections=[(r.type.value, r.code.value) for r in decision.rejections],
        )

    # --- feedback -----------------------------------------------------------------------

    def on_result(
        self, rec: ConsumedRecord, lookup: Lookup, locate: Callable[[bytes], int | None]
    ) -> Handled:
        """A result of the dispatcher (or the planner's own rejection): fold it into the state
        of its subscription, so the next event plans from what Icareus really holds."""
        if rec.value is None:
            return Handled(outcome="feedback_ignored")
        try:
            result = self.codec.decode_result(rec.value)
        except DecodeError as exc:
            return self._dead(rec, exc.stage, str(exc.reason), exc, "")
        key = result.subscription_id.encode()
        partition = rec.partition
        kind, state_name = result.type.value, result.life_cycle_state.value
        state = lookup(partition, key)
        if state is None:
            # Co-partitioned topics put feedback in the partition of its subscription; a result
            # elsewhere means a producer used another partitioner: find the owner if local.
            other = locate(key)
            if other is None:
                return Handled(outcome="feedback_unknown", action=kind, result_state=state_name)
            partition = other
            state = lookup(partition, key)
            if state is None:
                return Handled(outcome="feedback_unknown", action=kind, result_state=state_name)
        try:
            folded = self.fold(state, result)
        except Exception as exc:
            return self._dead(rec, "plan", "FEEDBACK_FAILED", exc, kind)
        if folded == state:
            return Handled(outcome="feedback_ignored", action=kind, result_state=state_name)
        change = StateChange(partition, key, folded)
        return Handled(
            outcome="feedback_applied", state=change, action=kind, result_state=state_name
        )


class Planner:
    """The planner's Kafka loop. `run(stop)` blocks until `stop` is set, then finishes the
    open transaction and leaves. Partitions: events and results of partition N are assigned
    together (range assignor, same partition counts); their state is restored from changelog
    partition N before the first record of either is handled, and dropped on revocation."""

    def __init__(
        self,
        settings: Settings,
        logic: PlannerLogic,
        metrics: Metrics,
        readiness: Readiness,
        *,
        store: StateStore | None = None,
        instance_id: str | None = None,
        poll_timeout: float = 0.05,
    ) -> None:
        self.settings = settings
        self.logic = logic
        self.metrics = metrics
        self.readiness = readiness
        self.topics = settings.topics
        self.instance_id = instance_id or stage_instance_id(settings, ROLE)
        decode_state = logic.codec.decode_state

        def _decode(raw: bytes) -> SubscriptionRecord:
            record = decode_state(raw)
            assert record is not None
            return record

        self.store = store if store is not None else StateStore(_decode)
        self.poll_timeout = poll_timeout
        self.log = get_logger("icareus_bridge.planner").bind(instance=self.instance_id)
        self._lag_clock = metrics.lag_clock(settings.planner.group_id, estimates_unread=True)
        self._client_errors = RateLimiter()
        self._consumer: GroupConsumer | None = None
        self._tx: StageTransactions | None = None
        self._checkpoint: Checkpoint | None = None
        self._state: StateTransaction[SubscriptionRecord] = self.store.transaction(
            self.topics.state, logic.codec.encode_state
        )
        self._assigned: set[int] = set()
        self.assignment: dict[str, set[int]] = {}  # topic -> partitions, as last assigned
        self._ready = False
        self._last_lag_at = 0.0
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._tally: dict[tuple[Any, tuple[str, ...]], int] = {}
        self._brokers_down = False
        self._last_broker_check = 0.0
        # Set by the rebalance callbacks, acted on by the loop (never inside a callback).
        self._rejoin_reason: str | None = None
        self._fatal: clients.FatalClientError | None = None
        self._ownership = OwnershipWatch(
            settings.kafka, settings.planner.group_id, self.topics.input
        )
        readiness.register(READINESS_CHECK, "waiting for partitions")

    # --- clients ------------------------------------------------------------------------

    @property
    def transactional_id(self) -> str:
        return clients.transactional_id(self.settings.kafka, ROLE, self.instance_id)

    def _fatal_error(self, err: ClientError | Exception) -> clients.FatalClientError:
        return clients.FatalClientError(ROLE, self.instance_id, self.transactional_id, err)

    def _new_consumer(self) -> GroupConsumer:
        return GroupConsumer(
            self.settings.kafka,
            self.settings.planner.group_id,
            [self.topics.input, self.topics.results],
            instance_id=f"{ROLE}-{self.instance_id}",
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
            on_refused=self._refuse_assignment,
            on_error=self._on_client_error,
            on_record_error=self._on_record_error,
            role=ROLE,
            rejoin_on_poll=False,
        )

    def _new_transactions(self) -> StageTransactions:
        p = self.settings.planner
        return StageTransactions(
            self.settings.kafka,
            self.transactional_id,
            dead_letters=DeadLetterRoute(self.topics.dlq, "plan", p.group_id),
            on_error=self._on_client_error,
            on_stall=self._transaction_stalled,
            max_records=p.batch_max_events,
            max_seconds=p.batch_max_ms / 1000.0,
        )

    def _on_client_error(self, err: ClientError) -> None:
        # A broker outage reports the same error on every reconnect attempt: a few lines, then
        # one line per interval saying how many were left out.
        allowed, suppressed = self._client_errors.allow(err.code)
        if allowed:
            self.log.warning("kafka client error", error=str(err), suppressed=suppressed)
        if err.fatal and self._fatal is None:
            self._fatal = self._fatal_error(err)
        if err.all_brokers_down:
            self._brokers_down = True
            self.readiness.set(READINESS_CHECK, False, "no broker reachable")

    def _on_record_error(self, err: ClientError) -> None:
        self.log.warning("consumer error", error=str(err))

    def _new_checkpoint(self) -> Checkpoint:
        assert self._tx is not None and self._consumer is not None
        self._state = self.store.transaction(self.topics.state, self.logic.codec.encode_state)
        return self._tx.begin(self._consumer, self._state)

    def _transaction_stalled(self, reason: str) -> None:
        """A transactional call outlived its watchdog (the checkpoint replaces the producer):
        not ready until the cluster answers a metadata call again (see `_check_brokers`)."""
        self.log.error("transactional call stalled", reason=reason)
        self._brokers_down = True
        self.readiness.set(READINESS_CHECK, False, reason)

    # --- rebalance ----------------------------------------------------------------------

    def _on_assign(self, partitions: list[Partition]) -> str | None:
        """Restore the state of the assigned partitions; a reason when the assignment is
        refused (the consumer takes none of it and rejoins, see `_refuse_assignment`)."""
        by_topic: dict[str, set[int]] = {}
        for tp in partitions:
            by_topic.setdefault(tp.topic, set()).add(tp.partition)
        events = by_topic.get(self.topics.input, set())
        results = by_topic.get(self.topics.results, set())
        if events != results:
            # The range assignor gives a member the same numbers of both topics; anything else
            # was not computed for this subscription, and feedback would miss its state.
            return (
                f"assigned events partitions {sorted(events)} but results partitions "
                f"{sorted(results)} (not co-partitioned); rejoining the group"
            )
        self._ownership.reset()
        wanted = events | results
        self.assignment = {t: set(ps) for t, ps in by_topic.items()}
        self._ready = False
        self.readiness.set(READINESS_CHECK, False, f"restoring {len(wanted)} partitions")
        reports = self.store.restore(self.settings.kafka, self.topics.state, wanted)
        for r in reports:
            self.metrics.state_restore_seconds.labels(str(r.partition)).set(r.seconds)
            self.metrics.state_restore_records.labels(str(r.partition)).set(r.records)
        self._assigned = wanted
        self.metrics.state_subscriptions.set(len(self.store))
        seconds = max((r.seconds for r in reports), default=0.0)
        self.log.info(
            "partitions assigned, state restored",
            partitions=sorted(wanted),
            subscriptions=len(self.store),
            changelog_records=sum(r.records for r in reports),
            restore_seconds=round(seconds, 3),
        )
        self._ready = True
        self.readiness.set(READINESS_CHECK, True, f"{len(wanted)} partitions")
        return None

    def _refuse_assignment(self, reason: str) -> None:
        """The consumer took none of an assignment that does not fit the subscription (topics
        it does not read, or events and results not co-partitioned); the loop rejoins."""
        self.assignment = {}
        self._ready = False
        self._rejoin_reason = reason
        self.readiness.set(READINESS_CHECK, False, reason)
        self.log.warning("assignment refused", reason=reason)

    def _rejoin(self, reason: str) -> None:
        """Leave the group and join again. librdkafka's unsubscribe sends LeaveGroup also for a
        static member, so the next join is a new member's: the coordinator rebalances and the
        assignor sees the current subscription."""
        assert self._consumer is not None
        self.log.info("rejoining the consumer group", reason=reason)
        self._commit_open(reason="rejoin")
        self._consumer.rejoin()

    def _on_revoke(self, partitions: list[Partition]) -> None:
        self._commit_open(reason="revoke")
        revoked = {tp.partition for tp in partitions}
        for p in revoked:
            self.store.drop(p)
        self._assigned -= revoked
        self.metrics.state_subscriptions.set(len(self.store))
        for tp in partitions:
            self.metrics.forget_partition(self.settings.planner.group_id, tp.topic, tp.partition)
        self.readiness.set(READINESS_CHECK, False, "rebalancing")
        self.log.info("partitions revoked, state dropped", partitions=sorted(revoked))

    def _on_lost(self, partitions: list[Partition]) -> None:
        # Lost (not revoked): another member may own them already; nothing may be committed.
        if self._checkpoint is not None and not self._checkpoint.empty:
            try:
                self._checkpoint.abort()
            except TransactionFatal as exc:
                self._fatal = self._fatal or self._fatal_error(exc)
            self._checkpoint = self._new_checkpoint()  # on the producer the abort left
        for tp in partitions:
            self.store.drop(tp.partition)
            self._assigned.discard(tp.partition)
            self.metrics.forget_partition(self.settings.planner.group_id, tp.topic, tp.partition)
        self.readiness.set(READINESS_CHECK, False, "partitions lost")
        self.log.warning("partitions lost", partitions=sorted(tp.partition for tp in partitions))

    # --- state view ---------------------------------------------------------------------

    def _lookup(self, partition: int, key: bytes) -> SubscriptionRecord | None:
        """The open batch's own write of the key, else the store's committed state."""
        return self._state.get(partition, key)

    # --- the loop -----------------------------------------------------------------------

    def start(self) -> None:
        """Create the clients (the producer first: `init_transactions` aborts whatever a
        previous incarnation of this instance left open, before the state is restored)."""
        self._tx = self._new_transactions()
        self._consumer = self._new_consumer()
        self._checkpoint = self._new_checkpoint()
        self.log.info(
            "planner started",
            input=self.topics.input,
            results=self.topics.results,
            group=self.settings.planner.group_id,
        )

    def run(self, stop: threading.Event) -> None:
        """Plan until `stop` is set; then commit the open batch and close the clients."""
        if self._consumer is None:
            self.start()
        try:
            while not stop.is_set():
                self.step()
        finally:
            self.close()

    def step(self) -> int:
        """One poll: handle what arrived, commit when the batch is due. Returns records read."""
        assert self._consumer is not None and self._checkpoint is not None
        if self._fatal is not None:
            raise self._fatal
        if self._rejoin_reason is not None:
            reason, self._rejoin_reason = self._rejoin_reason, None
            self._rejoin(reason)
        max_n = self.settings.planner.batch_max_events
        msgs = self._poll(max_n, wait=self._checkpoint.empty)
        try:
            for rec in msgs:
                self._handle(rec)
        finally:
            self._add_tally()
        cp = self._checkpoint
        # Commit as soon as the consumer has nothing more at hand (the previous commit has
        # finished: it runs in this thread), or the batch is full or old. Under load the
        # records that arrive during a commit make the next batch by themselves.
        if cp.due() or (len(msgs) < max_n and not cp.empty):
            self._commit_open(reason="batch")
        elif not msgs:
            self._lag_clock.caught_up()
        if self._brokers_down:
            self._check_brokers()
        elif self._ready and not self.assignment.get(self.topics.input):
            self._check_ownership()
        return len(msgs)

    def _poll(self, max_n: int, *, wait: bool) -> list[ConsumedRecord]:
        """Up to `max_n` records at hand. `wait` (no batch open): first wait up to the poll
        timeout for one record, returning as soon as it comes, then take what else is there."""
        assert self._consumer is not None
        try:
            if not wait:
                return self._consumer.poll(max_n, timeout=0)
            first = self._consumer.poll(1, timeout=self.poll_timeout)
            if not first or max_n == 1:
                return first
            return first + self._consumer.poll(max_n - 1, timeout=0)
        except ConsumerFailed as exc:
            raise self._fatal_error(exc.error or exc) from exc

    def _check_ownership(self) -> None:
        """Owning no input is fine when others own it all; not while partitions go unowned."""
        verdict = self._ownership.check()
        if verdict is None:
            return
        self.readiness.set(READINESS_CHECK, verdict.ready, verdict.detail)
        if verdict.rejoin:
            self._ownership.reset()
            self._rejoin_reason = verdict.detail

    def _check_brokers(self) -> None:
        """After 'all brokers down': ready again once the cluster answers a metadata call."""
        now = time.monotonic()
        if now - self._last_broker_check < 2.0:
            return
        self._last_broker_check = now
        assert self._consumer is not None
        if not self._consumer.reachable(timeout=1.0):
            return
        self._brokers_down = False
        if self._ready:
            self.readiness.set(READINESS_CHECK, True, f"{len(self._assigned)} partitions")
        self.log.info("broker reachable again")

    def _handle(self, rec: ConsumedRecord) -> None:
        assert self._checkpoint is not None
        self._lag_clock.read(rec.topic, rec.partition, rec.offset, rec.timestamp_ms)
        if rec.topic == self.topics.results:
            h = self.logic.on_result(rec, self._lookup, self.store.find_partition)
        else:
            h = self.logic.on_event(rec, self._lookup)
        cp = self._checkpoint
        for out in h.outputs:
            cp.produce(out)
        if h.state is not None:
            s = h.state
            self._state.set(s.partition, s.key, s.record)
        cp.mark_processed(rec.topic, rec.partition, rec.offset)
        self._count(rec, h)

    def _inc(self, counter: Any, *labels: str) -> None:
        # prometheus_client's labels() costs more than the planning of a small event, and each
        # inc() takes a lock: counts are tallied per poll and added once (`_add_tally`, at the
        # end of every step), to children cached per label set (few: codes, types, reasons).
        key = (counter, labels)
        self._tally[key] = self._tally.get(key, 0) + 1

    def _add_tally(self) -> None:
        for (counter, labels), n in self._tally.items():
            key = (id(counter), labels)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = counter.labels(*labels)
            child.inc(n)
        self._tally.clear()

    def _count(self, rec: ConsumedRecord, h: Handled) -> None:
        m = self.metrics
        if h.dead_letter is not None:
            stage, reason = h.dead_letter
            self._inc(m.dead_letters, stage, reason)
            about = "request_type" if rec.topic == self.topics.results else "action_code"
            self.log.warning(
                "record dead-lettered",
                subscription_id=rec.key.decode("utf-8", "replace") if rec.key else None,
                outcome="dead_lettered",
                **{about: h.action or None},
                stage=stage,
                reason=reason,
                topic=rec.topic,
                partition=rec.partition,
                offset=rec.offset,
            )
        if rec.topic == self.topics.results:
            if h.dead_letter is None:
                outcome = h.outcome.removeprefix("feedback_")
                self._inc(m.feedback, h.action, h.result_state, outcome)
            return
        self._inc(m.events, h.action or "UNKNOWN", h.outcome)
        for t in h.request_types:
            self._inc(m.requests_planned, t)
        for t, code in h.rejections:
            self._inc(m.rejections_planned, t, code)
            self._inc(m.results, t, LifeCycleState.REJECTED.value)

    def _commit_open(self, reason: str) -> None:
        cp = self._checkpoint
        if cp is None or cp.empty:
            return
        try:
            stats = cp.commit()
        except TransactionAborted as exc:
            self.metrics.transactions.labels(ROLE, "aborted").inc()
            self.log.warning("transaction aborted, batch will be read again", error=str(exc))
            self._checkpoint = self._new_checkpoint()
            time.sleep(0.1)
            return
        except TransactionFatal as exc:
            # Fenced (a process with the same transactional id took over) or otherwise unusable:
            # a new producer would fence that process in turn. This one stops; see close().
            self.metrics.transactions.labels(ROLE, "fatal").inc()
            self.log.error("transaction failed fatally", error=str(exc))
            self._fatal = self._fatal_error(exc)
            raise self._fatal from exc
        for refusal in stats.refused:
            self._inc(self.metrics.dead_letters, "plan", refusal.reason)
            self.log.error(
                "record refused by the broker, dead-lettered",
                reason=refusal.reason,
                topic=refusal.topic,
                partition=refusal.partition,
                error=refusal.error,
                truncated=refusal.truncated,
            )
        self._add_tally()
        self.metrics.transactions.labels(ROLE, "committed").inc()
        self.metrics.transaction_events.labels(ROLE).observe(stats.input_records)
        self.metrics.transaction_seconds.labels(ROLE).observe(stats.seconds)
        self.metrics.state_subscriptions.set(len(self.store))
        self._lag_clock.committed_all()
        self._checkpoint = self._new_checkpoint()
        self._report_lag(cp.partitions())

    def _report_lag(self, partitions: set[tuple[str, int]]) -> None:
        now = time.monotonic()
        if now - self._last_lag_at < 5.0 or self._consumer is None:
            return
        self._last_lag_at = now
        group = self.settings.planner.group_id
        try:
            for lag in self._consumer.partition_lag(partitions):
                self.metrics.set_consumer_lag(group, lag.topic, lag.partition, lag.lag)
        except Exception as exc:  # metrics must never stop the stage
            self.log.debug("lag not available", error=str(exc))

    def close(self) -> None:
        """Commit the open batch, leave the group, flush the producer."""
        try:
            if self._fatal is None:
                self._commit_open(reason="shutdown")
        finally:
            if self._consumer is not None:
                with contextlib.suppress(Exception):  # a fenced consumer may refuse to leave
                    self._consumer.close()
                self._consumer = None
            if self._tx is not None:
                self._tx.close(0 if self._fatal is not None else 10)
            self.readiness.set(READINESS_CHECK, False, "stopped")
            self.log.info("planner stopped")
