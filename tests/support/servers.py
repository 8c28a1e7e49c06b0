"""Run an ASGI app on a real loopback socket inside the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from contextlib import asynccontextmanager
from typing import AsyncIterator

import uvicorn

from tpx.core.config import Settings
from tpx.core.serving.server import uvicorn_config


class _SignallingServer(uvicorn.Server):
    """A uvicorn server that tells the test when it is listening (no polling, no sleeps)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets=None) -> None:  # type: ignore[override]
        await super().startup(sockets=sockets)
        self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self):  # the test runner owns signals
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn releases
        return None


@asynccontextmanager
async def serve(app, *, port: int = 0, **config) -> AsyncIterator[str]:
    """Yield the base URL of `app` served by uvicorn on 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    bound_port = sock.getsockname()[1]
    # The product's uvicorn settings (no proxy-header rewriting, header and concurrency limits), so what a
    # test sees of a request is what production sees.
    server = _SignallingServer(uvicorn_config(app, Settings(), **{"lifespan": "on", **config}))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    ready = asyncio.create_task(server.ready.wait())
    done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED, timeout=30)
    if ready not in done:
        ready.cancel()
        if task in done:
            task.result()  # re-raise the startup failure
        raise RuntimeError("the test server did not start within 30 s")
    try:
        yield f"http://127.0.0.1:{bound_port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)
        sock.close()
