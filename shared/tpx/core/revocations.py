"""Revocation rules: what a revocation covers, as the admin API takes and shows it.

A revocation is a rule first: while it is `pending`, introspection treats every
token it matches as inactive on every replica, so revoking is instant however
many tokens it covers; the rule is then applied to token rows in batches
(`tpx.core.db.revocations`) and marked `done`.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Annotated, Any, Literal, Mapping

import msgspec
from msgspec import Meta

from tpx.core import bodies, inputs
from tpx.core.bodies import Body, text
from tpx.core.providers.base import Package
from tpx.core.times import rfc3339, rfc3339_or_none

KINDS = ("token", "publisher", "package", "repository")
CODE = "invalid_request"
SELECTORS = ("token_id", "publisher_id", "package", "repository")
REPOSITORY_OPTIONS = ("workflow", "issued_after", "issued_before")
DEFAULT_REASON = "revoked by an administrator"

# owner/name (GitHub) or group/sub-group/project (GitLab); ASCII only, so lower() folds A-Z alone.
REPOSITORY_RE = re.compile(r"[A-Za-z0-9_.-]{1,255}(?:/[A-Za-z0-9_.-]{1,255}){1,21}")
WORKFLOW_RE = re.compile(r"[\x20-\x7e]{1,1024}")
REASON_RE = re.compile(f"{inputs.LINE_OF_TEXT}{{1,500}}")


@dataclass(frozen=True)
class Selector:
    """What a revocation covers: exactly one kind, with that kind's fields."""

    kind: str
    token_id: uuid.UUID | None = None
    publisher_id: uuid.UUID | None = None
    package: str | None = None
    repository_key: str | None = None
    workflow: str | None = None
    issued_after: datetime | None = None
    issued_before: datetime | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown revocation kind {self.kind!r}")
        required = {"token": "token_id", "publisher": "publisher_id", "package": "package",
                    "repository": "repository_key"}[self.kind]
        if getattr(self, required) is None:
            raise ValueError(f"a {self.kind} revocation needs {required}")

    def to_api(self) -> dict[str, Any]:
        """The selector as the API and events show it (only the fields that apply)."""
        if self.kind == "token":
            return {"token_id": str(self.token_id)}
        if self.kind == "publisher":
            return {"publisher_id": str(self.publisher_id)}
        if self.kind == "package":
            return {"package": self.package}
        out: dict[str, Any] = {"repository": self.repository_key}
        if self.workflow is not None:
            out["workflow"] = self.workflow
        if self.issued_after is not None:
            out["issued_after"] = rfc3339(self.issued_after)
        if self.issued_before is not None:
            out["issued_before"] = rfc3339(self.issued_before)
        return out


@dataclass(frozen=True)
class Rule:
    """A stored revocation rule."""

    id: uuid.UUID
    kind: str
    token_id: uuid.UUID | None
    publisher_id: uuid.UUID | None
    package: str | None
    repository_key: str | None
    workflow: str | None
    issued_after: datetime | None
    issued_before: datetime | None
    cutoff: datetime
    reason: str
    actor: str | None
    status: str
    revoked: int
    created_at: datetime
    completed_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Rule":
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    @property
    def selector(self) -> Selector:
        return Selector(self.kind, self.token_id, self.publisher_id, self.package, self.repository_key,
                        self.workflow, self.issued_after, self.issued_before)

    @property
    def done(self) -> bool:
        return self.status == "done"

    def to_api(self) -> "Revocation":
        return Revocation(
            id=str(self.id), kind=self.kind, selector=self.selector.to_api(),
            token_id=str(self.token_id) if self.token_id else None,
            publisher_id=str(self.publisher_id) if self.publisher_id else None, package=self.package,
            repository=self.repository_key, workflow=self.workflow,
            issued_after=rfc3339_or_none(self.issued_after), issued_before=rfc3339_or_none(self.issued_before),
            cutoff=rfc3339(self.cutoff), reason=self.reason, actor=self.actor, status=self.status,
            revoked=self.revoked, created_at=rfc3339(self.created_at), completed_at=rfc3339_or_none(self.completed_at))

    def summary(self) -> "RevocationSummary":
        """What `POST /v1/admin/revocations` answers."""
        return RevocationSummary(revocation_id=str(self.id), status=self.status, revoked=self.revoked)


Status = Annotated[Literal["pending", "done"], Meta(
    description="pending: in effect everywhere, rows still being marked; done: every row marked")]


class RevocationSummary(msgspec.Struct):
    """What `POST /v1/admin/revocations` answers (202): the rule is in effect everywhere already."""

    revocation_id: Annotated[str, Meta(description="a UUID; GET /v1/admin/revocations/{id} shows progress")]
    status: Status
    revoked: Annotated[int, Meta(description="token rows marked revoked so far")]


class Revocation(msgspec.Struct):
    """A revocation rule and its progress."""

    id: str
    kind: Literal[KINDS]  # type: ignore[valid-type]
    selector: Annotated[dict[str, str], Meta(description="the fields of the request that select the tokens")]
    token_id: str | None
    publisher_id: str | None
    package: str | None
    repository: str | None
    workflow: str | None
    issued_after: str | None
    issued_before: str | None
    cutoff: Annotated[str, Meta(description="RFC 3339; tokens issued before it are covered")]
    reason: str
    actor: str | None
    status: Status
    revoked: int
    created_at: str
    completed_at: str | None


class RevocationResult(msgspec.Struct):
    revocation: Revocation


# A revocation's fields as the admin API takes them; each description completes "it must be ...".
Repository = text(REPOSITORY_RE, "owner/name as the CI provider spells it, e.g. octo-org/octo-repo")
Workflow = text(WORKFLOW_RE, "a workflow file name such as release.yml (GitLab: the CI file path)")
Moment = text(inputs.RFC3339_RE, "an RFC 3339 time with a zone, e.g. 2025-01-31T12:00:00Z")
Reason = text(REASON_RE, "a single line of text of at most 500 characters")


class RevocationInput(Body):
    """`POST /v1/admin/revocations`: exactly one selector (token_id, publisher_id, package or repository);
    workflow and the issue-time window narrow a repository revocation."""

    token_id: Annotated[uuid.UUID, Meta(description="the id of one token (a UUID)")] | None = None
    publisher_id: Annotated[uuid.UUID, Meta(description="the id of a publisher (a UUID)")] | None = None
    package: Package | None = None
    repository: Repository | None = None
    workflow: Workflow | None = None
    issued_after: Moment | None = None
    issued_before: Moment | None = None
    reason: Reason | None = None


def parse_selector(body: dict[str, Any]) -> tuple[Selector, str]:
    """`POST /v1/admin/revocations`'s body as a selector and a reason; refusals name the field (422 invalid_request)."""
    typed = bodies.convert(body, RevocationInput, CODE)
    given = [name for name in SELECTORS if getattr(typed, name) is not None]
    if not given:
        raise inputs.invalid(CODE, "selector", "exactly one of token_id, publisher_id, package or repository "
                                               "is required")
    if len(given) > 1:
        raise inputs.invalid(CODE, given[1], f"only one selector is allowed per revocation, and {given[0]} is "
                                             "already given; send one request per selector")
    kind = given[0]
    if kind != "repository":
        extra = [name for name in REPOSITORY_OPTIONS if getattr(typed, name) is not None]
        if extra:
            raise inputs.invalid(CODE, extra[0], "is only allowed together with repository")
    reason = typed.reason if typed.reason is not None else DEFAULT_REASON
    if kind == "token_id":
        return Selector("token", token_id=typed.token_id), reason
    if kind == "publisher_id":
        return Selector("publisher", publisher_id=typed.publisher_id), reason
    if kind == "package":
        return Selector("package", package=typed.package), reason
    assert typed.repository is not None
    issued_after = inputs.time_field(body, "issued_after", CODE)
    issued_before = inputs.time_field(body, "issued_before", CODE)
    if issued_after is not None and issued_before is not None and issued_after >= issued_before:
        raise inputs.invalid(CODE, "issued_before", "must be later than issued_after")
    return Selector("repository", repository_key=typed.repository.lower(), workflow=typed.workflow,
                    issued_after=issued_after, issued_before=issued_before), reason
