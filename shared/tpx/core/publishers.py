"""The trusted-publisher model shared by the providers, the store and the API.

A publisher is stored in provider-neutral columns (owner, name, workflow, ids)
and shown with the provider's own field names (GitHub: repository_owner,
repository_name, workflow_filename; GitLab: namespace, project,
workflow_filepath), so one table and one lookup serve every provider.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# Provider field names for the neutral columns.
API_FIELDS: dict[str, dict[str, str]] = {
    "github": {
        "owner": "repository_owner",
        "owner_id": "repository_owner_id",
        "name": "repository_name",
        "name_id": "repository_id",
        "workflow": "workflow_filename",
    },
    "gitlab": {
        "owner": "namespace",
        "owner_id": "namespace_id",
        "name": "project",
        "name_id": "project_id",
        "workflow": "workflow_filepath",
    },
}

PERMISSIONS = ("publish-update", "publish-new")


@dataclass(frozen=True)
class Publisher:
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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def repository(self) -> str:
        return f"{self.owner}/{self.name}"

    def to_api(self) -> dict[str, Any]:
        names = API_FIELDS[self.provider]
        out: dict[str, Any] = {
            "id": self.id,
            "package": self.package,
            "provider": self.provider,
            "issuer": self.issuer,
            names["owner"]: self.owner,
            names["owner_id"]: self.owner_id,
            names["name"]: self.name,
            names["name_id"]: self.name_id,
            names["workflow"]: self.workflow,
            "environments": list(self.environments),
            "ref_patterns": list(self.ref_patterns),
            "allow_self_hosted_runners": self.allow_self_hosted_runners,
            "token_ttl_seconds": self.token_ttl_seconds,
            "permissions": list(self.permissions),
            "created_at": self.created_at.isoformat().replace("+00:00", "Z") if self.created_at else None,
        }
        if self.provider == "gitlab":
            out["require_protected_ref"] = self.require_protected_ref
        return out
