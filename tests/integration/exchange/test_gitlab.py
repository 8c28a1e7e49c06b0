"""GitLab end to end: a second loopback issuer registered as kind "gitlab", real uvicorn, real Postgres.

The issuer's URL is `http://127.0.0.1:<port>`, so the host its tokens must name
in `ci_config_ref_uri` is that URL's netloc, `127.0.0.1:<port>` (host[:port]).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import INTROSPECTION_TOKEN
from tests.integration.conftest import ADMIN, registered_issuer
from tests.support.claims import github_claims
from tests.support.oidc_issuer import LoopbackIssuer
from tests.support import api
from tests.support.api import problem

pytestmark = pytest.mark.integration
INTROSPECT = {"Authorization": f"Bearer {INTROSPECTION_TOKEN}"}
SHA = "714a629c0b401fdce83e847fc9589983fc6f46bc"
PERSONAL = ("user_id", "user_login", "user_email", "user_access_level", "groups_direct")


@pytest.fixture(scope="module")
async def gitlab_issuer(client, db, exchange_app):
    async with registered_issuer(client, db, exchange_app, "gitlab") as own:
        yield own.issuer


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _id() -> str:
    return str(uuid.uuid4().int % 10**9)


@dataclass
class GitLabProject:
    """A fresh GitLab project identity per test, so tests never see each other's publishers.

    Every token carries personal claims with a per-project marker, so a test can
    search stored rows and events for the marker.
    """

    issuer: LoopbackIssuer
    client: httpx.AsyncClient
    namespace: str = field(default_factory=lambda: _name("grp"))
    project: str = field(default_factory=lambda: _name("proj"))
    namespace_id: str = field(default_factory=_id)
    project_id: str = field(default_factory=_id)
    marker: str = field(default_factory=lambda: _name("PII"))

    @property
    def path(self) -> str:
        return f"{self.namespace}/{self.project}"

    @property
    def host(self) -> str:
        return urlsplit(self.issuer.url).netloc

    def claims(self, *, file: str = ".gitlab-ci.yml", ref_path: str = "refs/heads/main", host: str | None = None,
               config_project: str | None = None, config_ref: str | None = None, **overrides: Any) -> dict[str, Any]:
        issued = int(time.time())
        config = f"{host or self.host}/{config_project or self.path}//{file}@{config_ref or ref_path}"
        claims: dict[str, Any] = {
            "namespace_id": self.namespace_id,
            "namespace_path": self.namespace,
            "project_id": self.project_id,
            "project_path": self.path,
            "user_id": "1",
            "user_login": f"{self.marker}-login",
            "user_email": f"{self.marker}@example.com",
            "user_access_level": f"{self.marker}-owner",
            "pipeline_id": "574",
            "pipeline_source": "push",
            "job_id": "302",
            "ref": ref_path.rpartition("/")[2],
            "ref_type": "tag" if ref_path.startswith("refs/tags/") else "branch",
            "ref_path": ref_path,
            "ref_protected": "true",
            "groups_direct": [f"{self.marker}-group"],
            "environment": "production",
            "environment_protected": "true",
            "deployment_tier": "production",
            "environment_action": "start",
            "runner_id": 27,
            "runner_environment": "gitlab-hosted",
            "sha": SHA,
            "project_visibility": "public",
            "ci_config_ref_uri": config,
            "ci_config_sha": SHA,
            "jti": str(uuid.uuid4()),
            "iat": issued,
            "nbf": issued - 5,
            "exp": issued + 300,
            "sub": f"project_path:{self.path}:ref_type:branch:ref:main",
            "aud": "tpx",
        }
        claims.update(overrides)
        return claims

    def token(self, **overrides: Any) -> str:
        return self.issuer.mint(self.claims(**overrides))

    async def add_publisher(self, expect: int = 201, **fields: Any) -> dict[str, Any]:
        body = {
            "package": _name("pkg"), "provider": "gitlab", "issuer": self.issuer.url,
            "namespace": self.namespace, "project": self.project, "workflow_filepath": ".gitlab-ci.yml",
        }
        body.update(fields)
        return await api.add_publisher(self.client, body, expect)

    async def exchange(self, jwt: str) -> httpx.Response:
        return await api.exchange(self.client, jwt)


@pytest.fixture
def gitlab(gitlab_issuer, client) -> GitLabProject:
    return GitLabProject(gitlab_issuer, client)


async def rows_mentioning(db, text: str) -> int:
    """Token rows, outbox events and publishers whose stored JSON or text mentions `text`."""
    pattern = f"%{text}%"
    return await db.fetchval(
        """SELECT (SELECT count(*) FROM tokens WHERE ci::text LIKE $1)
                + (SELECT count(*) FROM outbox WHERE data::text LIKE $1 OR coalesce(subject, '') LIKE $1)""",
        pattern,
    )


# --- happy path -------------------------------------------------------------------------------------------


async def test_happy_path_mints_and_stores_no_personal_data(gitlab, client, db):
    publisher = await gitlab.add_publisher(environments=["production"], require_protected_ref=True)
    assert (publisher["provider"], publisher["namespace"], publisher["project"]) == (
        "gitlab", gitlab.namespace, gitlab.project)
    assert publisher["workflow_filepath"] == ".gitlab-ci.yml"
    assert publisher["require_protected_ref"] is True

    response = await gitlab.exchange(gitlab.token())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["packages"] == [publisher["package"]]

    info = await client.post("/v1/introspect", json={"token": body["token"]}, headers=INTROSPECT)
    assert info.status_code == 200, info.text
    ci = info.json()["ci"]
    assert ci["provider"] == "gitlab"
    assert ci["issuer"] == gitlab.issuer.url
    assert ci["repository"] == gitlab.path
    assert (ci["owner_id"], ci["repository_id"]) == (gitlab.namespace_id, gitlab.project_id)
    assert ci["workflow"] == ".gitlab-ci.yml"
    assert ci["workflow_ref"] == f"{gitlab.host}/{gitlab.path}//.gitlab-ci.yml@refs/heads/main"
    assert (ci["environment"], ci["ref"], ci["sha"]) == ("production", "refs/heads/main", SHA)
    assert (ci["run_id"], ci["event_name"], ci["runner_environment"]) == ("574", "push", "gitlab-hosted")
    assert ci["actor"] is None
    assert gitlab.marker not in repr(info.json())

    stored = await db.fetchval("SELECT ci::text FROM tokens WHERE id = $1", uuid.UUID(body["token_id"]))
    assert '"provider": "gitlab"' in stored
    for claim in PERSONAL:
        assert claim not in stored
    assert gitlab.marker not in stored
    assert "sample-user" not in stored
    # The issued and bound events carry the same identity and nothing personal either.
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE subject = $1", body["token_id"]) == 1
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE data->>'publisher_id' = $1", publisher["id"]) >= 1
    assert await rows_mentioning(db, gitlab.marker) == 0


async def test_ids_are_bound_on_first_success_and_checked_after(gitlab, client):
    publisher = await gitlab.add_publisher()
    assert (publisher["namespace_id"], publisher["project_id"]) == (None, None)
    assert (await gitlab.exchange(gitlab.token())).status_code == 200
    bound = (await client.get(f"/v1/admin/publishers/{publisher['id']}", headers=ADMIN)).json()["publisher"]
    assert (bound["namespace_id"], bound["project_id"]) == (gitlab.namespace_id, gitlab.project_id)

    body = problem(await gitlab.exchange(gitlab.token(namespace_id="424242")), 403, "no_matching_publisher")
    assert any("namespace_id" in hint and "424242" in hint for hint in body["hints"])


async def test_nested_groups(gitlab_issuer, client):
    project = GitLabProject(gitlab_issuer, client, namespace=f"{_name('grp')}/sub/subsub")
    await project.add_publisher(namespace=project.namespace.upper(), project=project.project.upper())
    assert (await project.exchange(project.token())).status_code == 200, "paths compare case-insensitively"


async def test_protected_ref_and_runner_policy(gitlab):
    await gitlab.add_publisher(require_protected_ref=True)
    problem(await gitlab.exchange(gitlab.token(ref_protected="false")), 403, "no_matching_publisher")
    problem(await gitlab.exchange(gitlab.token(runner_environment="self-hosted")), 403, "no_matching_publisher")
    problem(await gitlab.exchange(gitlab.token(ref_protected=True)), 400, "malformed_token")
    assert (await gitlab.exchange(gitlab.token(ref_protected="true"))).status_code == 200


async def test_environment_names_are_case_sensitive(gitlab):
    await gitlab.add_publisher(environments=["Production"])
    body = problem(await gitlab.exchange(gitlab.token(environment="production")), 403, "no_matching_publisher")
    assert any("environment" in hint and "case-sensitive" in hint for hint in body["hints"])
    assert (await gitlab.exchange(gitlab.token(environment="Production"))).status_code == 200


async def test_numeric_id_as_json_number_is_malformed(gitlab):
    await gitlab.add_publisher()
    body = problem(await gitlab.exchange(gitlab.token(project_id=int(gitlab.project_id))), 400, "malformed_token")
    assert "'project_id'" in body["detail"]


# --- mismatches name the differing part -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "check", "phrases"),
    [
        pytest.param({"host": "gitlab.com"}, "ci_config_host", ["'gitlab.com'"], id="host"),
        pytest.param({"config_project": "other-group/other-project"}, "ci_config_project",
                     ["'other-group/other-project'"], id="project"),
        pytest.param({"file": "ci/.gitlab-ci.yml"}, "workflow", ["'ci/.gitlab-ci.yml'", "'.gitlab-ci.yml'"],
                     id="file"),
        pytest.param({"config_ref": "refs/heads/other"}, "ci_config_ref", ["'refs/heads/other'"], id="ref"),
    ],
)
async def test_mismatch_hints_name_the_differing_part(gitlab, db, overrides, check, phrases):
    publisher = await gitlab.add_publisher()
    response = await gitlab.exchange(gitlab.token(**overrides))
    body = problem(response, 403, "no_matching_publisher")
    assert publisher["id"] in body["detail"] and f"{check} check failed" in body["detail"]
    [hint] = body["hints"]
    assert hint.startswith(f"publisher {publisher['id']} (package {publisher['package']}): {check}: ")
    for phrase in phrases:
        assert phrase in hint
    # The denial event names the failed check and carries nothing personal.
    denied = await db.fetchval(
        "SELECT data::text FROM outbox WHERE type = 'dev.tpx.exchange.denied' AND subject = $1 ORDER BY id DESC LIMIT 1",
        gitlab.path)
    assert denied is not None
    assert check in denied and '"provider": "gitlab"' in denied
    assert await rows_mentioning(db, gitlab.marker) == 0


async def test_ref_equal_to_sha_is_accepted(gitlab):
    await gitlab.add_publisher()
    assert (await gitlab.exchange(gitlab.token(config_ref=SHA))).status_code == 200


# --- issuer isolation -------------------------------------------------------------------------------------


@dataclass
class Twins:
    """One owner/name known to both the GitHub loopback issuer and the GitLab loopback issuer."""

    gitlab: GitLabProject
    github_issuer: LoopbackIssuer

    def github_token(self) -> str:
        return self.github_issuer.mint(github_claims(
            owner=self.gitlab.namespace, repo=self.gitlab.project, owner_id=self.gitlab.namespace_id,
            repository_id=self.gitlab.project_id, workflow="release.yml"))

    async def add_github_publisher(self, client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
        body = {"package": _name("pkg"), "provider": "github", "issuer": self.github_issuer.url,
                "repository_owner": self.gitlab.namespace, "repository_name": self.gitlab.project,
                "workflow_filename": "release.yml", **fields}
        response = await client.post("/v1/admin/publishers", json=body, headers=ADMIN)
        assert response.status_code == 201, response.text
        return response.json()["publisher"]


@pytest.fixture
def twins(gitlab, issuer) -> Twins:
    return Twins(gitlab, issuer)


async def test_gitlab_token_never_matches_a_github_publisher(twins, client):
    github_publisher = await twins.add_github_publisher(client)
    body = problem(await twins.gitlab.exchange(twins.gitlab.token()), 403, "no_matching_publisher")
    assert body["detail"] == (f"no trusted publisher is configured for repository {twins.gitlab.path} "
                              f"on issuer {twins.gitlab.issuer.url}")
    assert github_publisher["id"] not in repr(body)
    assert '"provider": "gitlab"' in body["hints"][0]


async def test_github_token_never_matches_a_gitlab_publisher(twins, client):
    gitlab_publisher = await twins.gitlab.add_publisher()
    response = await client.post("/v1/exchange", json={"jwt": twins.github_token()})
    body = problem(response, 403, "no_matching_publisher")
    assert body["detail"] == (f"no trusted publisher is configured for repository {twins.gitlab.path} "
                              f"on issuer {twins.github_issuer.url}")
    assert gitlab_publisher["id"] not in repr(body)


async def test_each_issuer_mints_only_for_its_own_publisher(twins, client):
    github_publisher = await twins.add_github_publisher(client)
    gitlab_publisher = await twins.gitlab.add_publisher()
    from_gitlab = await twins.gitlab.exchange(twins.gitlab.token())
    assert from_gitlab.status_code == 200, from_gitlab.text
    assert from_gitlab.json()["publisher_ids"] == [gitlab_publisher["id"]]
    from_github = await client.post("/v1/exchange", json={"jwt": twins.github_token()})
    assert from_github.status_code == 200, from_github.text
    assert from_github.json()["publisher_ids"] == [github_publisher["id"]]


async def test_a_publisher_cannot_cross_provider_and_issuer_kind(twins, client):
    body = {"package": _name("pkg"), "provider": "github", "issuer": twins.gitlab.issuer.url,
            "repository_owner": twins.gitlab.namespace, "repository_name": twins.gitlab.project,
            "workflow_filename": "release.yml"}
    response = await client.post("/v1/admin/publishers", json=body, headers=ADMIN)
    assert response.status_code == 422 and response.json()["code"] == "invalid_publisher", response.text
    await twins.gitlab.add_publisher(issuer=twins.github_issuer.url, expect=422)


async def test_a_merge_request_pipeline_from_a_fork_never_publishes(gitlab, db):
    """GitLab names the fork in project_* and the project the job runs in in job_project_*: whichever a
    publisher names, such a token is refused, the claims named, and no JTI spent."""
    await gitlab.add_publisher()
    claims = gitlab.claims(pipeline_source="merge_request_event", job_project_id=_id(),
                           job_project_path=f"{_name('upstream')}/{gitlab.project}")
    refused = problem(await gitlab.exchange(gitlab.issuer.mint(claims)), 403, "no_matching_publisher")
    assert "job_project" in refused["detail"] and "fork" in " ".join(refused["hints"])
    assert await db.fetchval("SELECT count(*) FROM used_jtis WHERE jti = $1", claims["jti"]) == 0
    same = gitlab.claims(job_project_id=gitlab.project_id, job_project_path=gitlab.path)
    assert (await gitlab.exchange(gitlab.issuer.mint(same))).status_code == 200
