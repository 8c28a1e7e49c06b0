"""Claims shaped exactly like a GitHub Actions ID token (../shared/fixtures, copied here)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any


def github_claims(
    *,
    owner: str = "octo-org",
    repo: str = "octo-repo",
    owner_id: str = "65",
    repository_id: str = "74",
    workflow: str = "release.yml",
    ref: str = "refs/heads/main",
    environment: str | None = "prod",
    event_name: str = "workflow_dispatch",
    audience: str = "tpx",
    lifetime: int = 300,
    **overrides: Any,
) -> dict[str, Any]:
    issued = int(time.time())
    repository = f"{owner}/{repo}"
    claims: dict[str, Any] = {
        "jti": str(uuid.uuid4()),
        "sub": f"repo:{repository}:environment:{environment}" if environment else f"repo:{repository}:ref:{ref}",
        "aud": audience,
        "ref": ref,
        "sha": "2d1c6a2e3f4b5c6d7e8f90a1b2c3d4e5f6a7b8c9",
        "repository": repository,
        "repository_owner": owner,
        "actor_id": "12",
        "repository_visibility": "private",
        "repository_id": repository_id,
        "repository_owner_id": owner_id,
        "run_id": "6028402512",
        "run_number": "10",
        "run_attempt": "2",
        "runner_environment": "github-hosted",
        "actor": "octocat",
        "workflow": "Release",
        "workflow_ref": f"{repository}/.github/workflows/{workflow}@{ref}",
        "workflow_sha": "2d1c6a2e3f4b5c6d7e8f90a1b2c3d4e5f6a7b8c9",
        "head_ref": "",
        "base_ref": "",
        "event_name": event_name,
        "ref_type": "branch",
        "ref_protected": "false",
        "job_workflow_ref": f"{repository}/.github/workflows/{workflow}@{ref}",
        "job_workflow_sha": "2d1c6a2e3f4b5c6d7e8f90a1b2c3d4e5f6a7b8c9",
        "nbf": issued - 5,
        "exp": issued + lifetime,
        "iat": issued,
    }
    if environment is not None:
        claims["environment"] = environment
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not ...}


@dataclass(kw_only=True)
class GitHubRepository:
    """A fresh GitHub repository (random names and ids, so tests never see each other's publishers),
    the claims of its ID tokens, and the trusted publisher that matches them."""

    owner: str = field(default_factory=lambda: f"org-{uuid.uuid4().hex[:8]}")
    name: str = field(default_factory=lambda: f"repo-{uuid.uuid4().hex[:8]}")
    owner_id: str = field(default_factory=lambda: str(uuid.uuid4().int % 10**9))
    repository_id: str = field(default_factory=lambda: str(uuid.uuid4().int % 10**9))
    package: str = field(default_factory=lambda: f"pkg-{uuid.uuid4().hex[:8]}")

    @property
    def repository_key(self) -> str:
        return f"{self.owner}/{self.name}".lower()

    def claims(self, **overrides: Any) -> dict[str, Any]:
        return github_claims(owner=self.owner, repo=self.name, owner_id=self.owner_id,
                             repository_id=self.repository_id, **overrides)

    def publisher(self, issuer_url: str) -> dict[str, Any]:
        """The admin API's body for a publisher of release.yml in environment prod."""
        return {"package": self.package, "provider": "github", "issuer": issuer_url, "repository_owner": self.owner,
                "repository_name": self.name, "workflow_filename": "release.yml", "environments": ["prod"]}
