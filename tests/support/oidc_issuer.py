"""A real OIDC issuer on loopback: generated keys, discovery document and JWKS over HTTP.

It stands in for token.actions.githubusercontent.com, which tests cannot reach,
and mints ID tokens shaped exactly like GitHub's (see tests/support/claims.py).
Its signing keys are throwaway keys generated per test session.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
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
    """Serve with tests.support.servers.serve(issuer.app); then set `issuer.url`.

    The optional knobs below make it misbehave the ways a real IdP can, for the
    jwks-refresher tests; left at their defaults it is a well-behaved issuer.
    """

    keys: list[SigningKey] = field(default_factory=lambda: [new_rsa_key()])
    url: str = ""
    jwks_requests: int = 0
    available: bool = True
    extra_jwks_keys: list[dict[str, Any]] = field(default_factory=list)
    discovery_requests: int = 0
    # The discovery document's `issuer` and `jwks_uri` (None: this issuer's own).
    discovery_issuer: str | None = None
    jwks_uri: str | None = None
    # The JWKS response: its headers, a raw body instead of the keys, whether to
    # stream that body without a Content-Length, and an Event to wait for first
    # (a slow IdP; set it before the server stops so the handler can finish).
    jwks_headers: dict[str, str] = field(default_factory=lambda: {"Cache-Control": "max-age=300"})
    jwks_body: bytes | None = None
    jwks_chunked: bool = False
    jwks_gate: asyncio.Event | None = None

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/.well-known/openid-configuration", self._discovery),
            Route("/.well-known/jwks", self._jwks),
        ])

    async def _discovery(self, request: Request) -> Response:
        self.discovery_requests += 1
        if not self.available:
            return Response(status_code=503)
        return JSONResponse({
            "issuer": self.url if self.discovery_issuer is None else self.discovery_issuer,
            "jwks_uri": f"{self.url}/.well-known/jwks" if self.jwks_uri is None else self.jwks_uri,
            "subject_types_supported": ["public", "pairwise"],
            "response_types_supported": ["id_token"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref", "repository"],
            "scopes_supported": ["openid"],
        })

    async def _jwks(self, request: Request) -> Response:
        self.jwks_requests += 1
        # The key set is read when the request arrives; a gate then holds the answer on the wire,
        # like a slow network, so a rotation meanwhile is not in this answer.
        document = self.jwks()
        if self.jwks_gate is not None:
            await self.jwks_gate.wait()
        if not self.available:
            return Response(status_code=503)
        if self.jwks_body is None:
            return JSONResponse(document, headers=self.jwks_headers)
        if self.jwks_chunked:
            body = self.jwks_body

            async def chunks():
                for start in range(0, len(body), 16384):
                    yield body[start:start + 16384]

            return StreamingResponse(chunks(), media_type="application/json", headers=self.jwks_headers)
        return Response(self.jwks_body, media_type="application/json", headers=self.jwks_headers)

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
