"""The operator's story at 3 a.m., with the CLI alone (issue 9, steps 1-5):

1. An Icareus outage longer than the retry budget dead-letters requests and parks their keys.
2. `replay --dry-run` lists them with reason RETRIES_EXHAUSTED.
3. The outage ends; `replay --subscription` drains one key, then `replay` drains the rest,
   interrupted with SIGKILL once and run again.
4. Every request ends with exactly one result, the simulator holds what CRM's final snapshots
   say, and no key is parked.
5. A second `replay` replays nothing.

Real broker, the simulator over HTTP, `icareus-bridge run` and `icareus-bridge replay` as
subprocesses; the retry budget comes from environment overrides, as an operator would set it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from icareus_bridge.core.model import SubscriptionState
from icareus_bridge.icareus.simulator import SimulatorAdmin, SimulatorHandle
from icareus_bridge.pipeline.parking import PARKED_KEY_PREFIX
from tests.e2e.harness import (
    BRIDGE,
    CODEC,
    Bridge,
    Crm,
    CrmSubscription,
    TopicReader,
    box,
    bridge_config,
    header,
    service,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

VP1 = "ICAREUS-VP1"
SUBSCRIPTIONS = 3
REQUESTS_PER_SUBSCRIPTION = 4  # ADD_USER, ACTIVATE_PRODUCTS, ADD_DEVICE; then ACTIVATE_PRODUCTS
# A retry budget far shorter than the outage, as the operator's environment sets it.
RETRY_BUDGET = {
    "ICAREUS_BRIDGE__ICAREUS__RETRY__MAX_ATTEMPTS": "2",
    "ICAREUS_BRIDGE__ICAREUS__RETRY__MAX_TOTAL_SECONDS": "1.0",
    "ICAREUS_BRIDGE__ICAREUS__RETRY__INITIAL_BACKOFF_SECONDS": "0.05",
    "ICAREUS_BRIDGE__ICAREUS__RETRY__MAX_BACKOFF_SECONDS": "0.2",
}
WAIT = 60.0


class OperatorBridge(Bridge):
    """`icareus-bridge run` with the operator's environment overrides on top of its file."""

    def start(self) -> OperatorBridge:
        self.starts += 1
        log = (self.workdir / f"bridge-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [str(BRIDGE), "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=operator_env(),
        )
        log.close()
        return self


def operator_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICAREUS_BRIDGE__")}
    env.update(RETRY_BUDGET)
    return env


@pytest.fixture
def bridge(
    kafka_bootstrap: str, simulator: SimulatorHandle, tmp_path: Path
) -> Iterator[OperatorBridge]:
    config = bridge_config(kafka_bootstrap, simulator.base_url)
    unique = uuid.uuid4().hex[:8]
    config["topics"]["replay_log"] = f"e2e-{unique}-replay-log"
    config["kafka"]["transactional_id_prefix"] = f"e2e-{unique}"
    process = OperatorBridge(config, tmp_path)
    process.start().wait_ready()
    yield process
    process.stop_quietly()


@pytest.fixture
def crm(kafka_bootstrap: str, bridge: OperatorBridge) -> Iterator[Crm]:
    side = Crm(kafka_bootstrap, bridge.topics)
    yield side
    side.close()


def replay(bridge: Bridge, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BRIDGE), "replay", "--config", str(bridge.config_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=operator_env(),
        stdin=subprocess.DEVNULL,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def parked_keys(reader: TopicReader) -> dict[str, bytes]:
    """Subscription id -> marker of every key parked now (the last `parked:` record wins)."""
    reader.poll(0.5)
    parked: dict[str, bytes] = {}
    for m in reader.records:
        key = m.key() or b""
        if key.startswith(PARKED_KEY_PREFIX.encode()):
            sub = key[len(PARKED_KEY_PREFIX) :].decode()
            if m.value() is None:
                parked.pop(sub, None)
            else:
                parked[sub] = m.value()
    return parked


def wait_for(condition: Any, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def test_outage_dead_letters_then_the_operator_replays_everything_exactly_once(
    bridge: OperatorBridge, crm: Crm, icareus: SimulatorAdmin, kafka_bootstrap: str
) -> None:
    state = TopicReader(kafka_bootstrap, bridge.topics["state"])
    requests = TopicReader(kafka_bootstrap, bridge.topics["requests"])
    try:
        _story(bridge, crm, icareus, state, requests)
    finally:
        state.close()
        requests.close()


def _story(
    bridge: OperatorBridge,
    crm: Crm,
    icareus: SimulatorAdmin,
    state: TopicReader,
    requests: TopicReader,
) -> None:
    tag = uuid.uuid4().hex[:6]
    subs = [CrmSubscription(f"op-{tag}-{i}") for i in range(SUBSCRIPTIONS)]
    total = SUBSCRIPTIONS * REQUESTS_PER_SUBSCRIPTION

    # 1. The outage outlasts the retry budget: every key parks behind its ADD_USER.
    icareus.set_faults(outage=True)
    for sub in subs:
        crm.publish(
            sub.act(
                "BECOME_SUBSCRIBER",
                state=SubscriptionState.EFFECTIVE,
                services=(service("s1", "BASIC-TV", VP1),),
                items=(box(f"{sub.id}-A", VP1),),
            ),
            sub.act("ADD_SERVICE", services=sub.services_with(service("s2", "SPORTS", VP1))),
        )
    crm.dead_letters.until(lambda rs: len(rs) >= total)
    wait_for(lambda: len(parked_keys(state)) == SUBSCRIPTIONS, "every key parked")
    assert crm.all_results() == [], "a dead-lettered request has no result yet"
    assert set(parked_keys(state)) == {s.id for s in subs}

    # 2. The dry run shows them: one RETRIES_EXHAUSTED per key, parking it, the rest behind it.
    dry = replay(bridge, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    *rows, summary = json_lines(dry.stdout)
    assert len(rows) == total
    exhausted = [r for r in rows if r["reason"] == "RETRIES_EXHAUSTED"]
    assert sorted(r["subscription_id"] for r in exhausted) == sorted(s.id for s in subs)
    assert all(r["parks_key"] and r["request_type"] == "ADD_USER" for r in exhausted)
    assert all(r["http_status"] == 503 and r["attempts"] == 2 for r in exhausted)
    assert Counter(r["reason"] for r in rows)["PARKED"] == total - SUBSCRIPTIONS
    assert summary["totals"]["by_reason"]["dispatch:RETRIES_EXHAUSTED"] == SUBSCRIPTIONS
    assert "Maria" not in dry.stdout and "maria@example.org" not in dry.stdout
    text = replay(bridge, "--dry-run")
    assert text.returncode == 0 and "reason=RETRIES_EXHAUSTED" in text.stdout

    # 3. The outage ends. One key first...
    icareus.set_faults(outage=False)
    first = subs[0]
    one = replay(bridge, "--subscription", first.id)
    assert one.returncode == 0, one.stderr
    assert f"replayed {REQUESTS_PER_SUBSCRIPTION} of {REQUESTS_PER_SUBSCRIPTION}" in one.stdout
    wait_for(lambda: first.id not in parked_keys(state), f"{first.id} unparked")
    crm.results.until(lambda rs: len(rs) >= REQUESTS_PER_SUBSCRIPTION, timeout=WAIT)
    assert {r.subscription_id for r in crm.all_results()} == {first.id}
    assert set(parked_keys(state)) == {s.id for s in subs[1:]}

    # ...then the rest, killed after its first transaction and run again.
    proc = subprocess.Popen(
        [str(BRIDGE), "replay", "--config", str(bridge.config_path), "--rate", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=operator_env(),
    )
    try:
        assert proc.stdout is not None
        progress = proc.stdout.readline()
        assert progress.startswith("replayed "), progress
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    done_before_kill = int(progress.split()[1].split("/")[0])
    assert 0 < done_before_kill < total - REQUESTS_PER_SUBSCRIPTION
    rest = replay(bridge, "--json")
    assert rest.returncode == 0, rest.stderr
    record = json_lines(rest.stdout)[-1]
    assert record["counts"]["replayed"] == total - REQUESTS_PER_SUBSCRIPTION - done_before_kill
    assert record["counts"]["skipped"]["already_replayed"] == (
        REQUESTS_PER_SUBSCRIPTION + done_before_kill
    )

    # 4. Exactly one result per request; Icareus as CRM's final snapshots; nothing parked.
    results = crm.results.until(lambda rs: len(rs) >= total, timeout=WAIT)
    crm.results.poll(1.0)  # a second result of any request would show up now
    planned = requests.until(lambda rs: len(rs) >= 2 * total)  # originals + replayed copies
    originals = [m for m in planned if header(m, "dlq.replay.of") is None]
    copies = [m for m in planned if header(m, "dlq.replay.of") is not None]
    assert len(originals) == total
    assert len(copies) == total, "a dead letter was republished twice (or not at all)"
    assert len({header(m, "dlq.replay.of") for m in copies}) == total
    request_ids = sorted(CODEC.decode_request(m.value()).request_id for m in originals)
    result_ids = sorted(r.request_id for r in crm.all_results())
    assert result_ids == request_ids, "not exactly one result per request"
    assert len(results) == total
    assert {r.life_cycle_state.value for r in crm.all_results()} == {"COMPLETED"}

    users = {u["externalId"]: u for u in icareus.state()["users"]}
    for sub in subs:
        snapshot = sub.snapshot
        user = users[sub.account(VP1)]
        mapping = {"BASIC-TV": "1001", "SPORTS": "1002"}
        assert sorted(user["products"]) == sorted(
            mapping[s.product_code] for s in snapshot.services
        )
        assert [(d["deviceId"], d["deviceType"]) for d in user["devices"]] == [
            (i.serial_number, "SET_TOP_BOX") for i in snapshot.installed_items
        ]
    assert len([k for k in users if k.startswith(f"Nop-{tag}-")]) == SUBSCRIPTIONS
    wait_for(lambda: parked_keys(state) == {}, "no parked key left")

    # 5. Nothing is left to replay.
    again = replay(bridge, "--json")
    assert again.returncode == 0, again.stderr
    assert json_lines(again.stdout)[-1]["counts"]["replayed"] == 0
    history = json_lines(replay(bridge, "--history", "--json").stdout)
    assert [r["status"] for r in history] == ["completed", "interrupted", "completed", "completed"]
    assert sum(r["counts"]["replayed"] for r in history) == total
