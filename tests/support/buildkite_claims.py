"""Claims shaped exactly like a Buildkite agent OIDC token (docs/fixtures/buildkite-id-token.md), as
`buildkite-agent oidc request-token --audience tpx --claim organization_id,pipeline_id` returns them."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

# Leave a claim out of the token: `buildkite_claims(organization_id=OMIT)`.
OMIT: Any = ...

COMMIT = "3f1c9e0a7b2d4c6e8f0a1b3c5d7e9f1a2b4c6d8e"


def buildkite_claims(
    *,
    organization: str = "acme-inc",
    pipeline: str = "widgets-release",
    organization_id: str = "0184990a-477b-4fa8-9968-496074483c77",
    pipeline_id: str = "0184990a-4782-42b5-afc1-16715b10b1a0",
    branch: str = "main",
    tag: str | None = None,
    step_key: str | None = "publish",
    runner_environment: str = "self-hosted",
    audience: str = "tpx",
    lifetime: int = 300,
    **overrides: Any,
) -> dict[str, Any]:
    """Fresh times and jti; `tag=None` and `step_key=None` are sent as JSON null, as Buildkite does."""
    issued = int(time.time())
    ref = f"refs/tags/{tag}" if tag else f"refs/heads/{branch}"
    claims: dict[str, Any] = {
        "sub": f"organization:{organization}:pipeline:{pipeline}:ref:{ref}:commit:{COMMIT}:step:{step_key or ''}",
        "aud": audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + lifetime,
        "jti": str(uuid.uuid4()),
        "organization_slug": organization,
        "pipeline_slug": pipeline,
        "build_number": 412,
        "build_branch": branch,
        "build_tag": tag,
        "build_commit": COMMIT,
        "step_key": step_key,
        "job_id": "019b7a3b-9d10-4f2e-8c7a-61b5e4d3c2a1",
        "agent_id": "019b7a3b-a0e4-4b7c-9d2f-3e8a7c6b5d40",
        "build_source": "webhook",
        "runner_environment": runner_environment,
        "organization_id": organization_id,
        "pipeline_id": pipeline_id,
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not OMIT}


@dataclass(kw_only=True)
class BuildkitePipeline:
    """A fresh Buildkite pipeline (random slugs and UUIDs, so tests never see each other's publishers),
    the claims of its tokens, and the body of a publisher that matches them."""

    organization: str = field(default_factory=lambda: f"org-{uuid.uuid4().hex[:8]}")
    pipeline: str = field(default_factory=lambda: f"pipe-{uuid.uuid4().hex[:8]}")
    organization_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    pipeline_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    package: str = field(default_factory=lambda: f"pkg-{uuid.uuid4().hex[:8]}")

    @property
    def slug_path(self) -> str:
        return f"{self.organization}/{self.pipeline}"

    def claims(self, **overrides: Any) -> dict[str, Any]:
        base: dict[str, Any] = dict(organization=self.organization, pipeline=self.pipeline,
                                    organization_id=self.organization_id, pipeline_id=self.pipeline_id)
        base.update(overrides)
        return buildkite_claims(**base)

    def publisher(self, issuer_url: str, **fields: Any) -> dict[str, Any]:
        """The admin API's body for a publisher of this pipeline (self-hosted agents allowed, as most are)."""
        body = {"package": self.package, "provider": "buildkite", "issuer": issuer_url,
                "organization_slug": self.organization, "pipeline_slug": self.pipeline,
                "allow_self_hosted_runners": True}
        body.update(fields)
        return {name: value for name, value in body.items() if value is not OMIT}
