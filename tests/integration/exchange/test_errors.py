"""Every error code the exchange can return, and bad input that must never reach a 5xx."""

from __future__ import annotations

import base64
import json
import random
import time

import pytest

from tests.integration.conftest import ADMIN
from tests.support.oidc_issuer import new_rsa_key

pytestmark = pytest.mark.integration


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code
    assert body["type"] == f"urn:tpx:error:{code}"
    assert body["status"] == status
    assert body["detail"] and body["title"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert "token" not in body or code == "token_reused"
    return body


async def test_malformed_request_not_json(client):
    assert_problem(await client.post("/v1/exchange", content=b"{not json", headers={"Content-Type": "application/json"}),
                   400, "malformed_request")


@pytest.mark.parametrize("body", [b"[]", b'"jwt"', b"{}", b'{"jwt": 5}', b'{"jwt": "a", "jwt": "b"}',
                                  b'{"jwt": "x", "extra": 1}', b"", b"\xff\xfe", b"[" * 5000 + b"]" * 5000,
                                  b'{"jwt": NaN}'])
async def test_malformed_request_shapes(client, body):
    response = await client.post("/v1/exchange", content=body, headers={"Content-Type": "application/json"})
    assert_problem(response, 400, "malformed_request")


async def test_request_too_large_is_refused_before_parsing(client):
    body = b'{"jwt": "' + b"a" * (70 * 1024) + b'"}'
    assert_problem(await client.post("/v1/exchange", content=body, headers={"Content-Type": "application/json"}),
                   413, "request_too_large")


async def test_request_too_large_without_content_length(client):
    async def chunks():
        for _ in range(100):
            yield b"a" * 1024

    response = await client.post("/v1/exchange", content=chunks(), headers={"Content-Type": "application/json"})
    assert_problem(response, 413, "request_too_large")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "", "application/jsonx"])
async def test_unsupported_media_type(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post("/v1/exchange", content=b'{"jwt": "x"}', headers=headers)
    assert_problem(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("jwt", ["not-a-jwt", "a.b", "a.b.c.d.e", "eyJ.eyJ.sig", "é.é.é", "x" * 20000])
async def test_malformed_token(client, jwt):
    assert_problem(await client.post("/v1/exchange", json={"jwt": jwt}), 400, "malformed_token")


async def test_malformed_claim_types(repo):
    response = await repo.exchange(repo.token(exp=str(int(time.time()) + 300)))
    assert_problem(response, 400, "malformed_token")
    response = await repo.exchange(repo.token(repository_owner_id=65))
    assert_problem(response, 400, "malformed_token")


async def test_unknown_issuer(repo):
    claims = repo.claims()
    other = new_rsa_key()
    jwt = repo.issuer.mint({**claims, "iss": "https://token.actions.example.net"}, key=other)
    body = assert_problem(await repo.exchange(jwt), 401, "unknown_issuer")
    assert "token.actions.example.net" in body["detail"]


async def test_disabled_issuer_is_unknown(repo, client, exchange_app):
    response = await client.get("/v1/admin/issuers", headers=ADMIN)
    [issuer] = [i for i in response.json()["issuers"] if i["url"] == repo.issuer.url]
    cache = exchange_app.state.tpx.keycache
    version = cache.snapshot.version
    await client.patch(f"/v1/admin/issuers/{issuer['id']}", json={"enabled": False}, headers=ADMIN)
    try:
        assert await cache.wait_for_version(version, 10)
        assert_problem(await repo.exchange(repo.token()), 401, "unknown_issuer")
    finally:
        version = cache.snapshot.version
        await client.patch(f"/v1/admin/issuers/{issuer['id']}", json={"enabled": True}, headers=ADMIN)
        assert await cache.wait_for_version(version, 10)


@pytest.mark.parametrize("case", ["expired", "audience", "unknown_kid", "signature", "future_iat", "nbf", "lifetime",
                                  "alg_hs256", "alg_none"])
async def test_invalid_token(repo, case):
    await repo.add_publisher()
    now = int(time.time())
    claims = {**repo.claims(), "iss": repo.issuer.url}
    if case == "expired":
        jwt = repo.issuer.mint({**claims, "iat": now - 1000, "nbf": now - 1000, "exp": now - 200})
    elif case == "audience":
        jwt = repo.issuer.mint({**claims, "aud": "https://github.com/octo-org"})
    elif case == "unknown_kid":
        jwt = repo.issuer.mint(claims, key=new_rsa_key("never-published"))
    elif case == "signature":
        jwt = repo.issuer.mint(claims, key=new_rsa_key(repo.issuer.signing_key.kid))
    elif case == "future_iat":
        jwt = repo.issuer.mint({**claims, "iat": now + 600, "exp": now + 900})
    elif case == "nbf":
        jwt = repo.issuer.mint({**claims, "nbf": now + 600})
    elif case == "lifetime":
        jwt = repo.issuer.mint({**claims, "exp": now + 3 * 3600})
    elif case == "alg_hs256":
        header = {"alg": "HS256", "kid": repo.issuer.signing_key.kid, "typ": "JWT"}
        jwt = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(b'x' * 32)}"
    else:
        header = {"alg": "none", "kid": repo.issuer.signing_key.kid}
        jwt = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(b'x')}"
    body = assert_problem(await repo.exchange(jwt), 401, "invalid_token")
    assert jwt.split(".")[2] not in body["detail"]


async def test_audience_error_says_what_to_request(repo):
    body = assert_problem(await repo.exchange(repo.token(aud="wrong")), 401, "invalid_token")
    assert "tpx" in body["detail"]


async def test_token_reused_and_no_matching_and_forbidden_trigger(repo):
    await repo.add_publisher()
    jwt = repo.token()
    assert (await repo.exchange(jwt)).status_code == 200
    assert_problem(await repo.exchange(jwt), 409, "token_reused")
    assert_problem(await repo.exchange(repo.token(workflow="other.yml")), 403, "no_matching_publisher")
    assert_problem(await repo.exchange(repo.token(event_name="pull_request_target")), 403, "forbidden_trigger")


async def test_no_publisher_for_repository_says_how_to_add_one(repo):
    body = assert_problem(await repo.exchange(repo.token()), 403, "no_matching_publisher")
    assert repo.repository in body["detail"]
    assert any("/v1/admin/publishers" in hint for hint in body["hints"])


async def test_not_found_and_method_not_allowed_are_problems(client):
    assert_problem(await client.get("/v1/nothing-here"), 404, "not_found")
    assert_problem(await client.get("/v1/exchange"), 405, "method_not_allowed")


@pytest.mark.parametrize(("fields", "field"), [
    ({"package": None}, "package"),
    ({"package": "bad name!"}, "package"),
    ({"provider": "bitbucket"}, "provider"),
    ({"repository_owner": "-bad-"}, "repository_owner"),
    ({"repository_name": "a/b"}, "repository_name"),
    ({"workflow_filename": ".github/workflows/release.yml"}, "workflow_filename"),
    ({"workflow_filename": "release.txt"}, "workflow_filename"),
    ({"repository_owner_id": 65}, "repository_owner_id"),
    ({"environments": "prod"}, "environments"),
    ({"environments": ["a\nb"]}, "environments"),
    ({"ref_patterns": [1]}, "ref_patterns"),
    ({"token_ttl_seconds": 10}, "token_ttl_seconds"),
    ({"token_ttl_seconds": 10**9}, "token_ttl_seconds"),
    ({"permissions": ["admin"]}, "permissions"),
    ({"allow_self_hosted_runners": "yes"}, "allow_self_hosted_runners"),
    ({"surprise": 1}, "surprise"),
    ({"issuer": "http://example.com"}, "issuer"),
    ({"issuer": "https://not-registered.example.com"}, "issuer"),
])
async def test_invalid_publisher_names_the_field(repo, fields, field):
    body = await repo.add_publisher(expect=422, **{k: v for k, v in fields.items()}) if None not in fields.values() \
        else await _post_without(repo, list(fields)[0])
    assert body["code"] == "invalid_publisher"
    assert body["field"] == field
    assert field in body["detail"]


async def _post_without(repo, missing: str) -> dict:
    body = {"package": "p", "provider": "github", "issuer": repo.issuer.url, "repository_owner": repo.owner,
            "repository_name": repo.repo, "workflow_filename": "release.yml"}
    del body[missing]
    response = await repo.client.post("/v1/admin/publishers", json=body, headers=ADMIN)
    assert response.status_code == 422
    return response.json()


async def test_duplicate_publisher(repo):
    first = await repo.add_publisher(environments=["Release"])
    body = await repo.add_publisher(expect=409, package=first["package"].upper(), repository_owner=repo.owner.upper(),
                                    environments=["release"])
    assert body["code"] == "duplicate_publisher"


@pytest.mark.parametrize(("fields", "field"), [
    ({"url": "http://issuer.example.com", "kind": "github"}, "url"),
    ({"url": "https://issuer.example.com/", "kind": "github"}, "url"),
    ({"url": "https://issuer.example.com?x=1", "kind": "github"}, "url"),
    ({"url": "https://issuer.example.com", "kind": "bitbucket"}, "kind"),
    ({"url": "https://issuer.example.com", "kind": "github", "algorithms": ["HS256"]}, "algorithms"),
    ({"url": "https://issuer.example.com", "kind": "github", "algorithms": ["none"]}, "algorithms"),
    ({"url": "https://issuer.example.com", "kind": "github", "audience": ""}, "audience"),
])
async def test_invalid_issuer_names_the_field(client, fields, field):
    response = await client.post("/v1/admin/issuers", json=fields, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_issuer"
    assert response.json()["field"] == field


async def test_random_bodies_never_produce_a_5xx_or_a_token(client, repo):
    """A bounded, seeded fuzz over the CI-facing routes: refusals only, always a documented 4xx."""
    await repo.add_publisher()
    rng = random.Random(1234)
    valid = repo.token()
    head, payload, signature = valid.split(".")
    candidates = [
        f"{head}.{payload}", f"{head}.{payload}.{signature}.", f".{payload}.{signature}", f"{head}..{signature}",
        f"{head}.{payload}.{signature[:-2]}", f"{payload}.{head}.{signature}", valid.upper(), valid + " ",
        f"{head}.{b64(b'{}')}.{signature}", f"{b64(b'{}')}.{payload}.{signature}",
    ]
    for _ in range(60):
        chars = list(valid)
        for _ in range(rng.randint(1, 5)):
            chars[rng.randrange(len(chars))] = rng.choice("AZaz09-_.=+/ \x00\u00e9")
        candidates.append("".join(chars))
    for candidate in candidates:
        if candidate == valid:
            continue  # a "mutation" that put back the same characters is the valid token itself
        for path in ("/v1/exchange", "/v1/explain"):
            response = await client.post(path, json={"jwt": candidate})
            assert 400 <= response.status_code < 500, (candidate, response.text)
            assert "tpx_" not in response.text


async def test_oversized_headers_are_refused(client):
    response = await client.get("/healthz", headers={"X-Padding": "a" * (20 * 1024)})
    assert response.status_code == 431
    assert response.json()["code"] == "headers_too_large" and response.json()["status"] == 431
    many = {f"X-H{i}": "v" for i in range(150)}
    assert (await client.get("/healthz", headers=many)).status_code == 431
