"""`tpx-ci exchange|revoke|cargo-credential` (or `python -m tpx.ci ...`): the client on its own.

The entry point of the `tpx-ci` distribution (clients/ci/pyproject.toml), which
a release job installs without the server; the server's `tpx ci ...` runs the
same commands. Also what the tests run in a subprocess.
"""

from __future__ import annotations

import argparse
import sys

from tpx.ci import add_commands
from tpx.ci import cargo_credential, client_version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpx-ci", description="tpx's CI client.")
    parser.add_argument("--version", action="version", version=f"tpx-ci {client_version()}")
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
