"""crates.io and PyPI compatibility routes: their success and error shapes, the same reasons as /v1/exchange."""

from __future__ import annotations

import json
import time

import pytest

from tpx.core import tokens
from tpx.core.errors import Problem
from tpx.exchange.routes.compat import render_crates, render_pypi
from tests.conftest import INTROSPECTION_TOKEN
from tests.support.oidc_issuer import new_rsa_key

pytestmark = pytest.mark.integration

CRATES = "/api/v1/trusted_publishing/tokens"
PYPI_MINT = "/_/oidc/mint-token"
PYPI_LEGACY_MINT = "/_/oidc/github/mint-token"
JSON = {"Content-Type": "application/json"}
INTROSPECT = {"Authorization": f"Bearer {INTROSPECTION_TOKEN}"}


async def introspect(client, token: str) -> dict:
    response = await client.post("/v1/introspect", json={"token": token}, headers=INTROSPECT)
    assert response.status_code == 200, response.text
    return response.json()


def with_hints(problem: dict) -> str:
    """The documented way a compat route carries a problem's detail and hints in one string."""
    hints = problem.get("hints") or []
    if not hints:
        return problem["detail"]
    return f"{problem['detail'].rstrip('. ')}. Hints: " + "; ".join(h.rstrip("; ") for h in hints)


def crates_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers["content-type"]
    body = response.json()
    assert set(body) == {"errors"}, body
    assert len(body["errors"]) == 1 and set(body["errors"][0]) == {"detail"}, body
    detail = body["errors"][0]["detail"]
    assert isinstance(detail, str) and detail
    return detail


def pypi_error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers["content-type"]
    body = response.json()
    assert set(body) == {"message", "errors"}, body
    assert body["message"] == "Token request failed"
    assert len(body["errors"]) == 1 and set(body["errors"][0]) == {"code", "description"}, body
    assert body["errors"][0]["code"] == code, body
    description = body["errors"][0]["description"]
    assert isinstance(description, str) and description
    return description


async def native_problem(client, jwt: str, status: int, code: str) -> dict:
    response = await client.post("/v1/exchange", json={"jwt": jwt})
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    return body


# --- crates.io ---------------------------------------------------------------------------------

async def test_crates_exchange_returns_only_a_token_that_introspects_active(repo, client):
    publisher = await repo.add_publisher()
    response = await client.post(CRATES, json={"jwt": repo.token()})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"token"}
    assert tokens.is_well_formed(body["token"])
    info = await introspect(client, body["token"])
    assert info["active"] is True
    assert info["packages"] == [publisher["package"]]


@pytest.mark.parametrize("content, status, fragment", [
    (b"{not json", 400, "not valid JSON"),
    (b"[]", 400, "JSON object"),
    (b"{}", 400, "jwt: is required"),
    (b'{"jwt": 5}', 400, "jwt: 5 is a whole number, not a string"),
    (b'{"jwt": "a", "extra": 1}', 400, "extra: is not a known field; accepted fields: jwt"),
    (b"", 400, "empty"),
])
async def test_crates_malformed_body_gets_the_crates_shape(client, content, status, fragment):
    # /v1/explain takes crates.io's body exactly ({"jwt"}; /v1/exchange also takes narrowing members)
    native = (await client.post("/v1/explain", content=content, headers=JSON)).json()
    detail = crates_error(await client.post(CRATES, content=content, headers=JSON), status)
    assert fragment in detail
    assert detail == with_hints(native)


async def test_crates_keeps_413_and_415(client):
    crates_error(await client.post(CRATES, content=b'{"jwt": "x"}', headers={"Content-Type": "text/plain"}), 415)
    big = b'{"jwt": "' + b"a" * (70 * 1024) + b'"}'
    crates_error(await client.post(CRATES, content=big, headers=JSON), 413)


async def test_crates_bad_jwt_unknown_issuer_and_invalid_token_are_400_with_the_native_reason(repo, client):
    cases = [
        ("not-a-jwt", 400, "malformed_token"),
        (repo.issuer.mint({**repo.claims(), "iss": "https://token.actions.example.net"}, key=new_rsa_key()),
         401, "unknown_issuer"),
        (repo.token(aud="https://crates.io"), 401, "invalid_token"),
    ]
    for jwt, native_status, code in cases:
        native = await native_problem(client, jwt, native_status, code)
        detail = crates_error(await client.post(CRATES, json={"jwt": jwt}), 400)
        assert detail == with_hints(native), code


async def test_crates_no_matching_publisher_carries_the_same_precise_reason(repo, client):
    publisher = await repo.add_publisher(environments=["release"])
    jwt = repo.token(environment="prod")  # a denial consumes no jti, so all three routes see the same token
    native = await native_problem(client, jwt, 403, "no_matching_publisher")
    detail = crates_error(await client.post(CRATES, json={"jwt": jwt}), 400)
    assert detail == with_hints(native)
    assert publisher["id"] in detail and "'prod'" in detail and "Hints: " in detail
    description = pypi_error(await client.post(PYPI_MINT, json={"token": jwt}), 422, "invalid-publisher")
    assert description == detail


async def test_no_publisher_for_repository_and_forbidden_trigger(repo, client):
    none_yet = repo.token()
    native = await native_problem(client, none_yet, 403, "no_matching_publisher")
    assert crates_error(await client.post(CRATES, json={"jwt": none_yet}), 400) == with_hints(native)
    assert "/v1/admin/publishers" in with_hints(native)

    await repo.add_publisher()
    trigger = repo.token(event_name="pull_request_target")
    native = await native_problem(client, trigger, 403, "forbidden_trigger")
    assert crates_error(await client.post(CRATES, json={"jwt": trigger}), 400) == with_hints(native)
    assert pypi_error(await client.post(PYPI_MINT, json={"token": trigger}), 422,
                      "invalid-publisher") == with_hints(native)


async def test_crates_token_reused_says_what_crates_io_says(repo, client):
    """crates.io answers a reused ID token with "JWT has already been used"; clients may match on it."""
    await repo.add_publisher()
    jwt = repo.token()
    assert (await client.post(CRATES, json={"jwt": jwt})).status_code == 200
    await native_problem(client, jwt, 409, "token_reused")
    detail = crates_error(await client.post(CRATES, json={"jwt": jwt}), 400)
    assert detail.startswith("JWT has already been used")
    assert "fresh ID token" in detail


async def test_crates_delete_revokes_idempotently(repo, client):
    await repo.add_publisher()
    token = (await client.post(CRATES, json={"jwt": repo.token()})).json()["token"]
    assert (await introspect(client, token))["active"] is True
    response = await client.delete(CRATES, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert (await introspect(client, token)) == {"active": False}
    again = await client.delete(CRATES, headers={"Authorization": f"Bearer {token}"})
    assert again.status_code == 204
    unknown = await client.delete(CRATES, headers={"Authorization": f"Bearer {tokens.generate()}"})
    assert unknown.status_code == 204


async def test_crates_delete_takes_the_raw_token_without_a_scheme(repo, client):
    """As crates.io does (its test_happy_path_without_auth_scheme): `Authorization: <token>` revokes."""
    await repo.add_publisher()
    token = (await client.post(CRATES, json={"jwt": repo.token()})).json()["token"]
    response = await client.delete(CRATES, headers={"Authorization": token})
    assert response.status_code == 204, response.text
    assert (await introspect(client, token)) == {"active": False}


async def test_crates_delete_errors(client):
    assert "Missing authorization header" in crates_error(await client.delete(CRATES), 401)
    assert "Invalid authorization header" in crates_error(
        await client.delete(CRATES, headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401)
    assert "not a tpx token" in crates_error(
        await client.delete(CRATES, headers={"Authorization": "Bearer cio1234567890"}), 400)


async def test_crates_other_methods_are_405_in_the_crates_shape(client):
    response = await client.get(CRATES)
    crates_error(response, 405)
    assert response.headers["allow"] == "POST, DELETE"


# --- PyPI --------------------------------------------------------------------------------------

async def test_pypi_audience(client, settings):
    response = await client.get("/_/oidc/audience")
    assert response.status_code == 200
    assert response.json() == {"audience": settings.audience}
    other = await client.post("/_/oidc/audience", json={})
    assert other.status_code == 405
    assert not other.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("path", [PYPI_MINT, PYPI_LEGACY_MINT])
async def test_pypi_mint_token_success_shape(repo, client, path):
    publisher = await repo.add_publisher(token_ttl_seconds=900)
    before = int(time.time())
    response = await client.post(path, json={"token": repo.token()})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"success", "token", "expires"}
    assert body["success"] is True
    assert tokens.is_well_formed(body["token"])
    assert isinstance(body["expires"], int)
    assert before + 900 - 5 <= body["expires"] <= int(time.time()) + 900 + 5
    info = await introspect(client, body["token"])
    assert info["active"] is True
    assert info["exp"] == body["expires"]
    assert info["packages"] == [publisher["package"]]


@pytest.mark.parametrize("content, headers", [
    (b"{not json", JSON),
    (b"{}", JSON),
    (b'{"token": 5}', JSON),
    (b'{"jwt": "x"}', JSON),
    (b"token=x", {"Content-Type": "application/x-www-form-urlencoded"}),
    (b'{"token": "' + b"a" * (70 * 1024) + b'"}', JSON),
])
async def test_pypi_malformed_payload(client, content, headers):
    description = pypi_error(await client.post(PYPI_MINT, content=content, headers=headers), 422, "invalid-payload")
    assert not description.startswith("{")


async def test_pypi_reads_json_whatever_the_content_type_like_pypi(repo, client):
    """PyPI's GitLab example posts JSON with `curl -d`, i.e. labelled as a form."""
    await repo.add_publisher()
    content = json.dumps({"token": repo.token()}).encode()
    response = await client.post(PYPI_MINT, content=content,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    assert tokens.is_well_formed(response.json()["token"])


async def test_pypi_error_codes_carry_the_native_reason(repo, client):
    await repo.add_publisher()
    used = repo.token()
    assert (await client.post(PYPI_MINT, json={"token": used})).status_code == 200
    cases = [
        ("not-a-jwt", 400, "malformed_token", "invalid-payload"),
        (repo.issuer.mint({**repo.claims(), "iss": "https://token.actions.example.net"}, key=new_rsa_key()),
         401, "unknown_issuer", "invalid-payload"),
        (repo.token(aud="pypi"), 401, "invalid_token", "invalid-token"),
        (used, 409, "token_reused", "invalid-reuse-token"),
    ]
    for jwt, native_status, code, pypi_code in cases:
        native = await native_problem(client, jwt, native_status, code)
        description = pypi_error(await client.post(PYPI_MINT, json={"token": jwt}), 422, pypi_code)
        assert description == with_hints(native), code


async def test_pypi_other_methods_are_405_in_the_pypi_shape(client):
    response = await client.get(PYPI_MINT)
    pypi_error(response, 405, "invalid-payload")


# --- status mapping of the outcomes a healthy test service does not produce -------------------

@pytest.mark.parametrize("code, crates_status, pypi_status, pypi_code", [
    ("rate_limited", 429, 429, "rate-limited"),
    ("keys_unavailable", 503, 503, "unavailable"),
    ("unavailable", 503, 503, "unavailable"),
])
def test_retryable_outcomes_keep_their_status_and_retry_after(code, crates_status, pypi_status, pypi_code):
    problem = Problem(code, "try later", hints=["wait"], retry_after=7)
    crates = render_crates(problem)
    assert crates.status_code == crates_status
    assert crates.headers["retry-after"] == "7"
    assert crates.body == b'{"errors":[{"detail":"try later. Hints: wait"}]}'
    pypi = render_pypi(problem)
    assert pypi.status_code == pypi_status
    assert pypi.headers["retry-after"] == "7"
    assert pypi_code.encode() in pypi.body
