"""`/v1/admin/revocations`: revoke every live token a selector matches.

The request commits a rule (effective at once for introspection everywhere)
and applies its first batch in the same transaction. Small revocations are
therefore finished when the call returns (`status: done`); larger ones stay
`pending` with a `revocation.requested` event, and the revoker finishes them.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from tpx.core import inputs
from tpx.core.db import revocations as revocation_store
from tpx.core.errors import Problem
from tpx.core.events.types import EXCHANGE_SOURCE
from tpx.core.logging import get_logger
from tpx.core.metrics import TOKENS_REVOKED
from tpx.core.revocations import parse_selector

from tpx.exchange.context import context
from tpx.exchange.http import JSONResponse, read_object

log = get_logger("tpx.exchange.revocations")


async def create_revocation(request: Request) -> JSONResponse:
    ctx = context(request)
    actor = ctx.admin.authenticate(request)
    body = await read_object(request, ctx.settings.max_body_bytes)
    selector, reason = parse_selector(body)
    async with ctx.pool.acquire() as conn:
        async with conn.transaction():
            progress = await revocation_store.start(conn, selector, reason=reason, actor=actor, source=EXCHANGE_SOURCE)
    ctx.outbox_signal.notify()
    TOKENS_REVOKED.labels("revocation").inc(progress.revoked)   # the first batch; the revoker counts the rest
    rule = progress.rule
    log.info("revocation.created", revocation_id=str(rule.id), kind=rule.kind, status=rule.status,
             revoked=rule.revoked, actor=actor)
    return JSONResponse(rule.summary(), status_code=202)


async def get_revocation(request: Request) -> JSONResponse:
    ctx = context(request)
    ctx.admin.authenticate(request)
    rule_id = inputs.path_id(request.path_params["id"], "revocation")
    rule = await revocation_store.get(ctx.pool, rule_id)
    if rule is None:
        raise Problem("not_found", f"no revocation has the id {str(rule_id)!r}")
    return JSONResponse({"revocation": rule.to_api()})


def routes() -> list[Route]:
    return [
        Route("/v1/admin/revocations", create_revocation, methods=["POST"]),
        Route("/v1/admin/revocations/{id}", get_revocation, methods=["GET"]),
    ]
