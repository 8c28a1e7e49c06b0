"""The exchange end to end: real uvicorn, real Postgres, a real loopback OIDC issuer."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tpx.core import tokens
from tests.integration.conftest import ADMIN
from tests.support.api import INTROSPECT, introspect

pytestmark = pytest.mark.integration


async def test_happy_path_token_is_active_and_scoped_to_matched_packages(repo, client, db):
    foo = await repo.add_publisher(package=f"foo-{uuid.uuid4().hex[:6]}")
    bar = await repo.add_publisher(package=f"bar-{uuid.uuid4().hex[:6]}", permissions=["publish-new", "publish-update"])
    other = repo.__class__(repo.issuer, client)  # another repository's publisher must not be included
    await other.add_publisher()

    response = await repo.exchange(repo.token())
    assert response.status_code == 200, response.text
    body = response.json()
    assert tokens.is_well_formed(body["token"])
    assert sorted(body["packages"]) == sorted([foo["package"], bar["package"]])
    assert sorted(body["publisher_ids"]) == sorted([foo["id"], bar["id"]])
    assert body["permissions"] == {foo["package"]: ["publish-update"], bar["package"]: ["publish-new", "publish-update"]}
    assert body["expires_in"] == 1800
    assert response.headers["cache-control"] == "no-store"

    info = await introspect(client, body["token"])
    assert info["active"] is True
    assert info["token_id"] == body["token_id"]
    assert sorted(info["packages"]) == sorted(body["packages"])
    # `permissions` (per package) is authoritative; `scope` holds only what holds for every package:
    # bar may be created (publish-new), foo may not, so the token's scope is publish-update alone.
    assert info["permissions"] == body["permissions"]
    assert info["scope"] == "publish-update"
    assert info["exp"] - info["iat"] == 1800
    assert info["ci"]["repository"] == repo.repository
    assert info["ci"]["workflow"] == "release.yml"
    assert info["ci"]["environment"] == "prod"

    stored = await db.fetchrow("SELECT token_hash, ci::text AS ci FROM tokens WHERE id = $1", uuid.UUID(body["token_id"]))
    assert bytes(stored["token_hash"]) == tokens.lookup_key(body["token"])
    assert body["token"] not in stored["ci"]


async def test_lifetime_is_the_smallest_among_matched_publishers(repo):
    await repo.add_publisher(token_ttl_seconds=900)
    await repo.add_publisher(token_ttl_seconds=600)
    response = await repo.exchange(repo.token())
    assert response.status_code == 200, response.text
    assert response.json()["expires_in"] == 600


async def test_replay_of_the_same_id_token_is_refused(repo):
    await repo.add_publisher()
    jwt = repo.token()
    assert (await repo.exchange(jwt)).status_code == 200
    second = await repo.exchange(jwt)
    assert second.status_code == 409
    assert second.json()["code"] == "token_reused"


async def test_replay_with_padded_signature_is_not_a_new_token(repo):
    await repo.add_publisher()
    jwt = repo.token()
    assert (await repo.exchange(jwt)).status_code == 200
    response = await repo.exchange(jwt + "==")
    assert response.status_code in (400, 409)
    assert "token" not in response.json()


async def test_twenty_concurrent_submissions_mint_exactly_once(repo, db):
    await repo.add_publisher()
    jwt = repo.token()
    responses = await asyncio.gather(*(repo.exchange(jwt) for _ in range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 1, statuses
    assert statuses.count(409) == 19, statuses
    count = await db.fetchval("SELECT count(*) FROM tokens WHERE ci->>'repository' = $1", repo.repository)
    assert count == 1


async def test_mismatch_consumes_no_jti(repo, db):
    publisher = await repo.add_publisher(environments=["release"])
    claims = repo.claims(environment="prod")
    jwt = repo.issuer.mint(claims)
    denied = await repo.exchange(jwt)
    assert denied.status_code == 403
    assert denied.json()["code"] == "no_matching_publisher"
    assert await db.fetchval("SELECT count(*) FROM used_jtis WHERE jti = $1", claims["jti"]) == 0
    # After the owner fixes the configuration, the same ID token works: nothing was consumed.
    await repo.add_publisher(package=publisher["package"], environments=["prod"])
    assert (await repo.exchange(jwt)).status_code == 200


async def test_owner_id_mismatch_account_resurrection_is_refused(repo):
    await repo.add_publisher(repository_owner_id=repo.owner_id)
    response = await repo.exchange(repo.token(owner_id="99999"))
    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "no_matching_publisher"
    assert any("repository_owner_id" in hint and "99999" in hint for hint in body["hints"])


async def test_ids_are_bound_on_first_success_and_checked_after(repo, client):
    publisher = await repo.add_publisher()
    assert publisher["repository_owner_id"] is None
    assert (await repo.exchange(repo.token())).status_code == 200
    bound = (await client.get(f"/v1/admin/publishers/{publisher['id']}", headers=ADMIN)).json()["publisher"]
    assert bound["repository_owner_id"] == repo.owner_id
    assert bound["repository_id"] == repo.repository_id
    resurrected = await repo.exchange(repo.token(owner_id="424242", repository_id="434343"))
    assert resurrected.status_code == 403


async def test_concurrent_first_exchanges_bind_one_identity(repo, client):
    publisher = await repo.add_publisher()
    first = repo.token()
    impostor = repo.token(owner_id="777", repository_id="778")
    results = await asyncio.gather(repo.exchange(first), repo.exchange(impostor))
    assert sorted(r.status_code for r in results) == [200, 403]
    bound = (await client.get(f"/v1/admin/publishers/{publisher['id']}", headers=ADMIN)).json()["publisher"]
    winner = results[0] if results[0].status_code == 200 else results[1]
    info = await introspect(client, winner.json()["token"])
    assert bound["repository_owner_id"] == info["ci"]["owner_id"]


async def test_case_variant_owner_and_repository_are_accepted(repo):
    await repo.add_publisher(repository_owner=repo.owner.upper(), repository_name=repo.repo.upper())
    assert (await repo.exchange(repo.token())).status_code == 200


async def test_workflow_from_another_repository_is_refused(repo):
    await repo.add_publisher()
    claims = repo.claims()
    claims["workflow_ref"] = f"evil-org/evil-repo/.github/workflows/release.yml@{claims['ref']}"
    response = await repo.exchange(repo.issuer.mint(claims))
    assert response.status_code == 403
    assert response.json()["code"] == "no_matching_publisher"


@pytest.mark.parametrize("event", ["pull_request_target", "workflow_run"])
async def test_dangerous_triggers_are_refused(repo, event):
    await repo.add_publisher()
    response = await repo.exchange(repo.token(event_name=event))
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden_trigger"
    assert event in response.json()["detail"]


@pytest.mark.parametrize(
    ("environments", "token_environment", "status"),
    [
        ([], "anything", 200),
        ([], None, 200),
        (["release"], "release", 200),
        (["release"], "Release", 200),
        (["release", "prod"], "prod", 200),
        (["release"], "staging", 403),
        (["release"], None, 403),
    ],
)
async def test_environment_rules(repo, environments, token_environment, status):
    await repo.add_publisher(environments=environments)
    response = await repo.exchange(repo.token(environment=token_environment))
    assert response.status_code == status, response.text


async def test_ref_patterns_and_runner_policy(repo):
    await repo.add_publisher(ref_patterns=["refs/tags/v*"])
    assert (await repo.exchange(repo.token(ref="refs/heads/main"))).status_code == 403
    assert (await repo.exchange(repo.token(ref="refs/tags/v1.2.3"))).status_code == 200
    assert (await repo.exchange(repo.token(ref="refs/tags/v1.2.4", runner_environment="self-hosted"))).status_code == 403


async def test_self_hosted_runner_allowed_when_configured(repo):
    await repo.add_publisher(allow_self_hosted_runners=True)
    assert (await repo.exchange(repo.token(runner_environment="self-hosted"))).status_code == 200


async def test_denial_detail_and_hints_name_claim_value_and_expected(repo):
    publisher = await repo.add_publisher(environments=["release"], workflow_filename="publish.yml")
    response = await repo.exchange(repo.token(environment="staging"))
    body = response.json()
    assert body["code"] == "no_matching_publisher"
    assert publisher["id"] in body["detail"]
    joined = "\n".join(body["hints"])
    assert "staging" in joined and "release" in joined
    assert "publish.yml" in joined and "release.yml" in joined
    assert body["request_id"] == response.headers["x-request-id"]


async def test_denial_hints_never_mention_other_repositories(repo, client):
    other = repo.__class__(repo.issuer, client)
    secret_package = f"secret-{uuid.uuid4().hex[:6]}"
    await other.add_publisher(package=secret_package)
    response = await repo.exchange(repo.token())
    assert response.status_code == 403
    assert secret_package not in response.text
    assert other.repository not in response.text


async def test_explain_reports_each_check_and_consumes_nothing(repo, client, db):
    publisher = await repo.add_publisher(environments=["release"])
    claims = repo.claims(environment="staging")
    jwt = repo.issuer.mint(claims)
    response = await client.post("/v1/explain", json={"jwt": jwt})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["would_issue"] is False
    assert body["identity"]["repository"] == repo.repository
    [entry] = body["publishers"]
    assert entry["id"] == publisher["id"] and entry["matched"] is False
    checks = {c["check"]: c for c in entry["checks"]}
    assert {"repository", "repository_owner_id", "repository_id", "workflow", "trigger", "environment", "ref",
            "runner"} <= set(checks)
    assert checks["environment"]["passed"] is False
    assert checks["environment"]["actual"] == "staging"
    assert checks["workflow"]["passed"] is True
    assert await db.fetchval("SELECT count(*) FROM used_jtis WHERE jti = $1", claims["jti"]) == 0


async def test_revoke_makes_introspection_inactive(repo, client):
    await repo.add_publisher()
    token = (await repo.exchange(repo.token())).json()["token"]
    assert (await introspect(client, token))["active"] is True
    response = await client.post("/v1/revoke", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 204
    assert (await introspect(client, token))["active"] is False
    again = await client.post("/v1/revoke", json={"token": token})
    assert again.status_code == 204  # idempotent


async def test_revoke_by_form_and_unknown_token(client):
    unknown = tokens.generate()
    response = await client.post("/v1/revoke", content=f"token={unknown}",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 204
    malformed = await client.post("/v1/revoke", json={"token": "tpx_not-a-token"})
    assert malformed.status_code == 400
    assert malformed.json()["code"] == "malformed_token"


async def test_deleting_a_publisher_revokes_its_tokens(repo, client):
    publisher = await repo.add_publisher()
    token = (await repo.exchange(repo.token())).json()["token"]
    response = await client.delete(f"/v1/admin/publishers/{publisher['id']}", headers=ADMIN)
    assert response.status_code == 200
    assert response.json()["revoked_tokens"] == 1
    assert (await introspect(client, token))["active"] is False
    gone = await client.get(f"/v1/admin/publishers/{publisher['id']}", headers=ADMIN)
    assert gone.status_code == 404


async def test_introspection_of_unknown_and_malformed_tokens(client):
    assert (await introspect(client, tokens.generate()))["active"] is False
    assert (await introspect(client, "garbage"))["active"] is False
    form = await client.post("/v1/introspect", content="token=garbage", headers={
        **INTROSPECT, "Content-Type": "application/x-www-form-urlencoded"})
    assert form.json() == {"active": False}


@pytest.mark.parametrize("path", ["/v1/introspect", "/v1/admin/publishers", "/v1/admin/issuers", "/v1/admin/tokens"])
@pytest.mark.parametrize("header", [None, "Bearer wrong-credential-0123456789", "Basic abc", "Bearer"])
async def test_admin_and_introspection_need_their_credential(client, path, header):
    headers = {"Authorization": header} if header else {}
    method = client.post if path == "/v1/introspect" else client.get
    kwargs = {"json": {"token": tokens.generate()}} if path == "/v1/introspect" else {}
    response = await method(path, headers=headers, **kwargs)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_admin_token_is_not_an_introspection_credential(client):
    response = await client.post("/v1/introspect", json={"token": tokens.generate()}, headers=ADMIN)
    assert response.status_code == 401


async def test_admin_tokens_listing_never_shows_secrets(repo, client):
    publisher = await repo.add_publisher()
    minted = (await repo.exchange(repo.token())).json()
    response = await client.get("/v1/admin/tokens", params={"publisher_id": publisher["id"]}, headers=ADMIN)
    assert response.status_code == 200
    [listed] = response.json()["tokens"]
    assert listed["token_id"] == minted["token_id"] and listed["active"] is True
    assert minted["token"] not in response.text
    inactive = await client.get("/v1/admin/tokens", params={"publisher_id": publisher["id"], "active": "false"},
                                headers=ADMIN)
    assert inactive.json()["tokens"] == []


async def test_scope_is_what_every_package_of_the_token_allows(repo, client):
    await repo.add_publisher(permissions=["publish-new", "publish-update"])
    await repo.add_publisher(permissions=["publish-update", "publish-new"])
    info = await introspect(client, (await repo.exchange(repo.token())).json()["token"])
    assert info["scope"] == "publish-update publish-new"


async def test_environment_unpinned_notice_is_an_event(repo, db):
    loose = await repo.add_publisher()
    pinned = await repo.add_publisher(environments=["prod"])
    minted = (await repo.exchange(repo.token(environment="prod"))).json()
    rows = await db.fetch("SELECT subject, data FROM outbox WHERE type = 'dev.tpx.exchange.environment_unpinned' "
                          "AND data->>'token_id' = $1", minted["token_id"])
    assert [row["subject"] for row in rows] == [loose["id"]]
    assert rows[0]["data"]["environment"] == "prod"
    assert pinned["id"] not in [row["subject"] for row in rows]


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned-one-statement-path", "binding-transaction-path"])
async def test_concurrent_submissions_mint_once_on_both_paths(repo, db, pinned):
    ids = {"repository_owner_id": repo.owner_id, "repository_id": repo.repository_id} if pinned else {}
    await repo.add_publisher(**ids)
    jwt = repo.token()
    responses = await asyncio.gather(*(repo.exchange(jwt) for _ in range(20)))
    assert sorted(r.status_code for r in responses) == [200] + [409] * 19


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "binding"])
async def test_publisher_deleted_between_decision_and_write_writes_nothing(repo, client, db, exchange_app, settings,
                                                                          pinned):
    from tpx.core.db import publishers as publisher_store
    from tpx.exchange.group_commit import OnConnection
    from tpx.exchange.minting import decide, write
    from tpx.exchange.verification import verify_id_token

    ids = {"repository_owner_id": repo.owner_id, "repository_id": repo.repository_id} if pinned else {}
    publisher = await repo.add_publisher(**ids)
    claims = repo.claims()
    verified = await verify_id_token(repo.issuer.mint(claims), exchange_app.state.tpx.keycache, settings)
    async with db.acquire() as conn:
        candidates = await publisher_store.candidates(conn, verified.issuer.id, verified.identity.repository_key)
        decision = decide(verified, candidates, settings)
        assert decision.publisher_ids == [publisher["id"]]
        assert bool(decision.unbound) is not pinned
        assert (await client.delete(f"/v1/admin/publishers/{publisher['id']}", headers=ADMIN)).status_code == 200
        assert await write(OnConnection(conn), settings, decision) is None
    assert await db.fetchval("SELECT count(*) FROM used_jtis WHERE jti = $1", claims["jti"]) == 0
    assert await db.fetchval("SELECT count(*) FROM tokens WHERE ci->>'repository' = $1", repo.repository) == 0


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "binding"])
async def test_a_deletion_committed_while_the_mint_waits_on_the_gate_mints_nothing(repo, db, exchange_app, settings,
                                                                                  pinned):
    """The one-statement mint takes its snapshot before it waits for the gate; it must still see a
    publisher deletion that committed meanwhile (it checks, or locks, after the gate)."""
    from tpx.core.db import publishers as publisher_store
    from tpx.core.db.locks import MINT_GATE
    from tpx.exchange.group_commit import OnConnection
    from tpx.exchange.minting import decide, write
    from tpx.exchange.verification import verify_id_token

    ids = {"repository_owner_id": repo.owner_id, "repository_id": repo.repository_id} if pinned else {}
    publisher = await repo.add_publisher(**ids)
    claims = repo.claims()
    verified = await verify_id_token(repo.issuer.mint(claims), exchange_app.state.tpx.keycache, settings)
    async with db.acquire() as deleter, db.acquire() as minter:
        candidates = await publisher_store.candidates(minter, verified.issuer.id, verified.identity.repository_key)
        decision = decide(verified, candidates, settings)
        transaction = deleter.transaction()
        await transaction.start()
        await deleter.execute("SELECT pg_advisory_xact_lock($1)", MINT_GATE)  # as a deletion does
        await deleter.execute("DELETE FROM publishers WHERE id = $1", uuid.UUID(publisher["id"]))
        mint = asyncio.create_task(write(OnConnection(minter), settings, decision))
        done, _ = await asyncio.wait({mint}, timeout=0.3)
        assert not done, "the mint must wait for the gate"
        await transaction.commit()
        assert await asyncio.wait_for(mint, 10) is None
    assert await db.fetchval("SELECT count(*) FROM used_jtis WHERE jti = $1", claims["jti"]) == 0


async def test_ids_pinned_by_another_exchange_after_the_decision_write_nothing(repo, db, exchange_app, settings):
    """A first exchange decides to pin the token's ids; another first exchange pins other ids before it
    writes. The later write must bind nothing, claim nothing and mint nothing, and its retry is refused."""
    from tpx.core.db import publishers as publisher_store
    from tpx.exchange.group_commit import OnConnection
    from tpx.exchange.minting import decide, write
    from tpx.exchange.verification import verify_id_token

    publisher = await repo.add_publisher()
    claims = repo.claims()
    verified = await verify_id_token(repo.issuer.mint(claims), exchange_app.state.tpx.keycache, settings)
    async with db.acquire() as conn:
        candidates = await publisher_store.candidates(conn, verified.issuer.id, verified.identity.repository_key)
        decision = decide(verified, candidates, settings)
        assert [p.id for p, _ in decision.unbound] == [publisher["id"]]
        await conn.execute("UPDATE publishers SET owner_id = '999', name_id = '998' WHERE id = $1",
                           uuid.UUID(publisher["id"]))
        assert await write(OnConnection(conn), settings, decision) is None
    row = await db.fetchrow("SELECT owner_id, name_id FROM publishers WHERE id = $1", uuid.UUID(publisher["id"]))
    assert (row["owner_id"], row["name_id"]) == ("999", "998")
    assert await db.fetchval("SELECT count(*) FROM used_jtis WHERE jti = $1", claims["jti"]) == 0
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE type = 'dev.tpx.publisher.bound' "
                             "AND subject = $1", publisher["id"]) == 0
    response = await repo.exchange(repo.issuer.mint(claims))
    assert response.status_code == 403, response.text
    assert "repository_owner_id" in response.json()["detail"] + " ".join(response.json()["hints"])


async def test_a_publisher_added_after_a_cached_exchange_is_seen(repo, exchange_app):
    """Candidates are cached briefly; any change to publishers invalidates every replica's cache."""
    from tests.support.events import eventually

    first = await repo.add_publisher()
    assert (await repo.exchange(repo.token())).json()["packages"] == [first["package"]]  # now cached
    cache = exchange_app.state.tpx.candidates
    generation = cache.generation
    second = await repo.add_publisher()
    await eventually(lambda: cache.generation > generation, "the publishers NOTIFY to reach the exchange", timeout=5)
    packages = (await repo.exchange(repo.token())).json()["packages"]
    assert sorted(packages) == sorted([first["package"], second["package"]])


async def test_a_resurrected_owner_cannot_bind_through_an_unpinned_sibling(repo, db):
    first = await repo.add_publisher()
    assert (await repo.exchange(repo.token())).status_code == 200  # pins the repository's ids on `first`
    sibling = await repo.add_publisher()  # added later: pins nothing yet
    resurrected = await repo.exchange(repo.token(owner_id="424242"))
    assert resurrected.status_code == 403, resurrected.text
    hints = " ".join(resurrected.json()["hints"])
    assert f"publisher {sibling['id']}" in hints and "repository_pins" in hints and repo.owner_id in hints
    row = await db.fetchrow("SELECT owner_id FROM publishers WHERE id = $1", uuid.UUID(sibling["id"]))
    assert row["owner_id"] is None
    assert first["id"] in hints


async def test_a_github_token_without_a_jti_is_malformed_and_spends_nothing(repo, db):
    await repo.add_publisher()
    claims = repo.claims()
    del claims["jti"]
    response = await repo.exchange(repo.issuer.mint(claims))
    assert response.status_code == 400 and response.json()["code"] == "malformed_token", response.text
    assert "no 'jti' claim" in response.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM tokens WHERE ci->>'repository' = $1", repo.repository) == 0


async def test_a_publisher_pinned_to_a_reusable_workflow(repo, client):
    """A release published only by a shared, reviewed workflow: the caller is checked as before, and the
    called workflow (job_workflow_ref) too; explain shows both."""
    shared = f"{repo.owner}/release-workflows/.github/workflows/publish.yml"
    await repo.add_publisher(job_workflow_ref=f"{shared}@refs/heads/main")
    called = await repo.exchange(repo.token(job_workflow_ref=f"{shared}@refs/heads/main"))
    assert called.status_code == 200, called.text
    direct = await repo.exchange(repo.token())   # the caller publishing itself, without the shared workflow
    assert direct.status_code == 403 and direct.json()["code"] == "no_matching_publisher"
    assert any("called_workflow" in hint for hint in direct.json()["hints"]), direct.json()["hints"]
    moved = await repo.exchange(repo.token(job_workflow_ref=f"{shared}@refs/heads/experiment"))
    assert moved.status_code == 403
    explained = (await client.post("/v1/explain", json={"jwt": repo.token()})).json()
    rows = {row["check"]: row for row in explained["publishers"][0]["checks"]}
    assert rows["workflow"]["passed"] and not rows["called_workflow"]["passed"]
    assert rows["called_workflow"]["expected"] == f"{shared}@refs/heads/main"
