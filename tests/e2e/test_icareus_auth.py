"""`icareus-bridge run` (both roles) whose key file holds a key Icareus does not accept, as after
a botched key rotation: its operator's view (`/readyz`, `/metrics`, the log) and CRM's (the
results and dead-letter topics). The simulator runs with the right key."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from icareus_bridge.core.model import SubscriptionState
from icareus_bridge.icareus.simulator import SimulatorAdmin, SimulatorHandle
from tests.e2e.harness import (
    CODEC,
    WAIT_SECONDS,
    Bridge,
    Crm,
    CrmSubscription,
    box,
    bridge_config,
    header,
    service,
)

pytestmark = pytest.mark.kafka

AUTH_METRIC = "icareus_bridge_icareus_auth_failures_total"
STALE_KEY = "rotated-out-organization-key"


@pytest.fixture
def stale_bridge(
    kafka_bootstrap: str, simulator: SimulatorHandle, tmp_path: Path
) -> Iterator[Bridge]:
    key_file = tmp_path / "organization.key"
    key_file.write_text(STALE_KEY + "\n", encoding="utf-8")
    config = bridge_config(kafka_bootstrap, simulator.base_url)
    del config["icareus"]["key"]
    config["icareus"]["key_file"] = str(key_file)
    process = Bridge(config, tmp_path).start()
    try:
        yield process
    finally:
        process.stop_quietly()


def readyz(bridge: Bridge) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(bridge.http + "/readyz", timeout=2) as answer:
            return int(answer.status), json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return int(refused.code), json.loads(refused.read())


def auth_failures(bridge: Bridge) -> float:
    for line in bridge.metrics().splitlines():
        if line.startswith(AUTH_METRIC + " "):
            return float(line.split()[1])
    raise AssertionError(f"{AUTH_METRIC} is not exported")


def eventually(condition: Callable[[], bool], what: str, bridge: Bridge) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        assert bridge.proc is not None and bridge.proc.poll() is None, bridge.log_tail()
        try:
            if condition():
                return
        except (urllib.error.URLError, OSError):
            pass  # the HTTP face is not up yet
        assert time.monotonic() < deadline, f"gave up waiting for {what}\n{bridge.log_tail()}"
        time.sleep(0.1)


def test_a_stale_key_file_makes_the_bridge_unready_and_dead_letters_instead_of_rejecting(
    stale_bridge: Bridge, icareus: SimulatorAdmin
) -> None:
    icareus.reset()
    eventually(lambda: auth_failures(stale_bridge) >= 1, "a counted refusal", stale_bridge)
    status, body = readyz(stale_bridge)
    assert status == 503
    assert body["checks"]["icareus"]["ready"] is False
    assert "INVALID_TOKEN" in body["checks"]["icareus"]["detail"]

    crm = Crm(stale_bridge.config["kafka"]["bootstrap_servers"], stale_bridge.topics)
    try:
        sub = CrmSubscription("AUTH-1")
        ev = sub.act(
            "BECOME_SUBSCRIBER",
            state=SubscriptionState.EFFECTIVE,
            services=(service("s1", "BASIC-TV", "ICAREUS-VP1"),),
            items=(box("SN-AUTH-1", "ICAREUS-VP1"),),
        )
        crm.publish(ev)
        dead = crm.dead_letters.until(lambda rs: len(rs) >= 3)
        reasons = [header(m, "dlq.reason") for m in dead]
        assert reasons == ["AUTH_FAILED", "PARKED", "PARKED"]
        assert CODEC.decode_request(dead[0].value()).type.value == "ADD_USER"
        # CRM sees nothing of the outage: no REJECTED result, no result at all.
        assert crm.results.poll(2.0) == []
    finally:
        crm.close()

    assert icareus.state() == {"users": []}
    assert auth_failures(stale_bridge) >= 2  # the probe's refusals and the request's
    assert readyz(stale_bridge)[0] == 503
    assert stale_bridge.terminate() == 0
    assert STALE_KEY not in stale_bridge.log_tail(lines=100_000)
