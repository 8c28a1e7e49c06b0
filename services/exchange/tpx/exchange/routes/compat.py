"""Compatibility routes: crates.io's and PyPI's token exchange, served by tpx (api.md section 4).

Existing clients (rust-lang/crates-io-auth-action, pypa/gh-action-pypi-publish,
hand-written curl steps) work unchanged when pointed at tpx. They run the very
same verification and minting as `POST /v1/exchange` (`read_verified`,
`exchange_token`), so a refusal carries the same precise reason; only the
envelope differs. These routes never answer with problem+json: every refusal,
including a malformed body, an unexpected method and a dependency outage, is
rendered in the registry's own error shape.

crates.io (`/api/v1/trusted_publishing/tokens`), error body
`{"errors": [{"detail": "<problem detail>. Hints: <hint>; <hint>"}]}`:

    tpx code                                   status  (crates.io itself)
    malformed_request, malformed_token          400     400 "Failed to decode JWT"
    unknown_issuer                              400     400 "Unsupported JWT issuer: ..."
    invalid_token                               400     400 "Failed to decode JWT" / "Invalid JWT key ID"
    token_reused                                400     400 "JWT has already been used" (the same words)
    no_matching_publisher, forbidden_trigger    400     400 "No Trusted Publishing config found ..." etc.
    request_too_large                           413     413 (axum body limit)
    unsupported_media_type                      415     415 (axum Json extractor)
    rate_limited                                429     429, with Retry-After
    keys_unavailable, unavailable               503     500 "Failed to load OIDC key set"; tpx keeps 503 + Retry-After
    internal                                    500     500
    DELETE without Authorization                401     401 "Missing authorization header"
    DELETE with a non-Bearer Authorization      401     401 "Invalid authorization header"
    DELETE with `Authorization: <tpx token>`    204     204 (crates.io takes the token without a scheme)
    DELETE with a string that is no tpx token   400     (crates.io: 401; tpx keeps its native 400 malformed_token)
    any other method                            405

PyPI (`/_/oidc/mint-token`, and the legacy `/_/oidc/github/mint-token` that
older pinned releases of gh-action-pypi-publish call), error body
`{"message": "Token request failed", "errors": [{"code", "description"}]}`:

    tpx code                                                 status  PyPI code
    malformed_request, request_too_large,
      malformed_token, unknown_issuer                        422     invalid-payload
    invalid_token                                            422     invalid-token
    token_reused                                             422     invalid-reuse-token
    no_matching_publisher, forbidden_trigger                 422     invalid-publisher
    rate_limited                                             429     rate-limited (+ Retry-After)
    keys_unavailable, unavailable                            503     unavailable (+ Retry-After)
    internal                                                 500     internal-error

PyPI answers every refusal with 422 and the codes above; tpx keeps 429/5xx so
that a client (and any proxy) can tell "retry later" from "fix your config".
Like PyPI, the mint route reads its body as JSON whatever the Content-Type.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Awaitable, Callable, Literal

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tpx.core import tokens
from tpx.core.bodies import Body
from tpx.core.db.pool import UNAVAILABLE_ERRORS
from tpx.core.errors import Problem
from tpx.core.logging import get_logger
from tpx.core.outages import DATABASE

from tpx.exchange.context import ServiceContext, context
from tpx.exchange.http import JSONResponse, NoStoreJSONResponse, parse_json_object, read_body
from tpx.exchange.minting import EVERYTHING, MintedToken, Narrowing, PublishToken
from tpx.exchange.routes.exchange import ID_TOKEN_TEXT, IdTokenBody, counted_exchange, id_token_of, read_verified
from tpx.exchange.routes.tokens import revoke_token
from tpx.exchange.verification import VerifiedToken, verify_id_token

log = get_logger("tpx.exchange.compat")

CRATES_TOKENS_PATH = "/api/v1/trusted_publishing/tokens"
PYPI_AUDIENCE_PATH = "/_/oidc/audience"
PYPI_MINT_PATH = "/_/oidc/mint-token"
PYPI_LEGACY_MINT_PATH = "/_/oidc/github/mint-token"
# Every route here takes all common methods and answers the unsupported ones
# itself, so even a 405 comes back in the registry's shape.
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

Handler = Callable[[Request], Awaitable[Response]]
Renderer = Callable[[Problem], Response]


def with_hints(problem: Problem) -> str:
    """The problem's detail with its hints appended, since neither registry shape has a field for them."""
    if not problem.hints:
        return problem.detail
    return f"{problem.detail.rstrip('. ')}. Hints: " + "; ".join(hint.rstrip("; ") for hint in problem.hints)


def retry_headers(problem: Problem) -> dict[str, str]:
    return {"Retry-After": str(problem.retry_after)} if problem.retry_after is not None else {}


def guarded(render: Renderer) -> Callable[[Handler], Handler]:
    """Render every Problem, outage and bug of the wrapped route in the registry's shape.

    The app's handlers would turn them into problem+json, which these clients cannot read.
    """

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except Problem as problem:
                return render(problem)
            except UNAVAILABLE_ERRORS as exc:
                DATABASE.failed(exc, path=request.url.path)
                return render(Problem("unavailable", "the database is not reachable right now; retry shortly",
                                      retry_after=5))
            except Exception:  # logged with the request id, answered in the client's shape
                log.exception("request.failed", path=request.url.path)
                return render(Problem("internal",
                                      "an unexpected error occurred; it has been logged with this request id"))

        return endpoint

    return decorate


class PypiTokenBody(Body):
    """PyPI's mint-token body: `{"token": "<ID token>"}`."""

    token: Annotated[str, Meta(description=ID_TOKEN_TEXT)]

    @property
    def id_token(self) -> str:
        return self.token


async def read_verified_any_type(request: Request, ctx: ServiceContext, body_type: Any) -> VerifiedToken:
    """`read_verified`, but the body is read as JSON whatever its Content-Type, as PyPI does.

    PyPI's own GitLab example posts with `curl -d`, which labels the JSON as a
    form; refusing it would break that client. Nothing is lost: the route has no
    ambient credentials for a cross-site form to ride on.
    """
    body = parse_json_object(await read_body(request, ctx.settings.max_body_bytes))
    return await verify_id_token(id_token_of(body, body_type), ctx.keycache, ctx.settings)


async def exchange(request: Request, *, body_type: Any, any_content_type: bool = False) -> MintedToken:
    """Exactly the native exchange (abuse limits, verification, minting, metrics), minus the envelope."""
    reader = read_verified_any_type if any_content_type else read_verified

    async def read(request: Request, ctx: ServiceContext) -> tuple[VerifiedToken, Narrowing]:
        return await reader(request, ctx, body_type), EVERYTHING

    return await counted_exchange(request, read)


# --- crates.io -------------------------------------------------------------------------------

CRATES_KEPT_STATUSES = {413, 415, 429}


def crates_status(problem: Problem) -> int:
    """crates.io answers every client error with 400; transport limits, rate limits and 5xx keep theirs."""
    status = problem.status
    return status if status in CRATES_KEPT_STATUSES or status >= 500 else 400


class CratesToken(msgspec.Struct):
    """crates.io's exchange answer."""

    token: PublishToken


class CratesErrorDetail(msgspec.Struct):
    detail: str


class CratesError(msgspec.Struct):
    """crates.io's error shape: every refusal's sentence (with tpx's hints) in `errors[].detail`."""

    errors: list[CratesErrorDetail]


def crates_error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(CratesError([CratesErrorDetail(detail)]), status_code=status, headers=headers)


# RFC 9110 asks every 401 for a challenge; the token goes in as RFC 6750's Bearer credential.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tpx"'}

# crates.io's own words where a client may match on them; tpx's sentence follows.
CRATES_DETAILS = {"token_reused": "JWT has already been used"}


def render_crates(problem: Problem) -> Response:
    detail = with_hints(problem)
    if problem.code in CRATES_DETAILS:
        detail = f"{CRATES_DETAILS[problem.code]}: {detail}"
    return crates_error(crates_status(problem), detail, retry_headers(problem))


async def _crates_exchange(request: Request) -> Response:
    minted = await exchange(request, body_type=IdTokenBody)
    return NoStoreJSONResponse(CratesToken(minted.token))


async def _crates_revoke(request: Request) -> Response:
    header = request.headers.get("authorization")
    if header is None:
        return crates_error(401, "Missing authorization header; send `Authorization: Bearer <token>`", CHALLENGE)
    scheme, _, credential = header.strip().partition(" ")
    credential = credential.strip()
    if not credential and tokens.is_well_formed(scheme):
        credential = scheme  # the raw token, as crates.io also accepts it
    elif scheme.lower() != "bearer" or not credential:
        return crates_error(401, "Invalid authorization header; send `Authorization: Bearer <token>`", CHALLENGE)
    if not tokens.is_well_formed(credential):
        return crates_error(400, "this is not a tpx token (tpx_ followed by 46 letters and digits, with a valid "
                                 "checksum); check that the whole token was sent")
    await revoke_token(context(request), credential, reason="revoked by holder")
    return Response(status_code=204)


@guarded(render_crates)
async def crates_tokens(request: Request) -> Response:
    """POST exchanges an ID token; DELETE revokes the bearer token (idempotent, like crates.io)."""
    if request.method == "POST":
        return await _crates_exchange(request)
    if request.method == "DELETE":
        return await _crates_revoke(request)
    return crates_error(405, f"{request.method} is not allowed on {CRATES_TOKENS_PATH}; use POST or DELETE",
                        {"Allow": "POST, DELETE"})


# --- PyPI ------------------------------------------------------------------------------------

PYPI_CODES: dict[str, str] = {
    "malformed_request": "invalid-payload",
    "unsupported_media_type": "invalid-payload",
    "request_too_large": "invalid-payload",
    "malformed_token": "invalid-payload",
    "unknown_issuer": "invalid-payload",
    "invalid_token": "invalid-token",
    "token_reused": "invalid-reuse-token",
    "no_matching_publisher": "invalid-publisher",
    "forbidden_trigger": "invalid-publisher",
    "rate_limited": "rate-limited",
    "keys_unavailable": "unavailable",
    "unavailable": "unavailable",
    "internal": "internal-error",
}


def pypi_status(problem: Problem) -> int:
    """PyPI answers every refusal with 422; rate limits and outages keep 429/5xx so clients know to retry."""
    return problem.status if problem.status == 429 or problem.status >= 500 else 422


class PypiToken(msgspec.Struct):
    """PyPI's mint-token answer; `expires` in seconds since the epoch."""

    success: Literal[True]
    token: PublishToken
    expires: int


class PypiErrorDetail(msgspec.Struct):
    code: Annotated[str, Meta(description="PyPI's error code, e.g. invalid-publisher")]
    description: str


class PypiError(msgspec.Struct, omit_defaults=True):
    """PyPI's error shape (a 405 carries the message alone)."""

    message: str
    errors: list[PypiErrorDetail] = []


class PypiAudience(msgspec.Struct):
    audience: Annotated[str, Meta(description="the audience to request the CI provider's ID token for")]


def pypi_error(status: int, code: str, description: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(PypiError("Token request failed", [PypiErrorDetail(code, description)]), status_code=status,
                        headers=headers)


def render_pypi(problem: Problem) -> Response:
    return pypi_error(pypi_status(problem), PYPI_CODES.get(problem.code, "invalid-payload"), with_hints(problem),
                      retry_headers(problem))


def _mint_token(path: str) -> Handler:
    @guarded(render_pypi)
    async def mint_token(request: Request) -> Response:
        """POST {"token": <ID token>} -> {"success": true, "token", "expires": <epoch seconds>}."""
        if request.method != "POST":
            return pypi_error(405, "invalid-payload", f"{request.method} is not allowed on {path}; use POST",
                              {"Allow": "POST"})
        minted = await exchange(request, body_type=PypiTokenBody, any_content_type=True)
        return NoStoreJSONResponse(PypiToken(True, minted.token, int(minted.expires_at.timestamp())))

    return mint_token


pypi_mint_token = _mint_token(PYPI_MINT_PATH)
pypi_mint_token_legacy = _mint_token(PYPI_LEGACY_MINT_PATH)


@guarded(render_pypi)
async def pypi_audience(request: Request) -> Response:
    """The audience CI clients must request their ID token for (TPX_AUDIENCE)."""
    if request.method not in ("GET", "HEAD"):
        return JSONResponse(PypiError(f"{request.method} is not allowed on {PYPI_AUDIENCE_PATH}; use GET"),
                            status_code=405, headers={"Allow": "GET, HEAD"})
    return JSONResponse(PypiAudience(context(request).settings.audience))


def compat_routes() -> list[Route]:
    return [
        Route(CRATES_TOKENS_PATH, crates_tokens, methods=ALL_METHODS),
        Route(PYPI_AUDIENCE_PATH, pypi_audience, methods=ALL_METHODS),
        Route(PYPI_MINT_PATH, pypi_mint_token, methods=ALL_METHODS),
        Route(PYPI_LEGACY_MINT_PATH, pypi_mint_token_legacy, methods=ALL_METHODS),
    ]

