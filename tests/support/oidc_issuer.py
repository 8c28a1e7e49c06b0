"""A real OIDC issuer on loopback: generated keys, discovery document and JWKS over HTTP.

It stands in for token.actions.githubusercontent.com, which tests cannot reach,
and mints ID tokens shaped exactly like GitHub's (see tests/support/claims.py).
Its signing keys are throwaway keys generated per test session.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class SigningKey:
    kid: str
    private_key: Any
    alg: str = "RS256"

    def public_jwk(self) -> dict[str, Any]:
        if self.alg.startswith("ES"):
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        else:
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": self.alg})
        return jwk


def new_rsa_key(kid: str | None = None, bits: int = 2048) -> SigningKey:
    return SigningKey(kid or f"key-{uuid.uuid4().hex[:12]}", rsa.generate_private_key(public_exponent=65537, key_size=bits))


def new_ec_key(kid: str | None = None) -> SigningKey:
    return SigningKey(kid or f"ec-{uuid.uuid4().hex[:12]}", ec.generate_private_key(ec.SECP256R1()), alg="ES256")


@dataclass
class LoopbackIssuer:
    """Serve with tests.support.servers.serve(issuer.app); then set `issuer.url`."""

    keys: list[SigningKey] = field(default_factory=lambda: [new_rsa_key()])
    url: str = ""
    jwks_requests: int = 0
    available: bool = True
    extra_jwks_keys: list[dict[str, Any]] = field(default_factory=list)

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/.well-known/openid-configuration", self._discovery),
            Route("/.well-known/jwks", self._jwks),
        ])

    async def _discovery(self, request: Request) -> Response:
        if not self.available:
            return Response(status_code=503)
        return JSONResponse({
            "issuer": self.url,
            "jwks_uri": f"{self.url}/.well-known/jwks",
            "subject_types_supported": ["public", "pairwise"],
            "response_types_supported": ["id_token"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref", "repository"],
            "scopes_supported": ["openid"],
        })

    async def _jwks(self, request: Request) -> Response:
        self.jwks_requests += 1
        if not self.available:
            return Response(status_code=503)
        return JSONResponse(self.jwks(), headers={"Cache-Control": "max-age=300"})

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys] + list(self.extra_jwks_keys)}

    @property
    def signing_key(self) -> SigningKey:
        return self.keys[0]

    def mint(self, claims: dict[str, Any], *, key: SigningKey | None = None, headers: dict[str, Any] | None = None) -> str:
        key = key or self.signing_key
        payload = {"iss": self.url, **claims}
        header = {"kid": key.kid, "x5t": "example-thumbprint", **(headers or {})}
        return jwt.encode(payload, key.private_key, algorithm=key.alg, headers=header)


def now() -> int:
    return int(time.time())
