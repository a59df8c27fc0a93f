"""The planner's state store: per partition, encoded records decoded on access, tombstones
forget, the dispatcher's parked-key markers are not subscriptions, revocation drops."""

from __future__ import annotations

from icareus_bridge.codec import Codec
from icareus_bridge.core.model import SubscriptionRecord
from icareus_bridge.pipeline.state_store import StateStore

codec = Codec()


def _decode(raw: bytes) -> SubscriptionRecord:
    record = codec.decode_state(raw)
    assert record is not None
    return record


def _enc(sid: str, version: int) -> bytes:
    value = codec.encode_state(SubscriptionRecord(subscription_id=sid, last_version=version))
    assert value is not None
    return value


def test_the_last_changelog_record_of_a_key_wins_and_a_tombstone_forgets() -> None:
    store = StateStore(_decode, cache_size=2)
    store.load(0, b"a", _enc("a", 1))
    store.load(0, b"a", _enc("a", 2))
    store.load(0, b"b", _enc("b", 1))
    store.load(1, b"c", _enc("c", 1))
    a = store.get(0, b"a")
    assert a is not None and a.last_version == 2
    store.load(0, b"b", None)
    assert store.get(0, b"b") is None
    assert len(store) == 2 and store.size_of(0) == 1
    assert store.get(1, b"a") is None  # another partition's key is not this partition's
    assert store.find_partition(b"c") == 1


def test_parked_key_markers_in_the_state_topic_are_not_subscriptions() -> None:
    store = StateStore(_decode)
    store.load(0, b"parked:a", b'{"subscription_id":"a"}')
    assert len(store) == 0


def test_committed_writes_are_read_back_without_decoding_and_revocation_drops() -> None:
    calls: list[bytes] = []

    def counting(raw: bytes) -> SubscriptionRecord:
        calls.append(raw)
        return _decode(raw)

    store = StateStore(counting)
    record = SubscriptionRecord(subscription_id="a", last_version=5)
    store.put(3, b"a", _enc("a", 5), record)
    assert store.get(3, b"a") is record
    assert calls == []
    assert store.partitions() == {3}
    store.drop(3)
    assert store.get(3, b"a") is None
    assert not store.holds(3)


def test_the_decoded_cache_is_bounded() -> None:
    store = StateStore(_decode, cache_size=3)
    for n in range(10):
        store.load(0, f"k{n}".encode(), _enc(f"k{n}", n))
        store.get(0, f"k{n}".encode())
    assert len(store._cache) == 3
