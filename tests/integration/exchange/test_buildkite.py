"""Buildkite end to end: a loopback issuer registered as kind "buildkite", real uvicorn, real Postgres.

Tokens are shaped as `buildkite-agent oidc request-token --audience tpx --claim
organization_id,pipeline_id` returns them (tests/support/buildkite_claims.py), signed by the
loopback issuer's RSA key.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ADMIN, registered_issuer
from tests.support.buildkite_claims import COMMIT, OMIT, BuildkitePipeline
from tests.support.oidc_issuer import LoopbackIssuer
from tests.support import api
from tests.support.api import INTROSPECT, problem
from tests.support.events import events_about

pytestmark = pytest.mark.integration
NO_IDS = {"organization_id": OMIT, "pipeline_id": OMIT}


@pytest.fixture(scope="module")
async def buildkite_issuer(client, db, exchange_app):
    async with registered_issuer(client, db, exchange_app, "buildkite") as own:
        yield own.issuer


@dataclass
class Pipeline:
    """A fresh Buildkite pipeline per test, its tokens from the loopback issuer, and its publishers."""

    issuer: LoopbackIssuer
    client: httpx.AsyncClient
    shape: BuildkitePipeline = field(default_factory=BuildkitePipeline)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        return self.shape.claims(**overrides)

    def token(self, **overrides: Any) -> str:
        return self.issuer.mint(self.claims(**overrides))

    async def add_publisher(self, expect: int = 201, **fields: Any) -> dict[str, Any]:
        body = self.shape.publisher(self.issuer.url, package=f"pkg-{uuid.uuid4().hex[:8]}", **fields)
        return await api.add_publisher(self.client, body, expect)

    async def publisher(self, publisher_id: str) -> dict[str, Any]:
        return await api.get_publisher(self.client, publisher_id)

    async def exchange(self, jwt: str) -> httpx.Response:
        return await api.exchange(self.client, jwt)


@pytest.fixture
def pipeline(buildkite_issuer, client) -> Pipeline:
    return Pipeline(buildkite_issuer, client)


# --- the happy path ---------------------------------------------------------------------------------------


async def test_a_buildkite_token_mints_binds_both_ids_and_its_events_match_the_catalogue(pipeline, client, db):
    created = await pipeline.add_publisher(step_key="publish", ref_patterns=["refs/tags/v*"])
    assert (created["provider"], created["issuer"]) == ("buildkite", pipeline.issuer.url)
    assert (created["organization_slug"], created["pipeline_slug"]) == (pipeline.shape.organization,
                                                                        pipeline.shape.pipeline)
    assert (created["organization_id"], created["pipeline_id"], created["step_key"]) == (None, None, "publish")
    assert created["allow_self_hosted_runners"] is True
    await events_about(db, created["id"])  # publisher.created, with the Buildkite publisher's schema

    response = await pipeline.exchange(pipeline.token(tag="v1.4.0", branch="v1.4.0"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["packages"], body["publisher_ids"]) == ([created["package"]], [created["id"]])

    info = await client.post("/v1/introspect", json={"token": body["token"]}, headers=INTROSPECT)
    assert info.status_code == 200, info.text
    ci = info.json()["ci"]
    assert ci == {
        "provider": "buildkite", "issuer": pipeline.issuer.url, "repository": pipeline.shape.slug_path,
        "owner_id": pipeline.shape.organization_id, "repository_id": pipeline.shape.pipeline_id, "workflow": "",
        "workflow_ref": f"{pipeline.shape.slug_path}@refs/tags/v1.4.0", "environment": None,
        "ref": "refs/tags/v1.4.0", "sha": COMMIT, "run_id": "412", "actor": None, "event_name": "webhook",
        "runner_environment": "self-hosted",
    }

    bound = await pipeline.publisher(created["id"])
    assert (bound["organization_id"], bound["pipeline_id"]) == (pipeline.shape.organization_id,
                                                                pipeline.shape.pipeline_id)
    events = {event["type"]: event for event in await events_about(db, created["id"])}
    assert events["dev.tpx.publisher.bound"]["data"]["bound"] == {
        "organization_id": pipeline.shape.organization_id, "pipeline_id": pipeline.shape.pipeline_id}
    [issued] = await events_about(db, body["token_id"])
    assert issued["type"] == "dev.tpx.token.issued" and issued["data"]["ci"] == ci


async def test_slugs_compare_ignoring_case(pipeline):
    await pipeline.add_publisher(organization_slug=pipeline.shape.organization.upper(),
                                 pipeline_slug=pipeline.shape.pipeline.upper())
    assert (await pipeline.exchange(pipeline.token())).status_code == 200


# --- pinning ----------------------------------------------------------------------------------------------


async def test_once_bound_the_ids_are_required_and_must_match(pipeline):
    publisher = await pipeline.add_publisher()
    assert (await pipeline.exchange(pipeline.token())).status_code == 200

    other = str(uuid.uuid4())
    refused = problem(await pipeline.exchange(pipeline.token(organization_id=other)), 403, "no_matching_publisher")
    assert "organization_id check failed" in refused["detail"]
    assert any(hint.startswith(f"publisher {publisher['id']} (package {publisher['package']}): organization_id: "
                               f"the token has '{other}'") and "slug taken" in hint for hint in refused["hints"])

    refused = problem(await pipeline.exchange(pipeline.token(**NO_IDS)), 403, "no_matching_publisher")
    hints = " ".join(refused["hints"])
    assert "organization_id: the token has no organization_id" in hints
    assert "pipeline_id: the token has no pipeline_id" in hints
    assert "--claim organization_id,pipeline_id" in hints


async def test_a_token_without_the_ids_mints_but_binds_nothing(pipeline, client, db):
    publisher = await pipeline.add_publisher()
    response = await pipeline.exchange(pipeline.token(**NO_IDS))
    assert response.status_code == 200, response.text
    unbound = await pipeline.publisher(publisher["id"])
    assert (unbound["organization_id"], unbound["pipeline_id"]) == (None, None)
    [issued] = await events_about(db, response.json()["token_id"])  # ci ids null, still the catalogue's shape
    assert (issued["data"]["ci"]["owner_id"], issued["data"]["ci"]["repository_id"]) == (None, None)
    assert not [e for e in await events_about(db, publisher["id"]) if e["type"] == "dev.tpx.publisher.bound"]

    # Only one of the two ids: still nothing bound (both are bound together), and the exchange succeeds.
    assert (await pipeline.exchange(pipeline.token(pipeline_id=OMIT))).status_code == 200
    assert (await pipeline.publisher(publisher["id"]))["organization_id"] is None
    # The first token with both binds both.
    assert (await pipeline.exchange(pipeline.token())).status_code == 200
    bound = await pipeline.publisher(publisher["id"])
    assert (bound["organization_id"], bound["pipeline_id"]) == (pipeline.shape.organization_id,
                                                                pipeline.shape.pipeline_id)


async def test_ids_given_when_the_publisher_is_created_are_checked_from_the_first_exchange(pipeline):
    await pipeline.add_publisher(organization_id=pipeline.shape.organization_id.upper(),
                                 pipeline_id=pipeline.shape.pipeline_id)
    problem(await pipeline.exchange(pipeline.token(pipeline_id=str(uuid.uuid4()))), 403, "no_matching_publisher")
    assert (await pipeline.exchange(pipeline.token())).status_code == 200


# --- refusals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "overrides", "check", "phrases"),
    [
        pytest.param({"step_key": "publish"}, {"step_key": "test"}, "step_key", ["'test'", "'publish'"],
                     id="step-key"),
        pytest.param({"step_key": "publish"}, {"step_key": None}, "step_key", ["no step_key", "`key: publish`"],
                     id="step-without-key"),
        pytest.param({"ref_patterns": ["refs/tags/v*"]}, {"branch": "main"}, "ref",
                     ["'refs/heads/main'", "refs/tags/<build_tag>"], id="ref"),
        pytest.param({"allow_self_hosted_runners": OMIT}, {}, "runner",
                     ["'self-hosted'", "allow_self_hosted_runners"], id="self-hosted-by-default"),
    ],
)
async def test_a_mismatch_is_denied_with_hints(pipeline, db, fields, overrides, check, phrases):
    publisher = await pipeline.add_publisher(**fields)
    claims = pipeline.claims(**overrides)
    body = problem(await pipeline.exchange(pipeline.issuer.mint(claims)), 403, "no_matching_publisher")
    assert publisher["id"] in body["detail"] and f"{check} check failed" in body["detail"]
    [hint] = body["hints"]
    assert hint.startswith(f"publisher {publisher['id']} (package {publisher['package']}): {check}: ")
    for phrase in phrases:
        assert phrase in hint
    assert await db.fetchval("SELECT count(*) FROM used_jtis WHERE jti = $1", claims["jti"]) == 0
    [denied] = await events_about(db, pipeline.shape.slug_path)
    assert denied["type"] == "dev.tpx.exchange.denied" and denied["data"]["ci"]["provider"] == "buildkite"


async def test_another_organizations_pipeline_of_the_same_slug_never_matches(pipeline, buildkite_issuer, client):
    await pipeline.add_publisher()
    other = Pipeline(buildkite_issuer, client, BuildkitePipeline(pipeline=pipeline.shape.pipeline))
    body = problem(await other.exchange(other.token()), 403, "no_matching_publisher")
    assert body["detail"] == (f"no trusted publisher is configured for repository {other.shape.slug_path} on "
                              f"issuer {buildkite_issuer.url}")
    assert '"provider": "buildkite"' in body["hints"][0] and other.shape.organization_id in body["hints"][0]


async def test_a_replayed_token_is_refused(pipeline):
    await pipeline.add_publisher()
    token = pipeline.token()
    assert (await pipeline.exchange(token)).status_code == 200
    problem(await pipeline.exchange(token), 409, "token_reused")


@pytest.mark.parametrize(
    ("overrides", "claim"),
    [
        pytest.param({"build_number": "412"}, "build_number", id="build-number-as-string"),
        pytest.param({"organization_id": "not-a-uuid"}, "organization_id", id="id-shape"),
        pytest.param({"build_tag": 1}, "build_tag", id="tag-number"),
        pytest.param({"jti": OMIT}, "jti", id="no-jti"),
    ],
)
async def test_malformed_tokens(pipeline, overrides, claim):
    await pipeline.add_publisher()
    body = problem(await pipeline.exchange(pipeline.token(**overrides)), 400, "malformed_token")
    assert f"'{claim}'" in body["detail"]


async def test_explain_shows_every_row_and_the_build_source(pipeline, client):
    publisher = await pipeline.add_publisher(step_key="publish")
    response = await client.post("/v1/explain", json={"jwt": pipeline.token(build_source="trigger_job")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["would_issue"] is True and body["identity"]["event_name"] == "trigger_job"
    [explained] = body["publishers"]
    assert explained["id"] == publisher["id"]
    rows = {row["check"]: row for row in explained["checks"]}
    assert list(rows)[:7] == ["pipeline", "organization_id", "pipeline_id", "step_key", "trigger", "ref", "runner"]
    assert rows["trigger"] == {"check": "trigger", "claim": "build_source", "expected": "any",
                               "actual": "trigger_job", "passed": True}


async def test_a_buildkite_publisher_needs_a_buildkite_issuer(pipeline, issuer, client):
    await pipeline.add_publisher(issuer=issuer.url, expect=422)
    # And the public issuer must be registered by an operator before a publisher may name it.
    response = await client.post("/v1/admin/publishers", headers=ADMIN, json={
        "package": "pkg", "provider": "buildkite", "organization_slug": "acme", "pipeline_slug": "widgets"})
    assert response.status_code == 422, response.text
    assert "'https://agent.buildkite.com' is not a registered issuer" in response.json()["detail"]


async def test_disabling_the_issuer_refuses_the_next_exchange(client, db, exchange_app):
    async with registered_issuer(client, db, exchange_app, "buildkite") as own:
        pipeline = Pipeline(own.issuer, client)
        await pipeline.add_publisher()
        assert (await pipeline.exchange(pipeline.token())).status_code == 200
        await own.set_enabled(False)
        body = problem(await pipeline.exchange(pipeline.token()), 401, "unknown_issuer")
        assert own.issuer.url in body["detail"]
