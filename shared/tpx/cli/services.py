"""`tpx migrate`, `tpx exchange`, `tpx jwks-refresher`, `tpx revoker`, `tpx dev`: running tpx itself.

This is where the services are wired to the process: settings, logging,
signals, and one clear sentence instead of a traceback when a service cannot
start (wrong schema, unreachable database, taken port).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from typing import Any, Awaitable, Callable

from tpx.cli.settings import load_settings
from tpx.core.config import Settings
from tpx.core.db.migrate import SchemaMismatch, migrate
from tpx.core.db.pool import DatabaseUnreachable, connect
from tpx.core.logging import configure
from tpx.core.serving.lifecycle import run, run_until_signalled

Serve = Callable[[Settings, asyncio.Event], Awaitable[None]]


def cmd_migrate(_args: argparse.Namespace) -> int:
    settings = load_settings()

    async def apply() -> int:
        try:
            conn = await connect(settings)
        except DatabaseUnreachable as exc:
            print(f"tpx migrate: {exc}", file=sys.stderr)
            return 1
        try:
            applied = await migrate(conn, progress=lambda line: print(f"tpx migrate: {line}", flush=True))
        except SchemaMismatch as exc:
            print(f"tpx migrate: {exc}", file=sys.stderr)
            return 1
        finally:
            await conn.close()
        print(f"tpx migrate: {len(applied)} migration(s) applied; the schema is up to date")
        return 0

    return asyncio.run(apply())


def run_service(name: str, serve: Serve) -> int:
    settings = load_settings()
    configure(settings.log_format, settings.log_level)
    try:
        run(run_until_signalled(name, lambda stop: serve(settings, stop)))
    except SchemaMismatch as exc:
        print(f"tpx {name}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"tpx {name}: cannot start: {exc.strerror or exc}; check TPX_HOST / TPX_PORT (or TPX_DATABASE_URL)",
              file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"tpx {name}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_exchange(_args: argparse.Namespace) -> int:
    settings = load_settings()
    if settings.workers > 1:
        return _exchange_processes(settings)
    from tpx.exchange.service import serve

    return run_service("exchange", serve)


def _exchange_processes(settings: Settings) -> int:
    """Several processes on one socket, supervised by uvicorn (restarts, signals, graceful drain)."""
    import uvicorn

    from tpx.core.serving.server import uvicorn_config

    configure(settings.log_format, settings.log_level)
    options: dict[str, Any] = uvicorn_config(None, settings).__dict__
    keep = ("host", "port", "lifespan", "log_level", "log_config", "access_log", "server_header", "proxy_headers",
            "timeout_keep_alive", "timeout_graceful_shutdown", "limit_concurrency", "h11_max_incomplete_event_size")
    # The processes keep their metrics in shared files, so any of them answers a scrape for all
    # (tpx.core.metrics). Set before they start: prometheus-client reads it at import.
    own_directory = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if own_directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tpx-metrics-")
    try:
        uvicorn.run("tpx.exchange.asgi:app_from_env", factory=True, workers=settings.workers,
                    **{k: options[k] for k in keep if k in options})
    finally:
        if own_directory:
            shutil.rmtree(os.environ.pop("PROMETHEUS_MULTIPROC_DIR"), ignore_errors=True)
    return 0


def cmd_jwks_refresher(_args: argparse.Namespace) -> int:
    from tpx.jwks_refresher.service import serve

    return run_service("jwks-refresher", serve)


def cmd_revoker(_args: argparse.Namespace) -> int:
    from tpx.revoker.service import serve

    return run_service("revoker", serve)


def cmd_dev(_args: argparse.Namespace) -> int:
    from tpx.cli.devstack import serve

    return run_service("dev", serve)


def register(sub: Any) -> None:
    sub.add_parser("migrate", help="apply database migrations (safe to run from several replicas)").set_defaults(
        func=cmd_migrate)
    sub.add_parser("exchange", help="run the exchange HTTP service").set_defaults(func=cmd_exchange)
    sub.add_parser("jwks-refresher", help="run the worker that keeps issuer keys fresh").set_defaults(
        func=cmd_jwks_refresher)
    sub.add_parser("revoker", help="run the worker that enforces expiry and revocations").set_defaults(
        func=cmd_revoker)
    sub.add_parser("dev", help="run the exchange, the jwks-refresher and the revoker in one process (laptop)"
                   ).set_defaults(func=cmd_dev)
