"""A subscription parked behind a dead-lettered request stays parked across restarts."""

from __future__ import annotations

from icareus_bridge.pipeline.parking import (
    ParkedKey,
    ParkedKeys,
    decode_marker,
    encode_marker,
    is_parked_marker,
    marker_key,
)


def _parked(sub: str, behind: str, partition: int = 0) -> ParkedKey:
    return ParkedKey(subscription_id=sub, parked_behind=behind, partition=partition, parked_at=1)


def test_the_marker_round_trips_through_the_state_topic_record() -> None:
    parked = _parked("sub-1", "req-9", partition=3)
    key = marker_key("sub-1")
    assert key == b"parked:sub-1"
    assert decode_marker(key, encode_marker(parked)) == ("sub-1", parked)
    assert decode_marker(key, None) == ("sub-1", None)


def test_the_planners_own_state_records_are_not_markers() -> None:
    assert is_parked_marker(b"parked:sub-1")
    assert not is_parked_marker(b"sub-1")
    assert not is_parked_marker(None)


def test_restoring_replays_markers_in_log_order_and_tombstones_unpark() -> None:
    keys = ParkedKeys()
    keys.restore(
        [
            (b"sub-1", b"{planner state, ignored}"),
            (marker_key("sub-1"), encode_marker(_parked("sub-1", "req-1"))),
            (marker_key("sub-2"), encode_marker(_parked("sub-2", "req-2"))),
            (marker_key("sub-1"), None),
            (marker_key("sub-2"), encode_marker(_parked("sub-2", "req-3"))),
        ]
    )
    assert "sub-1" not in keys
    parked = keys.get("sub-2")
    assert parked is not None and parked.parked_behind == "req-3"
    assert len(keys) == 1


def test_a_revoked_partition_takes_its_parked_keys_along() -> None:
    keys = ParkedKeys()
    keys.park(_parked("sub-1", "req-1", partition=0))
    keys.park(_parked("sub-2", "req-2", partition=1))
    keys.drop_partition(1)
    assert "sub-1" in keys
    assert "sub-2" not in keys
