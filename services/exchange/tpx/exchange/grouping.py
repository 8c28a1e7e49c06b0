"""What group commit and group read share: work that arrives while a group is in flight waits for the next.

Items are queued with a future each; at most `max_in_flight` groups run at a
time, each taking everything queued (up to `max_group`). There is no timer: a
lone item starts a group at once, and groups only form while others are in
flight, so grouping never adds a wait that load did not already cause. An item
only ever joins a group that starts after it was queued.

`run(group)` settles each item's future; whatever it leaves unsettled when it
raises gets the exception. Each group runs in a task of its own: a waiter that is
cancelled cancels its future only, never the group's work.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, TypeVar

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")

Group = list[tuple[Item, "asyncio.Future[Outcome]"]]


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


class Groups(Generic[Item, Outcome]):
    def __init__(self, run: Callable[[Group], Awaitable[None]], *, max_group: int, max_in_flight: int,
                 name: str) -> None:
        if max_group < 1 or max_in_flight < 1:
            raise ValueError("max_group and max_in_flight must be at least 1")
        self._run = run
        self._max_group = max_group
        self._max_in_flight = max_in_flight
        self._name = name
        self._queue: Group = []
        self._running: set[asyncio.Task[None]] = set()

    def enqueue(self, item: Item) -> asyncio.Future[Outcome]:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)  # a waiter that was cancelled never reads the outcome
        self._queue.append((item, future))
        if len(self._running) < self._max_in_flight:
            self._start()
        return future

    def _start(self) -> None:
        group, self._queue = self._queue[:self._max_group], self._queue[self._max_group:]
        task = asyncio.create_task(self._settled(group), name=self._name)
        self._running.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._queue and len(self._running) < self._max_in_flight:
            self._start()

    async def _settled(self, group: Group) -> None:
        try:
            await self._run(group)
        except BaseException as exc:  # noqa: BLE001 - every waiter gets the outcome, whatever it is
            for _item, future in group:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
