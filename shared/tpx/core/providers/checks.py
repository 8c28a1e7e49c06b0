"""Check rows that read the same for every provider: repository, pinned ids, ref patterns, runner."""

from __future__ import annotations

import fnmatch

from tpx.core.providers.base import CheckResult, Identity, Publisher
from tpx.core.providers.matching import ascii_iequal


def pinned_id(claim: str, actual: str, pinned: str | None, resurrection: str) -> CheckResult:
    """Names can be re-registered; the numeric ids a forge assigns cannot, so
    pinning them is what stops a resurrected account, group or repository."""
    if pinned is None:
        return CheckResult(claim, claim, None, actual, True,
                           note=f"not pinned yet; bound to {actual} on the first successful exchange")
    if actual == pinned:
        return CheckResult(claim, claim, pinned, actual, True)
    return CheckResult(claim, claim, pinned, actual, False,
                       note=f"the publisher is pinned to id {pinned} but the token carries {actual}; {resurrection}")


def ref_patterns(identity: Identity, publisher: Publisher, claim: str) -> CheckResult:
    if not publisher.ref_patterns:
        return CheckResult("ref", claim, "any", identity.ref, True)
    passed = any(fnmatch.fnmatchcase(identity.ref, pattern) for pattern in publisher.ref_patterns)
    return CheckResult("ref", claim, list(publisher.ref_patterns), identity.ref, passed)


def repository_match(identity: Identity, publisher: Publisher, check: str, claim: str) -> CheckResult:
    """Owner and name compared ASCII-case-insensitively (forges route names that way)."""
    passed = ascii_iequal(identity.owner, publisher.owner) and ascii_iequal(identity.name, publisher.name)
    return CheckResult(check, claim, publisher.repository, identity.repository, passed)


def unbound_ids(identity: Identity, publisher: Publisher) -> dict[str, str]:
    """The ids a publisher does not pin yet, with the token's values, to bind on a successful exchange."""
    out: dict[str, str] = {}
    if publisher.owner_id is None:
        out["owner_id"] = identity.owner_id
    if publisher.name_id is None:
        out["name_id"] = identity.repository_id
    return out


def hosted_runner(identity: Identity, publisher: Publisher, hosted: str) -> CheckResult:
    """Only the forge's own runners, unless the publisher allows self-hosted ones (which its owner controls)."""
    actual = identity.runner_environment
    if publisher.allow_self_hosted_runners:
        return CheckResult("runner", "runner_environment", "any", actual, True,
                           note="the publisher allows self-hosted runners")
    passed = actual == hosted
    note = None if passed else "self-hosted runners are refused unless the publisher sets allow_self_hosted_runners"
    return CheckResult("runner", "runner_environment", hosted, actual, passed, note=note)
