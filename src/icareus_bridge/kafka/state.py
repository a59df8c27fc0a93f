"""One transaction's worth of changelog state, in the manner of Quix Streams'
`PartitionTransaction`: a stage writes state objects into the transaction while it handles a
batch; reads see the transaction's own writes first, then the store behind it; at commit the
last write per key is encoded once and produced to the changelog inside the Kafka transaction
(`Checkpoint`), and only after that Kafka commit succeeded are the writes applied to the store.
An aborted or rewound batch discards them: the store never holds what Kafka does not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
_MISSING = object()


class StateBackend(Protocol[T]):
    """The committed state a transaction reads through to and applies its writes to."""

    def get(self, partition: int, key: bytes) -> T | None: ...
    def put(self, partition: int, key: bytes, value: bytes | None, record: T | None) -> None: ...


class StateTransaction(Generic[T]):
    """Writes of one batch to the changelog `topic`, by (partition, key); `None` is a tombstone.
    `encode` turns an object into changelog bytes at commit (None: the objects are bytes);
    `store` (None: nothing behind it) is read through and updated by `flush()`."""

    def __init__(
        self,
        topic: str,
        *,
        store: StateBackend[T] | None = None,
        encode: Callable[[T], bytes | None] | None = None,
    ) -> None:
        self.topic = topic
        self._store = store
        self._encode = encode
        self._writes: dict[tuple[int, bytes], T | None] = {}
        self._encoded: list[tuple[int, bytes, bytes | None, T | None]] = []

    def get(self, partition: int, key: bytes) -> T | None:
        """This transaction's write of the key, else the store's committed value."""
        written = self._writes.get((partition, key), _MISSING)
        if written is not _MISSING:
            return written  # type: ignore[return-value]  # a T or None, never the sentinel
        return None if self._store is None else self._store.get(partition, key)

    def set(self, partition: int, key: bytes, record: T) -> None:
        self._writes[(partition, key)] = record

    def delete(self, partition: int, key: bytes) -> None:
        self._writes[(partition, key)] = None

    def __len__(self) -> int:
        return len(self._writes)

    def prepare(self) -> list[tuple[int, bytes, bytes | None]]:
        """(partition, key, encoded value) of the last write per key, encoded now: called at
        commit, inside the Kafka transaction, before it commits."""
        encode = self._encode
        self._encoded = []
        for (partition, key), record in self._writes.items():
            if record is None:
                value: bytes | None = None
            elif encode is not None:
                value = encode(record)
            else:
                value = record  # type: ignore[assignment]  # without an encoder, T is bytes
            self._encoded.append((partition, key, value, record))
        return [(partition, key, value) for partition, key, value, _ in self._encoded]

    def flush(self) -> None:
        """The Kafka transaction committed: apply the prepared writes to the store."""
        if self._store is not None:
            for partition, key, value, record in self._encoded:
                self._store.put(partition, key, value, record)
        self.discard()

    def discard(self) -> None:
        """The batch is aborted or read again: forget every write."""
        self._writes.clear()
        self._encoded = []


__all__ = ["StateBackend", "StateTransaction"]
