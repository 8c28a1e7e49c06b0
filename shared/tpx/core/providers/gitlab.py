"""GitLab CI/CD: the typed identity of a verified ID token and its check table.

Like the GitHub provider, claim validation is narrower than what GitLab
documents: every value must be plain ASCII of a known shape (checked with
`re.fullmatch` before anything compares or folds it), and type confusion (an id
sent as a JSON number, `ref_protected` as a boolean) is `malformed_token`.

Personal data never enters the identity: `user_email`, `user_login`, `user_id`,
`user_access_level` and `groups_direct` are not read at all, so they cannot be
stored on tokens, carried by events or quoted in a denial. `actor` is None for
the same reason.
"""

from __future__ import annotations

import re
from typing import Any

from tpx.core.bodies import Flag, text, text_list
from tpx.core.errors import Problem
from tpx.core.jose.strict_json import json_type
from tpx.core.providers.base import CheckResult, Identity, IdentityFields, NumericId, Publisher, PublisherInput
from tpx.core.providers.checks import Forge, hosted_runner, pinned_id, ref_patterns, repository_match
from tpx.core.providers.claims import (
    ID, ID_TEXT, PRINTABLE_1K, PRINTABLE_255_OR_EMPTY, TEXT_1K, TEXT_255_OR_EMPTY, required_claim, string_claim,
)
from tpx.core.providers.gitlab_ref import CiConfigRef, issuer_host, parse_ci_config_ref_uri
from tpx.core.providers.matching import ascii_iequal

GITLAB_HOSTED = "gitlab-hosted"
PROTECTED = "true"

# group[/subgroup...]/project; '/' is outside the segment class, so the
# repetition cannot backtrack. The 1024 total is checked before matching.
# The same rules check a publisher's namespace and project.
_SEGMENT = r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,254}"
_PROJECT_PATH = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})+")
# GitLab refuses group and project paths ending in .git or .atom; a publisher naming one could never match.
_NAME_SEGMENT = rf"{_SEGMENT}(?<!\.git)(?<!\.atom)"
NAMESPACE_RE = re.compile(rf"{_NAME_SEGMENT}(?:/{_NAME_SEGMENT}){{0,20}}")
PROJECT_RE = re.compile(_NAME_SEGMENT)
# The CI configuration's path inside the project: relative, no surrounding space.
CI_FILE_RE = re.compile(r"[A-Za-z0-9._-][A-Za-z0-9._/ -]{0,1023}\.ya?ml")
# GitLab's rules for environment names: letters, digits, spaces and - _ / $ { } . ; not starting or ending
# with '/' (nor, since the names GitLab puts in tokens are trimmed, with a space); at most 255.
_ENVIRONMENT_EDGE = r"A-Za-z0-9_.${}\-"
ENVIRONMENT_RE = re.compile(rf"[{_ENVIRONMENT_EDGE}](?:[{_ENVIRONMENT_EDGE}/ ]{{0,253}}[{_ENVIRONMENT_EDGE}])?")
_PROJECT_PATH_MAX = 1024
_WORD = re.compile(r"[a-z_]{1,64}")
_RUNNER = re.compile(r"[a-z-]{1,64}")
_BOOLEAN_STRING = re.compile(r"true|false")
_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")

_WORD_TEXT = "1 to 64 lower-case ASCII letters or '_'"
_BOOLEAN_TEXT = "the string \"true\" or \"false\""
_SHA_TEXT = "a commit sha of 40 (or 64) lower-case hex digits"

# Optional claims: name -> (pattern, description). Empty means absent.
_OPTIONAL: dict[str, tuple[re.Pattern[str], str]] = {
    "environment": (TEXT_255_OR_EMPTY, PRINTABLE_255_OR_EMPTY),
    "environment_protected": (_BOOLEAN_STRING, _BOOLEAN_TEXT),
    # Documented values are gitlab-hosted and self-hosted; another value of
    # the same shape is a refusal by the runner check (with a hint), not a
    # malformed token.
    "runner_environment": (_RUNNER, "1 to 64 lower-case ASCII letters or '-'"),
    "pipeline_id": (ID, ID_TEXT),
    "job_id": (ID, ID_TEXT),
    "deployment_tier": (_WORD, _WORD_TEXT),
    "ci_config_sha": (_SHA, _SHA_TEXT),
    # Merge request pipelines from forks (GitLab 18.3 and later): job_* name the project the job runs
    # in, source_* the merge request's source project, while project_* name the fork.
    "job_project_id": (ID, ID_TEXT),
    "job_namespace_id": (ID, ID_TEXT),
    "job_namespace_path": (TEXT_1K, PRINTABLE_1K),
    "source_project_id": (ID, ID_TEXT),
    "source_namespace_id": (ID, ID_TEXT),
    "source_namespace_path": (TEXT_1K, PRINTABLE_1K),
}
_PROJECT_PATH_CLAIMS = ("job_project_path", "source_project_path")
_OTHER_PROJECT_CLAIMS = ("job_project_id", "job_project_path", "source_project_id", "source_project_path")
_MAX_RUNNER_ID = 2**63 - 1


def _project_path(claims: dict[str, Any], name: str = "project_path", *, required: bool = True) -> str | None:
    expected = (f"group[/subgroup...]/project, at most {_PROJECT_PATH_MAX} characters; each part ASCII letters, "
                "digits, '_', '.' and '-', not starting with '-', at most 255")
    value = claims.get(name)
    # The length cap comes first so the pattern only ever sees bounded input.
    if isinstance(value, str) and len(value) > _PROJECT_PATH_MAX:
        raise Problem("malformed_token", f"claim {name!r} is not {expected}")
    return string_claim(claims, name, _PROJECT_PATH, expected, required=required)


def _runner_id(claims: dict[str, Any]) -> None:
    """GitLab sends runner_id as a JSON number; a string or boolean there is type confusion."""
    if "runner_id" not in claims:
        return
    value = claims["runner_id"]
    if type(value) is not int:
        raise Problem("malformed_token",
                      f"claim 'runner_id' is a JSON {json_type(value)}; expected a non-negative JSON integer")
    if not 0 <= value <= _MAX_RUNNER_ID:
        raise Problem("malformed_token", "claim 'runner_id' is not a non-negative 64-bit integer")


# A GitLab publisher's fields as the admin API takes them; each description completes "it must be ...".
Namespace = text(NAMESPACE_RE, "a GitLab group path, e.g. my-group/sub-group (no part ending in .git or .atom)")
ProjectName = text(PROJECT_RE, "a GitLab project path name (not ending in .git or .atom)")
CiFile = text(CI_FILE_RE, "the relative path of the CI configuration in the project, e.g. .gitlab-ci.yml or "
                          "ci/release.yml")
Environments = text_list(ENVIRONMENT_RE, "a GitLab environment name: letters, digits, spaces and - _ / $ { } . , "
                                         "at most 255 characters, not starting or ending with '/' or a space", 20)


class GitLabPublisherInput(PublisherInput, tag="gitlab", kw_only=True):
    """A GitLab CI/CD publisher: the project by path (and, optionally, by its immutable ids) and the CI
    configuration file; environment names are case-sensitive, as GitLab compares them."""

    namespace: Namespace
    namespace_id: NumericId | None = None
    project: ProjectName
    project_id: NumericId | None = None
    workflow_filepath: CiFile
    environments: Environments = []
    require_protected_ref: Flag = False

    def identity_fields(self) -> IdentityFields:
        return IdentityFields(owner=self.namespace, name=self.project, workflow=self.workflow_filepath,
                              owner_id=self.namespace_id, name_id=self.project_id,
                              environments=tuple(dict.fromkeys(self.environments)),
                              options={"require_protected_ref": self.require_protected_ref})


class GitLabProvider(Forge):
    name = "gitlab"
    public_issuer = "https://gitlab.com"
    key_hosts: tuple[str, ...] = ()
    fields = {
        "owner": "namespace",
        "owner_id": "namespace_id",
        "name": "project",
        "name_id": "project_id",
        "workflow": "workflow_filepath",
    }
    options = ("require_protected_ref",)
    conditions: tuple[str, ...] = ()
    issues_jti = True
    environments_ignore_case = False
    publisher_input = GitLabPublisherInput

    def identity(self, claims: dict[str, Any], issuer_url: str) -> Identity:
        if not isinstance(claims, dict):
            raise Problem("malformed_token", "the token payload is not a JSON object")
        project_path = _project_path(claims)
        assert project_path is not None
        namespace, _, project = project_path.rpartition("/")
        namespace_path = required_claim(claims, "namespace_path", TEXT_1K, PRINTABLE_1K)
        if namespace_path != namespace:
            raise Problem("malformed_token",
                          "claim 'namespace_path' does not equal the namespace part of claim 'project_path'")
        namespace_id = required_claim(claims, "namespace_id", ID, ID_TEXT)
        project_id = required_claim(claims, "project_id", ID, ID_TEXT)
        ci_config_ref_uri = required_claim(claims, "ci_config_ref_uri", TEXT_1K, PRINTABLE_1K)
        ref_path = required_claim(claims, "ref_path", TEXT_1K, PRINTABLE_1K)
        required_claim(claims, "ref", TEXT_1K, PRINTABLE_1K)
        ref_type = required_claim(claims, "ref_type", _WORD, _WORD_TEXT)
        sha = required_claim(claims, "sha", _SHA, _SHA_TEXT)
        ref_protected = required_claim(claims, "ref_protected", _BOOLEAN_STRING, _BOOLEAN_TEXT)
        pipeline_source = required_claim(claims, "pipeline_source", _WORD, _WORD_TEXT)
        optional = {
            claim: string_claim(claims, claim, pattern, expected, required=False) or None
            for claim, (pattern, expected) in _OPTIONAL.items()
        }
        optional.update({claim: _project_path(claims, claim, required=False) for claim in _PROJECT_PATH_CLAIMS})
        _runner_id(claims)
        parsed = parse_ci_config_ref_uri(ci_config_ref_uri)
        return Identity(
            provider=self.name,
            issuer=issuer_url,
            repository=project_path,
            owner=namespace,
            name=project,
            owner_id=namespace_id,
            repository_id=project_id,
            # The raw URI when it cannot be split, so a denial can still show
            # what the token carried.
            workflow=parsed.filepath if parsed is not None else ci_config_ref_uri,
            workflow_ref=ci_config_ref_uri,
            environment=optional["environment"],
            ref=ref_path,
            sha=sha,
            run_id=optional["pipeline_id"],
            actor=None,  # user_login is personal data
            event_name=pipeline_source,
            runner_environment=optional["runner_environment"],
            extra={
                "ref_protected": ref_protected,
                "ci_config_sha": optional["ci_config_sha"],
                "job_id": optional["job_id"],
                "environment_protected": optional["environment_protected"],
                "deployment_tier": optional["deployment_tier"],
                "ref_type": ref_type,
                **{claim: optional[claim] for claim in _OTHER_PROJECT_CLAIMS},
            },
        )

    def checks(self, identity: Identity, publisher: Publisher) -> list[CheckResult]:
        """Every row, in a fixed order, even after a failure, so explain and the
        denial hints can report all differences at once."""
        return [
            repository_match(identity, publisher, "project", "project_path"),
            pinned_id("namespace_id", identity.owner_id, publisher.owner_id,
                       "the group may have been deleted and its path re-registered by someone else"),
            pinned_id("project_id", identity.repository_id, publisher.name_id,
                       "the project may have been deleted and re-created under the same path"),
            _job_project(identity),
            *_ci_config(identity, publisher),
            _environment(identity, publisher),
            ref_patterns(identity, publisher, "ref_path"),
            _protected_ref(identity, publisher),
            hosted_runner(identity, publisher, GITLAB_HOSTED),
        ]


def _job_project(identity: Identity) -> CheckResult:
    """The job runs in the token's own project: never a merge request pipeline from a fork.

    For such a pipeline GitLab names the fork in project_* (what publishers are matched
    on) and the project the job runs in, with that project's CI/CD settings and
    secrets, in job_project_*. Neither may publish for the other: the fork's owner did
    not run the job, and the target project did not write the code. A token without
    job_* or source_* claims (older GitLab) is judged by project_* alone, as before.
    """
    differing = []
    for claim in _OTHER_PROJECT_CLAIMS:
        value = identity.extra.get(claim)
        expected = identity.repository_id if claim.endswith("_id") else identity.repository
        if value is not None and not (value == expected if claim.endswith("_id") else ascii_iequal(value, expected)):
            differing.append((claim, expected, value))
    if not differing:
        return CheckResult("job_project", "job_project_id", identity.repository_id,
                           identity.extra.get("job_project_id") or identity.repository_id, True)
    claim, expected, value = differing[0]
    shown = ", ".join(f"{name} {actual!r}" for name, _, actual in differing)
    return CheckResult(
        "job_project", claim, expected, value, False,
        note=(f"the token's project is {identity.repository!r} (id {identity.repository_id}) but it carries {shown}: "
              "a merge request pipeline from a fork, which never publishes; run the release pipeline in the "
              "project itself"))


def _ci_config(identity: Identity, publisher: Publisher) -> list[CheckResult]:
    """Four rows, one per part of `ci_config_ref_uri`, so a refusal names exactly the part that differed.

    Host: the issuer's own host[:port], so a configuration served by another
    instance never counts. Project: the token's `project_path` (the `project`
    row ties that to the publisher), so a configuration included from another
    project never counts. File: byte-exact (GitLab paths are case-sensitive).
    Ref: the pipeline's `ref_path` or commit `sha`, byte-exact.
    """
    uri = identity.workflow_ref
    host = issuer_host(identity.issuer)
    refs = [identity.ref, identity.sha]
    parsed = parse_ci_config_ref_uri(uri)
    if parsed is None:
        note = (f"ci_config_ref_uri {uri!r} is not <host>/<project path>//<file path>@<ref>; expected "
                f"{_expected_uri(host, identity.repository, publisher.workflow, identity.ref)!r}")
        return [
            CheckResult("ci_config_host", "ci_config_ref_uri", host, uri, False, note=note),
            CheckResult("ci_config_project", "ci_config_ref_uri", identity.repository, uri, False, note=note),
            CheckResult("workflow", "ci_config_ref_uri", publisher.workflow, uri, False, note=note),
            CheckResult("ci_config_ref", "ci_config_ref_uri", refs, uri, False, note=note),
        ]
    return [
        _ci_config_host(parsed, host),
        _ci_config_project(parsed, identity),
        _workflow(parsed, publisher),
        _ci_config_ref(parsed, refs),
    ]


def _expected_uri(host: str, project_path: str, filepath: str, ref: str) -> str:
    return f"{host}/{project_path}//{filepath}@{ref}"


def _ci_config_host(parsed: CiConfigRef, host: str) -> CheckResult:
    passed = ascii_iequal(parsed.host, host)
    note = None if passed else (
        f"the CI configuration was served by {parsed.host!r}, not by this issuer's host {host!r}")
    return CheckResult("ci_config_host", "ci_config_ref_uri", host, parsed.host, passed, note=note)


def _ci_config_project(parsed: CiConfigRef, identity: Identity) -> CheckResult:
    passed = ascii_iequal(parsed.project_path, identity.repository)
    note = None if passed else (
        f"the CI configuration comes from project {parsed.project_path!r}, not from the token's project "
        f"{identity.repository!r}; a configuration included from another project cannot publish")
    return CheckResult("ci_config_project", "ci_config_ref_uri", identity.repository, parsed.project_path, passed,
                       note=note)


def _workflow(parsed: CiConfigRef, publisher: Publisher) -> CheckResult:
    passed = parsed.filepath == publisher.workflow
    note = None if passed else (
        f"the CI configuration file is {parsed.filepath!r}; workflow_filepath must name it exactly, "
        "with its directory (file paths are case-sensitive)")
    return CheckResult("workflow", "ci_config_ref_uri", publisher.workflow, parsed.filepath, passed, note=note)


def _ci_config_ref(parsed: CiConfigRef, refs: list[str]) -> CheckResult:
    passed = parsed.ref in refs
    note = None if passed else (
        f"the CI configuration was read at {parsed.ref!r}, which is neither the pipeline's ref_path nor its sha")
    return CheckResult("ci_config_ref", "ci_config_ref_uri", refs, parsed.ref, passed, note=note)


def _environment(identity: Identity, publisher: Publisher) -> CheckResult:
    """Exact equality: GitLab environment names are case-sensitive, so `Production` is another environment."""
    if not publisher.environments:
        return CheckResult("environment", "environment", "any", identity.environment, True)
    env = identity.environment
    passed = env is not None and env in publisher.environments
    note = None
    if env is None:
        note = "the job must deploy to one of the publisher's environments (environment: in the CI configuration)"
    elif not passed and any(ascii_iequal(env, allowed) for allowed in publisher.environments):
        note = "differs only in case; GitLab environment names are case-sensitive"
    return CheckResult("environment", "environment", list(publisher.environments), env, passed, note=note)


def _protected_ref(identity: Identity, publisher: Publisher) -> CheckResult:
    """Only the exact string "true" counts; identity() already refused anything but "true"/"false"."""
    actual = identity.extra.get("ref_protected")
    if not publisher.require_protected_ref:
        return CheckResult("protected_ref", "ref_protected", "any", actual, True)
    passed = actual == PROTECTED
    note = None if passed else (
        "the publisher sets require_protected_ref; run the pipeline on a protected branch or tag")
    return CheckResult("protected_ref", "ref_protected", PROTECTED, actual, passed, note=note)
