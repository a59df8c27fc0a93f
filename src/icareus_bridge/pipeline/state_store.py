"""The planner's local state: what the bridge knows about every subscription of its assigned
partitions, restored from the compacted changelog topic when partitions are assigned and
dropped when they are revoked. A batch writes through a `StateTransaction` (`transaction()`,
kafka/state.py): its reads see its own writes first, and the store takes the writes only once
the batch's Kafka transaction has committed.

Values are kept as the encoded changelog bytes and decoded on access: a million subscriptions
fit in well under the memory a million decoded models would take. A small bounded
cache keeps recently used subscriptions decoded."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from icareus_bridge.config import KafkaSettings
from icareus_bridge.core.model import SubscriptionRecord
from icareus_bridge.kafka.changelog import read_to_end
from icareus_bridge.kafka.state import StateTransaction
from icareus_bridge.pipeline.parking import is_parked_marker

DecodeState = Callable[[bytes], SubscriptionRecord]
EncodeState = Callable[[SubscriptionRecord], bytes | None]


@dataclass(frozen=True, slots=True)
class RestoreReport:
    partition: int
    records: int
    subscriptions: int
    seconds: float


class StateStore:
    """Per partition: subscription id (bytes) -> encoded `SubscriptionRecord`."""

    def __init__(self, decode: DecodeState, *, cache_size: int = 20000) -> None:
        self._decode = decode
        self._partitions: dict[int, dict[bytes, bytes]] = {}
        self._cache: dict[tuple[int, bytes], SubscriptionRecord] = {}
        self._cache_size = cache_size

    # --- partitions ---------------------------------------------------------------------

    def partitions(self) -> set[int]:
        return set(self._partitions)

    def holds(self, partition: int) -> bool:
        return partition in self._partitions

    def drop(self, partition: int) -> None:
        """Forget a revoked partition (its next owner restores it from the changelog)."""
        self._partitions.pop(partition, None)
        for k in [k for k in self._cache if k[0] == partition]:
            del self._cache[k]

    def restore(
        self,
        kafka: KafkaSettings,
        changelog_topic: str,
        partitions: Iterable[int],
        *,
        timeout: float = 600.0,
    ) -> list[RestoreReport]:
        """Read the changelog of `partitions` from the beginning to its end into the store.

        The partitions are replaced, not merged: whatever was held for them is dropped first.
        """
        parts = sorted(set(partitions))
        for p in parts:
            self.drop(p)
            self._partitions[p] = {}
        started = time.monotonic()
        counts = read_to_end(kafka, changelog_topic, parts, self.load, timeout=timeout)
        seconds = time.monotonic() - started
        return [
            RestoreReport(p, counts.get(p, 0), len(self._partitions[p]), seconds) for p in parts
        ]

    # --- values -------------------------------------------------------------------------

    def transaction(
        self, changelog_topic: str, encode: EncodeState
    ) -> StateTransaction[SubscriptionRecord]:
        """A batch's state writes to `changelog_topic`, read through to this store and applied
        to it after the batch's Kafka commit (see kafka/state.py)."""
        return StateTransaction(changelog_topic, store=self, encode=encode)

    def load(self, partition: int, key: bytes, value: bytes | None) -> None:
        """Apply one changelog record (value None = tombstone: the subscription is forgotten).
        The dispatcher's parked-key markers share the topic; they are not subscriptions."""
        if is_parked_marker(key):
            return
        part = self._partitions.setdefault(partition, {})
        if value is None:
            part.pop(key, None)
        else:
            part[key] = value
        self._cache.pop((partition, key), None)

    def put(
        self, partition: int, key: bytes, value: bytes | None, record: SubscriptionRecord | None
    ) -> None:
        """Apply a committed write of this process; `record` is `value` already decoded."""
        self.load(partition, key, value)
        if record is not None and value is not None:
            self._remember((partition, key), record)

    def get(self, partition: int, key: bytes) -> SubscriptionRecord | None:
        """The known state of one subscription, or None when the bridge knows nothing of it."""
        ck = (partition, key)
        cached = self._cache.get(ck)
        if cached is not None:
            return cached
        part = self._partitions.get(partition)
        raw = part.get(key) if part is not None else None
        if raw is None:
            return None
        record = self._decode(raw)
        self._remember(ck, record)
        return record

    def find_partition(self, key: bytes) -> int | None:
        """The partition holding `key`, if any (for feedback that arrives elsewhere)."""
        for p, part in self._partitions.items():
            if key in part:
                return p
        return None

    def _remember(self, ck: tuple[int, bytes], record: SubscriptionRecord) -> None:
        cache = self._cache
        if ck not in cache and len(cache) >= self._cache_size:
            # Evict the oldest entry (dicts keep insertion order).
            del cache[next(iter(cache))]
        cache[ck] = record

    def __len__(self) -> int:
        return sum(len(p) for p in self._partitions.values())

    def size_of(self, partition: int) -> int:
        return len(self._partitions.get(partition, {}))
