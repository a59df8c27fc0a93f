"""Planning a reset (RESET_SUBSCRIPTION) from what Icareus holds: the one piece of code the
dispatcher runs before executing a reset, `icareus-bridge reset --dry-run` runs to show it, and
the planner runs for its own next known state.

`observe` reads `getUser` by account key for every configured Icareus distributor in
viewing-point order; `plan_reset` plans the event against that observed state."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from icareus_bridge.core.feedback import observed_state
from icareus_bridge.core.model import (
    AccountState,
    Decision,
    LifecycleEvent,
    Subscription,
    SubscriptionRecord,
)
from icareus_bridge.core.plan import account_key, plan
from icareus_bridge.core.provider import ProviderSettings

if TYPE_CHECKING:  # the planner imports this module too, and needs no HTTP client
    from icareus_bridge.icareus.client import CallResult


class UserLookup(Protocol):
    """The one Icareus call a reset's observation makes (`IcareusClient.get_user`)."""

    async def get_user(self, *, external_id: str) -> CallResult:
        """The user whose external id (account key) is `external_id`, if Icareus holds one."""
        ...


def reset_order(sub: Subscription, configured: list[str]) -> list[str]:
    """Icareus distributors in viewing-point order: first appearance in the subscription, then
    the other configured ones (an account CRM no longer mentions may still exist)."""
    order: list[str] = []
    for d in [s.distributor for s in sub.services] + [i.distributor for i in sub.installed_items]:
        if d is not None and d in configured and d not in order:
            order.append(d)
    return order + [d for d in configured if d not in order]


async def observe(
    client: UserLookup,
    sub: Subscription,
    provider: ProviderSettings,
    *,
    found: Callable[[str, str], None] | None = None,
) -> dict[str, AccountState]:
    """What Icareus holds for every account the subscription can have (distributor -> state),
    read by `getUser` by account key, distributors in viewing-point order. `found(account_key,
    user_id)` is told of each user as soon as it is read. Icareus errors propagate."""
    observed: dict[str, AccountState] = {}
    for distributor in reset_order(sub, [d.code for d in provider.distributors]):
        key = account_key(sub.number, distributor)
        lookup = await client.get_user(external_id=key)
        if lookup.user is None:
            continue
        user = lookup.user
        observed[distributor] = AccountState(
            distributor=distributor,
            account_key=key,
            registered=True,
            user_id=user.user_id,
            products=frozenset(user.products),
            devices=dict(user.devices),
        )
        if found is not None:
            found(key, user.user_id)
    return observed


def plan_reset(
    event: LifecycleEvent,
    observed: Iterable[AccountState],
    provider: ProviderSettings,
    *,
    known: SubscriptionRecord | None = None,
    plan_fn: Callable[[SubscriptionRecord | None, LifecycleEvent, ProviderSettings], Decision] = (
        plan
    ),
) -> Decision:
    """The one planning of a reset: the event planned against the accounts `observed` in
    Icareus alone. The dispatcher passes what `observe` found; the planner, which calls no
    Icareus, passes the accounts it knows registered and its state as `known` (version, last
    event and viewing-point order), so its next known state follows the dispatcher's plan."""
    sub = event.subscription
    return plan_fn(observed_state(known, sub.id, sub.number, observed), event, provider)


__all__ = ["UserLookup", "observe", "plan_reset", "reset_order"]
