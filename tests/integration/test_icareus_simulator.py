"""The simulator as a product: started the way people start it (the CLI, in its own process),
its catalogue and keys from the config, its admin API, its faults and its Icareus rules."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from icareus_bridge.config import load_settings
from icareus_bridge.icareus.signing import product_ids_param, sign
from icareus_bridge.icareus.simulator import (
    FaultRates,
    Faults,
    SimulatorAdmin,
    SimulatorConfig,
    SimulatorHandle,
    start_simulator_process,
    start_simulator_thread,
)

ORG = "2002"
KEY = "simulator-test-key"


def call(
    sim: SimulatorHandle,
    action: str,
    module: str,
    values: list[str],
    params: list[str],
    *,
    key: str = KEY,
    org: str = ORG,
    idempotency_key: str | None = None,
) -> httpx.Response:
    form = {"organizationId": org, **dict(zip(params, values, strict=True))}
    form["token"] = sign(org, values, key, time.time())
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return http().post(f"{sim.base_url}/{module}?action={action}", data=form, headers=headers)


@functools.cache
def http() -> httpx.Client:
    # One client for the module: a fresh httpx client per call costs ~50 ms of TLS setup.
    return httpx.Client()


# The wire names of addUser's parameters, written out here (not taken from the config).
ADD_USER_PARAMS = [
    "externalId",
    "firstName",
    "lastName",
    "emailAddress",
    "phoneNumber",
    "countryId",
    "postalCode",
    "cityName",
]


def add_user(sim: SimulatorHandle, external_id: str, **kw: str) -> httpx.Response:
    return call(sim, "addUser", "user", [external_id, *[""] * 7], ADD_USER_PARAMS, **kw)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    config = SimulatorConfig.from_settings(
        load_settings(), organization_id=ORG, key=KEY, extra_products=["5000"]
    )
    handle = start_simulator_thread(config.model_copy(update={"seed": 3}))
    yield handle
    handle.stop()


@pytest.fixture
def admin(sim: SimulatorHandle) -> Iterator[SimulatorAdmin]:
    with sim.admin() as client:
        client.reset()
        yield client


def test_the_cli_simulator_accepts_signed_calls_and_refuses_unsigned_ones() -> None:
    faults = Faults(rates={"getUser": FaultRates(http_503=1.0)})
    with start_simulator_process(
        org_id="3003", key="cli-key", products=["77"], faults=faults
    ) as sim:
        signed = call(sim, "removeUser", "user", ["42"], ["userId"], key="cli-key", org="3003")
        unsigned = http().post(
            f"{sim.base_url}/user?action=removeUser",
            data={"organizationId": "3003", "userId": "42"},
        )
        wrong_key = call(sim, "removeUser", "user", ["42"], ["userId"], key=KEY, org="3003")
        faulty = call(
            sim, "getUser", "user", ["42", ""], ["userId", "externalId"], key="cli-key", org="3003"
        )
        with sim.admin() as admin:
            stats = admin.stats()
            catalogue_ok = add_user(sim, "A", key="cli-key", org="3003")
            user_id = catalogue_ok.json()["userId"]
            # products: the config's service mapping plus --products
            for product, expected in (("1001", "ok"), ("77", "ok"), ("78", "error")):
                answer = call(
                    sim,
                    "activateProducts",
                    "packages",
                    [user_id, product],
                    ["userId", "productIds"],
                    key="cli-key",
                    org="3003",
                )
                assert answer.json()["status"] == expected, product
    assert signed.json()["code"] == "USER_NOT_FOUND"  # accepted: the user is just unknown
    assert unsigned.status_code == 200 and unsigned.json()["code"] == "INVALID_TOKEN"
    assert wrong_key.json()["code"] == "INVALID_TOKEN"
    assert faulty.status_code == 503
    assert stats["calls"] == 4 and stats["auth_failures"] == 2 and stats["errors_injected"] == 1


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--port", "70000"], "--port"),
        (["--port", "-1"], "--port"),
        (["--host", "no such host.invalid"], "--host"),
    ],
)
def test_the_cli_simulator_refuses_an_address_it_cannot_listen_on_without_a_traceback(
    args: list[str], named: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "icareus_bridge.cli", "simulator", *args],
        env={k: v for k, v in os.environ.items() if not k.startswith("ICAREUS_BRIDGE__")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert named in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_the_state_lists_users_with_their_products_and_devices(
    sim: SimulatorHandle, admin: SimulatorAdmin
) -> None:
    uid = add_user(sim, "SUB-1-VP1").json()["userId"]
    call(
        sim,
        "activateProducts",
        "packages",
        [uid, product_ids_param(["5000", "1002"])],
        ["userId", "productIds"],
    )
    call(
        sim,
        "addDevice",
        "devices",
        [uid, "SN-1", "SET_TOP_BOX"],
        ["userId", "deviceId", "deviceType"],
    )
    assert admin.state() == {
        "users": [
            {
                "userId": uid,
                "externalId": "SUB-1-VP1",
                "products": ["1002", "5000"],
                "devices": [{"deviceId": "SN-1", "deviceType": "SET_TOP_BOX"}],
            }
        ]
    }
    stats = admin.stats()
    assert {"calls", "effects", "duplicates_suppressed", "errors_injected"} <= set(stats)
    assert stats["effects"] == 3


def test_a_device_belongs_to_one_user_until_its_user_is_removed(
    sim: SimulatorHandle, admin: SimulatorAdmin
) -> None:
    first = add_user(sim, "A").json()["userId"]
    second = add_user(sim, "B").json()["userId"]
    names = ["userId", "deviceId", "deviceType"]
    assert call(sim, "addDevice", "devices", [first, "SN-1", "STB"], names).json()["status"] == "ok"
    taken = call(sim, "addDevice", "devices", [second, "SN-1", "STB"], names).json()
    assert taken["code"] == "DEVICE_IN_USE"
    call(sim, "removeUser", "user", [first], ["userId"])
    assert (
        call(sim, "addDevice", "devices", [second, "SN-1", "STB"], names).json()["status"] == "ok"
    )


def test_add_user_answers_user_exists_with_the_existing_id(
    sim: SimulatorHandle, admin: SimulatorAdmin
) -> None:
    first = add_user(sim, "A").json()
    again = add_user(sim, "A").json()
    assert again["code"] == "USER_EXISTS" and again["userId"] == first["userId"]


def test_a_repeated_idempotency_key_gets_the_first_answer(
    sim: SimulatorHandle, admin: SimulatorAdmin
) -> None:
    first = add_user(sim, "A", idempotency_key="k1").json()
    call(sim, "removeUser", "user", [first["userId"]], ["userId"])
    again = add_user(sim, "A", idempotency_key="k1").json()
    assert again == first
    assert admin.state() == {"users": []}
    assert admin.stats()["duplicates_suppressed"] == 1


def test_faults_are_set_read_and_reset_at_run_time(
    sim: SimulatorHandle, admin: SimulatorAdmin
) -> None:
    shown = admin.set_faults(latency_ms=5, rates={"*": {"http_500": 1.0}})
    assert shown["latency_ms"] == 5 and shown["rates"]["*"]["http_500"] == 1.0
    assert add_user(sim, "A").status_code == 500
    admin.set_faults(rates={}, outage=True, outage_mode="drop")
    with pytest.raises(httpx.TransportError):
        add_user(sim, "A")
    bad = http().post(sim.admin_url + "/faults", json={"rates": {"*": {"http_500": 2}}})
    assert bad.status_code == 400
    unknown = http().post(sim.admin_url + "/faults", json={"explode": True})
    assert unknown.status_code == 400
    admin.reset()
    assert admin.faults()["outage"] is False and admin.faults()["rates"] == {}
    assert add_user(sim, "A").json()["status"] == "ok"


def test_rates_inject_about_the_asked_share(sim: SimulatorHandle, admin: SimulatorAdmin) -> None:
    admin.set_faults(rates={"removeUser": {"http_503": 0.3, "status_error": 0.2}})
    answers = [call(sim, "removeUser", "user", ["1"], ["userId"]) for _ in range(200)]
    unavailable = sum(a.status_code == 503 for a in answers)
    injected = sum(a.status_code == 200 and a.json()["code"] == "INTERNAL_ERROR" for a in answers)
    assert 30 <= unavailable <= 90 and 15 <= injected <= 65
    assert admin.stats()["errors_injected"] == unavailable + injected
    assert add_user(sim, "A").json()["status"] == "ok"  # other actions untouched


def test_the_call_log_shows_calls_without_the_key_or_full_tokens(
    sim: SimulatorHandle, admin: SimulatorAdmin
) -> None:
    add_user(sim, "A", idempotency_key="r-1")
    call(sim, "removeUser", "user", ["1"], ["userId"], key="wrong")
    entries = admin.calls()
    assert [(e["action"], e["code"]) for e in entries] == [
        ("addUser", None),
        ("removeUser", "INVALID_TOKEN"),
    ]
    assert entries[0]["idempotencyKey"] == "r-1" and entries[0]["status"] == "ok"
    assert KEY not in str(entries) and all(len(e["params"]["token"]) <= 11 for e in entries)
    assert admin.calls(action="removeUser", limit=5) == entries[1:]
