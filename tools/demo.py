"""`make demo`: a scripted CRM story against the running `make run` stack, then a check that
Icareus (the simulator) ends up holding exactly what CRM's final snapshots say it should.

The story: ~200 subscriptions become subscribers with 1-4 viewing points (a box and a card per
viewing point, each on its own Icareus distributor), then services are added and swapped, boxes
swapped, subscriptions deactivated and activated again, some terminated; one registration is
refused by Icareus (a scripted fault on the simulator's addUser; that subscriber's next action
registers the account again) and one box is already in use by another subscriber
(DEVICE_IN_USE). Events are the project's single-object Avro, keyed by
subscription id, versions growing per subscription. The demo then waits until every planned
request has a result (read_committed), prints what happened, and compares the simulator's state
with the expected state computed from the snapshots alone (not with `plan`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from icareus_bridge.codec import Codec
from icareus_bridge.config import Settings, load_settings
from icareus_bridge.core.model import (
    EFFECTIVE_SERVICE_STATES,
    TERMINATED_SUBSCRIPTION_STATES,
    Action,
    InstalledItem,
    LifecycleEvent,
    ProvisioningRequest,
    ProvisioningResult,
    Service,
    ServiceState,
    Subscriber,
    Subscription,
    SubscriptionState,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
STACK_FILE = REPO_ROOT / "var" / "run-local" / "stack.json"
KAFKA_UP_PROPERTIES = REPO_ROOT / "var" / "kafka" / "server.properties"
DEFAULT_CONFIG = REPO_ROOT / "config" / "bridge.yaml"
EFFECTIVE_SUBSCRIPTION = frozenset(
    {SubscriptionState.EFFECTIVE, SubscriptionState.SHORT_TERM_EFFECTIVE}
)
REFUSED_CODE = "INVALID_PARAMETER"  # what the simulator answers the one refused addUser
FIRST_NAMES = ("Maria", "Andreas", "Eleni", "Nikos", "Sofia", "Giorgos", "Anna", "Costas")
LAST_NAMES = ("Georgiou", "Christou", "Ioannou", "Demetriou", "Nicolaou", "Constantinou")
CITIES = (("Nicosia", "1010"), ("Limassol", "3030"), ("Larnaca", "6020"), ("Paphos", "8010"))


# --- where the stack is ------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _stack_file() -> dict[str, Any]:
    try:
        info: dict[str, Any] = json.loads(STACK_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if _pid_alive(int(info.get("pid", 0))) else {}


def _kafka_up_bootstrap() -> str | None:
    try:
        for line in KAFKA_UP_PROPERTIES.read_text(encoding="utf-8").splitlines():
            if line.startswith("listeners="):
                return line.split("=", 1)[1].split(",")[0].split("//", 1)[1]
    except OSError:
        return None
    return None


def resolve_bootstrap(args: argparse.Namespace, settings: Settings) -> tuple[str, str]:
    """(bootstrap servers, where that came from)."""
    if args.bootstrap:
        return args.bootstrap, "--bootstrap"
    stack = _stack_file()
    if stack.get("bootstrap_servers"):
        return str(stack["bootstrap_servers"]), str(STACK_FILE.relative_to(REPO_ROOT))
    for name in ("ICAREUS_BRIDGE__KAFKA__BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"):
        if os.environ.get(name):
            return os.environ[name], name
    up = _kafka_up_bootstrap()
    if up:
        return up, "make kafka-up"
    return settings.kafka.bootstrap_servers, "config"


def resolve_admin_url(args: argparse.Namespace, settings: Settings) -> str:
    if args.admin_url:
        return str(args.admin_url).rstrip("/")
    stack = _stack_file()
    if stack.get("simulator_admin_url"):
        return str(stack["simulator_admin_url"]).rstrip("/")
    root = settings.icareus.base_url.split("://", 1)
    host = root[1].split("/", 1)[0]
    return f"{root[0]}://{host}/_sim"


# --- the story -------------------------------------------------------------------------------


@dataclass
class Sub:
    """One CRM subscription as the story changes it; `snapshot()` is what CRM publishes."""

    id: str
    number: str
    subscriber: Subscriber
    version: int = 0
    state: SubscriptionState = SubscriptionState.EFFECTIVE
    services: list[Service] = field(default_factory=list)
    items: list[InstalledItem] = field(default_factory=list)
    counter: int = 0

    def next_id(self, kind: str) -> str:
        self.counter += 1
        return f"{self.id}-{kind}{self.counter}"

    def snapshot(self) -> Subscription:
        self.version += 1
        return Subscription(
            id=self.id,
            number=self.number,
            version=self.version,
            state=self.state,
            subscriber=self.subscriber,
            services=tuple(self.services),
            installed_items=tuple(self.items),
        )


@dataclass
class Step:
    """One event to publish: the action code and the snapshot after it."""

    sub: Sub
    code: str
    snapshot: Subscription
    classification: str | None = None


@dataclass
class Story:
    tag: str
    subs: list[Sub]
    phases: list[tuple[str, list[Step]]]
    refused_sub: Sub  # its first ADD_USER is refused by Icareus, its next action retries it
    in_use: tuple[Sub, str]  # (subscription whose box serial another subscriber already has)


class StoryWriter:
    def __init__(self, settings: Settings, count: int, seed: int, tag: str) -> None:
        provider = settings.provider
        self.rng = random.Random(seed)
        self.tag = tag
        self.vps = [d.code for d in provider.distributors][: provider.max_viewing_points]
        self.allowed = {d.code: set(d.allowed_products) for d in provider.distributors}
        self.products = list(provider.service_mapping)
        self.count = count

    def _ok_products(self, vp: str) -> list[str]:
        allowed = self.allowed.get(vp) or set(self.products)
        return [p for p in self.products if p in allowed]

    def _new_sub(self, i: int) -> Sub:
        rng = self.rng
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        city, postal = rng.choice(CITIES)
        return Sub(
            id=f"demo-{self.tag}-{i:04d}",
            number=f"S{self.tag}{i:04d}",
            subscriber=Subscriber(
                account_number=f"AC{self.tag}{i:04d}",
                first_name=first,
                last_name=last,
                email=f"{first.lower()}.{last.lower()}{i}@example.com",
                phone=f"+3579{rng.randrange(1_000_000, 9_999_999)}",
                country_code="CY",
                postal_code=postal,
                city=city,
            ),
        )

    def _box(self, sub: Sub, vp: str, good: str | None = None) -> InstalledItem:
        good = good or self.rng.choice(("STB-4K", "STB-4K", "STB-HD", "OTT-STICK"))
        serial = f"{good.split('-')[0][:3]}{self.tag}{uuid.uuid4().hex[:8].upper()}"
        return InstalledItem(
            id=sub.next_id("item"), serial_number=serial, physical_good_code=good, distributor=vp
        )

    def _card(self, sub: Sub, vp: str) -> InstalledItem:
        serial = f"SC{self.tag}{uuid.uuid4().hex[:8].upper()}"
        return InstalledItem(
            id=sub.next_id("item"),
            serial_number=serial,
            physical_good_code="SMARTCARD",
            distributor=vp,
        )

    def _service(self, sub: Sub, vp: str, product: str) -> Service:
        return Service(
            id=sub.next_id("svc"),
            product_code=product,
            state=ServiceState.EFFECTIVE,
            distributor=vp,
        )

    def _onboard(self, sub: Sub, vps: int) -> Step:
        for vp in self.vps[:vps]:
            sub.items += [self._box(sub, vp), self._card(sub, vp)]
            sub.services.append(self._service(sub, vp, "BASIC-TV"))
            extras = [p for p in self._ok_products(vp) if p != "BASIC-TV"]
            for product in self.rng.sample(extras, k=min(len(extras), self.rng.randint(0, 2))):
                sub.services.append(self._service(sub, vp, product))
        return Step(sub, "BECOME_SUBSCRIBER", sub.snapshot())

    def write(self) -> Story:
        rng = self.rng
        subs = [self._new_sub(i) for i in range(self.count)]
        refused, victim, rest = subs[0], subs[1], subs[2:]

        # Phase 1: one registration that Icareus refuses (one viewing point, one addUser).
        phase1 = [self._onboard(refused, 1)]

        # Phase 2: everyone else becomes a subscriber, 1-4 viewing points each. One of them
        # also has a box of another provider's distributor (ignored by the bridge) and one a
        # product its viewing point does not allow (PRODUCT_NOT_ALLOWED).
        phase2 = []
        for n, sub in enumerate(rest):
            vps = rng.choice((1, 1, 2, 2, 2, 3, 3, 4))
            if n == 0:
                vps = max(vps, 3)
                sub.services.append(self._service(sub, self.vps[2], "SPORTS"))
            if n == 1:
                sub.items.append(self._box(sub, "OTHER-PROVIDER-VP1", "STB-HD"))
            phase2.append(self._onboard(sub, vps))

        # Phase 3: the life of a subscription base.
        phase3: list[Step] = []
        pool = rest[2:]
        rng.shuffle(pool)
        owner = pool.pop()  # keeps its box: the victim below tries to register the same one
        terminated = set(id(s) for s in pool[:20])
        for sub in pool[:60]:  # ADD_SERVICE
            vp = rng.choice(sorted({s.distributor for s in sub.services if s.distributor}))
            have = {s.product_code for s in sub.services if s.distributor == vp}
            choices = [p for p in self._ok_products(vp) if p not in have]
            if choices:
                sub.services.append(self._service(sub, vp, rng.choice(choices)))
                phase3.append(Step(sub, "ADD_SERVICE", sub.snapshot()))
        for sub in pool[40:80]:  # SWAP_SERVICE: a channel package for another
            old = next(s for s in sub.services if s.state is ServiceState.EFFECTIVE)
            have = {s.product_code for s in sub.services if s.distributor == old.distributor}
            choices = [p for p in self._ok_products(old.distributor or "") if p not in have]
            if not choices:
                continue
            sub.services = [
                s.model_copy(update={"state": ServiceState.SWAPPED}) if s is old else s
                for s in sub.services
            ]
            sub.services.append(self._service(sub, old.distributor or "", rng.choice(choices)))
            phase3.append(Step(sub, "SWAP_SERVICE", sub.snapshot()))
        for sub in pool[70:100]:  # SWAP_INSTALLED_ITEM: a faulty box replaced
            old_box = next(i for i in sub.items if i.physical_good_code != "SMARTCARD")
            new_box = self._box(sub, old_box.distributor or "", "STB-4K")
            sub.items = [new_box if i is old_box else i for i in sub.items]
            phase3.append(Step(sub, "SWAP_INSTALLED_ITEM", sub.snapshot()))
        for n, sub in enumerate(pool[90:125]):  # DEACTIVATE (unpaid), most ACTIVATE again
            effective = {s.id for s in sub.services if s.state is ServiceState.EFFECTIVE}
            sub.state = SubscriptionState.NOT_EFFECTIVE
            sub.services = [
                s.model_copy(update={"state": ServiceState.NOT_EFFECTIVE})
                if s.id in effective
                else s
                for s in sub.services
            ]
            phase3.append(Step(sub, "DEACTIVATE_SUBSCRIPTION", sub.snapshot()))
            if n < 25:
                sub.state = SubscriptionState.EFFECTIVE
                sub.services = [
                    s.model_copy(update={"state": ServiceState.EFFECTIVE})
                    if s.id in effective
                    else s
                    for s in sub.services
                ]
                phase3.append(Step(sub, "ACTIVATE_SUBSCRIPTION", sub.snapshot()))
        for sub in pool[:20]:  # TERMINATE: some after changes above, all in order per key
            assert id(sub) in terminated
            sub.state = SubscriptionState.CANCELLED
            sub.services = [
                s.model_copy(update={"state": ServiceState.CANCELLED})
                if s.state is not ServiceState.SWAPPED
                else s
                for s in sub.services
            ]
            phase3.append(Step(sub, "TERMINATE_SUBSCRIPTION", sub.snapshot(), "CANCEL"))
        # The refused subscriber buys another package: the account is registered again (ADD_USER,
        # then its boxes and every product), Icareus no longer refusing.
        refused.services.append(self._service(refused, self.vps[0], "MOVIES"))
        phase3.append(Step(refused, "ADD_SERVICE", refused.snapshot()))
        # A subscriber whose box is registered to another subscriber already.
        owner_box = next(i for i in owner.items if i.physical_good_code != "SMARTCARD")
        victim.services.append(self._service(victim, self.vps[0], "BASIC-TV"))
        victim.items += [
            owner_box.model_copy(update={"id": victim.next_id("item"), "distributor": self.vps[0]}),
            self._card(victim, self.vps[0]),
        ]
        phase3.append(Step(victim, "BECOME_SUBSCRIBER", victim.snapshot()))
        rng.shuffle(phase3)
        phase3.sort(key=lambda s: s.snapshot.version)  # per key in version order, keys mixed
        return Story(
            tag=self.tag,
            subs=subs,
            phases=[
                ("refused registration", phase1),
                ("become subscriber", phase2),
                ("changes", phase3),
            ],
            refused_sub=refused,
            in_use=(victim, owner_box.serial_number),
        )


# --- what Icareus should hold, from the final snapshots alone ---------------------------------


def expected_state(settings: Settings, story: Story) -> dict[str, dict[str, Any]]:
    """externalId -> {"products": set, "devices": {deviceId: deviceType}}.

    Per subscription's last snapshot: terminated -> no user; otherwise per Icareus distributor
    (first appearance order, at most max_viewing_points) with an effective mapped (and allowed)
    service or a mapped installed item, one user `<number>-<distributor>` holding those products
    and devices. The refused registration is retried by that subscriber's later ADD_SERVICE, so it
    ends like any other; the box already in use is not on the second subscriber's user."""
    provider = settings.provider
    allowed = {d.code: set(d.allowed_products) for d in provider.distributors}
    out: dict[str, dict[str, Any]] = {}
    for sub in story.subs:
        if sub.version == 0:
            continue
        if sub.state in TERMINATED_SUBSCRIPTION_STATES:
            continue
        accounts: dict[str, dict[str, Any]] = {}

        def account(vp: str, accounts: dict[str, dict[str, Any]] = accounts) -> dict[str, Any]:
            return accounts.setdefault(vp, {"products": set(), "devices": {}})

        for s in sub.services:
            vp = s.distributor
            if vp not in allowed or s.state not in EFFECTIVE_SERVICE_STATES:
                continue
            if sub.state not in EFFECTIVE_SUBSCRIPTION:
                continue
            if allowed[vp] and s.product_code not in allowed[vp]:
                continue
            pid = provider.service_mapping.get(s.product_code)
            if pid is not None:
                account(vp)["products"].add(pid)
        for i in sub.items:
            vp = i.distributor
            dtype = provider.physical_goods_mapping.get(i.physical_good_code)
            if vp in allowed and dtype is not None:
                account(vp)["devices"][i.serial_number] = dtype
        for vp in list(accounts)[: provider.max_viewing_points]:
            out[f"{sub.number}-{vp}"] = accounts[vp]
    victim, serial = story.in_use
    for key, acc in out.items():
        if key.startswith(victim.number + "-"):
            acc["devices"].pop(serial, None)
    return out


def observed_state(admin_url: str, tag: str) -> dict[str, dict[str, Any]]:
    state = httpx.get(admin_url + "/state", timeout=30).json()
    return {
        u["externalId"]: {
            "products": set(u["products"]),
            "devices": {d["deviceId"]: d["deviceType"] for d in u["devices"]},
        }
        for u in state["users"]
        if u["externalId"].startswith(f"S{tag}")
    }


def differences(expected: dict[str, Any], observed: dict[str, Any]) -> list[str]:
    diffs = []
    for key in sorted(expected.keys() - observed.keys()):
        diffs.append(f"missing user {key}: expected {_fmt(expected[key])}")
    for key in sorted(observed.keys() - expected.keys()):
        diffs.append(f"unexpected user {key}: holds {_fmt(observed[key])}")
    for key in sorted(expected.keys() & observed.keys()):
        e, o = expected[key], observed[key]
        if e["products"] != o["products"]:
            diffs.append(
                f"{key} products: expected {sorted(e['products'])}, has {sorted(o['products'])}"
            )
        if e["devices"] != o["devices"]:
            diffs.append(f"{key} devices: expected {e['devices']}, has {o['devices']}")
    return diffs


def _fmt(acc: dict[str, Any]) -> str:
    return f"products {sorted(acc['products'])}, devices {acc['devices']}"


# --- watching the topics -----------------------------------------------------------------------


class Watcher:
    """Reads requests, results and dead letters of this run's subscriptions (read_committed)."""

    def __init__(self, bootstrap: str, settings: Settings, codec: Codec, keys: set[str]) -> None:
        self.settings = settings
        self.codec = codec
        self.keys = {k.encode() for k in keys}
        self.requests: dict[str, ProvisioningRequest] = {}
        self.results: dict[str, tuple[ProvisioningResult, int]] = {}  # -> (result, record ts)
        self.dead_letters: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"icareus-demo-{uuid.uuid4().hex[:8]}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        t = settings.topics
        self.topics = (t.requests, t.results, t.dlq)
        self.start_offsets = self._ends(self.topics)
        self.consumer.assign(
            [TopicPartition(tp, p, off) for (tp, p), off in self.start_offsets.items()]
        )
        self.thread = threading.Thread(target=self._run, name="demo-watcher", daemon=True)
        self.thread.start()

    def _ends(self, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        try:
            meta = self.consumer.list_topics(timeout=10)
            ends = {}
            for topic in topics:
                if topic not in meta.topics:
                    raise SystemExit(f"demo: topic {topic} does not exist: is `make run` up?")
                for p in meta.topics[topic].partitions:
                    tp = TopicPartition(topic, p)
                    ends[(topic, p)] = self.consumer.get_watermark_offsets(tp, timeout=10)[1]
        except KafkaException as exc:
            raise SystemExit(f"demo: Kafka does not answer: {exc}") from None
        return ends

    def _run(self) -> None:
        t = self.settings.topics
        while not self._stop.is_set():
            for msg in self.consumer.consume(500, timeout=0.2):
                if msg.error() or msg.key() not in self.keys:
                    continue
                value = msg.value()
                if value is None:
                    continue
                with self.lock:
                    if msg.topic() == t.requests:
                        req = self.codec.decode_request(value)
                        self.requests[req.request_id] = req
                    elif msg.topic() == t.results:
                        res = self.codec.decode_result(value)
                        self.results.setdefault(res.request_id, (res, msg.timestamp()[1]))
                    else:
                        headers = {
                            str(k): v.decode() if isinstance(v, bytes) else str(v or "")
                            for k, v in list(msg.headers() or [])
                        }
                        self.dead_letters.append(headers)

    def pending(self) -> tuple[int, int, int]:
        """(requests seen, results for them, planner rejections seen)."""
        with self.lock:
            done = sum(1 for r in self.requests if r in self.results)
            planner_only = sum(1 for r in self.results if r not in self.requests)
            return len(self.requests), done, planner_only

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.consumer.close()


class PlannerProgress:
    """How far the planner's consumer group has committed on the input topic."""

    def __init__(self, bootstrap: str, settings: Settings) -> None:
        self.topic = settings.topics.input
        # Reads the group's committed offsets only: it never subscribes, so never joins.
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": settings.planner.group_id}
        )

    def caught_up(self, produced: dict[int, int]) -> tuple[int, int] | None:
        """(partitions the planner has committed past our last event in, partitions written);
        None while Kafka does not answer (a broker restart): the caller asks again later."""
        parts = [TopicPartition(self.topic, p) for p in produced]
        try:
            committed = self.consumer.committed(parts, timeout=10)
        except KafkaException:
            return None
        done = sum(1 for tp in committed if tp.offset > produced[tp.partition])
        return done, len(produced)

    def close(self) -> None:
        self.consumer.close()


# --- running it --------------------------------------------------------------------------------


class Publisher:
    def __init__(self, bootstrap: str, settings: Settings, codec: Codec) -> None:
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
        )
        self.topic = settings.topics.input
        self.codec = codec
        self.occurred_at: dict[str, int] = {}
        self.last_offset: dict[int, int] = {}
        self.by_action: Counter[str] = Counter()

    def publish(self, steps: list[Step]) -> None:
        for step in steps:
            now = int(time.time() * 1000)
            event = LifecycleEvent(
                event_id=str(uuid.uuid4()),
                occurred_at=now,
                action=Action(code=step.code, classification=step.classification),
                subscription=step.snapshot,
            )
            self.occurred_at[event.event_id] = now
            self.by_action[step.code] += 1
            self.producer.produce(
                self.topic,
                key=step.sub.id.encode(),
                value=self.codec.encode_event(event),
                on_delivery=self._delivered,
            )
            self.producer.poll(0)
        # Through a broker restart the producer keeps the events and resends them (it is
        # idempotent: no duplicates); only `message.timeout.ms` (5 min) makes it give up.
        waited = 0
        while self.producer.flush(5) != 0:
            waited += 5
            print(f"  waiting for Kafka to take the events ({waited} s)", flush=True)

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            raise SystemExit(f"demo: event not delivered: {err}")
        p = msg.partition()
        self.last_offset[p] = max(self.last_offset.get(p, -1), msg.offset())


def wait_phase(
    name: str, progress: PlannerProgress, publisher: Publisher, watcher: Watcher, timeout: float
) -> bool:
    """Until the planner has taken every event and every request seen has a result."""
    started = time.monotonic()
    deadline = started + timeout
    tty = sys.stdout.isatty()
    last_print = 0.0
    settled_since: float | None = None
    line = ""
    planned, parts = 0, len(publisher.last_offset)
    while time.monotonic() < deadline:
        answer = progress.caught_up(publisher.last_offset)
        kafka_note = "" if answer is not None else " (Kafka not answering, waiting)"
        if answer is not None:
            planned, parts = answer
        seen, done, planner_only = watcher.pending()
        line = (
            f"  {name}: planner {planned}/{parts} partitions caught up{kafka_note}, "
            f"results {done}/{seen} requests (+{planner_only} planner rejections), "
            f"{time.monotonic() - started:.1f} s"
        )
        now = time.monotonic()
        if tty:
            print("\r" + line.ljust(110), end="", flush=True)
        elif now - last_print >= 5.0:
            print(line, flush=True)
            last_print = now
        if answer is not None and planned == parts and done == seen:
            settled_since = settled_since or now
            if now - settled_since >= 1.5:  # results of the last commit interval are in
                print(("\r" if tty else "") + line.ljust(110), flush=True)
                return True
        else:
            settled_since = None
        time.sleep(0.3)
    print(("\r" if tty else "") + line + "  TIMED OUT", flush=True)
    return False


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _icareus_code(result: ProvisioningResult) -> str:
    code = result.error_code or "?"
    if code == "ICAREUS_REJECTED" and result.error_description:
        # "Icareus <operation> refused: <CODE>: <message>"
        parts = result.error_description.split("refused: ", 1)
        if len(parts) == 2:
            code += f" ({parts[1].split(':', 1)[0]})"
    return code


def summary(publisher: Publisher, watcher: Watcher, seconds: float) -> list[ProvisioningResult]:
    with watcher.lock:
        results = dict(watcher.results)
        requests = dict(watcher.requests)
        dead = list(watcher.dead_letters)
    print(f"\nevents published: {sum(publisher.by_action.values())} in {seconds:.1f} s")
    for code, n in sorted(publisher.by_action.items()):
        print(f"  {code:<26} {n:>5}")

    table: dict[str, Counter[str]] = defaultdict(Counter)
    for res, _ in results.values():
        state = res.life_cycle_state.value
        if res.request_id not in requests and state == "REJECTED":
            state = "PLANNER_REJ"
        table[res.type.value][state] += 1
    pending = [r for r in requests if r not in results]
    for rid in pending:
        table[requests[rid].type.value]["PENDING"] += 1
    cols = ["COMPLETED", "REJECTED", "PLANNER_REJ", "PENDING"]
    print("\nrequests by type and state (PLANNER_REJ: rejected by the planner, nothing sent)")
    print(f"  {'type':<18}" + "".join(f"{c:>13}" for c in cols) + f"{'total':>8}")
    totals: Counter[str] = Counter()
    for rtype in sorted(table):
        row = table[rtype]
        totals.update(row)
        print(f"  {rtype:<18}" + "".join(f"{row[c]:>13}" for c in cols) + f"{sum(row.values()):>8}")
    print(
        f"  {'all':<18}" + "".join(f"{totals[c]:>13}" for c in cols) + f"{sum(totals.values()):>8}"
    )

    rejections = Counter(
        _icareus_code(r) for r, _ in results.values() if r.life_cycle_state.value == "REJECTED"
    )
    print("\nrejections by code")
    for code, n in sorted(rejections.items()):
        print(f"  {code:<40} {n:>5}")
    if not rejections:
        print("  (none)")

    latencies = [
        ts - publisher.occurred_at[res.event_id]
        for res, ts in results.values()
        if res.event_id in publisher.occurred_at and res.request_id in requests
    ]
    print(
        f"\nevent -> result latency (sent requests, event occurred_at to result record "
        f"timestamp; each phase is published as one burst, so this includes queueing behind "
        f"it; n={len(latencies)}): p50 {percentile(latencies, 0.5):.0f} ms, "
        f"p99 {percentile(latencies, 0.99):.0f} ms, max {max(latencies, default=0):.0f} ms"
    )
    print(f"dead letters for these subscriptions: {len(dead)}")
    for headers in dead[:5]:
        print(
            f"  {headers.get('dlq.stage')} {headers.get('dlq.reason')}: "
            f"{headers.get('dlq.error.message', '')[:100]}"
        )
    return [r for r, _ in results.values()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="PATH")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers")
    parser.add_argument("--admin-url", default=None, help="simulator admin root (…/_sim)")
    parser.add_argument("--subscriptions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per phase")
    args = parser.parse_args(argv)

    settings = load_settings(args.config)
    bootstrap, source = resolve_bootstrap(args, settings)
    admin_url = resolve_admin_url(args, settings)
    tag = time.strftime("%H%M%S") + uuid.uuid4().hex[:2].upper()
    print(f"Kafka {bootstrap} (from {source}); simulator admin {admin_url}; run tag {tag}")
    try:
        faults_before = httpx.get(admin_url + "/faults", timeout=10).json()
    except httpx.HTTPError as exc:
        print(f"demo: the simulator does not answer at {admin_url}: {exc}", file=sys.stderr)
        return 1

    story = StoryWriter(settings, args.subscriptions, args.seed, tag).write()
    codec = Codec.from_settings(settings)
    watcher = Watcher(bootstrap, settings, codec, {s.id for s in story.subs})
    progress = PlannerProgress(bootstrap, settings)
    publisher = Publisher(bootstrap, settings, codec)
    started = time.monotonic()
    ok = True
    try:
        for name, steps in story.phases:
            if name == "refused registration":
                httpx.post(
                    admin_url + "/faults",
                    json={
                        "error_code": REFUSED_CODE,
                        "script": [{"fault": "status_error", "action": "addUser", "times": 1}],
                    },
                    timeout=10,
                ).raise_for_status()
            print(f"phase {name}: {len(steps)} events")
            publisher.publish(steps)
            ok = wait_phase(name, progress, publisher, watcher, args.timeout) and ok
            if name == "refused registration":
                httpx.post(
                    admin_url + "/faults",
                    json={"error_code": faults_before.get("error_code", "INTERNAL_ERROR")},
                    timeout=10,
                ).raise_for_status()
            if not ok:
                break
        elapsed = time.monotonic() - started
        summary(publisher, watcher, elapsed)
    finally:
        watcher.close()
        progress.close()

    expected = expected_state(settings, story)
    observed = observed_state(admin_url, tag)
    diffs = differences(expected, observed)
    print(
        f"\nfinal state check: {len(expected)} Icareus users expected from CRM's final "
        f"snapshots, {len(observed)} held by the simulator for this run"
    )
    if diffs:
        print(f"  FAILED: {len(diffs)} differences")
        for d in diffs[:40]:
            print(f"  - {d}")
        if len(diffs) > 40:
            print(f"  ... and {len(diffs) - 40} more")
    else:
        print("  PASSED: the simulator holds exactly what CRM's final snapshots imply")
    if not ok:
        print("demo: not every planned request got a result in time", file=sys.stderr)
    return 0 if ok and not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
