"""The OpenAPI 3.1 description of the native API, served at /openapi.json.

Written by hand, beside the routes, because the contract (api.md) is the source
of truth and generated schemas would describe the code instead.
"""

from __future__ import annotations

from typing import Any

from tpx.core.errors import ERROR_CODES


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problems(*codes: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code in codes:
        status = str(ERROR_CODES[code][0])
        entry = out.setdefault(status, {"description": "", "content": {"application/problem+json": {"schema": _ref("Problem")}}})
        entry["description"] = ", ".join(filter(None, [entry["description"], code]))
    return out


_JWT_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["jwt"], "additionalProperties": False,
    "properties": {"jwt": {"type": "string", "maxLength": 16384, "description": "The CI provider's OIDC ID token"}}}}}}
_TOKEN_BODY = {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "properties": {"token": {"type": "string"}}}},
    "application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": {"token": {"type": "string"}}}}}}
_VERIFY_ERRORS = ("malformed_request", "request_too_large", "unsupported_media_type", "malformed_token",
                  "unknown_issuer", "invalid_token", "unavailable")
_ADMIN = [{"adminToken": []}]
_PYPI_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["token"], "properties": {"token": {"type": "string",
                                                                      "description": "The CI provider's OIDC ID token"}}}}}}
_OBJECT = {"type": "object"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "tpx", "version": "1", "description":
             "Trusted publishing as a service: exchange a CI OIDC ID token for a short-lived, scoped publish token."},
    "paths": {
        "/v1/exchange": {"post": {
            "summary": "Exchange an OIDC ID token for a publish token", "requestBody": _JWT_BODY,
            "responses": {"200": _json(_ref("ExchangeResult")),
                          **_problems(*_VERIFY_ERRORS, "token_reused", "no_matching_publisher", "forbidden_trigger")}}},
        "/v1/explain": {"post": {
            "summary": "Dry run: which publishers would match, check by check (nothing minted or consumed)",
            "requestBody": _JWT_BODY,
            "responses": {"200": _json(_ref("Explanation")), **_problems(*_VERIFY_ERRORS)}}},
        "/v1/revoke": {"post": {
            "summary": "Revoke a token (by its holder); idempotent", "requestBody": {**_TOKEN_BODY, "required": False},
            "responses": {"204": {"description": "Revoked, or already inactive"},
                          **_problems("malformed_request", "malformed_token", "unsupported_media_type")}}},
        "/v1/introspect": {"post": {
            "summary": "RFC 7662 token introspection for registries", "security": [{"introspectionToken": []}],
            "requestBody": _TOKEN_BODY,
            "responses": {"200": _json(_ref("Introspection")), **_problems("unauthorized", "malformed_request")}}},
        "/v1/admin/issuers": {
            "get": {"summary": "List issuers", "security": _ADMIN, "responses": {"200": _json(_ref("IssuerList"))}},
            "post": {"summary": "Register an issuer", "security": _ADMIN,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("IssuerInput")}}},
                     "responses": {"201": _json(_ref("IssuerResult"), "Created"),
                                   **_problems("unauthorized", "invalid_issuer", "duplicate_issuer")}}},
        "/v1/admin/issuers/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}],
            "get": {"summary": "Show an issuer", "security": _ADMIN,
                    "responses": {"200": _json(_ref("IssuerResult")), **_problems("not_found")}},
            "patch": {"summary": "Change an issuer (enable, disable, audience, package limits)", "security": _ADMIN,
                      "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("IssuerChange")}}},
                      "responses": {"200": _json(_ref("IssuerResult")), **_problems("not_found", "invalid_issuer")}},
            "delete": {"summary": "Delete an unused issuer", "security": _ADMIN,
                       "responses": {"204": {"description": "Deleted"}, **_problems("not_found", "issuer_in_use")}}},
        "/v1/admin/publishers": {
            "get": {"summary": "List publishers (?package=)", "security": _ADMIN,
                    "responses": {"200": _json(_ref("PublisherList"))}},
            "post": {"summary": "Create a trusted publisher", "security": _ADMIN,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("PublisherInput")}}},
                     "responses": {"201": _json(_ref("PublisherResult"), "Created"),
                                   **_problems("unauthorized", "invalid_publisher", "duplicate_publisher")}}},
        "/v1/admin/publishers/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}],
            "get": {"summary": "Show a publisher", "security": _ADMIN,
                    "responses": {"200": _json(_ref("PublisherResult")), **_problems("not_found")}},
            "delete": {"summary": "Delete a publisher and revoke its live tokens", "security": _ADMIN,
                       "responses": {"200": _json(_ref("PublisherDeleted")), **_problems("not_found")}}},
        "/v1/admin/tokens": {"get": {
            "summary": "Token metadata (?package=&publisher_id=&active=&limit=); never secrets", "security": _ADMIN,
            "responses": {"200": _json(_ref("TokenList")), **_problems("malformed_request")}}},
        "/v1/admin/revocations": {"post": {
            "summary": "Revoke in bulk by exactly one selector: token_id | publisher_id | package | "
                       "repository (+workflow, issued_after, issued_before); effective at once everywhere",
            "security": _ADMIN,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "properties": {
                "token_id": {"type": "string"}, "publisher_id": {"type": "string"}, "package": {"type": "string"},
                "repository": {"type": "string"}, "workflow": {"type": "string"},
                "issued_after": {"type": "string", "format": "date-time"},
                "issued_before": {"type": "string", "format": "date-time"}, "reason": {"type": "string"}}}}}},
            "responses": {"202": _json({"type": "object", "properties": {
                "revocation_id": {"type": "string"}, "status": {"enum": ["pending", "done"]},
                "revoked": {"type": "integer"}}}, "Accepted"), **_problems("unauthorized", "invalid_request")}}},
        "/v1/admin/revocations/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}],
            "get": {"summary": "Progress of a revocation", "security": _ADMIN,
                    "responses": {"200": _json(_ref("RevocationResult")), **_problems("not_found")}}},
        "/api/v1/trusted_publishing/tokens": {
            "post": {"summary": "crates.io-compatible exchange: {\"jwt\"} -> {\"token\"}; errors {\"errors\": [{\"detail\"}]}",
                     "requestBody": _JWT_BODY, "responses": {"200": _json(_ref("CratesToken")),
                                                            "400": _json(_ref("CratesError"), "crates.io error shape")}},
            "delete": {"summary": "crates.io-compatible revocation (Authorization: Bearer <token>)",
                       "responses": {"204": {"description": "Revoked"}, "400": _json(_ref("CratesError"), "Not a tpx token"),
                                     "401": _json(_ref("CratesError"), "No or another Authorization scheme")}}},
        "/_/oidc/audience": {"get": {"summary": "PyPI-compatible: the audience to request",
                                     "responses": {"200": _json(_ref("PypiAudience"))}}},
        "/_/oidc/mint-token": {"post": {
            "summary": "PyPI-compatible exchange: {\"token\"} -> {\"success\", \"token\", \"expires\"}",
            "requestBody": _PYPI_BODY,
            "responses": {"200": _json(_ref("PypiToken")), "422": _json(_ref("PypiError"), "PyPI error shape")}}},
        "/_/oidc/github/mint-token": {"post": {
            "summary": "PyPI-compatible exchange at PyPI's older GitHub-only path (same as /_/oidc/mint-token)",
            "requestBody": _PYPI_BODY,
            "responses": {"200": _json(_ref("PypiToken")), "422": _json(_ref("PypiError"), "PyPI error shape")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text format"}}}},
        "/healthz": {"get": {"summary": "Process alive", "responses": {"200": _json(_ref("Health"))}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"})}}},
        "/readyz": {"get": {"summary": "Ready to serve (database and issuer keys)",
                            "responses": {"200": _json(_ref("Readiness")), "503": _json(_ref("Readiness"), "Not ready")}}},
    },
    "components": {
        "securitySchemes": {
            "adminToken": {"type": "http", "scheme": "bearer"},
            "introspectionToken": {"type": "http", "scheme": "bearer"},
        },
        "schemas": {
            "Problem": {"type": "object", "required": ["type", "title", "status", "code", "detail"], "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "code": {"type": "string", "enum": sorted(ERROR_CODES)}, "detail": {"type": "string"},
                "request_id": {"type": "string"}, "hints": {"type": "array", "items": {"type": "string"}},
                "checks": {"type": "array", "items": {"type": "object"}}, "field": {"type": "string"}}},
            "ExchangeResult": {"type": "object", "properties": {
                "token": {"type": "string", "pattern": "^tpx_[0-9A-Za-z]{46}$"}, "token_id": {"type": "string"},
                "expires_at": {"type": "string", "format": "date-time"}, "expires_in": {"type": "integer"},
                "packages": {"type": "array", "items": {"type": "string"}},
                "publisher_ids": {"type": "array", "items": {"type": "string"}},
                "permissions": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}}}},
            "Explanation": {"type": "object", "properties": {
                "would_issue": {"type": "boolean"}, "identity": {"type": "object"},
                "publishers": {"type": "array", "items": {"type": "object", "properties": {
                    "id": {"type": "string"}, "package": {"type": "string"}, "matched": {"type": "boolean"},
                    "checks": {"type": "array", "items": {"type": "object", "properties": {
                        "check": {"type": "string"}, "claim": {"type": "string"}, "expected": {},
                        "actual": {}, "passed": {"type": "boolean"}, "note": {"type": "string"}}}}}}}}},
            "Introspection": {"type": "object", "required": ["active"], "properties": {
                "active": {"type": "boolean"}, "token_id": {"type": "string"}, "scope": {"type": "string"},
                "packages": {"type": "array", "items": {"type": "string"}}, "permissions": {"type": "object"},
                "iat": {"type": "integer"}, "exp": {"type": "integer"},
                "publisher_ids": {"type": "array", "items": {"type": "string"}}, "ci": {"type": "object"}}},
            "IssuerInput": {"type": "object", "required": ["url", "kind"], "properties": {
                "url": {"type": "string"}, "kind": {"enum": ["github", "gitlab"]}, "audience": {"type": "string"},
                "algorithms": {"type": "array", "items": {"type": "string"}},
                "allowed_packages": {"type": "array", "items": {"type": "string"}}, "enabled": {"type": "boolean"},
                "max_token_lifetime_seconds": {"type": "integer"}}},
            "Issuer": {"type": "object", "required": ["id", "url", "kind", "enabled"], "properties": {
                "id": {"type": "string", "format": "uuid"}, "url": {"type": "string"}, "kind": {"enum": ["github", "gitlab"]},
                "enabled": {"type": "boolean"}, "audience": {"type": "string"},
                "allowed_packages": {"type": ["array", "null"], "items": {"type": "string"}},
                "key_ids": {"type": "array", "items": {"type": "string"}}, "last_error": {"type": ["string", "null"]}}},
            "IssuerResult": {"type": "object", "required": ["issuer"], "properties": {"issuer": _ref("Issuer")}},
            "IssuerList": {"type": "object", "required": ["issuers"],
                           "properties": {"issuers": {"type": "array", "items": _ref("Issuer")}}},
            "IssuerChange": {"type": "object", "minProperties": 1, "properties": {
                "enabled": {"type": "boolean"}, "audience": {"type": "string"},
                "allowed_packages": {"type": ["array", "null"], "items": {"type": "string"}},
                "algorithms": {"type": "array", "items": {"type": "string"}},
                "max_token_lifetime_seconds": {"type": "integer"}}},
            "Publisher": {"type": "object", "required": ["id", "package", "provider"], "properties": {
                "id": {"type": "string", "format": "uuid"}, "package": {"type": "string"},
                "provider": {"enum": ["github", "gitlab"]}, "issuer": {"type": "string"},
                "environments": {"type": "array", "items": {"type": "string"}}}},
            "PublisherResult": {"type": "object", "required": ["publisher"], "properties": {"publisher": _ref("Publisher")}},
            "PublisherList": {"type": "object", "required": ["publishers"],
                              "properties": {"publishers": {"type": "array", "items": _ref("Publisher")}}},
            "PublisherDeleted": {"type": "object", "properties": {"revoked_tokens": {"type": "integer"}}},
            "TokenList": {"type": "object", "required": ["tokens"], "properties": {"tokens": {"type": "array", "items": {
                "type": "object", "properties": {"id": {"type": "string"}, "packages": {"type": "array"},
                                                 "active": {"type": "boolean"}}}}}},
            "Revocation": {"type": "object", "required": ["id", "status", "revoked"], "properties": {
                "id": {"type": "string", "format": "uuid"}, "kind": {"type": "string"}, "selector": _OBJECT,
                "status": {"enum": ["pending", "done"]}, "revoked": {"type": "integer"},
                "cutoff": {"type": "string", "format": "date-time"}, "reason": {"type": ["string", "null"]}}},
            "RevocationResult": {"type": "object", "required": ["revocation"],
                                 "properties": {"revocation": _ref("Revocation")}},
            "CratesToken": {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}},
            "CratesError": {"type": "object", "required": ["errors"], "properties": {"errors": {
                "type": "array", "items": {"type": "object", "properties": {"detail": {"type": "string"}}}}}},
            "PypiAudience": {"type": "object", "required": ["audience"], "properties": {"audience": {"type": "string"}}},
            "PypiToken": {"type": "object", "required": ["success", "token", "expires"], "properties": {
                "success": {"const": True}, "token": {"type": "string"}, "expires": {"type": "integer"}}},
            "PypiError": {"type": "object", "required": ["message", "errors"], "properties": {
                "message": {"type": "string"}, "errors": {"type": "array", "items": {"type": "object", "properties": {
                    "code": {"type": "string"}, "description": {"type": "string"}}}}}},
            "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
            "Readiness": {"type": "object", "required": ["status"], "properties": {
                "status": {"enum": ["ready", "not ready"]}, "reasons": {"type": "array", "items": {"type": "string"}}}},
            "PublisherInput": {"type": "object", "required": ["package", "provider"], "properties": {
                "package": {"type": "string"}, "provider": {"enum": ["github", "gitlab"]}, "issuer": {"type": "string"},
                "repository_owner": {"type": "string"}, "repository_owner_id": {"type": "string"},
                "repository_name": {"type": "string"}, "repository_id": {"type": "string"},
                "workflow_filename": {"type": "string"}, "namespace": {"type": "string"},
                "namespace_id": {"type": "string"}, "project": {"type": "string"}, "project_id": {"type": "string"},
                "workflow_filepath": {"type": "string"}, "environments": {"type": "array", "items": {"type": "string"}},
                "ref_patterns": {"type": "array", "items": {"type": "string"}},
                "allow_self_hosted_runners": {"type": "boolean"}, "token_ttl_seconds": {"type": "integer"},
                "permissions": {"type": "array", "items": {"enum": ["publish-update", "publish-new"]}}}},
        },
    },
}


# Every operation by name (clients generated from this document use them), in path order.
OPERATION_IDS = {
    ("/v1/exchange", "post"): "exchange", ("/v1/explain", "post"): "explain", ("/v1/revoke", "post"): "revoke",
    ("/v1/introspect", "post"): "introspect",
    ("/v1/admin/issuers", "get"): "listIssuers", ("/v1/admin/issuers", "post"): "createIssuer",
    ("/v1/admin/issuers/{id}", "get"): "getIssuer", ("/v1/admin/issuers/{id}", "patch"): "updateIssuer",
    ("/v1/admin/issuers/{id}", "delete"): "deleteIssuer",
    ("/v1/admin/publishers", "get"): "listPublishers", ("/v1/admin/publishers", "post"): "createPublisher",
    ("/v1/admin/publishers/{id}", "get"): "getPublisher", ("/v1/admin/publishers/{id}", "delete"): "deletePublisher",
    ("/v1/admin/tokens", "get"): "listTokens",
    ("/v1/admin/revocations", "post"): "createRevocation", ("/v1/admin/revocations/{id}", "get"): "getRevocation",
    ("/api/v1/trusted_publishing/tokens", "post"): "cratesExchange",
    ("/api/v1/trusted_publishing/tokens", "delete"): "cratesRevoke",
    ("/_/oidc/audience", "get"): "pypiAudience", ("/_/oidc/mint-token", "post"): "pypiMintToken",
    ("/_/oidc/github/mint-token", "post"): "pypiGithubMintToken",
    ("/metrics", "get"): "metrics", ("/healthz", "get"): "healthz", ("/readyz", "get"): "readyz",
    ("/openapi.json", "get"): "openapi",
}
METHODS = ("get", "post", "put", "patch", "delete")


def _complete(document: dict[str, Any]) -> dict[str, Any]:
    """What every operation carries whatever its entry above says: its operationId, and for an
    operation behind a credential, the 401 it answers without one (with the problem schema)."""
    for path, item in document["paths"].items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            operation["operationId"] = OPERATION_IDS[(path, method)]
            if operation.get("security"):
                operation["responses"].update({k: v for k, v in _problems("unauthorized").items()
                                               if k not in operation["responses"]})
    return document


OPENAPI = _complete(OPENAPI)
