"""`icareus-bridge status --subscription ID`: what the bridge knows about one subscription, as
JSON, read from its Kafka topics (no running bridge needed): the accounts as Icareus should hold
them, the last applied version and when it was committed, whether the key is parked, its dead
letters and its latest results. No personal data (the CRM snapshot's subscriber is left out)
and no secrets."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

from icareus_bridge.config import load_settings
from icareus_bridge.kafka.clients import quiet_librdkafka
from icareus_bridge.ops.state_lookup import (
    KafkaUnreachable,
    StateLookup,
    SubscriptionFacts,
    UnknownSubscription,
)
from icareus_bridge.pipeline.dead_letter import iso_millis

EXIT_OK = 0
EXIT_UNKNOWN = 2
EXIT_KAFKA = 4


def _time(ms: int | None) -> str | None:
    return iso_millis(ms) if ms is not None and ms >= 0 else None


def render(facts: SubscriptionFacts) -> dict[str, Any]:
    """The status document (field order is the one printed)."""
    st = facts.state
    rec = st.record
    snapshot = rec.snapshot
    parked = st.parked
    reasons = Counter(f"{d.stage}:{d.reason}" for d in facts.dead_letters)
    window = facts.results_window
    return {
        "subscription_id": rec.subscription_id,
        "subscription_number": rec.subscription_number,
        "subscription_state": snapshot.state.value if snapshot is not None else None,
        "last_applied_version": rec.last_version,
        "last_applied_at": _time(st.timestamp_ms),
        "last_event_id": rec.last_event_id,
        "accounts": [
            {
                "distributor": a.distributor,
                "account_key": a.account_key,
                "user_id": a.user_id,
                "registered": a.registered,
                "registration_rejected": a.registration_rejected,
                "products": a.model_dump(mode="json")["products"],
                "devices": [
                    {"device_id": d, "device_type": t} for d, t in sorted(a.devices.items())
                ],
            }
            for a in rec.accounts.values()
        ],
        "parked": parked is not None,
        "parked_behind": parked.parked_behind if parked is not None else None,
        "parked_at": _time(parked.parked_at) if parked is not None else None,
        "dead_letters": len(facts.dead_letters),
        "dead_letters_by_reason": dict(sorted(reasons.items())),
        "last_dead_letter_at": max(
            (d.last_failure_at for d in facts.dead_letters if d.last_failure_at), default=None
        ),
        "last_results": [
            {
                "request_id": s.result.request_id,
                "number": s.result.number,
                "type": s.result.type.value,
                "distributor": s.result.distributor,
                "state": s.result.life_cycle_state.value,
                "error_code": s.result.error_code,
                "executed_at": _time(s.result.executed_at or s.timestamp_ms),
                "event_id": s.result.event_id,
            }
            for s in reversed(facts.results)  # newest first
        ],
        "kafka": {
            "state_partition": st.partition,
            "state_offset": st.offset,
            "results_read": (
                {
                    "partition": window.partition,
                    "from_offset": window.from_offset,
                    "to_offset": window.to_offset,
                    "whole_partition": window.complete,
                }
                if window is not None
                else None
            ),
        },
    }


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    quiet_librdkafka()
    sid: str = args.subscription
    try:
        with StateLookup(settings) as lookup:
            facts = lookup.facts(sid, last_results=args.results)
    except UnknownSubscription as exc:
        print(f"icareus-bridge status: --subscription {sid}: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    except KafkaUnreachable as exc:
        print(f"icareus-bridge status: {exc}", file=sys.stderr)
        return EXIT_KAFKA
    json.dump(render(facts), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


__all__ = ["main", "render"]
