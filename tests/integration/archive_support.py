"""What the archive's broker tests share: results and requests of CRM stories written to real
topics the way the bridge writes them (in transactions, with chosen Kafka timestamps, some of
them aborted), the archive command run as a subprocess, and the archive files read back."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from icareus_bridge.codec import default_codec
from icareus_bridge.core.model import (
    LifeCycleState,
    ProvisioningRequest,
    ProvisioningResult,
    RequestType,
    SubscriberProfile,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BRIDGE = REPO_ROOT / ".venv" / "bin" / "icareus-bridge"
DAY_MS = 86_400_000
PARTITIONS = 2
# The subscriber's personal data: in the archive files, never in search output.
FIRST_NAME, LAST_NAME = "Annabel", "Lee-Archive"
EMAIL, PHONE = "annabel.lee@example.com", "+357-99-123456"


def now_ms() -> int:
    return int(time.time() * 1000)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Topics:
    results: str
    requests: str


@contextlib.contextmanager
def archive_topics(bootstrap: str) -> Iterator[Topics]:
    """Results and requests topics that keep records forever (the tests write results dated
    days back, which the broker's default retention would delete), removed afterwards."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = Topics(results=unique("arch-results"), requests=unique("arch-requests"))
    new = [
        NewTopic(t, num_partitions=PARTITIONS, replication_factor=1, config={"retention.ms": "-1"})
        for t in (topics.results, topics.requests)
    ]
    for fut in admin.create_topics(new).values():
        fut.result(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=5).topics
        if all(
            t in md and all(p.leader >= 0 for p in md[t].partitions.values())
            for t in (topics.results, topics.requests)
        ):
            break
        time.sleep(0.05)
    try:
        yield topics
    finally:
        for fut in admin.delete_topics([topics.results, topics.requests]).values():
            with contextlib.suppress(Exception):
                fut.result(timeout=15)


@dataclass(frozen=True)
class Produced:
    """One result as written, its Kafka coordinates and timestamp, and its request if one
    was sent."""

    result: ProvisioningResult
    partition: int
    offset: int
    timestamp: int
    request: ProvisioningRequest | None


def _request(sub: str, n: int, rtype: RequestType, created_at: int) -> ProvisioningRequest:
    profile = None
    if rtype is RequestType.ADD_USER:
        profile = SubscriberProfile(
            first_name=FIRST_NAME, last_name=LAST_NAME, email=EMAIL, phone=PHONE, city="Limassol"
        )
    return ProvisioningRequest(
        request_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{sub}/{n}/{uuid.uuid4()}")),
        number=f"R-{sub}-{n}",
        type=rtype,
        subscription_id=sub,
        subscription_number=f"N-{sub}",
        distributor="ICAREUS-VP1",
        account_key=f"{sub}:ICAREUS-VP1",
        event_id=str(uuid.uuid4()),
        action_code="BECOME_SUBSCRIBER",
        sequence=n,
        created_at=created_at,
        user_id=None if rtype is RequestType.ADD_USER else f"u-{sub}",
        product_ids=("1001", "1002") if rtype is RequestType.ACTIVATE_PRODUCTS else (),
        profile=profile,
    )


def _result(
    req: ProvisioningRequest, state: LifeCycleState, attempts: int, executed_at: int
) -> ProvisioningResult:
    payload = req.model_dump(mode="json", exclude={"profile"})
    if req.profile is not None:
        payload["firstName"] = req.profile.first_name  # as Icareus was sent it
    return ProvisioningResult(
        request_id=req.request_id,
        number=req.number,
        type=req.type,
        subscription_id=req.subscription_id,
        subscription_number=req.subscription_number,
        distributor=req.distributor,
        account_key=req.account_key,
        event_id=req.event_id,
        action_code=req.action_code,
        life_cycle_state=state,
        error_code=None if state is LifeCycleState.COMPLETED else "USER_EXISTS",
        error_description=None if state is LifeCycleState.COMPLETED else f"{EMAIL} is taken",
        reference_number=f"u-{req.subscription_id}" if attempts else None,
        request_payload=json.dumps(payload),
        response_payload='{"status":"ok"}' if attempts else None,
        attempts=attempts,
        created_at=req.created_at,
        executed_at=executed_at,
        sequence=req.sequence,
        user_id=req.user_id,
        product_ids=req.product_ids,
    )


class Writer:
    """Writes requests and their results the way planner and dispatcher do: transactions,
    keyed by subscription id, results dated `at` (their Kafka timestamp)."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.topics = topics
        self.codec = default_codec()
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "transactional.id": unique("archive-test-tx"),
                "partitioner": "murmur2_random",
                "linger.ms": 5,
            }
        )
        self.producer.init_transactions(30)
        self.produced: list[Produced] = []
        self._n = 0

    def close(self) -> None:
        self.producer.flush(30)

    def story(self, sub: str, at: int, *, abort: bool = False, pending: bool = False) -> None:
        """ADD_USER completed, ACTIVATE_PRODUCTS rejected by Icareus, an ADD_DEVICE rejected by
        the planner (attempts 0, no request), all at `at`. `pending`: one more request whose
        result is not written (in flight or dead-lettered). `abort`: the transaction aborts."""
        add = _request(sub, self._next(), RequestType.ADD_USER, at - 5000)
        act = _request(sub, self._next(), RequestType.ACTIVATE_PRODUCTS, at - 4000)
        dev = _request(sub, self._next(), RequestType.ADD_DEVICE, at - 3000)
        results = [
            (_result(add, LifeCycleState.COMPLETED, 1, at), add),
            (_result(act, LifeCycleState.REJECTED, 2, at + 1), act),
            (_result(dev, LifeCycleState.REJECTED, 0, at + 2), None),
        ]
        key = sub.encode()
        delivered: list[tuple[ProvisioningResult, ProvisioningRequest | None, int, int]] = []

        def on_delivery(res: ProvisioningResult, req: ProvisioningRequest | None) -> Any:
            def cb(err: Any, msg: Any) -> None:
                assert err is None, err
                delivered.append((res, req, msg.partition(), msg.offset()))

            return cb

        p = self.producer
        p.begin_transaction()
        for _res, req in results:
            if req is not None:
                p.produce(self.topics.requests, key=key, value=self.codec.encode_request(req),
                          timestamp=req.created_at)
        if pending:
            extra = _request(sub, self._next(), RequestType.REMOVE_DEVICE, at)
            p.produce(self.topics.requests, key=key, value=self.codec.encode_request(extra),
                      timestamp=at)
        for i, (res, req) in enumerate(results):
            p.produce(self.topics.results, key=key, value=self.codec.encode_result(res),
                      timestamp=at + i, on_delivery=on_delivery(res, req))
        assert p.flush(30) == 0
        if abort:
            p.abort_transaction(30)
            return
        p.commit_transaction(30)
        for i, (res, req, part, off) in enumerate(delivered):
            self.produced.append(Produced(res, part, off, at + i, req))

    def _next(self) -> int:
        self._n += 1
        return self._n


def config_file(
    tmp: Path, bootstrap: str, topics: Topics, *, crm_group: str = "", **archive: Any
) -> tuple[Path, dict[str, str]]:
    """A bridge config for the archive command (unique groups), and its group ids."""
    groups = {
        "planner": unique("planner"),
        "dispatcher": unique("dispatcher"),
        "crm": crm_group,
    }
    cfg = {
        "kafka": {"bootstrap_servers": bootstrap, "partitions": PARTITIONS},
        "topics": {
            "input": unique("unused-input"),
            "requests": topics.requests,
            "results": topics.results,
            "dlq": unique("unused-dlq"),
            "state": unique("unused-state"),
        },
        "icareus": {"key": "test-key"},
        "planner": {"group_id": groups["planner"]},
        "dispatcher": {"group_id": groups["dispatcher"]},
        "archive": {"crm_group_id": crm_group, "kafka_timeout_seconds": 20, **archive},
    }
    path = tmp / f"bridge-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path, groups


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICAREUS_BRIDGE__")}
    return subprocess.run(
        [str(BRIDGE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def manifest(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / "manifest.json").read_text())
    return data


def read_back(directory: Path) -> list[dict[str, Any]]:
    """Every record of every file the manifest lists, read with fastavro's own reader."""
    out: list[dict[str, Any]] = []
    for f in manifest(directory)["files"]:
        with (directory / f["name"]).open("rb") as fo:
            out.extend(fastavro.reader(fo))  # type: ignore[arg-type]
    return out


def millis(value: Any) -> Any:
    """fastavro hands timestamp-millis back as datetimes; the bridge holds epoch ms."""
    return int(value.timestamp() * 1000) if hasattr(value, "timestamp") else value


def as_result(rec: dict[str, Any]) -> ProvisioningResult:
    r = dict(rec)
    r["created_at"] = millis(r["created_at"])
    r["executed_at"] = millis(r["executed_at"])
    return ProvisioningResult.model_validate(r)


def as_request(rec: dict[str, Any] | None) -> ProvisioningRequest | None:
    if rec is None:
        return None
    r = dict(rec)
    r["created_at"] = millis(r["created_at"])
    return ProvisioningRequest.model_validate(r)


def commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit `offsets` for `group` on `topic`, as that group's consumer would."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        c.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
        )
    finally:
        c.close()


def watermarks(bootstrap: str, topic: str) -> dict[int, tuple[int, int]]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("marks")})
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            for p in range(PARTITIONS)
        }
    finally:
        c.close()
