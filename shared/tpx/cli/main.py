"""The `tpx` command: one entry point for every service and operator task.

Each command lives in its own module and imports the service it runs only
when that command is chosen, so `tpx revoker` never loads the exchange. A
server command (`tpx exchange`, ...) parses with the service commands alone, so
a server process loads none of the operator and CI tooling (aio-pika, httpx and
the client: 8 MB of resident memory in each replica).
"""

from __future__ import annotations

import argparse
import sys

from tpx.cli import services
from tpx.core import build

SERVER_COMMANDS = ("migrate", "exchange", "jwks-refresher", "revoker")


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
    args = build_parser(servers_only=bool(argv) and argv[0] in SERVER_COMMANDS).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
