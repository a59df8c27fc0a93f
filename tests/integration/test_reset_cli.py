"""`icareus-bridge reset` against a real broker, the simulator over HTTP and a running bridge
(`icareus-bridge run`): Icareus is changed behind the bridge's back, `--dry-run` shows the
difference and changes nothing, a reset repairs it; `--all` with progress; the error paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from icareus_bridge.core.model import ProvisioningResult, SubscriptionState
from icareus_bridge.icareus.client import IcareusClient
from icareus_bridge.icareus.simulator import SimulatorAdmin
from tests.e2e.harness import CODEC, Bridge, Crm, CrmSubscription, box, free_port, service
from tests.integration.reset_status_support import (
    PERSONAL,
    bridge,
    cli,
    config_with,
    crm,
    drift,
    holding,
    icareus,
    known_state,
    simulator,
    users_registered,
    wait_for,
)

pytestmark = [pytest.mark.kafka]
__all__ = ["bridge", "crm", "icareus", "simulator"]  # module fixtures

VP1, VP2 = "ICAREUS-VP1", "ICAREUS-VP2"
EFFECTIVE = SubscriptionState.EFFECTIVE


def two_rooms(crm: Crm, name: str) -> CrmSubscription:
    """A subscription with a living room (two products, a box) and a bedroom (one product),
    provisioned through the bridge."""
    sub = CrmSubscription(name)
    ev = sub.act(
        "BECOME_SUBSCRIBER",
        state=EFFECTIVE,
        services=(
            service("s1", "BASIC-TV", VP1),
            service("s2", "SPORTS", VP1),
            service("s3", "BASIC-TV", VP2),
        ),
        items=(box(f"SN-{name}", VP1),),
    )
    crm.publish(ev)
    assert all(r.life_cycle_state.value == "COMPLETED" for r in crm.results_of(ev, 5))
    return sub


def in_line(icareus: SimulatorAdmin, sub: CrmSubscription) -> bool:
    return holding(icareus, sub.account(VP1)) == {
        "products": ["1001", "1002"],
        "devices": [f"SN-{sub.id}"],
    } and holding(icareus, sub.account(VP2)) == {"products": ["1001"], "devices": []}


def results_of_event(records: list[Any], event_id: str) -> list[ProvisioningResult]:
    out = [CODEC.decode_result(m.value()) for m in records]
    return [r for r in out if r.event_id == event_id]


def requests_of(view: dict[str, Any]) -> list[tuple[str, str, Any]]:
    out = []
    for r in view["requests"]:
        p = r["params"]
        out.append((r["type"], r["account_key"], p.get("product_ids") or p.get("device_id")))
    return sorted(out)


def test_dry_run_shows_the_drift_and_changes_nothing_then_reset_repairs_it(
    bridge: Bridge, crm: Crm, icareus: SimulatorAdmin
) -> None:
    sub = two_rooms(crm, "drifted")
    known_state(bridge, sub.id, users_registered)
    living = next(u for u in icareus.state()["users"] if u["externalId"] == sub.account(VP1))
    bedroom = next(u for u in icareus.state()["users"] if u["externalId"] == sub.account(VP2))

    async def behind_the_back(client: IcareusClient) -> None:
        await client.cancel_products(living["userId"], ["1002"], idempotency_key="d1")
        await client.remove_device(living["userId"], "SN-drifted", idempotency_key="d2")
        await client.activate_products(bedroom["userId"], ["1003"], idempotency_key="d3")

    drift(bridge, behind_the_back)
    before = icareus.state()
    effects = icareus.stats()["effects"]

    dry = cli(bridge, "reset", "--subscription", sub.id, "--dry-run", "--json")

    assert dry.returncode == 0, dry.stderr
    view = json.loads(dry.stdout)
    assert requests_of(view) == [
        ("ACTIVATE_PRODUCTS", sub.account(VP1), ["1002"]),
        ("ADD_DEVICE", sub.account(VP1), "SN-drifted"),
        ("CANCEL_PRODUCTS", sub.account(VP2), ["1003"]),
    ]
    accounts = {a["distributor"]: a for a in view["accounts"]}
    assert accounts[VP1]["icareus_holds"]["products"] == ["1001"]
    assert accounts[VP1]["icareus_holds"]["devices"] == []
    assert accounts[VP1]["should_hold"]["products"] == ["1001", "1002"]
    assert accounts[VP1]["should_hold"]["devices"] == [
        {"device_id": "SN-drifted", "device_type": "SET_TOP_BOX"}
    ]
    assert accounts[VP2]["icareus_holds"]["products"] == ["1001", "1003"]
    assert accounts[VP2]["should_hold"]["products"] == ["1001"]
    assert view["in_line"] is False
    # The operator's text view says the same, without the subscriber's personal data.
    text = cli(bridge, "reset", "--subscription", sub.id, "--dry-run")
    assert text.returncode == 0, text.stderr
    assert "a reset would send" in text.stdout and "CANCEL_PRODUCTS" in text.stdout
    assert not any(p in text.stdout + dry.stdout for p in PERSONAL)
    # Nothing changed: only getUser calls reached Icareus.
    assert icareus.state() == before
    assert icareus.stats()["effects"] == effects

    real = cli(bridge, "reset", "--subscription", sub.id)

    assert real.returncode == 0, real.stderr
    assert "RESET_SUBSCRIPTION event" in real.stdout
    wait_for(lambda: in_line(icareus, sub), "Icareus back in line with CRM")
    event_id = real.stdout.split("RESET_SUBSCRIPTION event ")[1].split()[0]
    crm.results.until(lambda rs: len(results_of_event(rs, event_id)) >= 3)
    mine = results_of_event(crm.results.records, event_id)
    assert sorted((r.type.value, r.life_cycle_state.value) for r in mine) == [
        ("ACTIVATE_PRODUCTS", "COMPLETED"),
        ("ADD_DEVICE", "COMPLETED"),
        ("CANCEL_PRODUCTS", "COMPLETED"),
    ]
    # A second dry run finds nothing left to do.
    again = cli(bridge, "reset", "--subscription", sub.id, "--dry-run", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["in_line"] is True


def test_reset_all_reports_progress_and_repairs_every_subscription(
    bridge: Bridge, crm: Crm, icareus: SimulatorAdmin
) -> None:
    subs = [two_rooms(crm, f"every-{i}") for i in range(3)]
    for sub in subs:
        known_state(bridge, sub.id, users_registered)
    # Icareus loses everything (simulator admin API): every account must be registered again.
    icareus.reset()
    assert icareus.state()["users"] == []

    dry = cli(bridge, "reset", "--all", "--dry-run", "--json")

    assert dry.returncode == 0, dry.stderr
    views = {v["subscription_id"]: v for v in map(json.loads, dry.stdout.splitlines())}
    for sub in subs:
        assert [r["type"] for r in views[sub.id]["requests"]].count("ADD_USER") == 2
    total = len(views)
    assert f"reset --dry-run: {total}/{total} subscriptions (100%)" in dry.stderr
    assert icareus.state()["users"] == []

    real = cli(bridge, "reset", "--all", "--rate", "50")

    assert real.returncode == 0, real.stderr
    assert f"reset: {total}/{total} subscriptions (100%)" in real.stderr
    assert f"reset: {total} reset events published, 0 refused" in real.stdout
    for sub in subs:
        wait_for(lambda s=sub: in_line(icareus, s), f"{sub.id} registered again")


def test_an_unknown_subscription_exits_2_naming_it(bridge: Bridge) -> None:
    for extra in ([], ["--dry-run"]):
        result = cli(bridge, "reset", "--subscription", "no-such-sub", *extra)

        assert result.returncode == 2
        assert "no-such-sub" in result.stderr and "unknown subscription" in result.stderr


def test_an_unreachable_broker_exits_4_naming_the_address(bridge: Bridge, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = config_with(bridge, tmp_path, kafka={"bootstrap_servers": address})

    result = cli(bridge, "reset", "--subscription", "any", config=config, timeout=60)

    assert result.returncode == 4
    assert f"Kafka unreachable at {address}" in result.stderr
