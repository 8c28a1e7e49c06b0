"""The operations endpoints: /healthz, /readyz and /metrics on TPX_OPS_PORT.

The workers' only HTTP surface, so a plain ASGI app (no web framework: a worker
loads neither Starlette nor the exchange). The exchange serves the same paths on
its public port, or here with TPX_OPS_SEPARATE=1 (then its public port keeps
only what clients need). Readiness is the service's own judgement (database
reachable, broker consumer attached, issuer keys, ...), passed in.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any, Awaitable, Callable

from tpx.core.config import Settings
from tpx.core.metrics import exposition
from tpx.core.serving.server import Server, bind, uvicorn_config

Readiness = Callable[[], Awaitable[tuple[bool, dict]]]
Reply = tuple[int, bytes, str]


def ops_app(readiness: Readiness, draining: Callable[[], bool]) -> Callable[..., Awaitable[None]]:
    async def healthz() -> Reply:
        return _json(200, {"status": "ok"})

    async def readyz() -> Reply:
        ready, details = await readiness()
        reasons = list(details.get("reasons", []))
        if draining():
            ready = False
            reasons.append("the service is shutting down")
        return _json(200 if ready else 503, {**details, "status": "ready" if ready else "not ready", "reasons": reasons})

    async def metrics() -> Reply:
        body, content_type = exposition()
        return 200, body, content_type

    routes = {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}

    async def app(scope: dict[str, Any], receive: Callable[..., Awaitable[Any]],
                  send: Callable[..., Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return
        route = routes.get(scope["path"])
        headers: list[tuple[bytes, bytes]] = []
        if route is None:
            status, body, content_type = _json(404, {"detail": f"no endpoint at {scope['path'][:100]}; "
                                                               "try /healthz, /readyz or /metrics"})
        elif scope["method"] not in ("GET", "HEAD"):
            status, body, content_type = _json(405, {"detail": f"{scope['method']} is not allowed; use GET"})
            headers.append((b"allow", b"GET, HEAD"))
        else:
            status, body, content_type = await route()
        headers += [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    return app


def _json(status: int, value: dict[str, Any]) -> Reply:
    return status, json.dumps(value, separators=(",", ":")).encode(), "application/json"


def bind_ops_socket(settings: Settings, *, shared: bool = False) -> socket.socket:
    """Bind the ops port before the service starts, so a taken port stops it with a clear message."""
    try:
        return bind(settings.host, settings.ops_port, shared=shared)
    except OSError as exc:
        raise RuntimeError(f"cannot listen for the ops endpoints on {settings.host}:{settings.ops_port} "
                           f"({exc.strerror}); give each worker on this host its own TPX_OPS_PORT") from None


async def serve_ops(settings: Settings, stop: asyncio.Event, readiness: Readiness, draining: Callable[[], bool],
                    sock: socket.socket) -> None:
    """Serve the ops endpoints on the bound `sock` until `stop`."""
    server = Server(uvicorn_config(ops_app(readiness, draining), settings, port=settings.ops_port,
                                   lifespan="off", limit_concurrency=64))
    try:
        await server.serve_until(stop, sockets=[sock])
    finally:
        sock.close()
