"""The dispatcher commits a partition only up to its first unfinished request."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from icareus_bridge.pipeline.offsets import (
    OffsetTracker,
    PartitionOffsets,
    decode_done_offsets,
    encode_done_offsets,
)


def test_nothing_to_commit_before_any_request_is_read() -> None:
    assert PartitionOffsets().committable() is None


def test_a_slow_request_holds_the_commit_point_while_later_ones_finish() -> None:
    offsets = PartitionOffsets()
    for o in (10, 11, 12):
        offsets.register(o)
    offsets.mark_done(11)
    offsets.mark_done(12)
    assert offsets.committable() == 10
    offsets.mark_done(10)
    assert offsets.committable() == 13
    assert offsets.unfinished() == 0


def test_gaps_left_by_transaction_markers_do_not_block_the_commit() -> None:
    offsets = PartitionOffsets()
    offsets.register(4)
    offsets.register(7)
    offsets.mark_done(4)
    assert offsets.committable() == 7
    offsets.mark_done(7)
    assert offsets.committable() == 8


def test_finished_offsets_above_the_commit_point_travel_in_the_metadata() -> None:
    offsets = PartitionOffsets()
    for o in range(100, 110):
        offsets.register(o)
    for o in (103, 105, 109):
        offsets.mark_done(o)
    assert offsets.committable() == 100
    assert decode_done_offsets(100, offsets.metadata()) == {103, 105, 109}


def test_a_restarted_dispatcher_skips_what_the_metadata_says_is_finished() -> None:
    restored = PartitionOffsets(already_done=frozenset({101, 102}))
    assert restored.register(100) is True
    assert restored.register(101) is False
    assert restored.register(102) is False
    assert restored.committable() == 100
    restored.mark_done(100)
    assert restored.committable() == 103


def test_an_offset_delivered_twice_runs_once() -> None:
    offsets = PartitionOffsets()
    assert offsets.register(3) is True
    assert offsets.register(3) is False
    assert offsets.register(2) is False
    offsets.mark_done(3)
    assert offsets.committable() == 4


def test_foreign_or_broken_metadata_means_nothing_is_skipped() -> None:
    assert decode_done_offsets(5, "") == frozenset()
    assert decode_done_offsets(5, "written by another tool") == frozenset()
    assert decode_done_offsets(5, "done1:%%%") == frozenset()


def test_metadata_too_large_for_the_broker_is_left_out() -> None:
    import random

    spread = set(random.Random(7).sample(range(400_000), 50_000))
    assert encode_done_offsets(0, spread) == ""


def test_tracker_forgets_revoked_partitions_and_ignores_their_late_finishes() -> None:
    tracker = OffsetTracker()
    tracker.assign(0)
    tracker.assign(1)
    tracker.register(0, 5)
    tracker.register(1, 9)
    tracker.revoke(1)
    tracker.mark_done(1, 9)
    tracker.mark_done(0, 5)
    assert tracker.commit_points() == {0: (6, "")}


@given(
    st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=60),
    st.randoms(use_true_random=False),
)
def test_commit_point_is_always_the_first_unfinished_offset(steps: list[int], rnd: object) -> None:
    import random

    assert isinstance(rnd, random.Random)
    offsets_list: list[int] = []
    o = 0
    for step in steps:
        o += step
        offsets_list.append(o)
    tracker = PartitionOffsets()
    for o in offsets_list:
        tracker.register(o)
    order = offsets_list[:]
    rnd.shuffle(order)
    finished: set[int] = set()
    for o in order:
        tracker.mark_done(o)
        finished.add(o)
        unfinished = [x for x in offsets_list if x not in finished]
        expected = unfinished[0] if unfinished else offsets_list[-1] + 1
        assert tracker.committable() == expected
        # What the metadata records plus the commit point covers exactly the finished ones.
        skip = decode_done_offsets(expected, tracker.metadata())
        assert skip == {x for x in finished if x >= expected}
