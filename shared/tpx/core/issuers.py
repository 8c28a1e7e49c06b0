"""OIDC issuers as the admin API takes and shows them, and what counts as a loopback host.

An issuer URL must be exactly the `iss` its tokens carry, https, with a host
and nothing else (no query, fragment or credentials). Loopback issuers exist
only for development and are refused unless the operator allowed them; the
same loopback test guards the jwks-refresher's address checks.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from tpx.core import bodies, inputs
from tpx.core.bodies import UNSET, Body, Flag, UnsetType, seconds, text, text_list
from tpx.core.jose import SUPPORTED_ALGORITHMS
from tpx.core.providers import PROVIDERS
from tpx.core.times import rfc3339_or_none

CODE = "invalid_issuer"
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


# An issuer's fields as the admin API takes them; each description completes "it must be ...".
Audience = text(AUDIENCE_RE, "a printable ASCII string of at most 255 characters")
Algorithms = Annotated[list[Literal[tuple(sorted(SUPPORTED_ALGORITHMS))]], Meta(  # type: ignore[misc]
    min_length=1, description=f"a non-empty list, each {bodies.choices(sorted(SUPPORTED_ALGORITHMS))}")]
PackageGlobs = text_list(PACKAGE_GLOB_RE, "a package name or glob such as 'acme-*'", 100)
IssuerUrl = text(_URL_TEXT, "the issuer URL exactly as the tokens' `iss` claim spells it")
Kind = Annotated[Literal[tuple(PROVIDERS)], Meta(description=bodies.choices(PROVIDERS))]  # type: ignore[valid-type]


class IssuerChange(Body):
    """`PATCH /v1/admin/issuers/{id}`: the settings an issuer may change (an absent field stays as it is)."""

    enabled: Flag | UnsetType = UNSET
    audience: Audience | None | UnsetType = UNSET
    algorithms: Algorithms | UnsetType = UNSET
    allowed_packages: PackageGlobs | None | UnsetType = UNSET
    max_token_lifetime_seconds: seconds(60, 86400) | None | UnsetType = UNSET


class IssuerInput(IssuerChange, kw_only=True):
    """`POST /v1/admin/issuers`: a new issuer; `kind` selects the provider that reads its tokens."""

    url: IssuerUrl
    kind: Kind


def issuer_changes(body: dict[str, Any], allow_loopback: bool, *, creating: bool) -> dict[str, Any]:
    """The columns to write for `POST` (creating) or `PATCH /v1/admin/issuers`; refusals name the field."""
    typed = bodies.convert(body, IssuerInput if creating else IssuerChange, CODE)
    out = {name: value for name in typed.__struct_fields__ if (value := getattr(typed, name)) is not UNSET}
    if creating:
        out["url"] = issuer_url(out["url"], allow_loopback)
        provider = PROVIDERS[out["kind"]]
        if out["url"] == provider.public_issuer and provider.key_hosts:
            out["jwks_hosts"] = list(provider.key_hosts)
    for name in ("algorithms", "allowed_packages"):
        if out.get(name) is not None:
            out[name] = list(dict.fromkeys(out[name]))
    return out


class Issuer(msgspec.Struct):
    """A stored issuer as the admin API shows it (and admin events carry it)."""

    id: Annotated[str, Meta(description="a UUID")]
    url: str
    kind: Kind
    audience: Annotated[str, Meta(description="the `aud` its tokens must carry (the service default if unset)")]
    algorithms: list[str]
    allowed_packages: Annotated[list[str], Meta(description="package names or globs; null: any")] | None
    max_token_lifetime_seconds: int | None
    enabled: bool
    jwks_uri: str | None
    keys_fetched_at: Annotated[str, Meta(description="RFC 3339")] | None
    last_error: Annotated[str, Meta(description="why the last key fetch failed, if it did")] | None
    key_ids: list[str]
    created_at: str | None
    updated_at: str | None


class IssuerResult(msgspec.Struct):
    issuer: Issuer


class IssuerList(msgspec.Struct):
    issuers: list[Issuer]


def issuer_json(row: Mapping[str, Any], default_audience: str) -> dict[str, Any]:
    """A stored issuer (with its key ids) as the admin API and admin events show it."""
    return msgspec.to_builtins(Issuer(
        id=str(row["id"]), url=row["url"], kind=row["kind"], audience=row["audience"] or default_audience,
        algorithms=list(row["algorithms"]),
        allowed_packages=list(row["allowed_packages"]) if row["allowed_packages"] is not None else None,
        max_token_lifetime_seconds=row["max_token_lifetime_seconds"], enabled=row["enabled"],
        jwks_uri=row["jwks_uri"], keys_fetched_at=rfc3339_or_none(row["keys_fetched_at"]),
        last_error=row["last_error"], key_ids=list(row["key_ids"]),
        created_at=rfc3339_or_none(row["created_at"]), updated_at=rfc3339_or_none(row["updated_at"])))
