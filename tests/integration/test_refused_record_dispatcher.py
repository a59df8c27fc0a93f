"""The dispatcher on the real broker and the simulator over HTTP when the results topic refuses
a result (over its `max.message.bytes`): the result goes to the dead-letter topic with reason
RECORD_TOO_LARGE, and the dispatcher goes on committing the results after it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from icareus_bridge.config import Settings
from tests.integration.dispatcher_support import (
    CODEC,
    Rig,
    TopicReader,
    box,
    event,
    header,
    results_of,
    running_rig,
    subscription,
    tv,
)
from tests.integration.test_refused_record import small_topic  # noqa: F401  (fixture)

pytestmark = pytest.mark.kafka

LIMIT = 8000  # the results topic's max.message.bytes


@pytest.fixture
def rig(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    small_topic: Callable[..., str],  # noqa: F811
) -> Iterator[Rig]:
    unique = uuid.uuid4().hex[:8]
    base = Settings(
        kafka={"bootstrap_servers": kafka_bootstrap, "partitions": 1},
        topics={
            "input": make_topic("crm"),
            "requests": make_topic("requests"),
            "results": small_topic("results", 1, LIMIT),
            "dlq": make_topic("dlq"),
            "state": make_topic("state", compacted=True),
        },
        icareus={"base_url": "http://127.0.0.1:1/api", "key": "test-key", "organization_id": "1"},
        provider={
            "distributors": [{"code": "VP1"}],
            "service_mapping": {"BASIC-TV": "1001"},
            "physical_goods_mapping": {"STB-4K": "SET_TOP_BOX"},
        },
        dispatcher={
            "group_id": f"dispatcher-{unique}",
            "instance_id": f"test-{unique}",
            "shutdown_grace_seconds": 10,
            "commit_interval_ms": 50,
        },
    )
    with running_rig(base) as r:
        yield r


def test_a_result_over_the_topic_limit_is_dead_lettered_and_later_results_are_committed(
    rig: Rig,
) -> None:
    # A device id (serial number) longer than the results topic takes: its ADD_DEVICE result
    # (which echoes the device id) is refused; the request itself fits the requests topic.
    serial = "SN-" + "9" * (LIMIT * 2)
    big = subscription("sub-big", 1, services=[tv("BASIC-TV", "VP1")], items=(box(serial, "VP1"),))
    first = rig.crm(event("BECOME_SUBSCRIBER", big))
    later = rig.crm(
        event("BECOME_SUBSCRIBER", subscription("sub-b", 1, services=[tv("BASIC-TV", "VP1")]))
    )
    [add_device] = [r for r in first if r.type.value == "ADD_DEVICE"]
    rig.start()
    bootstrap = rig.settings.kafka.bootstrap_servers
    results, dlq = (
        TopicReader(bootstrap, rig.topics.results),
        TopicReader(bootstrap, rig.topics.dlq),
    )
    try:
        got = results_of(results.until(lambda rs: len(rs) >= len(first) + len(later) - 1))
        [dead] = dlq.until(lambda rs: len(rs) >= 1)
        rig.stop()
    finally:
        results.close()
        dlq.close()
    expected = {r.request_id for r in first + later} - {add_device.request_id}
    assert {r.request_id for r in got} == expected
    assert (header(dead, "dlq.stage"), header(dead, "dlq.reason")) == (
        "dispatch",
        "RECORD_TOO_LARGE",
    )
    assert header(dead, "dlq.request.id") == add_device.request_id
    assert header(dead, "dlq.refused.topic") == rig.topics.results
    # The dead letter holds the refused result itself, for a replay once the limit is raised.
    kept = CODEC.decode_result(dead.value())
    assert kept.request_id == add_device.request_id and kept.device_id == serial
    assert rig.users()["N-sub-big-VP1"]["devices"][0]["deviceId"] == serial  # the call was made
