"""Benchmark of `icareus-bridge status` on a real Kafka broker on this machine: a compacted
state topic holding 1,000,000 subscriptions (the planner benchmark's, 6 partitions), a results
topic with results spread over them and a DLQ with some dead letters; `status --subscription`
of a random known subscription is timed as a subprocess (process start, configuration, Kafka
reads, JSON), several runs, each a different subscription. Also timed once: an unknown id,
which reads every partition of the state topic before saying so.

Prints the median and records it in docs/BENCHMARKS.md (its own row only). Uses the broker at
$KAFKA_BOOTSTRAP_SERVERS, else starts a temporary local one.

    python bench/status_bench.py [--states N] [--results N] [--runs R] [--no-record]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from confluent_kafka import Producer

from icareus_bridge.codec import Codec
from icareus_bridge.config import default_config_path, load_settings
from icareus_bridge.core.model import LifeCycleState, ProvisioningResult, RequestType
from icareus_bridge.ops.state_lookup import StateLookup
from icareus_bridge.pipeline.dead_letter import Origin, dead_letter_headers
from planner_bench import (  # bench/planner_bench.py, beside this script
    PARTITIONS,
    broker,
    create_topic,
    end_offsets,
    ensure_state_topic,
    record,
)

ROOT = Path(__file__).resolve().parents[1]
BRIDGE = ROOT / ".venv" / "bin" / "icareus-bridge"
NAME = "status --subscription, 1,000,000 subscriptions in the state topic"
TARGET_SECONDS = 3.0


def _producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": 50,
            "batch.num.messages": 10000,
            "compression.type": "lz4",
        }
    )


def _produce(p: Producer, topic: str, key: bytes, value: bytes, **kw: object) -> None:
    while True:
        try:
            p.produce(topic, key=key, value=value, **kw)
            return
        except BufferError:
            p.poll(0.05)


def ensure_results_topic(bootstrap: str, states: int, results: int) -> str:
    """`results` results of random subscriptions (keyed, murmur2, like the bridge's)."""
    topic = f"bench-status-results-{states}-{results}"
    if end_offsets(bootstrap, topic) >= results:
        return topic
    create_topic(bootstrap, topic)
    codec = Codec()
    rng = random.Random(7)
    p = _producer(bootstrap)
    for i in range(results):
        n = rng.randrange(states)
        sid = f"bench-{n:07d}"
        result = ProvisioningResult(
            request_id=f"req-{i}",
            number=f"N{n}-1-{i % 90 + 1:02d}",
            type=RequestType.ACTIVATE_PRODUCTS,
            subscription_id=sid,
            subscription_number=f"N{n}",
            distributor="ICAREUS-VP1",
            account_key=f"N{n}-ICAREUS-VP1",
            event_id=f"ev-{i}",
            action_code="ADD_SERVICE",
            life_cycle_state=LifeCycleState.COMPLETED,
            attempts=1,
            created_at=1_764_000_000_000 + i,
            executed_at=1_764_000_000_100 + i,
            product_ids=("1001",),
        )
        _produce(p, topic, sid.encode(), codec.encode_result(result))
    assert p.flush(300) == 0
    return topic


def ensure_dlq_topic(bootstrap: str, states: int, letters: int) -> str:
    topic = f"bench-status-dlq-{states}-{letters}"
    if end_offsets(bootstrap, topic) >= letters:
        return topic
    create_topic(bootstrap, topic)
    rng = random.Random(11)
    p = _producer(bootstrap)
    for i in range(letters):
        sid = f"bench-{rng.randrange(states):07d}"
        headers = dead_letter_headers(
            "dispatch",
            "RETRIES_EXHAUSTED",
            "Icareus unreachable",
            Origin("bench-requests", 0, i, 1_764_000_000_000),
            "bench-dispatcher",
            now_ms=1_764_000_000_000 + i,
        )
        _produce(p, topic, sid.encode(), b"\xc3\x01" + b"\x00" * 60, headers=headers)
    assert p.flush(60) == 0
    return topic


def config_file(bootstrap: str, state: str, results: str, dlq: str, workdir: Path) -> Path:
    cfg = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))
    cfg["kafka"]["bootstrap_servers"] = bootstrap
    cfg["topics"].update({"state": state, "results": results, "dlq": dlq})
    path = workdir / "status-bench.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def time_status(config: Path, sid: str) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICAREUS_BRIDGE__")}
    started = time.perf_counter()
    out = subprocess.run(
        [str(BRIDGE), "status", "--config", str(config), "--subscription", sid],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    return time.perf_counter() - started, out.returncode


def time_lookup(config: Path, sid: str) -> tuple[float, float]:
    """The Kafka reads alone, in this process: (wall seconds, CPU seconds of all threads)."""
    settings = load_settings(config)
    wall, cpu = time.perf_counter(), time.process_time()
    with StateLookup(settings) as lookup:
        lookup.facts(sid)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--states", type=int, default=1_000_000)
    parser.add_argument("--results", type=int, default=300_000)
    parser.add_argument("--dead-letters", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-record", action="store_true", help="leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()

    with broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        state, _size = ensure_state_topic(bootstrap, args.states)
        results = ensure_results_topic(bootstrap, args.states, args.results)
        dlq = ensure_dlq_topic(bootstrap, args.states, args.dead_letters)
        print(f"  topics ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        config = config_file(bootstrap, state, results, dlq, Path(tmp))
        rng = random.Random(3)
        time_status(config, "bench-0000000")  # warm-up (page cache, broker)
        runs: list[float] = []
        reads: list[tuple[float, float]] = []
        for _ in range(args.runs):
            sid = f"bench-{rng.randrange(args.states):07d}"
            seconds, rc = time_status(config, sid)
            assert rc == 0, f"status of {sid} exited {rc}"
            runs.append(seconds)
            reads.append(time_lookup(config, sid))
            print(
                f"  run: {sid} {seconds:.2f} s (reads alone {reads[-1][0]:.2f} s wall, "
                f"{reads[-1][1]:.2f} s CPU)",
                file=sys.stderr,
            )
        read_wall = statistics.median(r[0] for r in reads)
        read_cpu = statistics.median(r[1] for r in reads)
        unknown, rc = time_status(config, "bench-unknown")
        assert rc == 2, f"status of an unknown id exited {rc}"
        started = time.perf_counter()
        subprocess.run([str(BRIDGE), "status", "--help"], capture_output=True, check=True)
        start_up = time.perf_counter() - started
        median = statistics.median(runs)
        load = os.getloadavg()[0]
        print(
            f"{NAME}: median {median:.2f} s over {args.runs} runs (min {min(runs):.2f}, max "
            f"{max(runs):.2f}); Kafka reads alone {read_wall:.2f} s wall, {read_cpu:.2f} s CPU; "
            f"unknown id {unknown:.2f} s; `status --help` {start_up:.2f} s; "
            f"load average {load:.1f}; target < {TARGET_SECONDS:.0f} s"
        )
        if not args.no_record:
            record(
                NAME,
                f"python bench/status_bench.py --states {args.states} --results "
                f"{args.results} --runs {args.runs}",
                f"{median:.2f} s",
                f"< {TARGET_SECONDS:.0f} s",
                f"{median / TARGET_SECONDS:.2f}× the budget; wall clock of the whole "
                f"subprocess (interpreter start and imports alone: {start_up:.2f} s; the Kafka "
                f"reads in-process: median {read_wall:.2f} s wall, {read_cpu:.2f} s CPU); "
                f"{args.states:,} subscriptions in {PARTITIONS} partitions (one partition "
                f"read), {args.results:,} results (fewer than 10 per subscription: the "
                f"results partition is read back to its start), {args.dead_letters:,} dead "
                f"letters; an unknown id (every partition read) {unknown:.2f} s; load "
                f"average {load:.1f}; runs: {', '.join(f'{r:.2f}' for r in runs)}",
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
