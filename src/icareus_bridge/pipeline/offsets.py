"""Dispatcher bookkeeping of consumed request offsets: requests finish out of order (different
subscriptions run concurrently), but a partition's offset is committed only up to the first
request that is not finished yet. The finished offsets above that point travel in the commit's
metadata, so a restarted dispatcher skips them instead of sending their results a second time."""

from __future__ import annotations

import base64
import binascii
import zlib
from collections import deque

METADATA_PREFIX = "done1:"
# Brokers refuse commit metadata above `offset.metadata.max.bytes` (4096 by default).
MAX_METADATA_CHARS = 3800


class PartitionOffsets:
    """Offsets of one partition, registered in consumption order and finished in any order.

    `committable()` is the offset to commit: everything below it is finished. Each offset is
    appended and removed once, so registering and finishing are O(1) amortised.
    """

    def __init__(self, already_done: frozenset[int] = frozenset()) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._already_done = set(already_done)
        self._watermark: int | None = None
        self._highest: int | None = None

    def register(self, offset: int) -> bool:
        """Record a consumed offset; False when it must not run: an earlier run finished it
        (commit metadata), or it was delivered already (a fetch repeated after pause/resume)."""
        if self._highest is not None and offset <= self._highest:
            return False
        self._highest = offset
        self._pending.append(offset)
        if offset in self._already_done:
            self._already_done.discard(offset)
            self.mark_done(offset)
            return False
        return True

    def mark_done(self, offset: int) -> None:
        """The request at `offset` is finished (result, dead letter or skip is produced)."""
        self._done.add(offset)
        pending, done = self._pending, self._done
        while pending and pending[0] in done:
            head = pending.popleft()
            done.discard(head)
            self._watermark = head + 1

    def committable(self) -> int | None:
        """The offset to commit (next one to read after a restart); None before any offset."""
        if self._pending:
            return self._pending[0]
        return self._watermark

    def unfinished(self) -> int:
        """How many registered offsets are not finished yet."""
        return len(self._pending) - len(self._done)

    def span(self) -> int:
        """Registered offsets not yet passed by the commit point (finished or not)."""
        return len(self._pending)

    def metadata(self) -> str:
        """Commit metadata naming the finished offsets above `committable()`; see `decode`."""
        base = self.committable()
        if base is None or not self._done:
            return ""
        return encode_done_offsets(base, self._done)


def encode_done_offsets(base: int, done: set[int] | frozenset[int]) -> str:
    """A bitset of `done` relative to `base`, compressed; empty when it would not fit."""
    above = [o - base for o in done if o >= base]
    if not above:
        return ""
    bits = bytearray((max(above) // 8) + 1)
    for rel in above:
        bits[rel // 8] |= 1 << (rel % 8)
    text = METADATA_PREFIX + base64.b64encode(zlib.compress(bytes(bits))).decode("ascii")
    return text if len(text) <= MAX_METADATA_CHARS else ""


def decode_done_offsets(base: int, metadata: str | None) -> frozenset[int]:
    """The finished offsets recorded by `encode_done_offsets`; nothing for foreign metadata."""
    if not metadata or not metadata.startswith(METADATA_PREFIX):
        return frozenset()
    try:
        bits = zlib.decompress(base64.b64decode(metadata[len(METADATA_PREFIX) :]))
    except (binascii.Error, zlib.error):
        return frozenset()
    return frozenset(
        base + i * 8 + b for i, byte in enumerate(bits) for b in range(8) if byte >> b & 1
    )


class OffsetTracker:
    """`PartitionOffsets` for every assigned partition of the requests topic."""

    def __init__(self) -> None:
        self._partitions: dict[int, PartitionOffsets] = {}

    def assign(self, partition: int, already_done: frozenset[int] = frozenset()) -> None:
        self._partitions[partition] = PartitionOffsets(already_done)

    def revoke(self, partition: int) -> None:
        self._partitions.pop(partition, None)

    def assigned(self) -> list[int]:
        return sorted(self._partitions)

    def register(self, partition: int, offset: int) -> bool:
        return self._partitions[partition].register(offset)

    def mark_done(self, partition: int, offset: int) -> None:
        # A partition revoked while its request ran is no longer ours to commit.
        tracker = self._partitions.get(partition)
        if tracker is not None:
            tracker.mark_done(offset)

    def partition(self, partition: int) -> PartitionOffsets | None:
        return self._partitions.get(partition)

    def commit_points(self) -> dict[int, tuple[int, str]]:
        """Per partition: (offset to commit, metadata); partitions with nothing consumed omitted."""
        points: dict[int, tuple[int, str]] = {}
        for partition, tracker in self._partitions.items():
            offset = tracker.committable()
            if offset is not None:
                points[partition] = (offset, tracker.metadata())
        return points


__all__ = [
    "OffsetTracker",
    "PartitionOffsets",
    "decode_done_offsets",
    "encode_done_offsets",
]
