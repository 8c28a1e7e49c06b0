"""`POST /v1/token`: RFC 8693 OAuth 2.0 Token Exchange, for clients that speak OAuth.

The same exchange as `POST /v1/exchange` (`counted_exchange`: limits, verification, replay
protection, minting, events, metrics): the CI provider's ID token is the `subject_token`,
`audience` (a package name) and `resource` (`urn:tpx:package:<name>`) name the packages asked
for, `scope` the permissions, and the tpx extension `lifetime_seconds` a shorter lifetime.

Refusals come in OAuth's shape (RFC 6749 section 5.2) with tpx's sentence in
`error_description` and tpx's `code`. An invalid or unacceptable subject token is
`invalid_request`, as RFC 8693 section 2.2.2 requires (not `invalid_grant`); a package that is
not granted is `invalid_target`, a permission `invalid_scope`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from tpx.core import bodies
from tpx.core.bodies import text
from tpx.core.errors import Problem
from tpx.core.inputs import invalid, show
from tpx.core.providers.base import PACKAGE_RE, PACKAGE_TEXT, PERMISSIONS

from tpx.exchange.context import ServiceContext
from tpx.exchange.http import FORM_TYPE, JSONResponse, media_type, parse_form, read_body, request_id_var
from tpx.exchange.minting import Narrowing, PublishToken
from tpx.exchange.routes.compat import guarded, retry_headers, with_hints
from tpx.exchange.routes.exchange import ID_TOKEN_TEXT, LIFETIME_TEXT, Lifetime, counted_exchange
from tpx.exchange.verification import VerifiedToken, verify_id_token

PATH = "/v1/token"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
SUBJECT_TOKEN_TYPES = ("urn:ietf:params:oauth:token-type:id_token", "urn:ietf:params:oauth:token-type:jwt")
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
PACKAGE_URN = "urn:tpx:package:"
REPEATABLE = ("audience", "resource")   # RFC 8693 section 2.1; every other parameter at most once
MAX_TARGETS = 100
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}   # RFC 6749 section 5.1

Targets = Annotated[list[Annotated[str, Meta(max_length=300)]], Meta(max_length=MAX_TARGETS)]
Scope = text(r"[a-z-]{1,32}(?: [a-z-]{1,32}){0,9}", f"space-separated permissions, each {bodies.choices(PERMISSIONS)}")


class TokenExchangeRequest(msgspec.Struct, kw_only=True, frozen=True):
    """The form parameters of `POST /v1/token` (unknown parameters are ignored, as RFC 6749 asks)."""

    grant_type: Annotated[str, Meta(description=f"{GRANT_TYPE}")]
    subject_token: Annotated[str, Meta(description=ID_TOKEN_TEXT)]
    subject_token_type: Annotated[Literal[SUBJECT_TOKEN_TYPES], Meta(  # type: ignore[valid-type]
        description=bodies.choices(SUBJECT_TOKEN_TYPES))]
    requested_token_type: Annotated[Literal[ACCESS_TOKEN], Meta(description=f'"{ACCESS_TOKEN}"')] | None = None
    audience: Annotated[Targets, Meta(description=f"a package the token is for (repeatable), {PACKAGE_TEXT}")] \
        | None = None
    resource: Annotated[Targets, Meta(description=f"a package the token is for (repeatable), as "
                                                  f"{PACKAGE_URN}<name>")] | None = None
    scope: Scope | None = None
    lifetime_seconds: Annotated[Lifetime, Meta(description=f"a tpx extension: {LIFETIME_TEXT}")] | None = None
    actor_token: str | None = None
    actor_token_type: str | None = None


class TokenExchangeResult(msgspec.Struct):
    """RFC 8693 section 2.2.1's answer, with tpx's own members after the standard ones."""

    access_token: PublishToken
    issued_token_type: Literal[ACCESS_TOKEN]  # type: ignore[valid-type]
    token_type: Literal["Bearer"]
    expires_in: int
    scope: Annotated[str, Meta(description="the permissions the token carries on every one of its packages")]
    token_id: str
    packages: list[str]
    permissions: Annotated[dict[str, list[str]], Meta(description="package -> the permissions granted on it")]


class OAuthError(msgspec.Struct, omit_defaults=True):
    """RFC 6749 section 5.2's error, with tpx's code, its exact sentence and the request id."""

    error: Literal["invalid_request", "invalid_target", "invalid_scope", "unsupported_grant_type",
                   "temporarily_unavailable", "server_error"]
    error_description: Annotated[str, Meta(description="tpx's sentence (and hints) in the characters RFC 6749 "
                                                       "allows there")]
    code: str
    detail: Annotated[str, Meta(description="tpx's sentence exactly")]
    request_id: str | None = None


# --- reading the request -------------------------------------------------------------------------------------

def packages_asked(typed: TokenExchangeRequest) -> tuple[str, ...] | None:
    """The packages `audience` and `resource` name together (None: all that are granted)."""
    if typed.audience is None and typed.resource is None:
        return None
    names = list(typed.audience or ())
    for uri in typed.resource or ():
        if not uri.startswith(PACKAGE_URN):
            raise invalid("not_granted", "resource", f"{show(uri)} names no package; tpx names a package as "
                                                     f"{PACKAGE_URN}<name>")
        names.append(uri.removeprefix(PACKAGE_URN))
    for name in names:
        if not PACKAGE_RE.fullmatch(name):
            raise invalid("not_granted", "packages", f"{show(name)} is not a package name; it must be {PACKAGE_TEXT}")
    return tuple(dict.fromkeys(names))


def narrowing_of(typed: TokenExchangeRequest) -> Narrowing:
    permissions = None
    if typed.scope is not None:
        permissions = tuple(dict.fromkeys(typed.scope.split(" ")))
        unknown = [p for p in permissions if p not in PERMISSIONS]
        if unknown:
            raise invalid("not_granted", "permissions", f"{show(unknown[0])} is not a tpx permission; scope takes "
                                                        f"{bodies.choices(PERMISSIONS)}")
    return Narrowing(packages=packages_asked(typed), permissions=permissions, lifetime_seconds=typed.lifetime_seconds)


async def read_token_request(request: Request, ctx: ServiceContext) -> tuple[VerifiedToken, Narrowing]:
    kind = media_type(request)
    if kind != FORM_TYPE:
        raise Problem("unsupported_media_type", f"Content-Type {kind or '(none)'!r} is not accepted here; "
                                                f"send the parameters as {FORM_TYPE} (RFC 8693 section 2.1)")
    form = parse_form(await read_body(request, ctx.settings.max_body_bytes), max_fields=250, repeatable=REPEATABLE,
                      blank_is_absent=True)
    typed = bodies.convert(form, TokenExchangeRequest, "malformed_request", strict=False)
    if typed.grant_type != GRANT_TYPE:
        raise invalid("malformed_request", "grant_type", f"{show(typed.grant_type)} is not supported here; this "
                                                         f"endpoint takes {GRANT_TYPE} only")
    if typed.actor_token is not None or typed.actor_token_type is not None:
        raise invalid("malformed_request", "actor_token", "delegation is not supported: send the CI job's ID token "
                                                          "as subject_token and no actor_token")
    narrowing = narrowing_of(typed)
    return await verify_id_token(typed.subject_token, ctx.keycache, ctx.settings), narrowing


# --- answering -----------------------------------------------------------------------------------------------

# tpx code -> OAuth error (RFC 6749 section 5.2, RFC 8693 section 2.2.2); the rest are invalid_request.
ERRORS = {"rate_limited": "temporarily_unavailable", "keys_unavailable": "temporarily_unavailable",
          "unavailable": "temporarily_unavailable", "internal": "server_error"}
KEPT_STATUSES = {413, 415, 429}
_NOT_ALLOWED_IN_DESCRIPTION = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')


def oauth_error(problem: Problem) -> str:
    if problem.code == "not_granted":
        return "invalid_scope" if problem.extra.get("field") == "permissions" else "invalid_target"
    if problem.code == "malformed_request" and problem.extra.get("field") == "grant_type":
        return "unsupported_grant_type"
    return ERRORS.get(problem.code, "invalid_request")


def render_oauth(problem: Problem) -> Response:
    """RFC 6749 section 5.2: 400 for a client error (413, 415 and 429 kept, like 5xx, so that a client and
    any proxy can tell "retry later" from "fix the request")."""
    status = problem.status if problem.status in KEPT_STATUSES or problem.status >= 500 else 400
    sentence = with_hints(problem)
    description = _NOT_ALLOWED_IN_DESCRIPTION.sub("'", sentence.replace("\\", "/"))
    body = OAuthError(error=oauth_error(problem), error_description=description, code=problem.code,
                      detail=problem.detail, request_id=request_id_var.get())
    return JSONResponse(body, status_code=status, headers={**NO_STORE, **retry_headers(problem)})


@guarded(render_oauth)
async def token(request: Request) -> Response:
    minted = await counted_exchange(request, read_token_request)
    common = set.intersection(*(set(granted) for granted in minted.permissions.values()))
    return JSONResponse(TokenExchangeResult(
        access_token=minted.token, issued_token_type=ACCESS_TOKEN, token_type="Bearer",
        expires_in=int((minted.expires_at - minted.issued_at).total_seconds()),
        scope=" ".join(p for p in PERMISSIONS if p in common), token_id=minted.token_id, packages=minted.packages,
        permissions=minted.permissions), headers=NO_STORE)
