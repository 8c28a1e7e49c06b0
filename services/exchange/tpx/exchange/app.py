"""The exchange service as a Starlette application.

`create_app(settings)` wires the routes, the problem-details error handling,
request ids, and a lifespan that opens the pool, refuses to start on the wrong
schema, loads the key cache, and runs the background loops until shutdown: the
database listener (issuer and publisher changes), the key cache's reloads, the
outbox sampler and the outbox relay.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

import msgspec

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.routing import Match, Route

from tpx.core import build, metrics
from tpx.core.config import Settings
from tpx.core.db import issuers as issuer_store
from tpx.core.db import publishers as publisher_store
from tpx.core.db import secrets as server_secrets
from tpx.core.db import tokens as token_store
from tpx.core.db.listener import Listener
from tpx.core.db.migrate import check_schema
from tpx.core.db.pool import create_pool
from tpx.core.errors import Problem
from tpx.core.logging import get_logger
from tpx.core.relay.backlog import sample_forever
from tpx.core.relay.relay import OutboxRelay
from tpx.core.relay.signal import OutboxSignal
from tpx.core.serving.ops import bind_ops_socket, serve_ops
from tpx.core.serving.server import freeze_startup_heap

from tpx.exchange import token_format
from tpx.exchange.auth import Credentials
from tpx.exchange.candidates import CandidateCache
from tpx.exchange.context import ServiceContext
from tpx.exchange.group_commit import GroupCommit, writers_per_process
from tpx.exchange.group_read import GroupRead
from tpx.exchange.hot_routes import HotRoutes
from tpx.exchange.http import RequestContextMiddleware, problem_response
from tpx.exchange.keycache import KeyCache
from tpx.exchange.ratelimit import RateLimits, parse_networks
from tpx.exchange.openapi import openapi
from tpx.exchange.routes import admin, exchange, ops, revocations, token_exchange, tokens
from tpx.exchange.routes.compat import compat_routes

log = get_logger("tpx.exchange.app")


# Served by HotRoutes without the router's layers; the same handlers are also routes below (OpenAPI, 405s).
HOT_ROUTES = {("POST", "/v1/exchange"): exchange.exchange, ("POST", "/v1/introspect"): tokens.introspect}


def routes() -> list[Route]:
    return [
        Route("/v1/exchange", exchange.exchange, methods=["POST"]),
        Route("/v1/explain", exchange.explain_route, methods=["POST"]),
        Route(token_exchange.PATH, token_exchange.token, methods=["POST"]),
        Route("/v1/revoke", tokens.revoke, methods=["POST"]),
        Route("/v1/introspect", tokens.introspect, methods=["POST"]),
        Route("/v1/admin/issuers", admin.create_issuer, methods=["POST"]),
        Route("/v1/admin/issuers", admin.list_issuers, methods=["GET"]),
        Route("/v1/admin/issuers/{id}", admin.get_issuer, methods=["GET"]),
        Route("/v1/admin/issuers/{id}", admin.update_issuer, methods=["PATCH"]),
        Route("/v1/admin/issuers/{id}", admin.delete_issuer, methods=["DELETE"]),
        Route("/v1/admin/publishers", admin.create_publisher, methods=["POST"]),
        Route("/v1/admin/publishers", admin.list_publishers, methods=["GET"]),
        Route("/v1/admin/publishers/{id}", admin.get_publisher, methods=["GET"]),
        Route("/v1/admin/publishers/{id}", admin.delete_publisher, methods=["DELETE"]),
        Route("/v1/admin/tokens", admin.list_tokens, methods=["GET"]),
        *revocations.routes(),
        *compat_routes(),
        Route("/healthz", ops.healthz, methods=["GET"]),
        Route("/readyz", ops.readyz, methods=["GET"]),
        Route("/metrics", ops.metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]


async def _problem(request: Request, exc: Exception):
    return problem_response(exc)  # type: ignore[arg-type]


def allowed_methods(routes, scope) -> list[str]:
    """Every method some route serves at this path (several routes may share one path, one per method)."""
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches(scope)
        if match != Match.NONE and getattr(route, "methods", None):
            methods |= route.methods
    return sorted(methods)


async def _http_error(request: Request, exc: Exception):
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return problem_response(Problem("not_found", f"there is no endpoint at {request.url.path}; see /openapi.json"))
    if exc.status_code == 405:
        allowed = allowed_methods(request.app.routes, request.scope)
        return problem_response(Problem("method_not_allowed", f"{request.method} is not allowed on {request.url.path}; "
                                                              f"it takes {', '.join(allowed)}"),
                                headers={"Allow": ", ".join(allowed)})
    return problem_response(Problem("malformed_request", str(exc.detail)))


class ExchangeApp(Starlette):
    """Starlette with the request context outermost and the hot routes right inside it.

    Starlette's own stack starts with ServerErrorMiddleware, which answers an escaped exception with a
    plain-text 500 and re-raises; here RequestContextMiddleware is the last word on every failure (a
    problem answer with the request id), so that layer would only cost a frame and a `send` wrapper per
    message on every request. Inside the context: HotRoutes, then the exception handlers and the router.
    """

    def build_middleware_stack(self):
        handlers = {key: value for key, value in self.exception_handlers.items() if key not in (500, Exception)}
        inner = ExceptionMiddleware(self.router, handlers=handlers, debug=self.debug)
        route_names = {route.endpoint: route.path for route in self.routes if isinstance(route, Route)}
        return RequestContextMiddleware(HotRoutes(inner, routes=HOT_ROUTES), route_names=route_names)


def create_app(settings: Settings, *, run_relay: bool = True) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await create_pool(settings)
        try:
            async with pool.acquire() as conn:
                await check_schema(conn)
                fingerprint_key = await server_secrets.get(conn, server_secrets.ACTOR_FINGERPRINT)
            candidates = CandidateCache()
            keycache = KeyCache(settings, pool)
            await keycache.reload()

            async def catch_up() -> None:  # NOTIFYs sent while the listener was away are lost
                candidates.invalidate()
                await keycache.reload()

            listener = Listener(settings.database_url, {issuer_store.CHANGED_CHANNEL: keycache.changed,
                                                        publisher_store.CHANGED_CHANNEL: candidates.invalidate},
                                name="exchange-listener", on_connect=catch_up,
                                server_settings={"application_name": token_format.APPLICATION_NAME})
            signal = OutboxSignal()
            ctx = ServiceContext(
                settings=settings, pool=pool, keycache=keycache, outbox_signal=signal,
                admin=Credentials(settings.admin_tokens, "admin token", "TPX_ADMIN_TOKENS",
                                  fingerprint_key=fingerprint_key),
                introspection=Credentials(settings.introspection_tokens, "introspection credential",
                                          "TPX_INTROSPECTION_TOKENS", fingerprint_key=fingerprint_key),
                limits=RateLimits(settings.rate_failed_per_minute, settings.rate_publisher_per_minute,
                                  parse_networks(settings.trusted_proxies)),
                candidates=candidates,
                listener=listener,
                group_commit=GroupCommit(pool, max_in_flight=writers_per_process(settings.workers)),
                token_reads=GroupRead(pool, token_store.active_by_keys),
                token_format=token_format.TokenFormat(),
            )
            app.state.tpx = ctx
            metrics.POOLS.add("exchange", pool)
            key_source = lambda: keycache.snapshot  # noqa: E731 - a handle to unregister on shutdown
            metrics.KEYS.add(key_source)
            metrics.BUILD.labels("exchange", build.version()).set(1)
            metrics.DRAINING.set(0)
            stop_ops: list[asyncio.Event] = []
            tasks = [asyncio.create_task(listener.run(), name="exchange-listener"),
                     asyncio.create_task(keycache.run(), name="keycache"),
                     asyncio.create_task(sample_forever(pool), name="outbox-sampler"),
                     asyncio.create_task(ctx.token_format.run(pool), name="token-format")]
            if settings.ops_separate:   # /metrics and the full readiness report, off the public port
                ops_stop = asyncio.Event()
                ops_socket = bind_ops_socket(settings, shared=True)   # every exchange process serves it

                async def ops_readiness() -> tuple[bool, dict]:
                    ready, report = await ops.readiness(ctx, operator=True)
                    return ready, msgspec.to_builtins(report)

                tasks.append(asyncio.create_task(
                    serve_ops(settings, ops_stop, ops_readiness, lambda: ctx.draining, ops_socket), name="ops"))
                stop_ops.append(ops_stop)
            relay = OutboxRelay(settings, pool, signal, stand_by_first=True) if run_relay else None
            if relay is not None:
                tasks.append(asyncio.create_task(relay.run(), name="outbox-relay"))
            app.state.relay = relay
            freeze_startup_heap()
            log.info("exchange.started", issuers=len(keycache.snapshot.issuers),
                     usable_issuers=len(keycache.snapshot.usable()))
            try:
                yield
            finally:
                ctx.draining = True
                metrics.DRAINING.set(1)
                metrics.KEYS.remove(key_source)
                if relay is not None:
                    await relay.stop()
                for event in stop_ops:
                    event.set()
                for task in tasks:
                    if task.get_name() != "ops":
                        task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            metrics.POOLS.remove("exchange", pool)
            metrics.process_exiting()
            await pool.close()

    return ExchangeApp(
        routes=routes(),
        # Exceptions no handler here takes are answered by RequestContextMiddleware, with the request id.
        exception_handlers={Problem: _problem, HTTPException: _http_error},
        lifespan=lifespan,
    )
