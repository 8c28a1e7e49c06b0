"""Group read: lookups that arrive while others are in flight share one statement and one round trip.

Introspection is a registry asking "is this token active?" many times a second:
per lookup, the pool acquire and release, the driver's call and the server's
statement start cost more than the index probe itself. So lookups are queued
here and read by at most `max_in_flight` readers at a time, each taking
everything queued (up to `max_group`) into one `= ANY($1)` statement. As with
group commit there is no timer: a lone lookup is read at once.

Freshness is what it was with one statement per lookup: a lookup joins only a
read that starts after it was queued, and that statement's snapshot is taken
when it starts, so it sees every commit that preceded the request (a token
revoked before the call was made reads as revoked, on every replica).
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Hashable, Sequence, TypeVar

import asyncpg

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")

MAX_GROUP = 128
MAX_IN_FLIGHT = 2


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


class GroupRead(Generic[Key, Value]):
    """`read(key)` answers what `read_many(conn, keys)` maps the key to (None if it leaves the key out)."""

    def __init__(self, pool: asyncpg.Pool,
                 read_many: Callable[[asyncpg.Connection, Sequence[Key]], Awaitable[dict[Key, Value]]], *,
                 max_group: int = MAX_GROUP, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        if max_group < 1 or max_in_flight < 1:
            raise ValueError("max_group and max_in_flight must be at least 1")
        self._pool = pool
        self._read_many = read_many
        self._max_group = max_group
        self._max_in_flight = max_in_flight
        self._queue: list[tuple[Key, asyncio.Future[Value | None]]] = []
        self._readers: set[asyncio.Task[None]] = set()

    async def read(self, key: Key) -> Value | None:
        future: asyncio.Future[Value | None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)  # a waiter that was cancelled never reads the outcome
        self._queue.append((key, future))
        if len(self._readers) < self._max_in_flight:
            self._start_reader()
        return await future

    def _start_reader(self) -> None:
        group, self._queue = self._queue[:self._max_group], self._queue[self._max_group:]
        task = asyncio.create_task(self._read_group(group), name="group-read")
        self._readers.add(task)
        task.add_done_callback(self._reader_done)

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        self._readers.discard(task)
        if self._queue and len(self._readers) < self._max_in_flight:
            self._start_reader()

    async def _read_group(self, group: list[tuple[Key, asyncio.Future[Value | None]]]) -> None:
        try:
            async with self._pool.acquire() as conn:
                found = await self._read_many(conn, [key for key, _ in group])
        except BaseException as exc:  # noqa: BLE001 - every waiter gets the outcome, whatever it is
            for _key, future in group:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for key, future in group:
            if not future.done():
                future.set_result(found.get(key))
