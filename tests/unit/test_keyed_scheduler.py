"""Requests of one subscription run in order, one at a time; subscriptions run side by side."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from icareus_bridge.pipeline.scheduler import KeyedScheduler

Item = tuple[str, int]  # (subscription id, position in its stream)


class Recorder:
    """A handler that records start/finish order and can hold chosen items until released."""

    def __init__(self) -> None:
        self.started: list[Item] = []
        self.finished: list[Item] = []
        self.running_per_key: dict[str, int] = defaultdict(int)
        self.max_running_per_key = 0
        self.max_running = 0
        self.gates: dict[Item, asyncio.Event] = {}

    def hold(self, item: Item) -> asyncio.Event:
        self.gates[item] = asyncio.Event()
        return self.gates[item]

    async def __call__(self, item: Item) -> None:
        key = item[0]
        self.started.append(item)
        self.running_per_key[key] += 1
        self.max_running_per_key = max(self.max_running_per_key, self.running_per_key[key])
        self.max_running = max(self.max_running, sum(self.running_per_key.values()))
        gate = self.gates.get(item)
        if gate is not None:
            await gate.wait()
        await asyncio.sleep(0)
        self.running_per_key[key] -= 1
        self.finished.append(item)


def test_one_subscriptions_requests_finish_in_the_order_they_were_read() -> None:
    async def scenario() -> Recorder:
        rec = Recorder()
        sched: KeyedScheduler[Item] = KeyedScheduler(rec, max_in_flight=8, max_queued=100)
        for i in range(20):
            sched.submit(f"sub-{i % 3}", (f"sub-{i % 3}", i))
        await sched.join()
        return rec

    rec = asyncio.run(scenario())
    for key in ("sub-0", "sub-1", "sub-2"):
        mine = [i for k, i in rec.finished if k == key]
        assert mine == sorted(mine)
    assert rec.max_running_per_key == 1
    assert len(rec.finished) == 20


def test_a_stuck_subscription_does_not_hold_back_the_others() -> None:
    async def scenario() -> tuple[Recorder, list[Item]]:
        rec = Recorder()
        gate = rec.hold(("slow", 0))
        sched: KeyedScheduler[Item] = KeyedScheduler(rec, max_in_flight=2, max_queued=100)
        sched.submit("slow", ("slow", 0))
        sched.submit("slow", ("slow", 1))
        for i in range(5):
            sched.submit("fast", ("fast", i))
        while len([f for f in rec.finished if f[0] == "fast"]) < 5:
            await asyncio.sleep(0)
        finished_while_stuck = list(rec.finished)
        gate.set()
        await sched.join()
        return rec, finished_while_stuck

    rec, while_stuck = asyncio.run(scenario())
    assert while_stuck == [("fast", i) for i in range(5)]
    assert rec.finished[-2:] == [("slow", 0), ("slow", 1)]


def test_no_more_than_max_in_flight_run_at_once() -> None:
    async def scenario() -> Recorder:
        rec = Recorder()
        sched: KeyedScheduler[Item] = KeyedScheduler(rec, max_in_flight=3, max_queued=100)
        for i in range(30):
            sched.submit(f"sub-{i}", (f"sub-{i}", 0))
        assert sched.in_flight == 3
        await sched.join()
        return rec

    rec = asyncio.run(scenario())
    assert rec.max_running == 3
    assert len(rec.finished) == 30


def test_full_queues_ask_the_consumer_to_pause_and_half_empty_ones_to_resume() -> None:
    async def scenario() -> None:
        rec = Recorder()
        gate = rec.hold(("sub-a", 0))
        sched: KeyedScheduler[Item] = KeyedScheduler(rec, max_in_flight=1, max_queued=4)
        sched.submit("sub-a", ("sub-a", 0))
        for i in range(1, 4):
            sched.submit("sub-a", ("sub-a", i))
        assert sched.load == 4
        assert sched.saturated()
        assert not sched.has_room()
        gate.set()
        while sched.load > 2:
            await asyncio.sleep(0)
        assert not sched.saturated()
        assert sched.has_room()
        await sched.join()

    asyncio.run(scenario())


def test_a_revoked_partitions_queued_requests_are_dropped_not_run() -> None:
    async def scenario() -> tuple[Recorder, list[Item]]:
        rec = Recorder()
        gate = rec.hold(("sub-a", 0))
        sched: KeyedScheduler[Item] = KeyedScheduler(rec, max_in_flight=1, max_queued=100)
        sched.submit("sub-a", ("sub-a", 0))
        sched.submit("sub-a", ("sub-a", 1))
        sched.submit("sub-b", ("sub-b", 0))
        dropped = sched.discard_queued(lambda item: item[0] == "sub-a")
        gate.set()
        await sched.join()
        return rec, dropped

    rec, dropped = asyncio.run(scenario())
    assert dropped == [("sub-a", 1)]
    assert rec.finished == [("sub-a", 0), ("sub-b", 0)]


def test_closing_lets_running_requests_finish_and_starts_nothing_new() -> None:
    async def scenario() -> Recorder:
        rec = Recorder()
        gate = rec.hold(("sub-a", 0))
        sched: KeyedScheduler[Item] = KeyedScheduler(rec, max_in_flight=1, max_queued=100)
        sched.submit("sub-a", ("sub-a", 0))
        sched.submit("sub-b", ("sub-b", 0))
        sched.close()
        gate.set()
        await sched.wait_running()
        await sched.join()
        with pytest.raises(RuntimeError):
            sched.submit("sub-c", ("sub-c", 0))
        return rec

    rec = asyncio.run(scenario())
    assert rec.finished == [("sub-a", 0)]


def test_a_failing_handler_is_reported_and_the_subscription_goes_on() -> None:
    errors: list[tuple[Item, BaseException]] = []
    done: list[Item] = []

    async def handler(item: Item) -> None:
        if item[1] == 0:
            raise RuntimeError("boom")
        done.append(item)

    async def scenario() -> None:
        sched: KeyedScheduler[Item] = KeyedScheduler(
            handler, max_in_flight=2, max_queued=10, on_error=lambda i, e: errors.append((i, e))
        )
        sched.submit("sub-a", ("sub-a", 0))
        sched.submit("sub-a", ("sub-a", 1))
        await sched.join()

    asyncio.run(scenario())
    assert [i for i, _ in errors] == [("sub-a", 0)]
    assert done == [("sub-a", 1)]
