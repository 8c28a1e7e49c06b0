"""What every provider is: a typed identity built from verified claims, and a
table of pure checks run against one publisher.

The same `checks()` output drives the exchange decision, `POST /v1/explain` and
the hints of `no_matching_publisher`, so the three can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class CheckResult:
    """One row of a provider's check table evaluated against one publisher.

    `code` names the error a failure of this check produces when no publisher
    matches (almost always `no_matching_publisher`; the trigger check produces
    `forbidden_trigger`).
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


@dataclass(frozen=True)
class Identity:
    """The CI identity a verified ID token proves, without personal data.

    `repository` is `owner/name` (GitHub) or `namespace/project` (GitLab), as the
    token spells it. `repository_key` is its lower-cased form, used to load the
    candidate publishers. `owner_id`/`repository_id` are the immutable numeric
    ids that guard against account resurrection. `extra` holds provider-specific
    verified claims the checks need (never personal data).
    """

    provider: str
    issuer: str
    repository: str
    owner: str
    name: str
    owner_id: str
    repository_id: str
    workflow: str
    workflow_ref: str
    environment: str | None
    ref: str
    sha: str
    run_id: str | None
    actor: str | None
    event_name: str | None
    runner_environment: str | None
    extra: dict[str, Any] = field(default_factory=dict)

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


class Provider(Protocol):
    name: str

    def identity(self, claims: dict[str, Any], issuer_url: str) -> Identity:
        """Build the typed identity; raise Problem('malformed_token') on a missing or mistyped claim."""

    def checks(self, identity: Identity, publisher: Any) -> list[CheckResult]:
        """Evaluate every row of the check table; pure, no I/O."""

    def bindings(self, identity: Identity, publisher: Any) -> dict[str, str]:
        """Ids the publisher does not pin yet, to bind on a successful exchange."""
