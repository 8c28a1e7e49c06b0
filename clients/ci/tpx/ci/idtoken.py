"""Where the job's OIDC ID token comes from: GitHub Actions' token endpoint, a CI variable, or the CI agent's
own command (Buildkite, CircleCI).

GitHub Actions hands a job that has `permissions: id-token: write` a request
URL and a bearer token; the job asks that endpoint for an ID token with the
audience the relying party expects, and may ask again for a fresh one (which
lets the exchange retry safely after an ambiguous network failure). GitLab CI
instead puts one ID token per `id_tokens:` entry into a variable, with the
audience fixed in the pipeline file; it cannot be refreshed, and tpx consumes
each token's jti once. Buildkite and CircleCI jobs ask their agent's command for
a token with the audience tpx expects (and a fresh one on each call).
"""

from __future__ import annotations

import json
import subprocess
from typing import Callable, Mapping, Protocol
from urllib.parse import quote

import httpx

from tpx.ci.errors import CiError, UsageError, scrub
from tpx.ci.retry import RetryPolicy, with_retries

GITHUB_ENDPOINT = "the GitHub Actions ID token endpoint"


class IdTokenSource(Protocol):
    provider: str
    can_refresh: bool

    def get(self) -> str:
        """An ID token; a new one on each call when `can_refresh`."""
        ...


def _looks_like_jwt(value: str) -> bool:
    return value.count(".") == 2 and all(value.split("."))


class AudienceAsked:
    """A source that mints tokens for tpx's audience, learned only when first needed (--audience or
    GET /_/oidc/audience), and once."""

    def __init__(self, audience: Callable[[], str]) -> None:
        self._audience = audience
        self._resolved: str | None = None

    @property
    def audience(self) -> str:
        if self._resolved is None:
            self._resolved = self._audience()
        return self._resolved


class GitHubActions(AudienceAsked):
    """GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=<aud> with the runner's bearer token -> {"value": jwt}."""

    provider = "github"
    can_refresh = True

    def __init__(self, http: httpx.Client, request_url: str, request_token: str, audience: Callable[[], str],
                 policy: RetryPolicy) -> None:
        super().__init__(audience)
        self.http = http
        self.request_url = request_url
        self.request_token = request_token
        self.policy = policy

    def url(self) -> str:
        # The runner's URL already carries a query string (api-version=...); append to it.
        separator = "&" if "?" in self.request_url else "?"
        return f"{self.request_url}{separator}audience={quote(self.audience, safe='')}"

    def get(self) -> str:
        url = self.url()
        headers = {"Authorization": f"bearer {self.request_token}", "Accept": "application/json"}
        response = with_retries(lambda: self.http.get(url, headers=headers), self.policy, what=GITHUB_ENDPOINT)
        if response.status_code != 200:
            snippet = scrub(response.text[:300], [self.request_token])
            raise CiError(f"{GITHUB_ENDPOINT} answered {response.status_code} for audience {self.audience!r}",
                          [f"response: {snippet}" if snippet else "the response was empty",
                           "check that the job has `permissions: id-token: write`"])
        try:
            value = response.json().get("value")
        except (ValueError, AttributeError):
            value = None
        if not isinstance(value, str) or not _looks_like_jwt(value):
            raise CiError(f"{GITHUB_ENDPOINT} answered without an ID token (no JWT in \"value\")")
        return value


class Variable:
    """An ID token a CI provider put into a variable (GitLab's id_tokens:, or any CI that does the same)."""

    can_refresh = False

    def __init__(self, name: str, value: str, provider: str) -> None:
        self.name = name
        self.value = value.strip()
        self.provider = provider
        if not _looks_like_jwt(self.value):
            raise UsageError(f"the variable {name} does not hold an ID token (a JWT: three base64url parts "
                             "separated by dots)")

    def get(self) -> str:
        return self.value


class AgentCommand(AudienceAsked):
    """An ID token printed by the CI agent's own command, asked for tpx's audience each time.

    Buildkite: `buildkite-agent oidc request-token --audience <aud> --claim organization_id,pipeline_id` (tpx
    pins those ids); CircleCI: `circleci run oidc get --claims '{"aud": "<aud>"}'` (only `aud` can be set).
    """

    can_refresh = True
    TIMEOUT = 60

    def __init__(self, provider: str, command: Callable[[str], list[str]], audience: Callable[[], str],
                 env: Mapping[str, str]) -> None:
        super().__init__(audience)
        self.provider = provider
        self.command = command
        self.env = dict(env)

    def get(self) -> str:
        argv = self.command(self.audience)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.TIMEOUT, env=self.env,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise UsageError(f"{argv[0]} is not on PATH, so this {self.provider} job cannot ask for an ID token",
                             [f"run the step on an agent that has {argv[0]}, or put an ID token in the variable "
                              "named by --id-token-variable"]) from None
        except subprocess.TimeoutExpired:
            raise CiError(f"{argv[0]} did not answer within {self.TIMEOUT} s when asked for an ID token") from None
        value = done.stdout.strip()
        if done.returncode != 0 or not _looks_like_jwt(value):
            detail = scrub(done.stderr.strip()[:300], [value]) or "no error output"
            raise CiError(f"`{' '.join(argv[:4])} ...` did not print an ID token (exit {done.returncode}): {detail}",
                          [f"check that this {self.provider} job may request OIDC tokens"])
        return value


def buildkite_command(audience: str) -> list[str]:
    return ["buildkite-agent", "oidc", "request-token", "--audience", audience,
            "--claim", "organization_id,pipeline_id"]


def circleci_command(audience: str) -> list[str]:
    return ["circleci", "run", "oidc", "get", "--claims", json.dumps({"aud": audience})]


def detect(env: Mapping[str, str], *, http: httpx.Client, policy: RetryPolicy, variable: str,
           audience: Callable[[], str], server: str) -> IdTokenSource:
    """The ID token source of the CI this runs in, or a UsageError saying how to set the job up."""
    if env.get("GITHUB_ACTIONS") == "true":
        request_url = env.get("ACTIONS_ID_TOKEN_REQUEST_URL")
        request_token = env.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
        if not request_url or not request_token:
            raise UsageError(
                "this GitHub Actions job cannot request an ID token (ACTIONS_ID_TOKEN_REQUEST_URL/TOKEN are unset)",
                ["add `permissions: id-token: write` to the job (or the workflow)",
                 "pull requests from forks never get ID tokens"])
        return GitHubActions(http, request_url, request_token, audience, policy)
    value = env.get(variable)
    if env.get("GITLAB_CI") == "true":
        if not value:
            raise UsageError(
                f"this GitLab CI job has no ID token in the variable {variable}",
                [(f"define it in the job: `id_tokens: {{{variable}: {{aud: <audience>}}}}`, where <audience> is "
                  f"what GET {server}/_/oidc/audience answers"),
                 "or name another variable with --id-token-variable"])
        return Variable(variable, value, "gitlab")
    if value:
        return Variable(variable, value, "variable")
    if env.get("BUILDKITE") == "true":
        return AgentCommand("buildkite", buildkite_command, audience, env)
    if env.get("CIRCLECI") == "true":
        return AgentCommand("circleci", circleci_command, audience, env)
    raise UsageError("not running in GitHub Actions (GITHUB_ACTIONS=true), GitLab CI (GITLAB_CI=true), Buildkite "
                     f"(BUILDKITE=true) or CircleCI (CIRCLECI=true), and the variable {variable} holds no ID token",
                     ["run this inside a CI job, or put an ID token in the variable named by --id-token-variable"])
