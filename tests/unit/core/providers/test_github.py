"""Table tests for the GitHub provider: strict identity building, the check table,
bindings, and the denials built from it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tpx.core.errors import Problem
from tpx.core.providers import PROVIDERS, get_provider
from tpx.core.providers.base import Identity
from tpx.core.providers.github import FORBIDDEN_EVENTS, GitHubProvider
from tpx.core.providers.matching import PublisherEvaluation, ascii_iequal, ascii_lower, denial, evaluate
from tpx.core.providers.base import Publisher
from tests.support.check_table import CheckTable

ISSUER = "https://token.actions.githubusercontent.com"
REPO = "octo-org/octo-repo"
WORKFLOWS = f"{REPO}/.github/workflows"
PROVIDER = GitHubProvider()
CHECK_ORDER = ["repository", "repository_owner_id", "repository_id", "workflow", "trigger", "environment", "ref",
               "runner"]
DELETE = object()


def base_claims() -> dict[str, Any]:
    """The payload of shared/fixtures/github-actions-id-token.json, copied verbatim."""
    return {
        "jti": "example-id",
        "sub": "repo:octo-org/octo-repo:environment:prod",
        "environment": "prod",
        "aud": "https://github.com/octo-org",
        "ref": "refs/heads/main",
        "sha": "example-sha",
        "repository": "octo-org/octo-repo",
        "repository_owner": "octo-org",
        "actor_id": "12",
        "repository_visibility": "private",
        "repository_id": "74",
        "repository_owner_id": "65",
        "run_id": "example-run-id",
        "run_number": "10",
        "run_attempt": "2",
        "runner_environment": "github-hosted",
        "actor": "octocat",
        "workflow": "example-workflow",
        "workflow_ref": "octo-org/octo-repo/.github/workflows/release.yml@refs/heads/main",
        "workflow_sha": "example-sha",
        "head_ref": "",
        "base_ref": "",
        "event_name": "workflow_dispatch",
        "ref_type": "branch",
        "ref_protected": "false",
        "job_workflow_ref": "octo-org/octo-automation/.github/workflows/oidc.yml@refs/heads/main",
        "job_workflow_sha": "example-sha",
        "iss": "https://token.actions.githubusercontent.com",
        "nbf": 1632492967,
        "exp": 1632493867,
        "iat": 1632493567,
    }


TABLE = CheckTable(PROVIDER, base_claims, ISSUER, omit=DELETE)
claims_with, identity_with = TABLE.claims_with, TABLE.identity_with


def publisher(**changes: Any) -> Publisher:
    base = Publisher(id="pub-1", package="foo", provider="github", issuer=ISSUER, owner="octo-org",
                     name="octo-repo", workflow="release.yml")
    return replace(base, **changes)


results_by_check, failed_checks = TABLE.results_by_check, TABLE.failed_checks


# --- identity(): accepted tokens --------------------------------------------------------------------------


def test_identity_from_fixture() -> None:
    identity = PROVIDER.identity(base_claims(), ISSUER)
    assert identity == Identity(
        provider="github", issuer=ISSUER, repository=REPO, owner="octo-org", name="octo-repo", owner_id="65",
        repository_id="74", workflow="release.yml", workflow_ref=f"{WORKFLOWS}/release.yml@refs/heads/main",
        environment="prod", ref="refs/heads/main", sha="example-sha", run_id="example-run-id", actor="octocat",
        event_name="workflow_dispatch", runner_environment="github-hosted",
        extra={
            "job_workflow_ref": "octo-org/octo-automation/.github/workflows/oidc.yml@refs/heads/main",
            "ref_type": "branch", "ref_protected": "false", "repository_visibility": "private", "run_attempt": "2",
        },
    )


@pytest.mark.parametrize(
    ("changes", "field", "value"),
    [
        pytest.param({"environment": ""}, "environment", None, id="empty-environment-is-none"),
        pytest.param({"environment": DELETE}, "environment", None, id="missing-environment"),
        pytest.param({"run_id": DELETE, "actor": DELETE}, "run_id", None, id="missing-run-id"),
        pytest.param({"runner_environment": DELETE}, "runner_environment", None, id="missing-runner"),
        pytest.param({"unknown_claim": {"nested": [1, 2]}, "check_run_id": 5}, "repository", REPO,
                     id="unknown-claims-ignored"),
        pytest.param({"workflow": ["not", "a", "string"], "head_ref": 7}, "repository", REPO,
                     id="display-claims-never-read"),
        pytest.param({"repository": "Octo-Org/Octo-Repo", "repository_owner": "Octo-Org"}, "owner", "Octo-Org",
                     id="case-kept-as-sent"),
        pytest.param({"workflow_ref": f"{WORKFLOWS}/nested@evil.yml@refs/heads/main"}, "workflow",
                     "nested@evil.yml", id="workflow-at-in-filename"),
        pytest.param({"ref": "refs/heads/misleading@branch.yml",
                      "workflow_ref": f"{WORKFLOWS}/basic.yml@refs/heads/misleading@branch.yml"}, "workflow",
                     "basic.yml", id="workflow-at-in-ref"),
        pytest.param({"workflow_ref": "other-org/other-repo/.github/workflows/release.yml@refs/heads/main"},
                     "workflow", "other-org/other-repo/.github/workflows/release.yml@refs/heads/main",
                     id="workflow-raw-when-not-extractable"),
        pytest.param({"ref": "r" * 1024}, "ref", "r" * 1024, id="ref-at-limit"),
        pytest.param({"sha": "a" * 255}, "sha", "a" * 255, id="sha-at-limit"),
        pytest.param({"sha": "0123456789abcdef0123456789abcdef01234567"}, "sha",
                     "0123456789abcdef0123456789abcdef01234567", id="real-sha"),
        pytest.param({"repository": "a" * 39 + "/" + "b" * 100, "repository_owner": "a" * 39}, "name", "b" * 100,
                     id="owner-and-name-at-limit"),
        pytest.param({"repository_owner_id": "9" * 20}, "owner_id", "9" * 20, id="id-at-limit"),
        pytest.param({"repository": "o/.dot_-name", "repository_owner": "o"}, "name", ".dot_-name",
                     id="name-punctuation"),
    ],
)
def test_identity_accepts(changes: dict[str, Any], field: str, value: Any) -> None:
    assert getattr(identity_with(**changes), field) == value


# --- identity(): malformed tokens -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "claim"),
    [
        pytest.param({"repository": DELETE}, "repository", id="missing-repository"),
        pytest.param({"repository_owner": DELETE}, "repository_owner", id="missing-repository-owner"),
        pytest.param({"repository_owner_id": DELETE}, "repository_owner_id", id="missing-owner-id"),
        pytest.param({"repository_id": DELETE}, "repository_id", id="missing-repository-id"),
        pytest.param({"workflow_ref": DELETE}, "workflow_ref", id="missing-workflow-ref"),
        pytest.param({"ref": DELETE}, "ref", id="missing-ref"),
        pytest.param({"sha": DELETE}, "sha", id="missing-sha"),
        pytest.param({"event_name": DELETE}, "event_name", id="missing-event-name"),
        # Wrong JSON types.
        pytest.param({"repository_owner_id": 65}, "repository_owner_id", id="numeric-owner-id"),
        pytest.param({"repository_id": 74}, "repository_id", id="numeric-repository-id"),
        pytest.param({"repository_id": 74.0}, "repository_id", id="float-repository-id"),
        pytest.param({"repository_id": True}, "repository_id", id="bool-repository-id"),
        pytest.param({"repository": ["octo-org/octo-repo"]}, "repository", id="list-repository"),
        pytest.param({"ref": {"ref": "refs/heads/main"}}, "ref", id="object-ref"),
        pytest.param({"environment": False}, "environment", id="bool-environment"),
        pytest.param({"environment": None}, "environment", id="null-environment"),
        pytest.param({"runner_environment": ["github-hosted"]}, "runner_environment", id="list-runner"),
        pytest.param({"run_attempt": 2}, "run_attempt", id="numeric-run-attempt"),
        pytest.param({"event_name": None}, "event_name", id="null-event-name"),
        # Shapes.
        pytest.param({"repository_owner": "other-org"}, "repository_owner", id="owner-not-in-repository"),
        pytest.param({"repository_owner": "Octo-Org"}, "repository_owner", id="owner-case-differs"),
        pytest.param({"repository": "octo-org"}, "repository", id="repository-without-slash"),
        pytest.param({"repository": "octo-org/octo-repo/x"}, "repository", id="repository-two-slashes"),
        pytest.param({"repository": "-octo/repo", "repository_owner": "-octo"}, "repository",
                     id="owner-leading-dash"),
        pytest.param({"repository": "o" * 40 + "/r", "repository_owner": "o" * 40}, "repository",
                     id="owner-too-long"),
        pytest.param({"repository": "o/" + "r" * 101}, "repository", id="name-too-long"),
        pytest.param({"repository": "octo-org/"}, "repository", id="empty-name"),
        pytest.param({"repository": "octo_org/octo-repo", "repository_owner": "octo_org"}, "repository",
                     id="underscore-in-owner"),
        pytest.param({"repository_owner_id": ""}, "repository_owner_id", id="empty-owner-id"),
        pytest.param({"repository_owner_id": "65a"}, "repository_owner_id", id="owner-id-not-digits"),
        pytest.param({"repository_owner_id": "-65"}, "repository_owner_id", id="owner-id-negative"),
        pytest.param({"repository_id": "1" * 21}, "repository_id", id="repository-id-too-long"),
        pytest.param({"repository_id": "\u0667\u0664"}, "repository_id", id="repository-id-arabic-digits"),
        pytest.param({"repository_id": "74\n"}, "repository_id", id="repository-id-trailing-newline"),
        pytest.param({"event_name": "Push"}, "event_name", id="event-upper-case"),
        pytest.param({"event_name": "push2"}, "event_name", id="event-digit"),
        pytest.param({"event_name": ""}, "event_name", id="event-empty"),
        pytest.param({"ref": ""}, "ref", id="ref-empty"),
        pytest.param({"workflow_ref": ""}, "workflow_ref", id="workflow-ref-empty"),
        pytest.param({"sha": ""}, "sha", id="sha-empty"),
        # Look-alike Unicode, refused before any case folding.
        pytest.param({"repository": "\u043ecto-org/octo-repo", "repository_owner": "\u043ecto-org"}, "repository",
                     id="cyrillic-o-owner"),
        pytest.param({"repository": "octo-org/octo-rep\u043e"}, "repository", id="cyrillic-o-name"),
        pytest.param({"repository": "\u212acorp/repo", "repository_owner": "\u212acorp"}, "repository",
                     id="kelvin-sign-owner"),
        pytest.param({"repository": "\uff4fcto-org/octo-repo", "repository_owner": "\uff4fcto-org"}, "repository",
                     id="fullwidth-owner"),
        pytest.param({"repository": "octo-\u0130rg/octo-repo", "repository_owner": "octo-\u0130rg"}, "repository",
                     id="dotted-capital-i-owner"),
        pytest.param({"environment": "r\u00e9lease"}, "environment", id="non-ascii-environment"),
        pytest.param({"ref": "refs/heads/ma\u0131n"}, "ref", id="dotless-i-ref"),
        # Control characters.
        pytest.param({"ref": "refs/heads/main\x00"}, "ref", id="nul-in-ref"),
        pytest.param({"ref": "refs/heads/main\r"}, "ref", id="cr-in-ref"),
        pytest.param({"ref": "refs/heads/main\n"}, "ref", id="lf-in-ref"),
        pytest.param({"ref": "refs/heads/\tmain"}, "ref", id="tab-in-ref"),
        pytest.param({"workflow_ref": f"{WORKFLOWS}/release.yml\n@refs/heads/main"}, "workflow_ref",
                     id="lf-in-workflow-ref"),
        pytest.param({"environment": "release\x00"}, "environment", id="nul-in-environment"),
        pytest.param({"sha": "abc\r\n"}, "sha", id="crlf-in-sha"),
        pytest.param({"actor": "octo\x7fcat"}, "actor", id="del-in-actor"),
        # Over-long values.
        pytest.param({"ref": "r" * 1025}, "ref", id="ref-too-long"),
        pytest.param({"workflow_ref": "w" * 1025}, "workflow_ref", id="workflow-ref-too-long"),
        pytest.param({"sha": "a" * 256}, "sha", id="sha-too-long"),
        pytest.param({"environment": "e" * 256}, "environment", id="environment-too-long"),
        pytest.param({"event_name": "e" * 65}, "event_name", id="event-too-long"),
        pytest.param({"job_workflow_ref": "j" * 1025}, "job_workflow_ref", id="job-workflow-ref-too-long"),
        pytest.param({"repository_visibility": "v" * 256}, "repository_visibility", id="visibility-too-long"),
    ],
)
def test_identity_rejects(changes: dict[str, Any], claim: str) -> None:
    with pytest.raises(Problem) as caught:
        identity_with(**changes)
    assert caught.value.code == "malformed_token"
    assert f"'{claim}'" in caught.value.detail


def test_identity_rejects_non_object_payload() -> None:
    with pytest.raises(Problem) as caught:
        PROVIDER.identity(["not", "an", "object"], ISSUER)  # type: ignore[arg-type]
    assert caught.value.code == "malformed_token"


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        pytest.param({"repository_owner_id": 65}, "JSON integer", id="number"),
        pytest.param({"repository_id": True}, "JSON boolean", id="boolean"),
        pytest.param({"repository": []}, "JSON array", id="array"),
        pytest.param({"environment": None}, "JSON null", id="null"),
        pytest.param({"repository": DELETE}, "has no 'repository' claim", id="missing"),
        pytest.param({"repository_id": "x"}, "1 to 20 decimal digits", id="shape"),
    ],
)
def test_malformed_detail_says_what_was_expected(changes: dict[str, Any], says: str) -> None:
    with pytest.raises(Problem) as caught:
        identity_with(**changes)
    assert says in caught.value.detail


def test_malformed_detail_does_not_echo_the_value() -> None:
    with pytest.raises(Problem) as caught:
        identity_with(ref="refs/heads/<script>\n")
    assert "<script>" not in caught.value.detail


# --- checks(): the table ----------------------------------------------------------------------------------


MISLEADING = "refs/heads/misleading@branch.yml"


def at_ref(ref: str) -> dict[str, str]:
    """Claims of the fixture's workflow run at another ref (ref and workflow_ref move together)."""
    return {"ref": ref, "workflow_ref": f"{WORKFLOWS}/release.yml@{ref}"}


@pytest.mark.parametrize(
    ("claims", "config", "failed"),
    [
        pytest.param({}, {}, set(), id="fixture-matches"),
        # Repository: ASCII-case-insensitive.
        pytest.param({}, {"owner": "OCTO-ORG", "name": "Octo-Repo"}, set(), id="publisher-case-variant"),
        pytest.param({"repository": "Octo-Org/OCTO-REPO", "repository_owner": "Octo-Org",
                      "workflow_ref": "Octo-Org/OCTO-REPO/.github/workflows/release.yml@refs/heads/main"}, {},
                     set(), id="token-case-variant"),
        pytest.param({}, {"owner": "other-org"}, {"repository"}, id="other-owner"),
        pytest.param({}, {"name": "octo-repo2"}, {"repository"}, id="other-name"),
        pytest.param({}, {"owner": "octo-\u212aorg"}, {"repository"}, id="publisher-kelvin-sign-not-folded"),
        # Pinned ids.
        pytest.param({}, {"owner_id": "65", "name_id": "74"}, set(), id="pinned-ids-equal"),
        pytest.param({}, {"owner_id": "66"}, {"repository_owner_id"}, id="owner-resurrected"),
        pytest.param({}, {"name_id": "75"}, {"repository_id"}, id="repository-recreated"),
        pytest.param({}, {"owner_id": "065"}, {"repository_owner_id"}, id="id-compared-as-string"),
        # Workflow: exact workflow_ref equality, case-sensitive file name.
        pytest.param({}, {"workflow": "publish.yml"}, {"workflow"}, id="other-workflow"),
        pytest.param({}, {"workflow": "Release.yml"}, {"workflow"}, id="workflow-case-sensitive"),
        pytest.param({}, {"workflow": "release.yaml"}, {"workflow"}, id="workflow-extension"),
        pytest.param({"workflow_ref": "other-org/other-repo/.github/workflows/release.yml@refs/heads/main"}, {},
                     {"workflow"}, id="workflow-from-other-repository"),
        pytest.param({"workflow_ref": "octo-org/octo-automation/.github/workflows/release.yml@refs/heads/main"},
                     {}, {"workflow"}, id="workflow-from-same-owner-other-repository"),
        pytest.param({"workflow_ref": f"{WORKFLOWS}/release.yml@refs/heads/dev"}, {}, {"workflow"},
                     id="workflow-ref-other-ref"),
        pytest.param({"workflow_ref": f"{WORKFLOWS}/release.yml"}, {}, {"workflow"}, id="workflow-ref-no-at"),
        pytest.param({"workflow_ref": f"{WORKFLOWS}/sub/release.yml@refs/heads/main"}, {"workflow": "sub/release.yml"},
                     {"workflow"}, id="subdirectory-never-matches"),
        pytest.param({"workflow_ref": f"{WORKFLOWS}/nested@evil.yml@refs/heads/main"}, {"workflow": "nested@evil.yml"},
                     set(), id="at-in-filename-matches"),
        pytest.param({"workflow_ref": f"{WORKFLOWS}/nested@evil.yml@refs/heads/main"}, {"workflow": "nested"},
                     {"workflow"}, id="at-in-filename-prefix-refused"),
        pytest.param({"ref": MISLEADING, "workflow_ref": f"{WORKFLOWS}/basic.yml@{MISLEADING}"},
                     {"workflow": "basic.yml"}, set(), id="at-in-ref-matches"),
        pytest.param({"ref": MISLEADING, "workflow_ref": f"{WORKFLOWS}/basic.yml@{MISLEADING}"},
                     {"workflow": "branch.yml"}, {"workflow"}, id="at-in-ref-tail-refused"),
        pytest.param({"ref": MISLEADING, "workflow_ref": f"{WORKFLOWS}/basic.yml@{MISLEADING}"},
                     {"workflow": "basic.yml@refs/heads/misleading"}, {"workflow"}, id="at-in-ref-split-refused"),
        pytest.param({"workflow_ref": f"{WORKFLOWS}/foo.yml.yml@refs/heads/main"}, {"workflow": "foo.yml"},
                     {"workflow"}, id="double-extension-refused"),
        pytest.param({"workflow_ref": f"{WORKFLOWS}/foo.yml.yml@refs/heads/main"}, {"workflow": "foo.yml.yml"},
                     set(), id="double-extension-matches"),
        # Trigger.
        pytest.param({"event_name": "pull_request_target"}, {}, {"trigger"}, id="pull-request-target"),
        pytest.param({"event_name": "workflow_run"}, {}, {"trigger"}, id="workflow-run"),
        pytest.param({"event_name": "push"}, {}, set(), id="push"),
        pytest.param({"event_name": "release"}, {}, set(), id="release"),
        pytest.param({"event_name": "pull_request"}, {}, set(), id="pull-request"),
        # Environment.
        pytest.param({"environment": DELETE}, {}, set(), id="no-environments-any-missing"),
        pytest.param({"environment": "anything"}, {}, set(), id="no-environments-any-value"),
        pytest.param({"environment": "Prod"}, {"environments": ("PROD",)}, set(), id="environment-case-insensitive"),
        pytest.param({}, {"environments": ("staging", "prod")}, set(), id="environment-one-of"),
        pytest.param({"environment": "staging"}, {"environments": ("release",)}, {"environment"},
                     id="environment-differs"),
        pytest.param({"environment": DELETE}, {"environments": ("release",)}, {"environment"},
                     id="environment-missing"),
        pytest.param({"environment": ""}, {"environments": ("release",)}, {"environment"}, id="environment-empty"),
        pytest.param({"environment": "prod-2"}, {"environments": ("prod",)}, {"environment"},
                     id="environment-not-prefix"),
        # Ref patterns.
        pytest.param({}, {"ref_patterns": ("refs/tags/v*",)}, {"ref"}, id="ref-pattern-miss"),
        pytest.param(at_ref("refs/tags/v1.2.3"), {"ref_patterns": ("refs/tags/v*",)}, set(), id="ref-pattern-hit"),
        pytest.param({}, {"ref_patterns": ("refs/tags/v*", "refs/heads/main")}, set(), id="ref-pattern-any-of"),
        pytest.param(at_ref("refs/tags/v1"), {"ref_patterns": ("refs/tags/V*",)}, {"ref"},
                     id="ref-pattern-case-sensitive"),
        pytest.param(at_ref("refs/heads/main2"), {"ref_patterns": ("refs/heads/main",)}, {"ref"},
                     id="ref-pattern-exact"),
        # Runner.
        pytest.param({"runner_environment": "self-hosted"}, {}, {"runner"}, id="self-hosted-refused"),
        pytest.param({"runner_environment": DELETE}, {}, {"runner"}, id="runner-missing-refused"),
        pytest.param({"runner_environment": "self-hosted"}, {"allow_self_hosted_runners": True}, set(),
                     id="self-hosted-allowed"),
        pytest.param({"runner_environment": DELETE}, {"allow_self_hosted_runners": True}, set(),
                     id="runner-missing-allowed"),
        # Several at once: every row is still evaluated.
        pytest.param({"event_name": "workflow_run", "runner_environment": "self-hosted"},
                     {"owner_id": "1", "workflow": "x.yml", "environments": ("release",),
                      "ref_patterns": ("refs/tags/*",)},
                     {"repository_owner_id", "workflow", "trigger", "environment", "ref", "runner"},
                     id="everything-fails"),
    ],
)
def test_checks(claims: dict[str, Any], config: dict[str, Any], failed: set[str]) -> None:
    assert failed_checks(identity_with(**claims), publisher(**config)) == failed


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({}, id="matching"),
        pytest.param({"owner": "other", "owner_id": "1", "name_id": "2", "workflow": "x.yml"}, id="failing"),
    ],
)
def test_every_row_always_reported_in_order(config: dict[str, Any]) -> None:
    results = PROVIDER.checks(identity_with(), publisher(**config))
    assert [r.check for r in results] == CHECK_ORDER


@pytest.mark.parametrize(
    ("claims", "config", "check", "expected"),
    [
        pytest.param({}, {}, "repository", {"claim": "repository", "expected": "octo-org/octo-repo",
                                            "actual": "octo-org/octo-repo"}, id="repository"),
        pytest.param({}, {}, "repository_owner_id",
                     {"claim": "repository_owner_id", "expected": None, "actual": "65",
                      "note": "not pinned yet; bound to 65 on the first successful exchange"}, id="owner-id-unpinned"),
        pytest.param({}, {}, "repository_id",
                     {"expected": None, "actual": "74",
                      "note": "not pinned yet; bound to 74 on the first successful exchange"},
                     id="repository-id-unpinned"),
        pytest.param({}, {"owner_id": "65"}, "repository_owner_id", {"expected": "65", "note": None},
                     id="owner-id-pinned"),
        pytest.param({}, {}, "workflow", {"claim": "workflow_ref", "expected": "release.yml",
                                          "actual": "release.yml"}, id="workflow"),
        pytest.param({"workflow_ref": "other-org/other-repo/.github/workflows/release.yml@refs/heads/main"}, {},
                     "workflow", {"actual": "other-org/other-repo/.github/workflows/release.yml@refs/heads/main"},
                     id="workflow-raw-actual"),
        pytest.param({}, {}, "trigger", {"claim": "event_name", "actual": "workflow_dispatch",
                                         "expected": "not one of pull_request_target, workflow_run",
                                         "code": "forbidden_trigger"}, id="trigger"),
        pytest.param({}, {}, "environment", {"expected": "any", "actual": "prod"}, id="environment-any"),
        pytest.param({}, {"environments": ("Prod", "staging")}, "environment",
                     {"expected": ["Prod", "staging"], "actual": "prod"}, id="environment-list"),
        pytest.param({}, {}, "ref", {"expected": "any", "actual": "refs/heads/main"}, id="ref-any"),
        pytest.param({}, {"ref_patterns": ("refs/tags/*",)}, "ref", {"expected": ["refs/tags/*"]},
                     id="ref-patterns"),
        pytest.param({}, {}, "runner", {"claim": "runner_environment", "expected": "github-hosted",
                                        "actual": "github-hosted"}, id="runner"),
        pytest.param({}, {"allow_self_hosted_runners": True}, "runner", {"expected": "any"}, id="runner-any"),
    ],
)
def test_check_fields(claims: dict[str, Any], config: dict[str, Any], check: str, expected: dict[str, Any]) -> None:
    result = results_by_check(identity_with(**claims), publisher(**config))[check]
    for field, value in expected.items():
        assert getattr(result, field) == value, field


@pytest.mark.parametrize(
    ("claims", "config", "check", "phrases"),
    [
        pytest.param({}, {"owner_id": "66"}, "repository_owner_id", ["66", "65", "deleted"], id="owner-resurrection"),
        pytest.param({}, {"name_id": "75"}, "repository_id", ["75", "74", "re-created"], id="repository-recreated"),
        pytest.param({}, {}, "workflow", [f"{WORKFLOWS}/release.yml@refs/heads/main"], id="workflow-full-ref"),
        pytest.param({}, {"workflow": "Release.yml"}, "workflow",
                     [f"{WORKFLOWS}/Release.yml@refs/heads/main", "case-sensitive"], id="workflow-expected-ref"),
        pytest.param({"workflow_ref": "other-org/other-repo/.github/workflows/release.yml@refs/heads/main"}, {},
                     "workflow", ["not a top-level workflow of octo-org/octo-repo"], id="workflow-other-repository"),
        pytest.param({"runner_environment": "self-hosted"}, {}, "runner", ["allow_self_hosted_runners"],
                     id="runner-how-to-allow"),
    ],
)
def test_check_notes(claims: dict[str, Any], config: dict[str, Any], check: str, phrases: list[str]) -> None:
    note = results_by_check(identity_with(**claims), publisher(**config))[check].note
    assert note is not None
    for phrase in phrases:
        assert phrase in note


@pytest.mark.parametrize("event", sorted(FORBIDDEN_EVENTS))
def test_forbidden_events_fail_with_forbidden_trigger_code(event: str) -> None:
    result = results_by_check(identity_with(event_name=event), publisher())["trigger"]
    assert (result.passed, result.code, result.actual) == (False, "forbidden_trigger", event)


def test_user_controlled_claims_never_decide() -> None:
    """The workflow display name, actor and head_ref can say anything without changing a decision."""
    plain = PROVIDER.checks(identity_with(), publisher())
    noisy = PROVIDER.checks(
        identity_with(workflow="release.yml", actor="octo-org", head_ref="refs/heads/main",
                      sub="repo:other/other:environment:x"),
        publisher(),
    )
    assert plain == noisy


# --- bindings() -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "bindings"),
    [
        pytest.param({}, {"owner_id": "65", "name_id": "74"}, id="nothing-pinned"),
        pytest.param({"owner_id": "65"}, {"name_id": "74"}, id="owner-pinned"),
        pytest.param({"name_id": "74"}, {"owner_id": "65"}, id="repository-pinned"),
        pytest.param({"owner_id": "65", "name_id": "74"}, {}, id="both-pinned"),
    ],
)
def test_bindings(config: dict[str, Any], bindings: dict[str, str]) -> None:
    assert PROVIDER.bindings(identity_with(), publisher(**config)) == bindings


# --- matching: evaluate() and denial() --------------------------------------------------------------------


def test_evaluate_and_explain() -> None:
    pubs = [publisher(), publisher(id="pub-2", package="bar", environments=("release",))]
    evaluations = evaluate(PROVIDER, identity_with(), pubs)
    assert [e.matched for e in evaluations] == [True, False]
    explain = evaluations[1].as_explain()
    assert (explain["id"], explain["package"], explain["matched"]) == ("pub-2", "bar", False)
    assert [c["check"] for c in explain["checks"]] == CHECK_ORDER
    assert explain["checks"][5] == {"check": "environment", "claim": "environment", "expected": ["release"],
                                    "actual": "prod", "passed": False}


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"issuer": "https://ghes.example.com/_services/token"}, id="other-issuer"),
        pytest.param({"issuer": ISSUER + "/"}, id="issuer-not-byte-equal"),
        pytest.param({"provider": "gitlab"}, id="other-provider"),
    ],
)
def test_evaluate_skips_publishers_of_another_issuer_or_provider(config: dict[str, Any]) -> None:
    assert evaluate(PROVIDER, identity_with(), [publisher(**config)]) == []


def test_empty_check_table_never_matches() -> None:
    assert not PublisherEvaluation(publisher(), []).matched


def test_denial_without_candidates() -> None:
    problem = denial(PROVIDER, identity_with(), [])
    assert problem.code == "no_matching_publisher"
    assert problem.detail == (f"no trusted publisher is configured for repository {REPO} on issuer {ISSUER}")
    assert "POST /v1/admin/publishers" in problem.hints[0]
    for field in ('"provider": "github"', '"repository_owner": "octo-org"', '"repository_name": "octo-repo"',
                  '"workflow_filename": "release.yml"'):
        assert field in problem.hints[0]
    assert problem.checks == []


@pytest.mark.parametrize("event", sorted(FORBIDDEN_EVENTS))
def test_denial_forbidden_trigger(event: str) -> None:
    identity = identity_with(event_name=event)
    evaluations = evaluate(PROVIDER, identity, [publisher(), publisher(id="pub-2", environments=("x",))])
    problem = denial(PROVIDER, identity, evaluations)
    assert problem.code == "forbidden_trigger"
    assert problem.status == 403
    assert f"'{event}'" in problem.detail
    assert "push, release, workflow_dispatch or a tag" in problem.detail
    assert problem.checks == [e.as_explain() for e in evaluations]


def test_denial_names_closest_publisher_and_its_first_failure() -> None:
    identity = identity_with(environment="staging")
    far = publisher(id="pub-far", package="far", workflow="other.yml", environments=("release",))
    close = publisher(id="pub-close", package="close", environments=("release",))
    evaluations = evaluate(PROVIDER, identity, [far, close])
    problem = denial(PROVIDER, identity, evaluations)
    assert problem.code == "no_matching_publisher"
    assert "publisher pub-close (package close)" in problem.detail
    assert "environment check failed: claim environment is 'staging', expected one of ['release']" in problem.detail
    assert "pub-far" not in problem.detail
    assert problem.checks == [e.as_explain() for e in evaluations]


def test_denial_ties_go_to_the_first_candidate() -> None:
    identity = identity_with()
    evaluations = evaluate(PROVIDER, identity, [publisher(id="a", owner_id="1"), publisher(id="b", name_id="2")])
    assert "publisher a " in denial(PROVIDER, identity, evaluations).detail


def test_denial_counts_further_differences() -> None:
    identity = identity_with()
    evaluations = evaluate(PROVIDER, identity, [publisher(owner_id="1", workflow="x.yml", environments=("r",))])
    detail = denial(PROVIDER, identity, evaluations).detail
    assert "repository_owner_id check failed: claim repository_owner_id is '65', expected '1'" in detail
    assert "and 2 more differences" in detail


@pytest.mark.parametrize(
    ("claims", "config", "hint"),
    [
        pytest.param({"environment": "staging"}, {"environments": ("release",)},
                     "publisher pub-1 (package foo): environment: the token has 'staging', expected one of ['release']",
                     id="environment"),
        pytest.param({"environment": DELETE}, {"environments": ("release",)},
                     "publisher pub-1 (package foo): environment: the token has no environment, "
                     "expected one of ['release']", id="environment-missing"),
        pytest.param({}, {"ref_patterns": ("refs/tags/v*",)},
                     "publisher pub-1 (package foo): ref: the token has 'refs/heads/main', expected one of "
                     "['refs/tags/v*']", id="ref"),
        pytest.param({}, {"workflow": "publish.yml"},
                     "publisher pub-1 (package foo): workflow: the token has 'release.yml', expected 'publish.yml'",
                     id="workflow"),
        pytest.param({}, {"owner_id": "66"},
                     "publisher pub-1 (package foo): repository_owner_id: the token has '65', expected '66'",
                     id="owner-id"),
        pytest.param({"runner_environment": "self-hosted"}, {},
                     "publisher pub-1 (package foo): runner: the token has 'self-hosted', expected 'github-hosted'",
                     id="runner"),
    ],
)
def test_denial_hints_name_check_actual_and_expected(claims: dict[str, Any], config: dict[str, Any],
                                                     hint: str) -> None:
    identity = identity_with(**claims)
    problem = denial(PROVIDER, identity, evaluate(PROVIDER, identity, [publisher(**config)]))
    assert problem.code == "no_matching_publisher"
    assert len(problem.hints) == 1
    assert problem.hints[0].startswith(hint)


def test_denial_has_one_hint_per_publisher_per_failed_check() -> None:
    identity = identity_with()
    pubs = [publisher(id="a", owner_id="1", workflow="x.yml"), publisher(id="b", environments=("r",))]
    hints = denial(PROVIDER, identity, evaluate(PROVIDER, identity, pubs)).hints
    assert [h.split(":")[0:2] for h in hints] == [
        ["publisher a (package foo)", " repository_owner_id"],
        ["publisher a (package foo)", " workflow"],
        ["publisher b (package foo)", " environment"],
    ]


def test_denial_quotes_only_verified_claims_and_config() -> None:
    """Display-name and personal claims never reach a client-facing message."""
    identity = identity_with(workflow="SECRET-DISPLAY-NAME", actor="SECRET-ACTOR", head_ref="SECRET-HEAD",
                             sub="SECRET-SUB", jti="SECRET-JTI")
    evaluations = evaluate(PROVIDER, identity, [publisher(owner_id="1", workflow="x.yml", environments=("r",),
                                                          ref_patterns=("refs/tags/*",))])
    problem = denial(PROVIDER, identity, evaluations)
    text = repr((problem.detail, problem.hints, problem.checks))
    assert "SECRET" not in text


# --- registry ---------------------------------------------------------------------------------------------


def test_get_provider() -> None:
    assert isinstance(get_provider("github"), GitHubProvider)
    assert PROVIDERS["github"].name == "github"
    with pytest.raises(KeyError):
        get_provider("bitbucket")


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        pytest.param("Octo-Org", "octo-org", True, id="ascii"),
        pytest.param("\u212a", "k", False, id="kelvin-sign"),
        pytest.param("\u0130", "i", False, id="dotted-capital-i"),
        pytest.param("stra\u00dfe", "strasse", False, id="sharp-s"),
    ],
)
def test_ascii_iequal_folds_only_ascii(a: str, b: str, equal: bool) -> None:
    assert ascii_iequal(a, b) is equal


def test_ascii_lower_folds_a_to_z_and_nothing_else() -> None:
    """Every character of the Basic Multilingual Plane, alone and after an ASCII prefix (the fast path takes
    ASCII strings only): A-Z become a-z, everything else stays as it is."""
    for code in range(0x10000):
        if 0xD800 <= code < 0xE000:
            continue
        char = chr(code)
        folded = chr(code + 32) if "A" <= char <= "Z" else char
        assert ascii_lower(char) == folded and ascii_lower("Octo-" + char) == "octo-" + folded, hex(code)


# --- reusable workflows: a publisher may require the called workflow (job_workflow_ref) --------------------

CALLED = "octo-org/octo-automation/.github/workflows/oidc.yml"   # the fixture's job_workflow_ref, without @ref


def pinned_to(called: str) -> Publisher:
    return publisher(conditions={"job_workflow_ref": called})


@pytest.mark.parametrize(
    ("claims", "called", "passed"),
    [
        pytest.param({}, CALLED, True, id="path-only-any-ref"),
        pytest.param({}, f"{CALLED}@refs/heads/main", True, id="path-and-ref"),
        pytest.param({}, f"{CALLED}@refs/tags/v1", False, id="other-ref"),
        pytest.param({}, "OCTO-ORG/Octo-Automation/.github/workflows/oidc.yml", True, id="owner-repo-ignore-case"),
        pytest.param({}, "octo-org/octo-automation/.github/workflows/OIDC.yml", False, id="file-case-sensitive"),
        pytest.param({}, "octo-org/other/.github/workflows/oidc.yml", False, id="other-repository"),
        pytest.param({}, "evil-org/octo-automation/.github/workflows/oidc.yml", False, id="other-owner"),
        pytest.param({"job_workflow_ref": f"{CALLED}@refs/heads/main@x"}, f"{CALLED}@refs/heads/main", False,
                     id="ref-compared-whole"),
        pytest.param({"job_workflow_ref": f"{CALLED}x@refs/heads/main"}, CALLED, False, id="no-prefix-match"),
        pytest.param({"job_workflow_ref": DELETE}, CALLED, False, id="claim-missing"),
        pytest.param({"job_workflow_ref": f"{WORKFLOWS}/release.yml@refs/heads/main"}, CALLED, False,
                     id="not-a-reusable-workflow"),
    ],
)
def test_a_pinned_called_workflow(claims: dict[str, Any], called: str, passed: bool) -> None:
    row = results_by_check(identity_with(**claims), pinned_to(called))["called_workflow"]
    assert (row.passed, row.claim, row.expected) == (passed, "job_workflow_ref", called)
    assert failed_checks(identity_with(**claims), pinned_to(called)) == (set() if passed else {"called_workflow"})


def test_the_caller_is_still_checked_and_explain_shows_both() -> None:
    rows = results_by_check(identity_with(), replace(pinned_to(CALLED), workflow="deploy.yml"))
    assert not rows["workflow"].passed and rows["called_workflow"].passed
    order = [r.check for r in PROVIDER.checks(identity_with(), pinned_to(CALLED))]
    assert order == [*CHECK_ORDER[:4], "called_workflow", *CHECK_ORDER[4:]]
    assert rows["called_workflow"].actual == base_claims()["job_workflow_ref"]


def test_without_the_field_nothing_changes() -> None:
    assert [r.check for r in PROVIDER.checks(identity_with(), publisher())] == CHECK_ORDER
