"""The baseline: bare Starlette endpoints served by the same uvicorn configuration as the exchange.

`POST /echo` parses the JSON body and answers (bench/exchange.py). `POST /decode` also verifies the
body's `jwt` with PyJWT (RS256 against BASELINE_JWK, a public JWK, checking `exp`, `nbf`, `aud`
against BASELINE_AUDIENCE and `iss` against BASELINE_ISSUER): the least a token exchange must do
(bench/peer.py). It is mounted only when BASELINE_JWK is set.
"""

from __future__ import annotations

import json
import os

import jwt
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tpx.core.config import Settings
from tpx.core.serving.server import uvicorn_config


async def echo(request: Request) -> JSONResponse:
    body = json.loads(await request.body())
    return JSONResponse({"ok": True, "size": len(body)})


def decoder(environ: dict[str, str]) -> Route:
    key = jwt.PyJWK(json.loads(environ["BASELINE_JWK"]), algorithm="RS256")
    audience, issuer = environ.get("BASELINE_AUDIENCE", "tpx"), environ.get("BASELINE_ISSUER")

    async def decode(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        claims = jwt.decode(body["jwt"], key, algorithms=["RS256"], audience=audience, issuer=issuer)
        return JSONResponse({"ok": True, "sub": claims["sub"]})

    return Route("/decode", decode, methods=["POST"])


if __name__ == "__main__":
    settings = Settings.from_env({"TPX_PORT": os.environ["BASELINE_PORT"]})
    routes = [Route("/echo", echo, methods=["POST"])]
    if os.environ.get("BASELINE_JWK"):
        routes.append(decoder(dict(os.environ)))
    uvicorn.Server(uvicorn_config(Starlette(routes=routes), settings)).run()
