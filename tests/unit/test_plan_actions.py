"""One table row per CRM action code of DOMAIN.md: the subscription before, the snapshot the
action publishes, and exactly the Icareus requests that must follow."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from icareus_bridge.core.feedback import apply_result, observed_state
from icareus_bridge.core.model import (
    AccountState,
    ActionCode,
    LifeCycleState,
    ProvisioningResult,
    RequestType,
    ServiceState,
    Subscription,
    SubscriptionRecord,
    SubscriptionState,
)
from icareus_bridge.core.plan import plan
from tests.unit.crm_events import SUB_NUMBER, event, item, provider, subscription, svc

E = ServiceState.EFFECTIVE
NE = ServiceState.NOT_EFFECTIVE
ADD_USER = RequestType.ADD_USER
REMOVE_USER = RequestType.REMOVE_USER
ACTIVATE = RequestType.ACTIVATE_PRODUCTS
CANCEL = RequestType.CANCEL_PRODUCTS
ADD_DEVICE = RequestType.ADD_DEVICE
REMOVE_DEVICE = RequestType.REMOVE_DEVICE

PROVIDER = provider()

# The household every row starts from: living room VP1 (basic + sports, box + card), bedroom VP2
# (basic, box; news not yet started).
BOX1 = item("ii-1", "SN1", "STB-4K", "VP1")
CARD1 = item("ii-2", "SC1", "SMARTCARD", "VP1")
BOX2 = item("ii-3", "SN2", "STB-HD", "VP2")
ITEMS = (BOX1, CARD1, BOX2)


def services(
    state: ServiceState = E, *, sports: ServiceState | None = None, news: ServiceState = NE
) -> list:  # type: ignore[type-arg]
    return [
        svc("sv-1", "BASIC-TV", "VP1", state),
        svc("sv-2", "SPORTS", "VP1", sports or state),
        svc("sv-3", "BASIC-TV", "VP2", state),
        svc("sv-4", "NEWS", "VP2", news),
    ]


def household(version: int, state: SubscriptionState = SubscriptionState.EFFECTIVE, **kw):  # type: ignore[no-untyped-def]
    svc_state = {
        SubscriptionState.EFFECTIVE: E,
        SubscriptionState.SHORT_TERM_EFFECTIVE: ServiceState.SHORT_TERM_EFFECTIVE,
        SubscriptionState.SHORT_TERM_NOT_EFFECTIVE: ServiceState.SHORT_TERM_NOT_EFFECTIVE,
        SubscriptionState.IN_RESTING: ServiceState.IN_RESTING,
        SubscriptionState.REGRETTED: ServiceState.REGRETTED,
        SubscriptionState.CANCELLED: ServiceState.CANCELLED,
    }.get(state, NE)
    items = kw.pop("items", ITEMS)
    return subscription(version, services(svc_state, **kw), items, state=state)


def known(*history: Subscription) -> SubscriptionRecord:
    """The state after CRM published `history`, every request completed, user ids fed back."""
    state: SubscriptionRecord | None = None
    for sub in history:
        decision = plan(state, event("BECOME_SUBSCRIBER", sub), PROVIDER)
        state = decision.state
        for r in decision.requests:
            state = apply_result(
                state,
                ProvisioningResult(
                    request_id=r.request_id,
                    number=r.number,
                    type=r.type,
                    subscription_id=r.subscription_id,
                    subscription_number=r.subscription_number,
                    distributor=r.distributor,
                    account_key=r.account_key,
                    event_id=r.event_id,
                    action_code=r.action_code,
                    life_cycle_state=LifeCycleState.COMPLETED,
                    reference_number=f"u-{r.distributor}" if r.type is ADD_USER else None,
                    attempts=1,
                ),
            )
    assert state is not None
    return state


def summary(requests: Sequence) -> list[tuple]:  # type: ignore[type-arg]
    out = []
    for r in requests:
        if r.type in (ACTIVATE, CANCEL):
            payload: object = r.product_ids
        elif r.type in (ADD_DEVICE, REMOVE_DEVICE):
            payload = (r.device_id, r.device_type)
        else:
            payload = None
        out.append((r.type, r.distributor, r.user_id, payload))
    return out


BASE = household(1)
U1, U2 = "u-VP1", "u-VP2"
DEACTIVATED = household(2, SubscriptionState.NOT_EFFECTIVE)
CANCEL_ALL = [(CANCEL, "VP1", U1, ("1001", "1002")), (CANCEL, "VP2", U2, ("1001",))]
ACTIVATE_ALL = [(ACTIVATE, "VP1", U1, ("1001", "1002")), (ACTIVATE, "VP2", U2, ("1001",))]
TERMINATION = [
    (REMOVE_DEVICE, "VP1", U1, ("SC1", "SMART_CARD")),
    (REMOVE_DEVICE, "VP1", U1, ("SN1", "SET_TOP_BOX")),
    (REMOVE_DEVICE, "VP2", U2, ("SN2", "SET_TOP_BOX")),
    *CANCEL_ALL,
    (REMOVE_USER, "VP1", U1, None),
    (REMOVE_USER, "VP2", U2, None),
]

# (action code, history before the action, snapshot after it, expected requests)
TABLE: list[tuple[str, tuple[Subscription, ...], Subscription, list[tuple]]] = [  # type: ignore[type-arg]
    (
        "BECOME_SUBSCRIBER",
        (),
        BASE,
        [
            (ADD_USER, "VP1", None, None),
            (ADD_USER, "VP2", None, None),
            (ADD_DEVICE, "VP1", None, ("SC1", "SMART_CARD")),
            (ADD_DEVICE, "VP1", None, ("SN1", "SET_TOP_BOX")),
            (ADD_DEVICE, "VP2", None, ("SN2", "SET_TOP_BOX")),
            (ACTIVATE, "VP1", None, ("1001", "1002")),
            (ACTIVATE, "VP2", None, ("1001",)),
        ],
    ),
    ("ACTIVATE_SUBSCRIPTION", (BASE, DEACTIVATED), household(3), ACTIVATE_ALL),
    ("DEACTIVATE_SUBSCRIPTION", (BASE,), DEACTIVATED, CANCEL_ALL),
    ("TERMINATE_SUBSCRIPTION", (BASE,), household(2, SubscriptionState.CANCELLED), TERMINATION),
    ("REST_SUBSCRIPTION", (BASE,), household(2, SubscriptionState.IN_RESTING), CANCEL_ALL),
    (
        "END_SUBSCRIPTION_RESTING",
        (BASE, household(2, SubscriptionState.IN_RESTING)),
        household(3),
        ACTIVATE_ALL,
    ),
    (
        "SHORT_TERM_ACTIVATION",
        (BASE, DEACTIVATED),
        household(3, SubscriptionState.SHORT_TERM_EFFECTIVE),
        ACTIVATE_ALL,
    ),
    (
        "END_SHORT_TERM_ACTIVATION",
        (BASE, DEACTIVATED, household(3, SubscriptionState.SHORT_TERM_EFFECTIVE)),
        household(4, SubscriptionState.NOT_EFFECTIVE),
        CANCEL_ALL,
    ),
    (
        "SHORT_TERM_DEACTIVATION",
        (BASE,),
        household(2, SubscriptionState.SHORT_TERM_NOT_EFFECTIVE),
        CANCEL_ALL,
    ),
    (
        "END_SHORT_TERM_DEACTIVATION",
        (BASE, household(2, SubscriptionState.SHORT_TERM_NOT_EFFECTIVE)),
        household(3),
        ACTIVATE_ALL,
    ),
    (
        "CHANGE_SUBSCRIPTION_DISTRIBUTION",
        (BASE,),
        subscription(
            2,
            [
                svc("sv-1", "BASIC-TV", "VP1"),
                svc("sv-2", "SPORTS", "VP1"),
                svc("sv-3", "BASIC-TV", "VP3"),
                svc("sv-4", "NEWS", "VP3", NE),
            ],
            [BOX1, CARD1, item("ii-3", "SN2", "STB-HD", "VP3")],
        ),
        [
            (ADD_USER, "VP3", None, None),
            (REMOVE_DEVICE, "VP2", U2, ("SN2", "SET_TOP_BOX")),
            (ADD_DEVICE, "VP3", None, ("SN2", "SET_TOP_BOX")),
            (CANCEL, "VP2", U2, ("1001",)),
            (ACTIVATE, "VP3", None, ("1001",)),
        ],
    ),
    (
        "ADD_SERVICE",
        (BASE,),
        subscription(2, [*services(), svc("sv-5", "MOVIES", "VP1")], ITEMS),
        [(ACTIVATE, "VP1", U1, ("1003",))],
    ),
    (
        "REMOVE_SERVICE",
        (BASE,),
        household(2, sports=ServiceState.REMOVED),
        [(CANCEL, "VP1", U1, ("1002",))],
    ),
    ("START_SERVICE", (BASE,), household(2, news=E), [(ACTIVATE, "VP2", U2, ("1005",))]),
    ("STOP_SERVICE", (BASE,), household(2, sports=NE), [(CANCEL, "VP1", U1, ("1002",))]),
    (
        "SWAP_SERVICE",
        (BASE,),
        subscription(
            2, [*services(sports=ServiceState.SWAPPED), svc("sv-5", "MOVIES", "VP1")], ITEMS
        ),
        [(CANCEL, "VP1", U1, ("1002",)), (ACTIVATE, "VP1", U1, ("1003",))],
    ),
    (
        "ADD_INSTALLED_ITEM",
        (BASE,),
        household(2, items=(*ITEMS, item("ii-4", "OTT1", "OTT-STICK", "VP2"))),
        [(ADD_DEVICE, "VP2", U2, ("OTT1", "OTT_DEVICE"))],
    ),
    (
        "REMOVE_INSTALLED_ITEM",
        (BASE,),
        household(2, items=(BOX1, BOX2)),
        [(REMOVE_DEVICE, "VP1", U1, ("SC1", "SMART_CARD"))],
    ),
    (
        "SWAP_INSTALLED_ITEM",
        (BASE,),
        household(2, items=(BOX1, CARD1, item("ii-5", "SN2B", "STB-4K", "VP2"))),
        [
            (REMOVE_DEVICE, "VP2", U2, ("SN2", "SET_TOP_BOX")),
            (ADD_DEVICE, "VP2", U2, ("SN2B", "SET_TOP_BOX")),
        ],
    ),
    (
        "MOVE_INSTALLED_ITEM",
        (BASE,),
        household(2, items=(BOX1, item("ii-2", "SC1", "SMARTCARD", "VP2"), BOX2)),
        [
            (REMOVE_DEVICE, "VP1", U1, ("SC1", "SMART_CARD")),
            (ADD_DEVICE, "VP2", U2, ("SC1", "SMART_CARD")),
        ],
    ),
]


def test_every_action_code_of_the_domain_has_a_row() -> None:
    codes = {row[0] for row in TABLE} | {"RESET_SUBSCRIPTION"}  # reset: its own test below
    assert codes == {c.value for c in ActionCode}


@pytest.mark.parametrize(
    ("code", "history", "after", "expected"), TABLE, ids=[row[0] for row in TABLE]
)
def test_action_plans_exactly_these_requests(
    code: str,
    history: tuple[Subscription, ...],
    after: Subscription,
    expected: list[tuple],  # type: ignore[type-arg]
) -> None:
    state = known(*history) if history else None
    decision = plan(state, event(code, after), PROVIDER)
    assert decision.skipped is None
    assert decision.rejections == ()
    assert summary(decision.requests) == expected
    assert [r.sequence for r in decision.requests] == list(range(1, len(expected) + 1))
    assert all(r.action_code == code for r in decision.requests)


def test_reset_subscription_plans_from_what_icareus_really_holds() -> None:
    # Icareus lost the bedroom's products and holds a stray device in the living room.
    state = known(BASE)
    observed = observed_state(
        state,
        state.subscription_id,
        SUB_NUMBER,
        [
            AccountState(
                distributor="VP1",
                account_key=f"{SUB_NUMBER}-VP1",
                user_id=U1,
                products=frozenset({"1001", "1002"}),
                devices={"SN1": "SET_TOP_BOX", "SC1": "SMART_CARD", "STRAY": "OTT_DEVICE"},
            ),
            AccountState(
                distributor="VP2",
                account_key=f"{SUB_NUMBER}-VP2",
                user_id=U2,
                devices={"SN2": "SET_TOP_BOX"},
            ),
        ],
    )
    # The reset carries the same version as the last applied event: it is applied, not stale.
    decision = plan(observed, event("RESET_SUBSCRIPTION", BASE, event_id="reset-1"), PROVIDER)
    assert decision.skipped is None
    assert summary(decision.requests) == [
        (REMOVE_DEVICE, "VP1", U1, ("STRAY", "OTT_DEVICE")),
        (ACTIVATE, "VP2", U2, ("1001",)),
    ]
    assert decision.state.accounts == state.accounts
