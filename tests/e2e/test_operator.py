"""The operator's story at 3 a.m., with the CLI alone:

1. An Icareus outage longer than the retry budget dead-letters requests and parks their keys.
2. `replay --dry-run` lists them with reason RETRIES_EXHAUSTED.
3. The outage ends; `replay --subscription` drains one key, then `replay` drains the rest,
   interrupted with SIGKILL once and run again.
4. Every request ends with exactly one result, the simulator holds what CRM's final snapshots
   say, and `status --subscription` shows no parked key, for every subscription.
5. A second `replay` replays nothing.
6. Icareus is changed behind the bridge's back (signed calls of the Icareus API, checked through
   the simulator's admin API): `reset --dry-run` shows the difference and changes nothing;
   `reset --subscription` repairs it, with results to CRM as usual.
7. `archive --older-than 0` writes files that fastavro reads back record for record against
   the results topic (read_committed), and `archive search` finds one subscription's requests.

Real broker, the simulator over HTTP, `icareus-bridge run` and every operator command as
subprocesses of the console script, all with the same configuration file and environment (the
retry budget comes from environment overrides, as an operator would set it)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from icareus_bridge.core.model import ProvisioningRequest, SubscriptionState
from icareus_bridge.icareus.client import IcareusClient
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
from tests.integration.archive_support import as_request, as_result, read_back
from tests.integration.reset_status_support import PERSONAL, drift

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


@pytest.fixture
def bridge(kafka_bootstrap: str, simulator: SimulatorHandle, tmp_path: Path) -> Iterator[Bridge]:
    config = bridge_config(kafka_bootstrap, simulator.base_url)
    unique = uuid.uuid4().hex[:8]
    config["topics"]["replay_log"] = f"e2e-{unique}-replay-log"
    config["kafka"]["transactional_id_prefix"] = f"e2e-{unique}"
    process = Bridge(config, tmp_path, RETRY_BUDGET)
    process.start().wait_ready()
    yield process
    process.stop_quietly()


@pytest.fixture
def crm(kafka_bootstrap: str, bridge: Bridge) -> Iterator[Crm]:
    side = Crm(kafka_bootstrap, bridge.topics)
    yield side
    side.close()


def replay(bridge: Bridge, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(bridge, "replay", *args)


def cli(bridge: Bridge, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """One operator command with the bridge's configuration file and environment."""
    return subprocess.run(
        [str(BRIDGE), command, "--config", str(bridge.config_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=bridge.environment(),
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


def status(bridge: Bridge, subscription_id: str) -> dict[str, Any]:
    done = cli(bridge, "status", "--subscription", subscription_id)
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def holdings(icareus: SimulatorAdmin, tag: str) -> dict[str, tuple[list[str], list[str]]]:
    """Account key -> (products, device ids) the simulator holds, for the story's accounts."""
    return {
        u["externalId"]: (sorted(u["products"]), sorted(d["deviceId"] for d in u["devices"]))
        for u in icareus.state()["users"]
        if u["externalId"].startswith(f"Nop-{tag}-")
    }


def wait_for(condition: Any, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def test_outage_replay_status_reset_and_archive_with_the_cli_alone(
    bridge: Bridge,
    crm: Crm,
    icareus: SimulatorAdmin,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    state = TopicReader(kafka_bootstrap, bridge.topics["state"])
    requests = TopicReader(kafka_bootstrap, bridge.topics["requests"])
    try:
        _story(bridge, crm, icareus, state, requests, tmp_path / "archive")
    finally:
        state.close()
        requests.close()


def _story(
    bridge: Bridge,
    crm: Crm,
    icareus: SimulatorAdmin,
    state: TopicReader,
    requests: TopicReader,
    archive_dir: Path,
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
        env=bridge.environment(),
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
    # ...and the operator sees the same through `status`, for every subscription of the story.
    for sub in subs:
        doc = status(bridge, sub.id)
        assert (doc["parked"], doc["parked_behind"], doc["parked_at"]) == (False, None, None)
        assert doc["last_applied_version"] == sub.snapshot.version
        assert [(a["account_key"], a["products"], a["devices"]) for a in doc["accounts"]] == [
            (
                sub.account(VP1),
                ["1001", "1002"],
                [{"device_id": f"{sub.id}-A", "device_type": "SET_TOP_BOX"}],
            )
        ]
        assert all(a["registered"] and a["user_id"] for a in doc["accounts"])
        # The DLQ is a log: the replayed dead letters still count there.
        assert doc["dead_letters_by_reason"] == {
            "dispatch:PARKED": REQUESTS_PER_SUBSCRIPTION - 1,
            "dispatch:RETRIES_EXHAUSTED": 1,
        }
        assert sorted((r["type"], r["state"]) for r in doc["last_results"]) == [
            ("ACTIVATE_PRODUCTS", "COMPLETED"),
            ("ACTIVATE_PRODUCTS", "COMPLETED"),
            ("ADD_DEVICE", "COMPLETED"),
            ("ADD_USER", "COMPLETED"),
        ]
        assert not any(p in json.dumps(doc) for p in PERSONAL)

    # 5. Nothing is left to replay.
    again = replay(bridge, "--json")
    assert again.returncode == 0, again.stderr
    assert json_lines(again.stdout)[-1]["counts"]["replayed"] == 0
    history = json_lines(replay(bridge, "--history", "--json").stdout)
    assert [r["status"] for r in history] == ["completed", "interrupted", "completed", "completed"]
    assert sum(r["counts"]["replayed"] for r in history) == total

    # 6. Someone changes Icareus behind the bridge's back (signed calls of the Icareus API,
    # as in the Icareus console): SPORTS cancelled and the box removed from one account.
    in_line = holdings(icareus, tag)
    victim = subs[1]
    account = victim.account(VP1)
    user_id = users[account]["userId"]

    async def behind_the_back(client: IcareusClient) -> None:
        await client.cancel_products(user_id, ["1002"], idempotency_key=f"drift-{tag}-1")
        await client.remove_device(user_id, f"{victim.id}-A", idempotency_key=f"drift-{tag}-2")

    drift(bridge, behind_the_back)
    drifted = holdings(icareus, tag)
    assert drifted[account] == (["1001"], [])  # the simulator's admin API sees the drift
    before, effects = icareus.state(), icareus.stats()["effects"]

    dry_reset = cli(bridge, "reset", "--subscription", victim.id, "--dry-run", "--json")
    assert dry_reset.returncode == 0, dry_reset.stderr
    view = json.loads(dry_reset.stdout)
    assert view["in_line"] is False and view["parked_behind"] is None
    [held] = view["accounts"]
    assert held["icareus_holds"]["products"] == ["1001"] and held["icareus_holds"]["devices"] == []
    assert held["should_hold"]["products"] == ["1001", "1002"]
    assert held["should_hold"]["devices"] == [
        {"device_id": f"{victim.id}-A", "device_type": "SET_TOP_BOX"}
    ]
    assert sorted(
        (r["type"], r["account_key"], r["params"].get("product_ids") or r["params"]["device_id"])
        for r in view["requests"]
    ) == [("ACTIVATE_PRODUCTS", account, ["1002"]), ("ADD_DEVICE", account, f"{victim.id}-A")]
    dry_text = cli(bridge, "reset", "--subscription", victim.id, "--dry-run")
    assert dry_text.returncode == 0, dry_text.stderr
    assert "a reset would send" in dry_text.stdout and "ADD_DEVICE" in dry_text.stdout
    assert not any(p in dry_text.stdout + dry_reset.stdout for p in PERSONAL)
    # The dry run changed nothing: only getUser calls reached Icareus.
    assert icareus.state() == before and icareus.stats()["effects"] == effects
    assert holdings(icareus, tag) == drifted

    repair = cli(bridge, "reset", "--subscription", victim.id)
    assert repair.returncode == 0, repair.stderr
    assert "RESET_SUBSCRIPTION event" in repair.stdout
    reset_event = repair.stdout.split("RESET_SUBSCRIPTION event ")[1].split()[0]
    wait_for(lambda: holdings(icareus, tag) == in_line, "Icareus back in line with CRM")

    def of_reset(rs: list[Any]) -> list[Any]:
        decoded = [CODEC.decode_result(m.value()) for m in rs]
        return [r for r in decoded if r.event_id == reset_event]

    crm.results.until(lambda rs: len(of_reset(rs)) >= 2, timeout=WAIT)
    crm.results.poll(1.0)
    assert sorted(
        (r.type.value, r.life_cycle_state.value, r.subscription_id)
        for r in of_reset(crm.results.records)
    ) == [
        ("ACTIVATE_PRODUCTS", "COMPLETED", victim.id),
        ("ADD_DEVICE", "COMPLETED", victim.id),
    ]
    assert len(crm.results.records) == total + 2, "the reset sent more than the difference"
    settled = cli(bridge, "reset", "--subscription", victim.id, "--dry-run", "--json")
    assert settled.returncode == 0, settled.stderr
    assert json.loads(settled.stdout)["in_line"] is True

    # 7. A full export: every committed result, joined with the request that was sent for it.
    results = crm.results.records
    requests.poll(1.0)
    sent: dict[str, ProvisioningRequest] = {}
    for m in requests.records:
        if CODEC.decode(m.value())[0] == "ProvisioningRequest":  # not a forwarded reset event
            sent[CODEC.decode_request(m.value()).request_id] = CODEC.decode_request(m.value())
    exported = cli(bridge, "archive", "--older-than", "0", "--out", str(archive_dir))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert f"archived {len(results)} results" in exported.stdout, exported.stdout
    archived = {(r["result_partition"], r["result_offset"]): r for r in read_back(archive_dir)}
    assert set(archived) == {(m.partition(), m.offset()) for m in results}
    unjoined = []
    for m in results:
        record = archived[(m.partition(), m.offset())]
        result = CODEC.decode_result(m.value())
        assert as_result(record["result"]) == result
        assert record["result_topic"] == bridge.topics["results"]
        if result.request_id in sent:
            assert as_request(record["request"]) == sent[result.request_id]
        else:  # planned by the dispatcher for the reset: never on the requests topic
            assert record["request"] is None
            unjoined.append(result.event_id)
    assert unjoined == [reset_event, reset_event]

    found = cli(
        bridge, "archive", "search", str(archive_dir), "--subscription", victim.id, "--json"
    )
    assert found.returncode == 0, found.stderr
    rows = json_lines(found.stdout)
    assert {r["subscription_id"] for r in rows} == {victim.id}
    assert sorted(r["request_id"] for r in rows) == sorted(
        r.request_id
        for r in (CODEC.decode_result(m.value()) for m in results)
        if r.subscription_id == victim.id
    )
    assert len(rows) == REQUESTS_PER_SUBSCRIPTION + 2
    table = cli(bridge, "archive", "search", str(archive_dir), "--subscription", victim.id)
    assert table.returncode == 0, table.stderr
    assert all(r["request_id"] in table.stdout for r in rows)
    assert not any(p in table.stdout + found.stdout for p in PERSONAL)
