"""What every provider is: a typed identity built from verified claims, the
publisher configuration it is matched against, and a table of pure checks.

The same `checks()` output drives the exchange decision, `POST /v1/explain` and
the hints of `no_matching_publisher`, so the three can never disagree.

A publisher is stored in provider-neutral fields (owner, name, workflow, ids)
and shown with the provider's own field names (`Provider.fields`: GitHub's
repository_owner, repository_name, workflow_filename; GitLab's namespace,
project, workflow_filepath), so one table and one lookup serve every provider.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, Mapping, Protocol

import msgspec
from msgspec import Meta

from tpx.core.bodies import Body, Flag, choices, text, text_list

PERMISSIONS = ("publish-update", "publish-new")


class CheckResult(msgspec.Struct, frozen=True):
    """One row of a provider's check table evaluated against one publisher.

    `code` names the error a failure of this check produces when no publisher
    matches (almost always `no_matching_publisher`; the trigger check produces
    `forbidden_trigger`). A frozen msgspec Struct, not a frozen dataclass: an
    exchange builds about ten of these per candidate, and a frozen dataclass's
    `__init__` (one `object.__setattr__` per field) cost ~2 us each against
    ~0.2 (docs/decisions.md, "Performance levers").
    """

    check: str
    claim: str
    expected: Any
    actual: Any
    passed: bool
    note: str | None = None
    code: str = "no_matching_publisher"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "check": self.check,
            "claim": self.claim,
            "expected": self.expected,
            "actual": self.actual,
            "passed": self.passed,
        }
        if self.note:
            out["note"] = self.note
        return out


class Identity(msgspec.Struct, frozen=True):
    """The CI identity a verified ID token proves, without personal data.

    `repository` is `owner/name` (GitHub), `namespace/project` (GitLab), the email's
    `domain/account` (Google Cloud), `organization/pipeline` slugs (Buildkite) or
    `organization/project` ids (CircleCI), as the token spells it. `repository_key`
    is its lower-cased form, used to load the candidate publishers.
    `owner_id`/`repository_id` are the immutable ids that guard against account
    resurrection (None only where the token may leave them out: Buildkite's are
    optional claims). `extra` holds provider-specific verified claims the checks
    need (never personal data).
    """

    provider: str
    issuer: str
    repository: str
    owner: str
    name: str
    owner_id: str | None
    repository_id: str | None
    workflow: str
    workflow_ref: str
    environment: str | None
    ref: str
    sha: str
    run_id: str | None
    actor: str | None
    event_name: str | None
    runner_environment: str | None
    extra: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def repository_key(self) -> str:
        return self.repository.lower()

    def ci(self) -> dict[str, Any]:
        """The CI identity as stored on tokens, shown by introspection and carried by events."""
        return {
            "provider": self.provider,
            "issuer": self.issuer,
            "repository": self.repository,
            "repository_id": self.repository_id,
            "owner_id": self.owner_id,
            "workflow": self.workflow,
            "workflow_ref": self.workflow_ref,
            "environment": self.environment,
            "ref": self.ref,
            "sha": self.sha,
            "run_id": self.run_id,
            "actor": self.actor,
            "event_name": self.event_name,
            "runner_environment": self.runner_environment,
        }


@dataclass(frozen=True)
class Publisher:
    """A trusted-publisher configuration, in provider-neutral fields."""

    id: str
    package: str
    provider: str
    issuer: str
    owner: str
    name: str
    workflow: str
    owner_id: str | None = None
    name_id: str | None = None
    environments: tuple[str, ...] = ()
    ref_patterns: tuple[str, ...] = ()
    allow_self_hosted_runners: bool = False
    require_protected_ref: bool = False
    token_ttl_seconds: int | None = None
    permissions: tuple[str, ...] = ("publish-update",)
    created_at: datetime | None = None
    # Conditions only its provider has (`Provider.conditions` names them), as JSON values.
    conditions: Mapping[str, Any] = field(default_factory=dict)

    @property
    def repository(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass(frozen=True)
class IdentityFields:
    """The provider-specific part of a publisher, in neutral fields."""

    owner: str
    name: str
    workflow: str
    owner_id: str | None
    name_id: str | None
    environments: tuple[str, ...] = ()
    options: Mapping[str, bool] = field(default_factory=dict)
    conditions: Mapping[str, Any] = field(default_factory=dict)


# A package name as registries spell them (npm scopes included); the same shape in every input that names one.
PACKAGE_RE = re.compile(r"[A-Za-z0-9@][A-Za-z0-9._@/+~-]{0,213}")
PACKAGE_TEXT = "a package name (letters, digits, '.', '_', '-', '@', '/')"
Package = text(PACKAGE_RE, PACKAGE_TEXT)
NumericId = text(r"[0-9]{1,20}", 'a numeric id given as a string, e.g. "65"')
IssuerUrl = text(r"[\x21-\x7e]{1,1024}", "the URL of a registered issuer of this provider's kind; default: the "
                                          "provider's public issuer")
RefPatterns = text_list(r"[\x20-\x7e]{1,255}", "a git ref or glob such as refs/tags/v*", 20)
Permissions = Annotated[list[Literal[PERMISSIONS]], Meta(  # type: ignore[valid-type]
    min_length=1, description=f"a non-empty list, each {choices(PERMISSIONS)}")]
TokenLifetime = Annotated[int, Meta(ge=60, le=7 * 86400, description=(
    "a whole number of seconds, at least 60 and at most the operator's TPX_TOKEN_TTL_MAX_SECONDS (default 21600)"))]


class PublisherInput(Body, tag_field="provider", kw_only=True):
    """`POST /v1/admin/publishers`: the fields every publisher has. Each provider declares a subclass
    tagged with its name that adds its identity fields (and its environment-name rules), so the
    `provider` member picks the type that checks the rest."""

    package: Package
    issuer: IssuerUrl | None = None
    ref_patterns: RefPatterns = []
    allow_self_hosted_runners: Flag = False
    token_ttl_seconds: TokenLifetime | None = None
    permissions: Permissions = msgspec.field(default_factory=lambda: ["publish-update"])

    def identity_fields(self) -> IdentityFields:
        """This provider's fields in neutral form (its subclass knows them)."""
        raise NotImplementedError


class Provider(Protocol):
    name: str
    # The issuer this provider's publishers use unless they name another (e.g. github.com's).
    public_issuer: str
    # Hosts other than the public issuer's own that serve its keys (Google: www.googleapis.com); the
    # jwks-refresher fetches only from approved hosts, and registering the public issuer approves these.
    key_hosts: tuple[str, ...]
    # Neutral publisher field -> the provider's own field name in the API and in events.
    fields: Mapping[str, str]
    # Whether its tokens always carry a `jti` (then one without is malformed); otherwise replay
    # protection keys on the hash of the decoded claims (tpx.exchange.verification.replay_key).
    issues_jti: bool
    # Boolean publisher options only this provider has (GitLab: require_protected_ref).
    options: tuple[str, ...]
    # The publisher conditions only this provider has (stored in `Publisher.conditions`), by API name.
    conditions: tuple[str, ...]
    # Whether the forge compares environment names ignoring case (GitHub does, GitLab does not).
    environments_ignore_case: bool
    # The admin input of this provider's publishers: a PublisherInput subclass tagged with `name`.
    publisher_input: type[PublisherInput]

    def identity(self, claims: dict[str, Any], issuer_url: str) -> Identity:
        """Build the typed identity; raise Problem('malformed_token') on a missing or mistyped claim."""

    def checks(self, identity: Identity, publisher: Publisher) -> list[CheckResult]:
        """Evaluate every row of the check table; pure, no I/O."""

    def bindings(self, identity: Identity, publisher: Publisher) -> dict[str, str]:
        """Ids the publisher does not pin yet, to bind on a successful exchange."""

    def default_issuer(self, fields: IdentityFields) -> str:
        """The issuer a publisher uses when its input names none (GitHub: github.com's; CircleCI: its
        organization's own issuer URL)."""

    def view_fields(self, publisher: Publisher) -> dict[str, Any]:
        """The publisher's provider-specific fields under their API names (the view adds the common ones)."""

    def publisher_hint(self, identity: Identity) -> dict[str, Any]:
        """The provider-specific fields of a publisher this identity would match (for "add one" hints)."""


def named_fields(provider: Provider, publisher: Publisher) -> dict[str, Any]:
    """`view_fields` of a provider whose neutral fields map one to one onto its own names (and that has
    environments: GitHub, GitLab)."""
    names = provider.fields
    out: dict[str, Any] = {names[neutral]: getattr(publisher, neutral)
                           for neutral in ("owner", "owner_id", "name", "name_id", "workflow")}
    out["environments"] = list(publisher.environments)
    out.update({option: getattr(publisher, option) for option in provider.options})
    out.update({name: publisher.conditions.get(name) for name in provider.conditions})
    return out


def named_hint(provider: Provider, identity: Identity) -> dict[str, Any]:
    """`publisher_hint` of a provider whose neutral fields map one to one onto its own names."""
    names = provider.fields
    return {names["owner"]: identity.owner, names["name"]: identity.name, names["workflow"]: identity.workflow}
