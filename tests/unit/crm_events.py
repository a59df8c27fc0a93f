"""Builders of CRM lifecycle events for the state machine tests, in CRM's words."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from icareus_bridge.config import Distributor, ProviderSettings
from icareus_bridge.core.model import (
    Action,
    InstalledItem,
    LifecycleEvent,
    Service,
    ServiceState,
    Subscriber,
    Subscription,
    SubscriptionState,
)

SUB_ID = "sub-0001"
SUB_NUMBER = "S0001"

SUBSCRIBER = Subscriber(
    account_number="AC0001",
    first_name="Maria",
    last_name="Georgiou",
    email="maria@example.org",
    phone="+35799000000",
    country_code="CY",
    postal_code="1010",
    city="Nicosia",
)


def provider(
    *,
    effective: bool = True,
    max_viewing_points: int = 4,
    allowed: dict[str, list[str]] | None = None,
) -> ProviderSettings:
    """Five Icareus distributors VP1..VP5 (VP3 allows only BASIC-TV and KIDS), eight products."""
    allowed = allowed if allowed is not None else {"VP3": ["BASIC-TV", "KIDS"]}
    return ProviderSettings(
        effective=effective,
        max_viewing_points=max_viewing_points,
        distributors=[
            Distributor(code=f"VP{i}", name=f"room {i}", allowed_products=allowed.get(f"VP{i}", []))
            for i in range(1, 6)
        ],
        service_mapping={
            "BASIC-TV": "1001",
            "SPORTS": "1002",
            "MOVIES": "1003",
            "KIDS": "1004",
            "NEWS": "1005",
            "DOCUMENTARIES": "1006",
            "MUSIC": "1007",
            "PREMIUM-HD": "1008",
        },
        physical_goods_mapping={
            "STB-4K": "SET_TOP_BOX",
            "STB-HD": "SET_TOP_BOX",
            "SMARTCARD": "SMART_CARD",
            "OTT-STICK": "OTT_DEVICE",
        },
    )


def svc(
    sid: str,
    product: str,
    distributor: str | None = "VP1",
    state: ServiceState = ServiceState.EFFECTIVE,
) -> Service:
    return Service(id=sid, product_code=product, state=state, distributor=distributor)


def item(
    iid: str, serial: str, good: str = "STB-4K", distributor: str | None = "VP1"
) -> InstalledItem:
    return InstalledItem(
        id=iid, serial_number=serial, physical_good_code=good, distributor=distributor
    )


def subscription(
    version: int,
    services: Iterable[Service] = (),
    items: Iterable[InstalledItem] = (),
    state: SubscriptionState = SubscriptionState.EFFECTIVE,
    sub_id: str = SUB_ID,
    number: str = SUB_NUMBER,
) -> Subscription:
    return Subscription(
        id=sub_id,
        number=number,
        version=version,
        state=state,
        subscriber=SUBSCRIBER,
        services=tuple(services),
        installed_items=tuple(items),
    )


def event(
    code: str,
    sub: Subscription,
    *,
    event_id: str | None = None,
    classification: str | None = None,
) -> LifecycleEvent:
    return LifecycleEvent(
        event_id=event_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{sub.id}/{sub.version}/{code}")),
        # One second per version, wrapped so that any version gives a time within an Avro long.
        occurred_at=1_764_000_000_000 + sub.version % 1_000_000_000 * 1000,
        action=Action(code=code, classification=classification),
        subscription=sub,
    )
