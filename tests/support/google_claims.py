"""Claims shaped exactly like a Google Cloud service-account ID token (docs/fixtures/google-id-token.md), as the
metadata server returns them for `audience=tpx&format=full`."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

# Leave a claim out of the token: `google_claims(email_verified=OMIT)`.
OMIT: Any = ...

EMAIL = "release-bot@acme-build-prod.iam.gserviceaccount.com"
SUB = "104628349174512389012"


def google_claims(
    *,
    email: str = EMAIL,
    sub: str = SUB,
    project_id: str = "acme-build-prod",
    audience: str = "tpx",
    lifetime: int = 3600,
    **overrides: Any,
) -> dict[str, Any]:
    """Fresh times; no `jti` (Google issues none), so two tokens differ only when their claims do: `iat` is
    the current second, and `google.compute_engine.instance_id` a fresh number unless overridden."""
    issued = int(time.time())
    claims: dict[str, Any] = {
        "aud": audience,
        "azp": sub,
        "email": email,
        "email_verified": True,
        "exp": issued + lifetime,
        "google": {
            "compute_engine": {
                "instance_creation_timestamp": issued - 86400,
                "instance_id": str(uuid.uuid4().int % 10**19),
                "instance_name": "release-runner-1",
                "project_id": project_id,
                "project_number": 217706947495,
                "zone": "us-central1-c",
            },
        },
        "iat": issued,
        "iss": "https://accounts.google.com",
        "sub": sub,
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not OMIT}


@dataclass(kw_only=True)
class GoogleServiceAccount:
    """A fresh service account (random name, project and unique id, so tests never see each other's
    publishers), the claims of its ID tokens, and the trusted publisher that matches them."""

    account: str = field(default_factory=lambda: f"release-{uuid.uuid4().hex[:8]}")
    project: str = field(default_factory=lambda: f"proj-{uuid.uuid4().hex[:8]}")
    sub: str = field(default_factory=lambda: str(10**20 + uuid.uuid4().int % 10**20))
    package: str = field(default_factory=lambda: f"pkg-{uuid.uuid4().hex[:8]}")

    @property
    def email(self) -> str:
        return f"{self.account}@{self.project}.iam.gserviceaccount.com"

    @property
    def repository(self) -> str:
        """The neutral owner/name: the email's domain, then its local part."""
        return f"{self.project}.iam.gserviceaccount.com/{self.account}"

    def claims(self, **overrides: Any) -> dict[str, Any]:
        return google_claims(**{"email": self.email, "sub": self.sub, "project_id": self.project, **overrides})

    def publisher(self, issuer_url: str, **fields: Any) -> dict[str, Any]:
        """The admin API's body for a publisher of this account (its unique id left to bind)."""
        return {"package": self.package, "provider": "google", "issuer": issuer_url, "email": self.email, **fields}
