"""What CRM reads back for each request the dispatcher finished."""

from __future__ import annotations

import json

from icareus_bridge.core.model import (
    LifeCycleState,
    ProvisioningRequest,
    RejectionCode,
    RequestType,
    SubscriberProfile,
)
from icareus_bridge.icareus.client import CallResult
from icareus_bridge.icareus.errors import PermanentIcareusError
from icareus_bridge.pipeline import outcomes


def add_user_request() -> ProvisioningRequest:
    return ProvisioningRequest(
        request_id="req-1",
        number="PR-1",
        type=RequestType.ADD_USER,
        subscription_id="sub-1",
        subscription_number="S-100",
        distributor="ICAREUS-VP1",
        account_key="S-100-ICAREUS-VP1",
        event_id="ev-1",
        action_code="BECOME_SUBSCRIBER",
        sequence=0,
        created_at=1_700_000_000_000,
        profile=SubscriberProfile(first_name="Maria", last_name="Ioannou", email="m@example.com"),
    )


def test_completed_add_user_reports_the_icareus_user_id_without_personal_data() -> None:
    call = CallResult(
        operation="add_user",
        request_payload={
            "organizationId": "1001",
            "externalId": "S-100-ICAREUS-VP1",
            "firstName": "Maria",
            "emailAddress": "m@example.com",
            "token": "01-6745e2a0",
        },
        response_payload={"status": "ok", "userId": "u-42"},
        http_status=200,
        attempts=2,
        latency_seconds=0.1,
        user_id="u-42",
    )
    result = outcomes.completed(add_user_request(), call, None, executed_at=1_700_000_000_500)
    assert result.life_cycle_state is LifeCycleState.COMPLETED
    assert result.reference_number == "u-42"
    assert result.attempts == 2
    assert result.executed_at == 1_700_000_000_500
    assert result.request_payload is not None
    sent = json.loads(result.request_payload)
    assert sent["externalId"] == "S-100-ICAREUS-VP1"
    assert "Maria" not in result.request_payload
    assert "m@example.com" not in result.request_payload
    assert sent["token"] != "01-6745e2a0"


def test_icareus_refusal_keeps_its_code_in_the_description() -> None:
    error = PermanentIcareusError(
        "refused",
        operation="add_user",
        code="INVALID_PROFILE",
        icareus_message="email is not valid",
        http_status=200,
        response_excerpt='{"status":"error","code":"INVALID_PROFILE"}',
    )
    error.attempts = 1
    result = outcomes.rejected_by_icareus(add_user_request(), error, None, executed_at=5)
    assert result.life_cycle_state is LifeCycleState.REJECTED
    assert result.error_code == RejectionCode.ICAREUS_REJECTED
    assert result.error_description is not None
    assert "INVALID_PROFILE" in result.error_description
    assert result.attempts == 1


def test_dependency_rejection_sends_nothing() -> None:
    result = outcomes.rejected_without_call(
        add_user_request(), RejectionCode.DEPENDENCY_REJECTED, "ADD_USER req-0 refused", 5
    )
    assert result.attempts == 0
    assert result.error_code == RejectionCode.DEPENDENCY_REJECTED
