"""`POST /v1/revoke` (the holder) and `POST /v1/introspect` (registries, RFC 7662)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from tpx.core import bodies, tokens
from tpx.core.bodies import Body
from tpx.core.db import tokens as token_store
from tpx.core.db.outbox import add_events
from tpx.core.errors import Problem
from tpx.core.events import builders
from tpx.core.events.types import EXCHANGE_SOURCE
from tpx.core.metrics import INTROSPECTIONS, TOKENS_REVOKED, Children
from tpx.core.providers.base import PERMISSIONS

from tpx.exchange.context import ServiceContext, context
from tpx.exchange.http import JSONResponse, NoStoreJSONResponse, read_object


class TokenBody(Body):
    """`POST /v1/revoke` and `POST /v1/introspect` (RFC 7662), as JSON or as a urlencoded form."""

    token: Annotated[str, Meta(description="a tpx token: tpx_ followed by 46 letters and digits")] | None = None
    token_type_hint: Annotated[str, Meta(description="accepted and ignored (RFC 7662 section 2.1)")] | None = None


async def read_token(request: Request, ctx: ServiceContext) -> str | None:
    body = await read_object(request, ctx.settings.max_body_bytes, allow_form=True)
    return bodies.convert(body, TokenBody, "malformed_request").token


def _bearer(request: Request) -> str | None:
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    return credential.strip() if scheme.lower() == "bearer" and credential.strip() else None


async def revoke(request: Request) -> Response:
    ctx = context(request)
    token = _bearer(request)
    if token is None:
        token = await read_token(request, ctx)
        if token is None:
            raise Problem("malformed_request",
                          "send the token to revoke as `Authorization: Bearer <token>`, {\"token\": ...} or token=...")
    if not tokens.is_well_formed(token):
        raise Problem("malformed_token", "this is not a tpx token (tpx_ followed by 46 letters and digits, with a valid "
                                         "checksum); check that the whole token was sent")
    await revoke_token(ctx, token, reason="revoked by holder")
    return Response(status_code=204)


async def revoke_token(ctx: ServiceContext, token: str, reason: str) -> None:
    async with ctx.pool.acquire() as conn:
        async with conn.transaction():
            row = await token_store.revoke_by_key(conn, tokens.lookup_key(token), reason)
            if row is not None:
                await add_events(conn, [builders.token_revoked(row, reason)], source=EXCHANGE_SOURCE)
    if row is not None:
        TOKENS_REVOKED.labels("holder").inc()
        ctx.outbox_signal.notify()


class Introspection(msgspec.Struct, omit_defaults=True):
    """RFC 7662's answer: `{"active": false}` alone for a token that is not active (unknown, expired,
    revoked), and for an active one what a registry needs to authorise the upload."""

    active: bool
    token_id: str | None = None
    token_type: str | None = None
    scope: Annotated[str, Meta(description="the permissions every package of the token has, space-separated")] \
        | None = None
    packages: list[str] | None = None
    permissions: Annotated[dict[str, list[str]], Meta(
        description="package -> the permissions granted on it; authoritative over scope")] | None = None
    iat: int | None = None
    exp: int | None = None
    publisher_ids: list[str] | None = None
    ci: Annotated[dict[str, Any], Meta(description="the CI identity the token was issued to")] | None = None


INACTIVE = Introspection(active=False)
_INTROSPECTIONS = Children(INTROSPECTIONS)


def introspection_body(row) -> Introspection:
    """`permissions` (per package) is authoritative; `scope` holds only the permissions every package
    of the token has, so a registry reading `scope` alone never grants one package what only another may do."""
    permissions = row["permissions"]
    common = set.intersection(*(set(granted) for granted in permissions.values())) if permissions else set()
    return Introspection(
        active=True, token_id=str(row["id"]), token_type="tpx_publish",
        scope=" ".join(p for p in PERMISSIONS if p in common), packages=list(row["packages"]),
        permissions=permissions, iat=int(row["issued_at"].timestamp()), exp=int(row["expires_at"].timestamp()),
        publisher_ids=[str(p) for p in row["publisher_ids"]], ci=row["ci"])


async def introspect(request: Request) -> JSONResponse:
    ctx = context(request)
    ctx.introspection.require(request)
    token = await read_token(request, ctx)
    if token is None:
        raise Problem("malformed_request", "send the token to introspect as {\"token\": \"tpx_...\"} or token=tpx_...")
    row = await ctx.token_reads.read(tokens.lookup_key(token)) if tokens.is_well_formed(token) else None
    _INTROSPECTIONS["active" if row is not None else "inactive", ].inc()
    return NoStoreJSONResponse(INACTIVE if row is None else introspection_body(row))
