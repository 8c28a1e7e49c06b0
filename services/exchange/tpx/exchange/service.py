"""`tpx exchange`: the HTTP service, drained on stop."""

from __future__ import annotations

import asyncio

from tpx.core.config import Settings
from tpx.core.db.migrate import check_schema
from tpx.core.db.pool import connect
from tpx.core.logging import get_logger
from tpx.core.metrics import DRAINING
from tpx.core.serving.server import Server, bind, uvicorn_config

from tpx.exchange.app import create_app

log = get_logger("tpx.exchange")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    conn = await connect(settings)  # refuse the wrong schema with one clear sentence, before serving
    try:
        await check_schema(conn)
    finally:
        await conn.close()
    sock = bind(settings.host, settings.port)
    app = create_app(settings)
    server = Server(uvicorn_config(app, settings))

    def draining() -> None:
        context = getattr(app.state, "tpx", None)
        if context is not None:
            context.draining = True
            DRAINING.set(1)
        log.info("exchange.draining", seconds=settings.drain_seconds)

    log.info("exchange.listening", host=settings.host, port=settings.port)
    try:
        await server.serve_until(stop, on_drain=draining, drain_seconds=settings.drain_seconds, sockets=[sock])
    finally:
        sock.close()
