"""Trusted publishers as the admin API takes and shows them.

A publisher is stored in provider-neutral fields (`tpx.core.providers.base.Publisher`);
here it is read from admin input (the common fields here, the identity fields
by its provider) and shown with the provider's own field names. `identity_key`
says when two publishers are the same one.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from tpx.core import bodies, inputs
from tpx.core.issuers import issuer_url
from tpx.core.providers import PROVIDERS
from tpx.core.providers.base import PERMISSIONS, Provider, Publisher
from tpx.core.times import rfc3339_or_none

CODE = "invalid_publisher"
# The body of `POST /v1/admin/publishers`: one type per provider, picked by the `provider` member.
PUBLISHER_INPUT = bodies.one_of(*(provider.publisher_input for provider in PROVIDERS.values()))
_PROVIDER_OF_INPUT = {provider.publisher_input: provider for provider in PROVIDERS.values()}


def publisher_input(body: dict[str, Any], *, ttl_max: int, allow_loopback: bool) -> Publisher:
    """A new publisher from `POST /v1/admin/publishers`; refusals are `422 invalid_publisher` naming the field."""
    typed = bodies.convert(body, PUBLISHER_INPUT, CODE)
    provider = _PROVIDER_OF_INPUT[type(typed)]
    identity = typed.identity_fields()
    issuer = typed.issuer or provider.default_issuer(identity)
    if issuer != provider.public_issuer:
        issuer = issuer_url(issuer, allow_loopback, code=CODE, field="issuer")
    if typed.token_ttl_seconds is not None and typed.token_ttl_seconds > ttl_max:
        raise inputs.invalid(CODE, "token_ttl_seconds", f"{typed.token_ttl_seconds} is not valid; it must be a whole "
                                                        f"number of seconds between 60 and {ttl_max}")
    return Publisher(
        id="", package=typed.package, provider=provider.name, issuer=issuer,
        owner=identity.owner, name=identity.name, workflow=identity.workflow,
        owner_id=identity.owner_id, name_id=identity.name_id, environments=identity.environments,
        ref_patterns=tuple(dict.fromkeys(typed.ref_patterns)),
        allow_self_hosted_runners=typed.allow_self_hosted_runners,
        require_protected_ref=identity.options.get("require_protected_ref", False),
        token_ttl_seconds=typed.token_ttl_seconds,
        permissions=tuple(p for p in PERMISSIONS if p in typed.permissions),
        conditions={name: value for name, value in identity.conditions.items() if value is not None},
    )


def _view(provider: Provider) -> type[msgspec.Struct]:
    """A stored publisher as the API shows it: its provider's input type, plus the id and creation time."""
    base = provider.publisher_input
    return msgspec.defstruct(
        base.__name__.removesuffix("Input"), [("id", Annotated[str, Meta(description="a UUID")]),
                                              ("created_at", Annotated[str, Meta(description="RFC 3339")] | None)],
        bases=(base,), tag=provider.name, kw_only=True, module=__name__)


PUBLISHER_VIEWS = {name: _view(provider) for name, provider in PROVIDERS.items()}
PUBLISHER = bodies.one_of(*PUBLISHER_VIEWS.values())


def publisher_view(publisher: Publisher) -> msgspec.Struct:
    """The publisher with its provider's field names (`Provider.fields`), as its view type."""
    provider = PROVIDERS[publisher.provider]
    common: dict[str, Any] = {
        "id": publisher.id, "package": publisher.package, "issuer": publisher.issuer,
        "ref_patterns": list(publisher.ref_patterns),
        "allow_self_hosted_runners": publisher.allow_self_hosted_runners,
        "token_ttl_seconds": publisher.token_ttl_seconds, "permissions": list(publisher.permissions),
        "created_at": rfc3339_or_none(publisher.created_at),
    }
    return PUBLISHER_VIEWS[provider.name](**common, **provider.view_fields(publisher))


def publisher_json(publisher: Publisher) -> dict[str, Any]:
    """The publisher as the API and admin events show it."""
    return msgspec.to_builtins(publisher_view(publisher))


def identity_key(publisher: Publisher) -> str:
    """What makes two publishers "the same": package, repository, workflow and environments, names
    case-folded (environment names only where the provider compares them ignoring case)."""
    environments = (
        sorted({e.lower() for e in publisher.environments})
        if PROVIDERS[publisher.provider].environments_ignore_case
        else sorted(set(publisher.environments))
    )
    key: list[Any] = [publisher.package.lower(), publisher.owner.lower(), publisher.name.lower(), publisher.workflow,
                      environments]
    if publisher.conditions:   # absent for publishers without any, so their keys stay what they were
        key.append(dict(sorted(publisher.conditions.items())))
    return json.dumps(key)
