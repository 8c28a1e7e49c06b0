"""The jwks-refresher process: the refresher loop plus the outbox relay for its events.

The refresher writes `keys_rotated` events to the outbox; the relay running in
the same process publishes them (woken at once through the shared
`OutboxSignal`; if another process holds the relay leadership, that one does).
On stop, in-flight fetches finish and are stored, the relay finishes its batch
in flight (anything still unpublished waits in the outbox for the next relay
leader), then the pool closes.
"""

from __future__ import annotations

import asyncio

from tpx.core import build, metrics
from tpx.core.config import Settings
from tpx.core.db.migrate import check_schema
from tpx.core.db.pool import create_pool, ping
from tpx.core.logging import get_logger
from tpx.core.relay.relay import OutboxRelay
from tpx.core.relay.signal import OutboxSignal
from tpx.core.serving.ops import bind_ops_socket, serve_ops

from tpx.jwks_refresher.refresher import JwksRefresher

log = get_logger("tpx.jwks_refresher.service")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    ops_socket = bind_ops_socket(settings)
    pool = await create_pool(settings)
    try:
        async with pool.acquire() as conn:
            version = await check_schema(conn)
        signal = OutboxSignal()
        relay = OutboxRelay(settings, pool, signal)
        relay_task = asyncio.create_task(relay.run(), name="jwks-refresher-relay")
        refresher = JwksRefresher(settings, pool, signal)
        log.info("jwks_refresher.started", schema_version=version,
                 refresh_seconds=settings.jwks_refresh_seconds,
                 cooldown_seconds=settings.jwks_refresh_cooldown_seconds)
        metrics.POOLS.add("jwks-refresher", pool)
        metrics.BUILD.labels("jwks-refresher", build.version()).set(1)

        async def readiness() -> tuple[bool, dict]:
            reasons = []
            if not await ping(pool):
                reasons.append("the database is unreachable")
            if not refresher.listener.healthy.is_set():
                reasons.append("not listening for refresh requests yet")
            return not reasons, {"reasons": reasons, "fetches": refresher.fetches_total,
                                 "failures": refresher.failures_total}

        ops = asyncio.create_task(serve_ops(settings, stop, readiness, stop.is_set, ops_socket), name="jwks-refresher-ops")
        try:
            await refresher.run(stop)
        finally:
            await asyncio.gather(ops, return_exceptions=True)
            metrics.POOLS.remove("jwks-refresher", pool)
            await relay.stop()
            await asyncio.gather(relay_task, return_exceptions=True)
            log.info("jwks_refresher.drained", fetches=refresher.fetches_total, failures=refresher.failures_total,
                     rotations=refresher.rotations_total)
    finally:
        await pool.close()
