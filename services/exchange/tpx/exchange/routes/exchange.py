"""`POST /v1/exchange` and `POST /v1/explain`: the CI-facing routes."""

from __future__ import annotations

import time
from typing import Annotated, Any, Awaitable, Callable

import msgspec
from msgspec import Meta
from starlette.requests import Request

from tpx.core import bodies
from tpx.core.bodies import Body
from tpx.core.db.pool import UNAVAILABLE_ERRORS
from tpx.core.errors import Problem
from tpx.core.logging import get_logger
from tpx.core.metrics import EXCHANGE_LATENCY, EXCHANGES, Children
from tpx.core.outages import DATABASE
from tpx.core.providers import base
from tpx.core.providers.base import PERMISSIONS, Package
from tpx.core.providers.matching import PublisherExplanation

from tpx.exchange.context import ServiceContext, context
from tpx.exchange.http import JSONResponse, NoStoreJSONResponse, read_object
from tpx.exchange.minting import (
    EVERYTHING, AmbiguousMint, MintedToken, Narrowing, explain, mint, record_denial, resolve_ambiguous,
)
from tpx.exchange.ratelimit import client_address
from tpx.exchange.verification import VerifiedToken, verify_id_token

log = get_logger("tpx.exchange")


ID_TOKEN_TEXT = "the CI provider's OIDC ID token (a JWT)"


class IdTokenBody(Body):
    """`POST /v1/exchange`, `POST /v1/explain` and crates.io's exchange: `{"jwt": "<ID token>"}`."""

    jwt: Annotated[str, Meta(description=ID_TOKEN_TEXT)]

    @property
    def id_token(self) -> str:
        return self.jwt


Packages = Annotated[list[Package], Meta(min_length=1, max_length=100, description=(
    "the packages the token is for: some of those the matching publishers grant (default: all of them)"))]
Permissions = Annotated[base.Permissions, Meta(description=(
    f"the permissions the token carries on each package, each {bodies.choices(PERMISSIONS)} (default: all that "
    "are granted)"))]
LIFETIME_TEXT = "the token's lifetime in seconds, 60 to 86400; it never exceeds what the publishers and the operator allow"
Lifetime = Annotated[int, Meta(ge=60, le=86400, description=LIFETIME_TEXT)]


class ExchangeRequest(IdTokenBody, kw_only=True):
    """`POST /v1/exchange`: the ID token and, optionally, less than everything it is granted."""

    packages: Packages | None = None
    permissions: Permissions | None = None
    lifetime_seconds: Lifetime | None = None

    def narrowing(self) -> Narrowing:
        return Narrowing(
            packages=tuple(dict.fromkeys(self.packages)) if self.packages is not None else None,
            permissions=tuple(dict.fromkeys(self.permissions)) if self.permissions is not None else None,
            lifetime_seconds=self.lifetime_seconds)


def id_token_of(body: dict[str, Any], body_type: type[IdTokenBody] | Any) -> str:
    """The ID token a parsed body carries; refusals are `400 malformed_request` naming the member."""
    return bodies.convert(body, body_type, "malformed_request").id_token


class Explanation(msgspec.Struct):
    """What `POST /v1/explain` answers: the identity the token proves and each candidate, check by check."""

    would_issue: bool
    identity: Annotated[dict[str, Any], Meta(description="the CI identity the token proves")]
    publishers: list[PublisherExplanation]


async def read_verified(request: Request, ctx: ServiceContext, body_type: Any = IdTokenBody) -> VerifiedToken:
    body = await read_object(request, ctx.settings.max_body_bytes)
    return await verify_id_token(id_token_of(body, body_type), ctx.keycache, ctx.settings)


async def read_exchange(request: Request, ctx: ServiceContext) -> tuple[VerifiedToken, Narrowing]:
    """The native exchange's body: checked whole (narrowing included) before the token is verified."""
    typed = bodies.convert(await read_object(request, ctx.settings.max_body_bytes), ExchangeRequest,
                           "malformed_request")
    return await verify_id_token(typed.jwt, ctx.keycache, ctx.settings), typed.narrowing()


class client_failures_limited:  # noqa: N801 - used as a context manager, named like one
    """Refuse a client address that keeps failing; count this attempt if it fails on the client's side.

    A class rather than a generator-based context manager: it wraps every exchange, and contextlib's
    generator protocol cost as much as the check itself. X-Forwarded-For is read only when a proxy is
    trusted at all, the only case in which it can name the client.
    """

    __slots__ = ("_limits", "_address")

    def __init__(self, ctx: ServiceContext, request: Request) -> None:
        limits = self._limits = ctx.limits
        trusted = limits.trusted_proxies
        peer = request.scope.get("client")
        self._address = client_address(peer[0] if peer else None,
                                       request.headers.getlist("x-forwarded-for") if trusted else (), trusted)

    def __enter__(self) -> None:
        self._limits.check_client(self._address)

    def __exit__(self, kind: type[BaseException] | None, problem: BaseException | None, _traceback: Any) -> None:
        if isinstance(problem, Problem) and problem.status < 500 and problem.code != "rate_limited":
            self._limits.record_failure(self._address)


async def exchange_token(ctx: ServiceContext, verified: VerifiedToken, narrowing: Narrowing = EVERYTHING) -> MintedToken:
    """Mint for a verified token; shared by the native, token-exchange and compatibility routes."""
    try:
        try:
            minted = await mint(ctx.pool, ctx.settings, verified, ctx.candidates, ctx.group_commit,
                                admit=lambda d: ctx.limits.admit_publishers(e.publisher for e in d.matched),
                                narrowing=narrowing, new_token=ctx.token_format.generate)
        except Problem as problem:
            if problem.code in ("no_matching_publisher", "forbidden_trigger"):
                async with ctx.pool.acquire() as conn:
                    await record_denial(conn, verified, problem)
                ctx.outbox_signal.notify()
            log.info("exchange.denied", code=problem.code, issuer=verified.issuer.url,
                     repository=verified.identity.repository, workflow=verified.identity.workflow)
            raise
    except AmbiguousMint as ambiguous:
        # The connection died with the mint in flight; a fresh one tells whether it committed.
        DATABASE.failed(ambiguous.__cause__, path="/v1/exchange")
        minted = await resolve_ambiguous(ctx.pool, ambiguous, ctx.settings)
        log.info("exchange.resolved", token_id=minted.token_id, outcome="committed")
    ctx.outbox_signal.notify()
    DATABASE.recovered()
    ctx.limits.charge_publishers(minted.publisher_ids)
    log.info("exchange.issued", token_id=minted.token_id, packages=minted.packages,
             repository=verified.identity.repository, workflow=verified.identity.workflow)
    return minted


_EXCHANGES = Children(EXCHANGES)   # by result code (bounded: the contract's codes)

Reader = Callable[[Request, ServiceContext], Awaitable[tuple[VerifiedToken, Narrowing]]]


async def counted_exchange(request: Request, read: Reader) -> MintedToken:
    """The whole exchange behind every route that mints (native, RFC 8693, crates.io, PyPI): abuse
    limits, the route's own body, verification, minting, and the metrics, counted once per attempt."""
    ctx = context(request)
    started = time.perf_counter()
    try:
        with client_failures_limited(ctx, request):
            verified, narrowing = await read(request, ctx)
            minted = await exchange_token(ctx, verified, narrowing)
    except Problem as problem:
        _EXCHANGES[problem.code, ].inc()
        raise
    except UNAVAILABLE_ERRORS:
        _EXCHANGES["unavailable", ].inc()
        raise
    except Exception:
        _EXCHANGES["internal", ].inc()
        raise
    finally:
        EXCHANGE_LATENCY.observe(time.perf_counter() - started)
    _EXCHANGES["issued", ].inc()
    return minted


async def exchange(request: Request) -> JSONResponse:
    return NoStoreJSONResponse((await counted_exchange(request, read_exchange)).response())


async def explain_route(request: Request) -> JSONResponse:
    """A dry run; its refusals count against the same per-address failure budget as exchanges, since a
    flood of bad tokens costs the same here (including the wait for a refresh on an unknown key)."""
    ctx = context(request)
    with client_failures_limited(ctx, request):
        verified = await read_verified(request, ctx)
    async with ctx.pool.acquire() as conn:
        evaluations = await explain(conn, verified)
    return JSONResponse(Explanation(
        would_issue=any(e.matched for e in evaluations), identity=verified.identity.ci(),
        publishers=msgspec.convert([e.as_explain() for e in evaluations], list[PublisherExplanation])))
