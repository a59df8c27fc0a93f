"""Properties of the state machine over generated subscriptions and event sequences:
idempotence, convergence, order, viewing-point limit, staleness."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icareus_bridge.config import ProviderSettings
from icareus_bridge.core.feedback import apply_result
from icareus_bridge.core.model import (
    EFFECTIVE_SERVICE_STATES,
    TERMINATED_SUBSCRIPTION_STATES,
    InstalledItem,
    LifeCycleState,
    ProvisioningRequest,
    RejectionCode,
    RequestType,
    Service,
    ServiceState,
    SkipReason,
    Subscription,
    SubscriptionRecord,
    SubscriptionState,
)
from icareus_bridge.core.plan import EFFECTIVE_SUBSCRIPTION_STATES, plan
from tests.unit.crm_events import SUBSCRIBER, event, provider
from tests.unit.test_plan_rules import result_of

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DISTRIBUTORS = ["VP1", "VP2", "VP3", "VP4", "VP5", "OTHER", None]
PRODUCTS = ["BASIC-TV", "SPORTS", "MOVIES", "KIDS", "NEWS", "KARAOKE"]  # KARAOKE is unmapped
GOODS = ["STB-4K", "STB-HD", "SMARTCARD", "OTT-STICK", "DISH"]  # DISH is unmapped

services = st.lists(
    st.builds(
        Service,
        id=st.sampled_from([f"sv{i}" for i in range(8)]),
        product_code=st.sampled_from(PRODUCTS),
        state=st.sampled_from(list(ServiceState)),
        distributor=st.sampled_from(DISTRIBUTORS),
    ),
    max_size=8,
    unique_by=lambda s: s.id,
)
items = st.lists(
    st.builds(
        InstalledItem,
        id=st.sampled_from([f"ii{i}" for i in range(6)]),
        serial_number=st.sampled_from([f"SN{i}" for i in range(6)]),
        physical_good_code=st.sampled_from(GOODS),
        distributor=st.sampled_from(DISTRIBUTORS),
    ),
    max_size=5,
    unique_by=(lambda i: i.id, lambda i: i.serial_number),
)
snapshots = st.tuples(st.sampled_from(list(SubscriptionState)), services, items)
providers = st.builds(
    lambda m, eff: provider(max_viewing_points=m, effective=eff),
    st.integers(min_value=1, max_value=4),
    st.sampled_from([True, True, True, False]),
)


def sub_at(version: int, snap: tuple) -> Subscription:  # type: ignore[type-arg]
    state, svcs, its = snap
    return Subscription(
        id="sub-p",
        number="SP",
        version=version,
        state=state,
        subscriber=SUBSCRIBER,
        services=tuple(svcs),
        installed_items=tuple(its),
    )


@dataclass
class Icareus:
    """A model of what Icareus holds: account key -> products and devices."""

    users: dict[str, tuple[set[str], dict[str, str]]] = field(default_factory=dict)

    def apply(self, r: ProvisioningRequest) -> None:
        if r.type is RequestType.ADD_USER:
            assert r.account_key not in self.users, "ADD_USER of an existing user"
            self.users[r.account_key] = (set(), {})
            return
        assert r.account_key in self.users, f"{r.type} before ADD_USER"
        products, devices = self.users[r.account_key]
        if r.type is RequestType.ACTIVATE_PRODUCTS:
            assert not products & set(r.product_ids)
            products |= set(r.product_ids)
        elif r.type is RequestType.CANCEL_PRODUCTS:
            assert set(r.product_ids) <= products
            products -= set(r.product_ids)
        elif r.type is RequestType.ADD_DEVICE:
            assert r.device_id is not None and r.device_id not in devices
            devices[r.device_id] = r.device_type or ""
        elif r.type is RequestType.REMOVE_DEVICE:
            assert r.device_id in devices
            del devices[r.device_id]
        else:
            assert not products and not devices, "REMOVE_USER before its products and devices"
            del self.users[r.account_key]


def held(state: SubscriptionRecord) -> dict[str, tuple[set[str], dict[str, str]]]:
    return {
        a.account_key: (set(a.products), dict(a.devices))
        for a in state.accounts.values()
        if a.registered
    }


def desired(
    sub: Subscription, prov: ProviderSettings, distributor: str
) -> tuple[set[str], dict[str, str]]:
    """What Icareus should hold for one distributor, straight from DOMAIN.md."""
    if sub.state in TERMINATED_SUBSCRIPTION_STATES:
        return set(), {}
    allowed = {d.code: set(d.allowed_products) for d in prov.distributors}[distributor]
    products = {
        prov.service_mapping[s.product_code]
        for s in sub.services
        if s.distributor == distributor
        and sub.state in EFFECTIVE_SUBSCRIPTION_STATES
        and s.state in EFFECTIVE_SERVICE_STATES
        and s.product_code in prov.service_mapping
        and (not allowed or s.product_code in allowed)
    }
    devices = {
        i.serial_number: prov.physical_goods_mapping[i.physical_good_code]
        for i in sub.installed_items
        if i.distributor == distributor and i.physical_good_code in prov.physical_goods_mapping
    }
    return products, devices


def run_story(
    prov: ProviderSettings,
    story: list[tuple],
    reject_users: list[bool],  # type: ignore[type-arg]
) -> None:
    """Plan every snapshot in turn; requests complete (or the account's ADD_USER is refused and
    its later requests with it); check every property after every step."""
    icareus = Icareus()
    state: SubscriptionRecord | None = None
    for version, snap in enumerate(story, 1):
        sub = sub_at(version, snap)
        ev = event("ADD_SERVICE", sub)
        before = state
        decision = plan(state, ev, prov)
        assert decision.skipped is None
        was_registered = (
            {a.distributor for a in before.accounts.values() if a.registered} if before else set()
        )
        blocked = (
            {a.distributor for a in before.accounts.values() if not a.registered}
            if before
            else set()
        )

        # order: ADD_USER before anything else of its account, REMOVE_USER last. An account
        # whose registration was refused is registered again (once) by the next event that
        # wants something of it; otherwise nothing is sent for it, and what the event took away
        # from it is reported ACCOUNT_NOT_REGISTERED.
        seen: dict[str, list[RequestType]] = {}
        for r in decision.requests:
            seen.setdefault(r.distributor, []).append(r.type)
        for d, types in seen.items():
            if d not in was_registered:
                assert types[0] is RequestType.ADD_USER
            assert RequestType.ADD_USER not in types[1:]
            if RequestType.REMOVE_USER in types:
                assert types[-1] is RequestType.REMOVE_USER
        retried: set[str] = set()
        for d in blocked:
            wants_something = desired(sub, prov, d) != (set(), {})
            if wants_something:
                retried.add(d)
                if prov.effective:
                    assert seen[d][0] is RequestType.ADD_USER
            else:
                assert d not in seen
        for j in decision.rejections:
            if j.code is RejectionCode.ACCOUNT_NOT_REGISTERED:
                assert j.distributor in blocked - retried and j.distributor not in seen
                assert j.type in (RequestType.CANCEL_PRODUCTS, RequestType.REMOVE_DEVICE)
        # limit
        assert len(decision.state.accounts) <= prov.max_viewing_points
        assert len({r.distributor for r in decision.requests}) <= prov.max_viewing_points

        # the requests are sent; some ADD_USERs are refused (and the rest of that account with them)
        state = decision.state
        refused: set[str] = set()
        for n, r in enumerate(decision.requests):
            if r.type is RequestType.ADD_USER and reject_users[(version + n) % len(reject_users)]:
                refused.add(r.distributor)
            if r.distributor in refused:
                state = apply_result(state, result_of(r, LifeCycleState.REJECTED))
                continue
            icareus.apply(r)
            if r.type is RequestType.ADD_USER:
                state = apply_result(
                    state, result_of(r, LifeCycleState.COMPLETED, reference_number=f"u{version}{n}")
                )
        # convergence: Icareus holds exactly what the state says, and that is what CRM wants
        assert icareus.users == held(state)
        if prov.effective:
            for a in state.accounts.values():
                if a.registered:
                    want_p, want_d = desired(sub, prov, a.distributor)
                    assert (set(a.products), a.devices) == (want_p, want_d)

        # idempotence: the same event again changes nothing; the same snapshot re-published
        # under a new version plans nothing new either
        again = plan(state, ev, prov)
        assert again.skipped is SkipReason.DUPLICATE_EVENT and again.requests == ()
        if prov.effective:
            republished = plan(
                state,
                event(
                    "ADD_SERVICE",
                    sub_at(version, snap).model_copy(update={"version": version}),
                    event_id="other",
                ),
                prov,
            )
            assert republished.skipped is SkipReason.STALE_VERSION
        # staleness: an older version changes nothing
        if version > 1:
            late = plan(
                state, event("REMOVE_SERVICE", sub_at(version - 1, story[0]), event_id="late"), prov
            )
            assert late.skipped is SkipReason.STALE_VERSION and late.requests == ()
            assert late.state is state


@FAST
@given(
    providers,
    st.lists(snapshots, min_size=1, max_size=5),
    st.lists(st.booleans(), min_size=1, max_size=4).map(
        lambda bs: [b and i % 3 == 0 for i, b in enumerate(bs)]
    ),
)
def test_generated_stories_converge_in_order_within_limits(
    prov: ProviderSettings,
    story: list[tuple],
    reject_users: list[bool],  # type: ignore[type-arg]
) -> None:
    run_story(prov, story, reject_users)


@FAST
@given(providers, st.lists(snapshots, min_size=1, max_size=4))
def test_a_repeated_snapshot_under_a_new_version_plans_no_new_requests(
    prov: ProviderSettings,
    story: list[tuple],  # type: ignore[type-arg]
) -> None:
    state: SubscriptionRecord | None = None
    for version, snap in enumerate(story, 1):
        state = plan(state, event("ADD_SERVICE", sub_at(2 * version - 1, snap)), prov).state
        repeat = plan(state, event("ADD_SERVICE", sub_at(2 * version, snap)), prov)
        if prov.effective:
            assert repeat.requests == () and repeat.rejections == ()
            assert repeat.state.accounts == state.accounts
        state = repeat.state


@FAST
@given(providers, snapshots)
def test_the_same_input_always_yields_the_same_decision(
    prov: ProviderSettings,
    snap: tuple,  # type: ignore[type-arg]
) -> None:
    ev = event("BECOME_SUBSCRIBER", sub_at(1, snap))
    assert plan(None, ev, prov) == plan(None, ev, prov)
