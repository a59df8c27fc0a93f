"""The pieces of `icareus-bridge status` that need no broker: Java's murmur2 (where a keyed
record lands) and the status document, which never carries personal data."""

from __future__ import annotations

import json

import pytest

from icareus_bridge.core.model import LifeCycleState, ProvisioningResult, RequestType
from icareus_bridge.core.plan import plan
from icareus_bridge.kafka.scan import default_partition, murmur2
from icareus_bridge.ops.state_lookup import (
    DeadLetter,
    KnownState,
    ResultsWindow,
    SeenResult,
    SubscriptionFacts,
)
from icareus_bridge.ops.status import render
from icareus_bridge.pipeline.parking import ParkedKey
from tests.unit.crm_events import SUB_ID, SUB_NUMBER, event, item, provider, subscription, svc

PERSONAL = ("Maria", "Georgiou", "maria@example.org", "+35799000000", "Nicosia", "1010", "AC0001")


@pytest.mark.parametrize(
    ("key", "signed"),
    [
        # Kafka's own test vectors (clients UtilsTest.testMurmur2).
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_is_kafkas(key: bytes, signed: int) -> None:
    assert murmur2(key) == signed & 0xFFFFFFFF
    assert default_partition(key, 6) == (signed & 0x7FFFFFFF) % 6


def facts(*, parked: bool) -> SubscriptionFacts:
    sub = subscription(
        2,
        services=[svc("s1", "BASIC-TV", "VP1"), svc("s2", "KIDS", "VP2")],
        items=[item("i1", "SN-9", distributor="VP2")],
    )
    state = plan(None, event("BECOME_SUBSCRIBER", sub), provider()).state
    marker = ParkedKey(SUB_ID, "req-1", 0, 1_764_000_000_000) if parked else None
    result = ProvisioningResult(
        request_id="req-1",
        number=f"{SUB_NUMBER}-2-01",
        type=RequestType.ADD_USER,
        subscription_id=SUB_ID,
        subscription_number=SUB_NUMBER,
        distributor="VP1",
        account_key=f"{SUB_NUMBER}-VP1",
        event_id="e-1",
        action_code="BECOME_SUBSCRIBER",
        life_cycle_state=LifeCycleState.REJECTED,
        error_code="ICAREUS_REJECTED",
        error_description="INVALID_PROFILE: Maria Georgiou refused",
        request_payload='{"firstName": "Maria"}',
        executed_at=1_764_000_001_000,
    )
    return SubscriptionFacts(
        state=KnownState(state, 0, 17, 1_764_000_002_000, marker),
        dead_letters=[
            DeadLetter(0, 3, "dispatch", "RETRIES_EXHAUSTED", "2026-11-26T10:00:00.000Z", None, 0),
            DeadLetter(0, 4, "dispatch", "PARKED", "2026-11-26T10:00:01.000Z", "req-1", 0),
        ],
        results=[SeenResult(result, 5, None)],
        results_window=ResultsWindow(0, 0, 6, True),
    )


def test_status_shows_accounts_parking_dead_letters_and_results() -> None:
    doc = render(facts(parked=True))

    assert doc["last_applied_version"] == 2
    assert doc["last_applied_at"] == "2025-11-24T16:00:02.000Z"
    assert [(a["distributor"], a["products"], a["devices"]) for a in doc["accounts"]] == [
        ("VP1", ["1001"], []),
        ("VP2", ["1004"], [{"device_id": "SN-9", "device_type": "SET_TOP_BOX"}]),
    ]
    assert doc["parked"] is True and doc["parked_behind"] == "req-1"
    assert doc["dead_letters"] == 2
    assert doc["dead_letters_by_reason"] == {"dispatch:PARKED": 1, "dispatch:RETRIES_EXHAUSTED": 1}
    assert doc["last_dead_letter_at"] == "2026-11-26T10:00:01.000Z"
    assert doc["last_results"] == [
        {
            "request_id": "req-1",
            "number": f"{SUB_NUMBER}-2-01",
            "type": "ADD_USER",
            "distributor": "VP1",
            "state": "REJECTED",
            "error_code": "ICAREUS_REJECTED",
            "executed_at": "2025-11-24T16:00:01.000Z",
            "event_id": "e-1",
        }
    ]
    assert render(facts(parked=False))["parked"] is False


def test_status_never_shows_the_subscribers_personal_data() -> None:
    text = json.dumps(render(facts(parked=False)))

    assert not any(p in text for p in PERSONAL)
