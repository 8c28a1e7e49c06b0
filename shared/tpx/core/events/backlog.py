"""Sample the outbox backlog and relay lag for the metrics, off the request path."""

from __future__ import annotations

import asyncio

import asyncpg

from tpx.core.db.pool import UNAVAILABLE_ERRORS
from tpx.core.metrics import OUTBOX_BACKLOG, RELAY_LAG


async def sample_once(pool: asyncpg.Pool) -> tuple[int, float]:
    # Two partial-index scans (unsequenced, sequenced but unpublished) instead of a scan of the whole
    # outbox, which keeps published rows for the retention period.
    row = await pool.fetchrow(
        """SELECT count(*) AS backlog, coalesce(extract(epoch FROM now() - min(time)), 0) AS lag FROM (
               SELECT time FROM outbox WHERE sequence IS NULL
               UNION ALL
               SELECT time FROM outbox WHERE published_at IS NULL AND sequence IS NOT NULL) AS pending""")
    OUTBOX_BACKLOG.set(row["backlog"])
    RELAY_LAG.set(float(row["lag"]))
    return row["backlog"], float(row["lag"])


async def sample_forever(pool: asyncpg.Pool, interval: float = 5.0) -> None:
    while True:
        try:
            await sample_once(pool)
        except UNAVAILABLE_ERRORS:
            pass
        await asyncio.sleep(interval)
