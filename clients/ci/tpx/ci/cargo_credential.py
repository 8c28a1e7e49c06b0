"""`tpx cargo-credential`: a cargo credential provider that exchanges just in time.

Speaks cargo's credential-provider protocol, version 1 (the cargo book,
"Credential Provider Protocol"): JSON lines on stdin/stdout, a hello
`{"v":[1]}` first, then one response per request.

- `get` for `publish`: exchange the job's ID token (GitHub Actions or GitLab
  CI, as `tpx ci exchange` does) and answer
  `{"Ok":{"kind":"get","token":...,"cache":"never","operation_independent":false}}`.
  "never" because the token is short-lived: cargo must not hold it past this
  publish, and a later publish gets a fresh one.
- `get` for anything else (read, yank, owners, ...): `operation-not-supported`;
  tpx tokens are publish tokens, so cargo moves on to the next provider.
- `login`: `operation-not-supported` (nothing to store).
- `logout`: revoke the tokens this process minted and $TPX_TOKEN, if any;
  `not-found` when there is nothing to revoke.
- anything else: `{"Err":{"kind":"other","message":...}}`.

Cargo runs the provider as `<path> --cargo-plugin` and passes the configured
arguments in each request's `args`, e.g. `["--url", "https://tpx.example.com"]`.
stdout carries protocol lines only; anything else is written to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Mapping, TextIO

PROTOCOL_VERSION = 1


def add_options(parser: argparse.ArgumentParser) -> None:
    from tpx.ci import add_connection_options, add_id_token_options

    add_connection_options(parser)
    add_id_token_options(parser)
    parser.add_argument("--cargo-plugin", action="store_true", help=argparse.SUPPRESS)


def _options_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpx cargo-credential", add_help=False)
    add_options(parser)
    return parser


def ok(body: dict[str, Any]) -> dict[str, Any]:
    return {"Ok": body}


def err(kind: str, message: str | None = None, caused_by: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind}
    if message is not None:
        body["message"] = message
    if caused_by:
        body["caused-by"] = caused_by
    return {"Err": body}


class Provider:
    """Answers one request at a time; remembers what it minted so `logout` can revoke it."""

    def __init__(self, defaults: argparse.Namespace, env: Mapping[str, str]) -> None:
        self.defaults = defaults
        self.env = env
        self.minted: list[tuple[str, str]] = []  # (base URL, token)

    def options(self, request: dict[str, Any]) -> argparse.Namespace:
        """Command-line options, overridden by the request's `args` (cargo's configured arguments)."""
        args = request.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            args = []
        if args and args[0] == "cargo-credential":  # `credential-provider = "tpx cargo-credential ..."`
            args = args[1:]
        merged = argparse.Namespace(**vars(self.defaults))
        parser = _options_parser()
        parsed, _unknown = parser.parse_known_args(args)
        for name, value in vars(parsed).items():
            if value != parser.get_default(name):
                setattr(merged, name, value)
        return merged

    def handle(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            return err("other", "the request is not a JSON object")
        if request.get("v") != PROTOCOL_VERSION:
            return err("other", f"unsupported protocol version {request.get('v')!r}; this provider speaks 1")
        kind = request.get("kind")
        if kind == "get":
            return self.get(request)
        if kind == "login":
            return err("operation-not-supported",
                       "tpx mints a token for each publish from the CI job's identity; there is nothing to log in "
                       "with")
        if kind == "logout":
            return self.logout(request)
        return err("other", f"unknown request kind {str(kind)[:40]!r}")

    def get(self, request: dict[str, Any]) -> dict[str, Any]:
        from tpx.ci.client import TpxClient, resolve_url
        from tpx.ci.commands import policy_from
        from tpx.ci.errors import CiError
        from tpx.ci.idtoken import detect

        operation = request.get("operation")
        if operation != "publish":
            return err("operation-not-supported",
                       f"tpx issues publish tokens only, not {str(operation)[:40]!r} credentials; configure another "
                       "credential provider for that")
        opts = self.options(request)
        try:
            base = resolve_url(opts.url, self.env)
            policy = policy_from(opts)
            with TpxClient(base, timeout=opts.timeout, policy=policy) as client:
                audience = (lambda: opts.audience) if opts.audience else client.audience
                source = detect(self.env, http=client.http, policy=policy, variable=opts.id_token_variable,
                                audience=audience, server=base)
                result = client.exchange(source)
        except CiError as error:
            return err("other", f"tpx: {error.message}", error.details)
        self.minted.append((base, result.token))
        name = request.get("name")
        packages = result.body.get("packages") or []
        if isinstance(name, str) and packages and name not in packages:
            print(f"tpx: note: the token covers {', '.join(map(str, packages))}, which does not include {name!r}; "
                  "the registry will likely refuse this publish", file=sys.stderr, flush=True)
        return ok({"kind": "get", "token": result.token, "cache": "never", "operation_independent": False})

    def logout(self, request: dict[str, Any]) -> dict[str, Any]:
        from tpx.ci.client import TpxClient, resolve_url
        from tpx.ci.commands import policy_from
        from tpx.ci.errors import CiError

        opts = self.options(request)
        targets = list(self.minted)
        held = (self.env.get("TPX_TOKEN") or "").strip()
        try:
            if held and all(token != held for _, token in targets):
                targets.append((resolve_url(opts.url, self.env), held))
            if not targets:
                return err("not-found", "no tpx token to revoke: this process minted none and TPX_TOKEN is unset")
            policy = policy_from(opts)
            for base, token in targets:
                with TpxClient(base, timeout=opts.timeout, policy=policy) as client:
                    client.revoke(token)
        except CiError as error:
            return err("other", f"tpx: {error.message}", error.details)
        self.minted.clear()
        return ok({"kind": "logout"})


def serve(args: argparse.Namespace, stdin: TextIO, stdout: TextIO, env: Mapping[str, str]) -> int:
    """The protocol loop: hello, then one JSON line answered per JSON line read, until stdin closes."""
    provider = Provider(args, env)

    def send(message: dict[str, Any]) -> None:
        stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
        stdout.flush()

    send({"v": [PROTOCOL_VERSION]})
    for line in stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError:
            send(err("other", "the request is not valid JSON"))
            continue
        try:
            send(provider.handle(request))
        except Exception as exc:  # noqa: BLE001 - cargo must get an answer, never a broken pipe
            send(err("other", f"tpx cargo-credential failed: {type(exc).__name__}: {exc}"))
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point for `tpx cargo-credential`: the protocol owns stdout, so stray prints go to stderr."""
    protocol_out = sys.stdout
    sys.stdout = sys.stderr
    try:
        return serve(args, sys.stdin, protocol_out, os.environ)
    finally:
        sys.stdout = protocol_out


def register(subparsers: Any) -> None:
    """Add `cargo-credential` to a `tpx` subparsers object."""
    parser = subparsers.add_parser(
        "cargo-credential", help="a cargo credential provider that exchanges the CI job's ID token at publish",
        description="Cargo credential provider (protocol v1). Configure it in .cargo/config.toml; cargo passes "
                    "--cargo-plugin and the configured arguments.")
    add_options(parser)
    parser.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (`python -m tpx.ci.cargo_credential`); ignores arguments it does not know."""
    args, _unknown = _options_parser().parse_known_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
