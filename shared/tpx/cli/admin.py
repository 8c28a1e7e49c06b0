"""`tpx issuers`, `tpx publishers` and `tpx revoke`: the admin API from a terminal.

They talk to a running exchange over HTTP (`--url` or TPX_URL) with an admin
credential from TPX_ADMIN_TOKEN (or TPX_ADMIN_TOKEN_FILE), so an operator
needs no database access, and every change is an audited admin event.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tpx.cli.progress import Progress
from tpx.core.times import MOMENT_SYNTAX, parse_moment, rfc3339


class CliError(Exception):
    exit_code = 1   # tpx.cli.main.EXIT_FAILED


class CliUsage(CliError):
    exit_code = 2   # tpx.cli.main.EXIT_USAGE: options that do not go together


class CliUnreachable(CliError):
    exit_code = 3   # tpx.cli.main.EXIT_UNREACHABLE


class CliConfig(CliError):
    exit_code = 4   # tpx.cli.main.EXIT_CONFIG


def _admin_token() -> str:
    if os.environ.get("TPX_ADMIN_TOKEN_FILE"):
        return Path(os.environ["TPX_ADMIN_TOKEN_FILE"]).read_text().strip()
    token = os.environ.get("TPX_ADMIN_TOKEN")
    if not token:
        raise CliConfig("set TPX_ADMIN_TOKEN (or TPX_ADMIN_TOKEN_FILE) to one of the service's TPX_ADMIN_TOKENS")
    return token


def client(args: argparse.Namespace) -> httpx.Client:
    url = args.url or os.environ.get("TPX_URL", "http://127.0.0.1:8000")
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {_admin_token()}"}, timeout=30,
                        trust_env=False)


def call(http: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    try:
        response = http.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise CliUnreachable(f"cannot reach {http.base_url} ({exc}); check --url / TPX_URL") from None
    if response.status_code >= 400:
        try:
            problem = response.json()
        except ValueError:
            raise CliError(f"{method} {path} failed with HTTP {response.status_code}") from None
        lines = [f"{problem.get('code', response.status_code)}: {problem.get('detail', '')}"]
        lines += [f"  hint: {hint}" for hint in problem.get("hints", [])]
        raise CliError("\n".join(lines))
    return response.json() if response.content else {}


def show(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


# --- issuers -------------------------------------------------------------------------------------------------

def issuers(args: argparse.Namespace) -> None:
    with client(args) as http:
        if args.action == "list":
            listed = call(http, "GET", "/v1/admin/issuers")["issuers"]
            if args.json:
                show(listed)
                return
            for issuer in listed:
                keys = len(issuer["key_ids"])
                state = "enabled" if issuer["enabled"] else "disabled"
                print(f"{issuer['id']}  {issuer['kind']:<6}  {state:<8}  {keys} key(s)  {issuer['url']}"
                      + (f"  last error: {issuer['last_error']}" if issuer["last_error"] else ""))
        elif args.action == "add":
            body: dict[str, Any] = {"url": args.target, "kind": args.kind}
            if args.audience:
                body["audience"] = args.audience
            if args.allowed_package:
                body["allowed_packages"] = args.allowed_package
            show(call(http, "POST", "/v1/admin/issuers", json=body)["issuer"])
        elif args.action == "show":
            show(call(http, "GET", f"/v1/admin/issuers/{args.target}")["issuer"])
        elif args.action in ("enable", "disable"):
            show(call(http, "PATCH", f"/v1/admin/issuers/{args.target}", json={"enabled": args.action == "enable"})["issuer"])
        elif args.action == "delete":
            call(http, "DELETE", f"/v1/admin/issuers/{args.target}")
            if args.json:
                show({"deleted": args.target})
            else:
                print(f"deleted issuer {args.target}")


# --- publishers ----------------------------------------------------------------------------------------------

def publishers(args: argparse.Namespace) -> None:
    with client(args) as http:
        if args.action == "list":
            params = {"package": args.package} if args.package else {}
            listed = call(http, "GET", "/v1/admin/publishers", params=params)["publishers"]
            if args.json:
                show(listed)
                return
            for p in listed:
                print(f"{p['id']}  {p['package']:<24}  {p['provider']:<6}  {_identity_text(p)}")
        elif args.action == "add":
            extra = _extra_fields(args.field or [], _text_fields(args.provider))
            body: dict[str, Any] = {"package": args.package, "provider": args.provider, **_repository_fields(args),
                                    **extra}
            if not args.package:
                raise CliUsage("add needs --package")
            if args.issuer:
                body["issuer"] = args.issuer
            if args.environment:
                body["environments"] = args.environment
            if args.ref_pattern:
                body["ref_patterns"] = args.ref_pattern
            show(call(http, "POST", "/v1/admin/publishers", json=body)["publisher"])
        elif args.action == "show":
            show(call(http, "GET", f"/v1/admin/publishers/{args.target}")["publisher"])
        elif args.action == "delete":
            result = call(http, "DELETE", f"/v1/admin/publishers/{args.target}")
            if args.json:
                show({"deleted": args.target, "revoked_tokens": result.get("revoked_tokens", 0)})
            else:
                print(f"deleted publisher {args.target}; revoked {result.get('revoked_tokens', 0)} live token(s)")


# --- revoke --------------------------------------------------------------------------------------------------

def revoke(args: argparse.Namespace) -> None:
    selectors = [s for s in ("repository", "package", "publisher_id", "token_id") if getattr(args, s)]
    if len(selectors) != 1:
        raise CliUsage("give exactly one of --repository, --package, --publisher-id, --token-id")
    body: dict[str, Any] = {selectors[0]: getattr(args, selectors[0])}
    if args.repository:
        if args.workflow:
            body["workflow"] = args.workflow
        for option, field in (("since", "issued_after"), ("until", "issued_before")):
            if getattr(args, option):
                try:
                    body[field] = rfc3339(parse_moment(getattr(args, option)))
                except ValueError as exc:
                    raise CliUsage(f"--{option}: {exc}") from None
    elif args.workflow or args.since or args.until:
        raise CliUsage("--workflow, --since and --until narrow a --repository revocation only")
    if args.reason:
        body["reason"] = args.reason
    started = time.monotonic()
    progress = Progress()
    with client(args) as http:
        result = call(http, "POST", "/v1/admin/revocations", json=body)
        revocation_id = result["revocation_id"]
        if not args.json:
            print(f"revocation {revocation_id}: matching tokens are inactive everywhere from now on", flush=True)
        status, revoked = result["status"], result["revoked"]
        while status != "done":
            progress.update(f"  revoking… {revoked} token(s), {time.monotonic() - started:.1f} s")
            time.sleep(0.2)
            current = call(http, "GET", f"/v1/admin/revocations/{revocation_id}")["revocation"]
            status, revoked = current["status"], current["revoked"]
        progress.finish(f"  {revoked} token(s) revoked")
    if args.json:
        show({"revocation_id": revocation_id, "status": "done", "revoked": revoked,
               "seconds": round(time.monotonic() - started, 3)})
        return
    print(f"done: {revoked} live token(s) revoked in {time.monotonic() - started:.2f} s; "
          "a revocation.completed event records it")


def register(sub) -> None:
    def with_url(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--url", help="the exchange's base URL (default: $TPX_URL or http://127.0.0.1:8000)")
        parser.add_argument("--json", action="store_true",
                            help="JSON on stdout for scripts (show, add and enable already print JSON)")
        return parser

    issuer_parser = with_url(sub.add_parser("issuers", help="list, add, enable, disable or delete OIDC issuers"))
    issuer_parser.add_argument("action", choices=("list", "add", "show", "enable", "disable", "delete"))
    issuer_parser.add_argument("target", nargs="?", help="issuer URL (add) or id")
    issuer_parser.add_argument("--kind", choices=KINDS, default="github")
    issuer_parser.add_argument("--audience")
    issuer_parser.add_argument("--allowed-package", action="append", help="limit the issuer to packages (glob)")
    issuer_parser.set_defaults(func=_guard(issuers))

    publisher_parser = with_url(sub.add_parser("publishers", help="list, add, show or delete trusted publishers"))
    publisher_parser.add_argument("action", choices=("list", "add", "show", "delete"))
    publisher_parser.add_argument("target", nargs="?", help="publisher id (show, delete)")
    publisher_parser.add_argument("--package")
    publisher_parser.add_argument("--provider", choices=KINDS, default="github")
    publisher_parser.add_argument("--issuer", help="issuer URL (default: the provider's public issuer)")
    publisher_parser.add_argument("--repository", help="owner/name or group/subgroup/project")
    publisher_parser.add_argument("--workflow", help="workflow file name (GitHub) or CI file path (GitLab)")
    publisher_parser.add_argument("--environment", action="append")
    publisher_parser.add_argument("--ref-pattern", action="append")
    publisher_parser.add_argument("--field", action="append", metavar="NAME=VALUE",
                                  help="any other publisher field, e.g. --field email=bot@proj.iam.gserviceaccount.com "
                                       "(VALUE is read as JSON when it parses)")
    publisher_parser.set_defaults(func=_guard(publishers))

    revoke_parser = with_url(sub.add_parser("revoke", help="incident response: revoke live tokens in bulk"))
    revoke_parser.add_argument("--repository")
    revoke_parser.add_argument("--workflow", help="only tokens from this workflow file")
    revoke_parser.add_argument("--since", help=f"only tokens issued at or after this: {MOMENT_SYNTAX}")
    revoke_parser.add_argument("--until", help=f"only tokens issued before this: {MOMENT_SYNTAX}")
    revoke_parser.add_argument("--package")
    revoke_parser.add_argument("--publisher-id")
    revoke_parser.add_argument("--token-id")
    revoke_parser.add_argument("--reason")
    revoke_parser.set_defaults(func=_guard(revoke))


# The issuer kinds, spelled out so that building the parser loads no provider (every `tpx` command builds it;
# the providers and msgspec cost ~20 MB); tests/unit/cli checks that this is tpx.core.providers.PROVIDERS.
KINDS = ("github", "gitlab", "google", "buildkite", "circleci")
# The provider fields `--repository`/`--workflow` fill in; other providers take `--field NAME=VALUE`.
REPOSITORY_FIELDS = {"github": ("repository_owner", "repository_name", "workflow_filename"),
                     "gitlab": ("namespace", "project", "workflow_filepath")}
_COMMON = {"id", "package", "provider", "issuer", "environments", "ref_patterns", "allow_self_hosted_runners",
           "token_ttl_seconds", "permissions", "created_at"}


def _repository_fields(args: argparse.Namespace) -> dict[str, Any]:
    names = REPOSITORY_FIELDS.get(args.provider)
    if names is None:
        if args.repository or args.workflow:
            raise CliUsage(f"--repository and --workflow are for github and gitlab; give {args.provider}'s fields "
                           "with --field NAME=VALUE (see GET /openapi.json, PublisherInput)")
        return {}
    if not (args.repository and args.workflow):
        raise CliUsage("add needs --package, --repository owner/name and --workflow")
    owner, _, name = args.repository.rpartition("/")
    if not owner:
        raise CliUsage("--repository must be owner/name (GitHub) or group/project (GitLab)")
    return dict(zip(names, (owner, name, args.workflow)))


def _text_fields(provider: str) -> set[str]:
    """The publisher fields of `provider` that take a string, read from its input type (loaded only here)."""
    from tpx.core.bodies import text_fields
    from tpx.core.providers import PROVIDERS

    return text_fields(PROVIDERS[provider].publisher_input)


def _extra_fields(pairs: list[str], text: set[str]) -> dict[str, Any]:
    """`--field NAME=VALUE`: VALUE as given for a field that takes a string (a numeric id stays a string),
    otherwise as JSON when it parses (true, 600, ["a","b"]), else as a string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CliUsage(f"--field takes NAME=VALUE, not {pair!r}")
        if name in text:
            out[name] = value
            continue
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


def _identity_text(p: dict[str, Any]) -> str:
    """One line of a publisher's identity: repository and workflow for GitHub/GitLab, its fields otherwise."""
    names = REPOSITORY_FIELDS.get(p["provider"])
    envs = ",".join(p["environments"]) or "any"
    if names is not None:
        owner, name, workflow = (p.get(n) for n in names)
        return f"{owner}/{name}  {workflow}  env={envs}"
    return "  ".join(f"{k}={v}" for k, v in p.items() if k not in _COMMON and v not in (None, [], {}))


def _guard(function):
    def run(args: argparse.Namespace) -> int:
        try:
            function(args)
        except CliError as exc:
            print(f"tpx: {exc}", file=sys.stderr)
            return exc.exit_code
        return 0

    return run
