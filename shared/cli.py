"""The `tpx` command: one entry point for every service and operator task."""

from __future__ import annotations

import argparse
import asyncio
import sys

from tpx.config import ConfigError, Settings


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(f"tpx: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_migrate(_args: argparse.Namespace) -> int:
    from tpx.db.migrate import SchemaMismatch, migrate
    from tpx.db.pool import connect

    settings = _settings()

    async def run() -> int:
        try:
            conn = await connect(settings)
        except Exception as exc:  # noqa: BLE001 - say what failed and how to fix it
            print(f"tpx migrate: cannot connect to the database ({type(exc).__name__}: {exc}); "
                  "check TPX_DATABASE_URL and that PostgreSQL is running", file=sys.stderr)
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

    return asyncio.run(run())


def cmd_exchange(_args: argparse.Namespace) -> int:
    import uvicorn

    from tpx.exchange.app import create_app
    from tpx.logging import configure

    settings = _settings()
    configure(settings.log_format, settings.log_level)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level="warning", access_log=False,
        proxy_headers=False, server_header=False, timeout_graceful_shutdown=20, lifespan="on",
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpx", description="Trusted publishing as a service.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("migrate", help="apply database migrations (safe to run from several replicas)").set_defaults(func=cmd_migrate)
    sub.add_parser("exchange", help="run the exchange HTTP service").set_defaults(func=cmd_exchange)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
