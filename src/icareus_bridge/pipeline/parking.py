"""Parked subscriptions: when a request exhausts its retry budget it goes to the DLQ and its
subscription is parked, so every later request of that subscription follows it to the DLQ in
order. A parked key is a compacted record `parked:<subscription id>` in the state topic, written
to the same partition number as the subscription's requests, so the dispatcher restores exactly
its own partitions' parked keys on assignment; a tombstone unparks."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

PARKED_KEY_PREFIX = "parked:"
_PREFIX_BYTES = PARKED_KEY_PREFIX.encode("ascii")


@dataclass(frozen=True, slots=True)
class ParkedKey:
    """One parked subscription: `parked_behind` is the request id that went to the DLQ first."""

    subscription_id: str
    parked_behind: str
    partition: int  # of the requests topic (and of this marker in the state topic)
    parked_at: int  # epoch ms


def is_parked_marker(key: bytes | None) -> bool:
    """True for state-topic keys written by the dispatcher (the planner's store skips them)."""
    return key is not None and key.startswith(_PREFIX_BYTES)


def marker_key(subscription_id: str) -> bytes:
    return _PREFIX_BYTES + subscription_id.encode("utf-8")


def encode_marker(parked: ParkedKey) -> bytes:
    return json.dumps(
        {
            "subscription_id": parked.subscription_id,
            "parked_behind": parked.parked_behind,
            "partition": parked.partition,
            "parked_at": parked.parked_at,
        },
        separators=(",", ":"),
    ).encode("utf-8")


def decode_marker(key: bytes, value: bytes | None) -> tuple[str, ParkedKey | None]:
    """(subscription id, the parked key or None for a tombstone) of one state-topic record."""
    subscription_id = key[len(_PREFIX_BYTES) :].decode("utf-8")
    if value is None:
        return subscription_id, None
    data = json.loads(value)
    return subscription_id, ParkedKey(
        subscription_id=str(data["subscription_id"]),
        parked_behind=str(data["parked_behind"]),
        partition=int(data["partition"]),
        parked_at=int(data["parked_at"]),
    )


class ParkedKeys:
    """The parked subscriptions of the partitions this dispatcher holds."""

    def __init__(self) -> None:
        self._parked: dict[str, ParkedKey] = {}

    def __len__(self) -> int:
        return len(self._parked)

    def __contains__(self, subscription_id: object) -> bool:
        return subscription_id in self._parked

    def get(self, subscription_id: str) -> ParkedKey | None:
        return self._parked.get(subscription_id)

    def park(self, parked: ParkedKey) -> None:
        self._parked[parked.subscription_id] = parked

    def unpark(self, subscription_id: str) -> ParkedKey | None:
        return self._parked.pop(subscription_id, None)

    def restore(self, records: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Apply state-topic records in log order (later ones win, tombstones unpark)."""
        for key, value in records:
            if not is_parked_marker(key):
                continue
            subscription_id, parked = decode_marker(key, value)
            if parked is None:
                self._parked.pop(subscription_id, None)
            else:
                self._parked[subscription_id] = parked

    def drop_partition(self, partition: int) -> None:
        """Forget the parked keys of a revoked partition (its next owner restores them)."""
        self._parked = {s: p for s, p in self._parked.items() if p.partition != partition}


__all__ = [
    "PARKED_KEY_PREFIX",
    "ParkedKey",
    "ParkedKeys",
    "decode_marker",
    "encode_marker",
    "is_parked_marker",
    "marker_key",
]
