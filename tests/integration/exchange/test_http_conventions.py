"""HTTP's own rules for statuses: a challenge on every 401, the allowed methods on every 405."""

from __future__ import annotations

import base64
import json

import pytest

from tests.integration.conftest import ADMIN

pytestmark = pytest.mark.integration


async def test_a_missing_credential_is_challenged_without_an_error_code(client):
    response = await client.get("/v1/admin/issuers")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="tpx"'


async def test_a_refused_credential_is_challenged_with_invalid_token(client):
    response = await client.get("/v1/admin/issuers", headers={"Authorization": "Bearer not-the-admin-token"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="tpx", error="invalid_token"'
    introspection = await client.post("/v1/introspect", json={"token": "x"},
                                      headers={"Authorization": "Bearer nope"})
    assert introspection.status_code == 401
    assert 'error="invalid_token"' in introspection.headers["www-authenticate"]


async def test_an_id_token_refused_with_401_still_carries_a_challenge(client):
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    jwt = ".".join([part({"alg": "RS256", "kid": "k1", "typ": "JWT"}),
                    part({"iss": "https://unknown.example", "aud": "tpx", "exp": 4102444800, "iat": 1700000000, "nbf": 1700000000, "sub": "s", "jti": "j"}), "c2ln"])
    response = await client.post("/v1/exchange", json={"jwt": jwt})
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "unknown_issuer"
    assert response.headers["www-authenticate"] == 'Bearer realm="tpx"'


async def test_crates_revoke_without_authorization_is_challenged(client):
    response = await client.delete("/api/v1/trusted_publishing/tokens")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="tpx"'


@pytest.mark.parametrize("method, path, allowed", [
    ("PUT", "/v1/admin/issuers", "GET, HEAD, POST"),
    ("POST", "/v1/admin/issuers/0b5c1d9e-1111-4222-8333-444455556666", "DELETE, GET, HEAD, PATCH"),
    ("GET", "/v1/exchange", "POST"),
    ("DELETE", "/healthz", "GET, HEAD"),
])
async def test_a_405_names_every_method_the_path_takes(client, method, path, allowed):
    response = await client.request(method, path, headers=ADMIN)
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == allowed
    assert response.json()["code"] == "method_not_allowed"
    assert allowed in response.json()["detail"]
