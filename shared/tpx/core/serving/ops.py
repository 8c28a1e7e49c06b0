"""The operations endpoints of the workers: /healthz, /readyz and /metrics on TPX_OPS_PORT.

The exchange serves the same paths on its own port; the workers have no other
HTTP surface, so they get this small app. Readiness is the worker's own
judgement (database reachable, broker consumer attached, ...), passed in.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tpx.core.config import Settings
from tpx.core.metrics import exposition

Readiness = Callable[[], Awaitable[tuple[bool, dict]]]


def ops_app(readiness: Readiness, draining: Callable[[], bool]) -> Starlette:
    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> JSONResponse:
        ready, details = await readiness()
        reasons = list(details.get("reasons", []))
        if draining():
            ready = False
            reasons.append("the service is shutting down")
        return JSONResponse({**details, "status": "ready" if ready else "not ready", "reasons": reasons},
                            status_code=200 if ready else 503)

    async def metrics(_request: Request) -> Response:
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)])


def bind_ops_socket(settings: Settings):
    """Bind the ops port before the worker starts, so a taken port stops the worker with a clear message."""
    from tpx.core.serving.server import bind

    try:
        return bind(settings.host, settings.ops_port)
    except OSError as exc:
        raise RuntimeError(f"cannot listen for the ops endpoints on {settings.host}:{settings.ops_port} "
                           f"({exc.strerror}); give each worker on this host its own TPX_OPS_PORT") from None


async def serve_ops(settings: Settings, stop: asyncio.Event, readiness: Readiness, draining: Callable[[], bool],
                    sock) -> None:
    """Serve the ops endpoints on the bound `sock` until `stop`."""
    from tpx.core.serving.server import ExchangeServer, uvicorn_config

    server = ExchangeServer(uvicorn_config(ops_app(readiness, draining), settings, port=settings.ops_port,
                                           lifespan="off", limit_concurrency=64))
    try:
        await server.serve_until(stop, sockets=[sock])
    finally:
        sock.close()
