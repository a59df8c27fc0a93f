"""What the e2e benchmark sees from outside the bridge, per event: two read_committed consumers
(one on the requests topic, one on the results topic) note when each record *arrives* (this
process's wall clock, taken when `consume()` returns, before decoding), next to the record's own
create timestamp and the result's `executed_at`; the simulator's call log adds when each call
reached Icareus (by idempotency key = request id). `stages()` turns that into the split of one
event's time to a committed result:

    produced ─planner─▶ request visible ─receipt─▶ call at Icareus ─call─▶ call answered
      ─wait─▶ result produced (the dispatcher's commit began) ─commit─▶ result visible

`planner`: the planner's batch wait, plan and transaction until a read_committed reader gets
the request. `receipt`: the dispatcher reads the committed request and sends the call.
`call`: the simulator's arrival time to `executed_at` (the dispatcher's clock after the
answer). `wait`: the finished result waits for the dispatcher's next commit (the result record
is produced when the commit starts). `commit`: the dispatcher's transaction until a
read_committed reader gets the result. All clocks are this machine's wall clock.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from icareus_bridge.codec import Codec

STAGES = ("planner", "receipt", "call", "wait", "commit")


@dataclass
class Seen:
    """One event as seen from outside; times in epoch ms, 0 = not seen yet."""

    requests: int = 0
    request_visible: float = 0.0  # last request of the event received (read_committed)
    request_created: int = 0  # that request record's create timestamp (the planner's produce)
    request_ids: list[str] = field(default_factory=list)
    results: int = 0
    result_visible: float = 0.0  # last result received (read_committed): what CRM sees
    result_created: int = 0  # the result record's create timestamp (the dispatcher's produce)
    executed_at: int = 0  # the result's executed_at: the dispatcher's clock after the call


class Tracker:
    """Two read_committed consumers in threads of their own, from offset 0 of every partition."""

    def __init__(self, bootstrap: str, codec: Codec, requests_topic: str, results_topic: str):
        self.codec = codec
        self.seen: dict[str, Seen] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._consumers: list[Consumer] = []
        self._threads = [
            threading.Thread(target=self._run, args=(self._consumer(bootstrap, t), h), daemon=True)
            for t, h in ((requests_topic, self._on_request), (results_topic, self._on_result))
        ]
        for thread in self._threads:
            thread.start()

    def _consumer(self, bootstrap: str, topic: str) -> Consumer:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-seen-{uuid.uuid4().hex[:8]}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,  # a committed record is handed over without delay
            }
        )
        meta = consumer.list_topics(topic, timeout=10)
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])
        self._consumers.append(consumer)
        return consumer

    def _run(self, consumer: Consumer, handle: Any) -> None:
        while not self._stop.is_set():
            # poll() returns as soon as one record is there (consume(n, timeout) would wait for
            # n records or the whole timeout); what else is fetched already comes with it.
            first = consumer.poll(0.05)
            if first is None:
                continue
            arrived = time.time() * 1000
            for msg in [first, *consumer.consume(1000, timeout=0)]:
                value = msg.value()
                if msg.error() or value is None:
                    continue
                handle(value, msg.timestamp()[1], arrived)

    def _on_request(self, value: bytes, created: int, arrived: float) -> None:
        request = self.codec.decode_request(value)
        with self.lock:
            s = self.seen.setdefault(request.event_id, Seen())
            s.requests += 1
            s.request_ids.append(request.request_id)
            s.request_visible = max(s.request_visible, arrived)
            s.request_created = max(s.request_created, created)

    def _on_result(self, value: bytes, created: int, arrived: float) -> None:
        result = self.codec.decode_result(value)
        with self.lock:
            s = self.seen.setdefault(result.event_id, Seen())
            s.results += 1
            s.result_visible = max(s.result_visible, arrived)
            s.result_created = max(s.result_created, created)
            s.executed_at = max(s.executed_at, result.executed_at or 0)

    def done_for(self, event_ids: Sequence[str], per_event: int) -> int:
        with self.lock:
            seen = self.seen
            return sum(1 for e in event_ids if e in seen and seen[e].results >= per_event)

    def result_created(self, event_ids: Iterable[str]) -> dict[str, int]:
        """Event id -> create timestamp of its last result."""
        with self.lock:
            return {
                e: self.seen[e].result_created
                for e in event_ids
                if e in self.seen and self.seen[e].results
            }

    def request_created(self, event_ids: Iterable[str]) -> dict[str, int]:
        with self.lock:
            return {
                e: self.seen[e].request_created
                for e in event_ids
                if e in self.seen and self.seen[e].requests
            }

    def snapshot(self, event_ids: Iterable[str]) -> dict[str, Seen]:
        with self.lock:
            return {
                e: Seen(
                    s.requests,
                    s.request_visible,
                    s.request_created,
                    list(s.request_ids),
                    s.results,
                    s.result_visible,
                    s.result_created,
                    s.executed_at,
                )
                for e in event_ids
                if (s := self.seen.get(e)) is not None
            }

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for consumer in self._consumers:
            consumer.close()


def call_arrivals(calls: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Idempotency key (= request id) -> epoch ms of its first call reaching the simulator."""
    out: dict[str, float] = {}
    for c in calls:
        key = c.get("idempotencyKey")
        if key and key not in out:
            out[key] = float(c["at"]) * 1000
    return out


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class StepFigures:
    """One offered load: p50/p99 of the whole and of each stage, ms."""

    offered_eps: float  # what the load generator achieved producing
    events: int
    finished_eps: float  # results received per second over the step
    e2e: tuple[float, float]  # produced -> result received (read_committed)
    record: tuple[float, float]  # produced -> result record's create timestamp (the old figure)
    stages: dict[str, tuple[float, float]]
    call_coverage: int  # events whose call was still in the simulator's call log
    load: float = 0.0
    bridge: str = ""  # the bridge's own metrics over the step (mean call, mean commit)
    target_rate: float = 0.0  # the rate asked for

    def as_row(self) -> dict[str, float | int | str]:
        row: dict[str, float | int | str] = {
            "target_rate_eps": round(self.target_rate, 1),
            "offered_eps": round(self.offered_eps, 1),
            "finished_eps": round(self.finished_eps, 1),
            "events": self.events,
            "e2e_p50_ms": round(self.e2e[0], 1),
            "e2e_p99_ms": round(self.e2e[1], 1),
            "record_p50_ms": round(self.record[0], 1),
            "record_p99_ms": round(self.record[1], 1),
        }
        for name in STAGES:
            p50, p99 = self.stages.get(name, (float("nan"), float("nan")))
            row[f"{name}_p50_ms"] = round(p50, 1)
            row[f"{name}_p99_ms"] = round(p99, 1)
        row["call_coverage"] = self.call_coverage
        row["load_average"] = round(self.load, 2)
        return row


def stages(
    sent: dict[str, float], seen: dict[str, Seen], calls: dict[str, float], seconds: float
) -> StepFigures:
    """The figures of one step from the events' produce times (epoch ms), what the consumers
    saw and the simulator's call arrivals."""
    pairs: dict[str, list[float]] = {name: [] for name in STAGES}
    e2e: list[float] = []
    record: list[float] = []
    covered = 0
    for event_id, t0 in sent.items():
        s = seen.get(event_id)
        if s is None or not s.results:
            continue
        e2e.append(s.result_visible - t0)
        record.append(s.result_created - t0)
        pairs["planner"].append(s.request_visible - t0)
        pairs["commit"].append(s.result_visible - s.result_created)
        if s.executed_at:
            pairs["wait"].append(s.result_created - s.executed_at)
        arrivals = [calls[r] for r in s.request_ids if r in calls]
        if arrivals and len(arrivals) == len(s.request_ids):
            covered += 1
            first = min(arrivals)
            pairs["receipt"].append(first - s.request_visible)
            if s.executed_at:
                pairs["call"].append(s.executed_at - first)
    first_sent, last_seen = (
        min(sent.values()),
        max((seen[e].result_visible for e in sent if e in seen), default=0.0),
    )
    span = max((last_seen - first_sent) / 1000, 1e-3)
    return StepFigures(
        offered_eps=len(sent) / seconds if seconds else 0.0,
        events=len(e2e),
        finished_eps=len(e2e) / span,
        e2e=(percentile(e2e, 0.5), percentile(e2e, 0.99)),
        record=(percentile(record, 0.5), percentile(record, 0.99)),
        stages={k: (percentile(v, 0.5), percentile(v, 0.99)) for k, v in pairs.items() if v},
        call_coverage=covered,
    )
