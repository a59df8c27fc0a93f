"""The domain's rules for one CRM event, checked after it decodes and before `plan` sees it:
what the schema allows but no subscription can be (an empty number, one box in two rooms, a
version beyond Avro's long, ten thousand items). A broken rule is `DecodeError(INVALID)` whose
message starts with the field: the planner dead-letters the event, `explain` exits 2.

Every path into the planner comes through here, the compiled reader's included (it builds the
models without validating them), so these checks are the ones that hold for every event.
Messages name fields and sizes, never values of the subscriber (personal data)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from icareus_bridge.codec import DecodeError, DecodeReason
from icareus_bridge.core.model import INT64_MAX, INT64_MIN, LifecycleEvent, SubscriptionRecord

if TYPE_CHECKING:  # the limits come from the configuration; the core loads none
    from icareus_bridge.config import LimitSettings


def _invalid(field: str, problem: str) -> DecodeError:
    return DecodeError(DecodeReason.INVALID, f"{field}: {problem}", field=field)


def check_event_size(size: int, limits: LimitSettings) -> None:
    """Refuse an encoded event larger than `limits.max_event_bytes` before decoding it."""
    if size > limits.max_event_bytes:
        raise DecodeError(
            DecodeReason.INVALID,
            f"event of {size} bytes, more than limits.max_event_bytes ({limits.max_event_bytes})",
        )


def _strings(event: LifecycleEvent) -> Iterator[tuple[str, str | None]]:
    """Every string of the event with its field path (the schema's every string field)."""
    yield "event_id", event.event_id
    yield "action.code", event.action.code
    yield "action.classification", event.action.classification
    sub = event.subscription
    yield "subscription.id", sub.id
    yield "subscription.number", sub.number
    p = sub.subscriber
    s = "subscription.subscriber"
    yield f"{s}.account_number", p.account_number
    yield f"{s}.first_name", p.first_name
    yield f"{s}.last_name", p.last_name
    yield f"{s}.email", p.email
    yield f"{s}.phone", p.phone
    yield f"{s}.country_code", p.country_code
    yield f"{s}.postal_code", p.postal_code
    yield f"{s}.city", p.city
    for n, svc in enumerate(sub.services):
        yield f"subscription.services.{n}.id", svc.id
        yield f"subscription.services.{n}.product_code", svc.product_code
        yield f"subscription.services.{n}.distributor", svc.distributor
    for n, item in enumerate(sub.installed_items):
        yield f"subscription.installed_items.{n}.id", item.id
        yield f"subscription.installed_items.{n}.serial_number", item.serial_number
        yield f"subscription.installed_items.{n}.physical_good_code", item.physical_good_code
        yield f"subscription.installed_items.{n}.distributor", item.distributor


def _longest(event: LifecycleEvent) -> int:
    """The length of the longest string of the event (the hot path: no field paths built)."""
    sub = event.subscription
    p = sub.subscriber
    longest = max(
        len(event.event_id),
        len(event.action.code),
        len(event.action.classification or ""),
        len(sub.id),
        len(sub.number),
        len(p.account_number),
        len(p.first_name),
        len(p.last_name),
        len(p.email or ""),
        len(p.phone or ""),
        len(p.country_code or ""),
        len(p.postal_code or ""),
        len(p.city or ""),
    )
    for svc in sub.services:
        n = max(len(svc.id), len(svc.product_code), len(svc.distributor or ""))
        if n > longest:
            longest = n
    for item in sub.installed_items:
        n = max(
            len(item.id),
            len(item.serial_number),
            len(item.physical_good_code),
            len(item.distributor or ""),
        )
        if n > longest:
            longest = n
    return longest


def check_event(event: LifecycleEvent, limits: LimitSettings) -> LifecycleEvent:
    """The event itself if it can be planned; else `DecodeError(INVALID)` naming the field.

    1. Longs within Avro's long (int64); the version not negative.
    2. Within `limits`: services, installed items, characters of any string.
    3. Identifiers not blank: event id, subscription id and number (the number makes every
       account key), and every serial number (it is the Icareus device id).
    4. No serial number twice: one box cannot be installed in two rooms."""
    sub = event.subscription
    for field, value in (("occurred_at", event.occurred_at), ("subscription.version", sub.version)):
        if not INT64_MIN <= value <= INT64_MAX:
            raise _invalid(field, f"{value} is outside the range of an Avro long (int64)")
    if sub.version < 0:
        raise _invalid("subscription.version", f"{sub.version} is negative")

    if len(sub.services) > limits.max_services:
        raise _invalid(
            "subscription.services",
            f"{len(sub.services)} services, more than limits.max_services ({limits.max_services})",
        )
    items = sub.installed_items
    if len(items) > limits.max_installed_items:
        raise _invalid(
            "subscription.installed_items",
            f"{len(items)} installed items, more than "
            f"limits.max_installed_items ({limits.max_installed_items})",
        )
    most = limits.max_string_length
    if _longest(event) > most:
        for field, text in _strings(event):
            if text is not None and len(text) > most:
                raise _invalid(
                    field, f"{len(text)} characters, more than limits.max_string_length ({most})"
                )

    for field, text in (
        ("event_id", event.event_id),
        ("subscription.id", sub.id),
        ("subscription.number", sub.number),
    ):
        if not text or text.isspace():
            raise _invalid(field, "must not be empty")
    for n, item in enumerate(items):
        if not item.serial_number or item.serial_number.isspace():
            raise _invalid(
                f"subscription.installed_items.{n}.serial_number",
                f"installed item {item.id}: serial number must not be empty",
            )
    if len(items) > 1 and len({i.serial_number for i in items}) < len(items):
        first_of: dict[str, int] = {}
        for n, item in enumerate(items):
            serial = item.serial_number
            if serial in first_of:
                other = items[first_of[serial]]
                raise _invalid(
                    f"subscription.installed_items.{n}.serial_number",
                    f"serial number {serial} of installed item {item.id} is also installed "
                    f"item {other.id} (installed_items.{first_of[serial]}): one device cannot "
                    "be in two places",
                )
            first_of[serial] = n
    return event


def check_state_of(state: SubscriptionRecord, event: LifecycleEvent) -> None:
    """Refuse a known state that is not the event's subscription's (`DecodeError(INVALID)`)."""
    if state.subscription_id != event.subscription.id:
        raise _invalid(
            "subscription.id",
            f"the state is of subscription {state.subscription_id}, "
            f"the event of subscription {event.subscription.id}",
        )


__all__ = ["check_event", "check_event_size", "check_state_of"]
