"""Claims shaped exactly like a CircleCI OIDC token (docs/fixtures/circleci-id-token.md), and a fresh
organization/project per test for the integration tests."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

ROOT_ISSUER = "https://oidc.circleci.com"
ORG = "7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
PROJECT = "2b3c4d5e-6f70-4812-9a3b-4c5d6e7f8091"
USER = "9e8d7c6b-5a49-4382-b1a0-f9e8d7c6b5a4"
PIPELINE_DEFINITION = "5d6e7f80-9102-4a3b-8c4d-5e6f70819203"
PIPELINE = "a1b2c3d4-e5f6-4789-8abc-def012345678"
WORKFLOW = "b2c3d4e5-f6a7-489b-9cde-f01234567890"
JOB = "c3d4e5f6-a7b8-49cd-8ef0-123456789abc"
CONTEXT = "d4e5f6a7-b8c9-4def-9012-3456789abcde"
VCS_ORIGIN = "github.com/acme/widgets"
VCS_REF = "refs/heads/main"

# Leave a claim out: circleci_claims(**{VCS_REF_CLAIM: ABSENT}).
ABSENT = object()


def circleci_claims(
    *,
    org: str = ORG,
    project: str = PROJECT,
    issuer: str | None = None,
    pipeline_definition: str = PIPELINE_DEFINITION,
    contexts: list[str] | None = None,
    vcs_origin: str = VCS_ORIGIN,
    vcs_ref: str = VCS_REF,
    ssh_rerun: bool = False,
    audience: str = "tpx",
    issued: int | None = None,
    lifetime: int = 3600,
    **overrides: Any,
) -> dict[str, Any]:
    """A `$CIRCLE_OIDC_TOKEN_V2`-shaped payload (the per-organization issuer unless `issuer` is given).

    Overrides use the claim names themselves, e.g. {"oidc.circleci.com/ssh-rerun": "false"}; the
    value ABSENT leaves the claim out."""
    issued = int(time.time()) if issued is None else issued
    claims: dict[str, Any] = {
        "iss": issuer or f"{ROOT_ISSUER}/org/{org}",
        "sub": f"org/{org}/project/{project}/user/{USER}/vcs-origin/{vcs_origin}/vcs-ref/{vcs_ref}",
        "aud": audience,
        "iat": issued,
        "exp": issued + lifetime,
        "oidc.circleci.com/org-id": org,
        "oidc.circleci.com/project-id": project,
        "oidc.circleci.com/pipeline-definition-id": pipeline_definition,
        "oidc.circleci.com/pipeline-id": PIPELINE,
        "oidc.circleci.com/workflow-id": WORKFLOW,
        "oidc.circleci.com/job-id": JOB,
        "oidc.circleci.com/context-ids": [CONTEXT] if contexts is None else contexts,
        "oidc.circleci.com/vcs-origin": vcs_origin,
        "oidc.circleci.com/vcs-ref": vcs_ref,
        "oidc.circleci.com/ssh-rerun": ssh_rerun,
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not ABSENT}


def _uuid() -> str:
    return str(uuid.uuid4())


@dataclass(kw_only=True)
class CircleCIProject:
    """A fresh CircleCI organization and project (random UUIDs, so tests never see each other's
    publishers), the claims of its tokens, and the admin body of a publisher that matches them."""

    org: str = field(default_factory=_uuid)
    project: str = field(default_factory=_uuid)
    pipeline_definition: str = field(default_factory=_uuid)
    context: str = field(default_factory=_uuid)
    vcs_origin: str = field(default_factory=lambda: f"github.com/acme-{uuid.uuid4().hex[:8]}/widgets")
    package: str = field(default_factory=lambda: f"pkg-{uuid.uuid4().hex[:8]}")

    @property
    def repository(self) -> str:
        return f"{self.org}/{self.project}"

    def claims(self, issuer: str, **overrides: Any) -> dict[str, Any]:
        base: dict[str, Any] = dict(org=self.org, project=self.project, issuer=issuer,
                                    pipeline_definition=self.pipeline_definition, contexts=[self.context],
                                    vcs_origin=self.vcs_origin)
        base.update(overrides)
        return circleci_claims(**base)

    def publisher(self, issuer_url: str, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"package": self.package, "provider": "circleci", "issuer": issuer_url,
                                "organization_id": self.org, "project_id": self.project}
        body.update(fields)
        return {name: value for name, value in body.items() if value is not None}
