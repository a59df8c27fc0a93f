"""The result record CRM reads for each request the dispatcher finished: built from the planned
`ProvisioningRequest` and what Icareus answered (a `CallResult`, a permanent refusal, or a
dependency that failed earlier in the plan). Payloads are JSON text without tokens or personal
data."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from icareus_bridge.core.model import (
    LifeCycleState,
    ProvisioningRequest,
    ProvisioningResult,
    RejectionCode,
)
from icareus_bridge.icareus.client import CallResult
from icareus_bridge.icareus.errors import PermanentIcareusError, redact


def _json(payload: Mapping[str, Any] | None) -> str | None:
    if payload is None:
        return None
    return json.dumps(redact(dict(payload)), separators=(",", ":"), ensure_ascii=False)


def planned_payload(request: ProvisioningRequest) -> str:
    """The request's parameters as planned, for results of requests that were never sent."""
    params = {k: v for k, v in request.params().items() if v is not None}
    return json.dumps(redact(params), separators=(",", ":"), ensure_ascii=False)


def request_fields(request: ProvisioningRequest) -> dict[str, Any]:
    """What a result copies from its request (ids, type, account, plan position, parameters)."""
    return {
        "request_id": request.request_id,
        "number": request.number,
        "type": request.type,
        "subscription_id": request.subscription_id,
        "subscription_number": request.subscription_number,
        "distributor": request.distributor,
        "account_key": request.account_key,
        "event_id": request.event_id,
        "action_code": request.action_code,
        "created_at": request.created_at,
        "sequence": request.sequence,
        "product_ids": request.product_ids,
        "device_id": request.device_id,
        "device_type": request.device_type,
    }


def completed(
    request: ProvisioningRequest, call: CallResult, user_id: str | None, executed_at: int
) -> ProvisioningResult:
    """Icareus did what was asked (or said it already held: USER_EXISTS, USER_NOT_FOUND).
    `user_id` is the user the call was about; for ADD_USER, the id Icareus gave."""
    uid = call.user_id if call.user_id is not None else user_id
    return ProvisioningResult(
        **request_fields(request),
        life_cycle_state=LifeCycleState.COMPLETED,
        reference_number=uid,
        user_id=uid,
        request_payload=_json(call.request_payload),
        response_payload=_json(call.response_payload),
        attempts=call.attempts,
        executed_at=executed_at,
    )


def rejected_by_icareus(
    request: ProvisioningRequest,
    error: PermanentIcareusError,
    user_id: str | None,
    executed_at: int,
) -> ProvisioningResult:
    """Icareus refused the call; its own code and message are kept in the description."""
    description = f"Icareus {error.operation} refused: {error.code}"
    if error.icareus_message:
        description += f": {error.icareus_message}"
    return ProvisioningResult(
        **request_fields(request),
        life_cycle_state=LifeCycleState.REJECTED,
        error_code=RejectionCode.ICAREUS_REJECTED,
        error_description=description,
        reference_number=user_id,
        user_id=user_id,
        request_payload=planned_payload(request),
        response_payload=error.response_excerpt or None,
        attempts=error.attempts,
        executed_at=executed_at,
    )


def rejected_without_call(
    request: ProvisioningRequest,
    code: RejectionCode,
    description: str,
    executed_at: int,
) -> ProvisioningResult:
    """Decided by the dispatcher without calling Icareus (attempts 0), e.g. the account's
    ADD_USER of the same plan was refused (DEPENDENCY_REJECTED)."""
    return ProvisioningResult(
        **request_fields(request),
        life_cycle_state=LifeCycleState.REJECTED,
        error_code=code,
        error_description=description,
        reference_number=request.user_id,
        user_id=request.user_id,
        request_payload=planned_payload(request),
        attempts=0,
        executed_at=executed_at,
    )


__all__ = [
    "completed",
    "planned_payload",
    "rejected_by_icareus",
    "rejected_without_call",
    "request_fields",
]
