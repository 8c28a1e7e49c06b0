"""`tpx exchange`: the HTTP service, drained on stop."""

from __future__ import annotations

import asyncio

from tpx.config import Settings
from tpx.logging import get_logger

from tpx.exchange.app import create_app
from tpx.exchange.server import ExchangeServer, uvicorn_config

log = get_logger("tpx.exchange")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    server = ExchangeServer(uvicorn_config(create_app(settings), settings))
    log.info("exchange.listening", host=settings.host, port=settings.port)
    await server.serve_until(stop)
