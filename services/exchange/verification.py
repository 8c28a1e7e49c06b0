"""From an untrusted string to a verified, typed CI identity; no database I/O.

The issuer and key come from the in-memory key cache. Everything here either
returns a verified identity or raises the Problem the contract prescribes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tpx.errors import Problem
from tpx.jose import parse_compact, verify
from tpx.keycache import IssuerEntry, KeyCache
from tpx.providers import get_provider
from tpx.providers.base import Identity, Provider


@dataclass(frozen=True)
class VerifiedToken:
    issuer: IssuerEntry
    provider: Provider
    identity: Identity
    claims: dict[str, Any]

    @property
    def jti(self) -> str:
        return self.claims["jti"]

    @property
    def exp(self) -> int:
        return self.claims["exp"]


def verify_id_token(value: object, keycache: KeyCache, leeway: int, now: int | None = None) -> VerifiedToken:
    token = parse_compact(value)
    issuer = keycache.issuer(token.issuer)
    if issuer is None:
        raise Problem(
            "unknown_issuer",
            f"the token's issuer {token.issuer[:200]!r} is not registered with this service (or is disabled); "
            "tokens are accepted from the registered issuers only",
            hints=["an operator can register an issuer with POST /v1/admin/issuers"],
        )
    claims = verify(token, issuer.policy, issuer.keys.get(token.kid), now=int(time.time()) if now is None else now,
                    leeway=leeway)
    provider = get_provider(issuer.kind)
    identity = provider.identity(claims, issuer.url)
    return VerifiedToken(issuer, provider, identity, claims)
