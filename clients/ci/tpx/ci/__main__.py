"""`python -m tpx.ci exchange|revoke|cargo-credential`: the client without the service's `tpx` entry point.

Handy where only the package is installed (or a job pins it by module path),
and what the tests run in a subprocess.
"""

from __future__ import annotations

import argparse
import sys

from tpx.ci import add_commands
from tpx.ci import cargo_credential


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tpx.ci", description="tpx's CI client.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(commands)
    cargo_credential.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.func is not cargo_credential.run:  # cargo may pass arguments of its own
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
