"""End-to-end benchmark on this machine: Kafka broker, Icareus simulator (20 ms per call, its own
process), `icareus-bridge run` as a subprocess, and this script producing CRM events and reading
the results topic as CRM does (read_committed).

    python bench/e2e_bench.py [--runs 3] [--rate 300] [--rates 100,300,1000,max]
        [--step-seconds 10] [--curve-runs 1] [--events 6000] [--subscriptions 2000]
        [--naive-seconds 10] [--icareus-figures bench/out/icareus_bench.txt] [--no-record]

Per run (fresh topics and consumer groups, a new bridge process):
1. onboarding: `--subscriptions` BECOME_SUBSCRIBER events, one viewing point with BASIC-TV
   (ADD_USER + ACTIVATE_PRODUCTS); waited for, reported, not the headline;
2. sustained throughput: `--events` service changes (ADD_SERVICE / REMOVE_SERVICE of SPORTS,
   one Icareus call each, round-robin over the subscriptions) produced as fast as possible;
   events/s = events / (last result record's timestamp - first event produced);
3. latency at offered loads: the same kind of events offered at a fixed rate for
   `--step-seconds` each; timed from the moment this script produces an event to the moment
   its read_committed consumer of the results topic receives the result (what CRM sees), split
   by stage (bench/e2e_stages.py). The first `--curve-runs` runs offer every rate of `--rates`
   (`max` = the run's sustained throughput), the others `--rate` only.
Then the naive baseline (bench/naive_baseline.py: one request at a time) replaces the dispatcher
behind a planner-only bridge and runs the same service changes for `--naive-seconds` (0 skips).
The Icareus HTTP ceiling comes from bench/icareus_bench.py's printed figures when given.
Headline figures are medians over the runs; docs/BENCHMARKS.md rows starting `e2e:`, its e2e
notes, docs/bench/e2e_curve.{csv,json} and docs/bench/e2e_curve.svg are rewritten. The default
run takes about 3 minutes. Every process started (broker, simulator, bridges, naive dispatcher)
is stopped by its pid on the way out, also on failure.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Producer

import machine_info  # bench/machine_info.py, beside this script
import svg_chart
from e2e_stages import STAGES, StepFigures, Tracker, call_arrivals, stages

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "kafka"))

import local_kafka  # noqa: E402  (tools/kafka, put on sys.path just above)

from icareus_bridge.codec import Codec  # noqa: E402
from icareus_bridge.config import load_settings  # noqa: E402
from icareus_bridge.core.model import (  # noqa: E402
    Action,
    LifecycleEvent,
    Service,
    ServiceState,
    Subscriber,
    Subscription,
    SubscriptionState,
)
from icareus_bridge.icareus.simulator import SimulatorHandle, start_simulator_process  # noqa: E402

CONFIG = ROOT / "config" / "bridge.yaml"
OUT_DIR = ROOT / "bench" / "out"
BENCHMARKS_MD = ROOT / "docs" / "BENCHMARKS.md"
CURVE_DIR = ROOT / "docs" / "bench"
LATENCY_MS = 20.0
TARGET_EPS = 1_740.0  # sustained end to end today: not lower (issue 14)
TARGET_PER_CPU = 3_000.0  # events per bridge CPU-second
TARGET_RATIO = 30.0
TARGET_P50_MS = 100.0
TARGET_P99_MS = 250.0
ROW_PREFIX = "| e2e:"
NAIVE_ROW = "| e2e: naive baseline"
CEILING_ROW = "| e2e: Icareus HTTP ceiling"
DISTRIBUTOR = "ICAREUS-VP1"
CALL_LOG = 10_000  # the simulator keeps its last 10,000 calls


# --- the workload ------------------------------------------------------------------------------


@dataclass
class BenchSub:
    id: str
    number: str
    version: int = 0
    sports: bool = False
    counter: int = 0

    def snapshot(self) -> Subscription:
        self.version += 1
        services = [
            Service(
                id=f"{self.id}-basic",
                product_code="BASIC-TV",
                state=ServiceState.EFFECTIVE,
                distributor=DISTRIBUTOR,
            )
        ]
        if self.sports or self.counter:
            services.append(
                Service(
                    id=f"{self.id}-sports{self.counter}",
                    product_code="SPORTS",
                    state=ServiceState.EFFECTIVE if self.sports else ServiceState.REMOVED,
                    distributor=DISTRIBUTOR,
                )
            )
        return Subscription(
            id=self.id,
            number=self.number,
            version=self.version,
            state=SubscriptionState.EFFECTIVE,
            subscriber=Subscriber(
                account_number=f"AC-{self.number}", first_name="Maria", last_name="Georgiou"
            ),
            services=tuple(services),
        )

    def change(self) -> tuple[str, Subscription]:
        """ADD_SERVICE or REMOVE_SERVICE of SPORTS: exactly one Icareus call."""
        if self.sports:
            self.sports = False
            return "REMOVE_SERVICE", self.snapshot()
        self.sports = True
        self.counter += 1
        return "ADD_SERVICE", self.snapshot()


def event(code: str, sub: Subscription, at: int) -> LifecycleEvent:
    return LifecycleEvent(
        event_id=str(uuid.uuid4()), occurred_at=at, action=Action(code=code), subscription=sub
    )


# --- the pieces --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_wait_seconds(pid: int) -> float:
    """Seconds the threads of one process spent runnable but waiting for a CPU (schedstat)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


class Bridge:
    """`icareus-bridge run` as a subprocess on its own topics and groups."""

    def __init__(self, name: str, bootstrap: str, sim: SimulatorHandle, role: str = "all") -> None:
        self.name = name
        self.topics = {
            k: f"bench.{name}.{k}" for k in ("input", "requests", "results", "dlq", "state")
        }
        self.port = local_kafka.free_port()
        env = dict(os.environ)
        env.update(
            {
                "ICAREUS_BRIDGE__KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                "ICAREUS_BRIDGE__ICAREUS__BASE_URL": sim.base_url,
                "ICAREUS_BRIDGE__HTTP__PORT": str(self.port),
                "ICAREUS_BRIDGE__LOGGING__LEVEL": "WARNING",
                "ICAREUS_BRIDGE__PLANNER__GROUP_ID": f"bench-{name}-planner",
                "ICAREUS_BRIDGE__PLANNER__INSTANCE_ID": f"bench-{name}",
                "ICAREUS_BRIDGE__DISPATCHER__GROUP_ID": f"bench-{name}-dispatcher",
                "ICAREUS_BRIDGE__DISPATCHER__INSTANCE_ID": f"bench-{name}",
            }
        )
        for k, v in self.topics.items():
            env[f"ICAREUS_BRIDGE__TOPICS__{k.upper()}"] = v
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = OUT_DIR / f"e2e-bridge-{name}-{role}.log"
        self.log = self.log_path.open("a")  # a second start keeps the first one's log
        cmd = [sys.executable, "-m", "icareus_bridge.cli", "run", "--config", str(CONFIG)]
        self.process = subprocess.Popen(
            [*cmd, "--role", role],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def wait_ready(self, timeout: float = 120.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"bridge exited ({self.process.returncode}); see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2):
                    return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise RuntimeError(f"bridge not ready after {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def scrape(port: int) -> dict[str, float]:
    """Sums of the bridge's Prometheus samples by metric name and label set."""
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError):
        return out
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def diagnose(before: dict[str, float], after: dict[str, float]) -> tuple[str, float]:
    """Mean Icareus call time and mean transaction commit time per role over an interval."""

    def delta(prefix: str, suffix: str) -> float:
        return sum(
            v - before.get(k, 0.0)
            for k, v in after.items()
            if k.startswith(prefix) and k.split("{")[0].endswith(suffix)
        )

    parts = []
    mean = float("nan")
    calls = delta("icareus_bridge_icareus_call_seconds", "_count")
    if calls:
        mean = delta("icareus_bridge_icareus_call_seconds", "_sum") / calls * 1000
        parts.append(f"{calls:,.0f} Icareus calls, mean {mean:.0f} ms")
    for role in ("planner", "dispatcher"):
        keys = {
            k: v
            for k, v in after.items()
            if k.startswith("icareus_bridge_transaction_commit_seconds") and role in k
        }
        n = sum(v - before.get(k, 0.0) for k, v in keys.items() if "_count" in k.split("{")[0])
        total = sum(v - before.get(k, 0.0) for k, v in keys.items() if "_sum" in k.split("{")[0])
        if n:
            parts.append(f"{role} {n:,.0f} transactions, mean commit {total / n * 1000:.0f} ms")
    return "; ".join(parts), mean


def start_bridge(name: str, bootstrap: str, sim: SimulatorHandle, role: str = "all") -> Bridge:
    """A ready bridge. A first start on fresh topics can fail while partition leaders are still
    being elected (the planner's state restore is not retried then); the second start finds
    the topics settled."""
    for attempt in (1, 2):
        bridge = Bridge(name, bootstrap, sim, role)
        try:
            seconds = bridge.wait_ready()
            print(f"    bridge ({role}) ready in {seconds:.1f} s", flush=True)
            return bridge
        except RuntimeError as exc:
            bridge.stop()
            if attempt == 2:
                raise
            print(f"    {exc}; starting it again", flush=True)
    raise AssertionError("unreachable")


def producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 2,
            "queue.buffering.max.messages": 500_000,
        }
    )


def produce(p: Producer, topic: str, key: str, value: bytes) -> None:
    while True:
        try:
            p.produce(topic, key=key.encode(), value=value)
            return
        except BufferError:
            p.poll(0.05)


def wait_for(
    results: Tracker, event_ids: Sequence[str], per_event: int, timeout: float, label: str
) -> None:
    deadline = time.monotonic() + timeout
    last = 0.0
    while time.monotonic() < deadline:
        done = results.done_for(event_ids, per_event)
        if done == len(event_ids):
            return
        if time.monotonic() - last > 5:
            print(f"    {label}: {done}/{len(event_ids)} events finished", flush=True)
            last = time.monotonic()
        time.sleep(0.2)
    raise RuntimeError(f"{label}: not every event had its results after {timeout:.0f} s")


def per_second(timestamps_ms: Sequence[int], origin_ms: int) -> list[int]:
    counts = Counter((t - origin_ms) // 1000 for t in timestamps_ms)
    if not counts:
        return []
    return [counts.get(s, 0) for s in range(max(counts) + 1)]


def onboard(
    bootstrap: str, topic: str, codec: Codec, results: Tracker, subs: list[BenchSub]
) -> float:
    p = producer(bootstrap)
    ids = []
    started = time.time()
    for s in subs:
        ev = event("BECOME_SUBSCRIBER", s.snapshot(), int(time.time() * 1000))
        ids.append(ev.event_id)
        produce(p, topic, s.id, codec.encode_event(ev))
    p.flush(30)
    wait_for(results, ids, 2, 120, "onboarding")
    return len(subs) / (time.time() - started)


# --- one run of the bridge ---------------------------------------------------------------------


@dataclass
class RunFigures:
    onboarding_eps: float
    throughput_eps: float
    throughput_series: list[int]
    steps: list[StepFigures] = field(default_factory=list)
    events_per_cpu_second: float = 0.0  # of the bridge process, sustained phase
    load: float = 0.0  # 1-minute load average at the end of the sustained phase
    call_ms: float = 0.0  # mean Icareus call time seen by the bridge, sustained phase
    cpu_wait: float = 0.0  # bridge threads' seconds per second runnable but not running

    def at_rate(self, rate: float) -> StepFigures | None:
        return next((s for s in self.steps if s.target_rate == rate), None)


def parse_rates(text: str) -> list[float | None]:
    """`100,300,1000,max` -> [100.0, 300.0, 1000.0, None] (None: the sustained maximum)."""
    out: list[float | None] = []
    for part in text.split(","):
        part = part.strip()
        if part == "max":
            out.append(None)
            continue
        try:
            rate = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--rates: not a rate: {part!r}") from None
        if rate <= 0:
            raise argparse.ArgumentTypeError(f"--rates: must be positive: {part!r}")
        out.append(rate)
    return out


def offer(
    bootstrap: str, topic: str, codec: Codec, subs: list[BenchSub], rate: float, seconds: float
) -> tuple[dict[str, float], float]:
    """Service changes at `rate` events/s for `seconds`: event id -> produce time (epoch ms,
    taken just before `produce`), and the seconds it took."""
    total = max(1, int(rate * seconds))
    sent: dict[str, float] = {}
    p = producer(bootstrap)
    started = time.perf_counter()
    for i in range(total):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        code, snap = subs[i % len(subs)].change()
        now = time.time() * 1000
        ev = event(code, snap, int(now))
        value = codec.encode_event(ev)
        sent[ev.event_id] = time.time() * 1000
        produce(p, topic, snap.id, value)
        p.poll(0)
    p.flush(30)
    return sent, time.perf_counter() - started


def latency_step(
    rate: float,
    ctx: RunContext,
    args: argparse.Namespace,
) -> StepFigures:
    metrics_before = ctx.metrics()
    sent, took = offer(ctx.bootstrap, ctx.topic, ctx.codec, ctx.subs, rate, args.step_seconds)
    ids = list(sent)
    wait_for(ctx.tracker, ids, 1, 300, f"latency at {rate:,.0f}/s")
    load = os.getloadavg()[0]
    calls: dict[str, float] = {}
    try:
        with ctx.sim.admin() as admin:
            calls = call_arrivals(admin.calls(limit=CALL_LOG))
    except Exception as exc:  # the split without the simulator's log is still worth having
        print(f"    simulator call log not read: {exc!r}", flush=True)
    figures = stages(sent, ctx.tracker.snapshot(ids), calls, took)
    figures.target_rate = rate
    figures.load = load
    figures.bridge, _ = diagnose(metrics_before, ctx.metrics())
    split = ", ".join(
        f"{k} {figures.stages[k][0]:.0f}/{figures.stages[k][1]:.0f}"
        for k in STAGES
        if k in figures.stages
    )
    print(
        f"    {figures.offered_eps:,.0f} events/s offered ({figures.finished_eps:,.0f}/s "
        f"finished): produced -> result received (read_committed) p50 {figures.e2e[0]:.0f} ms, "
        f"p99 {figures.e2e[1]:.0f} ms; to the result record's timestamp p50 "
        f"{figures.record[0]:.0f}, p99 {figures.record[1]:.0f}; stages p50/p99 ms: {split} "
        f"(call log for {figures.call_coverage:,} of {figures.events:,}); load {load:.1f}; "
        f"bridge: {figures.bridge}",
        flush=True,
    )
    return figures


@dataclass
class RunContext:
    bootstrap: str
    sim: SimulatorHandle
    codec: Codec
    tracker: Tracker
    topic: str
    subs: list[BenchSub]
    bridges: list[Bridge]

    def metrics(self) -> dict[str, float]:
        merged: dict[str, float] = {}
        for b in self.bridges:
            for k, v in scrape(b.port).items():
                merged[k] = merged.get(k, 0.0) + v
        return merged

    def cpu(self) -> float:
        return sum(cpu_seconds(b.process.pid) for b in self.bridges)

    def cpu_wait(self) -> float:
        return sum(cpu_wait_seconds(b.process.pid) for b in self.bridges)


def sustained(ctx: RunContext, args: argparse.Namespace) -> RunFigures:
    """Everything produced at once, the bridge drains it."""
    encoded = []
    at = int(time.time() * 1000)
    for i in range(args.events):
        code, snap = ctx.subs[i % len(ctx.subs)].change()
        ev = event(code, snap, at)
        encoded.append((snap.id, ev.event_id, ctx.codec.encode_event(ev)))
    p = producer(ctx.bootstrap)
    cpu_before, wait_before = ctx.cpu(), ctx.cpu_wait()
    sim_pid: int = ctx.sim.pid or 0
    sim_before = cpu_seconds(sim_pid)
    metrics_before = ctx.metrics()
    first_ms = int(time.time() * 1000)
    for key, _, value in encoded:
        produce(p, ctx.topic, key, value)
    p.flush(60)
    ids = [e for _, e, _ in encoded]
    wait_for(ctx.tracker, ids, 1, 600, "throughput")
    stamps = ctx.tracker.result_created(ids)
    last_ms = max(stamps.values())
    wall = (last_ms - first_ms) / 1000
    throughput = len(ids) / wall
    cores = (ctx.cpu() - cpu_before) / wall
    waiting = (ctx.cpu_wait() - wait_before) / wall
    sim_cores = (cpu_seconds(sim_pid) - sim_before) / wall
    load = os.getloadavg()[0]
    planned = ctx.tracker.request_created(ids)
    planner_eps = len(planned) / ((max(planned.values()) - first_ms) / 1000)
    diagnosis, call_ms = diagnose(metrics_before, ctx.metrics())
    print(f"    bridge metrics: {diagnosis}", flush=True)
    print(
        f"    sustained: {throughput:,.0f} events/s over {len(ids):,} events (planner alone "
        f"had them all planned at {planner_eps:,.0f} events/s; bridge used {cores:.2f} "
        f"cores = {throughput / cores:,.0f} events per bridge CPU-second, and its threads "
        f"waited {waiting:.2f} s per second for a CPU; simulator "
        f"{sim_cores:.2f} cores; load average {load:.1f})",
        flush=True,
    )
    return RunFigures(
        onboarding_eps=0.0,
        throughput_eps=throughput,
        throughput_series=per_second(list(stamps.values()), first_ms),
        events_per_cpu_second=throughput / cores,
        load=load,
        call_ms=call_ms,
        cpu_wait=waiting,
    )


def bridge_run(
    n: int, bootstrap: str, sim: SimulatorHandle, codec: Codec, args: argparse.Namespace
) -> RunFigures:
    name = f"r{n}-{uuid.uuid4().hex[:6]}"
    print(f"  run {n + 1}:", flush=True)
    roles = ["planner", "dispatcher"] if args.split_roles else ["all"]
    bridges: list[Bridge] = []
    tracker: Tracker | None = None
    try:
        for role in roles:  # appended one by one: a failed second start still stops the first
            bridges.append(start_bridge(name, bootstrap, sim, role=role))
        topics = bridges[0].topics
        tracker = Tracker(bootstrap, codec, topics["requests"], topics["results"])
        subs = [BenchSub(f"bench-{name}-{i:05d}", f"B{name}{i:05d}") for i in range(args.subs)]
        ctx = RunContext(bootstrap, sim, codec, tracker, topics["input"], subs, bridges)
        onboarding = onboard(bootstrap, ctx.topic, codec, tracker, subs)
        print(f"    onboarding: {onboarding:,.0f} events/s (2 Icareus calls each)", flush=True)
        figures = sustained(ctx, args)
        figures.onboarding_eps = onboarding
        rates = args.rates if n < args.curve_runs else [args.rate]
        chosen = sorted({figures.throughput_eps if r is None else r for r in rates})
        figures.steps = [latency_step(rate, ctx, args) for rate in chosen]
        return figures
    finally:
        if tracker is not None:
            tracker.close()
        for b in reversed(bridges):
            b.stop()


def naive_run(
    bootstrap: str, sim: SimulatorHandle, codec: Codec, args: argparse.Namespace
) -> tuple[float, list[int]]:
    """Planner-only bridge + the naive dispatcher; service changes for `--naive-seconds`."""
    name = f"naive-{uuid.uuid4().hex[:6]}"
    bridge = start_bridge(name, bootstrap, sim, role="planner")
    naive: subprocess.Popen[str] | None = None
    results: Tracker | None = None
    try:
        naive_log = (OUT_DIR / "e2e-naive.log").open("w")
        naive = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "naive_baseline.py"),
                "--bootstrap",
                bootstrap,
                "--base-url",
                sim.base_url,
                "--requests-topic",
                bridge.topics["requests"],
                "--results-topic",
                bridge.topics["results"],
                "--group",
                f"bench-{name}-naive",
            ],
            stdout=naive_log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        results = Tracker(bootstrap, codec, bridge.topics["requests"], bridge.topics["results"])
        topic = bridge.topics["input"]
        subs = [
            BenchSub(f"bench-{name}-{i:05d}", f"B{name}{i:05d}") for i in range(args.naive_subs)
        ]
        onboard(bootstrap, topic, codec, results, subs)
        # More events than it can finish in the window: it is never idle while measured.
        count = int(args.naive_seconds * 200)
        p = producer(bootstrap)
        ids = []
        at = int(time.time() * 1000)
        for i in range(count):
            code, snap = subs[i % len(subs)].change()
            ev = event(code, snap, at)
            ids.append(ev.event_id)
            produce(p, topic, snap.id, codec.encode_event(ev))
        p.flush(30)
        start = time.time()
        before = results.done_for(ids, 1)
        time.sleep(args.naive_seconds)
        after = results.done_for(ids, 1)
        eps = (after - before) / (time.time() - start)
        stamps = results.result_created(ids)
        series = per_second(list(stamps.values()), int(start * 1000))
        print(f"  naive baseline: {eps:,.1f} events/s (one Icareus call each)", flush=True)
        return eps, series
    finally:
        if results is not None:
            results.close()
        if naive is not None and naive.poll() is None:
            naive.send_signal(signal.SIGTERM)
            try:
                naive.wait(30)
            except subprocess.TimeoutExpired:
                naive.kill()
                naive.wait()
        bridge.stop()


# --- reporting ---------------------------------------------------------------------------------


def icareus_ceiling(path: Path | None) -> dict[str, float]:
    """Best medians of bench/icareus_bench.py's JSON lines: client (aiohttp) and simulator."""
    out: dict[str, float] = {}
    if path is None or not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("{"):
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        name, rps = str(row.get("benchmark", "")), float(row.get("median_rps", 0))
        if name.startswith("Icareus client (aiohttp)"):
            out["client"] = max(out.get("client", 0.0), rps)
        elif name.startswith("Icareus simulator"):
            out["simulator"] = max(out.get("simulator", 0.0), rps)
    return out


def machine() -> str:
    return machine_info.describe("shared by broker, simulator, bridge and load generator")


NOTES_TEMPLATE = """\
## Notes on `e2e` (bench/e2e_bench.py)
- Everything on this machine: a fresh single-node Kafka broker, the Icareus simulator in its own
  process answering every call after 20 ms, `icareus-bridge run` (planner and dispatcher in one
  process, `config/bridge.yaml`: 6 partitions, 128 calls in flight) as a subprocess, and the
  benchmark producing events and reading both output topics (read_committed). Fresh topics,
  groups and bridge process per run; {runs} runs, medians reported; {minutes:.1f} min in all;
  {when}.
- **The machine is shared and noisy**: 2 CPUs for the broker, the simulator, the bridge, the
  load generator and other work on the host (load average {load_min:.1f}-{load_max:.1f} while
  measured); quote medians, and compare figures measured in the same session only. Icareus
  calls that the simulator answers after 20 ms took {call_min:.0f}-{call_max:.0f} ms on average
  inside the bridge in the sustained phase (the processes wait for a CPU: the bridge's threads
  spent a median {cpu_wait:.2f} s per second runnable but not running, from
  /proc/<pid>/task/*/schedstat). {per_cpu:,.0f} events per CPU-second of the bridge process,
  against {eps:,.0f} events/s measured here.
- Workload: {subs:,} subscriptions onboarded first (BECOME_SUBSCRIBER, not timed), then service
  changes (ADD_SERVICE / REMOVE_SERVICE, one Icareus call each) round-robin over them.
  Sustained: {events:,} events produced at once, events / (last result record − first produce).
  Latency: each rate offered for {seconds:.0f} s; every event is timed from the moment the
  benchmark produces it to the moment its read_committed consumer of the results topic
  receives the result — what CRM sees. The earlier figure, to the result record's own
  timestamp, is given beside it ("record"): the dispatcher produces its results when its
  transaction begins, so that figure leaves the commit out.
- The split, measured from outside the bridge (bench/e2e_stages.py), medians of the runs' p50 /
  p99 at {rate:.0f} events/s, ms:

{split_table}

  planner: produced (the benchmark's `produce()` call, its producer's 2 ms linger included) → a
  read_committed consumer of the requests topic has the request (poll, plan, the planner's
  transaction, which begins as soon as the one before has ended); receipt: → the call reaches
  the simulator
  (its call log, by idempotency key = request id; the dispatcher reads the committed request
  and sends); call: → the result's `executed_at` (the dispatcher's clock once answered);
  wait: → the result record's timestamp (the finished result waits for the dispatcher's next
  transaction: until the one in flight ends); commit: → a read_committed consumer has the
  result (the transaction's produce, offsets and commit). Percentiles of stages do not add up
  to the whole's.
  The bridge's own `icareus_bridge_event_to_result_seconds` histogram is observed when a
  request finishes (`Dispatcher._count_result`), before its result is produced and committed:
  it leaves out `wait` and `commit`, and is not what CRM sees. Beside it,
  `icareus_bridge_event_to_committed_result_seconds` is observed when the dispatcher's
  transaction holding the result has committed (`Dispatcher._committed`): the time to a result
  CRM can read, from the event's `occurred_at` (CRM's clock, so in production it includes CRM's
  own delay before producing).
- Latency against offered load (run 1; `max` = that run's sustained throughput), ms:

{curve_table}

  Files: docs/bench/e2e_curve.csv and .json (every stage), docs/bench/e2e_curve.svg (the chart).
  Naive baseline: a planner-only bridge with `bench/naive_baseline.py` as the dispatcher
  (consume one request, call, produce the result, commit), {naive_seconds:.0f} s.
"""

NOTES_START = "<!-- e2e notes: rewritten by bench/e2e_bench.py -->"
NOTES_END = "<!-- end of e2e notes -->"


def record(rows: list[str], notes: str, keep: Sequence[str] = ()) -> None:
    """Replace this benchmark's rows (in the first table) and its notes section; nothing else.
    Existing rows starting with one of `keep` stay (figures this run did not measure)."""
    header = (
        "# Benchmarks\n\nMeasured figures, one row per benchmark, rewritten by the benchmark "
        "script itself.\n\n"
        "| benchmark | command | machine | median | target | ratio/notes |\n"
        "|---|---|---|---|---|---|\n"
    )
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else header
    kept = [ln for ln in text.splitlines() if any(ln.startswith(k) for k in keep)]
    rows = [*rows, *kept]
    lines = [ln for ln in text.splitlines() if not ln.startswith(ROW_PREFIX)]
    if NOTES_START in lines and NOTES_END in lines:
        start, end = lines.index(NOTES_START), lines.index(NOTES_END)
        del lines[start : end + 1]
        while start < len(lines) and start > 0 and not lines[start - 1] and not lines[start]:
            del lines[start]
    # After the last row of the first table.
    first = next((i for i, ln in enumerate(lines) if ln.startswith("|")), len(lines))
    at = first
    while at < len(lines) and lines[at].startswith("|"):
        at += 1
    lines[at:at] = rows
    while lines and not lines[-1]:
        lines.pop()
    lines += ["", NOTES_START, *notes.splitlines(), NOTES_END]
    BENCHMARKS_MD.parent.mkdir(parents=True, exist_ok=True)
    BENCHMARKS_MD.write_text("\n".join(lines) + "\n")


def med(values: Sequence[float]) -> float:
    clean = [v for v in values if v == v]  # without NaN
    return statistics.median(clean) if clean else float("nan")


def median_step(steps: Sequence[StepFigures]) -> dict[str, tuple[float, float]]:
    """Median over runs of each figure's p50 and p99: e2e, record and every stage."""
    out = {
        "e2e": (med([s.e2e[0] for s in steps]), med([s.e2e[1] for s in steps])),
        "record": (med([s.record[0] for s in steps]), med([s.record[1] for s in steps])),
    }
    nan = (float("nan"), float("nan"))
    for name in STAGES:
        out[name] = (
            med([s.stages.get(name, nan)[0] for s in steps]),
            med([s.stages.get(name, nan)[1] for s in steps]),
        )
    return out


def split_table(figures: dict[str, tuple[float, float]]) -> str:
    names = ["e2e", "record", *STAGES]
    head = "  | " + " | ".join(names) + " |"
    rule = "  |" + "---|" * len(names)
    cells = "  | " + " | ".join(f"{figures[n][0]:.0f} / {figures[n][1]:.0f}" for n in names)
    return "\n".join([head, rule, cells + " |"])


def curve_table(steps: Sequence[StepFigures]) -> str:
    lines = [
        "  | offered events/s | finished events/s | p50 | p99 | record p50 | record p99 | "
        + " | ".join(f"{n} p50/p99" for n in STAGES)
        + " | load |",
        "  |" + "---|" * (7 + len(STAGES)),
    ]
    nan = (float("nan"), float("nan"))
    for s in steps:
        parts = " | ".join(
            f"{s.stages.get(n, nan)[0]:.0f} / {s.stages.get(n, nan)[1]:.0f}" for n in STAGES
        )
        lines.append(
            f"  | {s.offered_eps:,.0f} | {s.finished_eps:,.0f} | {s.e2e[0]:.0f} | {s.e2e[1]:.0f} "
            f"| {s.record[0]:.0f} | {s.record[1]:.0f} | {parts} | {s.load:.1f} |"
        )
    return "\n".join(lines)


def write_curve(
    curve: Sequence[StepFigures], at_rate: Sequence[StepFigures], meta: dict[str, object]
) -> list[Path]:
    """docs/bench/e2e_curve.{csv,json,svg} from the curve run's steps."""
    CURVE_DIR.mkdir(parents=True, exist_ok=True)
    rows = [s.as_row() for s in curve]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = CURVE_DIR / "e2e_curve.csv"
    csv_path.write_text(buf.getvalue())
    json_path = CURVE_DIR / "e2e_curve.json"
    document = {**meta, "curve": rows, "runs_at_rate": [s.as_row() for s in at_rate]}
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    lines = [
        svg_chart.Line(
            "p50, result received", "#1f77b4", [(s.offered_eps, s.e2e[0]) for s in curve]
        ),
        svg_chart.Line(
            "p99, result received", "#d62728", [(s.offered_eps, s.e2e[1]) for s in curve]
        ),
        svg_chart.Line(
            "p50, result timestamp", "#1f77b4", [(s.offered_eps, s.record[0]) for s in curve], True
        ),
        svg_chart.Line(
            "p99, result timestamp", "#d62728", [(s.offered_eps, s.record[1]) for s in curve], True
        ),
    ]
    refs = [
        svg_chart.Reference(f"p50 target {TARGET_P50_MS:.0f} ms", TARGET_P50_MS, "#1f77b4"),
        svg_chart.Reference(f"p99 target {TARGET_P99_MS:.0f} ms", TARGET_P99_MS, "#d62728"),
    ]
    svg = svg_chart.line_chart(
        "icareus-bridge: event produced -> result received (read_committed), Icareus 20 ms",
        "offered load, events/s",
        "latency, ms (log scale)",
        lines,
        refs,
        note=f"{meta['machine']}; {meta['when']}; one run",
    )
    svg_path = CURVE_DIR / "e2e_curve.svg"
    svg_path.write_text(svg)
    return [csv_path, json_path, svg_path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=6_000, help="sustained phase's backlog")
    parser.add_argument("--subscriptions", dest="subs", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=300.0, help="the rate every run offers")
    parser.add_argument(
        "--rates",
        type=parse_rates,
        default=parse_rates("100,300,1000,max"),
        help="the curve's rates, events/s; `max` = the run's sustained throughput",
    )
    parser.add_argument("--step-seconds", type=float, default=10.0, help="seconds per rate")
    parser.add_argument("--curve-runs", type=int, default=1, help="runs that offer every rate")
    parser.add_argument("--naive-seconds", type=float, default=10.0, help="0 skips it")
    parser.add_argument("--naive-subscriptions", dest="naive_subs", type=int, default=100)
    parser.add_argument("--icareus-figures", type=Path, default=OUT_DIR / "icareus_bench.txt")
    parser.add_argument(
        "--split-roles",
        action="store_true",
        help="planner and dispatcher as two processes (`run --role ...`) instead of one",
    )
    parser.add_argument("--no-record", action="store_true", help="leave docs/ untouched")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs: at least 1")
    if args.step_seconds <= 0:
        parser.error("--step-seconds: must be positive")
    if args.rate not in args.rates:
        args.rates = [*args.rates, args.rate]

    settings = load_settings(CONFIG)
    codec = Codec.from_settings(settings)
    started = time.monotonic()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print("starting a Kafka broker and the Icareus simulator (20 ms per call) ...", flush=True)
    naive_eps = float("nan")
    with (
        local_kafka.temporary_broker() as broker,
        start_simulator_process(latency_ms=LATENCY_MS, config_path=CONFIG) as sim,
    ):
        runs = [bridge_run(n, broker.bootstrap_servers, sim, codec, args) for n in range(args.runs)]
        if args.naive_seconds > 0:
            naive_eps, _ = naive_run(broker.bootstrap_servers, sim, codec, args)

    at_rate = [s for r in runs if (s := r.at_rate(args.rate)) is not None]
    split = median_step(at_rate)
    curve = runs[0].steps
    eps = statistics.median(r.throughput_eps for r in runs)
    onboarding = statistics.median(r.onboarding_eps for r in runs)
    per_cpu = statistics.median(r.events_per_cpu_second for r in runs)
    cpu_wait = statistics.median(r.cpu_wait for r in runs)
    loads = [r.load for r in runs] + [s.load for r in runs for s in r.steps]
    ratio = eps / naive_eps if naive_eps == naive_eps and naive_eps else float("nan")
    ceiling = icareus_ceiling(args.icareus_figures)
    minutes = (time.monotonic() - started) / 60
    p50, p99 = split["e2e"]

    def mark(ok: bool) -> str:
        return "meets" if ok else "MISSES"

    print(f"\nend to end, median of {len(runs)} runs ({minutes:.1f} min in all):")
    print(
        f"  sustained throughput  {eps:,.0f} events/s; "
        f"runs {[round(r.throughput_eps) for r in runs]}"
    )
    print(
        f"  per bridge CPU-second {per_cpu:,.0f} events (target ≥ {TARGET_PER_CPU:,.0f}: "
        f"{mark(per_cpu >= TARGET_PER_CPU)}); load average {min(loads):.1f}-{max(loads):.1f}"
    )
    print(
        f"  latency @ {args.rate:.0f}/s       produced -> result received (read_committed) "
        f"p50 {p50:.0f} ms ({mark(p50 <= TARGET_P50_MS)} ≤ {TARGET_P50_MS:.0f}), p99 {p99:.0f} ms "
        f"({mark(p99 <= TARGET_P99_MS)} ≤ {TARGET_P99_MS:.0f}); runs p50 "
        f"{[round(s.e2e[0]) for s in at_rate]}, p99 {[round(s.e2e[1]) for s in at_rate]}"
    )
    print(
        f"  old figure            produced -> result record timestamp p50 {split['record'][0]:.0f} "
        f"ms, p99 {split['record'][1]:.0f} ms"
    )
    print(
        "  stages p50/p99 ms     "
        + ", ".join(f"{n} {split[n][0]:.0f}/{split[n][1]:.0f}" for n in STAGES)
    )
    print(
        "  curve (run 1)         "
        + "; ".join(
            f"{s.offered_eps:,.0f}/s: p50 {s.e2e[0]:.0f}, p99 {s.e2e[1]:.0f}" for s in curve
        )
    )
    print(f"  naive baseline        {naive_eps:,.1f} events/s -> bridge is {ratio:,.1f}×")
    print(f"  onboarding            {onboarding:,.0f} events/s (2 Icareus calls per event)")

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    raw = [
        {"throughput_eps": r.throughput_eps, "steps": [s.as_row() for s in r.steps]} for r in runs
    ]
    (OUT_DIR / "e2e_figures.json").write_text(json.dumps(raw, indent=2) + "\n")
    if not args.no_record:
        m = machine()
        command = " ".join(["python bench/e2e_bench.py", *(sys.argv[1:] if argv is None else argv)])
        in_flight = settings.icareus.max_in_flight
        rows = e2e_rows(args, runs, at_rate, split, naive_eps, ceiling, m, command, in_flight)
        notes = NOTES_TEMPLATE.format(
            runs=len(runs),
            when=when,
            events=args.events,
            subs=args.subs,
            rate=args.rate,
            seconds=args.step_seconds,
            naive_seconds=args.naive_seconds,
            minutes=minutes,
            load_min=min(loads),
            load_max=max(loads),
            per_cpu=per_cpu,
            eps=eps,
            cpu_wait=cpu_wait,
            call_min=min(r.call_ms for r in runs),
            call_max=max(r.call_ms for r in runs),
            split_table=split_table(split),
            curve_table=curve_table(curve),
        )
        keep = []
        if naive_eps != naive_eps:
            keep.append(NAIVE_ROW)
        if not ceiling:
            keep.append(CEILING_ROW)
        record(rows, notes, keep)
        meta: dict[str, object] = {
            "benchmark": "e2e latency against offered load",
            "command": command,
            "machine": m,
            "when": when,
            "icareus_latency_ms": LATENCY_MS,
            "step_seconds": args.step_seconds,
            "targets_at_300": {"p50_ms": TARGET_P50_MS, "p99_ms": TARGET_P99_MS},
        }
        paths = write_curve(curve, at_rate, meta)
        shown = ", ".join(str(p.relative_to(ROOT)) for p in paths)
        print(f"\nwrote {BENCHMARKS_MD.relative_to(ROOT)} (e2e rows and notes), {shown}")
    return 0


def e2e_rows(
    args: argparse.Namespace,
    runs: Sequence[RunFigures],
    at_rate: Sequence[StepFigures],
    split: dict[str, tuple[float, float]],
    naive_eps: float,
    ceiling: dict[str, float],
    m: str,
    command: str,
    in_flight: int,
) -> list[str]:
    eps = statistics.median(r.throughput_eps for r in runs)
    per_cpu = statistics.median(r.events_per_cpu_second for r in runs)
    loads = [r.load for r in runs] + [s.load for r in runs for s in r.steps]
    p50, p99 = split["e2e"]
    runs_note = f"median of {len(runs)} runs"
    stage_text = ", ".join(f"{n} {split[n][0]:.0f}/{split[n][1]:.0f}" for n in STAGES)
    rows = [
        f"| e2e: sustained throughput (broker + bridge + simulator at 20 ms, 1 call/event) "
        f"| `{command}` | {m} | {eps:,.0f} events/s; {per_cpu:,.0f} events per bridge "
        f"CPU-second | not lower; ≥ {TARGET_PER_CPU:,.0f} events per bridge CPU-second | "
        f"{per_cpu / TARGET_PER_CPU:.2f}× the per-CPU target; {runs_note}: "
        f"{', '.join(f'{r.throughput_eps:,.0f}' for r in runs)} events/s; load average "
        f"{min(loads):.1f}-{max(loads):.1f} while measured |",
        f"| e2e: event → result received by a read_committed consumer (what CRM sees), "
        f"{args.rate:.0f} events/s offered, Icareus 20 ms | `{command}` | {m} | p50 {p50:.0f} ms, "
        f"p99 {p99:.0f} ms | p50 ≤ {TARGET_P50_MS:.0f} ms, p99 ≤ {TARGET_P99_MS:.0f} ms | "
        f"{p50 / TARGET_P50_MS:.1f}× the p50 target, {p99 / TARGET_P99_MS:.1f}× the p99 target "
        f"(> 1: missed); {runs_note}, p50 {', '.join(f'{s.e2e[0]:.0f}' for s in at_rate)}, p99 "
        f"{', '.join(f'{s.e2e[1]:.0f}' for s in at_rate)} ms; to the result record's timestamp "
        f"(the earlier figure) p50 {split['record'][0]:.0f}, p99 {split['record'][1]:.0f} ms |",
        f"| e2e: where that time goes at {args.rate:.0f} events/s (p50/p99 ms per stage) | "
        f"`{command}` | {m} | {stage_text} | — | medians of {len(at_rate)} runs; stages in the "
        f"e2e notes below |",
        f"| e2e: latency against offered load | `{command}` | {m} | docs/bench/e2e_curve.svg, "
        f".csv, .json | p50 ≤ {TARGET_P50_MS:.0f} ms, p99 ≤ {TARGET_P99_MS:.0f} ms at 300/s | "
        + "; ".join(
            f"{s.offered_eps:,.0f}/s: p50 {s.e2e[0]:.0f}, p99 {s.e2e[1]:.0f} ms"
            + (
                f" (not sustained: {s.finished_eps:,.0f}/s finished)"
                if s.finished_eps < 0.95 * s.offered_eps
                else ""
            )
            for s in runs[0].steps
        )
        + " (one run) |",
    ]
    if naive_eps == naive_eps:  # not NaN: measured in this run
        ratio = eps / naive_eps if naive_eps else float("inf")
        rows.append(
            f"{NAIVE_ROW} (one request at a time, same simulator) | `{command}` | {m} | "
            f"{naive_eps:,.1f} events/s | bridge ≥ {TARGET_RATIO:.0f}× baseline | "
            f"bridge {ratio:,.1f}× baseline; 1 run of {args.naive_seconds:.0f} s |"
        )
    if not ceiling:
        return rows
    rows.append(
        f"{CEILING_ROW} | `{command}` | {m} | client "
        f"{ceiling.get('client', float('nan')):,.0f} calls/s, simulator "
        f"{ceiling.get('simulator', float('nan')):,.0f} calls/s | — | from "
        f"bench/icareus_bench.py (no latency); at 20 ms, {in_flight} in flight bound the bridge "
        f"to {in_flight / (LATENCY_MS / 1000):,.0f} calls/s |"
    )
    return rows


if __name__ == "__main__":
    sys.exit(main())
