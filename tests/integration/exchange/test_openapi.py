"""/openapi.json: a valid OpenAPI 3.1 document of exactly the app's routes, whose schemas the answers meet."""

from __future__ import annotations

import jsonschema
import pytest
from openapi_spec_validator import validate

from tpx.exchange.app import routes
from tpx.exchange.openapi import METHODS
from tests.integration.conftest import ADMIN

pytestmark = pytest.mark.integration
COMPAT = ("/api/", "/_/oidc/")   # these accept every method and answer 405 in their registry's own shape


async def document(client) -> dict:
    return (await client.get("/openapi.json")).json()


async def test_the_document_is_valid_openapi_3_1(client):
    doc = await document(client)
    assert doc["openapi"] == "3.1.0"
    validate(doc)


async def test_the_document_and_the_app_have_the_same_routes(client):
    doc = await document(client)
    described = {(path, method.upper()) for path, item in doc["paths"].items() for method in item if method in METHODS}
    served = {(route.path, method) for route in routes() for method in route.methods - {"HEAD", "OPTIONS"}
              if not route.path.startswith(COMPAT)}
    assert {d for d in described if not d[0].startswith(COMPAT)} == served
    assert {path for path, _ in described if path.startswith(COMPAT)} == {
        route.path for route in routes() if route.path.startswith(COMPAT)}


async def test_every_operation_is_named_and_declares_its_errors_with_the_problem_schema(client):
    doc = await document(client)
    ids = []
    for path, item in doc["paths"].items():
        for method in (m for m in item if m in METHODS):
            operation = item[method]
            ids.append(operation["operationId"])
            for status, response in operation["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                assert schema != {"type": "object"} or path == "/openapi.json", f"{method} {path} {status} is bare"
                if int(status) >= 400 and not path.startswith(COMPAT) and path not in ("/readyz", "/v1/token"):
                    # readiness carries its report; RFC 8693 answers in OAuth's error shape
                    assert response["content"]["application/problem+json"]["schema"] == {
                        "$ref": "#/components/schemas/Problem"}, f"{method} {path} {status}"
            if operation.get("security"):
                assert "401" in operation["responses"], f"{method} {path} needs a credential and must declare 401"
            if method in ("post", "put", "patch") and not path.startswith(("/v1/revoke", "/api/")) or \
                    (path.startswith("/api/") and method == "post"):
                assert "requestBody" in operation, f"{method} {path} has no request body"
    assert len(ids) == len(set(ids)) == 26


def conforms(doc: dict, name: str, value: object) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    jsonschema.validate(value, {**schema, "$schema": "https://json-schema.org/draft/2020-12/schema"})


async def test_the_answers_meet_their_schemas(client, repo):
    doc = await document(client)
    publisher = await repo.add_publisher()
    conforms(doc, "IssuerList", (await client.get("/v1/admin/issuers", headers=ADMIN)).json())
    issuer_id = (await client.get("/v1/admin/issuers", headers=ADMIN)).json()["issuers"][0]["id"]
    conforms(doc, "IssuerResult", (await client.get(f"/v1/admin/issuers/{issuer_id}", headers=ADMIN)).json())
    conforms(doc, "PublisherList", (await client.get("/v1/admin/publishers", headers=ADMIN)).json())
    conforms(doc, "PublisherResult", (await client.get(f"/v1/admin/publishers/{publisher['id']}", headers=ADMIN)).json())
    exchanged = await repo.exchange(repo.token())
    conforms(doc, "ExchangeResult", exchanged.json())
    conforms(doc, "TokenList", (await client.get("/v1/admin/tokens", headers=ADMIN)).json())
    revocation = await client.post("/v1/admin/revocations", headers=ADMIN, json={"repository": repo.repository})
    assert revocation.status_code == 202
    progress = await client.get(f"/v1/admin/revocations/{revocation.json()['revocation_id']}", headers=ADMIN)
    conforms(doc, "RevocationResult", progress.json())
    conforms(doc, "Health", (await client.get("/healthz")).json())
    conforms(doc, "Readiness", (await client.get("/readyz")).json())
    conforms(doc, "PypiAudience", (await client.get("/_/oidc/audience")).json())
    conforms(doc, "CratesError", (await client.delete("/api/v1/trusted_publishing/tokens")).json())
    conforms(doc, "Problem", (await client.get("/v1/admin/issuers")).json())
