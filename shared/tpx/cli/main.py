"""The `tpx` command: one entry point for every service and operator task.

Each command lives in its own module and imports the service it runs only
when that command is chosen, so `tpx revoker` never loads the exchange.
"""

from __future__ import annotations

import argparse
import sys

from tpx import ci
from tpx.ci import cargo_credential
from tpx.cli import admin, audit, demo, services


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpx", description="Trusted publishing as a service.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    services.register(sub)
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
        return cargo_credential.main()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
