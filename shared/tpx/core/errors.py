"""The error model of the native API (api.md section 3).

Every refusal is a `Problem`: a stable machine-readable `code`, a sentence that
says what failed and what to change, and optional hints. The HTTP layer turns a
Problem into RFC 9457 problem details; the compatibility routes turn the very
same Problem into crates.io's or PyPI's error shape, so a denial carries the
same precise reason on every route.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

# code -> (HTTP status, title). The table is the contract; do not renumber.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "malformed_request": (400, "Malformed request"),
    "malformed_token": (400, "Malformed token"),
    "request_too_large": (413, "Request too large"),
    "headers_too_large": (431, "Request header fields too large"),
    "unsupported_media_type": (415, "Unsupported media type"),
    "unknown_issuer": (401, "Unknown issuer"),
    "invalid_token": (401, "Invalid token"),
    "unauthorized": (401, "Unauthorized"),
    "no_matching_publisher": (403, "No matching trusted publisher"),
    "forbidden_trigger": (403, "Forbidden workflow trigger"),
    "not_granted": (403, "Not granted"),
    "not_found": (404, "Not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "token_reused": (409, "Token already used"),
    "duplicate_publisher": (409, "Duplicate publisher"),
    "duplicate_issuer": (409, "Duplicate issuer"),
    "issuer_in_use": (409, "Issuer in use"),
    "invalid_publisher": (422, "Invalid publisher"),
    "invalid_issuer": (422, "Invalid issuer"),
    "invalid_request": (422, "Invalid request"),
    "rate_limited": (429, "Too many requests"),
    "internal": (500, "Internal error"),
    "keys_unavailable": (503, "Signing keys unavailable"),
    "unavailable": (503, "Service unavailable"),
}


class ProblemDetails(msgspec.Struct, omit_defaults=True):
    """A refusal as RFC 9457 problem details (application/problem+json), tpx's extensions included."""

    type: str
    title: str
    status: int
    code: Literal[tuple(ERROR_CODES)]  # type: ignore[valid-type]
    detail: str
    request_id: str | None = None
    hints: list[str] = []
    checks: list[dict[str, Any]] | None = None
    field: str | None = None


@dataclass
class Problem(Exception):
    """A refusal with everything a client needs to fix its request."""

    code: str
    detail: str
    hints: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] | None = None
    retry_after: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # For a 401 about the request's own credential: RFC 6750's error code for WWW-Authenticate
    # ("invalid_token" when one was presented and refused; None when none was presented).
    challenge: str | None = None

    def __post_init__(self) -> None:
        if self.code not in ERROR_CODES:
            raise ValueError(f"unknown error code {self.code!r}")
        if not set(self.extra) <= {"field"}:
            raise ValueError(f"unknown problem members {sorted(set(self.extra) - {'field'})}")
        super().__init__(f"{self.code}: {self.detail}")

    @property
    def status(self) -> int:
        return ERROR_CODES[self.code][0]

    @property
    def title(self) -> str:
        return ERROR_CODES[self.code][1]

    def body(self, request_id: str | None) -> ProblemDetails:
        return ProblemDetails(
            type=f"urn:tpx:error:{self.code}", title=self.title, status=self.status, code=self.code,
            detail=self.detail, request_id=request_id, hints=list(self.hints), checks=self.checks,
            field=self.extra.get("field"))
