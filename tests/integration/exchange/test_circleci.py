"""CircleCI end to end: loopback issuers registered as kind "circleci", real uvicorn, real Postgres.

One issuer is served at the root of its loopback URL (like the root issuer https://oidc.circleci.com,
it names no organization, so the token's org-id alone is compared with the publisher's); another
is served under /org/<uuid>, like an organization's own issuer, whose tokens must carry that
organization's id. CircleCI tokens have no `jti`: replay protection keys on the SHA-256 of the
decoded claims.
"""

from __future__ import annotations

import json
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import httpx
import jsonschema
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from tpx.core.events import schemas
from tpx.core.events.cloudevents import to_cloudevent
from tests.integration.conftest import ADMIN, OwnIssuer, publish_issuer_keys, registered_issuer
from tests.support.circleci_claims import ABSENT, USER, CircleCIProject
from tests.support.oidc_issuer import LoopbackIssuer
from tests.support.servers import serve
from tests.support import api
from tests.support.api import INTROSPECT, problem, replay_key

pytestmark = pytest.mark.integration
P = "oidc.circleci.com/"


@pytest.fixture(scope="module")
async def circleci_issuer(client, db, exchange_app):
    async with registered_issuer(client, db, exchange_app, "circleci") as own:
        yield own.issuer


@asynccontextmanager
async def organization_issuer(client, db, exchange_app, org: str) -> AsyncIterator[OwnIssuer]:
    """A loopback issuer at http://127.0.0.1:<port>/org/<org>, registered as kind circleci, keys stored;
    disabled when it stops (as registered_issuer does)."""
    issuer = LoopbackIssuer()
    async with serve(Starlette(routes=[Mount(f"/org/{org}", app=issuer.app)])) as url:
        issuer.url = f"{url}/org/{org}"
        response = await client.post("/v1/admin/issuers", json={"url": issuer.url, "kind": "circleci"},
                                      headers=ADMIN)
        assert response.status_code == 201, response.text
        own = OwnIssuer(issuer, uuid.UUID(response.json()["issuer"]["id"]), client)
        await publish_issuer_keys(db, exchange_app, own.id, issuer)
        yield own
        await own.set_enabled(False)


class Project(CircleCIProject):
    """A fresh organization/project whose tokens the given loopback issuer signs."""

    def __init__(self, issuer: LoopbackIssuer, client: httpx.AsyncClient) -> None:
        super().__init__()
        self.issuer = issuer
        self.client = client

    def token_claims(self, **overrides: Any) -> dict[str, Any]:
        claims = self.claims(self.issuer.url, lifetime=600)
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not ABSENT}

    def token(self, **overrides: Any) -> str:
        return self.issuer.mint(self.token_claims(**overrides))

    async def add_publisher(self, expect: int = 201, **fields: Any) -> dict[str, Any]:
        body = self.publisher(self.issuer.url, **fields)
        body["package"] = f"pkg-{uuid.uuid4().hex[:8]}"
        return await api.add_publisher(self.client, body, expect)

    async def exchange(self, jwt: str) -> httpx.Response:
        return await api.exchange(self.client, jwt)


@pytest.fixture
def circleci(circleci_issuer, client) -> Project:
    return Project(circleci_issuer, client)


async def events_since(db, high_water: int) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT id, event_id, type, source, subject, time, data, sequence, chainhash FROM outbox "
                          "WHERE id > $1 ORDER BY id", high_water)
    events = []
    for n, row in enumerate(rows, start=1):
        row = dict(row)
        row["sequence"] = row["sequence"] or 10**12 + n
        row["chainhash"] = row["chainhash"] or bytes(32)
        events.append(to_cloudevent(row))
    return events


# --- happy path -------------------------------------------------------------------------------------------


async def test_a_pinned_publisher_mints_once_and_stores_no_personal_data(circleci, client, db):
    high_water = await db.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
    publisher = await circleci.add_publisher(
        organization_id=circleci.org.upper(), pipeline_definition_id=circleci.pipeline_definition,
        context_ids=[circleci.context], vcs_origin=circleci.vcs_origin.upper(), vcs_ref="refs/heads/main",
        ref_patterns=["refs/heads/*"])
    assert (publisher["provider"], publisher["organization_id"], publisher["project_id"]) == (
        "circleci", circleci.org, circleci.project)
    assert (publisher["pipeline_definition_id"], publisher["context_ids"], publisher["vcs_origin"],
            publisher["vcs_ref"]) == (circleci.pipeline_definition, [circleci.context], circleci.vcs_origin,
                                      "refs/heads/main")

    jwt = circleci.token()
    response = await circleci.exchange(jwt)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["packages"], body["publisher_ids"]) == ([publisher["package"]], [publisher["id"]])

    # The same ID token again: refused, its claims' hash was spent (no jti in CircleCI tokens).
    problem(await circleci.exchange(jwt), 409, "token_reused")
    assert await db.fetchval("SELECT count(*) FROM used_jtis WHERE jti = $1", replay_key(jwt)) == 1

    info = await client.post("/v1/introspect", json={"token": body["token"]}, headers=INTROSPECT)
    assert info.status_code == 200, info.text
    ci = info.json()["ci"]
    assert ci == {
        "provider": "circleci", "issuer": circleci.issuer.url, "repository": circleci.repository,
        "repository_id": circleci.project, "owner_id": circleci.org, "workflow": circleci.pipeline_definition,
        "workflow_ref": "", "environment": None, "ref": "refs/heads/main", "sha": "",
        "run_id": circleci.token_claims()[P + "workflow-id"], "actor": None, "event_name": None,
        "runner_environment": None}
    stored = await db.fetchval("SELECT ci::text FROM tokens WHERE id = $1", uuid.UUID(body["token_id"]))
    assert USER not in stored

    # Nothing to bind: the ids are the names.
    shown = (await client.get(f"/v1/admin/publishers/{publisher['id']}", headers=ADMIN)).json()["publisher"]
    assert shown == publisher

    events = await events_since(db, high_water)
    assert {e["type"] for e in events} >= {"dev.tpx.publisher.created", "dev.tpx.token.issued"}
    assert "dev.tpx.publisher.bound" not in {e["type"] for e in events}
    for event in events:
        schemas.validate(event)
        assert USER not in json.dumps(event)


async def test_a_custom_webhook_pipeline_matches_a_publisher_that_pins_neither_origin_nor_ref(circleci, client, db):
    await circleci.add_publisher()
    high_water = await db.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
    response = await circleci.exchange(circleci.token(**{P + "vcs-origin": ABSENT, P + "vcs-ref": ABSENT,
                                                         P + "context-ids": []}))
    assert response.status_code == 200, response.text
    info = (await client.post("/v1/introspect", json={"token": response.json()["token"]}, headers=INTROSPECT)).json()
    assert info["ci"]["ref"] == ""
    for event in await events_since(db, high_water):
        schemas.validate(event)


async def test_the_publisher_view_meets_the_openapi_document(circleci, client):
    publisher = await circleci.add_publisher(context_ids=[circleci.context], vcs_origin=circleci.vcs_origin)
    doc = (await client.get("/openapi.json")).json()
    answer = (await client.get(f"/v1/admin/publishers/{publisher['id']}", headers=ADMIN)).json()
    jsonschema.validate(answer, {"$ref": "#/components/schemas/PublisherResult", "components": doc["components"],
                                 "$schema": "https://json-schema.org/draft/2020-12/schema"})


# --- mismatches: 403 with hints, nothing spent ------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "check", "phrases"),
    [
        pytest.param({P + "ssh-rerun": True}, "ssh_rerun", ["Rerun job with SSH"], id="ssh-rerun"),
        pytest.param({P + "pipeline-definition-id": str(uuid.uuid4())}, "pipeline_definition",
                     ["another pipeline definition"], id="pipeline-definition"),
        pytest.param({P + "context-ids": []}, "contexts", ["every context"], id="context-missing"),
        pytest.param({P + "vcs-origin": "github.com/fork/widgets"}, "vcs_origin", ["'github.com/fork/widgets'"],
                     id="fork"),
        pytest.param({P + "vcs-ref": "refs/heads/feature"}, "vcs_ref", ["'refs/heads/feature'"], id="vcs-ref"),
        pytest.param({P + "vcs-ref": ABSENT, P + "vcs-origin": ABSENT}, "vcs_origin", ["custom webhook"],
                     id="custom-webhook"),
    ],
)
async def test_a_mismatch_is_denied_with_hints(circleci, db, overrides, check, phrases):
    publisher = await circleci.add_publisher(
        pipeline_definition_id=circleci.pipeline_definition, context_ids=[circleci.context],
        vcs_origin=circleci.vcs_origin, vcs_ref="refs/heads/main")
    high_water = await db.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
    jwt = circleci.token(**overrides)
    body = problem(await circleci.exchange(jwt), 403, "no_matching_publisher")
    assert publisher["id"] in body["detail"] and f"{check} check failed" in body["detail"]
    hint = body["hints"][0]
    assert hint.startswith(f"publisher {publisher['id']} (package {publisher['package']}): {check}: ")
    for phrase in phrases:
        assert phrase in hint
    assert await db.fetchval("SELECT count(*) FROM used_jtis WHERE jti = $1", replay_key(jwt)) == 0
    [denied] = [e for e in await events_since(db, high_water) if e["type"] == "dev.tpx.exchange.denied"]
    schemas.validate(denied)
    assert check in denied["data"]["publishers"][0]["failed_checks"]
    assert denied["subject"] == circleci.repository
    # The refusal spent nothing: the matching token of the same job still exchanges.
    assert (await circleci.exchange(circleci.token())).status_code == 200


async def test_a_publisher_listing_two_contexts_needs_both(circleci):
    other = str(uuid.uuid4())
    await circleci.add_publisher(context_ids=[circleci.context, other])
    body = problem(await circleci.exchange(circleci.token()), 403, "no_matching_publisher")
    assert other in body["hints"][0]
    assert (await circleci.exchange(circleci.token(**{P + "context-ids": [other, circleci.context]}))).status_code \
        == 200


async def test_explain_shows_every_row_in_order(circleci, client):
    publisher = await circleci.add_publisher(vcs_ref="refs/tags/v1")
    response = await client.post("/v1/explain", json={"jwt": circleci.token()})
    assert response.status_code == 200, response.text
    [entry] = response.json()["publishers"]
    assert entry["id"] == publisher["id"] and entry["matched"] is False
    assert [c["check"] for c in entry["checks"]] == ["project", "issuer_organization", "ssh_rerun",
                                                     "pipeline_definition", "contexts", "vcs_origin", "vcs_ref", "ref"]
    assert [c["check"] for c in entry["checks"] if not c["passed"]] == ["vcs_ref"]


@pytest.mark.parametrize(
    ("overrides", "claim"),
    [
        pytest.param({P + "ssh-rerun": "false"}, P + "ssh-rerun", id="ssh-rerun-string"),
        pytest.param({P + "ssh-rerun": ABSENT}, P + "ssh-rerun", id="ssh-rerun-missing"),
        pytest.param({P + "context-ids": "ctx"}, P + "context-ids", id="contexts-string"),
        pytest.param({P + "org-id": 7}, P + "org-id", id="org-id-number"),
        pytest.param({P + "project-id": "not-a-uuid"}, P + "project-id", id="project-id-shape"),
    ],
)
async def test_a_malformed_token_names_the_claim(circleci, overrides, claim):
    await circleci.add_publisher()
    body = problem(await circleci.exchange(circleci.token(**overrides)), 400, "malformed_token")
    assert repr(claim) in body["detail"]


async def test_a_token_of_another_organization_never_matches(circleci):
    await circleci.add_publisher()
    body = problem(await circleci.exchange(circleci.token(**{P + "org-id": str(uuid.uuid4())})), 403,
                   "no_matching_publisher")
    assert body["detail"].startswith("no trusted publisher is configured for repository")
    assert '"provider": "circleci"' in body["hints"][0]


# --- an organization's own issuer (URL ending in /org/<uuid>) ---------------------------------------------


async def test_an_organization_issuer_speaks_for_its_organization_only(client, db, exchange_app):
    project = CircleCIProject()
    async with organization_issuer(client, db, exchange_app, project.org) as own:
        circleci = Project(own.issuer, client)
        circleci.org, circleci.project = project.org, project.project
        publisher = await circleci.add_publisher()
        assert publisher["issuer"] == own.issuer.url
        assert (await circleci.exchange(circleci.token())).status_code == 200

        # A publisher of another organization cannot use this organization's issuer.
        refused = await client.post("/v1/admin/publishers", headers=ADMIN, json=circleci.publisher(
            own.issuer.url, organization_id=str(uuid.uuid4())))
        assert refused.status_code == 422 and refused.json()["field"] == "issuer", refused.text

        # A token of this issuer naming another organization: refused by issuer_organization, even for a
        # publisher row of that organization planted under this issuer (bypassing the API's check).
        stranger = str(uuid.uuid4())
        issuer_id = await db.fetchval("SELECT id FROM issuers WHERE url = $1", own.issuer.url)
        await db.execute(
            """INSERT INTO publishers (package, provider, issuer_id, owner, owner_id, name, name_id, workflow,
                                       environments, ref_patterns, allow_self_hosted_runners, require_protected_ref,
                                       permissions, identity_key, conditions)
               VALUES ($1, 'circleci', $2, $3, $3, $4, $4, '', '{}', '{}', false, false, '{publish-update}', $5,
                       '{}'::jsonb)""",
            f"pkg-{uuid.uuid4().hex[:8]}", issuer_id, stranger, circleci.project, str(uuid.uuid4()))
        body = problem(await circleci.exchange(circleci.token(**{P + "org-id": stranger})), 403,
                       "no_matching_publisher")
        assert "issuer_organization check failed" in body["detail"]
        assert "never speaks for another" in body["hints"][0]


async def test_the_default_issuer_is_the_organizations(circleci, client):
    body = circleci.publisher(circleci.issuer.url)
    del body["issuer"]
    response = await client.post("/v1/admin/publishers", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert f"https://oidc.circleci.com/org/{circleci.org}" in response.json()["detail"]
    assert response.json()["field"] == "issuer"


async def test_a_circleci_issuer_takes_circleci_publishers_only(circleci, client):
    body = {"package": f"pkg-{uuid.uuid4().hex[:8]}", "provider": "github", "issuer": circleci.issuer.url,
            "repository_owner": "acme", "repository_name": "widgets", "workflow_filename": "release.yml"}
    response = await client.post("/v1/admin/publishers", json=body, headers=ADMIN)
    assert response.status_code == 422 and response.json()["field"] == "provider", response.text


# --- the kind disabled ------------------------------------------------------------------------------------


async def test_a_disabled_circleci_issuer_refuses_the_next_exchange(client, db, exchange_app):
    async with registered_issuer(client, db, exchange_app, "circleci") as own:
        circleci = Project(own.issuer, client)
        await circleci.add_publisher()
        assert (await circleci.exchange(circleci.token())).status_code == 200
        cache = exchange_app.state.tpx.keycache
        version = cache.snapshot.version
        response = await client.patch(f"/v1/admin/issuers/{own.id}", json={"enabled": False}, headers=ADMIN)
        assert response.status_code == 200 and response.json()["issuer"]["enabled"] is False, response.text
        assert await cache.wait_for_version(version, 10)
        body = problem(await circleci.exchange(circleci.token()), 401, "unknown_issuer")
        assert own.issuer.url in body["detail"]
