"""`/v1/admin/*`: issuers, publishers and token metadata for operators and registry backends.

Every mutation writes an event with the actor (a fingerprint of the admin
credential), the target, and the state before and after, in the same
transaction as the change.
"""

from __future__ import annotations

import fnmatch
import uuid
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tpx.core.errors import Problem
from tpx.core.events import types as event_types
from tpx.core.events.outbox import Event, add_events
from tpx.core.db import publishers as publisher_store
from tpx.core.db import tokens as token_store
from tpx.core.db.revocations import MINT_GATE_LOCK
from tpx.core.db.revocations import Selector

from tpx.exchange import validation
from tpx.exchange.context import ServiceContext, context
from tpx.exchange.http import read_object
from tpx.exchange.routes import revocations

SOURCE = "urn:tpx:exchange"
MAX_LIST = 1000

_ISSUER_COLUMNS = """i.id, i.url, i.kind, i.audience, i.algorithms, i.allowed_packages, i.max_token_lifetime_seconds,
    i.enabled, i.jwks_uri, i.keys_fetched_at, i.last_error, i.created_at, i.updated_at,
    COALESCE((SELECT array_agg(k.kid ORDER BY k.kid) FROM issuer_keys k WHERE k.issuer_id = i.id), '{}') AS key_ids"""


def _time(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Problem("not_found", f"no {what} has the id {value[:60]!r}") from None


def issuer_json(row: asyncpg.Record, default_audience: str) -> dict[str, Any]:
    return {
        "id": str(row["id"]), "url": row["url"], "kind": row["kind"],
        "audience": row["audience"] or default_audience,
        "algorithms": list(row["algorithms"]),
        "allowed_packages": list(row["allowed_packages"]) if row["allowed_packages"] is not None else None,
        "max_token_lifetime_seconds": row["max_token_lifetime_seconds"],
        "enabled": row["enabled"], "jwks_uri": row["jwks_uri"],
        "keys_fetched_at": _time(row["keys_fetched_at"]), "last_error": row["last_error"],
        "key_ids": list(row["key_ids"]),
        "created_at": _time(row["created_at"]), "updated_at": _time(row["updated_at"]),
    }


async def _issuer(conn, issuer_id: uuid.UUID, ctx: ServiceContext) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"SELECT {_ISSUER_COLUMNS} FROM issuers i WHERE i.id = $1", issuer_id)
    return issuer_json(row, ctx.settings.audience) if row else None


def _admin_event(event_type: str, actor: str, target: str, before: Any, after: Any) -> Event:
    return Event(event_type, subject=target, data={"actor": actor, "target": target, "before": before, "after": after})


async def _mutate(ctx: ServiceContext, work) -> Any:
    async with ctx.pool.acquire() as conn:
        async with conn.transaction():
            result = await work(conn)
    ctx.outbox_signal.notify()
    return result


# --- issuers -------------------------------------------------------------------------------------------------

async def create_issuer(request: Request) -> JSONResponse:
    ctx = context(request)
    actor = ctx.admin.authenticate(request)
    body = await read_object(request, ctx.settings.max_body_bytes)
    fields = validation.issuer_changes(body, ctx.settings.insecure_loopback_issuers, creating=True)

    async def work(conn):
        columns = list(fields)
        issuer_id = await conn.fetchval(
            f"INSERT INTO issuers ({', '.join(columns)}) VALUES ({', '.join(f'${i + 1}' for i in range(len(columns)))}) "
            "ON CONFLICT (url) DO NOTHING RETURNING id",
            *fields.values(),
        )
        if issuer_id is None:
            raise Problem("duplicate_issuer", f"an issuer with url {fields['url']!r} already exists; "
                                              "change it with PATCH /v1/admin/issuers/{id}")
        after = await _issuer(conn, issuer_id, ctx)
        await add_events(conn, [_admin_event(event_types.ISSUER_CREATED, actor, str(issuer_id), None, after)], source=SOURCE)
        return after

    issuer = await _mutate(ctx, work)
    return JSONResponse({"issuer": issuer}, status_code=201)


async def list_issuers(request: Request) -> JSONResponse:
    ctx = context(request)
    ctx.admin.authenticate(request)
    rows = await ctx.pool.fetch(f"SELECT {_ISSUER_COLUMNS} FROM issuers i ORDER BY i.created_at, i.url")
    return JSONResponse({"issuers": [issuer_json(row, ctx.settings.audience) for row in rows]})


async def get_issuer(request: Request) -> JSONResponse:
    ctx = context(request)
    ctx.admin.authenticate(request)
    issuer_id = _uuid(request.path_params["id"], "issuer")
    async with ctx.pool.acquire() as conn:
        issuer = await _issuer(conn, issuer_id, ctx)
    if issuer is None:
        raise Problem("not_found", f"no issuer has the id {str(issuer_id)!r}")
    return JSONResponse({"issuer": issuer})


async def update_issuer(request: Request) -> JSONResponse:
    ctx = context(request)
    actor = ctx.admin.authenticate(request)
    issuer_id = _uuid(request.path_params["id"], "issuer")
    body = await read_object(request, ctx.settings.max_body_bytes)
    fields = validation.issuer_changes(body, ctx.settings.insecure_loopback_issuers, creating=False)

    async def work(conn):
        before = await _issuer(conn, issuer_id, ctx)
        if before is None:
            raise Problem("not_found", f"no issuer has the id {str(issuer_id)!r}")
        if fields:
            assignments = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(fields))
            await conn.execute(f"UPDATE issuers SET {assignments}, updated_at = now() WHERE id = $1",
                               issuer_id, *fields.values())
        after = await _issuer(conn, issuer_id, ctx)
        await add_events(conn, [_admin_event(event_types.ISSUER_UPDATED, actor, str(issuer_id), before, after)], source=SOURCE)
        return after

    return JSONResponse({"issuer": await _mutate(ctx, work)})


async def delete_issuer(request: Request) -> Response:
    ctx = context(request)
    actor = ctx.admin.authenticate(request)
    issuer_id = _uuid(request.path_params["id"], "issuer")

    async def work(conn):
        before = await _issuer(conn, issuer_id, ctx)
        if before is None:
            raise Problem("not_found", f"no issuer has the id {str(issuer_id)!r}")
        in_use = await conn.fetchval("SELECT count(*) FROM publishers WHERE issuer_id = $1", issuer_id)
        if in_use:
            raise Problem("issuer_in_use", f"{in_use} publisher(s) use this issuer; delete them first, or disable the "
                                           "issuer with PATCH {\"enabled\": false}")
        await conn.execute("DELETE FROM issuers WHERE id = $1", issuer_id)
        await add_events(conn, [_admin_event(event_types.ISSUER_DELETED, actor, str(issuer_id), before, None)], source=SOURCE)

    await _mutate(ctx, work)
    return Response(status_code=204)


# --- publishers ----------------------------------------------------------------------------------------------

async def create_publisher(request: Request) -> JSONResponse:
    ctx = context(request)
    actor = ctx.admin.authenticate(request)
    body = await read_object(request, ctx.settings.max_body_bytes)
    publisher = validation.publisher_input(body, ctx.settings.token_ttl_max_seconds, ctx.settings.insecure_loopback_issuers)

    async def work(conn):
        issuer = await conn.fetchrow("SELECT id, kind, allowed_packages FROM issuers WHERE url = $1", publisher.issuer)
        if issuer is None:
            raise validation.invalid("invalid_publisher", "issuer",
                                     f"{publisher.issuer!r} is not a registered issuer; register it first with "
                                     "POST /v1/admin/issuers")
        if issuer["kind"] != publisher.provider:
            raise validation.invalid("invalid_publisher", "provider",
                                     f"the issuer {publisher.issuer!r} is a {issuer['kind']} issuer, not {publisher.provider}")
        allowed = issuer["allowed_packages"]
        if allowed is not None and not any(fnmatch.fnmatchcase(publisher.package, g) for g in allowed):
            raise validation.invalid("invalid_publisher", "package",
                                     f"the issuer {publisher.issuer!r} may only publish packages matching {list(allowed)}")
        created = await publisher_store.insert(conn, publisher, issuer["id"])
        if created is None:
            raise Problem("duplicate_publisher", f"a publisher for package {publisher.package!r} with the same issuer, "
                                                 "repository, workflow and environments already exists")
        after = created.to_api()
        await add_events(conn, [_admin_event(event_types.PUBLISHER_CREATED, actor, created.id, None, after)], source=SOURCE)
        return after

    return JSONResponse({"publisher": await _mutate(ctx, work)}, status_code=201)


async def list_publishers(request: Request) -> JSONResponse:
    ctx = context(request)
    ctx.admin.authenticate(request)
    package = request.query_params.get("package")
    async with ctx.pool.acquire() as conn:
        found = await publisher_store.list_(conn, package, MAX_LIST)
    return JSONResponse({"publishers": [p.to_api() for p in found]})


async def get_publisher(request: Request) -> JSONResponse:
    ctx = context(request)
    ctx.admin.authenticate(request)
    publisher_id = _uuid(request.path_params["id"], "publisher")
    async with ctx.pool.acquire() as conn:
        found = await publisher_store.get(conn, publisher_id)
    if found is None:
        raise Problem("not_found", f"no publisher has the id {str(publisher_id)!r}")
    return JSONResponse({"publisher": found.to_api()})


async def delete_publisher(request: Request) -> JSONResponse:
    """Delete a publisher and, in the same transaction, revoke every live token minted through it.

    The revocation is a 'publisher' rule: its tokens are inactive once this
    commits, the first batch of rows is revoked here, and the revoker finishes
    the rest (`revoked_tokens` counts the rows revoked by this call).
    """
    ctx = context(request)
    actor = ctx.admin.authenticate(request)
    publisher_id = _uuid(request.path_params["id"], "publisher")

    async def work(conn):
        # The mint gate first, then the row: the same lock order as a mint, so the two cannot deadlock.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MINT_GATE_LOCK)
        before = await publisher_store.get(conn, publisher_id)
        if before is None:
            raise Problem("not_found", f"no publisher has the id {str(publisher_id)!r}")
        await publisher_store.delete(conn, publisher_id)
        await add_events(conn, [_admin_event(event_types.PUBLISHER_DELETED, actor, before.id, before.to_api(), None)],
                         source=SOURCE)
        progress = await revocations.start(conn, Selector("publisher", publisher_id=publisher_id),
                                           reason="publisher deleted", actor=actor)
        return {"publisher": before.to_api(), "revoked_tokens": progress.revoked,
                "revocation": revocations.summary(progress)}

    return JSONResponse(await _mutate(ctx, work))


# --- tokens --------------------------------------------------------------------------------------------------

async def list_tokens(request: Request) -> JSONResponse:
    ctx = context(request)
    ctx.admin.authenticate(request)
    params = request.query_params
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
            conn, package=params.get("package"), publisher_id=publisher_id,
            active=None if active_text is None else active_text == "true", limit=max(limit, 1))
    return JSONResponse({"tokens": [{
        "token_id": str(row["id"]), "active": row["active"], "packages": list(row["packages"]),
        "permissions": row["permissions"], "publisher_ids": [str(p) for p in row["publisher_ids"]],
        "issued_at": _time(row["issued_at"]), "expires_at": _time(row["expires_at"]),
        "revoked_at": _time(row["revoked_at"]), "revocation_reason": row["revocation_reason"], "ci": row["ci"],
    } for row in rows]})
