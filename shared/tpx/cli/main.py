"""The `tpx` command: one entry point for every service and operator task."""

from __future__ import annotations

import argparse
import asyncio
import sys

from tpx.core.config import ConfigError, Settings


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(f"tpx: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _configure_logging(settings: Settings) -> None:
    from tpx.core.logging import configure

    configure(settings.log_format, settings.log_level)


def cmd_migrate(_args: argparse.Namespace) -> int:
    from tpx.core.db.migrate import SchemaMismatch, migrate
    from tpx.core.db.pool import DatabaseUnreachable, connect

    settings = load_settings()

    async def run() -> int:
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

    return asyncio.run(run())


def _run_service(name: str, serve_factory) -> int:
    from tpx.core.db.migrate import SchemaMismatch
    from tpx.core.serving.lifecycle import run, run_until_signalled

    settings = load_settings()
    _configure_logging(settings)
    try:
        run(run_until_signalled(name, lambda stop: serve_factory(settings, stop)))
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
        # Several processes on one socket, supervised by uvicorn (restarts, signals, graceful drain).
        import uvicorn

        from tpx.core.serving.server import uvicorn_config

        _configure_logging(settings)
        options = uvicorn_config(None, settings).__dict__
        keep = ("host", "port", "lifespan", "log_level", "log_config", "access_log", "server_header", "proxy_headers",
                "timeout_keep_alive", "timeout_graceful_shutdown", "limit_concurrency",
                "h11_max_incomplete_event_size")
        uvicorn.run("tpx.exchange.asgi:app_from_env", factory=True, workers=settings.workers,
                    **{k: options[k] for k in keep if k in options})
        return 0
    from tpx.exchange.service import serve

    return _run_service("exchange", serve)


def cmd_jwks_refresher(_args: argparse.Namespace) -> int:
    from tpx.jwks_refresher.service import serve

    return _run_service("jwks-refresher", serve)


def cmd_revoker(_args: argparse.Namespace) -> int:
    from tpx.revoker.service import serve

    return _run_service("revoker", serve)


def cmd_dev(_args: argparse.Namespace) -> int:
    from tpx.cli.devstack import serve

    return _run_service("dev", serve)


def cmd_demo(args: argparse.Namespace) -> int:
    from tpx.cli.demo import main as demo_main

    return demo_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpx", description="Trusted publishing as a service.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("migrate", help="apply database migrations (safe to run from several replicas)").set_defaults(func=cmd_migrate)
    sub.add_parser("exchange", help="run the exchange HTTP service").set_defaults(func=cmd_exchange)
    sub.add_parser("jwks-refresher", help="run the worker that keeps issuer keys fresh").set_defaults(func=cmd_jwks_refresher)
    sub.add_parser("revoker", help="run the worker that enforces expiry and revocations").set_defaults(func=cmd_revoker)
    sub.add_parser("dev", help="run the exchange, the jwks-refresher and the revoker in one process (laptop)").set_defaults(func=cmd_dev)
    demo = sub.add_parser("demo", help="run the whole stack with a loopback development issuer and show an exchange")
    demo.add_argument("--keep-running", action="store_true", help="keep the stack running after the tour")
    demo.set_defaults(func=cmd_demo)
    from tpx import ci
    from tpx.cli import admin as admin_cli, audit
    from tpx.ci import cargo_credential

    audit.register(sub)
    admin_cli.register(sub)
    ci.register(sub)
    cargo_credential.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cargo-plugin"]:
        # cargo runs `<program> --cargo-plugin` for `credential-provider = ["tpx", "cargo-credential"]`.
        from tpx.ci.cargo_credential import main as cargo_main

        return cargo_main()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
