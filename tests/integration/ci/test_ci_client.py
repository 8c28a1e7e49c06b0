"""`tpx ci exchange|revoke` in a subprocess, against the real exchange and stand-ins for the CI side.

The GitHub Actions ID token endpoint is a loopback Starlette app that checks the
runner's bearer token and the `audience` query parameter the way the real one
does; GitLab's ID token is a variable. The subprocess is awaited with asyncio,
because this test's event loop also serves the exchange and the stand-ins.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tpx.core import tokens
from tests.support.api import introspect
from tests.support.servers import serve

pytestmark = pytest.mark.integration


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def everything(self) -> str:
        return self.stdout + self.stderr


async def run_ci(*args: str, env: dict[str, str], timeout: float = 60) -> Run:
    """`python -m tpx.ci ...` with exactly the given environment (plus PATH), awaited without blocking the loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tpx.ci", *args,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    return Run(process.returncode, stdout.decode(), stderr.decode())


class FlakyProxy:
    """Answers POST /v1/exchange with 503 + Retry-After: 0 `failures` times, otherwise forwards to tpx."""

    def __init__(self, upstream: str, failures: int) -> None:
        self.upstream = upstream
        self.failures = failures
        self.exchanges = 0

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.forward, methods=["GET", "POST"])])

    async def forward(self, request: Request) -> Response:
        if request.url.path == "/v1/exchange":
            self.exchanges += 1
            if self.failures > 0:
                self.failures -= 1
                return JSONResponse({"code": "unavailable", "detail": "restarting"}, status_code=503,
                                    headers={"Retry-After": "0"}, media_type="application/problem+json")
        headers = {k: v for k, v in request.headers.items() if k in ("content-type", "authorization")}
        async with httpx.AsyncClient(base_url=self.upstream) as http:
            answer = await http.request(request.method, request.url.path, content=await request.body(),
                                        headers=headers)
        return Response(answer.content, status_code=answer.status_code,
                        media_type=answer.headers.get("content-type"))


def read_output(path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


# --- GitHub Actions ------------------------------------------------------------------------------

async def test_github_exchange_masks_then_writes_the_output_and_revoke_works(repo, actions, exchange_app, client,
                                                                             tmp_path, settings):
    publisher = await repo.add_publisher()
    output = tmp_path / "github_output"
    output.write_text("earlier=value\n", encoding="utf-8")
    env = actions.env(exchange_app.state.url, GITHUB_OUTPUT=str(output))

    run = await run_ci("exchange", "--github-output", "token", env=env)
    assert run.code == 0, run.stderr
    assert actions.audiences == [settings.audience]  # learnt from GET /_/oidc/audience
    lines = read_output(output).splitlines()
    assert lines[0] == "earlier=value"
    name, _, token = lines[1].partition("=")
    assert name == "token" and tokens.is_well_formed(token)
    assert run.stdout == f"::add-mask::{token}\n"  # the mask, and nothing else on stdout
    assert token not in run.stderr
    assert publisher["package"] in run.stderr
    assert actions.issued[0] not in run.everything()
    assert (await introspect(client, token))["active"] is True

    revoked = await run_ci("revoke", env={"TPX_URL": exchange_app.state.url, "TPX_TOKEN": token})
    assert revoked.code == 0, revoked.stderr
    assert token not in revoked.everything()
    assert (await introspect(client, token)) == {"active": False}
    again = await run_ci("revoke", "--token", token, "--url", exchange_app.state.url, env={})
    assert again.code == 0, again.stderr


async def test_github_exchange_prints_the_token_after_the_mask_without_github_output(repo, actions, exchange_app):
    await repo.add_publisher()
    run = await run_ci("exchange", env=actions.env(exchange_app.state.url))
    assert run.code == 0, run.stderr
    mask, token = run.stdout.splitlines()
    assert mask == f"::add-mask::{token}"
    assert tokens.is_well_formed(token)


async def test_explicit_audience_is_url_encoded_into_the_request(repo, actions, exchange_app):
    await repo.add_publisher()
    audience = "tpx test/aud&x=1"
    run = await run_ci("exchange", "--audience", audience, env=actions.env(exchange_app.state.url))
    assert actions.audiences == [audience]  # arrived intact: encoded, appended to the existing query string
    assert run.code == 1  # tpx expects its own audience
    assert "invalid_token" in run.stderr
    assert f"aud: {audience}" in run.stderr
    assert actions.issued[0] not in run.everything()


async def test_denial_prints_code_detail_hints_and_claims_but_never_the_token(repo, actions, exchange_app, client):
    await repo.add_publisher(environments=["release"])
    actions.claims = {"environment": "prod", "user_email": "someone@example.com", "user_login": "someone"}
    native = (await client.post("/v1/exchange", json={"jwt": repo.token(environment="prod")})).json()
    assert native["code"] == "no_matching_publisher"

    run = await run_ci("exchange", "--github-output", "token", env=actions.env(
        exchange_app.state.url, GITHUB_OUTPUT="/nonexistent/never-written"))
    assert run.code == 1
    assert run.stdout == ""
    err = run.stderr
    assert "::error title=tpx::" in err
    assert "code: no_matching_publisher" in err
    assert f"detail: {native['detail']}" in err
    for hint in native["hints"]:
        assert f"hint: {hint}" in err
    assert "/v1/explain" in err
    for line in (f"iss: {repo.issuer.url}", "aud: tpx", f"repository: {repo.repository}", "environment: prod",
                 "event_name: workflow_dispatch", "runner_environment: github-hosted",
                 f"repository_owner_id: {repo.owner_id}", f"repository_id: {repo.repository_id}",
                 "ref: refs/heads/main", "workflow_ref: "):
        assert line in err, line
    assert "someone" not in err and "user_" not in err and "sub:" not in err
    jwt = actions.issued[0]
    assert jwt not in err
    assert jwt.split(".")[1] not in err and jwt.split(".")[2] not in err


async def test_missing_id_token_permission_is_a_usage_error(exchange_app):
    run = await run_ci("exchange", env={"GITHUB_ACTIONS": "true", "TPX_URL": exchange_app.state.url})
    assert run.code == 2
    assert "id-token: write" in run.stderr


async def test_retries_on_503_with_retry_after(repo, actions, exchange_app):
    await repo.add_publisher()
    proxy = FlakyProxy(exchange_app.state.url, failures=2)
    async with serve(proxy.app) as proxy_url:
        run = await run_ci("exchange", env=actions.env(proxy_url))
    assert run.code == 0, run.stderr
    assert proxy.exchanges == 3
    assert run.stderr.count("answered 503; retrying") == 2
    assert tokens.is_well_formed(run.stdout.splitlines()[-1])


async def test_gives_up_after_the_attempts(repo, actions, exchange_app):
    await repo.add_publisher()
    proxy = FlakyProxy(exchange_app.state.url, failures=100)
    async with serve(proxy.app) as proxy_url:
        run = await run_ci("exchange", "--attempts", "3", env=actions.env(proxy_url))
    assert run.code == 1
    assert proxy.exchanges == 3
    assert "503 unavailable" in run.stderr and "restarting" in run.stderr
    assert run.stdout == ""


async def test_unreachable_service_is_retried_then_reported(actions):
    run = await run_ci("exchange", "--attempts", "2", "--audience", "tpx", env=actions.env("http://127.0.0.1:9"))
    assert run.code == 1
    assert "could not be reached" in run.stderr
    assert "retrying" in run.stderr


# --- GitLab CI (and any CI that puts the ID token in a variable) ---------------------------------

async def test_gitlab_variable_prints_the_token_to_stdout(repo, exchange_app, client):
    publisher = await repo.add_publisher()
    jwt = repo.token()
    run = await run_ci("exchange", env={"GITLAB_CI": "true", "TPX_ID_TOKEN": jwt, "TPX_URL": exchange_app.state.url})
    assert run.code == 0, run.stderr
    token = run.stdout.strip()
    assert run.stdout == f"{token}\n" and "::add-mask::" not in run.stdout
    assert jwt not in run.everything()
    info = await introspect(client, token)
    assert info["active"] is True and info["packages"] == [publisher["package"]]


async def test_gitlab_custom_variable_and_reuse(repo, exchange_app):
    await repo.add_publisher()
    env = {"GITLAB_CI": "true", "PUBLISH_ID_TOKEN": repo.token(), "TPX_URL": exchange_app.state.url}
    first = await run_ci("exchange", "--id-token-variable", "PUBLISH_ID_TOKEN", env=env)
    assert first.code == 0, first.stderr
    second = await run_ci("exchange", "--id-token-variable", "PUBLISH_ID_TOKEN", env=env)
    assert second.code == 1
    assert "token_reused" in second.stderr
    assert env["PUBLISH_ID_TOKEN"] not in second.everything()


async def test_gitlab_without_the_variable_says_how_to_define_it(exchange_app):
    run = await run_ci("exchange", env={"GITLAB_CI": "true", "TPX_URL": exchange_app.state.url})
    assert run.code == 2
    assert "id_tokens" in run.stderr and "TPX_ID_TOKEN" in run.stderr


async def test_no_url_is_a_usage_error():
    run = await run_ci("exchange", env={"GITLAB_CI": "true", "TPX_ID_TOKEN": "a.b.c"})
    assert run.code == 2
    assert "TPX_URL" in run.stderr


# --- revoke ---------------------------------------------------------------------------------------

async def test_revoke_without_a_token_only_warns(exchange_app):
    run = await run_ci("revoke", env={"TPX_URL": exchange_app.state.url, "GITHUB_ACTIONS": "true"})
    assert run.code == 0
    assert "::warning title=tpx::no token to revoke" in run.stderr


async def test_revoke_of_a_string_that_is_no_tpx_token_fails(exchange_app):
    run = await run_ci("revoke", "--token", "not-a-tpx-token", env={"TPX_URL": exchange_app.state.url})
    assert run.code == 1
    assert "malformed_token" in run.stderr
    assert "not-a-tpx-token" not in run.stderr


async def test_exchange_may_ask_for_one_package_and_a_shorter_lifetime(repo, exchange_app, client):
    wanted = await repo.add_publisher()
    await repo.add_publisher()
    env = {"GITLAB_CI": "true", "TPX_ID_TOKEN": repo.token(), "TPX_URL": exchange_app.state.url}
    run = await run_ci("exchange", "--package", wanted["package"], "--lifetime", "120", env=env)
    assert run.code == 0, run.stderr
    info = await introspect(client, run.stdout.strip())
    assert info["packages"] == [wanted["package"]] and info["exp"] - info["iat"] <= 120
    refused = await run_ci("exchange", "--package", "not-granted-here", env={**env, "TPX_ID_TOKEN": repo.token()})
    assert refused.code == 1 and "not_granted" in refused.stderr


# --- Buildkite and CircleCI: the agent's own command prints the ID token ---------------------------------------

FAKE_AGENT = """#!/bin/sh
# A stand-in for the CI agent's token command: records its arguments, prints the next prepared token.
printf '%s\\n' "$*" >> "{calls}"
n=$(wc -l < "{calls}")
sed -n "${{n}}p" "{tokens}"
"""


def fake_agent(tmp_path, name: str, tokens: list[str]) -> tuple[str, object]:
    """A directory holding an executable `name` that prints `tokens` one per call; (PATH entry, calls file)."""
    calls, prepared = tmp_path / "calls", tmp_path / "tokens"
    calls.write_text("")
    prepared.write_text("".join(f"{token}\n" for token in tokens))
    tool = tmp_path / name
    tool.write_text(FAKE_AGENT.format(calls=calls, tokens=prepared))
    tool.chmod(0o755)
    return f"{tmp_path}:{os.environ.get('PATH', '/usr/bin:/bin')}", calls


@pytest.mark.parametrize(("marker", "tool", "expected"), [
    ("BUILDKITE", "buildkite-agent", "oidc request-token --audience tpx --claim organization_id,pipeline_id"),
    ("CIRCLECI", "circleci", 'run oidc get --claims {"aud": "tpx"}'),
])
async def test_buildkite_and_circleci_jobs_ask_their_agent_for_the_token(repo, exchange_app, client, tmp_path,
                                                                          marker, tool, expected):
    publisher = await repo.add_publisher()
    path, calls = fake_agent(tmp_path, tool, [repo.token()])
    run = await run_ci("exchange", "--audience", "tpx",
                       env={marker: "true", "TPX_URL": exchange_app.state.url, "PATH": path})
    assert run.code == 0, run.stderr
    assert calls.read_text().strip() == expected
    info = await introspect(client, run.stdout.strip())
    assert info["active"] is True and info["packages"] == [publisher["package"]]


async def test_an_agent_without_its_command_is_a_usage_error(exchange_app, tmp_path):
    run = await run_ci("exchange", "--audience", "tpx",
                       env={"BUILDKITE": "true", "TPX_URL": exchange_app.state.url, "PATH": str(tmp_path)})
    assert run.code == 2 and "buildkite-agent is not on PATH" in run.stderr


async def test_an_agent_command_that_prints_no_token_fails_with_its_words(exchange_app, tmp_path):
    path, _ = fake_agent(tmp_path, "circleci", ["Error: OIDC is not enabled for this project"])
    run = await run_ci("exchange", "--audience", "tpx",
                       env={"CIRCLECI": "true", "TPX_URL": exchange_app.state.url, "PATH": path})
    assert run.code == 1 and "did not print an ID token" in run.stderr
