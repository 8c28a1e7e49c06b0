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
            "get": {"summary": "List issuers", "security": _ADMIN, "responses": {"200": _json({"type": "object"})}},
            "post": {"summary": "Register an issuer", "security": _ADMIN,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("IssuerInput")}}},
                     "responses": {"201": _json({"type": "object"}, "Created"),
                                   **_problems("unauthorized", "invalid_issuer", "duplicate_issuer")}}},
        "/v1/admin/issuers/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}],
            "get": {"summary": "Show an issuer", "security": _ADMIN, "responses": {"200": _json({"type": "object"})}},
            "patch": {"summary": "Change an issuer", "security": _ADMIN, "responses": {"200": _json({"type": "object"})}},
            "delete": {"summary": "Delete an unused issuer", "security": _ADMIN,
                       "responses": {"204": {"description": "Deleted"}, **_problems("issuer_in_use")}}},
        "/v1/admin/publishers": {
            "get": {"summary": "List publishers (?package=)", "security": _ADMIN, "responses": {"200": _json({"type": "object"})}},
            "post": {"summary": "Create a trusted publisher", "security": _ADMIN,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("PublisherInput")}}},
                     "responses": {"201": _json({"type": "object"}, "Created"),
                                   **_problems("unauthorized", "invalid_publisher", "duplicate_publisher")}}},
        "/v1/admin/publishers/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}],
            "get": {"summary": "Show a publisher", "security": _ADMIN, "responses": {"200": _json({"type": "object"})}},
            "delete": {"summary": "Delete a publisher and revoke its live tokens", "security": _ADMIN,
                       "responses": {"200": _json({"type": "object"})}}},
        "/v1/admin/tokens": {"get": {
            "summary": "Token metadata (?package=&publisher_id=&active=&limit=); never secrets", "security": _ADMIN,
            "responses": {"200": _json({"type": "object"})}}},
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
            "get": {"summary": "Progress of a revocation", "security": _ADMIN, "responses": {"200": _json({"type": "object"})}}},
        "/api/v1/trusted_publishing/tokens": {
            "post": {"summary": "crates.io-compatible exchange: {\"jwt\"} -> {\"token\"}; errors {\"errors\": [{\"detail\"}]}",
                     "requestBody": _JWT_BODY, "responses": {"200": _json({"type": "object"}),
                                                            "400": _json({"type": "object"}, "crates.io error shape")}},
            "delete": {"summary": "crates.io-compatible revocation (Authorization: Bearer <token>)",
                       "responses": {"204": {"description": "Revoked"}}}},
        "/_/oidc/audience": {"get": {"summary": "PyPI-compatible: the audience to request",
                                     "responses": {"200": _json({"type": "object"})}}},
        "/_/oidc/mint-token": {"post": {
            "summary": "PyPI-compatible exchange: {\"token\"} -> {\"success\", \"token\", \"expires\"}",
            "responses": {"200": _json({"type": "object"}), "422": _json({"type": "object"}, "PyPI error shape")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text format"}}}},
        "/healthz": {"get": {"summary": "Process alive", "responses": {"200": _json({"type": "object"})}}},
        "/readyz": {"get": {"summary": "Ready to serve (database and issuer keys)",
                            "responses": {"200": _json({"type": "object"}), "503": _json({"type": "object"}, "Not ready")}}},
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
