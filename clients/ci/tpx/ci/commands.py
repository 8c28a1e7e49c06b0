"""`tpx ci exchange` and `tpx ci revoke`: what runs, and what the job log shows.

The token is printed exactly once, on the success path, to stdout or to
$GITHUB_OUTPUT; on GitHub Actions the `::add-mask::` line comes first, so the
runner masks the token in everything printed after it. Everything else goes to
stderr: progress, refusals (code, detail, hints, the ID token's matching
claims), and never a token.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Mapping, TextIO

from tpx.ci.client import Exchanged, TpxClient, resolve_url
from tpx.ci.errors import CiError, Refused, UsageError
from tpx.ci.idtoken import detect
from tpx.ci.retry import RetryPolicy

_OUTPUT_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,99}")


def on_github(env: Mapping[str, str]) -> bool:
    return env.get("GITHUB_ACTIONS") == "true"


def escape_command(text: str) -> str:
    """Escape a value for a GitHub workflow command (actions/toolkit's rules)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def report(error: CiError, env: Mapping[str, str], stderr: TextIO | None = None) -> int:
    """Print a failure to stderr (with a GitHub annotation when on Actions); return the exit code."""
    stderr = stderr or sys.stderr
    headline = f"{error.message}: {error.detail}" if isinstance(error, Refused) else error.message
    if on_github(env):
        print(f"::error title=tpx::{escape_command(headline)}", file=stderr)
    print(f"tpx: {error.message}", file=stderr)
    for line in error.details:
        print(f"  {line}", file=stderr)
    stderr.flush()
    return error.exit_code


def policy_from(args: argparse.Namespace) -> RetryPolicy:
    if args.attempts < 1 or args.attempts > 20:
        raise UsageError(f"--attempts is {args.attempts}; use 1 to 20")
    if not 0 < args.timeout <= 600:
        raise UsageError(f"--timeout is {args.timeout}; use more than 0 and at most 600 seconds")
    return RetryPolicy(attempts=args.attempts)


def github_output(name: str | None, env: Mapping[str, str]) -> tuple[str, str] | None:
    """(name, file) for --github-output, checked before anything is minted."""
    if name is None:
        return None
    if not _OUTPUT_NAME_RE.fullmatch(name):
        raise UsageError(f"--github-output {name!r} is not a valid output name (letters, digits, '_' and '-')")
    path = env.get("GITHUB_OUTPUT")
    if not path:
        raise UsageError("--github-output needs $GITHUB_OUTPUT, which only GitHub Actions sets")
    return name, path


def deliver(token: str, output: tuple[str, str] | None, env: Mapping[str, str], stdout: TextIO) -> None:
    """Mask first, then hand the token over: the only place a token is ever written."""
    if on_github(env):
        stdout.write(f"::add-mask::{token}\n")
        stdout.flush()
    if output is None:
        stdout.write(f"{token}\n")
        stdout.flush()
        return
    name, path = output
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"{name}={token}\n")


def describe(result: Exchanged, output: tuple[str, str] | None) -> str:
    body = result.body
    packages = ", ".join(str(p) for p in body.get("packages") or []) or "(none listed)"
    where = f"step output {output[0]!r}" if output else "stdout"
    return (f"tpx: issued a token for {packages}; it expires at {body.get('expires_at', '?')} "
            f"(token id {body.get('token_id', '?')}), written to {where}")


def run_exchange(args: argparse.Namespace, env: Mapping[str, str] | None = None,
                 stdout: TextIO | None = None) -> int:
    env = os.environ if env is None else env
    stdout = stdout or sys.stdout
    try:
        base = resolve_url(args.url, env)
        output = github_output(args.github_output, env)
        policy = policy_from(args)
        with TpxClient(base, timeout=args.timeout, policy=policy) as client:
            audience = (lambda: args.audience) if args.audience else client.audience
            source = detect(env, http=client.http, policy=policy, variable=args.id_token_variable,
                            audience=audience, server=base)
            result = client.exchange(source, packages=getattr(args, "packages", None),
                                     lifetime_seconds=getattr(args, "lifetime", None))
            try:
                deliver(result.token, output, env, stdout)
            except OSError as exc:
                # Minted but undeliverable: do not leave a live token behind.
                try:
                    client.revoke(result.token)
                    fate = "it has been revoked"
                except CiError:
                    fate = "revoking it failed too; it expires on its own"
                raise CiError(f"the token could not be written to $GITHUB_OUTPUT ({exc.strerror or exc}); "
                              f"{fate}") from None
    except CiError as error:
        return report(error, env)
    print(describe(result, output), file=sys.stderr, flush=True)
    return 0


def run_revoke(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    token = (args.token or env.get("TPX_TOKEN") or "").strip()
    if not token:
        # An always-run cleanup step after a failed exchange has nothing to revoke; that is not a new failure.
        prefix = "::warning title=tpx::" if on_github(env) else "tpx: "
        print(f"{prefix}no token to revoke (neither --token nor TPX_TOKEN is set)", file=sys.stderr, flush=True)
        return 0
    try:
        base = resolve_url(args.url, env)
        with TpxClient(base, timeout=args.timeout, policy=policy_from(args)) as client:
            client.revoke(token)
    except CiError as error:
        return report(error, env)
    print("tpx: the token is revoked (or was not live)", file=sys.stderr, flush=True)
    return 0
