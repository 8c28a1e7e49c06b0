"""Admin input that Postgres would choke on is refused as 4xx before it reaches the database.

Regression: a NUL in a query parameter or a lone surrogate in a JSON string
reached asyncpg, which raised, and the client got a 500 without a request id.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from tests.integration.conftest import ADMIN

pytestmark = pytest.mark.integration

HOSTILE = [
    pytest.param("\x00", id="nul"), pytest.param("a\x00b", id="inner-nul"), pytest.param("\ud800", id="surrogate"),
    pytest.param("x\udfff", id="low-surrogate"), pytest.param("\x1b[31m", id="escape"), pytest.param("\x7f", id="del"),
    pytest.param("\u0085", id="next-line"), pytest.param("\u2028", id="line-separator"),
    pytest.param("a" * 10_000, id="long"),
]


def raw_json(value: dict) -> bytes:
    """JSON with lone surrogates escaped, as a hostile client can send (json.dumps escapes them)."""
    return json.dumps(value).encode()


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("path", ["/v1/admin/tokens", "/v1/admin/publishers"])
async def test_a_hostile_package_filter_is_a_4xx(client, path, value):
    encoded = quote(value.encode("utf-8", "surrogatepass"), safe="")  # what a hostile client can put on the wire
    response = await client.get(f"{path}?package={encoded}", headers=ADMIN)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("field", ["reason", "package", "repository", "workflow", "token_id", "issued_after"])
async def test_a_hostile_revocation_field_is_a_4xx(client, field, value):
    body = {"repository": "octo-org/octo-repo"} if field in ("workflow", "issued_after", "reason") else {}
    body[field] = value
    response = await client.post("/v1/admin/revocations", content=raw_json(body),
                                 headers={**ADMIN, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("field", ["package", "repository_owner", "repository_name", "workflow_filename",
                                   "environments", "ref_patterns", "issuer"])
async def test_a_hostile_publisher_field_is_a_4xx(client, field, value):
    body = {"package": "pkg", "provider": "github", "repository_owner": "o", "repository_name": "r",
            "workflow_filename": "release.yml"}
    body[field] = [value] if field in ("environments", "ref_patterns") else value
    response = await client.post("/v1/admin/publishers", content=raw_json(body),
                                 headers={**ADMIN, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("field", ["url", "audience", "allowed_packages"])
async def test_a_hostile_issuer_field_is_a_4xx(client, field, value):
    body = {"url": "https://issuer.example.com", "kind": "github"}
    body[field] = [value] if field == "allowed_packages" else value
    response = await client.post("/v1/admin/issuers", content=raw_json(body),
                                 headers={**ADMIN, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("value", [pytest.param("\x00", id="nul"), pytest.param("%00", id="escaped-nul"),
                                   pytest.param("\ud800", id="surrogate"), pytest.param("a" * 10_000, id="long")])
@pytest.mark.parametrize("path", ["/v1/admin/issuers/{}", "/v1/admin/publishers/{}", "/v1/admin/revocations/{}"])
async def test_a_hostile_path_id_is_a_404(client, path, value):
    response = await client.get(path.format(quote(value.encode("utf-8", "surrogatepass"), safe="")), headers=ADMIN)
    assert response.status_code == 404, response.text


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("path", ["/v1/admin/publishers", "/v1/admin/issuers", "/v1/admin/revocations"])
async def test_a_hostile_field_name_is_named_back_safely(client, path, value):
    response = await client.post(path, content=raw_json({value[:300]: "x"}),
                                 headers={**ADMIN, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["field"].isprintable() and response.json()["field"].isascii()
