"""The Icareus client against the simulator over real loopback HTTP: every operation, the token
check, each row of the outcome classification, retries, idempotent repeats, Retry-After and an
outage longer than the retry budget. Both HTTP libraries under the client are exercised."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal

import httpx
import pytest
from pydantic import SecretStr

from icareus_bridge.config import IcareusOperation, IcareusSettings, RetrySettings
from icareus_bridge.core.model import ProvisioningRequest, RequestType, SubscriberProfile
from icareus_bridge.icareus.client import CallResult, IcareusClient
from icareus_bridge.icareus.errors import (
    AuthIcareusError,
    PermanentIcareusError,
    TransientIcareusError,
)
from icareus_bridge.icareus.signing import sign
from icareus_bridge.icareus.simulator import (
    SimulatorAdmin,
    SimulatorConfig,
    SimulatorHandle,
    start_simulator_thread,
)
from icareus_bridge.pipeline import outcomes

ORG = "1001"
KEY = "test-organization-key"
PRODUCTS = frozenset({"1001", "1002", "1003", "10"})
Backend = Literal["aiohttp", "httpx"]
BACKENDS: list[Backend] = ["aiohttp", "httpx"]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    handle = start_simulator_thread(
        SimulatorConfig(organization_id=ORG, key=KEY, products=PRODUCTS, seed=7)
    )
    yield handle
    handle.stop()


@pytest.fixture
def admin(sim: SimulatorHandle) -> Iterator[SimulatorAdmin]:
    with sim.admin() as client:
        client.reset()
        yield client


def settings(
    sim: SimulatorHandle,
    backend: Backend = "aiohttp",
    *,
    key: str = KEY,
    org: str = ORG,
    base_url: str | None = None,
    max_attempts: int = 4,
    max_total_seconds: float = 10.0,
    read_timeout: float = 5.0,
    operations: dict[str, IcareusOperation] | None = None,
) -> IcareusSettings:
    extra: dict[str, Any] = {} if operations is None else {"operations": operations}
    return IcareusSettings(
        base_url=base_url or sim.base_url,
        organization_id=org,
        key=SecretStr(key),
        http_backend=backend,
        connect_timeout_seconds=1.0,
        read_timeout_seconds=read_timeout,
        total_timeout_seconds=read_timeout + 1.0,
        retry=RetrySettings(
            max_attempts=max_attempts,
            max_total_seconds=max_total_seconds,
            initial_backoff_seconds=0.01,
            max_backoff_seconds=0.05,
            jitter_seconds=0.01,
        ),
        **extra,
    )


def run(
    config: IcareusSettings,
    scenario: Callable[[IcareusClient], Awaitable[Any]],
    on_retry: Callable[[str], None] | None = None,
) -> Any:
    async def main() -> Any:
        async with IcareusClient(config, on_retry=on_retry) as client:
            return await scenario(client)

    return asyncio.run(main())


def add_user(
    client: IcareusClient, external_id: str = "SUB-1-ICAREUS-VP1"
) -> Awaitable[CallResult]:
    return client.add_user(external_id, idempotency_key=f"add-{external_id}")


# --- every operation -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_account_life_from_registration_to_removal(
    sim: SimulatorHandle, admin: SimulatorAdmin, backend: Backend
) -> None:
    profile = SubscriberProfile(
        first_name="Ada", last_name="Lovelace", email="ada@example.com", city="Nicosia"
    )

    async def scenario(client: IcareusClient) -> dict[str, Any]:
        added = await client.add_user("SUB-1-ICAREUS-VP1", profile, idempotency_key="r-1")
        uid = added.user_id
        assert uid is not None
        await client.activate_products(uid, ["1003", "1001", "10"], idempotency_key="r-2")
        await client.add_device(uid, "SN-1", "SET_TOP_BOX", idempotency_key="r-3")
        await client.add_device(uid, "SN-2", "SMART_CARD", idempotency_key="r-4")
        middle = admin.state()
        by_id = await client.get_user(user_id=uid)
        by_key = await client.get_user(external_id="SUB-1-ICAREUS-VP1")
        await client.cancel_products(uid, ["1003"], idempotency_key="r-5")
        await client.remove_device(uid, "SN-1", idempotency_key="r-6")
        late = admin.state()
        removed = await client.remove_user(uid, idempotency_key="r-7")
        return {
            "added": added,
            "middle": middle,
            "by_id": by_id,
            "by_key": by_key,
            "late": late,
            "removed": removed,
        }

    out = run(settings(sim, backend), scenario)
    uid = out["added"].user_id
    assert out["added"].attempts == 1 and out["added"].code is None
    assert out["middle"] == {
        "users": [
            {
                "userId": uid,
                "externalId": "SUB-1-ICAREUS-VP1",
                "products": ["10", "1001", "1003"],
                "devices": [
                    {"deviceId": "SN-1", "deviceType": "SET_TOP_BOX"},
                    {"deviceId": "SN-2", "deviceType": "SMART_CARD"},
                ],
            }
        ]
    }
    for read in (out["by_id"], out["by_key"]):
        assert read.user is not None
        assert read.user.user_id == uid
        assert read.user.products == {"10", "1001", "1003"}
        assert read.user.devices == {"SN-1": "SET_TOP_BOX", "SN-2": "SMART_CARD"}
    assert out["late"]["users"][0]["products"] == ["10", "1001"]
    assert out["late"]["users"][0]["devices"] == [{"deviceId": "SN-2", "deviceType": "SMART_CARD"}]
    assert out["removed"].code is None
    assert admin.state() == {"users": []}

    calls = admin.calls()
    assert [c["action"] for c in calls] == [
        "addUser",
        "activateProducts",
        "addDevice",
        "addDevice",
        "getUser",
        "getUser",
        "cancelProducts",
        "removeDevice",
        "removeUser",
    ]
    assert calls[1]["params"]["productIds"] == "10,1001,1003"  # ascending, as signed
    assert calls[0]["params"]["firstName"] == "Ada"
    assert [c["idempotencyKey"] for c in calls if c["action"] != "getUser"] == [
        "r-1",
        "r-2",
        "r-3",
        "r-4",
        "r-5",
        "r-6",
        "r-7",
    ]
    assert all(c["params"]["organizationId"] == ORG for c in calls)
    assert admin.stats()["effects"] == 7


def test_send_maps_each_planned_request_to_its_call(
    sim: SimulatorHandle, admin: SimulatorAdmin
) -> None:
    def request(n: int, type_: RequestType, **fields: Any) -> ProvisioningRequest:
        return ProvisioningRequest(
            request_id=f"req-{n}",
            number=str(n),
            type=type_,
            subscription_id="S1",
            subscription_number="SUB-1",
            distributor="ICAREUS-VP1",
            account_key="SUB-1-ICAREUS-VP1",
            event_id="e1",
            action_code="BECOME_SUBSCRIBER",
            sequence=n,
            created_at=0,
            **fields,
        )

    async def scenario(client: IcareusClient) -> list[CallResult]:
        profile = SubscriberProfile(first_name="A", last_name="B")
        added = await client.send(request(1, RequestType.ADD_USER, profile=profile))
        uid = added.user_id
        return [
            added,
            await client.send(
                request(2, RequestType.ADD_DEVICE, device_id="SN-9", device_type="OTT_DEVICE"),
                user_id=uid,
            ),
            await client.send(
                request(3, RequestType.ACTIVATE_PRODUCTS, product_ids=("1002",)), user_id=uid
            ),
        ]

    results = run(settings(sim), scenario)
    assert [r.operation for r in results] == ["add_user", "add_device", "activate_products"]
    assert [c["idempotencyKey"] for c in admin.calls()] == ["req-1", "req-2", "req-3"]
    user = admin.state()["users"][0]
    assert user["products"] == ["1002"] and user["devices"][0]["deviceId"] == "SN-9"


# --- the token ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "org", "skew"),
    [("wrong-key", ORG, 0.0), (KEY, "9999", 0.0), (KEY, ORG, 400.0), (KEY, ORG, -400.0)],
    ids=["wrong key", "wrong organization", "clock 400 s ahead", "clock 400 s behind"],
)
def test_a_badly_signed_call_is_the_bridges_failure_retried_under_the_budget(
    sim: SimulatorHandle, admin: SimulatorAdmin, key: str, org: str, skew: float
) -> None:
    refusals: list[AuthIcareusError] = []

    async def main() -> None:
        config = settings(sim, key=key, org=org, max_attempts=3)
        async with IcareusClient(
            config, clock=lambda: time.time() + skew, on_auth_failure=refusals.append
        ) as client:
            await add_user(client)

    with pytest.raises(AuthIcareusError) as refused:
        asyncio.run(main())
    assert not isinstance(refused.value, PermanentIcareusError)
    assert refused.value.code == "INVALID_TOKEN" and refused.value.reason == "auth"
    assert refused.value.http_status == 200
    assert refused.value.attempts == 3 == len(refusals)
    assert admin.stats()["auth_failures"] == 3
    assert admin.state() == {"users": []}


def test_a_clock_within_the_window_is_accepted(sim: SimulatorHandle, admin: SimulatorAdmin) -> None:
    async def main() -> CallResult:
        async with IcareusClient(settings(sim), clock=lambda: time.time() - 250) as client:
            return await add_user(client)

    assert asyncio.run(main()).user_id is not None


def test_unsigned_and_tampered_calls_are_refused_signed_ones_accepted(
    sim: SimulatorHandle, admin: SimulatorAdmin
) -> None:
    url = sim.base_url + "/user?action=removeUser"
    now = time.time()
    good = sign(ORG, ["42"], KEY, now)
    with httpx.Client() as http:
        unsigned = http.post(url, data={"organizationId": ORG, "userId": "42"})
        tampered = http.post(url, data={"organizationId": ORG, "userId": "43", "token": good})
        signed = http.post(url, data={"organizationId": ORG, "userId": "42", "token": good})
    assert unsigned.status_code == 200 and unsigned.json()["code"] == "INVALID_TOKEN"
    assert tampered.json()["code"] == "INVALID_TOKEN"
    assert signed.json() == {"status": "error", "code": "USER_NOT_FOUND", "message": "no such user"}


# --- the classification, row by row ----------------------------------------------------------


def test_repeated_add_user_adopts_the_existing_user_id(
    sim: SimulatorHandle, admin: SimulatorAdmin
) -> None:
    async def scenario(client: IcareusClient) -> tuple[CallResult, CallResult]:
        first = await client.add_user("SUB-7-ICAREUS-VP2", idempotency_key="a")
        again = await client.add_user("SUB-7-ICAREUS-VP2", idempotency_key="b")
        return first, again

    first, again = run(settings(sim), scenario)
    assert again.code == "USER_EXISTS"
    assert again.user_id == first.user_id
    assert admin.stats()["effects"] == 1


def test_removing_an_unknown_user_is_success_and_reading_one_finds_nothing(
    sim: SimulatorHandle, admin: SimulatorAdmin
) -> None:
    async def scenario(client: IcareusClient) -> tuple[CallResult, CallResult]:
        removed = await client.remove_user("777", idempotency_key="gone")
        read = await client.get_user(external_id="NOBODY")
        return removed, read

    removed, read = run(settings(sim), scenario)
    assert removed.code == "USER_NOT_FOUND" and removed.attempts == 1
    assert read.code == "USER_NOT_FOUND" and read.user is None


@pytest.mark.parametrize(
    ("name", "expected_code"),
    [
        ("unknown product", "PRODUCT_NOT_FOUND"),
        ("device of another user", "DEVICE_IN_USE"),
        ("products of an unknown user", "USER_NOT_FOUND"),
        ("injected status error under HTTP 200", "INTERNAL_ERROR"),
    ],
)
def test_icareus_refusals_are_permanent_and_sent_once(
    sim: SimulatorHandle, admin: SimulatorAdmin, name: str, expected_code: str
) -> None:
    retries: list[str] = []

    async def scenario(client: IcareusClient) -> None:
        first = (await add_user(client, "A")).user_id
        second = (await add_user(client, "B")).user_id
        assert first and second
        await client.add_device(first, "SN-1", "SET_TOP_BOX", idempotency_key="d1")
        if name == "unknown product":
            await client.activate_products(first, ["1001", "9999"], idempotency_key="x")
        elif name == "device of another user":
            await client.add_device(second, "SN-1", "SET_TOP_BOX", idempotency_key="x")
        elif name == "products of an unknown user":
            await client.activate_products("424242", ["1001"], idempotency_key="x")
        else:
            admin.set_faults(script=[{"fault": "status_error", "action": "cancelProducts"}])
            await client.cancel_products(first, ["1001"], idempotency_key="x")

    with pytest.raises(PermanentIcareusError) as refused:
        run(settings(sim), scenario, on_retry=retries.append)
    error = refused.value
    assert error.code == expected_code
    assert error.http_status == 200
    assert error.attempts == 1 and retries == []
    assert expected_code in str(error)
    assert len([c for c in admin.calls() if c["idempotencyKey"] == "x"]) == 1
    if name == "unknown product":
        assert "9999" in error.icareus_message
        assert admin.state()["users"][0]["products"] == []  # nothing applied


def test_an_http_4xx_is_permanent(sim: SimulatorHandle, admin: SimulatorAdmin) -> None:
    misnamed = {"add_user": IcareusOperation(module="user", action="createUser")}
    config = settings(sim, operations=misnamed)
    with pytest.raises(PermanentIcareusError) as refused:
        run(config, lambda client: add_user(client))
    assert refused.value.http_status == 404
    assert refused.value.code == "UNKNOWN_ACTION"
    assert refused.value.attempts == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("http_500", "server_error"),
        ("http_503", "server_error"),
        ("http_429", "throttled"),
        ("drop", "reset"),
        ("slow", "timeout"),
    ],
)
def test_transient_faults_are_retried_until_the_call_succeeds(
    sim: SimulatorHandle, admin: SimulatorAdmin, backend: Backend, fault: str, reason: str
) -> None:
    admin.set_faults(
        script=[{"fault": fault, "action": "addDevice", "times": 2}],
        retry_after_seconds=0,
        slow_ms=5_000,
    )
    retries: list[str] = []

    async def scenario(client: IcareusClient) -> CallResult:
        uid = (await add_user(client)).user_id
        assert uid
        return await client.add_device(uid, "SN-1", "SMART_CARD", idempotency_key="dev-1")

    result = run(settings(sim, backend, read_timeout=0.3), scenario, on_retry=retries.append)
    assert result.attempts == 3
    assert retries == [reason, reason]
    assert result.first_failure_at is not None and result.last_failure_at is not None
    assert result.first_failure_at <= result.last_failure_at
    assert admin.state()["users"][0]["devices"] == [
        {"deviceId": "SN-1", "deviceType": "SMART_CARD"}
    ]
    stats = admin.stats()
    assert stats["errors_injected"] == 2
    # A slow answer was applied before it was late: the retries were replays, not new effects.
    assert stats["effects"] == 2
    assert stats["duplicates_suppressed"] == (2 if fault == "slow" else 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unreachable_icareus_is_a_transient_connect_failure(
    sim: SimulatorHandle, backend: Backend
) -> None:
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = settings(sim, backend, base_url=f"http://127.0.0.1:{port}/api", max_attempts=3)
    with pytest.raises(TransientIcareusError) as failed:
        run(config, lambda client: add_user(client))
    assert failed.value.reason == "connect"
    assert failed.value.attempts == 3
    assert failed.value.http_status is None


# --- idempotency, Retry-After, outage -----------------------------------------------------------


def test_a_repeated_idempotency_key_returns_the_first_answer_and_applies_nothing_twice(
    sim: SimulatorHandle, admin: SimulatorAdmin
) -> None:
    async def scenario(client: IcareusClient) -> list[CallResult]:
        uid = (await add_user(client)).user_id
        assert uid
        first = await client.activate_products(uid, ["1001"], idempotency_key="same")
        await client.cancel_products(uid, ["1001"], idempotency_key="other")
        again = await client.activate_products(uid, ["1001"], idempotency_key="same")
        return [first, again]

    first, again = run(settings(sim), scenario)
    assert first.response_payload == again.response_payload == {"status": "ok"}
    assert admin.state()["users"][0]["products"] == []  # the replay did not re-activate
    stats = admin.stats()
    assert stats["duplicates_suppressed"] == 1 and stats["effects"] == 3


def test_a_connection_dropped_after_the_effect_is_retried_without_a_second_effect(
    sim: SimulatorHandle, admin: SimulatorAdmin
) -> None:
    admin.set_faults(script=[{"fault": "drop_after", "action": "addUser"}])
    result = run(settings(sim), lambda client: add_user(client))
    assert result.attempts == 2
    assert result.user_id == admin.state()["users"][0]["userId"]
    stats = admin.stats()
    assert stats["effects"] == 1 and stats["duplicates_suppressed"] == 1


def test_retry_after_is_honoured(sim: SimulatorHandle, admin: SimulatorAdmin) -> None:
    admin.set_faults(script=[{"fault": "http_429", "action": "addUser"}], retry_after_seconds=1)
    result = run(settings(sim), lambda client: add_user(client))
    assert result.attempts == 2
    throttled, accepted = admin.calls(action="addUser")
    assert throttled["httpStatus"] == 429 and accepted["httpStatus"] == 200
    assert accepted["at"] - throttled["at"] >= 1.0  # backoff alone would be ~0.01 s


def test_an_outage_longer_than_the_retry_budget_ends_in_a_clear_transient_failure(
    sim: SimulatorHandle, admin: SimulatorAdmin
) -> None:
    admin.set_faults(outage=True)
    retries: list[str] = []
    config = settings(sim, max_attempts=50, max_total_seconds=0.5)
    with pytest.raises(TransientIcareusError) as failed:
        run(config, lambda client: add_user(client), on_retry=retries.append)
    error = failed.value
    assert error.reason == "server_error" and error.http_status == 503
    # The time budget ended the retries, not the attempt budget; none began past the budget.
    assert 2 <= error.attempts < 50 and len(retries) == error.attempts - 1
    assert error.last_failure_at - error.first_failure_at <= 0.5
    assert "add_user" in str(error) and "503" in str(error)
    assert "Service unavailable" in error.response_excerpt
    assert admin.stats()["errors_injected"] == error.attempts
    admin.set_faults(outage=False)
    assert run(config, lambda client: add_user(client)).attempts == 1


# --- secrets ----------------------------------------------------------------------------------


def test_the_key_and_signatures_never_leave_the_client(
    sim: SimulatorHandle, admin: SimulatorAdmin
) -> None:
    admin.set_faults(script=[{"fault": "status_error", "action": "addDevice"}])

    async def scenario(client: IcareusClient) -> tuple[CallResult, PermanentIcareusError]:
        added = await add_user(client)
        assert added.user_id
        try:
            await client.add_device(added.user_id, "SN-1", "STB", idempotency_key="k")
        except PermanentIcareusError as exc:
            return added, exc
        raise AssertionError("expected a refusal")

    added, refused = run(settings(sim), scenario)
    token = added.request_payload["token"]
    assert token.startswith("01") and len(token) <= 11  # version + time, no signature
    exposed = json.dumps(
        [
            added.request_payload,
            added.response_payload,
            admin.calls(),
            admin.stats(),
            str(refused),
            refused.response_excerpt,
            repr(sim),
        ]
    )
    assert KEY not in exposed
    assert not any(len(c["params"]["token"]) > 11 for c in admin.calls())


def test_personal_data_stays_out_of_results_whatever_the_parameters_are_named() -> None:
    renamed = {
        "add_user": IcareusOperation(
            module="user",
            action="addUser",
            params=["ext", "given", "family", "mail", "tel", "country", "zip", "town"],
        )
    }
    handle = start_simulator_thread(
        SimulatorConfig(organization_id=ORG, key=KEY, products=PRODUCTS, operations=renamed)
    )
    try:
        profile = SubscriberProfile(
            first_name="Maria",
            last_name="Ioannou",
            email="maria@example.org",
            phone="+35799000000",
            country_code="CY",
            postal_code="1010",
            city="Nicosia",
        )
        request = ProvisioningRequest(
            request_id="req-1",
            number="PR-1",
            type=RequestType.ADD_USER,
            subscription_id="sub-1",
            subscription_number="S-100",
            distributor="VP1",
            account_key="S-100-VP1",
            event_id="ev-1",
            action_code="BECOME_SUBSCRIBER",
            sequence=0,
            created_at=1_700_000_000_000,
            profile=profile,
        )
        added: CallResult = run(
            settings(handle, operations=renamed), lambda client: client.send(request)
        )
        assert added.user_id
        shown = outcomes.completed(request, added, None, executed_at=1).request_payload or ""
        for text in (json.dumps(added.request_payload), shown):
            for value in ("Maria", "Ioannou", "maria@example.org", "+35799000000", "1010"):
                assert value not in text
            assert "Nicosia" not in text
        assert json.loads(shown)["ext"] == "S-100-VP1"
        assert json.loads(shown)["country"] == "CY"
    finally:
        handle.stop()
