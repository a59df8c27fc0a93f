"""The dispatcher's work queue: requests of one subscription run strictly one after another,
requests of different subscriptions run concurrently up to `max_in_flight`; a slow subscription
holds back only its own queue. The consumer loop reads `saturated()` / `has_room()` to pause and
resume partitions (back-pressure)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class KeyedScheduler(Generic[T]):
    """Per-key FIFO queues served by at most one task per key and `max_in_flight` tasks in all.

    `handler` must deal with its own failures; an exception escaping it is handed to `on_error`
    (the key's next item still runs, so one bug cannot wedge a subscription silently).
    """

    def __init__(
        self,
        handler: Callable[[T], Awaitable[None]],
        *,
        max_in_flight: int,
        max_queued: int,
        on_error: Callable[[T, BaseException], None] | None = None,
    ) -> None:
        if max_in_flight < 1 or max_queued < 1:
            raise ValueError("max_in_flight and max_queued must be at least 1")
        self._handler = handler
        self._max_in_flight = max_in_flight
        self._max_queued = max_queued
        self._on_error = on_error
        self._queues: dict[str, deque[T]] = {}
        self._ready: deque[str] = deque()  # keys with work and nothing running
        self._running: dict[str, tuple[T, asyncio.Task[None]]] = {}
        self._queued = 0
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()

    # --- feeding -----------------------------------------------------------------------------

    def submit(self, key: str, item: T) -> None:
        """Queue `item` behind everything already queued for `key`."""
        if self._closed:
            raise RuntimeError("scheduler is closed: no new work is accepted")
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            if key not in self._running:
                self._ready.append(key)
        queue.append(item)
        self._queued += 1
        self._idle.clear()
        self._start_ready()

    # --- back-pressure -----------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def load(self) -> int:
        return self._queued + len(self._running)

    def saturated(self) -> bool:
        """True when the consumer should pause its partitions."""
        return self.load >= self._max_queued

    def has_room(self) -> bool:
        """True when paused partitions may resume (hysteresis: half the bound)."""
        return self.load <= self._max_queued // 2

    # --- shrinking and stopping --------------------------------------------------------------

    def discard_queued(self, predicate: Callable[[T], bool]) -> list[T]:
        """Drop queued (not running) items matching `predicate`, e.g. of a revoked partition."""
        dropped: list[T] = []
        for key in list(self._queues):
            queue = self._queues[key]
            kept = deque(item for item in queue if not predicate(item))
            dropped.extend(item for item in queue if predicate(item))
            if kept:
                self._queues[key] = kept
            else:
                del self._queues[key]
        self._queued -= len(dropped)
        self._ready = deque(k for k in self._ready if k in self._queues)
        self._check_idle()
        return dropped

    def running(self, predicate: Callable[[T], bool] | None = None) -> list[T]:
        return [item for item, _ in self._running.values() if predicate is None or predicate(item)]

    async def wait_running(self, predicate: Callable[[T], bool] | None = None) -> None:
        """Wait until the items running now that match `predicate` have finished."""
        tasks = [
            task for item, task in self._running.values() if predicate is None or predicate(item)
        ]
        if tasks:
            await asyncio.wait(tasks)

    async def join(self) -> None:
        """Wait until nothing is queued or running."""
        await self._idle.wait()

    def close(self) -> None:
        """Accept no more work and start nothing new; running items go on to their end."""
        self._closed = True
        self._queues.clear()
        self._ready.clear()
        self._queued = 0
        self._check_idle()

    def cancel_running(self) -> None:
        """Interrupt running items (only when the shutdown grace has run out)."""
        for _, task in self._running.values():
            task.cancel()

    # --- internals ---------------------------------------------------------------------------

    def _start_ready(self) -> None:
        while self._ready and len(self._running) < self._max_in_flight and not self._closed:
            key = self._ready.popleft()
            queue = self._queues[key]
            item = queue.popleft()
            self._queued -= 1
            if not queue:
                del self._queues[key]
            task = asyncio.create_task(self._run(key, item), name=f"dispatch:{key}")
            self._running[key] = (item, task)

    async def _run(self, key: str, item: T) -> None:
        try:
            await self._handler(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._on_error is None:
                raise
            self._on_error(item, exc)
        finally:
            del self._running[key]
            if key in self._queues and not self._closed:
                self._ready.append(key)
            self._start_ready()
            self._check_idle()

    def _check_idle(self) -> None:
        if not self._running and not self._queued:
            self._idle.set()


__all__ = ["KeyedScheduler"]
