"""An import path for uvicorn's process supervisor (TPX_WORKERS > 1): it builds the app in each worker."""

from __future__ import annotations

from starlette.applications import Starlette

from tpx.core.config import Settings
from tpx.core.logging import configure

from tpx.exchange.app import create_app


def app_from_env() -> Starlette:
    settings = Settings.from_env()
    configure(settings.log_format, settings.log_level)
    return create_app(settings)
