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

from icareus_bridge.config import ProviderSettings
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


def _uuid5(name: str) -> str:
    # uuid.uuid5(REQUEST_ID_NAMESPACE, name) without building UUID objects (hot path).
    h = bytearray(sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


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
    )
    if len(_VIEWS) > 64:
        _VIEWS.clear()
    _VIEWS[id(provider)] = (provider, view)
    return view


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
        services = view.services
        order = self.order
        if sub.state in EFFECTIVE_SUBSCRIPTION_STATES:
            products = self.products
            for s in sub.services:
                d = s.distributor
                if d not in allowed_by or s.state not in EFFECTIVE_SERVICE_STATES:
                    continue
                allowed = allowed_by[d]
                code = s.product_code
                if allowed is not None and code not in allowed:
                    if self.service_touched(s):
                        self.problems.append(
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
                        self.problems.append(
                            (
                                RejectionCode.UNMAPPED_PRODUCT,
                                RequestType.ACTIVATE_PRODUCTS,
                                d,
                                f"service {s.id}: product {code} has no Icareus product id",
                            )
                        )
                    continue
                order[d] = None
                if d in products:
                    products[d].add(pid)
                else:
                    products[d] = {pid}
        goods = view.goods
        devices = self.devices
        for i in sub.installed_items:
            d = i.distributor
            if d not in allowed_by:
                continue
            dtype = goods.get(i.physical_good_code)
            if dtype is None:
                if self.item_touched(i):
                    self.problems.append(
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
            if d in devices:
                devices[d][i.serial_number] = dtype
            else:
                devices[d] = {i.serial_number: dtype}


# --- the plan --------------------------------------------------------------------------------


@dataclass
class _Draft:
    """One request or rejection before it gets its place (sequence) in the plan."""

    type: RequestType
    distributor: str
    account_key: str
    user_id: str | None = None
    product_ids: tuple[str, ...] = ()
    device_id: str | None = None
    device_type: str | None = None
    code: RejectionCode | None = None
    detail: str = ""


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
    phases: dict[RequestType, list[_Draft]] = {t: [] for t in _PHASES}
    rejected: list[_Draft] = []
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
                _Draft(
                    RequestType.ADD_USER,
                    d,
                    account_key(number, d),
                    code=RejectionCode.VIEWING_POINT_LIMIT,
                    detail=f"{d} would be Icareus account {view.max_accounts + 1} or later; "
                    f"at most {view.max_accounts} viewing points per subscription",
                )
            )
    for code, rtype, d, detail in wants.problems:
        rejected.append(_Draft(rtype, d, account_key(number, d), code=code, detail=detail))

    terminated = sub.state in TERMINATED_SUBSCRIPTION_STATES
    for d in order:
        acc = known.get(d)
        key = acc.account_key if acc is not None else account_key(number, d)
        target_products = wants.products.get(d, set())
        target_devices = wants.devices.get(d, {})
        if terminated and (acc is None or not acc.registered):
            continue  # nothing in Icareus to remove; the account is forgotten with the rest
        if acc is None or (not acc.registered and not acc.registration_rejected):
            # Registered by this plan; its user id arrives later through feedback.
            phases[RequestType.ADD_USER].append(_Draft(RequestType.ADD_USER, d, key))
            acc = _account(
                {
                    "distributor": d,
                    "account_key": key,
                    "registered": True,
                    "registration_rejected": False,
                    "user_id": None,
                    "products": frozenset(),
                    "devices": {},
                }
            )
        if not acc.registered:
            # Its ADD_USER was refused: nothing can be sent until a reset registers it again.
            accounts[d] = acc
            touched_p = wants.touched_products(d, view) - acc.products
            if touched_p:
                rejected.append(
                    _Draft(
                        RequestType.ACTIVATE_PRODUCTS,
                        d,
                        key,
                        product_ids=sorted_products(touched_p),
                        code=RejectionCode.ACCOUNT_NOT_REGISTERED,
                        detail=f"account {key} is not registered in Icareus",
                    )
                )
            for serial in sorted(wants.touched_devices(d)):
                rejected.append(
                    _Draft(
                        RequestType.ADD_DEVICE,
                        d,
                        key,
                        device_id=serial,
                        device_type=target_devices[serial],
                        code=RejectionCode.ACCOUNT_NOT_REGISTERED,
                        detail=f"account {key} is not registered in Icareus",
                    )
                )
            continue

        uid = acc.user_id
        have_devices = acc.devices
        for serial in sorted(have_devices):
            if target_devices.get(serial) != have_devices[serial]:
                phases[RequestType.REMOVE_DEVICE].append(
                    _Draft(
                        RequestType.REMOVE_DEVICE,
                        d,
                        key,
                        user_id=uid,
                        device_id=serial,
                        device_type=have_devices[serial],
                    )
                )
        for serial in sorted(target_devices):
            if have_devices.get(serial) != target_devices[serial]:
                phases[RequestType.ADD_DEVICE].append(
                    _Draft(
                        RequestType.ADD_DEVICE,
                        d,
                        key,
                        user_id=uid,
                        device_id=serial,
                        device_type=target_devices[serial],
                    )
                )
        cancel = acc.products - target_products
        if cancel:
            phases[RequestType.CANCEL_PRODUCTS].append(
                _Draft(
                    RequestType.CANCEL_PRODUCTS,
                    d,
                    key,
                    user_id=uid,
                    product_ids=sorted_products(cancel),
                )
            )
        activate = target_products - acc.products
        if activate:
            phases[RequestType.ACTIVATE_PRODUCTS].append(
                _Draft(
                    RequestType.ACTIVATE_PRODUCTS,
                    d,
                    key,
                    user_id=uid,
                    product_ids=sorted_products(activate),
                )
            )
        if terminated:
            # Termination removes the user, after its products and devices (order above).
            phases[RequestType.REMOVE_USER].append(
                _Draft(RequestType.REMOVE_USER, d, key, user_id=uid)
            )
            continue
        if cancel or activate or have_devices != target_devices:
            acc = _account(
                {
                    **acc.__dict__,
                    "products": frozenset(target_products),
                    "devices": dict(target_devices),
                }
            )
        accounts[d] = acc

    drafts = [r for t in _PHASES for r in phases[t]]
    if not view.effective:
        # Nothing is sent; the accounts stay as they were so that the whole difference is
        # planned again once the provider is effective.
        for r in drafts:
            r.code = RejectionCode.PROVIDER_NOT_EFFECTIVE
            r.detail = "the Icareus provisioning provider is not effective"
        rejected = drafts + rejected
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
    drafts: list[_Draft], rejected: list[_Draft], event: LifecycleEvent, is_reset: bool
) -> tuple[tuple[ProvisioningRequest, ...], tuple[Rejection, ...]]:
    """Give requests, then rejections, their sequence (1-based), id and number."""
    sub = event.subscription
    sid, version, number = sub.id, sub.version, sub.number
    event_id, code, at = event.event_id, event.action.code, event.occurred_at
    profile: SubscriberProfile | None = None

    def rid(seq: int, d: _Draft) -> str:
        if not is_reset:
            return request_id(sid, version, seq)
        # A reset may be planned again at the same version (and even for the same event) from
        # a different observed state; its ids also carry the event and the request's content so
        # that an Idempotency-Key never stands for two different calls.
        seed = (
            f"{sid}:{version}:{event_id}:{seq}:{d.type}:{d.distributor}:"
            f"{','.join(d.product_ids)}:{d.device_id}:{d.device_type}"
        )
        return _uuid5(seed)

    requests = []
    seq = 0
    for d in drafts:
        seq += 1
        if d.type is RequestType.ADD_USER and profile is None:
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
        requests.append(
            _request(
                {
                    "request_id": rid(seq, d),
                    "number": request_number(number, version, seq),
                    "type": d.type,
                    "subscription_id": sid,
                    "subscription_number": number,
                    "distributor": d.distributor,
                    "account_key": d.account_key,
                    "event_id": event_id,
                    "action_code": code,
                    "sequence": seq,
                    "created_at": at,
                    "user_id": d.user_id,
                    "product_ids": d.product_ids,
                    "device_id": d.device_id,
                    "device_type": d.device_type,
                    "profile": profile if d.type is RequestType.ADD_USER else None,
                }
            )
        )
    rejections = []
    for d in rejected:
        seq += 1
        assert d.code is not None
        rejections.append(
            _rejection(
                {
                    "request_id": rid(seq, d),
                    "number": request_number(number, version, seq),
                    "type": d.type,
                    "code": d.code,
                    "distributor": d.distributor,
                    "account_key": d.account_key,
                    "detail": d.detail,
                    "sequence": seq,
                    "user_id": d.user_id,
                    "product_ids": d.product_ids,
                    "device_id": d.device_id,
                    "device_type": d.device_type,
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
