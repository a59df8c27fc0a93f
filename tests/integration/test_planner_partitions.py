"""Two planners in one group: the range assignor gives each the same partition numbers of the
events and results topics (so feedback finds its state), they split the work, and every
request is planned once."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

import pytest

from tests.integration.planner_support import (
    by_subscription,
    decoded_requests,
    expected_requests,
    make_topics,
    planner_thread,
    produce_events,
    read_topic,
    settings_for,
    story,
    unique,
    wait_for,
)

pytestmark = pytest.mark.kafka


def test_two_planners_share_the_partitions_events_and_results_together(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topics = make_topics(make_topic, partitions=4)
    group = unique("planner")
    events = [ev for n in range(40) for ev in story(f"sub-split-{n:02d}")]
    want = expected_requests(events)
    with ExitStack() as stack:
        first = stack.enter_context(
            planner_thread(settings_for(kafka_bootstrap, topics, group=group, instance=unique("a")))
        )
        second = stack.enter_context(
            planner_thread(settings_for(kafka_bootstrap, topics, group=group, instance=unique("b")))
        )

        def split() -> bool:
            a = first.planner.assignment.get(topics.input, set())
            b = second.planner.assignment.get(topics.input, set())
            return bool(a) and bool(b) and a | b == {0, 1, 2, 3} and not a & b

        wait_for(split, 60, "both planners assigned")
        for running in (first, second):
            # Range assignment: partition N of the events and of the results topic together.
            by_topic = running.planner.assignment
            assert by_topic[topics.input] == by_topic[topics.results]
            assert running.planner.store.partitions() == by_topic[topics.input]
        produce_events(kafka_bootstrap, topics.input, events)
        got = decoded_requests(
            read_topic(kafka_bootstrap, topics.requests, expect=len(want), settle=1.0)
        )
        planned = [
            sum(
                s.value
                for m in r.metrics.events.collect()
                for s in m.samples
                if s.name.endswith("_total") and s.labels["outcome"] == "planned"
            )
            for r in (first, second)
        ]
    assert all(n > 0 for n in planned) and sum(planned) == len(events)
    assert by_subscription(got) == by_subscription(want)
