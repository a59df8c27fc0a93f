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

from msgspec import Struct
from msgspec.structs import replace

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
    Subscriber,
    SubscriberProfile,
    Subscription,
    SubscriptionRecord,
    SubscriptionState,
    sorted_products,
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
    return _uuid_text(sha1(_NAMESPACE_BYTES + name.encode()).hexdigest())


def _uuid_text(x: str) -> str:
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


def _request_ids(subscription_id: str, version: int, count: int) -> list[str]:
    """`request_id(subscription_id, version, seq)` for seq 1..count; the digest of the common
    prefix is taken once and copied for each sequence number."""
    head = sha1(_NAMESPACE_BYTES + f"{subscription_id}:{version}:".encode())
    ids = []
    for seq in range(1, count + 1):
        h = head.copy()
        h.update(b"%d" % seq)
        ids.append(_uuid_text(h.hexdigest()))
    return ids


def request_id(subscription_id: str, version: int, sequence: int) -> str:
    """Derived request id, uuid5 of `<subscription id>:<version>:<sequence>` in
    REQUEST_ID_NAMESPACE: the same event on the same state always yields the same ids."""
    return _uuid5(f"{subscription_id}:{version}:{sequence}")


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
    # Icareus distributor -> {CRM product code -> Icareus product id} of its allowed, mapped
    # codes: one lookup per service decides (a miss is a problem, `_Wants._refused`).
    product_on: dict[str, dict[str, str]]


_VIEWS: dict[int, tuple[ProviderSettings, _ProviderView]] = {}


def _view(provider: ProviderSettings) -> _ProviderView:
    # A memo of a pure derivation (settings are frozen); keeps the settings object alive so its
    # id cannot be reused by another object while cached.
    hit = _VIEWS.get(id(provider))
    if hit is not None and hit[0] is provider:
        return hit[1]
    allowed = {
        d.code: frozenset(d.allowed_products) if d.allowed_products else None
        for d in provider.distributors
    }
    view = _ProviderView(
        allowed=allowed,
        services=dict(provider.service_mapping),
        goods=dict(provider.physical_goods_mapping),
        max_accounts=provider.max_viewing_points,
        effective=provider.effective,
        rank={
            pid: k
            for k, pid in enumerate(sorted_products(tuple(set(provider.service_mapping.values()))))
        },
        product_on={
            d: {
                code: pid
                for code, pid in provider.service_mapping.items()
                if codes is None or code in codes
            }
            for d, codes in allowed.items()
        },
    )
    if len(_VIEWS) > 64:
        _VIEWS.clear()
    _VIEWS[id(provider)] = (provider, view)
    return view



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
        self.problems: list[_Problem] = []
        self._same_s: frozenset[Service] | None = None
        self._before_s: set[tuple[str, str | None, str]] | None = None
        self._before_i: frozenset[InstalledItem] | None = None
        self._before: _Wants | None = None
        if sub.state not in TERMINATED_SUBSCRIPTION_STATES:
            if sub.state in EFFECTIVE_SUBSCRIPTION_STATES:
                self._collect_services(view)
            self._collect_items(view)

    def service_touched(self, s: Service) -> bool:
        """Whether the event newly wants effective service `s`: no effective service of the
        previous snapshot had its id, distributor and product code."""
        previous = self.previous
        if previous is None:
            return True
        if self._same_s is None:  # first, the common case: s is unchanged (equal as a whole)
            wanted = previous.state in EFFECTIVE_SUBSCRIPTION_STATES
            self._same_s = frozenset(previous.services) if wanted else frozenset()
        if s in self._same_s and s.state in EFFECTIVE_SERVICE_STATES:
            return False
        if self._before_s is None:
            self._before_s = _wanted_service_keys(previous)
        return (s.id, s.distributor, s.product_code) not in self._before_s

    def item_touched(self, i: InstalledItem) -> bool:
        """Whether the previous snapshot (unless terminated) lacked item `i`: its key is every
        field, so equality as a whole decides."""
        previous = self.previous
        if previous is None:
            return True
        if self._before_i is None:
            kept = previous.state not in TERMINATED_SUBSCRIPTION_STATES
            self._before_i = frozenset(previous.installed_items) if kept else frozenset()
        return i not in self._before_i

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

    def _collect_services(self, view: _ProviderView) -> None:
        """The mapped, allowed products of the effective services, per Icareus distributor;
        a touched service that is not allowed or not mapped is a problem."""
        product_on = view.product_on
        products = self.products
        order = self.order
        effective = EFFECTIVE_SERVICE_STATES
        for s in self.sub.services:
            d = s.distributor
            if d is None or s.state not in effective:
                continue
            table = product_on.get(d)
            if table is None:  # another provider's distributor
                continue
            pid = table.get(s.product_code)
            if pid is None:
                self._refused(s, d, view)
                continue
            held = products.get(d)
            if held is None:
                products[d] = {pid}
                order[d] = None
            else:
                held.add(pid)

    def _refused(self, s: Service, d: str, view: _ProviderView) -> None:
        """A service on our distributor `d` whose product is not allowed there or not mapped:
        a problem if the event touched it."""
        if not self.service_touched(s):
            return
        code = s.product_code
        allowed = view.allowed[d]
        if allowed is not None and code not in allowed:
            self._problem(
                RejectionCode.PRODUCT_NOT_ALLOWED,
                RequestType.ACTIVATE_PRODUCTS,
                d,
                f"service {s.id}: product {code} is not allowed on {d}",
            )
        else:
            self._problem(
                RejectionCode.UNMAPPED_PRODUCT,
                RequestType.ACTIVATE_PRODUCTS,
                d,
                f"service {s.id}: product {code} has no Icareus product id",
            )

    def _collect_items(self, view: _ProviderView) -> None:
        """The devices (serial number -> device type) of the mapped installed items, per
        Icareus distributor; a touched item whose physical good is not mapped is a problem."""
        allowed_by = view.allowed
        goods = view.goods
        devices = self.devices
        order = self.order
        for i in self.sub.installed_items:
            d = i.distributor
            if d not in allowed_by:
                continue
            dtype = goods.get(i.physical_good_code)
            if dtype is None:
                if self.item_touched(i):
                    self._problem(
                        RejectionCode.UNMAPPED_PHYSICAL_GOOD,
                        RequestType.ADD_DEVICE,
                        d,
                        f"installed item {i.id} ({i.serial_number}): physical good "
                        f"{i.physical_good_code} has no Icareus device type",
                    )
                continue
            order[d] = None
            held = devices.get(d)
            if held is None:
                devices[d] = {i.serial_number: dtype}
            else:
                held[i.serial_number] = dtype

    def _problem(self, code: RejectionCode, rtype: RequestType, d: str, detail: str) -> None:
        self.problems.append(_Problem(code, rtype, d, detail))


class _Problem(Struct, frozen=True, gc=False):
    """A CRM error the snapshot shows on a distributor (reported as a rejection)."""

    code: RejectionCode
    type: RequestType
    distributor: str
    detail: str


# --- the plan --------------------------------------------------------------------------------


class _Draft(Struct, frozen=True, gc=False):
    """A request before it gets its place (sequence, id, number) in the plan. Drafts, like the
    models, are Structs the collector does not track (a plan makes a few per event)."""

    type: RequestType
    distributor: str
    account_key: str
    user_id: str | None = None
    product_ids: tuple[str, ...] = ()
    device_id: str | None = None
    device_type: str | None = None


class _Rejected(Struct, frozen=True, gc=False):
    """A rejection before it gets its place: the request it refuses, with code and detail."""

    draft: _Draft
    code: RejectionCode
    detail: str


@dataclass(slots=True)
class _Drafts:
    """The plan being drawn up: its requests phase by phase (the order of _PHASES), its
    rejections in the order they are found, and the accounts after it."""

    add_users: list[_Draft]
    remove_devices: list[_Draft]
    add_devices: list[_Draft]
    cancels: list[_Draft]
    activates: list[_Draft]
    remove_users: list[_Draft]
    rejected: list[_Rejected]
    accounts: dict[str, AccountState]

    def requests(self) -> list[_Draft]:
        """Every phase before the next one; accounts in viewing-point order within a phase."""
        return (
            self.add_users
            + self.remove_devices
            + self.add_devices
            + self.cancels
            + self.activates
            + self.remove_users
        )


def _no_drafts() -> _Drafts:
    return _Drafts([], [], [], [], [], [], [], {})


_ADD_USER = RequestType.ADD_USER
_REMOVE_DEVICE = RequestType.REMOVE_DEVICE
_ADD_DEVICE = RequestType.ADD_DEVICE
_CANCEL_PRODUCTS = RequestType.CANCEL_PRODUCTS
_ACTIVATE_PRODUCTS = RequestType.ACTIVATE_PRODUCTS
_REMOVE_USER = RequestType.REMOVE_USER
_NOTHING: frozenset[str] = frozenset()
_NO_DEVICES: dict[str, str] = {}  # never mutated: only compared and copied
_NOT_EFFECTIVE = "the Icareus provisioning provider is not effective"


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
    state = _known_state(state, sub)
    skipped = _skip_reason(state, event, is_reset)  # 1
    if skipped is not None:
        return Decision(state, (), (), skipped)
    view = _view(provider)
    wants = _Wants(sub, None if is_reset else state.snapshot, view)  # 2
    drafts = _no_drafts()
    order = _viewing_points(state.accounts, wants, view, sub.number, drafts)  # 3
    terminated = sub.state in TERMINATED_SUBSCRIPTION_STATES
    known, products, devices = state.accounts, wants.products, wants.devices
    for d in order:  # 4
        acc = known.get(d)
        if (  # a registered account that already holds what the event wants: no request
            acc is not None  # (most accounts of most events; checked here, without a call)
            and acc.registered
            and not terminated
            and acc.products == products.get(d, _NOTHING)
            and acc.devices == devices.get(d, _NO_DEVICES)
        ):
            drafts.accounts[d] = acc
        else:
            _plan_account(d, acc, wants, view, sub.number, terminated, drafts)
    requests = drafts.requests()
    rejected = drafts.rejected
    accounts = drafts.accounts
    if not view.effective:  # 5
        # Nothing is sent; the accounts stay as they were so that the whole difference is
        # planned again once the provider is effective.
        off = RejectionCode.PROVIDER_NOT_EFFECTIVE
        rejected = [_Rejected(r, off, _NOT_EFFECTIVE) for r in requests] + rejected
        requests = []
        accounts = dict(state.accounts)
    placed, rejections = _place(requests, rejected, event, is_reset)
    new_state = SubscriptionRecord(
        state.subscription_id,
        sub.number,
        max(state.last_version, sub.version),
        event.event_id,
        sub,
        accounts,
    )
    return Decision(new_state, placed, rejections, None)


def _known_state(state: SubscriptionRecord | None, sub: Subscription) -> SubscriptionRecord:
    """The state to plan from: the given one (of the event's subscription), or a new one."""
    if state is None:
        return SubscriptionRecord(sub.id, sub.number, -1, None, None, {})
    if state.subscription_id != sub.id:
        # A caller's mistake, never the event's: the state is looked up by the event's key.
        raise ValueError(
            f"state of subscription {state.subscription_id} given for an event of {sub.id}"
        )
    return state


def _skip_reason(
    state: SubscriptionRecord, event: LifecycleEvent, is_reset: bool
) -> SkipReason | None:
    """Step 1: why the event changes nothing at all, if it does not."""
    if is_reset:
        return SkipReason.STALE_VERSION if event.subscription.version < state.last_version else None
    if state.last_event_id == event.event_id:
        return SkipReason.DUPLICATE_EVENT
    if event.subscription.version <= state.last_version:
        return SkipReason.STALE_VERSION
    return None


def _viewing_points(
    known: dict[str, AccountState], wants: _Wants, view: _ProviderView, number: str, out: _Drafts
) -> list[str]:
    """Step 3: the distributors with an account, in viewing-point order. Known accounts keep
    their slot (their users exist in Icareus until the subscription is terminated); new
    distributors take free slots in order of appearance, the rest are VIEWING_POINT_LIMIT.
    The configuration problems of the snapshot follow those rejections."""
    order = list(known)
    free = view.max_accounts - len(known)
    for d in wants.order:
        if d in known:
            continue
        if free > 0:
            order.append(d)
            free -= 1
        elif wants.touched_products(d, view) or wants.touched_devices(d):
            out.rejected.append(
                _Rejected(
                    _Draft(_ADD_USER, d, account_key(number, d)),
                    RejectionCode.VIEWING_POINT_LIMIT,
                    f"{d} would be Icareus account {view.max_accounts + 1} or later; "
                    f"at most {view.max_accounts} viewing points per subscription",
                )
            )
    for p in wants.problems:
        out.rejected.append(
            _Rejected(
                _Draft(p.type, p.distributor, account_key(number, p.distributor)), p.code, p.detail
            )
        )
    return order


def _plan_account(
    d: str,
    acc: AccountState | None,
    wants: _Wants,
    view: _ProviderView,
    number: str,
    terminated: bool,
    out: _Drafts,
) -> None:
    """Step 4 for the account of distributor `d`: its requests, and the account after them."""
    if terminated and acc is None:
        return  # nothing in Icareus to remove
    key = acc.account_key if acc is not None else account_key(number, d)
    target_products: set[str] | frozenset[str] = wants.products.get(d, _NOTHING)
    target_devices = wants.devices.get(d, _NO_DEVICES)
    if acc is None or (not acc.registered and (target_products or target_devices)):
        # A new account, or one whose ADD_USER was refused and that this event still wants
        # something of: registered by this plan (at most once per event) and provisioned
        # like a new account; its user id arrives later through feedback.
        out.add_users.append(_Draft(_ADD_USER, d, key))
        acc = _new_account(d, key)
    if not acc.registered:
        if not terminated:  # termination forgets it
            out.accounts[d] = acc
        _not_registered(d, key, wants.before(view), view, out)
        return
    same_devices = acc.devices == target_devices
    if not same_devices:
        _device_requests(d, key, acc, target_devices, out)
    same_products = acc.products == target_products
    if not same_products:
        _product_requests(d, key, acc, target_products, view, out)
    if terminated:
        # Termination removes the user, after its products and devices (phase order).
        out.remove_users.append(_Draft(_REMOVE_USER, d, key, acc.user_id))
        return
    if not (same_products and same_devices):
        acc = replace(
            acc,
            products=acc.products if same_products else frozenset(target_products),
            devices=acc.devices if same_devices else dict(target_devices),
        )
    out.accounts[d] = acc


def _new_account(d: str, key: str) -> AccountState:
    """An account registered by this plan: nothing held yet, user id unknown."""
    return AccountState(d, key, True, False, None, _NOTHING, {})


def _not_registered(
    d: str, key: str, before: _Wants | None, view: _ProviderView, out: _Drafts
) -> None:
    """An account not registered (its ADD_USER was refused) with nothing left to register it
    for: what the event took away from it cannot be sent (ACCOUNT_NOT_REGISTERED), reported
    once: only what the previous snapshot still wanted there."""
    if before is None:
        return
    code = RejectionCode.ACCOUNT_NOT_REGISTERED
    detail = f"account {key} is not registered in Icareus"
    gone_devices = before.devices.get(d, _NO_DEVICES)
    for serial in sorted(gone_devices):
        draft = _Draft(_REMOVE_DEVICE, d, key, None, (), serial, gone_devices[serial])
        out.rejected.append(_Rejected(draft, code, detail))
    gone_products = before.products.get(d)
    if gone_products:
        draft = _Draft(_CANCEL_PRODUCTS, d, key, None, _ordered(gone_products, view))
        out.rejected.append(_Rejected(draft, code, detail))


def _device_requests(
    d: str, key: str, acc: AccountState, target: dict[str, str], out: _Drafts
) -> None:
    """REMOVE_DEVICE / ADD_DEVICE for the difference, by serial number (a device whose type
    changed is removed and added again)."""
    have = acc.devices
    uid = acc.user_id
    for serial in sorted(have):
        if target.get(serial) != have[serial]:
            out.remove_devices.append(_Draft(_REMOVE_DEVICE, d, key, uid, (), serial, have[serial]))
    for serial in sorted(target):
        if have.get(serial) != target[serial]:
            out.add_devices.append(_Draft(_ADD_DEVICE, d, key, uid, (), serial, target[serial]))


def _product_requests(
    d: str,
    key: str,
    acc: AccountState,
    target: set[str] | frozenset[str],
    view: _ProviderView,
    out: _Drafts,
) -> None:
    """One CANCEL_PRODUCTS and one ACTIVATE_PRODUCTS for the difference, ids in product order."""
    have = acc.products
    cancel = have - target
    if cancel:
        out.cancels.append(_Draft(_CANCEL_PRODUCTS, d, key, acc.user_id, _ordered(cancel, view)))
    activate = target - have
    if activate:
        out.activates.append(
            _Draft(_ACTIVATE_PRODUCTS, d, key, acc.user_id, _ordered(activate, view))
        )


# --- places in the plan: sequence, id and number -----------------------------------------------


def _place(
    drafts: list[_Draft], rejected: list[_Rejected], event: LifecycleEvent, is_reset: bool
) -> tuple[tuple[ProvisioningRequest, ...], tuple[Rejection, ...]]:
    """Give requests, then rejections, their sequence (1-based), id and number."""
    if not drafts and not rejected:
        return (), ()
    sub = event.subscription
    sid, sub_number, version = sub.id, sub.number, sub.version
    event_id, code, at = event.event_id, event.action.code, event.occurred_at
    if is_reset:
        ids = _reset_ids(drafts + [r.draft for r in rejected], event)
    else:
        ids = _request_ids(sid, version, len(drafts) + len(rejected))
    profile = None
    if drafts and drafts[0].type is _ADD_USER:  # ADD_USERs come first, all with one profile
        profile = _profile_of(sub.subscriber)
    requests = tuple(
        [
            ProvisioningRequest(
                ids[seq - 1],
                request_number(sub_number, version, seq),
                d.type,
                sid,
                sub_number,
                d.distributor,
                d.account_key,
                event_id,
                code,
                seq,
                at,
                d.user_id,
                d.product_ids,
                d.device_id,
                d.device_type,
                profile if d.type is _ADD_USER else None,
            )
            for seq, d in enumerate(drafts, 1)
        ]
    )
    if not rejected:
        return requests, ()
    rejections = tuple(
        [
            Rejection(
                ids[seq - 1],
                request_number(sub_number, version, seq),
                r.draft.type,
                r.code,
                r.draft.distributor,
                r.draft.account_key,
                r.detail,
                seq,
                r.draft.user_id,
                r.draft.product_ids,
                r.draft.device_id,
                r.draft.device_type,
            )
            for seq, r in enumerate(rejected, len(drafts) + 1)
        ]
    )
    return requests, rejections


def _reset_ids(drafts: list[_Draft], event: LifecycleEvent) -> list[str]:
    """The request ids of a reset's places 1, 2, ... (docs/CORE.md, "Request identity"). A
    reset may be planned again at the same version (and even for the same event) from a
    different observed state; its ids also carry the event and the request's content so that
    an Idempotency-Key never stands for two different calls."""
    sub = event.subscription
    return [
        _uuid5(
            f"{sub.id}:{sub.version}:{event.event_id}:{seq}:{d.type}:{d.distributor}:"
            f"{','.join(d.product_ids)}:{d.device_id}:{d.device_type}"
        )
        for seq, d in enumerate(drafts, 1)
    ]


def _profile_of(s: Subscriber) -> SubscriberProfile:
    """The ADD_USER parameters: the subscriber of the event's snapshot."""
    return SubscriberProfile(
        s.first_name, s.last_name, s.email, s.phone, s.country_code, s.postal_code, s.city
    )


__all__ = [
    "EFFECTIVE_SUBSCRIPTION_STATES",
    "REQUEST_ID_NAMESPACE",
    "account_key",
    "plan",
    "request_id",
    "request_number",
]
