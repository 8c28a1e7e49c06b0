"""Table tests for the GitLab provider: strict identity building, the check table
(the GitLab conformance table), bindings, personal data, and the denials built from it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from msgspec.structs import asdict

from tpx.core.errors import Problem
from tpx.core.providers import PROVIDERS, get_provider
from tpx.core.providers.base import Identity
from tpx.core.providers.gitlab import GitLabProvider
from tpx.core.providers.matching import denial, evaluate
from tpx.core.providers.base import Publisher
from tests.support.check_table import CheckTable

ISSUER = "https://gitlab.com"
SELF_MANAGED = "https://gitlab.example.com"
PROJECT = "my-group/my-project"
SHA = "714a629c0b401fdce83e847fc9589983fc6f46bc"
OTHER_SHA = "0" * 40
URI = f"gitlab.com/{PROJECT}//.gitlab-ci.yml@refs/heads/main"
PROVIDER = GitLabProvider()
CHECK_ORDER = ["project", "namespace_id", "project_id", "job_project", "ci_config_host", "ci_config_project", "workflow",
               "ci_config_ref", "environment", "ref", "protected_ref", "runner"]
PERSONAL = ("user_id", "user_login", "user_email", "user_access_level", "groups_direct")
DELETE = object()


def base_claims() -> dict[str, Any]:
    """The payload of shared/fixtures/gitlab-ci-id-token.json, copied verbatim."""
    return {
        "namespace_id": "72",
        "namespace_path": "my-group",
        "project_id": "20",
        "project_path": "my-group/my-project",
        "user_id": "1",
        "user_login": "sample-user",
        "user_email": "sample-user@example.com",
        "user_access_level": "owner",
        "pipeline_id": "574",
        "pipeline_source": "push",
        "job_id": "302",
        "ref": "main",
        "ref_type": "branch",
        "ref_path": "refs/heads/main",
        "ref_protected": "true",
        "groups_direct": ["my-group/my-subgroup"],
        "environment": "production",
        "environment_protected": "true",
        "deployment_tier": "production",
        "environment_action": "start",
        "runner_id": 27,
        "runner_environment": "gitlab-hosted",
        "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        "project_visibility": "public",
        "ci_config_ref_uri": "gitlab.com/my-group/my-project//.gitlab-ci.yml@refs/heads/main",
        "ci_config_sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        "jti": "235b3a54-b797-45c7-ae9a-f72d7bc6ef5b",
        "iat": 1681395193,
        "nbf": 1681395188,
        "exp": 1681398793,
        "iss": "https://gitlab.com",
        "sub": "project_path:my-group/my-project:ref_type:branch:ref:main",
        "aud": "tpx",
    }


TABLE = CheckTable(PROVIDER, base_claims, ISSUER, omit=DELETE)
claims_with, identity_with = TABLE.claims_with, TABLE.identity_with


def nested(project_path: str, **changes: Any) -> dict[str, Any]:
    """Claims for another project path, kept self-consistent."""
    out = {"project_path": project_path, "namespace_path": project_path.rpartition("/")[0],
           "ci_config_ref_uri": f"gitlab.com/{project_path}//.gitlab-ci.yml@refs/heads/main"}
    out.update(changes)
    return out


def uri(file: str = ".gitlab-ci.yml", ref: str = "refs/heads/main", host: str = "gitlab.com",
        project: str = PROJECT) -> dict[str, Any]:
    return {"ci_config_ref_uri": f"{host}/{project}//{file}@{ref}"}


def publisher(**changes: Any) -> Publisher:
    base = Publisher(id="pub-1", package="foo", provider="gitlab", issuer=ISSUER, owner="my-group",
                     name="my-project", workflow=".gitlab-ci.yml")
    return replace(base, **changes)


results_by_check, failed_checks = TABLE.results_by_check, TABLE.failed_checks


# --- identity(): accepted tokens --------------------------------------------------------------------------


def test_identity_from_fixture() -> None:
    identity = PROVIDER.identity(base_claims(), ISSUER)
    assert identity == Identity(
        provider="gitlab", issuer=ISSUER, repository=PROJECT, owner="my-group", name="my-project", owner_id="72",
        repository_id="20", workflow=".gitlab-ci.yml", workflow_ref=URI, environment="production",
        ref="refs/heads/main", sha=SHA, run_id="574", actor=None, event_name="push",
        runner_environment="gitlab-hosted",
        extra={"ref_protected": "true", "ci_config_sha": SHA, "job_id": "302", "environment_protected": "true",
               "deployment_tier": "production", "ref_type": "branch", "job_project_id": None,
               "job_project_path": None, "source_project_id": None, "source_project_path": None},
    )


@pytest.mark.parametrize(
    ("changes", "field", "value"),
    [
        pytest.param(nested("a/b/c/project"), "owner", "a/b/c", id="nested-groups-owner"),
        pytest.param(nested("a/b/c/project"), "name", "project", id="nested-groups-name"),
        pytest.param(nested("a/b/c/project"), "repository", "a/b/c/project", id="nested-groups-repository"),
        pytest.param(nested("My-Group/My.Project_x"), "repository", "My-Group/My.Project_x", id="case-kept-as-sent"),
        pytest.param(nested("_g/.p"), "name", ".p", id="segment-punctuation"),
        pytest.param(uri(file="ci/release.yml"), "workflow", "ci/release.yml", id="workflow-with-directory"),
        pytest.param(uri(file="ci//x.yml"), "workflow", "ci//x.yml", id="workflow-with-double-slash"),
        pytest.param({"ci_config_ref_uri": "not a uri"}, "workflow", "not a uri", id="workflow-raw-when-unparseable"),
        pytest.param({"environment": ""}, "environment", None, id="empty-environment-is-none"),
        pytest.param({"environment": DELETE, "environment_protected": DELETE, "deployment_tier": DELETE},
                     "environment", None, id="missing-environment"),
        pytest.param({"pipeline_id": DELETE}, "run_id", None, id="missing-pipeline-id"),
        pytest.param({"runner_environment": DELETE}, "runner_environment", None, id="missing-runner"),
        pytest.param({"runner_environment": "self-hosted"}, "runner_environment", "self-hosted", id="self-hosted"),
        pytest.param({"runner_id": DELETE}, "repository", PROJECT, id="missing-runner-id"),
        pytest.param({"runner_id": 0}, "repository", PROJECT, id="runner-id-zero"),
        pytest.param({"ref_protected": "false"}, "extra", None, id="unprotected-ref"),
        pytest.param({"unknown_claim": {"nested": [1]}, "environment_action": 7}, "repository", PROJECT,
                     id="unknown-claims-ignored"),
        pytest.param({"user_email": 5, "user_login": ["x"], "user_id": None, "groups_direct": "x"}, "actor", None,
                     id="personal-claims-never-read"),
        pytest.param({"ref_path": "r" * 1024}, "ref", "r" * 1024, id="ref-path-at-limit"),
        pytest.param({"sha": "a" * 64}, "sha", "a" * 64, id="sha256"),
        pytest.param({"namespace_id": "9" * 20}, "owner_id", "9" * 20, id="id-at-limit"),
    ],
)
def test_identity_accepts(changes: dict[str, Any], field: str, value: Any) -> None:
    identity = identity_with(**changes)
    if field == "extra":
        assert identity.extra["ref_protected"] == changes["ref_protected"]
    else:
        assert getattr(identity, field) == value


def test_project_path_at_length_limit() -> None:
    """A 1024-character project_path is a valid path; such a token is still refused, because its
    ci_config_ref_uri (which contains the path) is over the 1 KiB cap for URIs."""
    project_path = "/".join(["g" * 255] * 3 + ["g" * 254, "p"])
    assert len(project_path) == 1024
    with pytest.raises(Problem) as raised:
        identity_with(**nested(project_path))
    assert "'ci_config_ref_uri'" in raised.value.detail
    assert identity_with(**nested("/".join(["g" * 255] * 3 + ["p"]))).name == "p"


# --- identity(): malformed tokens -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "claim"),
    [
        # Missing required claims.
        *[pytest.param({name: DELETE}, name, id=f"missing-{name}")
          for name in ("project_path", "namespace_path", "namespace_id", "project_id", "ci_config_ref_uri",
                       "ref_path", "ref", "ref_type", "sha", "ref_protected", "pipeline_source")],
        # Numeric ids as JSON numbers (GitLab sends strings).
        pytest.param({"namespace_id": 72}, "namespace_id", id="namespace-id-number"),
        pytest.param({"project_id": 20}, "project_id", id="project-id-number"),
        pytest.param({"pipeline_id": 574}, "pipeline_id", id="pipeline-id-number"),
        pytest.param({"job_id": 302}, "job_id", id="job-id-number"),
        pytest.param({"namespace_id": "7.2"}, "namespace_id", id="namespace-id-not-digits"),
        pytest.param({"project_id": ""}, "project_id", id="project-id-empty"),
        pytest.param({"project_id": "1" * 21}, "project_id", id="project-id-too-long"),
        pytest.param({"namespace_id": "\uff17\uff12"}, "namespace_id", id="fullwidth-digits"),
        # runner_id is the one number.
        pytest.param({"runner_id": "27"}, "runner_id", id="runner-id-string"),
        pytest.param({"runner_id": True}, "runner_id", id="runner-id-boolean"),
        pytest.param({"runner_id": 27.0}, "runner_id", id="runner-id-float"),
        pytest.param({"runner_id": -1}, "runner_id", id="runner-id-negative"),
        pytest.param({"runner_id": 2**64}, "runner_id", id="runner-id-huge"),
        # ref_protected is the string "true" or "false".
        pytest.param({"ref_protected": True}, "ref_protected", id="ref-protected-boolean"),
        pytest.param({"ref_protected": "TRUE"}, "ref_protected", id="ref-protected-upper"),
        pytest.param({"ref_protected": "yes"}, "ref_protected", id="ref-protected-yes"),
        pytest.param({"ref_protected": ""}, "ref_protected", id="ref-protected-empty"),
        pytest.param({"environment_protected": False}, "environment_protected", id="environment-protected-boolean"),
        pytest.param({"environment_protected": "True"}, "environment_protected", id="environment-protected-case"),
        # project_path shape.
        pytest.param({"project_path": "project"}, "project_path", id="project-path-one-segment"),
        pytest.param({"project_path": "g//p"}, "project_path", id="project-path-empty-segment"),
        pytest.param({"project_path": "g/p/"}, "project_path", id="project-path-trailing-slash"),
        pytest.param({"project_path": "/g/p"}, "project_path", id="project-path-leading-slash"),
        pytest.param({"project_path": "g/-p"}, "project_path", id="project-path-leading-dash"),
        pytest.param({"project_path": "g/p q"}, "project_path", id="project-path-space"),
        pytest.param({"project_path": "my-group/my-pr\u043eject"}, "project_path", id="project-path-cyrillic-o"),
        pytest.param({"project_path": "my-group/\u212aelvin"}, "project_path", id="project-path-kelvin-sign"),
        pytest.param({"project_path": "g/" + "p" * 256}, "project_path", id="project-path-segment-too-long"),
        pytest.param({"project_path": "/".join(["g" * 255] * 3 + ["g" * 254, "pp"])}, "project_path",
                     id="project-path-1025"),
        pytest.param({"project_path": ["my-group", "my-project"]}, "project_path", id="project-path-array"),
        # namespace_path must be the project path's namespace, exactly.
        pytest.param({"namespace_path": "other-group"}, "namespace_path", id="namespace-path-differs"),
        pytest.param({"namespace_path": "My-Group"}, "namespace_path", id="namespace-path-case"),
        pytest.param(nested("a/b/c/project", namespace_path="a"), "namespace_path", id="namespace-path-first-only"),
        # Control characters and non-ASCII.
        pytest.param({"ci_config_ref_uri": URI + "\n"}, "ci_config_ref_uri", id="uri-lf"),
        pytest.param({"ci_config_ref_uri": URI.replace("@", "\x00@")}, "ci_config_ref_uri", id="uri-nul"),
        pytest.param({"ci_config_ref_uri": "g" * 1025}, "ci_config_ref_uri", id="uri-too-long"),
        pytest.param({"ref_path": "refs/heads/main\r"}, "ref_path", id="ref-path-cr"),
        pytest.param({"ref_path": "refs/heads/ma\u00efn"}, "ref_path", id="ref-path-non-ascii"),
        pytest.param({"ref_path": ""}, "ref_path", id="ref-path-empty"),
        pytest.param({"ref": "main\x00"}, "ref", id="ref-nul"),
        pytest.param({"environment": "production\n"}, "environment", id="environment-lf"),
        pytest.param({"environment": "Pr\u043eduction"}, "environment", id="environment-cyrillic"),
        pytest.param({"environment": "e" * 256}, "environment", id="environment-too-long"),
        pytest.param({"environment": 1}, "environment", id="environment-number"),
        # Other shapes.
        pytest.param({"sha": "714A629C0B401FDCE83E847FC9589983FC6F46BC"}, "sha", id="sha-upper-case"),
        pytest.param({"sha": "abc"}, "sha", id="sha-short"),
        pytest.param({"ci_config_sha": "x"}, "ci_config_sha", id="ci-config-sha-shape"),
        pytest.param({"pipeline_source": "Push"}, "pipeline_source", id="pipeline-source-case"),
        pytest.param({"ref_type": 1}, "ref_type", id="ref-type-number"),
        pytest.param({"runner_environment": "Gitlab-Hosted"}, "runner_environment", id="runner-environment-case"),
        pytest.param({"runner_environment": True}, "runner_environment", id="runner-environment-boolean"),
        pytest.param({"deployment_tier": "prod uction"}, "deployment_tier", id="deployment-tier-shape"),
    ],
)
def test_identity_rejects(changes: dict[str, Any], claim: str) -> None:
    assert repr(claim) in TABLE.malformed(**changes).detail


def test_identity_rejects_non_object_payload() -> None:
    TABLE.malformed(["not", "an", "object"])


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        pytest.param({"namespace_id": 72}, "JSON integer", id="number"),
        pytest.param({"ref_protected": True}, "JSON boolean", id="boolean"),
        pytest.param({"project_path": None}, "JSON null", id="null"),
        pytest.param({"runner_id": "27"}, "JSON string", id="runner-id-string"),
    ],
)
def test_malformed_names_the_json_type(changes: dict[str, Any], phrase: str) -> None:
    with pytest.raises(Problem) as raised:
        identity_with(**changes)
    assert phrase in raised.value.detail


def test_malformed_never_echoes_the_value() -> None:
    with pytest.raises(Problem) as raised:
        identity_with(ref_path="refs/heads/SECRET\n")
    assert "SECRET" not in raised.value.detail


# --- personal data ----------------------------------------------------------------------------------------


def test_personal_claims_never_reach_the_identity() -> None:
    marked = {name: f"PII-{name}" for name in PERSONAL}
    identity = identity_with(**marked)
    assert identity == identity_with(**{name: DELETE for name in PERSONAL})
    everywhere = repr((asdict(identity), identity.ci()))
    assert "PII-" not in everywhere
    for value in base_claims()["user_login"], base_claims()["user_email"]:
        assert value not in repr(asdict(PROVIDER.identity(base_claims(), ISSUER)))
    assert identity.actor is None
    assert identity.ci()["actor"] is None


def test_personal_claims_never_reach_checks_or_denials() -> None:
    identity = identity_with(**{name: f"PII-{name}" for name in PERSONAL})
    evaluations = evaluate(PROVIDER, identity, [publisher(owner_id="1", workflow="x.yml", environments=("r",))])
    problem = denial(PROVIDER, identity, evaluations)
    assert "PII-" not in repr((problem.detail, problem.hints, problem.checks))


# --- checks(): the conformance table ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "config", "issuer", "failed"),
    [
        pytest.param({}, {}, ISSUER, set(), id="fixture-matches"),
        # Project: namespace/project, ASCII case-insensitive.
        pytest.param(nested("a/b/c/project"), {"owner": "a/b/c", "name": "project"}, ISSUER, set(),
                     id="nested-groups-match"),
        pytest.param(nested("a/b/c/project"), {"owner": "a/b", "name": "c/project"}, ISSUER, {"project"},
                     id="nested-groups-split-at-last-slash"),
        pytest.param(nested("a/b/c/project"), {"owner": "a/b/x", "name": "project"}, ISSUER, {"project"},
                     id="nested-groups-other-subgroup"),
        pytest.param({}, {"owner": "MY-GROUP", "name": "My-Project"}, ISSUER, set(), id="project-case-insensitive"),
        pytest.param({}, {"owner": "other-group"}, ISSUER, {"project"}, id="namespace-mismatch"),
        pytest.param({}, {"name": "other-project"}, ISSUER, {"project"}, id="project-mismatch"),
        # namespace_id / project_id pinning.
        pytest.param({}, {"owner_id": "72", "name_id": "20"}, ISSUER, set(), id="ids-pinned-match"),
        pytest.param({}, {"owner_id": "73"}, ISSUER, {"namespace_id"}, id="namespace-id-mismatch"),
        pytest.param({}, {"name_id": "21"}, ISSUER, {"project_id"}, id="project-id-mismatch"),
        pytest.param({}, {"owner_id": "072"}, ISSUER, {"namespace_id"}, id="namespace-id-leading-zero"),
        # ci_config_ref_uri host: the issuer's host.
        pytest.param(uri(host="gitlab.example.com"), {}, ISSUER, {"ci_config_host"},
                     id="host-self-managed-on-gitlab-com"),
        pytest.param({}, {"issuer": SELF_MANAGED}, SELF_MANAGED, {"ci_config_host"},
                     id="host-gitlab-com-on-self-managed"),
        pytest.param(uri(host="gitlab.example.com"), {"issuer": SELF_MANAGED}, SELF_MANAGED, set(),
                     id="host-self-managed-matches"),
        pytest.param(uri(host="GitLab.com"), {}, ISSUER, set(), id="host-case-insensitive"),
        pytest.param(uri(host="gitlab.com:443"), {}, ISSUER, {"ci_config_host"}, id="host-port-differs"),
        pytest.param(uri(host="gitlab.com.evil.example"), {}, ISSUER, {"ci_config_host"}, id="host-suffix"),
        # ci_config_ref_uri project: the token's project.
        pytest.param(uri(project="other-group/my-project"), {}, ISSUER, {"ci_config_project"},
                     id="config-from-other-project"),
        pytest.param(uri(project="my-group/my-project-fork"), {}, ISSUER, {"ci_config_project"},
                     id="config-from-similar-project"),
        pytest.param(uri(project="MY-GROUP/my-project"), {}, ISSUER, set(), id="config-project-case-insensitive"),
        # ci_config_ref_uri file: exactly the configured workflow_filepath.
        pytest.param(uri(file="ci/.gitlab-ci.yml"), {}, ISSUER, {"workflow"}, id="file-in-directory"),
        pytest.param({}, {"workflow": "ci/.gitlab-ci.yml"}, ISSUER, {"workflow"}, id="file-not-in-directory"),
        pytest.param(uri(file="ci/.gitlab-ci.yml"), {"workflow": "ci/.gitlab-ci.yml"}, ISSUER, set(),
                     id="file-in-directory-matches"),
        pytest.param(uri(file="ci//release.yml"), {"workflow": "ci/release.yml"}, ISSUER, {"workflow"},
                     id="file-double-slash"),
        pytest.param(uri(file="ci//release.yml"), {"workflow": "ci//release.yml"}, ISSUER, set(),
                     id="file-double-slash-exact"),
        pytest.param(uri(file=".GitLab-CI.yml"), {}, ISSUER, {"workflow"}, id="file-case-sensitive"),
        pytest.param(uri(file="/.gitlab-ci.yml"), {}, ISSUER, {"workflow"}, id="file-leading-slash"),
        pytest.param(uri(file=".gitlab-ci.yaml"), {}, ISSUER, {"workflow"}, id="file-extension"),
        # ci_config_ref_uri ref: ref_path or sha, exactly.
        pytest.param(uri(ref="refs/heads/other"), {}, ISSUER, {"ci_config_ref"}, id="ref-neither"),
        pytest.param(uri(ref=SHA), {}, ISSUER, set(), id="ref-is-sha"),
        pytest.param(uri(ref=OTHER_SHA), {}, ISSUER, {"ci_config_ref"}, id="ref-other-sha"),
        pytest.param(uri(ref="refs/heads/Main"), {}, ISSUER, {"ci_config_ref"}, id="ref-case-sensitive"),
        pytest.param(uri(ref="refs/tags/v1"), {}, ISSUER, {"ci_config_ref"}, id="ref-tag-vs-branch"),
        pytest.param({"ref_path": "refs/heads/feature@home", **uri(ref="refs/heads/feature@home")}, {}, ISSUER,
                     set(), id="ref-with-at"),
        pytest.param({"ref_path": "refs/heads/a@refs/heads/main", **uri(ref="refs/heads/a@refs/heads/main")}, {},
                     ISSUER, {"workflow", "ci_config_ref"}, id="ref-with-at-refs-fails-closed"),
        # Unparseable: every ci_config row fails.
        pytest.param({"ci_config_ref_uri": "gitlab.com/my-group/my-project/.gitlab-ci.yml@refs/heads/main"}, {},
                     ISSUER, {"ci_config_host", "ci_config_project", "workflow", "ci_config_ref"}, id="uri-unparseable"),
        # Environment: exact, case-sensitive.
        pytest.param({}, {"environments": ("production",)}, ISSUER, set(), id="environment-match"),
        pytest.param({}, {"environments": ("Production",)}, ISSUER, {"environment"}, id="environment-case"),
        pytest.param({"environment": "Production"}, {"environments": ("production",)}, ISSUER, {"environment"},
                     id="environment-case-token"),
        pytest.param({}, {"environments": ("staging", "production")}, ISSUER, set(), id="environment-one-of"),
        pytest.param({}, {"environments": ("prod",)}, ISSUER, {"environment"}, id="environment-prefix"),
        pytest.param({"environment": DELETE}, {"environments": ("production",)}, ISSUER, {"environment"},
                     id="environment-missing"),
        pytest.param({"environment": DELETE}, {}, ISSUER, set(), id="environment-any-missing"),
        pytest.param({"environment": "whatever"}, {}, ISSUER, set(), id="environment-any"),
        # Ref patterns on ref_path.
        pytest.param({}, {"ref_patterns": ("refs/heads/main",)}, ISSUER, set(), id="ref-pattern-exact"),
        pytest.param({}, {"ref_patterns": ("refs/tags/v*",)}, ISSUER, {"ref"}, id="ref-pattern-miss"),
        pytest.param({}, {"ref_patterns": ("main",)}, ISSUER, {"ref"}, id="ref-pattern-is-ref-path-not-ref"),
        pytest.param({"ref_path": "refs/tags/v1.2", **uri(ref="refs/tags/v1.2")}, {"ref_patterns": ("refs/tags/v*",)},
                     ISSUER, set(), id="ref-pattern-tag"),
        pytest.param({}, {"ref_patterns": ("refs/heads/MAIN",)}, ISSUER, {"ref"}, id="ref-pattern-case-sensitive"),
        # Protected ref.
        pytest.param({"ref_protected": "true"}, {"require_protected_ref": True}, ISSUER, set(), id="protected"),
        pytest.param({"ref_protected": "false"}, {"require_protected_ref": True}, ISSUER, {"protected_ref"},
                     id="unprotected-refused"),
        pytest.param({"ref_protected": "false"}, {}, ISSUER, set(), id="unprotected-allowed"),
        # Runner.
        pytest.param({"runner_environment": "self-hosted"}, {}, ISSUER, {"runner"}, id="self-hosted-refused"),
        pytest.param({"runner_environment": DELETE}, {}, ISSUER, {"runner"}, id="runner-missing-refused"),
        pytest.param({"runner_environment": "github-hosted"}, {}, ISSUER, {"runner"}, id="runner-unknown-refused"),
        pytest.param({"runner_environment": "self-hosted"}, {"allow_self_hosted_runners": True}, ISSUER, set(),
                     id="self-hosted-allowed"),
        pytest.param({"runner_environment": DELETE}, {"allow_self_hosted_runners": True}, ISSUER, set(),
                     id="runner-missing-allowed"),
        # Merge request pipelines from forks: project_* name the fork, job_project_* the project the job runs
        # in. A token whose two differ never publishes, whichever of the two a publisher names.
        pytest.param({"job_project_id": "20", "job_project_path": PROJECT, "job_namespace_id": "72",
                      "job_namespace_path": "my-group"}, {}, ISSUER, set(), id="job-project-same"),
        pytest.param({"job_project_id": "21", "job_project_path": "upstream/my-project"}, {}, ISSUER,
                     {"job_project"}, id="fork-pipeline-in-another-project"),
        pytest.param({"job_project_path": "upstream/my-project"}, {}, ISSUER, {"job_project"},
                     id="fork-pipeline-path-only"),
        pytest.param({"source_project_id": "99", "source_project_path": "fork/my-project"}, {}, ISSUER,
                     {"job_project"}, id="merge-request-from-another-project"),
        pytest.param({"job_project_id": "21"}, {"allow_self_hosted_runners": True, "owner_id": "72", "name_id": "20"},
                     ISSUER, {"job_project"}, id="fork-pipeline-pinned-publisher"),
        pytest.param({"job_project_path": "MY-GROUP/my-project"}, {}, ISSUER, set(), id="job-project-path-case"),
        # Several at once: every row is still evaluated.
        pytest.param({"ref_protected": "false", "runner_environment": "self-hosted",
                      **uri(host="evil.example", project="x/y", file="a.yml", ref="refs/heads/x")},
                     {"owner_id": "1", "name_id": "2", "environments": ("release",), "ref_patterns": ("refs/tags/*",),
                      "require_protected_ref": True},
                     ISSUER, set(CHECK_ORDER) - {"project", "job_project"}, id="everything-fails"),
    ],
)
def test_checks(claims: dict[str, Any], config: dict[str, Any], issuer: str, failed: set[str]) -> None:
    assert failed_checks(identity_with(issuer, **claims), publisher(**config)) == failed


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({}, id="matching"),
        pytest.param({"owner": "other", "owner_id": "1", "name_id": "2", "workflow": "x.yml",
                      "require_protected_ref": True}, id="failing"),
    ],
)
def test_every_row_always_reported_in_order(config: dict[str, Any]) -> None:
    results = PROVIDER.checks(identity_with(), publisher(**config))
    assert [r.check for r in results] == CHECK_ORDER


@pytest.mark.parametrize(
    ("claims", "config", "check", "expected"),
    [
        pytest.param({}, {}, "project", {"claim": "project_path", "expected": PROJECT, "actual": PROJECT},
                     id="project"),
        pytest.param({}, {}, "namespace_id",
                     {"claim": "namespace_id", "expected": None, "actual": "72", "passed": True,
                      "note": "not pinned yet; bound to 72 on the first successful exchange"}, id="namespace-id-unpinned"),
        pytest.param({}, {}, "project_id",
                     {"expected": None, "actual": "20", "passed": True,
                      "note": "not pinned yet; bound to 20 on the first successful exchange"}, id="project-id-unpinned"),
        pytest.param({}, {"owner_id": "72"}, "namespace_id", {"expected": "72", "note": None}, id="namespace-id-pinned"),
        pytest.param({}, {}, "ci_config_host", {"claim": "ci_config_ref_uri", "expected": "gitlab.com",
                                                "actual": "gitlab.com"}, id="host"),
        pytest.param({}, {"issuer": "http://127.0.0.1:41234"}, "ci_config_host", {"expected": "127.0.0.1:41234"},
                     id="host-is-issuer-netloc"),
        pytest.param({}, {}, "ci_config_project", {"expected": PROJECT, "actual": PROJECT}, id="config-project"),
        pytest.param({}, {}, "workflow", {"claim": "ci_config_ref_uri", "expected": ".gitlab-ci.yml",
                                          "actual": ".gitlab-ci.yml"}, id="workflow"),
        pytest.param({}, {}, "ci_config_ref", {"expected": ["refs/heads/main", SHA], "actual": "refs/heads/main"},
                     id="config-ref"),
        pytest.param({}, {}, "environment", {"expected": "any", "actual": "production"}, id="environment-any"),
        pytest.param({}, {"environments": ("Production", "staging")}, "environment",
                     {"expected": ["Production", "staging"], "actual": "production", "passed": False},
                     id="environment-list"),
        pytest.param({}, {}, "ref", {"claim": "ref_path", "expected": "any", "actual": "refs/heads/main"},
                     id="ref-any"),
        pytest.param({}, {}, "protected_ref", {"claim": "ref_protected", "expected": "any", "actual": "true"},
                     id="protected-not-required"),
        pytest.param({}, {"require_protected_ref": True}, "protected_ref", {"expected": "true", "passed": True},
                     id="protected-required"),
        pytest.param({}, {}, "runner", {"claim": "runner_environment", "expected": "gitlab-hosted",
                                        "actual": "gitlab-hosted"}, id="runner"),
        pytest.param({}, {"allow_self_hosted_runners": True}, "runner", {"expected": "any"}, id="runner-any"),
    ],
)
def test_check_fields(claims: dict[str, Any], config: dict[str, Any], check: str, expected: dict[str, Any]) -> None:
    pub = publisher(**config)
    result = results_by_check(identity_with(pub.issuer, **claims), pub)[check]
    for field, value in expected.items():
        assert getattr(result, field) == value, field


@pytest.mark.parametrize(
    ("claims", "config", "check", "phrases"),
    [
        pytest.param({}, {"owner_id": "73"}, "namespace_id", ["73", "72", "deleted"], id="group-resurrection"),
        pytest.param({}, {"name_id": "21"}, "project_id", ["21", "20", "re-created"], id="project-recreated"),
        pytest.param(uri(host="gitlab.example.com"), {}, "ci_config_host", ["'gitlab.example.com'", "'gitlab.com'"],
                     id="host"),
        pytest.param(uri(project="other/proj"), {}, "ci_config_project", ["'other/proj'", "another project"],
                     id="project"),
        pytest.param(uri(file="ci/.gitlab-ci.yml"), {}, "workflow", ["'ci/.gitlab-ci.yml'", "exactly"], id="file"),
        pytest.param(uri(ref="refs/heads/x"), {}, "ci_config_ref", ["'refs/heads/x'", "ref_path", "sha"], id="ref"),
        pytest.param({"ci_config_ref_uri": "garbage"}, {}, "workflow",
                     ["'garbage'", f"expected '{URI}'"], id="unparseable"),
        pytest.param({}, {"environments": ("Production",)}, "environment", ["case-sensitive"], id="environment-case"),
        pytest.param({"environment": DELETE}, {"environments": ("x",)}, "environment", ["environment:"],
                     id="environment-missing"),
        pytest.param({"ref_protected": "false"}, {"require_protected_ref": True}, "protected_ref",
                     ["require_protected_ref", "protected branch or tag"], id="protected"),
        pytest.param({"runner_environment": "self-hosted"}, {}, "runner", ["allow_self_hosted_runners"], id="runner"),
    ],
)
def test_check_notes(claims: dict[str, Any], config: dict[str, Any], check: str, phrases: list[str]) -> None:
    note = results_by_check(identity_with(**claims), publisher(**config))[check].note
    assert note is not None
    for phrase in phrases:
        assert phrase in note


def test_ref_protected_is_not_read_from_the_publisher_side_when_not_required() -> None:
    """Without require_protected_ref the row passes whatever the token says (still shown)."""
    result = results_by_check(identity_with(ref_protected="false"), publisher())["protected_ref"]
    assert (result.passed, result.actual) == (True, "false")


def test_user_controlled_claims_never_decide() -> None:
    """sub, personal claims and display-only claims can say anything without changing a decision."""
    plain = PROVIDER.checks(identity_with(), publisher())
    noisy = PROVIDER.checks(
        identity_with(sub="project_path:other/other:ref_type:branch:ref:main", user_login="my-group",
                      user_access_level="owner", groups_direct=["my-group"], project_visibility="private",
                      environment_action="stop"),
        publisher(),
    )
    assert plain == noisy


# --- bindings() -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "bindings"),
    [
        pytest.param({}, {"owner_id": "72", "name_id": "20"}, id="nothing-pinned"),
        pytest.param({"owner_id": "72"}, {"name_id": "20"}, id="namespace-pinned"),
        pytest.param({"name_id": "20"}, {"owner_id": "72"}, id="project-pinned"),
        pytest.param({"owner_id": "72", "name_id": "20"}, {}, id="both-pinned"),
    ],
)
def test_bindings(config: dict[str, Any], bindings: dict[str, str]) -> None:
    assert PROVIDER.bindings(identity_with(), publisher(**config)) == bindings


# --- matching: evaluate() and denial() --------------------------------------------------------------------


def test_evaluate_and_explain() -> None:
    pubs = [publisher(), publisher(id="pub-2", package="bar", environments=("Production",))]
    evaluations = evaluate(PROVIDER, identity_with(), pubs)
    assert [e.matched for e in evaluations] == [True, False]
    explain = evaluations[1].as_explain()
    assert [c["check"] for c in explain["checks"]] == CHECK_ORDER
    environment = explain["checks"][CHECK_ORDER.index("environment")]
    assert environment["check"] == "environment" and environment["passed"] is False


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"issuer": SELF_MANAGED}, id="self-managed-publisher-gitlab-com-token"),
        pytest.param({"issuer": ISSUER + "/"}, id="issuer-not-byte-equal"),
        pytest.param({"provider": "github"}, id="github-publisher"),
    ],
)
def test_evaluate_skips_publishers_of_another_issuer_or_provider(config: dict[str, Any]) -> None:
    assert evaluate(PROVIDER, identity_with(), [publisher(**config)]) == []


def test_self_managed_token_never_evaluates_a_gitlab_com_publisher() -> None:
    identity = identity_with(SELF_MANAGED, **uri(host="gitlab.example.com"))
    assert evaluate(PROVIDER, identity, [publisher()]) == []


def test_denial_without_candidates_uses_gitlab_field_names() -> None:
    problem = denial(PROVIDER, identity_with(**nested("a/b/c/project")), [])
    assert problem.code == "no_matching_publisher"
    for field in ('"provider": "gitlab"', '"namespace": "a/b/c"', '"project": "project"',
                  '"workflow_filepath": ".gitlab-ci.yml"'):
        assert field in problem.hints[0]


@pytest.mark.parametrize(
    ("claims", "config", "hint"),
    [
        pytest.param(uri(host="gitlab.example.com"), {},
                     "publisher pub-1 (package foo): ci_config_host: the token has 'gitlab.example.com', "
                     "expected 'gitlab.com'", id="host"),
        pytest.param(uri(project="other/proj"), {},
                     f"publisher pub-1 (package foo): ci_config_project: the token has 'other/proj', "
                     f"expected '{PROJECT}'", id="project"),
        pytest.param(uri(file="ci/.gitlab-ci.yml"), {},
                     "publisher pub-1 (package foo): workflow: the token has 'ci/.gitlab-ci.yml', "
                     "expected '.gitlab-ci.yml'", id="file"),
        pytest.param(uri(ref="refs/heads/x"), {},
                     f"publisher pub-1 (package foo): ci_config_ref: the token has 'refs/heads/x', expected one of "
                     f"['refs/heads/main', '{SHA}']", id="ref"),
        pytest.param({}, {"environments": ("Production",)},
                     "publisher pub-1 (package foo): environment: the token has 'production', expected one of "
                     "['Production']", id="environment"),
        pytest.param({}, {"owner_id": "73"},
                     "publisher pub-1 (package foo): namespace_id: the token has '72', expected '73'",
                     id="namespace-id"),
        pytest.param({"ref_protected": "false"}, {"require_protected_ref": True},
                     "publisher pub-1 (package foo): protected_ref: the token has 'false', expected 'true'",
                     id="protected"),
    ],
)
def test_denial_hints_name_the_differing_part(claims: dict[str, Any], config: dict[str, Any], hint: str) -> None:
    identity = identity_with(**claims)
    problem = denial(PROVIDER, identity, evaluate(PROVIDER, identity, [publisher(**config)]))
    assert problem.code == "no_matching_publisher"
    assert len(problem.hints) == 1
    assert problem.hints[0].startswith(hint)


# --- registry ---------------------------------------------------------------------------------------------


def test_registered() -> None:
    assert isinstance(get_provider("gitlab"), GitLabProvider)
    assert PROVIDERS["gitlab"].name == "gitlab"


@pytest.mark.parametrize("claims", [{"job_project_id": 21}, {"job_project_path": "a//b"}, {"source_project_id": "x"},
                                    {"job_project_path": "not-a-path"}])
def test_job_and_source_project_claims_are_read_strictly(claims):
    with pytest.raises(Problem) as refused:
        identity_with(**claims)
    assert refused.value.code == "malformed_token"


def test_a_fork_pipeline_denial_names_the_claims():
    identity = identity_with(job_project_id="21", job_project_path="upstream/my-project")
    problem = denial(PROVIDER, identity, evaluate(PROVIDER, identity, [publisher()]))
    assert problem.code == "no_matching_publisher"
    text = problem.detail + " ".join(problem.hints)
    assert "job_project_id" in text and "upstream/my-project" in text and "fork" in text
