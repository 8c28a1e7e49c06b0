"""The OpenAPI 3.1 description of the native API, served at /openapi.json.

The paths (which operation takes which body and answers what) are written here;
every schema is generated from the types the routes check requests with and build
answers from (`tpx.core.bodies`, msgspec Structs declared by the module that owns
each), so a field, pattern, bound or description exists once. A test validates the
document, checks that its routes are the app's, and checks real answers against it.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from tpx.core import bodies
from tpx.core.errors import ERROR_CODES, ProblemDetails
from tpx.core.issuers import IssuerChange, IssuerInput, IssuerList, IssuerResult
from tpx.core.publishers import PUBLISHER, PUBLISHER_INPUT
from tpx.core.revocations import RevocationInput, RevocationResult, RevocationSummary

from tpx.exchange.minting import ExchangeResult
from tpx.exchange.routes.admin import PublisherDeleted, PublisherList, PublisherResult, TokenList
from tpx.exchange.routes.compat import CratesError, CratesToken, PypiAudience, PypiError, PypiToken, PypiTokenBody
from tpx.exchange.routes.exchange import ExchangeRequest, Explanation, IdTokenBody
from tpx.exchange.routes.ops import Health, Readiness
from tpx.exchange.routes.token_exchange import OAuthError, TokenExchangeRequest, TokenExchangeResult
from tpx.exchange.routes.tokens import Introspection, TokenBody

# Every named schema: its component name and its type. Tagged unions get a name of their own here.
NAMED_TYPES: dict[str, Any] = {
    "Problem": ProblemDetails,
    "IdTokenBody": IdTokenBody, "ExchangeRequest": ExchangeRequest, "PypiTokenBody": PypiTokenBody,
    "TokenBody": TokenBody, "TokenExchangeRequest": TokenExchangeRequest,
    "TokenExchangeResult": TokenExchangeResult, "OAuthError": OAuthError,
    "IssuerInput": IssuerInput, "IssuerChange": IssuerChange, "PublisherInput": PUBLISHER_INPUT,
    "RevocationInput": RevocationInput,
    "ExchangeResult": ExchangeResult, "Explanation": Explanation, "Introspection": Introspection,
    "IssuerResult": IssuerResult, "IssuerList": IssuerList, "Publisher": PUBLISHER,
    "PublisherResult": PublisherResult, "PublisherList": PublisherList, "PublisherDeleted": PublisherDeleted,
    "TokenList": TokenList, "RevocationSummary": RevocationSummary, "RevocationResult": RevocationResult,
    "CratesToken": CratesToken, "CratesError": CratesError, "PypiAudience": PypiAudience, "PypiToken": PypiToken,
    "PypiError": PypiError, "Health": Health, "Readiness": Readiness,
}


def _components() -> dict[str, Any]:
    names = list(NAMED_TYPES)
    refs, components = bodies.schemas(*NAMED_TYPES.values())
    for name, ref in zip(names, refs):
        if ref.get("$ref", "").rsplit("/", 1)[-1] != name:   # a union, or a type known by another name
            components[name] = ref
    if "ProblemDetails" in components:   # the exception is `Problem`; its body type cannot share the name
        components["Problem"] = components.pop("ProblemDetails")
        components["Problem"]["title"] = "Problem"
    components["Problem"]["properties"]["code"]["enum"] = sorted(ERROR_CODES)
    return dict(sorted(components.items()))


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problems(*codes: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code in codes:
        status = str(ERROR_CODES[code][0])
        entry = out.setdefault(status, {"description": "", "content": {"application/problem+json": {"schema": _ref("Problem")}}})
        entry["description"] = ", ".join(filter(None, [entry["description"], code]))
    return out


FORM = "application/x-www-form-urlencoded"


def _body(name: str, *, required: bool = True, form: bool = False) -> dict[str, Any]:
    content = {"application/json": {"schema": _ref(name)}}
    if form:
        content[FORM] = {"schema": _ref(name)}
    return {"required": required, "content": content}


def _json(name: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


_VERIFY_ERRORS = ("malformed_request", "request_too_large", "unsupported_media_type", "malformed_token",
                  "unknown_issuer", "invalid_token", "rate_limited", "keys_unavailable", "unavailable")
_ADMIN = [{"adminToken": []}]
_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}]
_PYPI_MINT = {"summary": "PyPI-compatible exchange: {\"token\"} -> {\"success\", \"token\", \"expires\"}",
              "requestBody": _body("PypiTokenBody"),
              "responses": {"200": _json("PypiToken"), "422": _json("PypiError", "PyPI error shape")}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "tpx", "version": "1", "description":
             "Trusted publishing as a service: exchange a CI OIDC ID token for a short-lived, scoped publish token."},
    "paths": {
        "/v1/exchange": {"post": {
            "summary": "Exchange an OIDC ID token for a publish token (optionally for fewer packages, permissions "
                       "or a shorter lifetime)", "requestBody": _body("ExchangeRequest"),
            "responses": {"200": _json("ExchangeResult"),
                          **_problems(*_VERIFY_ERRORS, "token_reused", "no_matching_publisher", "forbidden_trigger",
                                      "not_granted")}}},
        "/v1/token": {"post": {
            "summary": "RFC 8693 token exchange: subject_token (the ID token) -> access_token; audience/resource "
                       "name packages, scope permissions",
            "requestBody": {"required": True, "content": {FORM: {"schema": _ref("TokenExchangeRequest")}}},
            "responses": {"200": _json("TokenExchangeResult"),
                          **{status: _json("OAuthError", description) for status, description in (
                              ("400", "RFC 6749 section 5.2 error: invalid_request, invalid_target, invalid_scope, "
                                      "unsupported_grant_type"),
                              ("413", "invalid_request: the body is too large"),
                              ("415", "invalid_request: not a form"),
                              ("429", "temporarily_unavailable (Retry-After)"),
                              ("500", "server_error"),
                              ("503", "temporarily_unavailable (Retry-After)"))}}}},
        "/v1/explain": {"post": {
            "summary": "Dry run: which publishers would match, check by check (nothing minted or consumed)",
            "requestBody": _body("IdTokenBody"),
            "responses": {"200": _json("Explanation"), **_problems(*_VERIFY_ERRORS)}}},
        "/v1/revoke": {"post": {
            "summary": "Revoke a token (by its holder, also as Authorization: Bearer); idempotent",
            "requestBody": _body("TokenBody", required=False, form=True),
            "responses": {"204": {"description": "Revoked, or already inactive"},
                          **_problems("malformed_request", "malformed_token", "unsupported_media_type")}}},
        "/v1/introspect": {"post": {
            "summary": "RFC 7662 token introspection for registries", "security": [{"introspectionToken": []}],
            "requestBody": _body("TokenBody", form=True),
            "responses": {"200": _json("Introspection"),
                          **_problems("unauthorized", "malformed_request", "unsupported_media_type")}}},
        "/v1/admin/issuers": {
            "get": {"summary": "List issuers", "security": _ADMIN, "responses": {"200": _json("IssuerList")}},
            "post": {"summary": "Register an issuer", "security": _ADMIN, "requestBody": _body("IssuerInput"),
                     "responses": {"201": _json("IssuerResult", "Created"),
                                   **_problems("malformed_request", "invalid_issuer", "duplicate_issuer")}}},
        "/v1/admin/issuers/{id}": {
            "parameters": _ID,
            "get": {"summary": "Show an issuer", "security": _ADMIN,
                    "responses": {"200": _json("IssuerResult"), **_problems("not_found")}},
            "patch": {"summary": "Change an issuer (enable, disable, audience, package limits)", "security": _ADMIN,
                      "requestBody": _body("IssuerChange"),
                      "responses": {"200": _json("IssuerResult"),
                                    **_problems("malformed_request", "not_found", "invalid_issuer")}},
            "delete": {"summary": "Delete an unused issuer", "security": _ADMIN,
                       "responses": {"204": {"description": "Deleted"}, **_problems("not_found", "issuer_in_use")}}},
        "/v1/admin/publishers": {
            "get": {"summary": "List publishers (?package=)", "security": _ADMIN,
                    "parameters": [{"name": "package", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"200": _json("PublisherList"), **_problems("malformed_request")}},
            "post": {"summary": "Create a trusted publisher", "security": _ADMIN, "requestBody": _body("PublisherInput"),
                     "responses": {"201": _json("PublisherResult", "Created"),
                                   **_problems("malformed_request", "invalid_publisher", "duplicate_publisher")}}},
        "/v1/admin/publishers/{id}": {
            "parameters": _ID,
            "get": {"summary": "Show a publisher", "security": _ADMIN,
                    "responses": {"200": _json("PublisherResult"), **_problems("not_found")}},
            "delete": {"summary": "Delete a publisher and revoke its live tokens", "security": _ADMIN,
                       "responses": {"200": _json("PublisherDeleted"), **_problems("not_found")}}},
        "/v1/admin/tokens": {"get": {
            "summary": "Token metadata (?package=&publisher_id=&active=&limit=); never secrets", "security": _ADMIN,
            "parameters": [{"name": name, "in": "query", "schema": schema} for name, schema in (
                ("package", {"type": "string"}), ("publisher_id", {"type": "string", "format": "uuid"}),
                ("active", {"enum": ["true", "false"]}), ("limit", {"type": "integer", "minimum": 1}))],
            "responses": {"200": _json("TokenList"), **_problems("malformed_request")}}},
        "/v1/admin/revocations": {"post": {
            "summary": "Revoke in bulk by exactly one selector: token_id | publisher_id | package | "
                       "repository (+workflow, issued_after, issued_before); effective at once everywhere",
            "security": _ADMIN, "requestBody": _body("RevocationInput"),
            "responses": {"202": _json("RevocationSummary", "Accepted"),
                          **_problems("malformed_request", "invalid_request")}}},
        "/v1/admin/revocations/{id}": {
            "parameters": _ID,
            "get": {"summary": "Progress of a revocation", "security": _ADMIN,
                    "responses": {"200": _json("RevocationResult"), **_problems("not_found")}}},
        "/api/v1/trusted_publishing/tokens": {
            "post": {"summary": "crates.io-compatible exchange: {\"jwt\"} -> {\"token\"}; errors {\"errors\": [{\"detail\"}]}",
                     "requestBody": _body("IdTokenBody"),
                     "responses": {"200": _json("CratesToken"), "400": _json("CratesError", "crates.io error shape")}},
            "delete": {"summary": "crates.io-compatible revocation (Authorization: Bearer <token>)",
                       "responses": {"204": {"description": "Revoked"}, "400": _json("CratesError", "Not a tpx token"),
                                     "401": _json("CratesError", "No or another Authorization scheme")}}},
        "/_/oidc/audience": {"get": {"summary": "PyPI-compatible: the audience to request",
                                     "responses": {"200": _json("PypiAudience")}}},
        "/_/oidc/mint-token": {"post": _PYPI_MINT},
        "/_/oidc/github/mint-token": {"post": {
            **_PYPI_MINT, "summary": "PyPI-compatible exchange at PyPI's older GitHub-only path (as /_/oidc/mint-token)"}},
        "/metrics": {"get": {"summary": "Prometheus metrics (on TPX_OPS_PORT with TPX_OPS_SEPARATE=1)",
                             "responses": {"200": {"description": "Prometheus text format",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}},
                                           **_problems("not_found")}}},
        "/healthz": {"get": {"summary": "Process alive", "responses": {"200": _json("Health")}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {
            "description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/readyz": {"get": {"summary": "Ready to serve (database and issuer keys)",
                            "responses": {"200": _json("Readiness"), "503": _json("Readiness", "Not ready")}}},
    },
    "components": {
        "securitySchemes": {
            "adminToken": {"type": "http", "scheme": "bearer"},
            "introspectionToken": {"type": "http", "scheme": "bearer"},
        },
        "schemas": _components(),
    },
}


# Every operation by name (clients generated from this document use them), in path order.
OPERATION_IDS = {
    ("/v1/exchange", "post"): "exchange", ("/v1/token", "post"): "tokenExchange", ("/v1/explain", "post"): "explain", ("/v1/revoke", "post"): "revoke",
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
            operation = item[method] = {**operation, "operationId": OPERATION_IDS[(path, method)]}
            operation["responses"] = dict(operation["responses"])
            if operation.get("security"):
                operation["responses"].update({k: v for k, v in _problems("unauthorized").items()
                                               if k not in operation["responses"]})
    return document


OPENAPI = _complete(OPENAPI)
_RENDERED = msgspec.json.encode(OPENAPI)


async def openapi(request: Request) -> Response:
    return Response(_RENDERED, media_type="application/json")
