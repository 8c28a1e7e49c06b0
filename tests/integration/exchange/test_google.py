"""Google Cloud end to end: a loopback issuer registered as kind "google", real uvicorn, real Postgres.

Tokens are shaped as the metadata server returns them for `audience=tpx&format=full`
(tests/support/google_claims.py), with the loopback issuer's URL as `iss`, signed by its RSA key.
They carry no `jti`: replay protection keys on the SHA-256 of the decoded claims.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ADMIN, registered_issuer
from tests.support.google_claims import OMIT, GoogleServiceAccount
from tests.support.oidc_issuer import LoopbackIssuer
from tests.support import api
from tests.support.api import INTROSPECT, problem, replay_key
from tests.support.events import events_about

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def google_issuer(client, db, exchange_app):
    async with registered_issuer(client, db, exchange_app, "google") as own:
        yield own


@dataclass
class Account:
    """A fresh service account per test, its tokens from the loopback issuer, and its publishers."""

    issuer: LoopbackIssuer
    client: httpx.AsyncClient
    shape: GoogleServiceAccount = field(default_factory=GoogleServiceAccount)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        return self.shape.claims(**{"iss": self.issuer.url, **overrides})

    def token(self, **overrides: Any) -> str:
        return self.issuer.mint(self.claims(**overrides))

    async def add_publisher(self, expect: int = 201, **fields: Any) -> dict[str, Any]:
        body = self.shape.publisher(self.issuer.url, **{"package": f"pkg-{uuid.uuid4().hex[:8]}", **fields})
        body = {name: value for name, value in body.items() if value is not OMIT}
        return await api.add_publisher(self.client, body, expect)

    async def publisher(self, publisher_id: str) -> dict[str, Any]:
        return await api.get_publisher(self.client, publisher_id)

    async def exchange(self, jwt: str) -> httpx.Response:
        return await api.exchange(self.client, jwt)


@pytest.fixture
def account(google_issuer, client) -> Account:
    return Account(google_issuer.issuer, client)


async def spent(db, jwt: str) -> int:
    return await db.fetchval("SELECT count(*) FROM used_jtis WHERE jti = $1", replay_key(jwt))


# --- the happy path ---------------------------------------------------------------------------------------


async def test_a_google_token_mints_binds_sub_and_its_events_match_the_catalogue(account, client, db):
    created = await account.add_publisher()
    assert (created["provider"], created["issuer"]) == ("google", account.issuer.url)
    assert (created["email"], created["sub"], created["ref_patterns"]) == (account.shape.email, None, [])
    assert "environments" not in created and "workflow_filename" not in created
    [created_event] = await events_about(db, created["id"])
    assert created_event["data"]["after"] == created

    jwt = account.token()
    response = await account.exchange(jwt)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["packages"], body["publisher_ids"]) == ([created["package"]], [created["id"]])

    info = await client.post("/v1/introspect", json={"token": body["token"]}, headers=INTROSPECT)
    assert info.status_code == 200, info.text
    assert info.json()["ci"] == {
        "provider": "google", "issuer": account.issuer.url, "repository": account.shape.repository,
        "owner_id": account.shape.sub, "repository_id": account.shape.sub, "workflow": "", "workflow_ref": "",
        "environment": None, "ref": "", "sha": "", "run_id": None, "actor": None, "event_name": None,
        "runner_environment": None,
    }
    # Instance data from `google.compute_engine` is never read, so it is stored nowhere.
    stored = await db.fetchval("SELECT ci::text FROM tokens WHERE id = $1", uuid.UUID(body["token_id"]))
    assert "release-runner-1" not in stored and "us-central1-c" not in stored

    bound = await account.publisher(created["id"])
    assert bound["sub"] == account.shape.sub
    events = {event["type"]: event for event in await events_about(db, created["id"])}
    assert events["dev.tpx.publisher.bound"]["data"]["bound"] == {"sub": account.shape.sub}
    [issued] = await events_about(db, body["token_id"])
    assert issued["type"] == "dev.tpx.token.issued" and issued["data"]["ci"]["provider"] == "google"
    # No jti: the replay key is the hash of the decoded claims.
    assert await spent(db, jwt) == 1


async def test_a_pinned_sub_refuses_a_recreated_account_of_the_same_email(account, db):
    created = await account.add_publisher(sub=account.shape.sub)
    assert created["sub"] == account.shape.sub
    jwt = account.token(sub="104628349174512389099", azp="104628349174512389099")
    body = problem(await account.exchange(jwt), 403, "no_matching_publisher")
    assert f"publisher {created['id']}" in body["detail"] and "sub check failed" in body["detail"]
    [hint] = body["hints"]
    assert hint.startswith(f"publisher {created['id']} (package {created['package']}): sub: the token has "
                           f"'104628349174512389099', expected '{account.shape.sub}'")
    assert "deleted and re-created" in hint
    assert await spent(db, jwt) == 0
    assert (await account.exchange(account.token())).status_code == 200


async def test_a_recreated_account_cannot_bind_through_an_unpinned_sibling(account):
    """Two packages trust one account; one publisher pins its sub. A token of a re-created account (same
    email, new sub) is refused by both: the pinned one by its sub row, the unpinned one because its
    sibling pins another id."""
    pinned = await account.add_publisher(sub=account.shape.sub)
    loose = await account.add_publisher()
    body = problem(await account.exchange(account.token(sub="104628349174512389099")), 403, "no_matching_publisher")
    hints = "\n".join(body["hints"])
    assert f"publisher {pinned['id']} (package {pinned['package']}): sub:" in hints
    assert f"publisher {loose['id']} (package {loose['package']}): repository_pins:" in hints
    assert "re-registered" in hints
    minted = await account.exchange(account.token())
    assert minted.status_code == 200, minted.text
    assert sorted(minted.json()["publisher_ids"]) == sorted([pinned["id"], loose["id"]])


async def test_the_sub_bound_on_first_success_is_checked_after(account):
    created = await account.add_publisher()
    assert (await account.exchange(account.token())).status_code == 200
    body = problem(await account.exchange(account.token(sub="999")), 403, "no_matching_publisher")
    assert any(hint.startswith(f"publisher {created['id']} (package {created['package']}): sub: the token has "
                               f"'999', expected '{account.shape.sub}'") for hint in body["hints"])


async def test_emails_compare_ignoring_case_and_are_stored_lower_cased(google_issuer, client):
    account = Account(google_issuer.issuer, client)
    created = await account.add_publisher(email=account.shape.email.replace("release", "Release"))
    assert created["email"] == account.shape.email
    await account.add_publisher(expect=409, email=account.shape.email.upper().replace(
        ".IAM.GSERVICEACCOUNT.COM", ".iam.gserviceaccount.com"), package=created["package"])
    assert (await account.exchange(account.token())).status_code == 200
    shouting = account.shape.email.replace("release", "RELEASE")
    assert (await account.exchange(account.token(email=shouting))).status_code == 200


# --- refusals ---------------------------------------------------------------------------------------------


async def test_an_unverified_email_is_denied_with_hints_and_a_denial_event(account, db):
    created = await account.add_publisher()
    jwt = account.token(email_verified=False)
    body = problem(await account.exchange(jwt), 403, "no_matching_publisher")
    assert "email_verified check failed" in body["detail"]
    [hint] = body["hints"]
    assert hint.startswith(f"publisher {created['id']} (package {created['package']}): email_verified: the token "
                           "has False, expected True")
    assert await spent(db, jwt) == 0
    [denied] = await events_about(db, account.shape.repository)
    assert denied["type"] == "dev.tpx.exchange.denied" and denied["data"]["ci"]["provider"] == "google"
    assert denied["data"]["publishers"][0]["failed_checks"] == ["email_verified"]


async def test_another_service_account_gets_the_add_one_hint(account, google_issuer, client):
    await account.add_publisher()
    other = Account(google_issuer.issuer, client, GoogleServiceAccount(project=account.shape.project))
    body = problem(await other.exchange(other.token()), 403, "no_matching_publisher")
    assert body["detail"] == (f"no trusted publisher is configured for repository {other.shape.repository} on "
                              f"issuer {google_issuer.issuer.url}")
    assert '"provider": "google"' in body["hints"][0] and f'"email": "{other.shape.email}"' in body["hints"][0]


async def test_a_replayed_token_is_refused(account, db):
    await account.add_publisher()
    jwt = account.token()
    assert (await account.exchange(jwt)).status_code == 200
    problem(await account.exchange(jwt), 409, "token_reused")
    assert await spent(db, jwt) == 1


@pytest.mark.parametrize(
    ("overrides", "claim", "phrase"),
    [
        pytest.param({"email_verified": "true"}, "email_verified", "JSON string", id="verified-as-string"),
        pytest.param({"email_verified": OMIT}, "email_verified", "JSON boolean true", id="verified-missing"),
        pytest.param({"email": OMIT}, "email", "format=full", id="email-missing"),
        pytest.param({"email": "someone@gmail.com"}, "email", "service-account ID tokens only", id="a-person"),
        pytest.param({"sub": 104628349174512389012}, "sub", "JSON integer", id="sub-as-number"),
        pytest.param({"sub": "10462834917451238901a"}, "sub", "digits", id="sub-shape"),
    ],
)
async def test_malformed_tokens(account, db, overrides, claim, phrase):
    await account.add_publisher()
    jwt = account.token(**overrides)
    body = problem(await account.exchange(jwt), 400, "malformed_token")
    assert f"'{claim}'" in body["detail"] and phrase in body["detail"]
    assert "someone@gmail.com" not in body["detail"]
    assert await spent(db, jwt) == 0


async def test_explain_shows_every_row_and_spends_nothing(account, client, db):
    publisher = await account.add_publisher()
    jwt = account.token(email_verified=False)
    response = await client.post("/v1/explain", json={"jwt": jwt})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["would_issue"] is False and body["identity"]["repository"] == account.shape.repository
    [explained] = body["publishers"]
    assert explained["id"] == publisher["id"]
    rows = {row["check"]: row for row in explained["checks"]}
    assert list(rows)[:3] == ["email", "sub", "email_verified"]
    assert rows["email"] == {"check": "email", "claim": "email", "expected": account.shape.email,
                             "actual": account.shape.email, "passed": True}
    assert rows["email_verified"]["passed"] is False and rows["email_verified"]["actual"] is False
    assert await spent(db, jwt) == 0


# --- publishers that could never match are refused when created -------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "phrase"),
    [
        pytest.param({"email": "123456789012-compute@developer.gserviceaccount.com"}, "email",
                     "every workload of their project can use them", id="default-compute-account"),
        pytest.param({"email": "acme-build-prod@appspot.gserviceaccount.com"}, "email",
                     "every workload of their project can use them", id="app-engine-default-account"),
        pytest.param({"email": "someone@gmail.com"}, "email", "user-managed Google Cloud service account",
                     id="a-person"),
        pytest.param({"ref_patterns": ["refs/tags/v*"]}, "ref_patterns", "names no git ref", id="ref-patterns"),
        pytest.param({"environments": ["release"]}, "environments", "is not a known field", id="environments"),
        pytest.param({"sub": 104628349174512389012}, "sub", "a string of digits", id="sub-as-number"),
    ],
)
async def test_publisher_refusals_name_the_field(account, fields, field, phrase):
    body = await account.add_publisher(expect=422, **fields)
    assert body["code"] == "invalid_publisher" and body["field"] == field
    assert phrase in body["detail"]


async def test_a_google_publisher_needs_a_google_issuer(account, issuer, client):
    await account.add_publisher(issuer=issuer.url, expect=422)
    github = {"package": "pkg", "provider": "github", "issuer": account.issuer.url, "repository_owner": "acme",
              "repository_name": "widgets", "workflow_filename": "release.yml"}
    response = await client.post("/v1/admin/publishers", headers=ADMIN, json=github)
    assert response.status_code == 422, response.text
    # And the public issuer must be registered by an operator (as kind "google") before a publisher may name it.
    response = await client.post("/v1/admin/publishers", headers=ADMIN, json={
        "package": "pkg", "provider": "google", "email": account.shape.email})
    assert response.status_code == 422, response.text
    assert "'https://accounts.google.com' is not a registered issuer" in response.json()["detail"]


async def test_disabling_the_issuer_refuses_the_next_exchange(client, db, exchange_app):
    async with registered_issuer(client, db, exchange_app, "google") as own:
        account = Account(own.issuer, client)
        await account.add_publisher()
        assert (await account.exchange(account.token())).status_code == 200
        await own.set_enabled(False)
        jwt = account.token()
        body = problem(await account.exchange(jwt), 401, "unknown_issuer")
        assert own.issuer.url in body["detail"]
        assert await spent(db, jwt) == 0
