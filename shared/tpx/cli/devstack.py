"""`tpx dev`: the exchange, the jwks-refresher and the revoker in one process, for a laptop.

Each keeps its own pool and loops exactly as in production; only the process
is shared. One stop event drains all three.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from tpx.core.config import Settings
from tpx.core.logging import get_logger

log = get_logger("tpx.dev")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    from tpx.exchange.service import serve as serve_exchange
    from tpx.jwks_refresher.service import serve as serve_refresher
    from tpx.revoker.service import serve as serve_revoker

    # One process, one metrics registry: the exchange's /metrics shows all three. The workers'
    # own ops endpoints listen on free ports so they do not collide with each other.
    workers = replace(settings, ops_port=0)
    tasks = [
        asyncio.create_task(serve_exchange(settings, stop), name="exchange"),
        asyncio.create_task(serve_refresher(workers, stop), name="jwks-refresher"),
        asyncio.create_task(serve_revoker(workers, stop), name="revoker"),
    ]
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    failed = [t for t in done if not t.cancelled() and t.exception() is not None]
    if failed:
        log.error("dev.service_failed", service=failed[0].get_name(), error=str(failed[0].exception()))
        stop.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results):
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
