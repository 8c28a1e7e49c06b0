"""Every event tpx emits, built in one place: one function per type, beside the
types and their schemas, so adding an event touches this folder only.

Builders take plain values (ids, lists, the CI identity as a dict) or the
domain objects that describe the change, and never a token, a secret or
personal data.
"""

from __future__ import annotations

import uuid
from typing import Any, Mapping

from tpx.core.events import types
from tpx.core.events.types import Event
from tpx.core.revocations import Rule
from tpx.core.times import rfc3339, rfc3339_or_none


# --- tokens --------------------------------------------------------------------------------------------------

def token_issued(token_id: str, packages: list[str], permissions: dict[str, list[str]], publisher_ids: list[str],
                 ci: dict[str, Any]) -> Event:
    """`issued_at` and `expires_at` are added by the mint statement, which stamps them (tpx.core.db.tokens)."""
    return Event(types.TOKEN_ISSUED, subject=token_id, data={
        "token_id": token_id, "packages": packages, "permissions": permissions, "publisher_ids": publisher_ids,
        "ci": ci,
    })


def token_revoked(row: Mapping[str, Any], reason: str, revocation_id: uuid.UUID | None = None) -> Event:
    """A token row (id, packages, publisher_ids, ci) revoked by its holder, or by a rule (`revocation_id`)."""
    data: dict[str, Any] = {
        "token_id": str(row["id"]),
        "packages": list(row["packages"]),
        "publisher_ids": [str(p) for p in row["publisher_ids"]],
        "reason": reason,
        "ci": row["ci"],
    }
    if revocation_id is not None:
        data["revocation_id"] = str(revocation_id)
    return Event(types.TOKEN_REVOKED, subject=str(row["id"]), data=data)


def token_expired(row: Mapping[str, Any]) -> Event:
    return Event(types.TOKEN_EXPIRED, subject=str(row["id"]), data={
        "token_id": str(row["id"]),
        "packages": list(row["packages"]),
        "publisher_ids": [str(p) for p in row["publisher_ids"]],
        "issued_at": rfc3339(row["issued_at"]),
        "expires_at": rfc3339(row["expires_at"]),
        "ci": row["ci"],
    })


# --- exchanges -----------------------------------------------------------------------------------------------

def exchange_denied(repository: str, ci: dict[str, Any], code: str, reason: str,
                    checks: list[dict[str, Any]] | None) -> Event:
    """A verified identity was refused; `checks` is the refusal's explain list, reduced to the failed checks."""
    failed = [{
        "publisher_id": publisher["id"],
        "package": publisher["package"],
        "failed_checks": [c["check"] for c in publisher["checks"] if not c["passed"]],
    } for publisher in checks or []]
    return Event(types.EXCHANGE_DENIED, subject=repository, data={
        "code": code, "reason": reason, "publishers": failed, "ci": ci,
    })


def environment_unpinned(publisher_id: str, package: str, token_id: str, environment: str,
                         ci: dict[str, Any]) -> Event:
    """Owner-facing notice: a token carried an environment that its publisher does not require."""
    return Event(types.EXCHANGE_ENVIRONMENT_UNPINNED, subject=publisher_id, data={
        "publisher_id": publisher_id,
        "package": package,
        "token_id": token_id,
        "environment": environment,
        "advice": f"the token came from the environment {environment!r} but the publisher accepts any; "
                  "pin it with \"environments\" so a workflow outside that environment cannot publish",
        "ci": ci,
    })


def publisher_bound(publisher_id: str, package: str, bound: dict[str, str], ci: dict[str, Any]) -> Event:
    """The first exchange pinned ids; `bound` names them with the provider's field names."""
    return Event(types.PUBLISHER_BOUND, subject=publisher_id, data={
        "publisher_id": publisher_id, "package": package, "bound": bound, "ci": ci,
    })


# --- administration ------------------------------------------------------------------------------------------

def admin_change(event_type: str, actor: str, target: str, before: Any, after: Any) -> Event:
    """`publisher.created|deleted`, `issuer.created|updated|deleted`: who changed what, from what to what."""
    return Event(event_type, subject=target, data={"actor": actor, "target": target, "before": before, "after": after})


def issuer_keys_rotated(issuer_id: uuid.UUID, url: str, jwks_uri: str, before: Mapping[str, Any],
                        after: Mapping[str, Any], skipped: list[str]) -> Event:
    """Which kids came, went or changed between two stored key sets; never key material."""
    return Event(types.ISSUER_KEYS_ROTATED, subject=str(issuer_id), data={
        "issuer": url,
        "issuer_id": str(issuer_id),
        "jwks_uri": jwks_uri,
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "replaced": sorted(kid for kid in set(before) & set(after) if before[kid] != after[kid]),
        "key_ids": sorted(after),
        "skipped": skipped,
    })


# --- revocations ---------------------------------------------------------------------------------------------

def revocation_requested(rule: Rule) -> Event:
    return Event(types.REVOCATION_REQUESTED, subject=str(rule.id), data={
        "revocation_id": str(rule.id),
        "kind": rule.kind,
        "selector": rule.selector.to_api(),
        "reason": rule.reason,
        "actor": rule.actor,
        "cutoff": rfc3339(rule.cutoff),
        "revoked": rule.revoked,
    })


def revocation_completed(rule: Rule) -> Event:
    return Event(types.REVOCATION_COMPLETED, subject=str(rule.id), data={
        "revocation_id": str(rule.id),
        "kind": rule.kind,
        "selector": rule.selector.to_api(),
        "reason": rule.reason,
        "actor": rule.actor,
        "revoked": rule.revoked,
        "cutoff": rfc3339(rule.cutoff),
        "created_at": rfc3339(rule.created_at),
        "completed_at": rfc3339_or_none(rule.completed_at),
    })
