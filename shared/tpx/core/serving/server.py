"""Serving an ASGI app with uvicorn, with limits chosen on purpose: the exchange's API and the
workers' ops endpoints alike.

`Server` leaves signal handling to its owner: in `tpx dev` one stop event
drains all three services together, and uvicorn must not re-raise a captured
SIGTERM before the workers have finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from typing import Any, Iterator

import uvicorn

from tpx.core.config import Settings


# Young-generation collections run every GEN0_THRESHOLD net allocations of container objects.
# An exchange allocates a few hundred per request, so Python's default of 700 collects every
# couple of requests; 20,000 collects a few times a second and still bounds the young heap.
GEN0_THRESHOLD = 20_000


def freeze_startup_heap() -> None:
    """Move everything start-up allocated (modules, caches, the app) out of the collector's reach and
    collect the young generation less often: full collections then walk only what requests made
    (gc was 3-7% of an exchange's CPU under load)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, middle, old)


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        log_config=None,                # logging is tpx's (structlog, JSON in production), not uvicorn's
        proxy_headers=False,            # X-Forwarded-* is not trusted unless the operator says so
        timeout_keep_alive=5,           # idle keep-alive connections are closed after 5 s
        timeout_graceful_shutdown=20,   # in-flight requests get 20 s to finish on SIGTERM
        limit_concurrency=2048,         # beyond this, uvicorn answers 503 instead of queueing without bound
        h11_max_incomplete_event_size=16 * 1024,  # request line + headers
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)


def bind(host: str, port: int, *, shared: bool = False) -> socket.socket:
    """Bind the listening socket up front, so a taken port fails the start with an OSError that says so.
    `shared`: several processes of one service bind the same port (SO_REUSEPORT; the kernel spreads
    connections), as the exchange's processes do for their ops port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


class Server(uvicorn.Server):
    """A uvicorn server that is stopped by its owner and tells when it is listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    async def startup(self, sockets=None) -> None:  # type: ignore[override]
        await super().startup(sockets=sockets)
        self.listening.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn releases
        return None

    async def serve_until(self, stop: asyncio.Event, *, on_drain=None, drain_seconds: float = 0.0,
                          sockets=None) -> None:
        """Serve until `stop`; then report not-ready for `drain_seconds` before closing the listener.

        The pause lets load balancers see /readyz fail and stop sending new
        requests; uvicorn then finishes the requests in flight.
        """
        task = asyncio.create_task(self.serve(sockets=sockets))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if task in done and isinstance(task.exception(), SystemExit):
            stopper.cancel()
            raise RuntimeError("the HTTP server failed to start; the log above says why")
        if stopper in done and not task.done():
            if on_drain is not None:
                on_drain()
            if drain_seconds > 0:
                await asyncio.wait({task}, timeout=drain_seconds)
        self.should_exit = True
        stopper.cancel()
        await task
