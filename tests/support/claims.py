"""Claims shaped exactly like a GitHub Actions ID token (../shared/fixtures, copied here)."""

from __future__ import annotations

import time
import uuid
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
