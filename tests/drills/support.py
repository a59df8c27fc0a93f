"""What the fault drills share: a CRM workload whose final Icareus state is known from CRM's
snapshots alone, a paced CRM stream that outlives broker outages, a read_committed watcher that
times when results arrive per partition, bridge processes on 6 partitions, the Icareus
simulator as a process of its own, and the checks every drill ends with (one result per
request, no account registered twice, Icareus equal to CRM's final snapshots, effects counted
once) that yield the drill's figures.

Nothing here asserts a speed: waits are for conditions, with generous deadlines."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from icareus_bridge.codec import default_codec
from icareus_bridge.core.model import (
    Action,
    LifecycleEvent,
    Service,
    ServiceState,
    Subscriber,
    Subscription,
    SubscriptionState,
)
from icareus_bridge.icareus.simulator import (
    SimulatorAdmin,
    SimulatorHandle,
    start_simulator_process,
)
from tests.e2e.harness import Bridge, bridge_config

REPO_ROOT = Path(__file__).resolve().parents[2]
FIGURES_DIR = REPO_ROOT / "var" / "drills"
CODEC = default_codec()
VP = "ICAREUS-VP1"
BASIC, SPORTS = "1001", "1002"  # Icareus product ids of BASIC-TV and SPORTS (config/bridge.yaml)
PARTITIONS = 6
CONVERGE_SECONDS = 600.0


def wait_for(
    condition: Callable[[], bool],
    what: str,
    timeout: float = CONVERGE_SECONDS,
    interval: float = 0.1,
) -> float:
    """Waits until `condition()` (asked every `interval` s); returns the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(interval)
    return time.monotonic() - started


# --- the workload -------------------------------------------------------------------------------


@dataclass
class DrillSub:
    """One CRM subscription: it joins with BASIC-TV on one viewing point (ADD_USER +
    ACTIVATE_PRODUCTS), then adds and removes SPORTS in turn (one Icareus call each)."""

    id: str
    number: str
    version: int = 0
    sports: bool = False
    sports_adds: int = 0

    def snapshot(self) -> Subscription:
        self.version += 1
        services = [
            Service(
                id=f"{self.id}-basic",
                product_code="BASIC-TV",
                state=ServiceState.EFFECTIVE,
                distributor=VP,
            )
        ]
        if self.sports_adds:
            services.append(
                Service(
                    id=f"{self.id}-sports{self.sports_adds}",
                    product_code="SPORTS",
                    state=ServiceState.EFFECTIVE if self.sports else ServiceState.REMOVED,
                    distributor=VP,
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

    def next_event(self) -> LifecycleEvent:
        if self.version == 0:
            code = "BECOME_SUBSCRIBER"
        elif self.sports:
            self.sports = False
            code = "REMOVE_SERVICE"
        else:
            self.sports = True
            self.sports_adds += 1
            code = "ADD_SERVICE"
        return LifecycleEvent(
            event_id=str(uuid.uuid4()),
            occurred_at=int(time.time() * 1000),
            action=Action(code=code),
            subscription=self.snapshot(),
        )

    @property
    def account(self) -> str:
        return f"{self.number}-{VP}"

    def expected_products(self) -> set[str]:
        return {BASIC, SPORTS} if self.sports else {BASIC}


class Workload:
    """`subscriptions` CRM subscriptions; events come round-robin, version by version, so each
    partition carries many keys interleaved, each key in order."""

    def __init__(self, subscriptions: int, tag: str | None = None) -> None:
        self.tag = tag or uuid.uuid4().hex[:6]
        self.subs = [
            DrillSub(f"dr-{self.tag}-{i:05d}", f"D{self.tag}{i:05d}") for i in range(subscriptions)
        ]
        self._next = 0

    def next_event(self) -> LifecycleEvent:
        sub = self.subs[self._next % len(self.subs)]
        self._next += 1
        return sub.next_event()

    @property
    def keys(self) -> set[bytes]:
        return {s.id.encode() for s in self.subs}

    def expected_state(self) -> dict[str, set[str]]:
        """Icareus account -> products, from CRM's final snapshots alone."""
        return {s.account: s.expected_products() for s in self.subs if s.version > 0}

    def expected_requests(self) -> int:
        """ADD_USER + ACTIVATE_PRODUCTS on joining, one call per later event."""
        return sum(2 + (s.version - 1) for s in self.subs if s.version > 0)


class Stream(threading.Thread):
    """CRM publishing `workload` events at `rate` per second (None: as fast as the producer
    takes them) until `limit` events or `stop()`. The producer is idempotent and keeps trying
    through a broker outage (librdkafka buffers and resends); delivery failures are counted."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        workload: Workload,
        rate: float | None,
        limit: int | None,
        hold_at: int | None = None,
    ) -> None:
        super().__init__(name="crm-stream", daemon=True)
        self.hold_at = hold_at  # pause after this many events until `release()`
        self._released = threading.Event()
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 600_000,
                "partitioner": "murmur2_random",
            }
        )
        self.topic = topic
        self.workload = workload
        self.rate = rate
        self.limit = limit
        self.published = 0
        self.delivered = 0
        self.failed: list[str] = []
        self.last_offsets: dict[int, int] = {}
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        started = time.monotonic()
        while not self._halt.is_set() and (self.limit is None or self.published < self.limit):
            if self.hold_at is not None and self.published >= self.hold_at:
                if not self._released.is_set():
                    self.producer.poll(0.05)
                    continue
                self.hold_at = None  # and the pace goes on from here
                if self.rate is not None:
                    started = time.monotonic() - self.published / self.rate
            if self.rate is not None:
                wait = started + self.published / self.rate - time.monotonic()
                if wait > 0:  # (poll with a negative timeout would wait forever)
                    self.producer.poll(min(0.05, wait))
                    continue
            ev = self.workload.next_event()
            value = CODEC.encode_event(ev)
            while True:
                try:
                    self.producer.produce(
                        self.topic,
                        key=ev.subscription.id.encode(),
                        value=value,
                        on_delivery=self._delivered,
                    )
                    break
                except BufferError:
                    self.producer.poll(0.1)
            self.published += 1
            self.producer.poll(0)
        while self.producer.flush(1.0) > 0:
            pass

    def _delivered(self, err: Any, msg: Any) -> None:
        with self._lock:
            if err is not None:
                self.failed.append(str(err))
                return
            self.delivered += 1
            p = msg.partition()
            self.last_offsets[p] = max(self.last_offsets.get(p, -1), msg.offset())

    def release(self) -> None:
        self._released.set()

    def held(self) -> bool:
        return self.hold_at is not None and self.published >= self.hold_at

    def stop(self) -> None:
        self._halt.set()

    def finish(self, timeout: float = CONVERGE_SECONDS) -> None:
        """Stop publishing (or wait for `limit`), and wait until every event is acknowledged."""
        if self.limit is None:
            self.stop()
        self.join(timeout)
        if self.is_alive():
            faulthandler.dump_traceback(all_threads=True)
        assert not self.is_alive(), f"CRM's producer did not finish ({self.published} published)"
        assert not self.failed, f"events not delivered: {self.failed[:3]}"
        assert self.delivered == self.published


class ResultWatch(threading.Thread):
    """A CRM reader of the results topic (read_committed): when each partition last delivered a
    record, and how many arrived. It is what CRM sees: a stalled partition is a gap here."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="result-watch", daemon=True)
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"drill-watch-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        self.consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
        )
        self.count = 0
        self.arrivals: dict[int, list[float]] = defaultdict(list)
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                msgs = self.consumer.consume(num_messages=1000, timeout=0.2)
                now = time.monotonic()
                with self._lock:
                    for m in msgs:
                        if m.error() is None:
                            self.count += 1
                            self.arrivals[m.partition()].append(now)
        finally:
            self.consumer.close()

    def first_after(self, partition: int, at: float) -> float | None:
        with self._lock:
            later = [t for t in self.arrivals[partition] if t > at]
        return min(later) if later else None

    def first_any_after(self, at: float) -> float | None:
        times = [t for p in range(PARTITIONS) if (t := self.first_after(p, at)) is not None]
        return min(times) if times else None

    def stop(self) -> None:
        self._halt.set()
        self.join(15)


# --- processes ------------------------------------------------------------------------------


def drill_config(bootstrap: str, icareus_url: str, **icareus: Any) -> dict[str, Any]:
    """harness.bridge_config on 6 partitions, with unique replay log and transactional ids."""
    cfg = bridge_config(bootstrap, icareus_url)
    unique = uuid.uuid4().hex[:8]
    cfg["kafka"].update({"partitions": PARTITIONS, "transactional_id_prefix": f"drill-{unique}"})
    cfg["topics"]["replay_log"] = f"{cfg['topics']['input']}-replay-log"
    cfg["icareus"].update(
        {
            "connect_timeout_seconds": 2.0,
            "read_timeout_seconds": 2.0,
            "total_timeout_seconds": 4.0,
            "max_in_flight": 64,
        }
    )
    for key, value in icareus.items():
        if isinstance(value, dict):
            cfg["icareus"][key].update(value)
        else:
            cfg["icareus"][key] = value
    return cfg


def scaled(cfg: dict[str, Any], n: int, workdir: Path) -> list[Bridge]:
    """`n` bridge processes in the same groups, each with instance ids of its own."""
    out = []
    for i in range(n):
        mine = json.loads(json.dumps(cfg))
        mine["http"]["port"] = _free_port()
        mine["planner"]["instance_id"] = f"{cfg['planner']['instance_id']}-{i}"
        mine["dispatcher"]["instance_id"] = f"{cfg['dispatcher']['instance_id']}-{i}"
        folder = workdir / f"bridge-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        out.append(Bridge(mine, folder))
    return out


def _free_port() -> int:
    from tests.e2e.harness import free_port

    return free_port()


def start_simulator(config_path: Path, **faults: Any) -> SimulatorHandle:
    """The Icareus simulator as a process of its own (the key travels in its environment)."""
    return start_simulator_process(
        "127.0.0.1",
        0,
        org_id="1001",
        key="e2e-key",
        config_path=config_path,
        faults=faults or None,
    )


def stop_all(bridges: Iterable[Bridge]) -> None:
    for b in bridges:
        b.stop_quietly()


def ready(bridge: Bridge) -> bool | None:
    """/readyz: True, False, or None when the process does not answer at all."""
    try:
        with urllib.request.urlopen(bridge.http + "/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except urllib.error.HTTPError:
        return False
    except OSError:
        return None


class ReadyWatch(threading.Thread):
    """Polls /readyz of a bridge, keeping each change with its time."""

    def __init__(self, bridge: Bridge) -> None:
        super().__init__(name="ready-watch", daemon=True)
        self.bridge = bridge
        self.changes: list[tuple[float, bool | None]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            state = ready(self.bridge)
            if not self.changes or self.changes[-1][1] != state:
                self.changes.append((time.monotonic(), state))
            self._halt.wait(0.25)

    def went_false_between(self, start: float, end: float) -> bool:
        return any(start <= t <= end and s is False for t, s in self.changes)

    def true_again_after(self, at: float) -> float | None:
        """When /readyz was last seen turning true after `at`."""
        later = [t for t, s in self.changes if t >= at and s is True]
        return later[0] if later else None

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


_ADMINS: dict[str, AdminClient] = {}


def group_assignment(bootstrap: str, group: str) -> dict[str, set[int]]:
    """group.instance.id -> partitions, as the group coordinator has them now."""
    admin = _ADMINS.get(bootstrap)
    if admin is None:
        admin = _ADMINS[bootstrap] = AdminClient({"bootstrap.servers": bootstrap})
    desc = admin.describe_consumer_groups([group])[group].result(timeout=15)
    out: dict[str, set[int]] = {}
    for m in desc.members:
        parts = {tp.partition for tp in (m.assignment.topic_partitions or [])}
        out.setdefault(m.group_instance_id or m.member_id, set()).update(parts)
    return out


# --- reading to the end ---------------------------------------------------------------------


def committed_records(bootstrap: str, topic: str, keys: set[bytes] | None = None) -> list[Any]:
    """Every committed record of `topic` (of `keys`), read until the end of each partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"drill-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        pending = set()
        for p in range(PARTITIONS):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
            if high > low:
                pending.add(p)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(pending)])
        out: list[Any] = []
        deadline = time.monotonic() + CONVERGE_SECONDS
        while pending:
            assert time.monotonic() < deadline, f"{topic}: partitions {pending} not read to the end"
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                err = msg.error()
                if err is None:
                    if keys is None or msg.key() in keys:
                        out.append(msg)
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                else:
                    raise AssertionError(f"{topic}: {err}")
        return out
    finally:
        consumer.close()


def _ends(bootstrap: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"drill-e-{uuid.uuid4().hex[:8]}"})
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=15)[1]
            for p in range(PARTITIONS)
        }
    finally:
        c.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=15)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def committed_tail(bootstrap: str, topic: str, window: int = 2000) -> tuple[dict[int, int], bool]:
    """Per partition, the offset of its last committed record (read_committed, from the tail:
    a transactional topic ends in a commit or abort marker, not in a record); and whether every
    partition is stable, i.e. no transaction is open in it (a read_committed reader reaches the
    high watermark, not a last stable offset held back by an open transaction)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"drill-tail-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        marks = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
            for p in range(PARTITIONS)
        }
        pending = {p for p, (low, high) in marks.items() if high > low}
        consumer.assign(
            [TopicPartition(topic, p, max(marks[p][0], marks[p][1] - window)) for p in pending]
        )
        last: dict[int, int] = {}
        reached: dict[int, int] = {}
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                err = msg.error()
                if err is None:
                    last[msg.partition()] = msg.offset()
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                    reached[msg.partition()] = msg.offset()
        assert not pending, f"{topic}: tail of partitions {pending} not read"
        stable = all(reached.get(p, high) >= high for p, (low, high) in marks.items() if high > low)
        return last, stable
    finally:
        consumer.close()


def caught_up(bootstrap: str, cfg: dict[str, Any]) -> bool:
    """The planner has committed past every event, the dispatcher past every committed
    request, and no transaction is open on the outputs: nothing is in flight any more."""
    try:
        t = cfg["topics"]
        ends = _ends(bootstrap, t["input"])
        done = committed_offsets(bootstrap, cfg["planner"]["group_id"], t["input"])
        if any(end > 0 and done[p] < end for p, end in ends.items()):
            return False
        last, stable = committed_tail(bootstrap, t["requests"])
        if not stable:
            return False
        done = committed_offsets(bootstrap, cfg["dispatcher"]["group_id"], t["requests"])
        if not all(done[p] > offset for p, offset in last.items()):
            return False
        return all(committed_tail(bootstrap, t[name])[1] for name in ("results", "dlq", "state"))
    except Exception:  # the broker is coming back: not caught up yet
        return False


def settled(
    bootstrap: str, cfg: dict[str, Any], workload: Workload, dead_letters_finish: bool = True
) -> bool:
    """`caught_up`, and what CRM can read agrees: every request CRM's events call for is
    visible, and each has a result (or a dead letter, if `dead_letters_finish`). A partition
    behind a dead process's open transaction hides what came after it until the broker aborts
    that transaction."""
    if not caught_up(bootstrap, cfg):
        return False
    try:
        t, keys = cfg["topics"], workload.keys
        planned = {
            CODEC.decode_request(m.value()).request_id
            for m in committed_records(bootstrap, t["requests"], keys)
        }
        if len(planned) != workload.expected_requests():
            return False
        finished = {
            CODEC.decode_result(m.value()).request_id
            for m in committed_records(bootstrap, t["results"], keys)
        }
        dead = {
            CODEC.decode_request(m.value()).request_id
            for m in committed_records(bootstrap, t["dlq"], keys)
        }
        return planned <= (finished | dead if dead_letters_finish else finished)
    except Exception:  # the broker is coming back
        return False


# --- the checks and the figures -----------------------------------------------------------------


@dataclass
class Outcome:
    """What a drill's topics and Icareus hold at the end; `check()` asserts lost = 0 and
    duplicated = 0, and `figures()` is the drill's row."""

    events: int
    requests: int
    distinct_requests: int
    results: int
    missing_results: int
    extra_results: int
    by_state: Counter[str]
    dead_letters: int
    dlq_reasons: Counter[str]
    add_user_per_account: Counter[str]
    state_differences: list[str]
    effects: int
    duplicates_suppressed: int
    errors_injected: int
    expected_requests: int
    replayed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        missing_plans = max(0, self.expected_requests - self.distinct_requests)
        return (
            self.missing_results
            + missing_plans
            + sum(1 for d in self.state_differences if d.startswith("missing"))
        )

    @property
    def duplicated(self) -> int:
        twice = sum(n - 1 for n in self.add_user_per_account.values() if n > 1)
        completed = self.by_state.get("COMPLETED", 0)
        return (
            self.extra_results
            + twice
            + max(0, self.effects - completed)
            + (self.requests - self.distinct_requests - self.replayed)
        )

    def check(self, *, dead_letters_expected: bool = False) -> None:
        assert self.distinct_requests == self.expected_requests, (
            f"planned {self.distinct_requests} requests, CRM's events call for "
            f"{self.expected_requests}"
        )
        assert self.missing_results == 0, f"{self.missing_results} requests without a result"
        assert self.extra_results == 0, f"{self.extra_results} requests with a second result"
        assert set(self.by_state) == {"COMPLETED"}, self.by_state
        twice = {a: n for a, n in self.add_user_per_account.items() if n != 1}
        assert not twice, f"accounts not registered exactly once: {list(twice.items())[:5]}"
        assert not self.state_differences, self.state_differences[:10]
        assert self.effects == self.by_state["COMPLETED"], (
            f"Icareus applied {self.effects} effects for {self.by_state['COMPLETED']} completed "
            "requests"
        )
        if not dead_letters_expected:
            assert self.dead_letters == 0, self.dlq_reasons
        assert self.lost == 0 and self.duplicated == 0


def outcome(
    bootstrap: str,
    cfg: dict[str, Any],
    workload: Workload,
    admin: SimulatorAdmin,
    events: int,
    stats_before: dict[str, Any],
) -> Outcome:
    keys = workload.keys
    t = cfg["topics"]
    request_records = committed_records(bootstrap, t["requests"], keys)
    requests = [CODEC.decode_request(m.value()) for m in request_records]
    replayed_copies = sum(
        1 for m in request_records if any(k == "dlq.replay.of" for k, _ in (m.headers() or []))
    )
    results = [
        CODEC.decode_result(m.value()) for m in committed_records(bootstrap, t["results"], keys)
    ]
    dead = committed_records(bootstrap, t["dlq"], keys)
    request_ids = {r.request_id for r in requests}
    per_request = Counter(r.request_id for r in results)
    add_user = Counter(
        r.account_key
        for r in results
        if r.type.value == "ADD_USER" and r.life_cycle_state.value == "COMPLETED"
    )
    planned_add_user = Counter(
        r.account_key
        for r in {q.request_id: q for q in requests}.values()
        if r.type.value == "ADD_USER"
    )
    for account, n in planned_add_user.items():
        add_user[account] = max(add_user[account], n)
    reasons: Counter[str] = Counter()
    for m in dead:
        for k, v in m.headers() or []:
            if k == "dlq.reason":
                reasons[bytes(v).decode()] += 1
    stats = admin.stats()
    return Outcome(
        events=events,
        requests=len(requests),
        distinct_requests=len(request_ids),
        results=len(results),
        missing_results=len(request_ids - set(per_request)),
        extra_results=sum(n - 1 for n in per_request.values() if n > 1)
        + len(set(per_request) - request_ids),
        by_state=Counter(
            r.life_cycle_state.value for r in {r.request_id: r for r in results}.values()
        ),
        dead_letters=len(dead),
        dlq_reasons=reasons,
        add_user_per_account=add_user,
        state_differences=state_differences(workload, admin),
        effects=stats["effects"] - stats_before.get("effects", 0),
        duplicates_suppressed=stats["duplicates_suppressed"]
        - stats_before.get("duplicates_suppressed", 0),
        errors_injected=stats["errors_injected"] - stats_before.get("errors_injected", 0),
        expected_requests=workload.expected_requests(),
        replayed=replayed_copies,
    )


def state_differences(workload: Workload, admin: SimulatorAdmin) -> list[str]:
    expected = workload.expected_state()
    prefix = f"D{workload.tag}"
    held = {
        u["externalId"]: set(u["products"])
        for u in admin.state()["users"]
        if u["externalId"].startswith(prefix)
    }
    diffs = [f"missing user {a}" for a in sorted(expected.keys() - held.keys())]
    diffs += [f"unexpected user {a}" for a in sorted(held.keys() - expected.keys())]
    diffs += [
        f"{a}: expected {sorted(expected[a])}, holds {sorted(held[a])}"
        for a in sorted(expected.keys() & held.keys())
        if expected[a] != held[a]
    ]
    return diffs


def write_figures(name: str, size: str, figures: dict[str, Any]) -> None:
    """var/drills/<size>/<name>.json, read by tools/drill_figures.py into docs/RELIABILITY.md."""
    folder = FIGURES_DIR / size
    folder.mkdir(parents=True, exist_ok=True)
    figures = {
        "drill": name,
        "size": size,
        "finished_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": round(os.getloadavg()[0], 1),
        **figures,
    }
    (folder / f"{name}.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


def base_figures(o: Outcome, seconds: float) -> dict[str, Any]:
    return {
        "events": o.events,
        "requests": o.distinct_requests,
        "results": o.results,
        "duration_seconds": round(seconds, 1),
        "lost": o.lost,
        "duplicated_effects": o.duplicated,
        "dead_letters": o.dead_letters,
        "dlq_reasons": dict(o.dlq_reasons),
        "duplicates_suppressed": o.duplicates_suppressed,
        "errors_injected": o.errors_injected,
        "replayed": o.replayed,
        "accounts": len(o.add_user_per_account),
    }


def kill(bridge: Bridge) -> None:
    assert bridge.proc is not None and bridge.proc.poll() is None, bridge.log_tail()
    os.kill(bridge.proc.pid, signal.SIGKILL)
    bridge.proc.wait(timeout=30)
