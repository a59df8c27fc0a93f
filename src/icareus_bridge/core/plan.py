"""The state machine: one CRM event + what the bridge knows Icareus holds -> the Icareus requests
and CRM rejections that event requires. Pure and deterministic: no I/O, no clock, no randomness.

`plan` is level-triggered: requests follow from the difference between what Icareus should hold
after the event (derived from the event's subscription snapshot and the provider mapping) and
the known state. Rejections (CRM errors) are edge-triggered: they are reported for what the
event *changed* (compared with the previous snapshot), so an unchanged problem is reported once,
not on every later event. See docs/CORE.md for every rule and decision.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from hashlib import sha1

from icareus_bridge.core.model import (
    EFFECTIVE_SERVICE_STATES,
    TERMINATED_SUBSCRIPTION_STATES,
    AccountState,
    ActionCode,
    Decision,
    InstalledItem,
    LifecycleEvent,
    ProvisioningRequest,
    Rejection,
    RejectionCode,
    RequestType,
    Service,
    SkipReason,
    SubscriberProfile,
    Subscription,
    SubscriptionRecord,
    SubscriptionState,
    sorted_products,
    trusted_builder,
)
from icareus_bridge.core.provider import ProviderSettings

# Fixed namespace of derived request ids; changing it changes every request id (and so every
# Idempotency-Key), so it never changes.
REQUEST_ID_NAMESPACE = uuid.UUID("5f0c3c4e-8a0e-5d7b-9d55-1c0a9e2b7a11")

# A service is wanted on Icareus only while the subscription itself can be received.
EFFECTIVE_SUBSCRIPTION_STATES = frozenset(
    {SubscriptionState.EFFECTIVE, SubscriptionState.SHORT_TERM_EFFECTIVE}
)

_PHASES = (
    RequestType.ADD_USER,
    RequestType.REMOVE_DEVICE,
    RequestType.ADD_DEVICE,
    RequestType.CANCEL_PRODUCTS,
    RequestType.ACTIVATE_PRODUCTS,
    RequestType.REMOVE_USER,
)


def account_key(subscription_number: str, distributor: str) -> str:
    """The Icareus externalId of the account of one (subscription, Icareus distributor)."""
    return f"{subscription_number}-{distributor}"


_NAMESPACE_BYTES = REQUEST_ID_NAMESPACE.bytes


# The variant bits of a uuid5: the first hex digit of the fourth group becomes 8, 9, a or b.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _uuid5(name: str) -> str:
    # str(uuid.uuid5(REQUEST_ID_NAMESPACE, name)) without building UUID objects (hot path): the
    # SHA-1 hex digest with the version digit (5) and the variant bits set by hand.
    x = sha1(_NAMESPACE_BYTES + name.encode()).hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


def request_id(subscription_id: str, version: int, sequence: int) -> str:
    """Derived request id, uuid5 of `<subscription id>:<version>:<sequence>` in
    REQUEST_ID_NAMESPACE: the same event on the same state always yields the same ids."""
    return _uuid5(f"{subscription_id}:{version}:{sequence}")


_account = trusted_builder(AccountState)
_record = trusted_builder(SubscriptionRecord)
_decision = trusted_builder(Decision)
_request = trusted_builder(ProvisioningRequest)
_rejection = trusted_builder(Rejection)
_profile = trusted_builder(SubscriberProfile)


def request_number(subscription_number: str, version: int, sequence: int) -> str:
    """The human-readable request number CRM shows."""
    return f"{subscription_number}-{version}-{sequence:02d}"


# --- provider view, compiled once per settings object ------------------------------------------


@dataclass(frozen=True)
class _ProviderView:
    allowed: dict[str, frozenset[str] | None]  # Icareus distributor -> allowed codes (None = all)
    services: dict[str, str]
    goods: dict[str, str]
    max_accounts: int
    effective: bool
    rank: dict[str, int]  # mapped Icareus product id -> its place in `sorted_products` order


_VIEWS: dict[int, tuple[ProviderSettings, _ProviderView]] = {}


def _view(provider: ProviderSettings) -> _ProviderView:
    # A memo of a pure derivation (settings are frozen); keeps the settings object alive so its
    # id cannot be reused by another object while cached.
    hit = _VIEWS.get(id(provider))
    if hit is not None and hit[0] is provider:
        return hit[1]
    view = _ProviderView(
        allowed={
            d.code: frozenset(d.allowed_products) if d.allowed_products else None
            for d in provider.distributors
        },
        services=dict(provider.service_mapping),
        goods=dict(provider.physical_goods_mapping),
        max_accounts=provider.max_viewing_points,
        effective=provider.effective,
        rank={
            pid: k
            for k, pid in enumerate(sorted_products(tuple(set(provider.service_mapping.values()))))
        },
    )
    if len(_VIEWS) > 64:
        _VIEWS.clear()
    _VIEWS[id(provider)] = (provider, view)
    return view


# Stands for "a distributor of another provider" in lookups of ProviderView.allowed.
_OTHER: frozenset[str] = frozenset({"\0 other provider"})


def _ordered(product_ids: set[str] | frozenset[str], view: _ProviderView) -> tuple[str, ...]:
    """`sorted_products(product_ids)`, by the precomputed rank when every id is mapped."""
    if len(product_ids) == 1:
        return tuple(product_ids)
    try:
        return tuple(sorted(product_ids, key=view.rank.__getitem__))
    except KeyError:  # an id no longer mapped (or observed in Icareus): compare the ids
        return sorted_products(product_ids)


# --- what a snapshot wants -------------------------------------------------------------------


def _wanted_service_keys(sub: Subscription | None) -> set[tuple[str, str | None, str]]:
    if sub is None or sub.state not in EFFECTIVE_SUBSCRIPTION_STATES:
        return set()
    return {
        (s.id, s.distributor, s.product_code)
        for s in sub.services
        if s.state in EFFECTIVE_SERVICE_STATES
    }


def _item_keys(sub: Subscription | None) -> set[tuple[str, str | None, str, str]]:
    if sub is None or sub.state in TERMINATED_SUBSCRIPTION_STATES:
        return set()
    return {
        (i.id, i.distributor, i.serial_number, i.physical_good_code) for i in sub.installed_items
    }


class _Wants:
    """Per Icareus distributor, what Icareus should hold after the event; and, computed only
    when a rejection needs it, what of it the event touched (newly wanted compared with the
    previous snapshot, so errors about it are reported now)."""

    def __init__(
        self, sub: Subscription, previous: Subscription | None, view: _ProviderView
    ) -> None:
        self.sub = sub
        self.previous = previous
        self.products: dict[str, set[str]] = {}
        self.devices: dict[str, dict[str, str]] = {}
        self.order: dict[str, None] = {}  # distributors wanting something, first appearance
        # (code, request type, distributor, detail)
        self.problems: list[tuple[RejectionCode, RequestType, str, str]] = []
        self._before_s: set[tuple[str, str | None, str]] | None = None
        self._before_i: set[tuple[str, str | None, str, str]] | None = None
        self._before: _Wants | None = None
        if sub.state not in TERMINATED_SUBSCRIPTION_STATES:
            self._collect(view)

    def service_touched(self, s: Service) -> bool:
        if self.previous is None:
            return True
        if self._before_s is None:
            self._before_s = _wanted_service_keys(self.previous)
        return (s.id, s.distributor, s.product_code) not in self._before_s

    def item_touched(self, i: InstalledItem) -> bool:
        if self.previous is None:
            return True
        if self._before_i is None:
            self._before_i = _item_keys(self.previous)
        return (i.id, i.distributor, i.serial_number, i.physical_good_code) not in self._before_i

    def before(self, view: _ProviderView) -> _Wants | None:
        """What the previous snapshot wanted (None without one, as for a reset)."""
        if self.previous is None:
            return None
        if self._before is None:
            self._before = _Wants(self.previous, None, view)
        return self._before

    def touched_products(self, d: str, view: _ProviderView) -> set[str]:
        if d not in self.products:
            return set()
        return {
            view.services[s.product_code]
            for s in self.sub.services
            if s.distributor == d
            and s.state in EFFECTIVE_SERVICE_STATES
            and view.services.get(s.product_code) in self.products[d]
            and self.service_touched(s)
        }

    def touched_devices(self, d: str) -> set[str]:
        if d not in self.devices:
            return set()
        return {
            i.serial_number
            for i in self.sub.installed_items
            if i.distributor == d and i.serial_number in self.devices[d] and self.item_touched(i)
        }

    def _collect(self, view: _ProviderView) -> None:
        sub = self.sub
        allowed_by = view.allowed
        order = self.order
        problems = self.problems
        if sub.state in EFFECTIVE_SUBSCRIPTION_STATES:
            effective = EFFECTIVE_SERVICE_STATES
            services = view.services
            products = self.products
            for s in sub.services:
                d = s.distributor
                if d is None or s.state not in effective:
                    continue
                allowed = allowed_by.get(d, _OTHER)
                if allowed is _OTHER:
                    continue
                code = s.product_code
                if allowed is not None and code not in allowed:
                    if self.service_touched(s):
                        problems.append(
                            (
                                RejectionCode.PRODUCT_NOT_ALLOWED,
                                RequestType.ACTIVATE_PRODUCTS,
                                d,
                                f"service {s.id}: product {code} is not allowed on {d}",
                            )
                        )
                    continue
                pid = services.get(code)
                if pid is None:
                    if self.service_touched(s):
                        problems.append(
                            (
                                RejectionCode.UNMAPPED_PRODUCT,
                                RequestType.ACTIVATE_PRODUCTS,
                                d,
                                f"service {s.id}: product {code} has no Icareus product id",
                            )
                        )
                    continue
                order[d] = None
                held = products.get(d)
                if held is None:
                    products[d] = {pid}
                else:
                    held.add(pid)
        goods = view.goods
        devices = self.devices
        for i in sub.installed_items:
            d = i.distributor
            if d not in allowed_by:
                continue
            dtype = goods.get(i.physical_good_code)
            if dtype is None:
                if self.item_touched(i):
                    problems.append(
                        (
                            RejectionCode.UNMAPPED_PHYSICAL_GOOD,
                            RequestType.ADD_DEVICE,
                            d,
                            f"installed item {i.id} ({i.serial_number}): physical good "
                            f"{i.physical_good_code} has no Icareus device type",
                        )
                    )
                continue
            order[d] = None
            held_devices = devices.get(d)
            if held_devices is None:
                devices[d] = {i.serial_number: dtype}
            else:
                held_devices[i.serial_number] = dtype


# --- the plan --------------------------------------------------------------------------------


# A request before it gets its place (sequence) in the plan:
# (type, distributor, account key, user id, product ids, device id, device type).
_Draft = tuple[RequestType, str, str, str | None, tuple[str, ...], str | None, str | None]
# A rejection before it gets its place: a draft followed by (code, detail).
_Rejected = tuple[
    RequestType,
    str,
    str,
    str | None,
    tuple[str, ...],
    str | None,
    str | None,
    RejectionCode,
    str,
]

_ADD_USER = RequestType.ADD_USER
_REMOVE_DEVICE = RequestType.REMOVE_DEVICE
_ADD_DEVICE = RequestType.ADD_DEVICE
_CANCEL_PRODUCTS = RequestType.CANCEL_PRODUCTS
_ACTIVATE_PRODUCTS = RequestType.ACTIVATE_PRODUCTS
_REMOVE_USER = RequestType.REMOVE_USER
_NOTHING: frozenset[str] = frozenset()
_NO_DEVICES: dict[str, str] = {}  # never mutated: only compared and copied


def plan(
    state: SubscriptionRecord | None, event: LifecycleEvent, provider: ProviderSettings
) -> Decision:
    """Decide what one CRM event requires of Icareus.

    1. Skip a repeated event id (DUPLICATE_EVENT) or a version not newer than the last applied
       one (STALE_VERSION): nothing planned, state unchanged. RESET_SUBSCRIPTION is exempt from
       both when its version is not older (a reset re-reads the same version on purpose).
    2. Derive, per Icareus distributor, the products and devices Icareus should hold.
    3. Give new distributors an account in order of first appearance, up to max_viewing_points.
    4. Per account, the difference between known and wanted becomes requests; everything of one
       phase (ADD_USER, REMOVE_DEVICE, ADD_DEVICE, CANCEL_PRODUCTS, ACTIVATE_PRODUCTS,
       REMOVE_USER) runs before the next phase, accounts in viewing-point order within a phase.
    5. Provider not effective: every request becomes a PROVIDER_NOT_EFFECTIVE rejection and the
       accounts stay as they were.
    The returned state assumes every planned request completes.
    """
    sub = event.subscription
    is_reset = event.action.code == ActionCode.RESET_SUBSCRIPTION
    if state is None:
        state = _record(
            {
                "subscription_id": sub.id,
                "subscription_number": sub.number,
                "last_version": -1,
                "last_event_id": None,
                "snapshot": None,
                "accounts": {},
                "parked_behind": None,
            }
        )
    elif state.subscription_id != sub.id:
        # A caller's mistake, never the event's: the state is looked up by the event's key.
        raise ValueError(
            f"state of subscription {state.subscription_id} given for an event of {sub.id}"
        )
    elif not is_reset and state.last_event_id == event.event_id:
        return _decision(
            {
                "state": state,
                "requests": (),
                "rejections": (),
                "skipped": SkipReason.DUPLICATE_EVENT,
            }
        )
    if sub.version < state.last_version or (sub.version == state.last_version and not is_reset):
        return _decision(
            {"state": state, "requests": (), "rejections": (), "skipped": SkipReason.STALE_VERSION}
        )

    view = _view(provider)
    wants = _Wants(sub, None if is_reset else state.snapshot, view)
    known = state.accounts
    number = sub.number
    # The phases, in the order they run (see _PHASES).
    add_users: list[_Draft] = []
    remove_devices: list[_Draft] = []
    add_devices: list[_Draft] = []
    cancels: list[_Draft] = []
    activates: list[_Draft] = []
    remove_users: list[_Draft] = []
    rejected: list[_Rejected] = []
    accounts: dict[str, AccountState] = {}

    # Viewing points: known accounts keep their slot (their users exist in Icareus until the
    # subscription is terminated); new distributors take free slots in order of appearance.
    order = list(known)
    free = view.max_accounts - len(known)
    for d in wants.order:
        if d in known:
            continue
        if free > 0:
            order.append(d)
            free -= 1
        elif wants.touched_products(d, view) or wants.touched_devices(d):
            rejected.append(
                (
                    _ADD_USER,
                    d,
                    account_key(number, d),
                    None,
                    (),
                    None,
                    None,
                    RejectionCode.VIEWING_POINT_LIMIT,
                    f"{d} would be Icareus account {view.max_accounts + 1} or later; "
                    f"at most {view.max_accounts} viewing points per subscription",
                )
            )
    for code, rtype, d, detail in wants.problems:
        rejected.append((rtype, d, account_key(number, d), None, (), None, None, code, detail))

    terminated = sub.state in TERMINATED_SUBSCRIPTION_STATES
    wanted_products = wants.products
    wanted_devices = wants.devices
    for d in order:
        acc = known.get(d)
        if terminated and acc is None:
            continue  # nothing in Icareus to remove
        key = acc.account_key if acc is not None else f"{number}-{d}"
        target_products: set[str] | frozenset[str] = wanted_products.get(d, _NOTHING)
        target_devices = wanted_devices.get(d, _NO_DEVICES)
        if acc is None or (not acc.registered and (target_products or target_devices)):
            # A new account, or one whose ADD_USER was refused and that this event still wants
            # something of: registered by this plan (at most once per event) and provisioned
            # like a new account; its user id arrives later through feedback.
            add_users.append((_ADD_USER, d, key, None, (), None, None))
            acc = _account(
                {
                    "distributor": d,
                    "account_key": key,
                    "registered": True,
                    "registration_rejected": False,
                    "user_id": None,
                    "products": _NOTHING,
                    "devices": {},
                }
            )
        if not acc.registered:
            # Not registered (its ADD_USER was refused) and nothing left to register it for:
            # what this event took away from it cannot be sent (ACCOUNT_NOT_REGISTERED, once:
            # only what the previous snapshot still wanted there). Termination forgets it.
            if not terminated:
                accounts[d] = acc
            before = wants.before(view)
            if before is None:
                continue
            not_registered = f"account {key} is not registered in Icareus"
            gone_devices = before.devices.get(d, _NO_DEVICES)
            for serial in sorted(gone_devices):
                rejected.append(
                    (
                        _REMOVE_DEVICE,
                        d,
                        key,
                        None,
                        (),
                        serial,
                        gone_devices[serial],
                        RejectionCode.ACCOUNT_NOT_REGISTERED,
                        not_registered,
                    )
                )
            gone_products = before.products.get(d)
            if gone_products:
                rejected.append(
                    (
                        _CANCEL_PRODUCTS,
                        d,
                        key,
                        None,
                        _ordered(gone_products, view),
                        None,
                        None,
                        RejectionCode.ACCOUNT_NOT_REGISTERED,
                        not_registered,
                    )
                )
            continue

        uid = acc.user_id
        have_devices = acc.devices
        same_devices = have_devices == target_devices
        if not same_devices:
            for serial in sorted(have_devices):
                if target_devices.get(serial) != have_devices[serial]:
                    remove_devices.append(
                        (_REMOVE_DEVICE, d, key, uid, (), serial, have_devices[serial])
                    )
            for serial in sorted(target_devices):
                if have_devices.get(serial) != target_devices[serial]:
                    add_devices.append(
                        (_ADD_DEVICE, d, key, uid, (), serial, target_devices[serial])
                    )
        have_products = acc.products
        same_products = have_products == target_products
        if not same_products:
            cancel = have_products - target_products
            if cancel:
                cancels.append((_CANCEL_PRODUCTS, d, key, uid, _ordered(cancel, view), None, None))
            activate = target_products - have_products
            if activate:
                activates.append(
                    (_ACTIVATE_PRODUCTS, d, key, uid, _ordered(activate, view), None, None)
                )
        if terminated:
            # Termination removes the user, after its products and devices (order above).
            remove_users.append((_REMOVE_USER, d, key, uid, (), None, None))
            continue
        if not (same_products and same_devices):
            acc = _account(
                {
                    **acc.__dict__,
                    "products": have_products if same_products else frozenset(target_products),
                    "devices": have_devices if same_devices else dict(target_devices),
                }
            )
        accounts[d] = acc

    drafts = add_users + remove_devices + add_devices + cancels + activates + remove_users
    if not view.effective:
        # Nothing is sent; the accounts stay as they were so that the whole difference is
        # planned again once the provider is effective.
        off = (
            RejectionCode.PROVIDER_NOT_EFFECTIVE,
            "the Icareus provisioning provider is not effective",
        )
        rejected = [r + off for r in drafts] + rejected
        drafts = []
        accounts = dict(known)

    requests, rejections = _place(drafts, rejected, event, is_reset)
    new_state = _record(
        {
            "subscription_id": state.subscription_id,
            "subscription_number": number,
            "last_version": max(state.last_version, sub.version),
            "last_event_id": event.event_id,
            "snapshot": sub,
            "accounts": accounts,
            "parked_behind": state.parked_behind,
        }
    )
    return _decision(
        {"state": new_state, "requests": requests, "rejections": rejections, "skipped": None}
    )


def _place(
    drafts: list[_Draft], rejected: list[_Rejected], event: LifecycleEvent, is_reset: bool
) -> tuple[tuple[ProvisioningRequest, ...], tuple[Rejection, ...]]:
    """Give requests, then rejections, their sequence (1-based), id and number."""
    if not drafts and not rejected:
        return (), ()
    sub = event.subscription
    sid, version, number = sub.id, sub.version, sub.number
    event_id, code, at = event.event_id, event.action.code, event.occurred_at
    id_prefix = f"{sid}:{version}:"
    number_prefix = f"{number}-{version}-"
    profile: SubscriberProfile | None = None

    def reset_id(seq: int, d: _Draft | _Rejected) -> str:
        # A reset may be planned again at the same version (and even for the same event) from
        # a different observed state; its ids also carry the event and the request's content so
        # that an Idempotency-Key never stands for two different calls.
        return _uuid5(f"{id_prefix}{event_id}:{seq}:{d[0]}:{d[1]}:{','.join(d[4])}:{d[5]}:{d[6]}")

    requests = []
    seq = 0
    for d in drafts:
        seq += 1
        rtype = d[0]
        request_profile = None
        if rtype is _ADD_USER:
            if profile is None:
                s = sub.subscriber
                profile = _profile(
                    {
                        "first_name": s.first_name,
                        "last_name": s.last_name,
                        "email": s.email,
                        "phone": s.phone,
                        "country_code": s.country_code,
                        "postal_code": s.postal_code,
                        "city": s.city,
                    }
                )
            request_profile = profile
        requests.append(
            _request(
                {
                    "request_id": reset_id(seq, d) if is_reset else _uuid5(f"{id_prefix}{seq}"),
                    "number": f"{number_prefix}{seq:02d}",
                    "type": rtype,
                    "subscription_id": sid,
                    "subscription_number": number,
                    "distributor": d[1],
                    "account_key": d[2],
                    "event_id": event_id,
                    "action_code": code,
                    "sequence": seq,
                    "created_at": at,
                    "user_id": d[3],
                    "product_ids": d[4],
                    "device_id": d[5],
                    "device_type": d[6],
                    "profile": request_profile,
                }
            )
        )
    rejections = []
    for r in rejected:
        seq += 1
        rejections.append(
            _rejection(
                {
                    "request_id": reset_id(seq, r) if is_reset else _uuid5(f"{id_prefix}{seq}"),
                    "number": f"{number_prefix}{seq:02d}",
                    "type": r[0],
                    "code": r[7],
                    "distributor": r[1],
                    "account_key": r[2],
                    "detail": r[8],
                    "sequence": seq,
                    "user_id": r[3],
                    "product_ids": r[4],
                    "device_id": r[5],
                    "device_type": r[6],
                }
            )
        )
    return tuple(requests), tuple(rejections)


__all__ = [
    "EFFECTIVE_SUBSCRIPTION_STATES",
    "REQUEST_ID_NAMESPACE",
    "account_key",
    "plan",
    "request_id",
    "request_number",
]
