"""Folding what actually happened back into the known state: results of requests (the planner's
feedback loop) and Icareus' real holdings (the reset utility). Pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Iterable

from icareus_bridge.core.model import (
    AccountState,
    LifecycleEvent,
    LifeCycleState,
    ProvisioningResult,
    Rejection,
    RequestType,
    SubscriptionRecord,
)
from icareus_bridge.core.plan import account_key


def apply_result(state: SubscriptionRecord, result: ProvisioningResult) -> SubscriptionRecord:
    """The known state corrected by one request's result.

    `plan` already assumed every request completes, so a COMPLETED result only adds what was
    unknown then: the user id of a completed ADD_USER (`reference_number`). A REJECTED result
    undoes its request's assumption:
      - ADD_USER: the account is not registered (`registration_rejected`); it holds no products
        or devices; the next event that wants something of it plans ADD_USER again;
      - ACTIVATE_PRODUCTS / ADD_DEVICE: those products / that device are not held;
      - CANCEL_PRODUCTS / REMOVE_DEVICE / REMOVE_USER: they are still held (the account is
        brought back if the plan had dropped it).
    Safe to apply twice, in any interleaving with later plans, and for rejections the planner
    made itself (attempts 0): those change nothing, since the plan did not apply them.
    """
    if result.life_cycle_state is LifeCycleState.COMPLETED:
        return _completed(state, result)
    if result.life_cycle_state is not LifeCycleState.REJECTED:
        return state
    if result.type in _ADDITIONS:
        return _addition_refused(state, result)
    return _removal_refused(state, result)


# Requests that add something to Icareus; the others (CANCEL_PRODUCTS, REMOVE_DEVICE,
# REMOVE_USER) take something away.
_ADDITIONS = frozenset(
    {RequestType.ADD_USER, RequestType.ACTIVATE_PRODUCTS, RequestType.ADD_DEVICE}
)


def _completed(state: SubscriptionRecord, result: ProvisioningResult) -> SubscriptionRecord:
    """A COMPLETED ADD_USER records the account's user id; anything else was assumed."""
    acc = state.accounts.get(result.distributor)
    if (
        result.type is RequestType.ADD_USER
        and acc is not None
        and acc.registered
        and result.reference_number
        and acc.user_id != result.reference_number
    ):
        return _with(state, acc.model_copy(update={"user_id": result.reference_number}))
    return state


def _addition_refused(state: SubscriptionRecord, result: ProvisioningResult) -> SubscriptionRecord:
    """A REJECTED ADD_USER, ACTIVATE_PRODUCTS or ADD_DEVICE: what it added is not held."""
    acc = state.accounts.get(result.distributor)
    if acc is None:
        return state
    if result.type is RequestType.ADD_USER:
        if acc.user_id is not None or not acc.registered:
            return state  # not ours to undo: never applied, or registered by a later reset
        return _with(
            state,
            acc.model_copy(
                update={
                    "registered": False,
                    "registration_rejected": True,
                    "products": frozenset(),
                    "devices": {},
                }
            ),
        )
    if result.type is RequestType.ACTIVATE_PRODUCTS:
        if not acc.products & set(result.product_ids):
            return state
        return _with(
            state, acc.model_copy(update={"products": acc.products - set(result.product_ids)})
        )
    # ADD_DEVICE
    if result.device_id is None or result.device_id not in acc.devices:
        return state
    if result.device_type is not None and acc.devices[result.device_id] != result.device_type:
        return state  # a later plan replaced it with another type of device
    devices = dict(acc.devices)
    del devices[result.device_id]
    return _with(state, acc.model_copy(update={"devices": devices}))


def _removal_refused(state: SubscriptionRecord, result: ProvisioningResult) -> SubscriptionRecord:
    """A REJECTED CANCEL_PRODUCTS, REMOVE_DEVICE or REMOVE_USER: the thing is still in Icareus
    (the account is brought back, registered with the result's user id, if the plan had
    dropped it)."""
    d = result.distributor
    known = d in state.accounts
    acc = state.accounts.get(d)
    if acc is None:
        acc = AccountState(
            distributor=d,
            account_key=result.account_key or account_key(state.subscription_number, d),
            registered=True,
            user_id=result.user_id,
        )
    if result.type is RequestType.CANCEL_PRODUCTS:
        if set(result.product_ids) <= acc.products and known:
            return state
        return _with(
            state, acc.model_copy(update={"products": acc.products | set(result.product_ids)})
        )
    if result.type is RequestType.REMOVE_DEVICE:
        if result.device_id is None:
            return state if known else _with(state, acc)
        if result.device_id in acc.devices and known:
            return state
        devices = {**acc.devices, result.device_id: result.device_type or ""}
        return _with(state, acc.model_copy(update={"devices": devices}))
    # REMOVE_USER
    return state if known else _with(state, acc)


def _with(state: SubscriptionRecord, account: AccountState) -> SubscriptionRecord:
    accounts = dict(state.accounts)
    accounts[account.distributor] = account  # an existing key keeps its viewing-point place
    return state.model_copy(update={"accounts": accounts})


def observed_state(
    known: SubscriptionRecord | None,
    subscription_id: str,
    subscription_number: str,
    observed: Iterable[AccountState],
) -> SubscriptionRecord:
    """The state to plan a RESET_SUBSCRIPTION from: the accounts Icareus actually holds.

    `observed` holds one AccountState per account key that Icareus' getUser found (distributor,
    account key, user id, products, devices; `registered` is forced True). Accounts not found
    are absent, so the plan registers them again if the subscription needs them; a refused
    registration is forgotten. Viewing-point order, version and last event come from
    `known`, so the reset event is planned against the same history (see docs/CORE.md).
    """
    found = {a.distributor: a for a in observed}
    accounts: dict[str, AccountState] = {}
    order = [d for d in (known.accounts if known else {}) if d in found]
    order += [d for d in found if d not in order]
    for d in order:
        a = found[d]
        accounts[d] = a.model_copy(update={"registered": True, "registration_rejected": False})
    if known is None:
        return SubscriptionRecord(
            subscription_id=subscription_id,
            subscription_number=subscription_number,
            accounts=accounts,
        )
    return known.model_copy(update={"accounts": accounts})


def rejection_result(
    rejection: Rejection, event: LifecycleEvent, *, executed_at: int | None = None
) -> ProvisioningResult:
    """A planner rejection as the REJECTED result CRM receives (attempts 0: nothing was sent)."""
    sub = event.subscription
    return ProvisioningResult(
        request_id=rejection.request_id,
        number=rejection.number,
        type=rejection.type,
        subscription_id=sub.id,
        subscription_number=sub.number,
        distributor=rejection.distributor,
        account_key=rejection.account_key,
        event_id=event.event_id,
        action_code=event.action.code,
        life_cycle_state=LifeCycleState.REJECTED,
        error_code=rejection.code.value,
        error_description=rejection.detail,
        attempts=0,
        created_at=event.occurred_at,
        executed_at=executed_at if executed_at is not None else event.occurred_at,
        sequence=rejection.sequence,
        user_id=rejection.user_id,
        product_ids=rejection.product_ids,
        device_id=rejection.device_id,
        device_type=rejection.device_type,
    )


__all__ = ["apply_result", "observed_state", "rejection_result"]
