"""From an untrusted string to a verified, typed CI identity; no database I/O.

The issuer and key come from the in-memory key cache. Everything here either
returns a verified identity or raises the Problem the contract prescribes.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import msgspec

from tpx.core.config import Settings
from tpx.core.errors import Problem
from tpx.core.jose import parse_compact, verify
from tpx.core.jose.verify import UnverifiedToken
from tpx.core.providers import get_provider
from tpx.core.providers.base import Identity, Provider

from tpx.exchange.keycache import IssuerEntry, KeyCache


class VerifiedToken(msgspec.Struct, frozen=True):
    issuer: IssuerEntry
    provider: Provider
    identity: Identity
    claims: dict[str, Any]
    kid: str  # the key that verified it: the mint checks it is still stored
    # What replay protection claims per issuer: the `jti`, or for a provider that issues none (Google
    # Cloud, CircleCI) the SHA-256 of the decoded claims, so the same token can be exchanged once.
    jti: str

    @property
    def exp(self) -> int:
        return self.claims["exp"]


def _keys_unavailable(issuer: IssuerEntry, why: str) -> Problem:
    return Problem(
        "keys_unavailable",
        f"the signing keys of issuer {issuer.url} are {why}, so no token from it can be verified right now; "
        "retry in a minute",
        retry_after=30,
    )


async def verify_id_token(value: object, keycache: KeyCache, settings: Settings, now: int | None = None) -> VerifiedToken:
    """Parse, pick the issuer, find the key (asking for a refresh on an unknown kid), verify, build the identity.

    Fails closed: keys older than the maximum staleness, or no keys at all,
    give 503 keys_unavailable, never a verification against stale trust.
    """
    token = parse_compact(value)
    issuer = keycache.issuer(token.issuer)
    if issuer is None:
        raise Problem(
            "unknown_issuer",
            f"the token's issuer {token.issuer[:200]!r} is not registered with this service (or is disabled); "
            "tokens are accepted from the registered issuers only",
            hints=["an operator can register an issuer with POST /v1/admin/issuers"],
        )
    if token.kid not in issuer.keys and token.alg in issuer.policy.algorithms:
        issuer = await keycache.refresh_for_kid(issuer, token.kid)
        if not issuer.enabled:
            raise Problem("unknown_issuer", f"the issuer {issuer.url} was disabled; tokens from it are not accepted")
    moment = int(time.time()) if now is None else now
    if not issuer.keys:
        raise _keys_unavailable(issuer, "not available yet (the jwks-refresher has not fetched them)"
                                if issuer.keys_fetched_at is None else "not available")
    if issuer.keys_fetched_at is not None and moment - issuer.keys_fetched_at.timestamp() > settings.keys_max_staleness_seconds:
        raise _keys_unavailable(issuer, f"older than the maximum staleness of {settings.keys_max_staleness_seconds} s "
                                        "(the jwks-refresher cannot reach the issuer)")
    claims = verify(token, issuer.policy, issuer.keys.get(token.kid), now=moment, leeway=settings.leeway_seconds)
    provider = get_provider(issuer.kind)
    if provider.issues_jti and "jti" not in claims:
        raise Problem("malformed_token", f"The ID token has no 'jti' claim; {provider.name} tokens always carry one.")
    identity = provider.identity(claims, issuer.url)
    return VerifiedToken(issuer, provider, identity, claims, token.kid, replay_key(token, claims))


def replay_key(token: UnverifiedToken, claims: dict[str, Any]) -> str:
    """The token's `jti`, or `sha256:<hex>` of its decoded payload: never of the raw token string, whose
    signature can be re-encoded (a base64 variant that still verifies) to look like another token."""
    if "jti" in claims:
        return claims["jti"]
    payload = token.signing_input.split(b".", 1)[1]
    decoded = base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4))
    return "sha256:" + hashlib.sha256(decoded).hexdigest()
