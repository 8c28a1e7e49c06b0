"""`/v1/admin/revocations`: revoke every live token a selector matches.

The request commits a rule (effective at once for introspection everywhere)
and applies its first batch in the same transaction. Small revocations are
therefore finished when the call returns (`status: done`); larger ones stay
`pending` with a `revocation.requested` event, and the revoker finishes them.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tpx.core.errors import Problem
from tpx.core.events.outbox import add_events
from tpx.core.logging import get_logger
from tpx.core.db import revocations as revocation_store
from tpx.core.db.revocations import Progress, Selector

from tpx.exchange import validation
from tpx.exchange.context import context
from tpx.exchange.http import read_object
from tpx.exchange.routes.tokens import revoked_event

log = get_logger("tpx.exchange.revocations")

SOURCE = "urn:tpx:exchange"
CODE = "invalid_request"
SELECTORS = ("token_id", "publisher_id", "package", "repository")
REPOSITORY_OPTIONS = ("workflow", "issued_after", "issued_before")
FIELDS = {*SELECTORS, *REPOSITORY_OPTIONS, "reason"}
DEFAULT_REASON = "revoked by an administrator"

# owner/name (GitHub) or group/sub-group/project (GitLab); ASCII only, so lower() folds A-Z alone.
REPOSITORY_RE = re.compile(r"[A-Za-z0-9_.-]{1,255}(?:/[A-Za-z0-9_.-]{1,255}){1,21}")
WORKFLOW_RE = re.compile(r"[\x20-\x7e]{1,1024}")
REASON_RE = re.compile(r"[^\x00-\x1f\x7f]{1,500}")
RFC3339_RE = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:[Zz]|[+-]\d\d:\d\d)")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _text(body: dict[str, Any], name: str, pattern: re.Pattern[str], accepts: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise validation.invalid(CODE, name, f"{_show(value)} is not valid; it must be {accepts}")
    return value


def _uuid_field(body: dict[str, Any], name: str) -> uuid.UUID:
    value = body[name]
    try:
        if not isinstance(value, str):
            raise ValueError
        return uuid.UUID(value)
    except ValueError:
        raise validation.invalid(CODE, name, f"{_show(value)} is not an id; it must be a UUID") from None


def _time_field(body: dict[str, Any], name: str) -> datetime | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not RFC3339_RE.fullmatch(value):
        raise validation.invalid(CODE, name, f"{_show(value)} is not an RFC 3339 time with a zone, "
                                             "e.g. 2025-01-31T12:00:00Z")
    whole, dot, rest = value.partition(".")
    if dot:  # Python parses at most microseconds: cut the fraction to 6 digits, keep the zone
        digits = re.match(r"\d+", rest).group()
        value = f"{whole}.{digits[:6]}{rest[len(digits):]}"
    try:
        return datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise validation.invalid(CODE, name, f"{_show(body[name])} is not a valid date and time") from None


def parse_selector(body: dict[str, Any]) -> tuple[Selector, str]:
    """The request body as a selector and a reason; refusals name the field (422 invalid_request)."""
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise validation.invalid(CODE, unknown[0], f"is not a known field; accepted fields: {', '.join(sorted(FIELDS))}")
    given = [name for name in SELECTORS if body.get(name) is not None]
    if not given:
        raise validation.invalid(CODE, "selector", "exactly one of token_id, publisher_id, package or repository "
                                                   "is required")
    if len(given) > 1:
        raise validation.invalid(CODE, given[1], f"only one selector is allowed per revocation, and {given[0]} is "
                                                 "already given; send one request per selector")
    kind = given[0]
    if kind != "repository":
        extra = [name for name in REPOSITORY_OPTIONS if body.get(name) is not None]
        if extra:
            raise validation.invalid(CODE, extra[0], "is only allowed together with repository")
    reason = body.get("reason")
    if reason is None:
        reason = DEFAULT_REASON
    elif not isinstance(reason, str) or not REASON_RE.fullmatch(reason):
        raise validation.invalid(CODE, "reason", "must be a single line of text of at most 500 characters")

    if kind == "token_id":
        return Selector("token", token_id=_uuid_field(body, kind)), reason
    if kind == "publisher_id":
        return Selector("publisher", publisher_id=_uuid_field(body, kind)), reason
    if kind == "package":
        package = _text(body, "package", validation.PACKAGE_RE,
                        "a package name (letters, digits, '.', '_', '-', '@', '/')")
        return Selector("package", package=package), reason
    repository = _text(body, "repository", REPOSITORY_RE,
                       "owner/name as the CI provider spells it, e.g. octo-org/octo-repo")
    assert repository is not None  # a selector, so given
    workflow = _text(body, "workflow", WORKFLOW_RE,
                     "a workflow file name such as release.yml (GitLab: the CI file path)")
    issued_after = _time_field(body, "issued_after")
    issued_before = _time_field(body, "issued_before")
    if issued_after is not None and issued_before is not None and issued_after >= issued_before:
        raise validation.invalid(CODE, "issued_before", "must be later than issued_after")
    return Selector("repository", repository_key=repository.lower(), workflow=workflow, issued_after=issued_after,
                    issued_before=issued_before), reason


async def start(conn: asyncpg.Connection, selector: Selector, *, reason: str, actor: str) -> Progress:
    """Inside the caller's transaction: commit the rule, apply its first batch, announce what is left.

    A rule still pending after the first batch gets a `revocation.requested`
    event, which wakes the revoker; until then introspection already treats
    every token it matches as inactive.
    """
    rule = await revocation_store.insert(conn, selector, reason=reason, actor=actor)
    progress = await revocation_store.apply_batch(conn, rule, batch_size=revocation_store.BATCH_SIZE,
                                                  revoked_event=revoked_event, source=SOURCE)
    if not progress.done:
        await add_events(conn, [revocation_store.requested_event(progress.rule)], source=SOURCE)
    log.info("revocation.created", revocation_id=str(rule.id), kind=rule.kind, status=progress.rule.status,
             revoked=progress.rule.revoked, actor=actor)
    return progress


def summary(progress: Progress) -> dict[str, Any]:
    return {"revocation_id": str(progress.rule.id), "status": progress.rule.status, "revoked": progress.rule.revoked}


async def create_revocation(request: Request) -> JSONResponse:
    ctx = context(request)
    actor = ctx.admin.authenticate(request)
    body = await read_object(request, ctx.settings.max_body_bytes)
    selector, reason = parse_selector(body)
    async with ctx.pool.acquire() as conn:
        async with conn.transaction():
            progress = await start(conn, selector, reason=reason, actor=actor)
    ctx.outbox_signal.notify()
    return JSONResponse(summary(progress), status_code=202)


async def get_revocation(request: Request) -> JSONResponse:
    ctx = context(request)
    ctx.admin.authenticate(request)
    text = request.path_params["id"]
    try:
        rule_id = uuid.UUID(text)
    except ValueError:
        raise Problem("not_found", f"no revocation has the id {text[:60]!r}") from None
    rule = await revocation_store.get(ctx.pool, rule_id)
    if rule is None:
        raise Problem("not_found", f"no revocation has the id {str(rule_id)!r}")
    return JSONResponse({"revocation": rule.to_api()})


def routes() -> list[Route]:
    return [
        Route("/v1/admin/revocations", create_revocation, methods=["POST"]),
        Route("/v1/admin/revocations/{id}", get_revocation, methods=["GET"]),
    ]
