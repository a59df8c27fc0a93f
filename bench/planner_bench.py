"""Benchmark of the planner on a real Kafka broker on this machine, one process:

1. throughput: events/s from the input topic to committed requests, results and state (the
   whole transactional loop: consume, decode, plan, encode, produce, commit); the input is
   produced beforehand so only the planner is timed;
2. state restore: a compacted state topic holding 1,000,000 subscriptions is restored into
   the planner's `StateStore` in a fresh process; reports the restore time and the process RSS.

Prints medians of several runs and records them in docs/BENCHMARKS.md (its own rows only).
Uses the broker at $KAFKA_BOOTSTRAP_SERVERS, else starts a temporary local one.

    python bench/planner_bench.py [--events N] [--runs R] [--states N] [--restore-runs R]
                                  [--skip-throughput] [--skip-restore] [--no-record]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import machine_info  # bench/machine_info.py, beside this script
from icareus_bridge.codec import STATE, Codec, state_to_avro
from icareus_bridge.config import Settings
from icareus_bridge.core.feedback import apply_result
from icareus_bridge.core.model import (
    AccountState,
    Action,
    InstalledItem,
    LifecycleEvent,
    Service,
    ServiceState,
    Subscriber,
    Subscription,
    SubscriptionRecord,
    SubscriptionState,
    plain,
)
from icareus_bridge.core.plan import plan
from icareus_bridge.kafka.admin import ensure_topics
from icareus_bridge.observability.http import Readiness
from icareus_bridge.observability.metrics import Metrics
from icareus_bridge.pipeline.planner import Planner, PlannerLogic
from icareus_bridge.pipeline.state_store import StateStore
from icareus_bridge.service import tune_gc

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "docs" / "BENCHMARKS.md"
PARTITIONS = 6
THROUGHPUT_NAME = "planner on Kafka (events → committed requests/state)"
RESTORE_NAME = "planner state restore, 1,000,000 subscriptions"
TARGET_EVENTS = 5_000.0
TARGET_RSS_GIB = 1.0
TARGET_RESTORE_RATE = 150_000  # records/s
PROVIDER: dict[str, Any] = {
    "distributors": [
        {"code": f"ICAREUS-VP{i}", "name": f"room {i}", "allowed_products": []} for i in (1, 2)
    ],
    "service_mapping": {"BASIC-TV": "1001", "SPORTS": "1002", "MOVIES": "1003", "KIDS": "1004"},
    "physical_goods_mapping": {"STB-4K": "SET_TOP_BOX", "SMARTCARD": "SMART_CARD"},
}


# --- broker -----------------------------------------------------------------------------------


@contextlib.contextmanager
def broker() -> Iterator[str]:
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env
        return
    sys.path.insert(0, str(ROOT / "tools" / "kafka"))
    import local_kafka

    with local_kafka.temporary_broker() as b:
        yield b.bootstrap_servers


def create_topic(bootstrap: str, name: str, *, compacted: bool = False) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = {"cleanup.policy": "compact"} if compacted else {}
    admin.create_topics([NewTopic(name, PARTITIONS, 1, config=config)])[name].result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(name, timeout=5).topics.get(name)
        if md is not None and md.error is None and len(md.partitions) == PARTITIONS:
            return
        time.sleep(0.05)


def delete_topics(bootstrap: str, names: list[str]) -> None:
    with contextlib.suppress(Exception):
        AdminClient({"bootstrap.servers": bootstrap}).delete_topics(names)


def end_offsets(bootstrap: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-peek"})
    try:
        md = c.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            return -1
        return sum(
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions
        )
    finally:
        c.close()


# --- the stream -------------------------------------------------------------------------------


def story(n: int) -> list[LifecycleEvent]:
    """Six actions of one subscription, two viewing points, products and boxes changing."""
    sid = f"bench-{n:07d}"
    vp1, vp2 = "ICAREUS-VP1", "ICAREUS-VP2"
    subscriber = Subscriber(
        account_number=f"A{n}", first_name="Ann", last_name="Lee", email="ann@example.org"
    )

    def ev(
        v: int,
        action: str,
        prods: list[tuple[str, str]],
        items: list[tuple[str, str]],
        state: SubscriptionState = SubscriptionState.EFFECTIVE,
    ) -> LifecycleEvent:
        svc_state = (
            ServiceState.CANCELLED
            if state is SubscriptionState.CANCELLED
            else ServiceState.EFFECTIVE
        )
        return LifecycleEvent(
            event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{sid}/{v}")),
            occurred_at=1_790_000_000_000 + v,
            action=Action(code=action),
            subscription=Subscription(
                id=sid,
                number=f"N{n}",
                version=v,
                state=state,
                subscriber=subscriber,
                services=tuple(
                    Service(id=f"s-{p}", product_code=p, state=svc_state, distributor=d)
                    for p, d in prods
                ),
                installed_items=tuple(
                    InstalledItem(
                        id=f"i-{s}", serial_number=s, physical_good_code="STB-4K", distributor=d
                    )
                    for s, d in items
                ),
            ),
        )

    box1, box2 = f"SN{n}A", f"SN{n}B"
    base = [("BASIC-TV", vp1)]
    return [
        ev(1, "BECOME_SUBSCRIBER", base, [(box1, vp1)]),
        ev(2, "ADD_SERVICE", [*base, ("SPORTS", vp1)], [(box1, vp1)]),
        ev(
            3,
            "ADD_INSTALLED_ITEM",
            [*base, ("SPORTS", vp1), ("KIDS", vp2)],
            [(box1, vp1), (box2, vp2)],
        ),
        ev(
            4,
            "SWAP_INSTALLED_ITEM",
            [*base, ("SPORTS", vp1), ("KIDS", vp2)],
            [(box1 + "X", vp1), (box2, vp2)],
        ),
        ev(5, "STOP_SERVICE", [*base, ("KIDS", vp2)], [(box1 + "X", vp1), (box2, vp2)]),
        ev(
            6,
            "TERMINATE_SUBSCRIPTION",
            [*base, ("KIDS", vp2)],
            [(box1 + "X", vp1), (box2, vp2)],
            SubscriptionState.CANCELLED,
        ),
    ]


def produce_stream(bootstrap: str, topic: str, events: int, codec: Codec) -> int:
    subs = max(1, events // 6)
    # Interleaved as on a partition: version by version across all subscriptions.
    stories = [story(n) for n in range(subs)]
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "batch.num.messages": 10000,
        }
    )
    n = 0
    for v in range(6):
        for s in stories:
            e = s[v]
            while True:
                try:
                    p.produce(topic, key=e.subscription.id.encode(), value=codec.encode_event(e))
                    break
                except BufferError:
                    p.poll(0.05)
            n += 1
    assert p.flush(120) == 0
    return n


# --- throughput -------------------------------------------------------------------------------


def settings_for(bootstrap: str, run: str) -> Settings:
    return Settings(
        kafka={"bootstrap_servers": bootstrap, "partitions": PARTITIONS},
        topics={
            "input": f"bench-{run}-lifecycle",
            "requests": f"bench-{run}-requests",
            "results": f"bench-{run}-results",
            "dlq": f"bench-{run}-dlq",
            "state": f"bench-{run}-state",
        },
        icareus={"key": "bench"},
        provider=PROVIDER,
        planner={"group_id": f"bench-{run}", "instance_id": f"bench-{run}"},
        logging={"level": "WARNING"},
    )


def throughput_once(bootstrap: str, events: int) -> tuple[float, int, int, float]:
    run = uuid.uuid4().hex[:8]
    settings = settings_for(bootstrap, run)
    ensure_topics(settings.kafka, settings.topics)
    codec = Codec()
    n = produce_stream(bootstrap, settings.topics.input, events, codec)
    metrics, readiness = Metrics(), Readiness()
    planner = Planner(
        settings, PlannerLogic(settings, codec, plan, apply_result), metrics, readiness
    )
    try:
        planner.start()
        while not readiness.ready:
            planner.step()
        started = None
        cpu_started = 0.0
        handled = 0
        while handled < n:
            got = planner.step()
            if got and started is None:
                started = time.perf_counter()
                cpu_started = cpu_seconds()
            handled += got
        planner._commit_open(reason="bench")  # the last batch counts too
        assert started is not None
        seconds = time.perf_counter() - started
        cpu = cpu_seconds() - cpu_started
    finally:
        planner.close()
    requests = sum(
        s.value
        for m in metrics.requests_planned.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )
    delete_topics(bootstrap, list(settings.topics.model_dump().values()))
    return n / seconds, n, int(requests), n / cpu


def cpu_seconds() -> float:
    """CPU time of this process, all threads (librdkafka's included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- restore ----------------------------------------------------------------------------------


def state_template(n: int) -> SubscriptionRecord:
    ev = story(n)[2]
    return SubscriptionRecord(
        subscription_id=ev.subscription.id,
        subscription_number=ev.subscription.number,
        last_version=3,
        last_event_id=ev.event_id,
        snapshot=ev.subscription,
        accounts={
            "ICAREUS-VP1": AccountState(
                distributor="ICAREUS-VP1",
                account_key=f"{ev.subscription.number}-ICAREUS-VP1",
                registered=True,
                user_id=f"{100000 + n}",
                products=frozenset({"1001", "1002"}),
                devices={f"SN{n}A": "SET_TOP_BOX"},
            ),
            "ICAREUS-VP2": AccountState(
                distributor="ICAREUS-VP2",
                account_key=f"{ev.subscription.number}-ICAREUS-VP2",
                registered=True,
                user_id=f"{200000 + n}",
                products=frozenset({"1004"}),
                devices={f"SN{n}B": "SET_TOP_BOX"},
            ),
        },
    )


def ensure_state_topic(bootstrap: str, states: int) -> tuple[str, int]:
    """A compacted topic with `states` subscriptions (reused when it already holds them)."""
    topic = f"bench-planner-state-{states}"
    have = end_offsets(bootstrap, topic)
    if have >= states:
        return topic, -1
    if have >= 0:
        delete_topics(bootstrap, [topic])
        time.sleep(2)
    create_topic(bootstrap, topic, compacted=True)
    codec = Codec()
    template = plain(state_to_avro(state_template(0)))  # the snapshot as a dict too
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": 50,
            "batch.num.messages": 10000,
            "compression.type": "lz4",
        }
    )
    sizes = 0
    for n in range(states):
        obj = dict(template)
        sid = f"bench-{n:07d}"
        obj["subscription_id"] = sid
        obj["snapshot"] = dict(template["snapshot"], id=sid, number=f"N{n}")
        obj["accounts"] = [
            dict(a, user_id=f"{i}{n:07d}", account_key=f"N{n}-{a['distributor']}")
            for i, a in enumerate(template["accounts"])
        ]
        value = codec.encode(STATE, obj)
        sizes += len(value)
        while True:
            try:
                p.produce(topic, key=sid.encode(), value=value)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(300) == 0
    return topic, sizes // states


def results_value_size(bootstrap: str, topic: str) -> int:
    """Size of one state value of an existing benchmark topic (for the notes)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-peek"})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        msg = c.poll(10)
        return len(msg.value() or b"") if msg is not None and msg.error() is None else 0
    finally:
        c.close()


def rss_kib() -> tuple[int, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        fields[k] = v.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def restore_child(bootstrap: str, topic: str) -> None:
    """Runs in a fresh process: restore every partition, report time and memory as JSON."""
    settings = settings_for(bootstrap, "restore")
    codec = Codec()

    def decode(raw: bytes) -> SubscriptionRecord:
        record = codec.decode_state(raw)
        assert record is not None
        return record

    before, _ = rss_kib()
    store = StateStore(decode)
    started = time.perf_counter()
    reports = store.restore(settings.kafka, topic, range(PARTITIONS))
    seconds = time.perf_counter() - started
    after, peak = rss_kib()
    # One lookup proves the values decode.
    assert store.get(reports[0].partition, next(iter(store._partitions[0]))) is not None
    print(
        json.dumps(
            {
                "seconds": seconds,
                "subscriptions": len(store),
                "rss_before_kib": before,
                "rss_after_kib": after,
                "rss_peak_kib": peak,
            }
        )
    )


def restore_once(bootstrap: str, topic: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--restore-child", topic],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --- reporting --------------------------------------------------------------------------------


def machine() -> str:
    return machine_info.describe("broker on same host")


def record(name: str, command: str, median: str, target: str, notes: str) -> None:
    """Put this benchmark's row into the table of docs/BENCHMARKS.md (replacing its earlier
    row wherever it is); other rows and text stay as they are."""
    header = (
        "# Benchmarks\n\nMeasured figures, one row per benchmark, rewritten by the benchmark "
        "script itself.\n\n"
        "| benchmark | command | machine | median | target | ratio/notes |\n"
        "|---|---|---|---|---|---|\n"
    )
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else header
    row = f"| {name} | `{command}` | {machine()} | {median} | {target} | {notes} |"
    lines = [ln for ln in text.splitlines() if not ln.startswith(f"| {name} |")]
    # After the last row of the first table (the rows right below its header line).
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|---"))
    end = start + 1
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines.insert(end, row)
    BENCHMARKS_MD.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--states", type=int, default=1_000_000)
    parser.add_argument("--restore-runs", type=int, default=3)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-restore", action="store_true")
    parser.add_argument("--no-record", action="store_true", help="leave docs/BENCHMARKS.md alone")
    parser.add_argument("--restore-child", metavar="TOPIC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.restore_child:
        restore_child(os.environ["KAFKA_BOOTSTRAP_SERVERS"], args.restore_child)
        return 0

    with broker() as bootstrap:
        tune_gc()  # as `icareus-bridge run` does
        if not args.skip_throughput:
            throughput_once(bootstrap, min(args.events, 6_000))  # warm-up (broker, caches)
            runs, cpu_runs = [], []
            for _ in range(args.runs):
                rate, n, requests, per_cpu = throughput_once(bootstrap, args.events)
                runs.append(rate)
                cpu_runs.append(per_cpu)
                print(
                    f"  run: {n} events, {requests} requests, {rate:,.0f} events/s, "
                    f"{per_cpu:,.0f} events per CPU-second",
                    file=sys.stderr,
                )
            median = statistics.median(runs)
            cpu_median = statistics.median(cpu_runs)
            load = os.getloadavg()[0]
            print(
                f"{THROUGHPUT_NAME}: median {median:,.0f} events/s over {args.runs} runs "
                f"(min {min(runs):,.0f}, max {max(runs):,.0f}); {cpu_median:,.0f} events per "
                f"CPU-second of the planner process; load average {load:.1f}; "
                f"target ≥ {TARGET_EVENTS:,.0f}"
            )
            if not args.no_record:
                record(
                    THROUGHPUT_NAME,
                    f"python bench/planner_bench.py --events {args.events} --runs {args.runs}",
                    f"{median:,.0f} events/s",
                    f"≥ {TARGET_EVENTS:,.0f} events/s",
                    f"{median / TARGET_EVENTS:.2f}× target; {PARTITIONS} partitions, "
                    f"~{requests / n:.1f} requests/event, one transaction per ≤ 500 events; "
                    f"{cpu_median:,.0f} events per CPU-second (all threads); load average "
                    f"{load:.1f} while measured; runs: {', '.join(f'{r:,.0f}' for r in runs)}",
                )
        if not args.skip_restore:
            t0 = time.perf_counter()
            topic, value_size = ensure_state_topic(bootstrap, args.states)
            value_bytes = results_value_size(bootstrap, topic) if value_size < 0 else value_size
            if value_size >= 0:
                print(
                    f"  produced {args.states:,} state records ({value_size} bytes each) in "
                    f"{time.perf_counter() - t0:.0f} s",
                    file=sys.stderr,
                )
            results = []
            for _ in range(args.restore_runs):
                r = restore_once(bootstrap, topic)
                results.append(r)
                print(f"  run: {r}", file=sys.stderr)
            seconds = statistics.median(r["seconds"] for r in results)
            rss = statistics.median(r["rss_after_kib"] for r in results) / 1024 / 1024
            peak = statistics.median(r["rss_peak_kib"] for r in results) / 1024 / 1024
            subs = results[0]["subscriptions"]
            print(
                f"{RESTORE_NAME}: median restore {seconds:.1f} s, peak RSS {peak:.2f} GiB "
                f"(RSS after restore {rss:.2f} GiB), {subs:,} subscriptions; "
                f"{subs / seconds:,.0f} records/s; targets ≤ {TARGET_RSS_GIB} GiB, "
                f"≥ {TARGET_RESTORE_RATE:,} records/s"
            )
            if not args.no_record:
                record(
                    RESTORE_NAME,
                    f"python bench/planner_bench.py --skip-throughput --states {args.states} "
                    f"--restore-runs {args.restore_runs}",
                    f"peak RSS {peak:.2f} GiB, restore {seconds:.1f} s",
                    f"RSS ≤ {TARGET_RSS_GIB} GiB, ≥ {TARGET_RESTORE_RATE:,} records/s",
                    f"{peak / TARGET_RSS_GIB:.2f}× the RSS budget (peak, VmHWM), "
                    f"{subs / seconds / TARGET_RESTORE_RATE:.2f}× the rate target; RSS after "
                    f"restore {rss:.2f} GiB; {subs:,} subscriptions of {value_bytes} bytes in "
                    f"{PARTITIONS} partitions, {subs / seconds:,.0f} records/s; runs: "
                    + ", ".join(
                        f"{r['seconds']:.1f} s/{r['rss_peak_kib'] / 1048576:.2f} GiB"
                        for r in results
                    ),
                )
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
