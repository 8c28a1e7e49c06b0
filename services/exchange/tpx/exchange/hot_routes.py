"""The busiest routes called straight from the ASGI scope, past Starlette's router and exception layers.

An exchange or an introspection is most of what a replica serves, and the layers
between the request-context middleware and the handler (the exception
middleware, two exception-handling wrappers with their own `send` closures, the
router trying each route's pattern, the request/response adapter) cost about
24 us per request (a trivial handler: 9,700 -> 12,700 req/s; docs/decisions.md,
"Performance levers"). Here an exact (method, path) match runs the same
handler with the same `Request`, and answers a `Problem` with the same problem
response the app's exception handler gives; anything else (another method on
these paths, every other route, 404s and 405s) goes on to Starlette unchanged.
Exceptions other than `Problem` propagate to `RequestContextMiddleware`, the
last word for every route.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from tpx.core.errors import Problem

from tpx.exchange.http import problem_response

Handler = Callable[[Request], Awaitable[Response]]


class HotRoutes:
    """ASGI middleware: `routes` maps (method, path) to a handler taking a Starlette `Request`."""

    def __init__(self, app, routes: dict[tuple[str, str], Handler]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope, receive, send) -> None:
        handler = self.routes.get((scope.get("method"), scope.get("path"))) if scope["type"] == "http" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        scope["endpoint"] = handler  # what the router would set: the latency metric's route label
        try:
            response = await handler(Request(scope, receive))
        except Problem as problem:
            response = problem_response(problem)
        await response(scope, receive, send)
