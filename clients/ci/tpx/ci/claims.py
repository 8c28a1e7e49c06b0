"""The claims of an ID token that explain a denial, decoded without verification.

When tpx refuses a token, the job log should show what the token said about
the job (repository, workflow, ref, environment, trigger...) next to what the
publisher expected. Only the claims that publishers are matched on are shown:
never user_* claims (personal data) and never the token itself. The payload is
decoded, not verified: these values are for reading, never for deciding.
"""

from __future__ import annotations

import base64
import json
from typing import Any

# GitHub name, then GitLab's equivalent where the two differ.
SHOWN_CLAIMS: tuple[str, ...] = (
    "iss", "aud",
    "repository", "project_path",
    "workflow_ref", "ci_config_ref_uri",
    "ref", "environment",
    "event_name", "pipeline_source",
    "runner_environment",
    "repository_owner_id", "namespace_id",
    "repository_id", "project_id",
)
MAX_VALUE_CHARS = 300


def decode_payload(jwt: str) -> dict[str, Any] | None:
    """The JWT's payload as a dict, or None if it is not a readable compact JWS."""
    parts = jwt.split(".")
    if len(parts) != 3:
        return None
    segment = parts[1]
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        payload = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def _show(value: Any) -> str:
    if isinstance(value, str) and value.isprintable():
        text = value
    else:
        text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "..."


def claim_lines(jwt: str | None) -> list[str]:
    """`name: value` lines for the shown claims the token carries."""
    if not jwt:
        return []
    payload = decode_payload(jwt)
    if payload is None:
        return ["the ID token's payload could not be decoded (is it a JWT?)"]
    lines = [f"{name}: {_show(payload[name])}" for name in SHOWN_CLAIMS if name in payload]
    return lines or ["the ID token carries none of the claims tpx matches on"]
