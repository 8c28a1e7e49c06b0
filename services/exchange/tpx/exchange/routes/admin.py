"""`/v1/admin/*`: issuers, publishers and token metadata for operators and registry backends.

Every mutation writes an event with the actor (a fingerprint of the admin
credential), the target, and the state before and after, in the same
transaction as the change.
"""

from __future__ import annotations

import fnmatch
import uuid
from typing import Annotated, Any, Awaitable, Callable

import asyncpg
import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from tpx.core import inputs
from tpx.core.db import issuers as issuer_store
from tpx.core.db import publishers as publisher_store
from tpx.core.db import revocations as revocation_store
from tpx.core.db import tokens as token_store
from tpx.core.db.outbox import add_events
from tpx.core.errors import Problem
from tpx.core.events import builders, types
from tpx.core.events.types import EXCHANGE_SOURCE
from tpx.core.issuers import issuer_changes, issuer_json
from tpx.core.metrics import TOKENS_REVOKED
from tpx.core.providers.base import PACKAGE_RE, PACKAGE_TEXT
from tpx.core.publishers import PUBLISHER, publisher_input, publisher_json
from tpx.core.revocations import RevocationSummary, Selector
from tpx.core.times import rfc3339_or_none

from tpx.exchange.context import ServiceContext, context
from tpx.exchange.http import JSONResponse, read_object

MAX_LIST = 1000


async def _issuer(conn: asyncpg.Connection, issuer_id: uuid.UUID, ctx: ServiceContext) -> dict[str, Any] | None:
    row = await issuer_store.get(conn, issuer_id)
    return issuer_json(row, ctx.settings.audience) if row else None


async def _mutate(ctx: ServiceContext, work: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
    async with ctx.pool.acquire() as conn:
        async with conn.transaction():
            result = await work(conn)
    ctx.outbox_signal.notify()
    return result


# --- the answers' types (those of issuers, publishers and revocations are declared with them) -------------------

class PublisherResult(msgspec.Struct):
    publisher: PUBLISHER  # type: ignore[valid-type]


class PublisherList(msgspec.Struct):
    publishers: list[PUBLISHER]  # type: ignore[valid-type]


class PublisherDeleted(msgspec.Struct):
    """The deleted publisher, the tokens revoked by this call, and the revocation that finishes the rest."""

    publisher: PUBLISHER  # type: ignore[valid-type]
    revoked_tokens: int
    revocation: RevocationSummary


class TokenMetadata(msgspec.Struct):
    """A token's metadata; never the token or its hash."""

    token_id: str
    active: bool
    packages: list[str]
    permissions: dict[str, list[str]]
    publisher_ids: list[str]
    issued_at: str | None
    expires_at: str | None
    revoked_at: str | None
    revocation_reason: str | None
    ci: Annotated[dict[str, Any], Meta(description="the CI identity the token was issued to")]


class TokenList(msgspec.Struct):
    tokens: list[TokenMetadata]


# --- issuers -------------------------------------------------------------------------------------------------

async def create_issuer(request: Request) -> JSONResponse:
    ctx = context(request)
    actor = ctx.admin.authenticate(request)
    body = await read_object(request, ctx.settings.max_body_bytes)
    fields = issuer_changes(body, ctx.settings.insecure_loopback_issuers, creating=True)

    async def work(conn: asyncpg.Connection) -> dict[str, Any]:
        issuer_id = await issuer_store.insert(conn, fields)
        if issuer_id is None:
            raise Problem("duplicate_issuer", f"an issuer with url {fields['url']!r} already exists; "
                                              "change it with PATCH /v1/admin/issuers/{id}")
        after = await _issuer(conn, issuer_id, ctx)
        await add_events(conn, [builders.admin_change(types.ISSUER_CREATED, actor, str(issuer_id), None, after)],
                         source=EXCHANGE_SOURCE)
        return after  # type: ignore[return-value]

    return JSONResponse({"issuer": await _mutate(ctx, work)}, status_code=201)


async def list_issuers(request: Request) -> JSONResponse:
    ctx = context(request)
    ctx.admin.authenticate(request)
    rows = await issuer_store.list_all(ctx.pool)
    return JSONResponse({"issuers": [issuer_json(row, ctx.settings.audience) for row in rows]})


async def get_issuer(request: Request) -> JSONResponse:
    ctx = context(request)
    ctx.admin.authenticate(request)
    issuer_id = inputs.path_id(request.path_params["id"], "issuer")
    async with ctx.pool.acquire() as conn:
        issuer = await _issuer(conn, issuer_id, ctx)
    if issuer is None:
        raise Problem("not_found", f"no issuer has the id {str(issuer_id)!r}")
    return JSONResponse({"issuer": issuer})


async def update_issuer(request: Request) -> JSONResponse:
    ctx = context(request)
    actor = ctx.admin.authenticate(request)
    issuer_id = inputs.path_id(request.path_params["id"], "issuer")
    body = await read_object(request, ctx.settings.max_body_bytes)
    fields = issuer_changes(body, ctx.settings.insecure_loopback_issuers, creating=False)

    async def work(conn: asyncpg.Connection) -> dict[str, Any]:
        before = await _issuer(conn, issuer_id, ctx)
        if before is None:
            raise Problem("not_found", f"no issuer has the id {str(issuer_id)!r}")
        await issuer_store.update(conn, issuer_id, fields)
        after = await _issuer(conn, issuer_id, ctx)
        await add_events(conn, [builders.admin_change(types.ISSUER_UPDATED, actor, str(issuer_id), before, after)],
                         source=EXCHANGE_SOURCE)
        return after  # type: ignore[return-value]

    return JSONResponse({"issuer": await _mutate(ctx, work)})


async def delete_issuer(request: Request) -> Response:
    ctx = context(request)
    actor = ctx.admin.authenticate(request)
    issuer_id = inputs.path_id(request.path_params["id"], "issuer")

    async def work(conn: asyncpg.Connection) -> None:
        before = await _issuer(conn, issuer_id, ctx)
        if before is None:
            raise Problem("not_found", f"no issuer has the id {str(issuer_id)!r}")
        in_use = await publisher_store.count_for_issuer(conn, issuer_id)
        if in_use:
            raise Problem("issuer_in_use", f"{in_use} publisher(s) use this issuer; delete them first, or disable the "
                                           "issuer with PATCH {\"enabled\": false}")
        await issuer_store.delete(conn, issuer_id)
        await add_events(conn, [builders.admin_change(types.ISSUER_DELETED, actor, str(issuer_id), before, None)],
                         source=EXCHANGE_SOURCE)

    await _mutate(ctx, work)
    return Response(status_code=204)


# --- publishers ----------------------------------------------------------------------------------------------

async def create_publisher(request: Request) -> JSONResponse:
    ctx = context(request)
    actor = ctx.admin.authenticate(request)
    body = await read_object(request, ctx.settings.max_body_bytes)
    publisher = publisher_input(body, ttl_max=ctx.settings.token_ttl_max_seconds,
                                allow_loopback=ctx.settings.insecure_loopback_issuers)

    async def work(conn: asyncpg.Connection) -> dict[str, Any]:
        issuer = await issuer_store.for_publisher(conn, publisher.issuer)
        if issuer is None:
            raise inputs.invalid("invalid_publisher", "issuer",
                                 f"{publisher.issuer!r} is not a registered issuer; register it first with "
                                 "POST /v1/admin/issuers")
        if issuer["kind"] != publisher.provider:
            raise inputs.invalid("invalid_publisher", "provider",
                                 f"the issuer {publisher.issuer!r} is a {issuer['kind']} issuer, not {publisher.provider}")
        allowed = issuer["allowed_packages"]
        if allowed is not None and not any(fnmatch.fnmatchcase(publisher.package, g) for g in allowed):
            raise inputs.invalid("invalid_publisher", "package",
                                 f"the issuer {publisher.issuer!r} may only publish packages matching {list(allowed)}")
        created = await publisher_store.insert(conn, publisher, issuer["id"])
        if created is None:
            raise Problem("duplicate_publisher", f"a publisher for package {publisher.package!r} with the same issuer, "
                                                 "repository, workflow and environments already exists")
        after = publisher_json(created)
        await add_events(conn, [builders.admin_change(types.PUBLISHER_CREATED, actor, created.id, None, after)],
                         source=EXCHANGE_SOURCE)
        return after

    return JSONResponse({"publisher": await _mutate(ctx, work)}, status_code=201)


async def list_publishers(request: Request) -> JSONResponse:
    ctx = context(request)
    ctx.admin.authenticate(request)
    package = inputs.query_text(request.query_params, "package", PACKAGE_RE, PACKAGE_TEXT)
    async with ctx.pool.acquire() as conn:
        found = await publisher_store.list_(conn, package, MAX_LIST)
    return JSONResponse({"publishers": [publisher_json(p) for p in found]})


async def get_publisher(request: Request) -> JSONResponse:
    ctx = context(request)
    ctx.admin.authenticate(request)
    publisher_id = inputs.path_id(request.path_params["id"], "publisher")
    async with ctx.pool.acquire() as conn:
        found = await publisher_store.get(conn, publisher_id)
    if found is None:
        raise Problem("not_found", f"no publisher has the id {str(publisher_id)!r}")
    return JSONResponse({"publisher": publisher_json(found)})


async def delete_publisher(request: Request) -> JSONResponse:
    """Delete a publisher and, in the same transaction, revoke every live token minted through it.

    The revocation is a 'publisher' rule: its tokens are inactive once this
    commits, the first batch of rows is revoked here, and the revoker finishes
    the rest (`revoked_tokens` counts the rows revoked by this call).
    """
    ctx = context(request)
    actor = ctx.admin.authenticate(request)
    publisher_id = inputs.path_id(request.path_params["id"], "publisher")

    async def work(conn: asyncpg.Connection) -> PublisherDeleted:
        # The mint gate first, then the row: the same lock order as a mint, so the two cannot deadlock.
        await revocation_store.enter_gate_alone(conn)
        before = await publisher_store.get(conn, publisher_id)
        if before is None:
            raise Problem("not_found", f"no publisher has the id {str(publisher_id)!r}")
        await publisher_store.delete(conn, publisher_id)
        await add_events(conn, [builders.admin_change(types.PUBLISHER_DELETED, actor, before.id,
                                                      publisher_json(before), None)],
                         source=EXCHANGE_SOURCE)
        progress = await revocation_store.start(conn, Selector("publisher", publisher_id=publisher_id),
                                                reason="publisher deleted", actor=actor, source=EXCHANGE_SOURCE)
        return PublisherDeleted(publisher=publisher_json(before), revoked_tokens=progress.revoked,
                                revocation=progress.rule.summary())

    result = await _mutate(ctx, work)
    TOKENS_REVOKED.labels("revocation").inc(result.revoked_tokens)   # a publisher rule; the revoker counts the rest
    return JSONResponse(result)


# --- tokens --------------------------------------------------------------------------------------------------

async def list_tokens(request: Request) -> JSONResponse:
    ctx = context(request)
    ctx.admin.authenticate(request)
    params = request.query_params
    package = inputs.query_text(params, "package", PACKAGE_RE, PACKAGE_TEXT)
    publisher_id = params.get("publisher_id")
    active_text = params.get("active")
    if active_text not in (None, "true", "false"):
        raise Problem("malformed_request", "active must be true or false")
    try:
        limit = min(int(params.get("limit", "100")), MAX_LIST)
    except ValueError:
        raise Problem("malformed_request", f"limit must be a whole number up to {MAX_LIST}") from None
    if publisher_id is not None:
        try:
            uuid.UUID(publisher_id)
        except ValueError:
            raise Problem("malformed_request", "publisher_id must be a publisher id (a UUID)") from None
    async with ctx.pool.acquire() as conn:
        rows = await token_store.list_metadata(
            conn, package=package, publisher_id=publisher_id,
            active=None if active_text is None else active_text == "true", limit=max(limit, 1))
    return JSONResponse(TokenList([TokenMetadata(
        token_id=str(row["id"]), active=row["active"], packages=list(row["packages"]),
        permissions=row["permissions"], publisher_ids=[str(p) for p in row["publisher_ids"]],
        issued_at=rfc3339_or_none(row["issued_at"]), expires_at=rfc3339_or_none(row["expires_at"]),
        revoked_at=rfc3339_or_none(row["revoked_at"]), revocation_reason=row["revocation_reason"], ci=row["ci"],
    ) for row in rows]))
