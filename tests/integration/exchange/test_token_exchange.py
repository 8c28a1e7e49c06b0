"""RFC 8693 token exchange at POST /v1/token, and narrowing on request at POST /v1/exchange: the same
verification, replay protection, events and limits as the native exchange, in OAuth's shapes."""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest

from tests.integration.conftest import Repo
from tests.support.api import introspect

pytestmark = pytest.mark.integration
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
JWT = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
# RFC 6749 section 5.2: error_description is %x20-21 / %x23-5B / %x5D-7E.
DESCRIPTION = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")


def post(client, data, **kwargs):
    """A form post; a list of pairs may repeat a parameter (httpx's `data=` takes a dict only)."""
    if isinstance(data, list):
        return client.post("/v1/token", content=urlencode(data),
                           headers={"Content-Type": "application/x-www-form-urlencoded"}, **kwargs)
    return client.post("/v1/token", data=data, **kwargs)


def form(jwt: str, **extra) -> dict:
    return {"grant_type": GRANT, "subject_token": jwt, "subject_token_type": ID_TOKEN, **extra}


async def exchange(client, data) -> dict:
    response = await post(client, data)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store" and response.headers["pragma"] == "no-cache"
    return response.json()


async def refused(client, data, status: int, error: str, code: str | None = None, **kwargs) -> dict:
    response = await (client.post("/v1/token", **kwargs) if data is None else post(client, data, **kwargs))
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    assert code is None or body["code"] == code, body
    assert DESCRIPTION.fullmatch(body["error_description"]), body["error_description"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


@pytest.fixture
async def two_packages(repo: Repo):
    """One repository, two publishers: two packages, one also granted publish-new."""
    first = await repo.add_publisher(permissions=["publish-update", "publish-new"])
    second = await repo.add_publisher()
    return first["package"], second["package"]


@pytest.mark.parametrize("token_type", [ID_TOKEN, JWT])
async def test_an_id_token_for_an_access_token(client, repo, two_packages, token_type):
    answer = await exchange(client, form(repo.token(), subject_token_type=token_type))
    assert answer["issued_token_type"] == ACCESS_TOKEN and answer["token_type"] == "Bearer"
    assert 0 < answer["expires_in"] <= 3600 and answer["scope"] == "publish-update"
    assert sorted(answer["packages"]) == sorted(two_packages)
    shown = await introspect(client, answer["access_token"])
    assert shown["active"] and shown["token_id"] == answer["token_id"] and shown["permissions"] == answer["permissions"]


async def test_audience_and_resource_narrow_the_packages(client, repo, two_packages):
    first, second = two_packages
    by_audience = await exchange(client, form(repo.token(), audience=first))
    assert by_audience["packages"] == [first] and by_audience["scope"] == "publish-update publish-new"
    by_resource = await exchange(client, form(repo.token(), resource=f"urn:tpx:package:{second}"))
    assert by_resource["packages"] == [second]
    both = await exchange(client, [*form(repo.token()).items(), ("audience", first),
                                   ("resource", f"urn:tpx:package:{second}")])
    assert sorted(both["packages"]) == sorted(two_packages)
    assert (await introspect(client, by_audience["access_token"]))["packages"] == [first]


async def test_scope_and_lifetime_narrow_the_token(client, repo, two_packages):
    first, _ = two_packages
    answer = await exchange(client, form(repo.token(), audience=first, scope="publish-update", lifetime_seconds="120"))
    assert answer["permissions"] == {first: ["publish-update"]} and answer["scope"] == "publish-update"
    assert 115 <= answer["expires_in"] <= 120


async def test_asking_for_more_than_is_granted_is_refused_and_spends_nothing(client, repo, two_packages):
    jwt = repo.token()
    body = await refused(client, form(jwt, audience="not-my-package"), 400, "invalid_target", "not_granted")
    assert "not-my-package" in body["detail"] and two_packages[0] in body["detail"]
    await refused(client, form(jwt, resource="https://example.com/x"), 400, "invalid_target", "not_granted")
    await refused(client, form(jwt, audience=two_packages[1], scope="publish-new"), 400, "invalid_scope",
                  "not_granted")
    await refused(client, form(jwt, scope="admin"), 400, "invalid_scope", "not_granted")
    assert (await exchange(client, form(jwt)))["packages"]   # the ID token was not consumed by the refusals


@pytest.mark.parametrize(("change", "error", "field"), [
    ({"grant_type": "client_credentials"}, "unsupported_grant_type", "grant_type"),
    ({"subject_token": None}, "invalid_request", "subject_token"),
    ({"subject_token_type": ACCESS_TOKEN}, "invalid_request", "subject_token_type"),
    ({"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"}, "invalid_request",
     "requested_token_type"),
    ({"actor_token": "x", "actor_token_type": JWT}, "invalid_request", "actor_token"),
    ({"lifetime_seconds": "30"}, "invalid_request", "lifetime_seconds"),
    ({"lifetime_seconds": "ten"}, "invalid_request", "lifetime_seconds"),
])
async def test_request_errors_name_the_parameter(client, repo, two_packages, change, error, field):
    data = {k: v for k, v in {**form(repo.token()), **change}.items() if v is not None}
    body = await refused(client, data, 400, error, "malformed_request")
    assert body["detail"].startswith(f"{field}: "), body


async def test_a_parameter_given_twice_is_refused_but_audience_may_repeat(client, repo, two_packages):
    body = await refused(client, [*form(repo.token()).items(), ("subject_token", "x")], 400, "invalid_request")
    assert "subject_token" in body["detail"] and "more than once" in body["detail"]


async def test_unknown_parameters_are_ignored_and_empty_ones_are_absent(client, repo, two_packages):
    answer = await exchange(client, form(repo.token(), client_id="ci", audience="", scope=""))
    assert sorted(answer["packages"]) == sorted(two_packages)


async def test_only_a_form_is_accepted(client, repo):
    await refused(client, None, 415, "invalid_request", "unsupported_media_type", json=form(repo.token()))


async def test_subject_token_failures_are_invalid_request_with_tpx_detail(client, repo, two_packages):
    """RFC 8693 section 2.2.2: an invalid or unacceptable subject_token is invalid_request."""
    await refused(client, form("not-a-jwt"), 400, "invalid_request", "malformed_token")
    jwt = repo.token()
    await exchange(client, form(jwt))
    await refused(client, form(jwt), 400, "invalid_request", "token_reused")
    stranger = Repo(repo.issuer, client)
    body = await refused(client, form(stranger.token()), 400, "invalid_request", "no_matching_publisher")
    assert stranger.repository in body["detail"] and "Hints:" in body["error_description"]


async def test_the_same_events_as_the_native_exchange(client, repo, db, two_packages):
    answer = await exchange(client, form(repo.token(), audience=two_packages[0]))
    data = await db.fetchval("SELECT data FROM outbox WHERE type = 'dev.tpx.token.issued' AND subject = $1",
                             answer["token_id"])
    assert data is not None and data["packages"] == [two_packages[0]]


# --- narrowing on the native route ---------------------------------------------------------------------------

async def test_the_native_exchange_narrows_on_request(client, repo, two_packages):
    first, second = two_packages
    response = await client.post("/v1/exchange", json={"jwt": repo.token(), "packages": [second],
                                                       "lifetime_seconds": 300})
    assert response.status_code == 200, response.text
    assert response.json()["packages"] == [second] and response.json()["expires_in"] <= 300
    narrowed = await client.post("/v1/exchange", json={"jwt": repo.token(), "packages": [first],
                                                       "permissions": ["publish-new"]})
    assert narrowed.json()["permissions"] == {first: ["publish-new"]}


@pytest.mark.parametrize(("extra", "status", "code", "field"), [
    ({"packages": ["someone-elses"]}, 403, "not_granted", "packages"),
    ({"permissions": ["publish-new"]}, 403, "not_granted", "permissions"),   # the second package has update only
    ({"packages": []}, 400, "malformed_request", "packages"),
    ({"permissions": ["admin"]}, 400, "malformed_request", "permissions"),
    ({"lifetime_seconds": 59}, 400, "malformed_request", "lifetime_seconds"),
    ({"lifetime_seconds": "600"}, 400, "malformed_request", "lifetime_seconds"),
])
async def test_native_narrowing_refusals_name_the_field_and_spend_nothing(client, repo, two_packages, extra, status,
                                                                          code, field):
    jwt = repo.token()
    response = await client.post("/v1/exchange", json={"jwt": jwt, **extra})
    assert response.status_code == status, response.text
    assert (response.json()["code"], response.json()["field"]) == (code, field)
    assert (await client.post("/v1/exchange", json={"jwt": jwt})).status_code == 200


async def test_the_crates_route_takes_no_narrowing(client, repo, two_packages):
    response = await client.post("/api/v1/trusted_publishing/tokens", json={"jwt": repo.token(), "packages": ["x"]})
    assert response.status_code == 400 and "packages: is not a known field" in response.json()["errors"][0]["detail"]
