"""`tpx issuers`, `tpx publishers` and `tpx revoke` against the running exchange, as an operator uses them."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from tests.conftest import ADMIN_TOKEN
from tests.support.api import introspect

pytestmark = pytest.mark.integration


async def tpx(url: str, *args: str, token: str | None = ADMIN_TOKEN) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TPX_")}
    env["TPX_URL"] = url
    if token:
        env["TPX_ADMIN_TOKEN"] = token
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "tpx.cli", *args, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


async def test_publishers_add_list_show_delete(repo, exchange_app):
    url = exchange_app.state.url
    code, out, err = await tpx(url, "publishers", "add", "--package", "cli-pkg-" + repo.repo, "--issuer", repo.issuer.url,
                               "--repository", repo.repository, "--workflow", "release.yml", "--environment", "prod")
    assert code == 0, err
    created = json.loads(out)
    assert created["repository_owner"] == repo.owner and created["environments"] == ["prod"]
    code, out, _ = await tpx(url, "publishers", "list", "--package", created["package"])
    assert code == 0 and created["id"] in out and repo.repository in out
    code, out, _ = await tpx(url, "publishers", "show", created["id"])
    assert json.loads(out)["id"] == created["id"]
    minted = (await repo.exchange(repo.token())).json()
    code, out, _ = await tpx(url, "publishers", "delete", created["id"])
    assert code == 0 and "revoked 1 live token" in out
    assert (await introspect(repo.client, minted["token"]))["active"] is False


async def test_revoke_by_repository_and_workflow(repo, exchange_app):
    await repo.add_publisher()
    await repo.add_publisher(workflow_filename="nightly.yml")
    release = (await repo.exchange(repo.token())).json()["token"]
    nightly = (await repo.exchange(repo.token(workflow="nightly.yml"))).json()["token"]
    code, out, err = await tpx(exchange_app.state.url, "revoke", "--repository", repo.repository,
                               "--workflow", "nightly.yml", "--reason", "incident 42")
    assert code == 0, err
    assert "done: 1 live token(s) revoked" in out
    assert (await introspect(repo.client, nightly))["active"] is False
    assert (await introspect(repo.client, release))["active"] is True


async def test_errors_say_what_to_do(exchange_app):
    code, _, err = await tpx(exchange_app.state.url, "issuers", "list", token=None)
    assert code == 4 and "TPX_ADMIN_TOKEN" in err   # a setting the command needs
    code, _, err = await tpx(exchange_app.state.url, "issuers", "list", token="wrong-credential-0123456789")
    assert code == 1 and "unauthorized" in err
    code, _, err = await tpx(exchange_app.state.url, "revoke", "--package", "a", "--repository", "b/c")
    assert code == 2 and "exactly one" in err       # options that do not go together
    code, _, err = await tpx("http://127.0.0.1:9", "issuers", "list")
    assert code == 3 and "cannot reach" in err      # the service did not answer
    code, out, _ = await tpx(exchange_app.state.url, "issuers", "list")
    assert code == 0 and "token.actions.githubusercontent.com" in out


async def test_revoke_since_takes_the_same_time_syntax_as_audit(repo, exchange_app):
    await repo.add_publisher()
    token = (await repo.exchange(repo.token())).json()["token"]
    code, out, err = await tpx(exchange_app.state.url, "revoke", "--repository", repo.repository, "--since", "1h")
    assert code == 0, err
    assert "done: 1 live token(s) revoked" in out
    assert (await introspect(repo.client, token))["active"] is False
    code, _, err = await tpx(exchange_app.state.url, "revoke", "--repository", repo.repository, "--since", "an hour")
    assert code == 2 and "RFC 3339 time" in err and "duration ago" in err


async def test_every_list_and_show_speaks_json_for_scripts(repo, exchange_app):
    import json
    url = exchange_app.state.url
    publisher = await repo.add_publisher()
    code, out, err = await tpx(url, "issuers", "list", "--json")
    assert code == 0, err
    assert repo.issuer.url in {issuer["url"] for issuer in json.loads(out)}
    code, out, err = await tpx(url, "publishers", "list", "--json", "--package", publisher["package"])
    assert code == 0, err
    assert [p["id"] for p in json.loads(out)] == [publisher["id"]]
    code, out, err = await tpx(url, "publishers", "show", publisher["id"], "--json")
    assert code == 0 and json.loads(out)["id"] == publisher["id"]
    assert (await repo.exchange(repo.token())).status_code == 200
    code, out, err = await tpx(url, "revoke", "--repository", repo.repository, "--json")
    assert code == 0, err
    assert json.loads(out)["revoked"] == 1 and json.loads(out)["status"] == "done"
    code, out, err = await tpx(url, "publishers", "delete", publisher["id"], "--json")
    assert code == 0 and json.loads(out) == {"deleted": publisher["id"], "revoked_tokens": 0}


async def test_publishers_add_takes_any_provider_field(repo, exchange_app):
    url = exchange_app.state.url
    called = f"{repo.owner}/shared/.github/workflows/publish.yml@refs/heads/main"
    code, out, err = await tpx(url, "publishers", "add", "--package", "cli-field-" + repo.repo, "--issuer",
                               repo.issuer.url, "--repository", repo.repository, "--workflow", "release.yml",
                               "--field", f"job_workflow_ref={called}", "--field", "token_ttl_seconds=600",
                               "--field", f"repository_id={repo.repository_id}")
    assert code == 0, err
    created = json.loads(out)
    assert created["job_workflow_ref"] == called and created["token_ttl_seconds"] == 600
    assert created["repository_id"] == repo.repository_id   # a numeric id stays a string
    code, _, err = await tpx(url, "publishers", "add", "--package", "x", "--field", "no-equals-sign")
    assert code == 2 and "NAME=VALUE" in err
    code, _, err = await tpx(url, "publishers", "add", "--package", "x", "--provider", "gitlab", "--repository", "g/p",
                             "--workflow", ".gitlab-ci.yml", "--field", "surprise=1")
    assert code == 1 and "surprise: is not a known field" in err
