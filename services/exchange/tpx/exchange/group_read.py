"""Group read: lookups that arrive while others are in flight share one statement and one round trip.

Introspection is a registry asking "is this token active?" many times a second:
per lookup, the pool acquire and release, the driver's call and the server's
statement start cost more than the index probe itself. So lookups are grouped
(tpx.exchange.grouping: at most `max_in_flight` reads at a time, each taking
everything queued, up to `max_group`, no timer, on a pooled connection kept while
reads follow each other) into one `= ANY($1)` statement.

Freshness is what it was with one statement per lookup: a lookup joins only a
read that starts after it was queued, and that statement's snapshot is taken
when it starts, so it sees every commit that preceded the request (a token
revoked before the call was made reads as revoked, on every replica).
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Hashable, Sequence, TypeVar

import asyncpg

from tpx.exchange.grouping import Groups

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")

MAX_GROUP = 128
MAX_IN_FLIGHT = 2


class GroupRead(Generic[Key, Value]):
    """`read(key)` answers what `read_many(conn, keys)` maps the key to (None if it leaves the key out)."""

    def __init__(self, pool: asyncpg.Pool,
                 read_many: Callable[[asyncpg.Connection, Sequence[Key]], Awaitable[dict[Key, Value]]], *,
                 max_group: int = MAX_GROUP, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self._read_many = read_many
        self._groups: Groups[Key, Value | None, asyncpg.Connection] = Groups(
            self._read_group, session=pool.acquire, max_group=max_group, max_in_flight=max_in_flight,
            name="group-read")

    async def read(self, key: Key) -> Value | None:
        return await self._groups.enqueue(key)

    async def _read_group(self, group: list[tuple[Key, asyncio.Future[Value | None]]],
                          conn: asyncpg.Connection) -> None:
        found = await self._read_many(conn, [key for key, _ in group])
        for key, future in group:
            if not future.done():
                future.set_result(found.get(key))
