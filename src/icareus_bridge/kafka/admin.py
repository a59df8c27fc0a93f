"""Topic set-up at start: create the bridge's topics when missing (partitions and replication
from config, the state changelog compacted) and refuse to start on a layout that would break
exactly-once or state restore (a state topic that is not compacted or not co-partitioned)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import ConsumerGroupState, KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported at runtime
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from icareus_bridge.config import KafkaSettings, TopicSettings
from icareus_bridge.kafka.clients import base_config, error_text, kafka_error, security_refusal


class StartupError(Exception):
    """The broker's topic layout does not fit the bridge; the message names topic and setting."""


class BrokerUnreachable(StartupError):
    """No broker answered within `kafka.startup_wait_seconds`."""


class StopFlag(Protocol):
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


def wait_for_broker(
    kafka: KafkaSettings,
    stop: StopFlag,
    *,
    on_wait: Callable[[float, str], None] | None = None,
    attempt_seconds: float = 2.0,
    report_every: float = 10.0,
) -> bool:
    """Ask for cluster metadata until a broker answers (True) or `stop` is set (False).
    `kafka.startup_wait_seconds` > 0 bounds the wait: then `BrokerUnreachable`. `on_wait`
    hears (seconds waited, last error) about every `report_every` seconds."""
    admin, errors = admin_client(kafka)
    limit = kafka.startup_wait_seconds
    started = time.monotonic()
    next_report = started + report_every
    while not stop.is_set():
        try:
            # A refused password or certificate ends the wait at once (KafkaRefused): waiting
            # does not fix a credential.
            first_contact(admin, kafka, errors, attempt_seconds)
            return True
        except KafkaException as exc:
            last = error_text(exc)
            errors.clear()
        now = time.monotonic()
        if limit > 0 and now - started >= limit:
            raise BrokerUnreachable(
                f"kafka.bootstrap_servers={kafka.bootstrap_servers}: no broker answered within "
                f"{limit:g} s (kafka.startup_wait_seconds; 0 waits for ever): {last}"
            )
        if on_wait is not None and now >= next_report:
            on_wait(now - started, last)
            next_report = now + report_every
        stop.wait(0.5)
    return False


class KafkaRefused(StartupError):
    """The broker refused this client's credentials, or the TLS handshake failed; the message
    names the settings to check (never the password)."""


@dataclass(frozen=True, slots=True)
class TopicReport:
    """What `ensure_topics` found or did for one topic."""

    name: str
    partitions: int
    created: bool
    cleanup_policy: str


# How long one metadata attempt of the first contact waits before the client's errors are
# looked at: a refused password or certificate ends start-up at once instead of after `timeout`.
FIRST_CONTACT_ATTEMPT_SECONDS = 1.0


def admin_client(kafka: KafkaSettings) -> tuple[AdminClient, list[Any]]:
    """An AdminClient from `base_config` and the list its error callback appends to (served
    by `poll`), for `first_contact`."""
    errors: list[Any] = []
    conf = base_config(kafka)
    conf["error_cb"] = errors.append
    return AdminClient(conf), errors


def first_contact(
    admin: AdminClient, kafka: KafkaSettings, errors: list[Any], timeout: float
) -> Any:
    """The cluster's metadata; `KafkaRefused` as soon as the broker refuses the credentials
    or the TLS handshake fails (the client would retry those until `timeout`); the last
    `KafkaException` when nothing answered within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        attempt = max(0.1, min(FIRST_CONTACT_ATTEMPT_SECONDS, deadline - time.monotonic()))
        try:
            return admin.list_topics(timeout=attempt)
        except KafkaException:
            admin.poll(0)  # serves error_cb
            for err in errors:
                refusal = security_refusal(kafka, err)
                if refusal is not None:
                    raise KafkaRefused(
                        f"kafka.bootstrap_servers={kafka.bootstrap_servers}: {refusal}"
                    ) from None
            if time.monotonic() >= deadline:
                raise


def _topic_partitions(admin: AdminClient, timeout: float) -> dict[str, int]:
    md = admin.list_topics(timeout=timeout)
    return {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}


def _cleanup_policies(admin: AdminClient, names: list[str], timeout: float) -> dict[str, str]:
    resources = [ConfigResource(ResourceType.TOPIC, n) for n in names]
    out: dict[str, str] = {}
    for res, fut in admin.describe_configs(resources, request_timeout=timeout).items():
        configs = fut.result(timeout=timeout)
        entry = configs.get("cleanup.policy")
        out[res.name] = str(entry.value) if entry is not None else "delete"
    return out


def ensure_topics(
    kafka: KafkaSettings, topics: TopicSettings, *, timeout: float = 30.0
) -> list[TopicReport]:
    """Create missing topics; verify the state changelog of existing ones.

    The state topic gets `cleanup.policy=compact`; the others the broker's default (delete).
    Raises `StartupError` when the state topic exists without compaction, or when the state,
    results or requests topic does not have as many partitions as the input topic (state,
    requests and feedback of a subscription must live in the partition number of its events).
    """
    admin, errors = admin_client(kafka)
    wanted = [topics.input, topics.requests, topics.results, topics.dlq, topics.state]
    try:
        md = first_contact(admin, kafka, errors, timeout)
        existing = {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}
        missing = [t for t in dict.fromkeys(wanted) if t not in existing]
        created: set[str] = set()
        if missing:
            created = _create_topics(admin, kafka, topics, missing, existing, timeout)
            existing = _wait_for_topics(admin, wanted, timeout)
        policies = _cleanup_policies(admin, list(dict.fromkeys(wanted)), timeout)
    except KafkaException as exc:
        raise StartupError(
            f"kafka.bootstrap_servers={kafka.bootstrap_servers}: cannot set up topics: {exc}"
        ) from exc

    _check_layout(topics, existing, policies)
    return [
        TopicReport(
            name=n,
            partitions=existing[n],
            created=n in created,
            cleanup_policy=policies.get(n, ""),
        )
        for n in dict.fromkeys(wanted)
    ]


def _create_topics(
    admin: AdminClient,
    kafka: KafkaSettings,
    topics: TopicSettings,
    missing: list[str],
    existing: dict[str, int],
    timeout: float,
) -> set[str]:
    """Create the `missing` topics; the names created (one that appeared meanwhile is fine).
    A missing state/results/requests topic follows the input topic's partition count when the
    input topic already exists (co-partitioning), else the configured count."""
    base = existing.get(topics.input, kafka.partitions)
    new = []
    for name in missing:
        config = {"cleanup.policy": "compact"} if name == topics.state else {}
        copartitioned = (
            name in (topics.state, topics.results, topics.requests) and name != topics.input
        )
        parts = base if copartitioned else kafka.partitions
        new.append(
            NewTopic(
                name,
                num_partitions=parts,
                replication_factor=kafka.replication_factor,
                config=config,
            )
        )
    created: set[str] = set()
    for name, fut in admin.create_topics(new, request_timeout=timeout).items():
        try:
            fut.result(timeout=timeout)
            created.add(name)
        except KafkaException as exc:
            err = kafka_error(exc)
            if err is None or err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise StartupError(f"topic {name}: cannot create it: {exc}") from exc
    return created


def _check_layout(
    topics: TopicSettings, existing: dict[str, int], policies: dict[str, str]
) -> None:
    """`StartupError` unless the state topic is compacted and co-partitioned with the input."""
    state_policy = policies.get(topics.state, "")
    if "compact" not in {p.strip() for p in state_policy.split(",")}:
        raise StartupError(
            f"topic {topics.state} (topics.state): cleanup.policy is '{state_policy}', "
            "the state changelog needs 'compact'; fix the topic "
            f"(kafka-configs --alter --entity-type topics --entity-name {topics.state} "
            "--add-config cleanup.policy=compact) or point topics.state elsewhere"
        )
    n_input = existing[topics.input]
    # Requests too: the planner writes them to its event's partition number, and the
    # dispatcher keeps a parked key's marker in that partition number of the state topic.
    copartitioned_topics = (
        ("topics.state", topics.state),
        ("topics.results", topics.results),
        ("topics.requests", topics.requests),
    )
    for role, name in copartitioned_topics:
        if existing[name] != n_input:
            raise StartupError(
                f"topic {name} ({role}) has {existing[name]} partitions but the input topic "
                f"{topics.input} has {n_input}: they must be co-partitioned (same count)"
            )


def unowned_partitions(
    kafka: KafkaSettings,
    group_id: str,
    topic: str,
    *,
    timeout: float = 5.0,
    admin: AdminClient | None = None,
) -> list[int] | None:
    """Partitions of `topic` that no member of consumer group `group_id` holds, as the group
    coordinator describes the group (a dead static member still holds its partitions until its
    session times out); None while the group is not Stable (a rebalance is under way).
    Raises `KafkaException` when the broker does not answer."""
    admin = admin if admin is not None else admin_client(kafka)[0]
    md = admin.list_topics(topic, timeout=timeout).topics.get(topic)
    if md is None or md.error is not None:
        return []
    described = admin.describe_consumer_groups([group_id], request_timeout=timeout)
    group = described[group_id].result(timeout=timeout)
    if group.state != ConsumerGroupState.STABLE:
        return None
    owned = {
        tp.partition
        for member in group.members
        for tp in (member.assignment.topic_partitions if member.assignment else [])
        if tp.topic == topic
    }
    return sorted(set(md.partitions) - owned)


@dataclass
class OwnershipVerdict:
    """What `OwnershipWatch.check` found: ready or not, why, and whether to rejoin."""

    ready: bool
    detail: str
    rejoin: bool = False


@dataclass
class OwnershipWatch:
    """For a stage that owns no partition of its input topic: is that because other members own
    them all (ready, just idle), or do partitions go unowned (not ready; after `patience`
    checks in a row in a Stable group, rejoin). Asks the coordinator at most every `interval`."""

    kafka: KafkaSettings
    group_id: str
    topic: str
    interval: float = 5.0
    patience: int = 2
    _last: float = field(default=float("-inf"), init=False)
    _unowned_seen: int = field(default=0, init=False)
    _admin: AdminClient | None = field(default=None, init=False)

    def reset(self) -> None:
        self._unowned_seen = 0

    def check(self, now: float | None = None) -> OwnershipVerdict | None:
        """None when not due or the group is rebalancing (nothing learnt)."""
        now = time.monotonic() if now is None else now
        if now - self._last < self.interval:
            return None
        self._last = now
        try:
            if self._admin is None:
                self._admin = admin_client(self.kafka)[0]
            unowned = unowned_partitions(
                self.kafka, self.group_id, self.topic, timeout=2.0, admin=self._admin
            )
        except Exception:  # the broker's answer is what is missing: readiness sees it elsewhere
            return None
        if unowned is None:
            return None
        if not unowned:
            self._unowned_seen = 0
            return OwnershipVerdict(
                True, f"0 partitions: every partition of {self.topic} has another owner"
            )
        self._unowned_seen += 1
        return OwnershipVerdict(
            False,
            f"owns no partition of {self.topic} while partitions {unowned} of it have no "
            f"owner in group {self.group_id}",
            rejoin=self._unowned_seen >= self.patience,
        )


def _wait_for_topics(admin: AdminClient, names: list[str], timeout: float) -> dict[str, int]:
    """Metadata lags topic creation a little; wait until every topic is visible."""
    deadline = time.monotonic() + timeout
    while True:
        existing = _topic_partitions(admin, timeout)
        if all(n in existing and existing[n] > 0 for n in names):
            return existing
        if time.monotonic() > deadline:
            missing = [n for n in names if n not in existing]
            raise StartupError(f"topics {', '.join(missing)}: not visible after creation")
        time.sleep(0.1)
