"""The client side of tpx, run inside a CI job: `tpx ci exchange|revoke` and `tpx cargo-credential`.

The job asks its CI provider for an OIDC ID token (GitHub Actions' token
endpoint, or the variable GitLab's `id_tokens:` defines), exchanges it at
`POST /v1/exchange`, and hands the short-lived token to the next step without
ever printing it anywhere but the success path's output.

This module only builds argument parsers (stdlib only), so `tpx --help` stays
fast; the HTTP work is imported when a command runs.
"""

from __future__ import annotations

import argparse
from importlib import metadata
from typing import Any

def client_version() -> str:
    """The client's own distribution (tpx-ci) where installed alone, else the server's (tpx) it came with."""
    for distribution in ("tpx-ci", "tpx"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "0"


DEFAULT_ID_TOKEN_VARIABLE = "TPX_ID_TOKEN"
DEFAULT_ATTEMPTS = 5
DEFAULT_TIMEOUT = 30.0


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Options every client command shares: where tpx is and how patiently to talk to it."""
    parser.add_argument("--url", help="base URL of the tpx service (default: $TPX_URL)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds per HTTP request (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--attempts", type=int, default=DEFAULT_ATTEMPTS,
                        help=f"tries per request on 429/503 and connection errors (default {DEFAULT_ATTEMPTS})")


def add_id_token_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--audience",
                        help="GitHub Actions: the ID token audience (default: GET <url>/_/oidc/audience)")
    parser.add_argument("--id-token-variable", default=DEFAULT_ID_TOKEN_VARIABLE, metavar="NAME",
                        help="GitLab CI (or any CI): the variable holding the ID token, as defined by the "
                             f"job's id_tokens: (default {DEFAULT_ID_TOKEN_VARIABLE})")


def _run_exchange(args: argparse.Namespace) -> int:
    from tpx.ci.commands import run_exchange

    return run_exchange(args)


def _run_revoke(args: argparse.Namespace) -> int:
    from tpx.ci.commands import run_revoke

    return run_revoke(args)


def register(subparsers: Any) -> None:
    """Add `ci` with its `exchange` and `revoke` subcommands to a `tpx` subparsers object."""
    ci = subparsers.add_parser("ci", help="exchange or revoke a publish token inside a CI job",
                               description="Run inside a GitHub Actions or GitLab CI job.")
    add_commands(ci.add_subparsers(dest="ci_command", required=True, metavar="COMMAND"))


def add_commands(commands: Any) -> None:
    """Add `exchange` and `revoke` (under `tpx ci`, or at the top of `python -m tpx.ci`)."""
    exchange = commands.add_parser(
        "exchange", help="exchange the job's OIDC ID token for a tpx publish token",
        description="Exchange the job's OIDC ID token at POST /v1/exchange. The token is printed to stdout, "
                    "or written to $GITHUB_OUTPUT with --github-output; on GitHub Actions it is masked first.")
    add_connection_options(exchange)
    add_id_token_options(exchange)
    exchange.add_argument("--package", action="append", dest="packages", metavar="NAME",
                          help="ask for a token for this package only (repeat for several; default: every package "
                               "the job's publishers grant)")
    exchange.add_argument("--lifetime", type=int, metavar="SECONDS",
                          help="ask for a shorter-lived token (at least 60 s; never longer than the publishers allow)")
    exchange.add_argument("--github-output", metavar="NAME",
                          help="write NAME=<token> to the file named by $GITHUB_OUTPUT instead of stdout")
    exchange.set_defaults(func=_run_exchange)

    revoke = commands.add_parser(
        "revoke", help="revoke a tpx token (idempotent)",
        description="Revoke a tpx token at POST /v1/revoke. Succeeds for unknown, expired or already revoked "
                    "tokens; without any token it only warns, so an always-run cleanup step never fails a job.")
    add_connection_options(revoke)
    revoke.add_argument("--token", help="the token to revoke (default: $TPX_TOKEN)")
    revoke.set_defaults(func=_run_revoke)
