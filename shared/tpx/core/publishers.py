"""Trusted publishers as the admin API takes and shows them.

A publisher is stored in provider-neutral fields (`tpx.core.providers.base.Publisher`);
here it is read from admin input (the common fields here, the identity fields
by its provider) and shown with the provider's own field names. `identity_key`
says when two publishers are the same one.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tpx.core import inputs
from tpx.core.issuers import issuer_url
from tpx.core.providers import PROVIDERS
from tpx.core.providers.base import PERMISSIONS, Publisher
from tpx.core.times import rfc3339_or_none

CODE = "invalid_publisher"
PACKAGE_RE = re.compile(r"[A-Za-z0-9@][A-Za-z0-9._@/+~-]{0,213}")
PACKAGE_TEXT = "a package name (letters, digits, '.', '_', '-', '@', '/')"
_PRINTABLE_255 = re.compile(r"[\x20-\x7e]{1,255}")
COMMON_FIELDS = {"package", "provider", "issuer", "environments", "ref_patterns", "allow_self_hosted_runners",
                 "token_ttl_seconds", "permissions"}


def publisher_input(body: dict[str, Any], *, ttl_max: int, allow_loopback: bool) -> Publisher:
    """A new publisher from `POST /v1/admin/publishers`; refusals are `422 invalid_publisher` naming the field."""
    provider = PROVIDERS.get(body.get("provider"))  # type: ignore[arg-type]
    if provider is None:
        kinds = " or ".join(f'"{name}"' for name in PROVIDERS)
        raise inputs.invalid(CODE, "provider", f"must be {kinds}")
    inputs.reject_unknown(body, COMMON_FIELDS | set(provider.fields.values()) | set(provider.options), CODE)
    package = inputs.required_text(body, "package", PACKAGE_RE, PACKAGE_TEXT, CODE)
    issuer = body.get("issuer", provider.public_issuer)
    if issuer != provider.public_issuer:
        issuer = issuer_url(issuer, allow_loopback, code=CODE, field="issuer")
    identity = provider.publisher_fields(body, CODE)
    environments = inputs.text_list(body, "environments", provider.environment_name, provider.environment_name_text,
                                    CODE, 20)
    ref_patterns = inputs.text_list(body, "ref_patterns", _PRINTABLE_255, "a git ref or glob such as refs/tags/v*",
                                    CODE, 20)
    permissions = body.get("permissions", ["publish-update"])
    if (not isinstance(permissions, list) or not permissions
            or not all(isinstance(p, str) and p in PERMISSIONS for p in permissions)):
        raise inputs.invalid(CODE, "permissions", f"must be a non-empty list drawn from {list(PERMISSIONS)}")
    return Publisher(
        id="", package=package, provider=provider.name, issuer=issuer,
        owner=identity.owner, name=identity.name, workflow=identity.workflow,
        owner_id=identity.owner_id, name_id=identity.name_id, environments=environments, ref_patterns=ref_patterns,
        allow_self_hosted_runners=inputs.boolean(body, "allow_self_hosted_runners", False, CODE),
        require_protected_ref=identity.options.get("require_protected_ref", False),
        token_ttl_seconds=inputs.seconds(body, "token_ttl_seconds", 60, ttl_max, CODE),
        permissions=tuple(p for p in PERMISSIONS if p in permissions),
    )


def publisher_json(publisher: Publisher) -> dict[str, Any]:
    """The publisher with its provider's field names, as the API and admin events show it."""
    provider = PROVIDERS[publisher.provider]
    names = provider.fields
    out: dict[str, Any] = {
        "id": publisher.id,
        "package": publisher.package,
        "provider": publisher.provider,
        "issuer": publisher.issuer,
        names["owner"]: publisher.owner,
        names["owner_id"]: publisher.owner_id,
        names["name"]: publisher.name,
        names["name_id"]: publisher.name_id,
        names["workflow"]: publisher.workflow,
        "environments": list(publisher.environments),
        "ref_patterns": list(publisher.ref_patterns),
        "allow_self_hosted_runners": publisher.allow_self_hosted_runners,
        "token_ttl_seconds": publisher.token_ttl_seconds,
        "permissions": list(publisher.permissions),
        "created_at": rfc3339_or_none(publisher.created_at),
    }
    for option in provider.options:
        out[option] = getattr(publisher, option)
    return out


def identity_key(publisher: Publisher) -> str:
    """What makes two publishers "the same": package, repository, workflow and environments, names
    case-folded (environment names only where the provider compares them ignoring case)."""
    environments = (
        sorted({e.lower() for e in publisher.environments})
        if PROVIDERS[publisher.provider].environments_ignore_case
        else sorted(set(publisher.environments))
    )
    return json.dumps([
        publisher.package.lower(), publisher.owner.lower(), publisher.name.lower(), publisher.workflow, environments,
    ])
