"""The planner's state store: per partition, encoded records decoded on access, tombstones
forget, the dispatcher's parked-key markers are not subscriptions, revocation drops; and its
state transaction: reads see their own writes, values are encoded at commit, the store takes
them only when flushed (after the Kafka commit), a discard forgets them."""

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


def test_a_state_transaction_reads_its_own_writes_and_reaches_the_store_only_when_flushed() -> None:
    store = StateStore(_decode)
    store.load(0, b"a", _enc("a", 1))
    encoded: list[str] = []

    def encode(record: SubscriptionRecord | None) -> bytes | None:
        assert record is not None
        encoded.append(record.subscription_id)
        return codec.encode_state(record)

    txn = store.transaction("state", encode)
    a = txn.get(0, b"a")
    assert a is not None and a.last_version == 1  # read through to the store
    txn.set(0, b"a", SubscriptionRecord(subscription_id="a", last_version=2))
    txn.set(0, b"a", SubscriptionRecord(subscription_id="a", last_version=3))
    txn.set(1, b"b", SubscriptionRecord(subscription_id="b", last_version=1))
    mine = txn.get(0, b"a")
    assert mine is not None and mine.last_version == 3  # its own write first
    assert encoded == []  # nothing encoded before the commit
    prepared = txn.prepare()
    assert [(p, k) for p, k, _ in prepared] == [(0, b"a"), (1, b"b")]
    assert encoded == ["a", "b"]  # the last write per key, once
    stored = store.get(0, b"a")
    assert stored is not None and stored.last_version == 1  # not before the flush
    txn.flush()
    stored = store.get(0, b"a")
    assert stored is not None and stored.last_version == 3
    assert store.get(1, b"b") is not None and len(txn) == 0


def test_a_discarded_state_transaction_leaves_the_store_as_it_was() -> None:
    store = StateStore(_decode)
    store.load(0, b"a", _enc("a", 1))
    txn = store.transaction("state", codec.encode_state)
    txn.set(0, b"a", SubscriptionRecord(subscription_id="a", last_version=2))
    txn.delete(0, b"c")
    assert txn.get(0, b"c") is None
    txn.prepare()
    txn.discard()
    txn.flush()  # nothing left to apply
    a = store.get(0, b"a")
    assert a is not None and a.last_version == 1 and store.size_of(0) == 1
    again = txn.get(0, b"a")
    assert again is not None and again.last_version == 1  # reads go to the store again


def test_a_tombstone_in_a_transaction_hides_the_stored_value_until_flushed() -> None:
    store = StateStore(_decode)
    store.load(0, b"a", _enc("a", 1))
    txn = store.transaction("state", codec.encode_state)
    txn.delete(0, b"a")
    assert txn.get(0, b"a") is None and store.get(0, b"a") is not None
    assert txn.prepare() == [(0, b"a", None)]
    txn.flush()
    assert store.get(0, b"a") is None
