"""Sample the outbox backlog and relay lag for the metrics, off the request path."""

from __future__ import annotations

import asyncio

import asyncpg

from tpx.core.db import outbox
from tpx.core.db.pool import UNAVAILABLE_ERRORS
from tpx.core.metrics import OUTBOX_BACKLOG, RELAY_LAG


async def sample_once(pool: asyncpg.Pool) -> tuple[int, float]:
    backlog, lag = await outbox.backlog(pool)
    OUTBOX_BACKLOG.set(backlog)
    RELAY_LAG.set(lag)
    return backlog, lag


async def sample_forever(pool: asyncpg.Pool, interval: float = 5.0) -> None:
    while True:
        try:
            await sample_once(pool)
        except UNAVAILABLE_ERRORS:
            pass
        await asyncio.sleep(interval)
