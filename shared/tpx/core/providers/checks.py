"""Check rows that read the same for every provider: repository, pinned ids, ref patterns, runner."""

from __future__ import annotations

import fnmatch
from typing import Any, Callable

from tpx.core.providers.base import CheckResult, Identity, IdentityFields, Publisher, named_fields, named_hint
from tpx.core.providers.matching import ascii_iequal


class Forge:
    """What the forge providers (GitHub, GitLab) share: their ids bound on the first successful exchange,
    their public issuer as a publisher's default, and their fields named one to one onto the neutral ones."""

    public_issuer: str

    def bindings(self, identity: Identity, publisher: Publisher) -> dict[str, str]:
        return unbound_ids(identity, publisher)

    def default_issuer(self, fields: IdentityFields) -> str:
        return self.public_issuer

    def view_fields(self, publisher: Publisher) -> dict[str, Any]:
        return named_fields(self, publisher)

    def publisher_hint(self, identity: Identity) -> dict[str, Any]:
        return named_hint(self, identity)


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


def condition(check: str, claim: str, pinned: Any, actual: Any, same: Callable[[Any, Any], bool], *,
              absent: str, differs: Callable[[], str]) -> CheckResult:
    """A condition a publisher may set (a step key, a VCS origin or ref, a pipeline definition): "any" when it
    sets none; otherwise the token must carry the value and it must be the same. `absent` and `differs` say
    why a failing row failed (`differs` is called only then)."""
    if pinned is None:
        return CheckResult(check, claim, "any", actual, True)
    passed = actual is not None and same(actual, pinned)
    note = None if passed else absent if actual is None else differs()
    return CheckResult(check, claim, pinned, actual, passed, note=note)


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
