"""The dispatcher's logic: one consumed record of the requests topic -> what it produced (results,
a dead letter, parking or unparking its subscription). No Kafka client, no loop: Icareus is
reached through `IcareusPort` (which `IcareusClient` satisfies), the clock is injected, and what
the dispatcher remembers between records (`AccountOutcomes`, `ParkedKeys`) is handed in.

The shell around it (`pipeline.dispatcher.Dispatcher`) owns the consumer, the scheduler, the
rebalances and the commits; it calls `work_item` for each record read, `process` in the record's
turn and `settle` to turn what came out into the records of the next transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from icareus_bridge.codec import DecodeError, DecodeReason
from icareus_bridge.config import Settings
from icareus_bridge.core.feedback import rejection_result
from icareus_bridge.core.model import (
    ActionCode,
    LifecycleEvent,
    ProvisioningRequest,
    ProvisioningResult,
    RejectionCode,
    RequestType,
)
from icareus_bridge.icareus.client import CallResult
from icareus_bridge.icareus.errors import (
    AuthIcareusError,
    IcareusError,
    PermanentIcareusError,
    TlsIcareusError,
)
from icareus_bridge.kafka.checkpoint import OutboundRecord
from icareus_bridge.kafka.dispatch import ConsumedRecord
from icareus_bridge.kafka.stage import now_ms
from icareus_bridge.observability.http import Readiness
from icareus_bridge.observability.logging import request_fields
from icareus_bridge.observability.metrics import Metrics
from icareus_bridge.pipeline import outcomes, reset_plan
from icareus_bridge.pipeline.accounts import AccountOutcomes
from icareus_bridge.pipeline.dead_letter import (
    Origin,
    Stage,
    dead_letter_headers,
    replay_count_of,
)
from icareus_bridge.pipeline.parking import ParkedKey, ParkedKeys, encode_marker, marker_key

ICAREUS_CHECK = "icareus"
ICAREUS_PROBE_ACCOUNT = "icareus-bridge-readiness-probe"
ICAREUS_PROBE_SECONDS = 5.0

# dlq.reason codes of stage dispatch
REASON_RETRIES_EXHAUSTED = "RETRIES_EXHAUSTED"
# Icareus refused the bridge's own credentials for the whole retry budget (docs/ICAREUS.md).
REASON_AUTH_FAILED = "AUTH_FAILED"
# The bridge could not authenticate Icareus' TLS link (certificate, handshake) for the whole
# retry budget (docs/ICAREUS.md, "HTTPS").
REASON_TLS_FAILED = "TLS_FAILED"
REASON_PARKED = "PARKED"
REASON_DISPATCH_FAILED = "DISPATCH_FAILED"

# Without a user, these requests already hold: what they would remove is not there.
_HOLDS_WITHOUT_USER = frozenset(
    {RequestType.REMOVE_USER, RequestType.REMOVE_DEVICE, RequestType.CANCEL_PRODUCTS}
)


class IcareusPort(reset_plan.UserLookup, Protocol):
    """The Icareus calls the dispatcher makes (`icareus_bridge.icareus.client.IcareusClient`)."""

    async def send(self, request: ProvisioningRequest, user_id: str | None = None) -> CallResult:
        """Send one planned request, its request id as the idempotency key."""
        ...


class DispatchCodec(Protocol):
    """The part of the bridge's Avro codec the dispatcher uses (`icareus_bridge.codec.Codec`)."""

    def decode_inbound(self, data: bytes) -> ProvisioningRequest | LifecycleEvent: ...
    def encode_result(self, result: ProvisioningResult) -> bytes: ...


def _auth_reason(exc: AuthIcareusError) -> str:
    return REASON_TLS_FAILED if isinstance(exc, TlsIcareusError) else REASON_AUTH_FAILED


@dataclass(slots=True)
class WorkItem:
    """One consumed record on its way through the scheduler."""

    record: ConsumedRecord
    generation: int  # of its partition's assignment: a revoked partition's late work is dropped
    subscription_id: str
    request: ProvisioningRequest | None = None
    reset: LifecycleEvent | None = None
    error: DecodeError | None = None

    @property
    def record_id(self) -> str:
        """What a parked key names: the request id, or the event id of a reset."""
        if self.request is not None:
            return self.request.request_id
        if self.reset is not None:
            return self.reset.event_id
        return f"{self.record.partition}@{self.record.offset}"


@dataclass(slots=True)
class Finished:
    """What one item produced; applied at once when the handler returns."""

    records: list[OutboundRecord] = field(default_factory=list)
    results: list[ProvisioningResult] = field(default_factory=list)
    park: ParkedKey | None = None
    unpark: bool = False
    dead_letter_reason: str | None = None


class GaveUp(Exception):
    """A request that cannot finish now: its retry budget ran out, or the dispatcher failed on
    it. It goes to the DLQ and its subscription is parked."""

    def __init__(self, reason: str, cause: BaseException) -> None:
        super().__init__(f"{reason}: {cause}")
        self.reason = reason
        self.cause = cause


class IcareusHealth:
    """The `icareus` readiness check, kept current by `probe` (at start, and while Icareus does
    not answer) and by real calls; and the one-time log lines of a refusal of the bridge's
    credentials (or TLS link)."""

    def __init__(self, readiness: Readiness, metrics: Metrics, log: Any) -> None:
        self.readiness = readiness
        self.metrics = metrics
        self.log = log
        self.ok = False
        self._auth_refused = False
        readiness.register(ICAREUS_CHECK, "not reached yet")

    def answers(self, ok: bool, detail: str) -> None:
        if ok != self.ok or not ok:
            self.ok = ok
            self.readiness.set(ICAREUS_CHECK, ok, detail)
        if ok and self._auth_refused:
            self._auth_refused = False
            self.log.info("Icareus accepts the bridge's credentials again")

    async def probe(self, icareus: reset_plan.UserLookup, stopped: Callable[[], bool]) -> None:
        """A getUser of an account that never exists, repeated while Icareus is not known to
        answer (real calls keep the check current meanwhile), until `stopped()`."""
        while not stopped():
            if not self.ok:
                try:
                    await icareus.get_user(external_id=ICAREUS_PROBE_ACCOUNT)
                    self.answers(True, "answering")
                except AuthIcareusError:
                    pass  # `auth_failed` has said so at each refused attempt
                except PermanentIcareusError as exc:
                    self.answers(False, f"refuses the bridge: {exc.code}")
                except IcareusError as exc:
                    self.answers(False, f"unreachable: {exc.message}")
            await asyncio.sleep(ICAREUS_PROBE_SECONDS)

    def auth_failed(self, exc: AuthIcareusError) -> None:
        """Icareus refused the bridge's own credentials: an outage of this bridge, whatever the
        request was. Counted at every attempt, readiness false at once; the call itself is
        held and retried (the client), then dead-lettered `AUTH_FAILED` (`DispatchLogic`). A TLS
        link the bridge cannot authenticate is handled alike (`TLS_FAILED`)."""
        tls = isinstance(exc, TlsIcareusError)
        if tls:
            self.metrics.icareus_tls_failures.inc()
            self.answers(False, f"TLS link not authenticated ({exc.code}): {exc}")
        else:
            self.metrics.icareus_auth_failures.inc()
            self.answers(
                False,
                f"refuses the bridge's credentials ({exc.code}): check icareus.key or "
                "key_file, icareus.organization_id and the clock",
            )
        if self._auth_refused:
            return
        self._auth_refused = True
        if tls:
            self.log.error(
                "Icareus' TLS link is not authenticated; calls are held and retried",
                code=exc.code,
                operation=exc.operation,
                error=str(exc),
            )
        else:
            self.log.error(
                "Icareus refuses the bridge's credentials; calls are held and retried",
                code=exc.code,
                operation=exc.operation,
                http_status=exc.http_status,
            )


class DispatchLogic:
    """One consumed record -> what it produced. Requests of one subscription must be handed to
    `process` one at a time and in order (the shell's scheduler does that)."""

    def __init__(
        self,
        settings: Settings,
        icareus: IcareusPort,
        *,
        codec: DispatchCodec,
        metrics: Metrics,
        health: IcareusHealth,
        log: Any,
        accounts: AccountOutcomes | None = None,
        parked: ParkedKeys | None = None,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.group = settings.dispatcher.group_id
        self.icareus = icareus
        self.codec = codec
        self.metrics = metrics
        self.health = health
        self.log = log
        self.accounts = accounts if accounts is not None else AccountOutcomes()
        self.parked = parked if parked is not None else ParkedKeys()
        self.clock_ms = clock_ms

    # --- intake --------------------------------------------------------------------------

    def work_item(self, record: ConsumedRecord, generation: int) -> tuple[str, WorkItem]:
        """The record decoded, with the key it is ordered under (the subscription id)."""
        key = record.key.decode("utf-8", errors="replace") if record.key is not None else ""
        item = WorkItem(record=record, generation=generation, subscription_id=key)
        if record.value is None:
            item.error = DecodeError(DecodeReason.NOT_AVRO, "record has no value")
            return key, item
        # A request, or the one other record on this topic: a RESET_SUBSCRIPTION forwarded by
        # the planner. One decode, by the writer schema's name.
        try:
            decoded = self.codec.decode_inbound(record.value)
        except DecodeError as exc:
            item.error = exc
        else:
            if isinstance(decoded, ProvisioningRequest):
                item.request = decoded
                item.subscription_id = decoded.subscription_id
            elif decoded.action.code == ActionCode.RESET_SUBSCRIPTION:
                item.reset = decoded
                item.subscription_id = decoded.subscription.id
            else:
                item.error = DecodeError(
                    DecodeReason.UNKNOWN_SCHEMA,
                    f"a {decoded.action.code} event on the requests topic",
                )
        # Order follows the record key (the partitioner's key), the subscription id.
        return key or item.subscription_id, item

    # --- one item ------------------------------------------------------------------------

    async def process(self, item: WorkItem) -> Finished:
        """Decide the item and run it against Icareus; every failure becomes a dead letter."""
        out = Finished()
        if item.error is not None:
            return self._dead_letter(
                item, out, item.error.stage, str(item.error.reason), item.error
            )
        parked = self.parked.get(item.subscription_id)
        if parked is not None:
            if parked.parked_behind == item.record_id and replay_count_of(item.record.headers):
                out.unpark = True  # the request that parked the key is back from the DLQ
            else:
                return self._dead_letter(
                    item,
                    out,
                    "dispatch",
                    REASON_PARKED,
                    f"subscription parked behind request {parked.parked_behind}",
                    parked_behind=parked.parked_behind,
                )
        try:
            if item.reset is not None:
                await self._reset(item.reset, out.results)
            else:
                assert item.request is not None
                out.results.append(await self._execute(item.request))
        except GaveUp as exc:
            self._dead_letter(item, out, "dispatch", exc.reason, exc.cause)
            out.park = ParkedKey(
                subscription_id=item.subscription_id,
                parked_behind=item.record_id,
                partition=item.record.partition,
                parked_at=self.clock_ms(),
            )
        return out

    async def _execute(self, request: ProvisioningRequest) -> ProvisioningResult:
        """Send one request (or decide it without a call); give up only by raising GaveUp."""
        try:
            return await self._send(request)
        except GaveUp:
            raise
        except AuthIcareusError as exc:  # refused for the whole budget; readiness already false
            raise GaveUp(_auth_reason(exc), exc) from exc
        except IcareusError as exc:  # transient, after the whole retry budget
            gave_up = "permanent" if isinstance(exc, PermanentIcareusError) else "transient"
            self.metrics.icareus_calls.labels(request.type.value, gave_up).inc()
            self.health.answers(False, f"unreachable: {exc.message}")
            raise GaveUp(REASON_RETRIES_EXHAUSTED, exc) from exc
        except Exception as exc:  # a bug must not break the subscription's order either
            raise GaveUp(REASON_DISPATCH_FAILED, exc) from exc

    async def _send(self, request: ProvisioningRequest) -> ProvisioningResult:
        blocking = self.accounts.blocking_rejection(request)
        if blocking is not None:
            return outcomes.rejected_without_call(
                request,
                RejectionCode.DEPENDENCY_REJECTED,
                f"ADD_USER {blocking.request_id} of account {request.account_key} in the same "
                f"plan was rejected ({blocking.error_code}); nothing sent",
                self.clock_ms(),
            )
        user_id: str | None = None
        if request.type is not RequestType.ADD_USER:
            user_id = self.accounts.resolve_user_id(request)
            if user_id is None:
                # Planned before its ADD_USER had answered, and that answer is not in memory
                # (a restart): ask Icareus for the account by its key.
                lookup = await self.icareus.get_user(external_id=request.account_key)
                if lookup.user is None:
                    return self._without_user(request, lookup)
                user_id = lookup.user.user_id
                self.accounts.registered(request.account_key, user_id)
        started = time.perf_counter()
        try:
            call = await self.icareus.send(request, user_id=user_id)
        except PermanentIcareusError as exc:
            self._observe_call(request, started, "permanent", exc.code)
            if request.type is RequestType.ADD_USER:
                self.accounts.registration_rejected(request, exc.code)
            return outcomes.rejected_by_icareus(request, exc, user_id, self.clock_ms())
        self._observe_call(request, started, "ok")
        if not self.health.ok:
            self.health.answers(True, "answering")
        if request.type is RequestType.ADD_USER and call.user_id is not None:
            self.accounts.registered(request.account_key, call.user_id)
        elif request.type is RequestType.REMOVE_USER:
            self.accounts.removed(request.account_key)
        return outcomes.completed(request, call, user_id, self.clock_ms())

    def _without_user(self, request: ProvisioningRequest, lookup: CallResult) -> ProvisioningResult:
        if request.type in _HOLDS_WITHOUT_USER:
            return outcomes.completed(request, lookup, None, self.clock_ms())
        return outcomes.rejected_without_call(
            request,
            RejectionCode.ACCOUNT_NOT_REGISTERED,
            f"account {request.account_key} is not registered in Icareus",
            self.clock_ms(),
        )

    async def _reset(self, event: LifecycleEvent, results: list[ProvisioningResult]) -> None:
        """RESET_SUBSCRIPTION: read what Icareus really holds for every account the
        subscription can have, plan the event against that (`reset_plan`, the one planning of
        a reset), and run the plan here, in the subscription's turn (after every earlier
        request of it)."""
        try:
            observed = await reset_plan.observe(
                self.icareus,
                event.subscription,
                self.settings.provider,
                found=self.accounts.registered,
            )
        except AuthIcareusError as exc:
            raise GaveUp(_auth_reason(exc), exc) from exc
        except IcareusError as exc:
            raise GaveUp(REASON_RETRIES_EXHAUSTED, exc) from exc
        decision = reset_plan.plan_reset(event, observed.values(), self.settings.provider)
        now = self.clock_ms()
        results.extend(rejection_result(r, event, executed_at=now) for r in decision.rejections)
        for request in decision.requests:
            results.append(await self._execute(request))
        self.log.info(
            "subscription reset",
            **request_fields(event),
            outcome="reset",
            accounts_found=len(observed),
            requests=len(decision.requests),
            rejections=len(decision.rejections),
        )

    def _observe_call(
        self, request: ProvisioningRequest, started: float, outcome: str, code: str | None = None
    ) -> None:
        elapsed = time.perf_counter() - started
        t = request.type.value
        self.metrics.icareus_call_seconds.labels(t).observe(elapsed)
        self.metrics.icareus_calls.labels(t, outcome).inc()
        if code is not None:
            self.metrics.icareus_refusals.labels(t, code).inc()

    # --- turning outcomes into records ---------------------------------------------------

    def _dead_letter(
        self,
        item: WorkItem,
        out: Finished,
        stage: str,
        reason: str,
        error: BaseException | str,
        *,
        parked_behind: str | None = None,
    ) -> Finished:
        rec = item.record
        now = self.clock_ms()
        attempts, first, last, status, excerpt = 0, None, None, None, None
        if isinstance(error, IcareusError):
            attempts = error.attempts
            first = int(error.first_failure_at * 1000)
            last = int(error.last_failure_at * 1000)
            status = error.http_status
            excerpt = error.response_excerpt or None
        headers = dead_letter_headers(
            cast(Stage, stage),
            reason,
            error,
            Origin(rec.topic, rec.partition, rec.offset, rec.timestamp_ms),
            self.group,
            now_ms=now,
            attempts=attempts,
            first_failure_at=first,
            last_failure_at=last,
            http_status=status,
            response_excerpt=excerpt,
            replay_count=replay_count_of(rec.headers),
            parked_behind=parked_behind,
        )
        out.records.append(OutboundRecord(self.topics.dlq, rec.key, rec.value, headers=headers))
        out.dead_letter_reason = f"{stage}:{reason}"
        return out

    def settle(self, item: WorkItem, finished: Finished) -> list[OutboundRecord]:
        """What the item produced as the records of the next transaction: its dead letter, its
        results and its parked-key marker. Parks or unparks its subscription, counts and logs.
        The shell calls it only for an item whose partition is still its own."""
        partition = item.record.partition
        records = list(finished.records)
        records.extend(self._result_record(result, partition) for result in finished.results)
        if finished.unpark:
            records.append(self._unpark(item))
        if finished.park is not None:
            records.append(self._park(item, finished.park, finished.dead_letter_reason))
        elif finished.dead_letter_reason is not None:
            self.log.info(
                "request dead-lettered",
                **item_fields(item),
                outcome="dead_lettered",
                reason=finished.dead_letter_reason,
            )
        if finished.dead_letter_reason is not None:
            stage, _, reason = finished.dead_letter_reason.partition(":")
            self.metrics.dead_letters.labels(stage, reason).inc()
        self.metrics.parked_keys.set(len(self.parked))
        return records

    def _result_record(self, result: ProvisioningResult, partition: int) -> OutboundRecord:
        record = OutboundRecord(
            self.topics.results,
            result.subscription_id.encode("utf-8"),
            self.codec.encode_result(result),
            partition=partition,
        )
        self._count_result(result)
        return record

    def _unpark(self, item: WorkItem) -> OutboundRecord:
        self.parked.unpark(item.subscription_id)
        tombstone = OutboundRecord(
            self.topics.state,
            marker_key(item.subscription_id),
            None,
            partition=item.record.partition,
        )
        self.log.info("subscription unparked", **item_fields(item), outcome="unparked")
        return tombstone

    def _park(self, item: WorkItem, parked: ParkedKey, reason: str | None) -> OutboundRecord:
        self.parked.park(parked)
        marker = OutboundRecord(
            self.topics.state,
            marker_key(item.subscription_id),
            encode_marker(parked),
            partition=item.record.partition,
        )
        self.log.warning(
            "subscription parked", **item_fields(item), outcome="parked", reason=reason
        )
        return marker

    def _count_result(self, result: ProvisioningResult) -> None:
        t = result.type.value
        self.metrics.results.labels(t, result.life_cycle_state.value).inc()
        if result.created_at:
            seconds = max(self.clock_ms() - result.created_at, 0) / 1000.0
            self.metrics.event_to_result_seconds.labels(t).observe(seconds)
        # Completed requests are the bulk: counted in metrics, logged at debug only.
        log = self.log.debug if result.life_cycle_state.value == "COMPLETED" else self.log.info
        log(
            "result",
            **request_fields(result),
            outcome=result.life_cycle_state.value,
            error_code=result.error_code,
            attempts=result.attempts,
        )


def item_fields(item: WorkItem) -> dict[str, object]:
    """The log fields of one work item: its request's (or reset event's) ids and codes."""
    fields: dict[str, object] = {"subscription_id": item.subscription_id}
    if item.request is not None:
        fields.update(request_fields(item.request))
    elif item.reset is not None:
        fields.update(request_fields(item.reset))
    fields.setdefault("request_id", item.record_id)
    return fields


__all__ = [
    "REASON_AUTH_FAILED",
    "REASON_DISPATCH_FAILED",
    "REASON_PARKED",
    "REASON_RETRIES_EXHAUSTED",
    "REASON_TLS_FAILED",
    "DispatchCodec",
    "DispatchLogic",
    "Finished",
    "GaveUp",
    "IcareusHealth",
    "IcareusPort",
    "WorkItem",
    "item_fields",
]
