"""A development OIDC issuer on loopback, for `tpx demo` and local experiments only.

It generates a throwaway RSA key at start, serves a discovery document and a
JWKS over HTTP on 127.0.0.1, and mints ID tokens shaped like GitHub Actions'.
Nothing enables it by default: only `tpx demo` starts it, and the exchange
accepts its loopback URL only with TPX_INSECURE_LOOPBACK_ISSUERS=1.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


class DevIssuer:
    def __init__(self) -> None:
        self.kid = f"dev-{uuid.uuid4().hex[:8]}"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.url = ""

    def app(self) -> Starlette:
        async def discovery(_request):
            return JSONResponse({
                "issuer": self.url, "jwks_uri": f"{self.url}/.well-known/jwks",
                "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            })

        async def jwks(_request):
            public = jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
            public.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
            return JSONResponse({"keys": [public]}, headers={"Cache-Control": "max-age=300"})

        return Starlette(routes=[
            Route("/.well-known/openid-configuration", discovery),
            Route("/.well-known/jwks", jwks),
        ])

    def github_token(self, *, repository: str, workflow: str = "release.yml", ref: str = "refs/tags/v1.0.0",
                     environment: str | None = "release", owner_id: str = "1001", repository_id: str = "2002",
                     audience: str = "tpx", event_name: str = "push", **extra: Any) -> str:
        now = int(time.time())
        owner = repository.split("/", 1)[0]
        claims: dict[str, Any] = {
            "jti": str(uuid.uuid4()), "sub": f"repo:{repository}:environment:{environment}", "aud": audience,
            "ref": ref, "sha": "8f4e9c2d1b0a7f6e5d4c3b2a19087f6e5d4c3b2a", "repository": repository,
            "repository_owner": owner, "repository_owner_id": owner_id, "repository_id": repository_id,
            "repository_visibility": "public", "run_id": str(now), "run_number": "1", "run_attempt": "1",
            "runner_environment": "github-hosted", "actor": "octocat", "actor_id": "1", "workflow": "Release",
            "workflow_ref": f"{repository}/.github/workflows/{workflow}@{ref}",
            "workflow_sha": "8f4e9c2d1b0a7f6e5d4c3b2a19087f6e5d4c3b2a",
            "job_workflow_ref": f"{repository}/.github/workflows/{workflow}@{ref}",
            "head_ref": "", "base_ref": "", "event_name": event_name, "ref_type": "tag", "ref_protected": "true",
            "iss": self.url, "nbf": now - 5, "iat": now, "exp": now + 300,
        }
        if environment is not None:
            claims["environment"] = environment
        claims.update(extra)
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid, "x5t": "dev"})
