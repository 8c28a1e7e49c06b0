"""The baseline: a bare Starlette endpoint served by the same uvicorn configuration as the exchange."""

from __future__ import annotations

import json
import os

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


if __name__ == "__main__":
    settings = Settings.from_env({"TPX_PORT": os.environ["BASELINE_PORT"]})
    uvicorn.Server(uvicorn_config(Starlette(routes=[Route("/echo", echo, methods=["POST"])]), settings)).run()
