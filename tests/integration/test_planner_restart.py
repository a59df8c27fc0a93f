"""State survives the planner: a restarted planner restores what the first run knew from the
changelog and plans the next events from it, never from an empty state."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from icareus_bridge.core.model import SubscriptionRecord
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
)

pytestmark = pytest.mark.kafka


def test_a_restarted_planner_plans_from_the_state_of_the_first_run(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topics = make_topics(make_topic)
    settings = settings_for(kafka_bootstrap, topics, group=unique("planner"), instance=unique("i"))
    subs = [f"sub-restart-{n}" for n in range(10)]
    first = [ev for s in subs for ev in story(s)[:3]]
    second = [ev for s in subs for ev in story(s)[3:]]
    known: dict[str, SubscriptionRecord] = {}
    want_first = expected_requests(first, known)
    want_second = expected_requests(second, known)

    with planner_thread(settings):
        produce_events(kafka_bootstrap, topics.input, first)
        read_topic(kafka_bootstrap, topics.requests, expect=len(want_first))

    with planner_thread(settings) as running:
        m = running.metrics
        restored = sum(m.state_restore_records.labels(str(p))._value.get() for p in range(3))
        assert restored >= len(subs)
        assert m.state_subscriptions._value.get() == len(subs)
        produce_events(kafka_bootstrap, topics.input, second)
        got = decoded_requests(
            read_topic(
                kafka_bootstrap,
                topics.requests,
                expect=len(want_first) + len(want_second),
                settle=1.0,
            )
        )
    # The second run planned exactly the differences from the first run's state (no ADD_USER
    # again, no device added twice), in order per subscription.
    assert by_subscription(got) == by_subscription(want_first + want_second)
    second_ids = {e.event_id for e in second}
    assert not any(
        r.type == "ADD_USER" and r.account_key.endswith("VP1")
        for r in got
        if r.event_id in second_ids
    )
