"""`/healthz`, `/readyz` and `/metrics`."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType
from starlette.requests import Request
from starlette.responses import Response

from tpx.core.db.pool import ping
from tpx.core.errors import Problem
from tpx.core.metrics import exposition
from tpx.core.times import rfc3339_or_none

from tpx.exchange.http import JSONResponse
from tpx.exchange.context import ServiceContext, context


class Health(msgspec.Struct):
    status: Literal["ok"]


class IssuerReadiness(msgspec.Struct, omit_defaults=True):
    """One issuer's state; the key details only for a caller with the admin credential."""

    url: str
    kind: str
    state: Literal["ready", "disabled", "no usable keys", "stale keys"]
    enabled: bool | UnsetType = UNSET
    key_count: int | UnsetType = UNSET
    key_ids: list[str] | UnsetType = UNSET
    keys_fetched_at: str | None | UnsetType = UNSET
    key_age_seconds: int | None | UnsetType = UNSET
    last_error: str | None | UnsetType = UNSET


class Readiness(msgspec.Struct, omit_defaults=True):
    """The readiness report (the status alone on the public port with TPX_OPS_SEPARATE=1)."""

    status: Literal["ready", "degraded", "not ready"]
    reasons: list[str] | UnsetType = UNSET
    dependencies: Annotated[dict[str, str], Meta(description="database: ok | unreachable; "
                                                             "listener: listening | reconnecting")] | UnsetType = UNSET
    issuers: list[IssuerReadiness] | UnsetType = UNSET


HEALTHY = Health("ok")


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse(HEALTHY)


async def readyz(request: Request) -> JSONResponse:
    """Ready when the database answers and at least one enabled issuer has usable keys.

    Anyone may ask (load balancers, probes) and learns each issuer's state; the detail
    (key ids and age, the last fetch error, which can name internal addresses) is for a
    caller with the admin credential. With TPX_OPS_SEPARATE=1 the public port answers the
    status alone; the whole report is on the ops port.
    """
    ctx = context(request)
    ready, report = await readiness(ctx, operator=ctx.admin.accepts(request))
    if ctx.settings.ops_separate:
        report = Readiness(report.status)
    return JSONResponse(report, status_code=200 if ready else 503, headers={} if ready else {"Retry-After": "5"})


async def readiness(ctx: ServiceContext, *, operator: bool) -> tuple[bool, Readiness]:
    """(ready, the report): the database, each issuer's keys, the listener, draining."""
    reasons: list[str] = []
    database = "ok"
    if not await ping(ctx.pool):
        database = "unreachable"
        reasons.append("the database is unreachable")
    issuers = []
    now = datetime.now(timezone.utc)
    usable = 0
    for entry in ctx.keycache.snapshot.issuers.values():
        age = (now - entry.keys_fetched_at).total_seconds() if entry.keys_fetched_at else None
        stale = age is not None and age > ctx.settings.keys_max_staleness_seconds
        if not entry.enabled:
            state = "disabled"
        elif not entry.keys:
            state = "no usable keys"
        elif stale:
            state = "stale keys"
        else:
            state = "ready"
            usable += 1
        details = dict(enabled=entry.enabled, key_count=len(entry.keys), key_ids=sorted(entry.keys),
                       keys_fetched_at=rfc3339_or_none(entry.keys_fetched_at),
                       key_age_seconds=int(age) if age is not None else None,
                       last_error=entry.last_error) if operator else {}
        issuers.append(IssuerReadiness(entry.url, entry.kind, state, **details))
    if not usable:
        reasons.append("no enabled issuer has usable keys (is the jwks-refresher running?)")
    if ctx.draining:
        reasons.append("the service is shutting down")
    ready = not reasons
    degraded = listener_degraded(ctx.listener.connection.down_since, asyncio.get_running_loop().time(),
                                 ctx.settings.keys_reload_seconds)
    status = "not ready" if not ready else "degraded" if degraded else "ready"
    return ready, Readiness(status, reasons + ([degraded] if degraded else []),
                            {"database": database,
                             "listener": "listening" if ctx.listener.healthy.is_set() else "reconnecting"},
                            issuers)


# How long the listener may be reconnecting before readiness says so (a database restart takes longer).
LISTENER_GRACE_SECONDS = 5.0


def listener_degraded(down_since: float | None, now: float, reload_seconds: float) -> str | None:
    """Why readiness is degraded (still 200: this replica answers correctly), or None.

    Without its listener a replica learns of issuer and publisher changes only by its
    periodic reload; the kill switches still bite, since the mint statement checks them.
    """
    if down_since is None or now - down_since <= LISTENER_GRACE_SECONDS:
        return None
    return (f"degraded: the database listener has been reconnecting for {int(now - down_since)} s; issuer and "
            f"publisher changes reach this replica every {reload_seconds:g} s instead of at once (disabled issuers, "
            "removed keys and deleted publishers are still refused at once)")


async def metrics(request: Request) -> Response:
    if context(request).settings.ops_separate:
        raise Problem("not_found", "metrics are served on the ops port (TPX_OPS_SEPARATE=1: TPX_OPS_PORT/metrics)")
    body, content_type = exposition()
    return Response(body, media_type=content_type)

