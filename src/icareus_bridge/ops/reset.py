"""`icareus-bridge reset`: CRM's Reset Single Subscription (and a reset of every known one).

A reset brings Icareus back in line with the last CRM snapshot the bridge holds. It does not
call Icareus itself: it publishes a `RESET_SUBSCRIPTION` event built from that snapshot (same
version, a fresh event id) to the input topic, keyed by the subscription id, into the partition
its state lives in (the partition of its CRM events). The running pipeline does the rest in the
subscription's turn: the planner forwards the event, the dispatcher reads what Icareus holds
(getUser per account), plans the difference with `plan` and runs it, and CRM gets the results as
for any request (docs/PIPELINE.md, "Reset").

`--dry-run` does the dispatcher's reading and planning here, with the same code
(`pipeline.reset_plan`: the same account order, `observed_state` + `plan`), prints what
Icareus holds against what it should hold and the requests a reset would send, and changes
nothing."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from icareus_bridge.codec import Codec
from icareus_bridge.config import Settings, load_settings
from icareus_bridge.core.model import (
    AccountState,
    Action,
    ActionCode,
    Decision,
    LifecycleEvent,
    ProvisioningRequest,
    RequestType,
    sorted_products,
)
from icareus_bridge.icareus.client import IcareusClient
from icareus_bridge.icareus.errors import IcareusError
from icareus_bridge.kafka.clients import quiet_librdkafka
from icareus_bridge.kafka.publish import IdempotentPublisher, OutgoingRecord
from icareus_bridge.ops.state_lookup import (
    KafkaUnreachable,
    KnownState,
    StateLookup,
    UnknownSubscription,
)
from icareus_bridge.pipeline import reset_plan

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 4

PROG = "icareus-bridge reset"


class _Refused(Exception):
    """This subscription cannot be reset now; the message says why."""


def reset_event(known: KnownState, *, now_ms: int, event_id: str) -> LifecycleEvent:
    """The RESET_SUBSCRIPTION event of a subscription's last CRM snapshot."""
    rec = known.record
    if rec.snapshot is None:
        raise _Refused("the bridge holds no CRM snapshot of it (no event was applied yet)")
    return LifecycleEvent(
        event_id=event_id,
        occurred_at=now_ms,
        action=Action(code=ActionCode.RESET_SUBSCRIPTION.value),
        subscription=rec.snapshot,
    )


def refusal(known: KnownState) -> str | None:
    """Why a real reset is refused: a parked key would send the reset event to the DLQ behind
    the request that parked it, so its dead letters must be replayed first."""
    if known.parked is not None:
        return (
            f"parked behind request {known.parked.parked_behind}; replay its dead letters "
            f"first (icareus-bridge replay --subscription {known.record.subscription_id})"
        )
    if known.record.snapshot is None:
        return "the bridge holds no CRM snapshot of it (no event was applied yet)"
    return None


# --- dry run: the dispatcher's reading and planning, sending nothing -------------------------


@dataclass(frozen=True, slots=True)
class Preview:
    known: KnownState
    observed: dict[str, AccountState]  # distributor -> what Icareus holds
    decision: Decision


async def observe(
    client: IcareusClient, event: LifecycleEvent, settings: Settings
) -> dict[str, AccountState]:
    """What Icareus holds for every account the subscription can have, read as the dispatcher
    reads it for a reset (`pipeline.reset_plan.observe`)."""
    return await reset_plan.observe(client, event.subscription, settings.provider)


def plan_reset(
    event: LifecycleEvent, observed: Iterable[AccountState], settings: Settings
) -> Decision:
    """The dispatcher's reset plan (`pipeline.reset_plan.plan_reset`)."""
    return reset_plan.plan_reset(event, observed, settings.provider)


async def preview(client: IcareusClient, known: KnownState, settings: Settings) -> Preview:
    event = reset_event(known, now_ms=int(time.time() * 1000), event_id=str(uuid.uuid4()))
    observed = await observe(client, event, settings)
    return Preview(known, observed, plan_reset(event, observed.values(), settings))


def _request_view(r: ProvisioningRequest) -> dict[str, Any]:
    # ADD_USER's profile is personal data: the account key says which user it would be.
    params = {"external_id": r.account_key} if r.type is RequestType.ADD_USER else r.params()
    return {
        "type": r.type.value,
        "distributor": r.distributor,
        "account_key": r.account_key,
        "params": params,
    }


def _holding(a: AccountState | None) -> dict[str, Any] | None:
    if a is None or not a.registered:
        return None
    return {
        "user_id": a.user_id,
        "products": list(sorted_products(a.products)),
        "devices": [{"device_id": d, "device_type": t} for d, t in sorted(a.devices.items())],
    }


def render_preview(p: Preview) -> dict[str, Any]:
    rec = p.known.record
    should = p.decision.state.accounts
    # The bridge's viewing-point order, then any account only Icareus or the plan has.
    distributors = list(dict.fromkeys([*rec.accounts, *should, *p.observed]))
    accounts = []
    for d in distributors:
        held = p.observed.get(d)
        wanted = should.get(d)
        either = held if held is not None else wanted
        key = either.account_key if either is not None else ""
        accounts.append(
            {
                "distributor": d,
                "account_key": key,
                "icareus_holds": _holding(held),
                "should_hold": _holding(wanted),
            }
        )
    return {
        "subscription_id": rec.subscription_id,
        "subscription_number": rec.subscription_number,
        "version": rec.snapshot.version if rec.snapshot is not None else rec.last_version,
        "parked_behind": p.known.parked.parked_behind if p.known.parked is not None else None,
        "in_line": not p.decision.requests and not p.decision.rejections,
        "accounts": accounts,
        "requests": [_request_view(r) for r in p.decision.requests],
        "rejections": [
            {
                "type": j.type.value,
                "code": j.code.value,
                "distributor": j.distributor,
                "detail": j.detail,
            }
            for j in p.decision.rejections
        ],
    }


def _held_text(h: dict[str, Any] | None) -> tuple[str, str]:
    if h is None:
        return "no user", "-"
    products = ",".join(h["products"]) or "-"
    devices = ",".join(f"{d['device_id']}({d['device_type']})" for d in h["devices"]) or "-"
    return f"user {h['user_id'] or '?'}: products {products}", f"devices {devices}"


def print_preview(view: dict[str, Any], out: TextIO) -> None:
    head = f"subscription {view['subscription_id']} (number {view['subscription_number']}, "
    head += f"version {view['version']})"
    if view["parked_behind"]:
        head += f": PARKED behind {view['parked_behind']} (a reset is refused until replayed)"
    print(head, file=out)
    for a in view["accounts"]:
        held_p, held_d = _held_text(a["icareus_holds"])
        want_p, want_d = _held_text(a["should_hold"])
        print(f"  account {a['account_key']} ({a['distributor']})", file=out)
        print(f"    icareus holds : {held_p}; {held_d}", file=out)
        print(f"    should hold   : {want_p}; {want_d}", file=out)
    if view["in_line"]:
        print("  in line with CRM: a reset would send nothing", file=out)
        return
    print("  a reset would send:", file=out)
    for i, r in enumerate(view["requests"], 1):
        params = " ".join(f"{k}={_param_text(v)}" for k, v in r["params"].items())
        print(f"    {i}. {r['type']} {r['account_key']} {params}", file=out)
    for j in view["rejections"]:
        print(f"    rejected: {j['type']} {j['distributor']} {j['code']}: {j['detail']}", file=out)


def _param_text(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(str(x) for x in v) or "-"
    return "-" if v is None else str(v)


# --- progress and rate -----------------------------------------------------------------------


class Progress:
    """A rich bar when stderr is a terminal, else a plain line per second (and at the end)."""

    def __init__(self, total: int, label: str, *, tty: bool | None = None) -> None:
        self.total = total
        self.done = 0
        self.label = label
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._bar: Any = None
        self._task: Any = None
        self._next_line = 0.0
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bar.start()
            self._task = self._bar.add_task(label, total=total)

    def advance(self, note: str = "") -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"{self.label} {note}".strip())
            return
        now = time.monotonic()
        if now >= self._next_line or self.done == self.total:
            self._next_line = now + 1.0
            pct = 100.0 * self.done / self.total if self.total else 100.0
            line = f"{self.label}: {self.done}/{self.total} subscriptions ({pct:.0f}%) {note}"
            print(
                line.rstrip(),
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class RateLimit:
    """At most `rate` items per second (None: no limit)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next_at = time.monotonic()

    def delay(self) -> float:
        """Seconds to wait before the next item (its slot is taken)."""
        if not self.interval:
            return 0.0
        now = time.monotonic()
        at = max(self.next_at, now)
        self.next_at = at + self.interval
        return at - now

    def wait(self) -> None:
        delay = self.delay()
        if delay > 0:
            time.sleep(delay)


# --- publishing the reset events -------------------------------------------------------------


class ResetPublisher:
    """Publishes RESET_SUBSCRIPTION events to the input topic (idempotent producer)."""

    def __init__(self, settings: Settings, codec: Codec, input_partitions: int) -> None:
        self.topic = settings.topics.input
        self.codec = codec
        self.input_partitions = input_partitions
        self.bootstrap = settings.kafka.bootstrap_servers
        self.publisher = IdempotentPublisher(settings.kafka)
        self.failed: list[str] = []

    def publish(self, known: KnownState) -> LifecycleEvent:
        event = reset_event(known, now_ms=int(time.time() * 1000), event_id=str(uuid.uuid4()))
        sid = event.subscription.id
        # Into the partition where its CRM events and state live, when the topic has it.
        partition = known.partition if known.partition < self.input_partitions else None
        record = OutgoingRecord(
            self.topic,
            key=sid.encode("utf-8"),
            value=self.codec.encode_event(event),
            partition=partition,
        )
        self.publisher.publish(record, lambda err: self.failed.append(f"{sid}: {err}"))
        return event

    def flush(self, timeout: float = 30.0) -> None:
        left = self.publisher.flush(timeout)
        if left:
            raise KafkaUnreachable.at(self.bootstrap, f"{left} reset events not delivered")
        if self.failed:
            raise KafkaUnreachable.at(self.bootstrap, "; ".join(self.failed[:5]))


# --- the command -----------------------------------------------------------------------------


def _targets(lookup: StateLookup, args: argparse.Namespace) -> tuple[int, Iterable[KnownState]]:
    if args.subscription is not None:
        return 1, [lookup.find(args.subscription)]
    states = lookup.all_states()
    return len(states), states


async def _dry_run(
    settings: Settings, total: int, targets: Iterable[KnownState], args: argparse.Namespace
) -> int:
    progress = Progress(total, "reset --dry-run") if args.all else None
    limit = RateLimit(args.rate)
    differ = in_line = 0
    async with IcareusClient(settings.icareus) as client:
        for known in targets:
            if known.record.snapshot is None:
                if progress is None:
                    print(
                        f"{PROG}: --subscription {known.record.subscription_id}: the bridge "
                        "holds no CRM snapshot of it (no event was applied yet)",
                        file=sys.stderr,
                    )
                    return EXIT_REFUSED
                progress.advance()
                continue
            await asyncio.sleep(limit.delay())
            view = render_preview(await preview(client, known, settings))
            if view["in_line"]:
                in_line += 1
            else:
                differ += 1
            if args.json:
                print(json.dumps(view), flush=True)
            elif not (args.all and view["in_line"]):
                print_preview(view, sys.stdout)
            if progress is not None:
                progress.advance(f"({differ} differ)")
    if progress is not None:
        progress.close()
    if args.all and not args.json:
        print(f"dry run: {in_line} in line, {differ} would change; nothing sent")
    return EXIT_OK


def _real(
    settings: Settings,
    lookup: StateLookup,
    total: int,
    targets: Iterable[KnownState],
    args: argparse.Namespace,
) -> int:
    n_input = lookup.partitions(settings.topics.input)
    if n_input is None:
        print(
            f"{PROG}: topic {settings.topics.input} (topics.input) does not exist",
            file=sys.stderr,
        )
        return EXIT_USAGE
    publisher = ResetPublisher(settings, lookup.codec, n_input)
    progress = Progress(total, "reset") if args.all else None
    limit = RateLimit(args.rate)
    published = 0
    refused: list[str] = []
    for known in targets:
        sid = known.record.subscription_id
        why = refusal(known)
        if why is not None:
            refused.append(f"{sid}: {why}")
            if args.subscription is not None:
                print(f"{PROG}: --subscription {sid}: refused: {why}", file=sys.stderr)
        else:
            limit.wait()
            event = publisher.publish(known)
            published += 1
            if args.subscription is not None:
                publisher.flush()
                print(
                    f"reset {sid}: RESET_SUBSCRIPTION event {event.event_id} (version "
                    f"{event.subscription.version}) published to {settings.topics.input} "
                    f"partition {known.partition}; the bridge reads Icareus and sends the "
                    f"difference, results go to {settings.topics.results}"
                )
        if progress is not None:
            progress.advance(f"({len(refused)} refused)")
    publisher.flush()
    if progress is not None:
        progress.close()
    if args.all:
        print(f"reset: {published} reset events published, {len(refused)} refused")
        for line in refused:
            print(f"  refused {line}")
    return EXIT_REFUSED if refused else EXIT_OK


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    quiet_librdkafka()
    try:
        with StateLookup(settings) as lookup:
            lookup.probe()
            total, targets = _targets(lookup, args)
            if args.dry_run:
                return asyncio.run(_dry_run(settings, total, targets, args))
            return _real(settings, lookup, total, targets, args)
    except UnknownSubscription as exc:
        print(f"{PROG}: --subscription {exc.subscription_id}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _Refused as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KafkaUnreachable as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except IcareusError as exc:
        print(
            f"{PROG}: Icareus unreachable at {settings.icareus.base_url} "
            f"(icareus.base_url): {exc.message}",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE


__all__ = [
    "Preview",
    "Progress",
    "RateLimit",
    "ResetPublisher",
    "main",
    "observe",
    "plan_reset",
    "preview",
    "refusal",
    "render_preview",
    "reset_event",
]
