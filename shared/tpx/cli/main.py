"""The `tpx` command: one entry point for every service and operator task.

Each command lives in its own module and imports the service it runs only
when that command is chosen, so `tpx revoker` never loads the exchange. A
server command (`tpx exchange`, ...) parses with the service commands alone, so
a server process loads none of the operator and CI tooling (aio-pika, httpx and
the client: 8 MB of resident memory in each replica).
"""

from __future__ import annotations

import argparse
import logging
import sys

from tpx.cli import services
from tpx.core import build
from tpx.core.broker import describe
from tpx.core.logging import RetryChatter

SERVER_COMMANDS = ("migrate", "exchange", "jwks-refresher", "revoker")

# Exit statuses of operator commands (README, "Exit codes"); `tpx ci` keeps its own (1 failed, 2 usage).
EXIT_FAILED = 1        # the command ran and the answer is no: a refusal, a tampered chain
EXIT_USAGE = 2         # argparse: a wrong option or argument
EXIT_UNREACHABLE = 3   # the database, the broker or the service did not answer
EXIT_CONFIG = 4        # a file or setting the command needs is missing or unreadable


def build_parser(*, servers_only: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpx", description="Trusted publishing as a service.")
    parser.add_argument("--version", action="version", version=f"tpx {build.version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    services.register(sub)
    if servers_only:
        return parser
    from tpx import ci
    from tpx.ci import cargo_credential
    from tpx.cli import admin, audit, demo

    demo.register(sub)
    audit.register(sub)
    admin.register(sub)
    ci.register(sub)
    cargo_credential.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cargo-plugin"]:
        # cargo runs `<program> --cargo-plugin` for `credential-provider = ["tpx", "cargo-credential"]`.
        from tpx.ci import cargo_credential

        return cargo_credential.main()
    servers_only = bool(argv) and argv[0] in SERVER_COMMANDS
    args = build_parser(servers_only=servers_only).parse_args(argv)
    if not servers_only and not logging.getLogger().handlers:
        # Operator commands: the libraries' per-attempt connection lines would bury the one sentence below.
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(RetryChatter(logging.WARNING))
        logging.getLogger().addHandler(handler)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except _unreachable_errors() as exc:
        print(f"tpx: {_what_did_not_answer(exc)} did not answer ({describe(exc)}); check that it runs and "
              "the URL in the environment (TPX_DATABASE_URL, TPX_AMQP_URL, TPX_URL) points at it", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        print(f"tpx: cannot read {exc.filename}: {exc.strerror}; check the path in the environment "
              "(e.g. TPX_ADMIN_TOKEN_FILE)", file=sys.stderr)
        return EXIT_CONFIG


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    """Failures meaning "a dependency is away", from the client libraries this command loaded (a
    library that was never imported cannot have raised)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("aiormq.exceptions", "AMQPConnectionError"), ("httpx", "TransportError"),
                         ("asyncpg.exceptions", "PostgresConnectionError"),
                         ("asyncpg.exceptions", "CannotConnectNowError"), ("tpx.core.db.pool", "DatabaseUnreachable")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def _what_did_not_answer(exc: BaseException) -> str:
    module = type(exc).__module__
    if module.startswith(("aiormq", "aio_pika")):
        return "the broker (RabbitMQ)"
    if module.startswith(("asyncpg", "tpx.core.db")):
        return "the database (PostgreSQL)"
    if module.startswith(("httpx", "httpcore")):
        return "the tpx service"
    return "a dependency"


if __name__ == "__main__":
    sys.exit(main())
