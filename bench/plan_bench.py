"""Benchmark of the planner's hot path on one core: Avro bytes -> decode -> validate -> plan.

Generates a realistic stream (subscriptions with 1-4 viewing points and 1-20 services, each
starting with BECOME_SUBSCRIBER and followed by service, installed-item and subscription
actions, interleaved as on a partition), encodes it once with the codec, then times
decode_event + plan with the state kept per subscription, as the planner does. Prints the
median events/s of several runs and records it in docs/BENCHMARKS.md.

    python bench/plan_bench.py [--events N] [--runs R] [--no-record]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

import machine_info  # bench/machine_info.py, beside this script
from icareus_bridge.codec import Codec
from icareus_bridge.config import ProviderSettings, load_settings
from icareus_bridge.core.model import (
    Action,
    InstalledItem,
    LifecycleEvent,
    Service,
    ServiceState,
    Subscriber,
    Subscription,
    SubscriptionRecord,
    SubscriptionState,
)
from icareus_bridge.core.plan import plan

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "docs" / "BENCHMARKS.md"
NAME = "plan: decode+validate+plan"
# The planner's recommended collector setting (docs/CORE.md): restored state frozen out of the
# collector's scans, and young-generation collections every 50k allocations instead of 700.
TUNED_GC_THRESHOLD = (50_000, 20, 100)
TARGET = 30_000.0
E = ServiceState.EFFECTIVE


def _subscriber(rng: random.Random, n: int) -> Subscriber:
    return Subscriber(
        account_number=f"AC{n:07d}",
        first_name=rng.choice(["Maria", "Andreas", "Eleni", "Nikos", "Sofia"]),
        last_name=rng.choice(["Georgiou", "Christou", "Ioannou", "Constantinou"]),
        email=f"customer{n}@example.org",
        phone=f"+3579{n:07d}",
        country_code="CY",
        postal_code=str(1000 + n % 9000),
        city=rng.choice(["Nicosia", "Limassol", "Larnaca", "Paphos"]),
    )


def generate(events: int, provider: ProviderSettings, seed: int = 7) -> list[LifecycleEvent]:
    """A stream of `events` CRM events over events/10 subscriptions, round-robin interleaved."""
    rng = random.Random(seed)
    vps = [d.code for d in provider.distributors][:4]
    products = list(provider.service_mapping)
    stories: list[list[LifecycleEvent]] = []
    n_subs = max(1, events // 10)
    for n in range(n_subs):
        sid = str(uuid.UUID(int=rng.getrandbits(128)))
        number = f"SUB-{n:07d}"
        rooms = vps[: rng.randint(1, 4)]
        services = [
            Service(
                id=f"{number}-sv{k}",
                product_code=rng.choice(products),
                state=E,
                distributor=rng.choice(rooms),
            )
            for k in range(rng.randint(1, 20))
        ]
        items = []
        for r, d in enumerate(rooms):
            items.append(
                InstalledItem(
                    id=f"{number}-box{r}",
                    serial_number=f"SN{n:07d}{r}",
                    physical_good_code="STB-4K",
                    distributor=d,
                )
            )
            items.append(
                InstalledItem(
                    id=f"{number}-card{r}",
                    serial_number=f"SC{n:07d}{r}",
                    physical_good_code="SMARTCARD",
                    distributor=d,
                )
            )
        sub = Subscription(
            id=sid,
            number=number,
            version=1,
            state=SubscriptionState.EFFECTIVE,
            subscriber=_subscriber(rng, n),
            services=tuple(services),
            installed_items=tuple(items),
        )
        story = [_event(rng, "BECOME_SUBSCRIBER", sub)]
        for version in range(2, 11):
            code, sub = _next(rng, sub, version, rooms, products)
            story.append(_event(rng, code, sub))
        stories.append(story)
    stream = [ev for step in zip(*stories, strict=True) for ev in step]
    return stream[:events]


def _event(rng: random.Random, code: str, sub: Subscription) -> LifecycleEvent:
    return LifecycleEvent(
        event_id=str(uuid.UUID(int=rng.getrandbits(128))),
        occurred_at=1_764_000_000_000 + sub.version * 60_000,
        action=Action(code=code),
        subscription=sub,
    )


def _next(
    rng: random.Random, sub: Subscription, version: int, rooms: list[str], products: list[str]
) -> tuple[str, Subscription]:
    services = list(sub.services)
    items = list(sub.installed_items)
    state = sub.state
    roll = rng.random()
    if state is not SubscriptionState.EFFECTIVE:
        code, state = "ACTIVATE_SUBSCRIPTION", SubscriptionState.EFFECTIVE
        services = [s.model_copy(update={"state": E}) for s in services]
    elif roll < 0.3:
        code = "ADD_SERVICE"
        services.append(
            Service(
                id=f"{sub.number}-sv{version}x",
                product_code=rng.choice(products),
                state=E,
                distributor=rng.choice(rooms),
            )
        )
    elif roll < 0.5:
        code = "SWAP_SERVICE"
        k = rng.randrange(len(services))
        services[k] = services[k].model_copy(update={"state": ServiceState.SWAPPED})
        services.append(
            Service(
                id=f"{sub.number}-sv{version}s",
                product_code=rng.choice(products),
                state=E,
                distributor=services[k].distributor,
            )
        )
    elif roll < 0.65:
        code = "STOP_SERVICE"
        k = rng.randrange(len(services))
        services[k] = services[k].model_copy(update={"state": ServiceState.NOT_EFFECTIVE})
    elif roll < 0.8:
        code = "SWAP_INSTALLED_ITEM"
        k = rng.randrange(len(items))
        items[k] = items[k].model_copy(
            update={
                "id": f"{items[k].id}-{version}",
                "serial_number": f"{items[k].serial_number}-{version}",
            }
        )
    elif roll < 0.9:
        code = "START_SERVICE"
        services = [
            s.model_copy(update={"state": E}) if s.state is ServiceState.NOT_EFFECTIVE else s
            for s in services
        ]
    else:
        code, state = "DEACTIVATE_SUBSCRIPTION", SubscriptionState.NOT_EFFECTIVE
        services = [
            s.model_copy(update={"state": ServiceState.NOT_EFFECTIVE}) if s.state is E else s
            for s in services
        ]
    return code, sub.model_copy(
        update={
            "version": version,
            "state": state,
            "services": tuple(services),
            "installed_items": tuple(items),
        }
    )


def run_once(codec: Codec, encoded: list[bytes], provider: ProviderSettings) -> tuple[float, float]:
    """Events per second through decode + validate + plan, state kept per subscription:
    (per wall-clock second, per CPU second of this process). On a dedicated core the two agree;
    on a shared machine the CPU-time figure is the one that measures the code."""
    states: dict[str, SubscriptionRecord] = {}
    decode, get = codec.decode_event, states.get
    wall, cpu = time.perf_counter(), time.process_time()
    for data in encoded:
        event = decode(data)
        sid = event.subscription.id
        states[sid] = plan(get(sid), event, provider).state
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    return len(encoded) / wall, len(encoded) / cpu


def split(codec: Codec, encoded: list[bytes], provider: ProviderSettings) -> tuple[float, float]:
    """CPU microseconds per event of decode_event alone (events dropped as decoded) and of
    plan alone (on events decoded beforehand, state kept per subscription as in run_once)."""
    decode = codec.decode_event
    cpu = time.process_time()
    for data in encoded:
        decode(data)
    decode_us = (time.process_time() - cpu) / len(encoded) * 1e6
    events = [decode(data) for data in encoded]
    states: dict[str, SubscriptionRecord] = {}
    get = states.get
    cpu = time.process_time()
    for event in events:
        sid = event.subscription.id
        states[sid] = plan(get(sid), event, provider).state
    plan_us = (time.process_time() - cpu) / len(encoded) * 1e6
    return decode_us, plan_us


def machine() -> str:
    return machine_info.describe("1 core pinned")


def record(
    name: str,
    command: str,
    cpu_runs: list[float],
    wall_runs: list[float],
    splits: list[tuple[float, float]],
) -> None:
    """Insert or replace this benchmark's row in docs/BENCHMARKS.md."""
    header = (
        "# Benchmarks\n\nMeasured figures, one row per benchmark, rewritten by the benchmark "
        "script itself.\n\n"
        "| benchmark | command | machine | median | target | ratio/notes |\n"
        "|---|---|---|---|---|---|\n"
    )
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else header
    median = statistics.median(cpu_runs)
    row = (
        f"| {name} | `{command}` | {machine()} | {median:,.0f} events/CPU-s | "
        f"≥ {TARGET:,.0f} events/s | {median / TARGET:.2f}× target; median of {len(cpu_runs)} "
        f"runs per CPU second (runs: {', '.join(f'{r:,.0f}' for r in cpu_runs)}); "
        f"per event {statistics.median(d for d, _ in splits):.0f} µs decode + "
        f"{statistics.median(p for _, p in splits):.0f} µs plan (medians, timed apart); "
        f"wall clock median {statistics.median(wall_runs):,.0f} events/s on the shared machine "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.1f}) |"
    )
    lines = text.splitlines()
    mine = [i for i, ln in enumerate(lines) if ln.startswith(f"| {name} |")]
    if mine:  # replaced where it stands
        lines[mine[0]] = row
        for i in reversed(mine[1:]):
            del lines[i]
    else:  # at the end of the first table; notes and anything below it stay where they are
        first = next((i for i, ln in enumerate(lines) if ln.startswith("|")), len(lines))
        end = first
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        lines.insert(end, row)
    BENCHMARKS_MD.parent.mkdir(parents=True, exist_ok=True)
    BENCHMARKS_MD.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-record", action="store_true", help="do not touch docs/BENCHMARKS.md")
    parser.add_argument(
        "--gc",
        choices=["default", "tuned", "both"],
        default="both",
        help="garbage collector: Python's defaults, the planner's tuned setting, or both",
    )
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    provider = load_settings().provider
    codec = Codec()
    stream = generate(args.events, provider)
    encoded = [codec.encode_event(ev) for ev in stream]
    del stream
    sizes = sorted(len(b) for b in encoded)
    print(
        f"{len(encoded)} events, {len(encoded) // 10} subscriptions, "
        f"median {sizes[len(sizes) // 2]} bytes/event",
        file=sys.stderr,
    )
    modes = ["default", "tuned"] if args.gc == "both" else [args.gc]
    default_threshold = gc.get_threshold()
    for mode in modes:
        if mode == "tuned":
            gc.collect()
            gc.freeze()
            gc.set_threshold(*TUNED_GC_THRESHOLD)
        else:
            gc.set_threshold(*default_threshold)
        run_once(codec, encoded[: len(encoded) // 10], provider)  # warm-up
        results = [run_once(codec, encoded, provider) for _ in range(args.runs)]
        splits = [split(codec, encoded, provider) for _ in range(args.runs)]
        wall_runs = [w for w, _ in results]
        cpu_runs = [c for _, c in results]
        name = NAME if mode == "default" else f"{NAME} (tuned gc)"
        print(
            f"{name}: median {statistics.median(cpu_runs):,.0f} events per CPU second "
            f"(min {min(cpu_runs):,.0f}, max {max(cpu_runs):,.0f}); wall clock median "
            f"{statistics.median(wall_runs):,.0f} events/s; {args.runs} runs; "
            f"decode {statistics.median(d for d, _ in splits):.1f} µs + plan "
            f"{statistics.median(p for _, p in splits):.1f} µs per event; "
            f"target {TARGET:,.0f}; load {os.getloadavg()[0]:.1f}"
        )
        if not args.no_record:
            command = f"python bench/plan_bench.py --events {args.events} --runs {args.runs}"
            record(name, command, cpu_runs, wall_runs, splits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
