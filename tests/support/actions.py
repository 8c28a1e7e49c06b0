"""A stand-in for the GitHub Actions runner's ID token endpoint (ACTIONS_ID_TOKEN_REQUEST_URL)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class ActionsTokenEndpoint:
    """Stands in for the runner's ACTIONS_ID_TOKEN_REQUEST_URL (which already carries ?api-version=2.0)."""

    repo: Any
    claims: dict[str, Any] = field(default_factory=dict)
    bearer: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    audiences: list[str] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    url: str = ""

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[Route("/_apis/idtoken", self.token, methods=["GET"])])

    async def token(self, request: Request) -> Response:
        if request.headers.get("authorization", "").lower() != f"bearer {self.bearer}".lower():
            return JSONResponse({"message": "bad runtime token"}, status_code=401)
        if request.query_params.get("api-version") != "2.0" or "audience" not in request.query_params:
            return JSONResponse({"message": "missing api-version or audience"}, status_code=400)
        audience = request.query_params["audience"]
        self.audiences.append(audience)
        jwt = self.repo.token(audience=audience, **self.claims)
        self.issued.append(jwt)
        return JSONResponse({"value": jwt})

    def env(self, tpx_url: str, **extra: str) -> dict[str, str]:
        return {"GITHUB_ACTIONS": "true", "ACTIONS_ID_TOKEN_REQUEST_URL": f"{self.url}/_apis/idtoken?api-version=2.0",
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN": self.bearer, "TPX_URL": tpx_url, **extra}
