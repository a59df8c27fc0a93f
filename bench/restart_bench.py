"""Restart of the planner → its first planned request, on a real Kafka broker on this machine.

One `icareus-bridge run --role planner` process is stopped (SIGTERM or SIGKILL) and a new one
started at once with the same group and instance ids, either on the same topics or on renamed
ones (an upgrade: the static member is handed its old assignment, refuses it and rejoins).
An event is produced the moment the new process is spawned; the time is measured from the spawn
until the event's first request is readable (read_committed) on the requests topic. Prints the
median of several runs per case (and every run).

Uses the broker at $KAFKA_BOOTSTRAP_SERVERS, else starts a temporary local one.

    python bench/restart_bench.py [--runs R]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools" / "kafka"))

import local_kafka  # noqa: E402  (tools/kafka)
from tests.integration.planner_support import (  # noqa: E402
    PARTITIONS,
    PlannerProcess,
    Topics,
    event,
    produce_events,
)

from icareus_bridge.codec import default_codec  # noqa: E402

CODEC = default_codec()


@contextlib.contextmanager
def broker() -> Iterator[str]:
    from_env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if from_env:
        yield from_env
        return
    with local_kafka.temporary_broker() as running:
        yield running.bootstrap_servers


def new_topics(bootstrap: str) -> Topics:
    u = uuid.uuid4().hex[:8]
    topics = Topics(*(f"restart-{u}-{n}" for n in ("input", "requests", "results", "dlq", "state")))
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [
        NewTopic(name, PARTITIONS, 1, config={"cleanup.policy": "compact"} if n == 4 else {})
        for n, name in enumerate(topics.as_dict().values())
    ]
    for future in admin.create_topics(new).values():
        future.result(30)
    return topics


def first_request_seconds(bootstrap: str, topics: Topics, event_id: str, t0: float) -> float:
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"restart-reader-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    reader.assign([TopicPartition(topics.requests, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    try:
        deadline = t0 + 180
        while time.monotonic() < deadline:
            for msg in reader.consume(500, timeout=0.05):
                value = msg.value() if msg.error() is None else None
                if value is not None and CODEC.decode_request(value).event_id == event_id:
                    return time.monotonic() - t0
        raise TimeoutError("no request within 180 s")
    finally:
        reader.close()


def one_restart(
    bootstrap: str, workdir: Path, group: str, before: Topics, after: Topics, how: str
) -> float:
    instance = "bench"
    first = PlannerProcess(workdir, bootstrap, before, group=group, instance=instance).start()
    try:
        first.wait_ready(120)
        if how == "SIGKILL":
            first.kill9()
        else:
            first.terminate()
    finally:
        if first.proc is not None and first.proc.poll() is None:
            first.kill9()
    second = PlannerProcess(workdir, bootstrap, after, group=group, instance=instance)
    sub = f"restart-{uuid.uuid4().hex[:8]}"
    ev = event(sub, 1, "BECOME_SUBSCRIBER")
    t0 = time.monotonic()
    second.start()
    try:
        produce_events(bootstrap, after.input, [ev])
        return first_request_seconds(bootstrap, after, ev.event_id, t0)
    finally:
        second.terminate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        for renamed in (False, True):
            for how in ("SIGTERM", "SIGKILL"):
                times = []
                for n in range(args.runs):
                    group = f"restart-{uuid.uuid4().hex[:8]}"
                    before = new_topics(bootstrap)
                    after = new_topics(bootstrap) if renamed else before
                    workdir = Path(tmp) / f"{renamed}-{how}-{n}"
                    workdir.mkdir()
                    times.append(one_restart(bootstrap, workdir, group, before, after, how))
                case = f"{'renamed topics' if renamed else 'same topics'}, after {how}"
                print(
                    f"{case:32s} median {statistics.median(times):5.2f} s  "
                    f"runs {' '.join(f'{t:.2f}' for t in times)}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
