"""The exchange's decision as a pure function: what one exchange writes, or the refusal."""

from __future__ import annotations

from msgspec.structs import replace
from typing import Any

import pytest

from tpx.core.config import Settings
from tpx.core.errors import Problem
from tpx.core.events import types
from tpx.core.jose import IssuerPolicy
from tpx.core.providers import PROVIDERS
from tpx.core.providers.base import Publisher
from tpx.exchange.keycache import IssuerEntry
from tpx.exchange.minting import decide, events_of
from tpx.exchange.verification import VerifiedToken
from tests.support.claims import github_claims

ISSUER = "https://token.actions.githubusercontent.com"
SETTINGS = Settings(token_ttl_seconds=1800, token_ttl_max_seconds=3600)


def verified(allowed_packages: tuple[str, ...] | None = None, **claims: Any) -> VerifiedToken:
    values = github_claims(**claims)
    issuer = IssuerEntry(id="issuer-1", url=ISSUER, kind="github",
                         policy=IssuerPolicy(url=ISSUER, audience="tpx", algorithms=frozenset({"RS256"}),
                                             max_token_lifetime=7200),
                         enabled=True, allowed_packages=allowed_packages, keys={}, keys_fetched_at=None,
                         last_error=None)
    provider = PROVIDERS["github"]
    return VerifiedToken(issuer, provider, provider.identity(values, ISSUER), values, "kid-1", values["jti"])


def publisher(package: str = "pkg", **changes: Any) -> Publisher:
    fields: dict[str, Any] = dict(id=f"id-{package}", package=package, provider="github", issuer=ISSUER,
                                  owner="octo-org", name="octo-repo", workflow="release.yml", owner_id="65",
                                  name_id="74")
    fields.update(changes)
    return Publisher(**fields)


def test_matched_publishers_make_one_token_with_their_packages_and_permissions():
    decision = decide(verified(), [publisher("b", permissions=("publish-update", "publish-new")),
                                   publisher("a"), publisher("c", workflow="other.yml")], SETTINGS)
    assert decision.packages == ["a", "b"]
    assert decision.permissions == {"a": ["publish-update"], "b": ["publish-new", "publish-update"]}
    assert decision.publisher_ids == ["id-b", "id-a"]
    assert decision.unbound == []
    assert decision.lifetime_seconds == 1800


def test_two_publishers_of_one_package_merge_their_permissions():
    decision = decide(verified(), [publisher("a", id="1"), publisher("a", id="2", permissions=("publish-new",))],
                      SETTINGS)
    assert decision.permissions == {"a": ["publish-new", "publish-update"]}
    assert decision.publisher_ids == ["1", "2"]


@pytest.mark.parametrize(("ttls", "expected"), [
    ((None, None), 1800),      # the default
    ((600, None), 600),        # the shortest of the matched publishers
    ((900, 300), 300),
    ((7200, None), 1800),      # the default is shorter than the publisher's
    ((7200, 7200), 3600),      # the operator's ceiling
])
def test_the_lifetime_is_the_shortest_and_never_beyond_the_ceiling(ttls, expected):
    candidates = [publisher(f"p{i}", token_ttl_seconds=ttl) for i, ttl in enumerate(ttls)]
    assert decide(verified(), candidates, SETTINGS).lifetime_seconds == expected


def test_publishers_without_ids_are_bound_to_the_tokens_ids():
    decision = decide(verified(), [publisher("a", owner_id=None, name_id=None), publisher("b"),
                                   publisher("c", name_id=None)], SETTINGS)
    assert [(p.package, wanted) for p, wanted in decision.unbound] == [
        ("a", {"owner_id": "65", "name_id": "74"}), ("c", {"name_id": "74"})]
    events = events_of(decision, "token-1")
    bound = [e for e in events if e.type == types.PUBLISHER_BOUND]
    assert [e.data["bound"] for e in bound] == [{"repository_owner_id": "65", "repository_id": "74"},
                                                {"repository_id": "74"}]
    assert events[-1].type == types.TOKEN_ISSUED and events[-1].data["packages"] == ["a", "b", "c"]


def test_no_match_is_the_refusal_with_every_difference():
    with pytest.raises(Problem) as refused:
        decide(verified(environment="staging"), [publisher(environments=("prod",))], SETTINGS)
    assert refused.value.code == "no_matching_publisher"
    assert "environment" in refused.value.detail
    assert refused.value.checks and refused.value.checks[0]["matched"] is False


def test_a_pinned_id_that_differs_is_refused_not_rebound():
    with pytest.raises(Problem) as refused:
        decide(verified(owner_id="66"), [publisher()], SETTINGS)
    assert "repository_owner_id" in " ".join(refused.value.hints)


def test_an_issuer_limited_to_some_packages_mints_for_those_only():
    decision = decide(verified(allowed_packages=("acme-*",)), [publisher("acme-one"), publisher("other")], SETTINGS)
    assert decision.packages == ["acme-one"]
    with pytest.raises(Problem) as refused:
        decide(verified(allowed_packages=("acme-*",)), [publisher("other")], SETTINGS)
    assert "issuer_packages" in " ".join(refused.value.hints)


def test_forbidden_triggers_are_refused_as_such():
    with pytest.raises(Problem) as refused:
        decide(verified(event_name="pull_request_target"), [publisher()], SETTINGS)
    assert refused.value.code == "forbidden_trigger"


def test_an_environment_the_publisher_does_not_require_is_noticed():
    decision = decide(verified(environment="prod"), [publisher("loose"), publisher("pinned", environments=("prod",))],
                      SETTINGS)
    notices = [e for e in events_of(decision, "token-1") if e.type == types.EXCHANGE_ENVIRONMENT_UNPINNED]
    assert [e.data["package"] for e in notices] == ["loose"]
    assert not [e for e in events_of(replace(decision, verified=verified(environment=None)), "t")
                if e.type == types.EXCHANGE_ENVIRONMENT_UNPINNED]


def test_candidates_of_another_issuer_never_match():
    with pytest.raises(Problem):
        decide(verified(), [publisher(issuer="https://ghes.example.com/_services/token")], SETTINGS)


def test_an_unpinned_publisher_never_binds_ids_another_publisher_of_the_repository_pins():
    """Regression: a resurrected owner (same name, new id) failed the pinned publisher but bound its new
    ids through a still-unpinned sibling of the same repository, and minted."""
    pinned = publisher("pinned")  # owner 65, repository 74
    sibling = publisher("sibling", owner_id=None, name_id=None)
    with pytest.raises(Problem) as refused:
        decide(verified(owner_id="666"), [pinned, sibling], SETTINGS)
    hints = " ".join(refused.value.hints)
    assert "publisher id-sibling" in hints and "repository_owner_id" in hints and "65" in hints


def test_an_unpinned_publisher_binds_the_ids_its_siblings_pin():
    decision = decide(verified(), [publisher("pinned"), publisher("sibling", owner_id=None, name_id=None)], SETTINGS)
    assert decision.packages == ["pinned", "sibling"]
    assert [wanted for _, wanted in decision.unbound] == [{"owner_id": "65", "name_id": "74"}]


def test_a_token_without_ids_never_matches_through_an_unpinned_sibling_of_a_pinned_publisher():
    """Buildkite's ids are optional claims: a token without them (another organization that took over
    the slugs) must not mint through an unpinned publisher while a sibling pins the organization."""
    from tests.support.buildkite_claims import OMIT, buildkite_claims

    url = "https://agent.buildkite.com"
    values = buildkite_claims(organization_id=OMIT, pipeline_id=OMIT, runner_environment="buildkite-hosted")
    provider = PROVIDERS["buildkite"]
    issuer = IssuerEntry(id="issuer-2", url=url, kind="buildkite",
                         policy=IssuerPolicy(url=url, audience="tpx", algorithms=frozenset({"RS256"}),
                                             max_token_lifetime=7200),
                         enabled=True, allowed_packages=None, keys={}, keys_fetched_at=None, last_error=None)
    token = VerifiedToken(issuer, provider, provider.identity(values, url), values, "kid-1", values["jti"])
    common = dict(provider="buildkite", issuer=url, owner="acme-inc", name="widgets-release", workflow="")
    pinned = publisher("pinned", owner_id="0184990a-477b-4fa8-9968-496074483c77", name_id=None, **common)
    sibling = publisher("sibling", owner_id=None, name_id=None, **common)
    with pytest.raises(Problem) as refused:
        decide(token, [pinned, sibling], SETTINGS)
    rows = {row["check"]: row for row in refused.value.checks[1]["checks"]}
    assert not rows["repository_pins"]["passed"] and "carries none" in rows["repository_pins"]["note"]
    assert decide(token, [sibling], SETTINGS).packages == ["sibling"]   # alone, the slugs decide (and bind nothing)
