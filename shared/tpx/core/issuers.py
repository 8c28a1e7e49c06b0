"""OIDC issuers as the admin API takes and shows them, and what counts as a loopback host.

An issuer URL must be exactly the `iss` its tokens carry, https, with a host
and nothing else (no query, fragment or credentials). Loopback issuers exist
only for development and are refused unless the operator allowed them; the
same loopback test guards the jwks-refresher's address checks.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Mapping
from urllib.parse import urlsplit

from tpx.core import inputs
from tpx.core.jose import SUPPORTED_ALGORITHMS
from tpx.core.providers import PROVIDERS
from tpx.core.times import rfc3339_or_none

CODE = "invalid_issuer"
FIELDS = {"url", "kind", "audience", "algorithms", "allowed_packages", "enabled", "max_token_lifetime_seconds"}
_URL_TEXT = re.compile(r"[\x21-\x7e]{1,1024}")
AUDIENCE_RE = re.compile(r"[\x21-\x7e]{1,255}")
PACKAGE_GLOB_RE = re.compile(r"[A-Za-z0-9@*?._/+~\[\]!-]{1,214}")


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def issuer_url(value: Any, allow_loopback: bool, *, code: str = CODE, field: str = "url") -> str:
    if not isinstance(value, str) or not _URL_TEXT.fullmatch(value):
        raise inputs.invalid(code, field, "must be the issuer URL exactly as the tokens' `iss` claim spells it")
    parts = urlsplit(value)
    if parts.query or parts.fragment or parts.username or parts.password or not parts.hostname:
        raise inputs.invalid(code, field, "must be a plain https URL with a host and no query, fragment or credentials")
    if value.endswith("/"):
        raise inputs.invalid(code, field, "must not end with '/'; use the exact `iss` value of the tokens")
    loopback = is_loopback_host(parts.hostname)
    if parts.scheme == "https" and not loopback:
        return value
    if loopback and allow_loopback and parts.scheme in ("http", "https"):
        return value
    if loopback:
        raise inputs.invalid(code, field,
                             "loopback issuers are refused unless TPX_INSECURE_LOOPBACK_ISSUERS=1 (development only)")
    raise inputs.invalid(code, field, "must use https")


def issuer_changes(body: dict[str, Any], allow_loopback: bool, *, creating: bool) -> dict[str, Any]:
    """The columns to write for `POST` (creating) or `PATCH /v1/admin/issuers`; refusals name the field."""
    inputs.reject_unknown(body, FIELDS if creating else FIELDS - {"url", "kind"}, CODE)
    out: dict[str, Any] = {}
    if creating:
        out["url"] = issuer_url(body.get("url"), allow_loopback)
        kind = body.get("kind")
        if kind not in PROVIDERS:
            raise inputs.invalid(CODE, "kind", "must be " + " or ".join(f'"{name}"' for name in PROVIDERS))
        out["kind"] = kind
    if "audience" in body:
        out["audience"] = inputs.text(body, "audience", AUDIENCE_RE,
                                      "a printable ASCII string of at most 255 characters", CODE, required=False)
    if "algorithms" in body:
        algorithms = body["algorithms"]
        if (not isinstance(algorithms, list) or not algorithms
                or not all(isinstance(a, str) and a in SUPPORTED_ALGORITHMS for a in algorithms)):
            raise inputs.invalid(CODE, "algorithms", f"must be a non-empty list drawn from {sorted(SUPPORTED_ALGORITHMS)}")
        out["algorithms"] = list(dict.fromkeys(algorithms))
    if "allowed_packages" in body:
        if body["allowed_packages"] is None:
            out["allowed_packages"] = None
        else:
            out["allowed_packages"] = list(inputs.text_list(body, "allowed_packages", PACKAGE_GLOB_RE,
                                                            "a package name or glob such as 'acme-*'", CODE, 100))
    if "enabled" in body:
        out["enabled"] = inputs.boolean(body, "enabled", True, CODE)
    if "max_token_lifetime_seconds" in body:
        out["max_token_lifetime_seconds"] = inputs.seconds(body, "max_token_lifetime_seconds", 60, 86400, CODE)
    return out


def issuer_json(row: Mapping[str, Any], default_audience: str) -> dict[str, Any]:
    """A stored issuer (with its key ids) as the admin API and admin events show it."""
    return {
        "id": str(row["id"]), "url": row["url"], "kind": row["kind"],
        "audience": row["audience"] or default_audience,
        "algorithms": list(row["algorithms"]),
        "allowed_packages": list(row["allowed_packages"]) if row["allowed_packages"] is not None else None,
        "max_token_lifetime_seconds": row["max_token_lifetime_seconds"],
        "enabled": row["enabled"], "jwks_uri": row["jwks_uri"],
        "keys_fetched_at": rfc3339_or_none(row["keys_fetched_at"]), "last_error": row["last_error"],
        "key_ids": list(row["key_ids"]),
        "created_at": rfc3339_or_none(row["created_at"]), "updated_at": rfc3339_or_none(row["updated_at"]),
    }
