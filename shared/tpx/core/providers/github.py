"""GitHub Actions: the typed identity of a verified ID token and its check table.

Claim validation is deliberately narrower than what GitHub documents: every
value must be plain ASCII of a known shape before anything compares or folds
it, so look-alike Unicode, control characters and type confusion (an id sent as
a JSON number, a boolean where a string belongs) are refused as
`malformed_token` instead of reaching a comparison that might accept them.
"""

from __future__ import annotations

import re
from typing import Any

from tpx.core.bodies import text, text_list
from tpx.core.errors import Problem
from tpx.core.providers.base import CheckResult, Identity, IdentityFields, NumericId, Publisher, PublisherInput
from tpx.core.providers.checks import Forge, hosted_runner, pinned_id, ref_patterns, repository_match
from tpx.core.providers.claims import (
    ID, ID_TEXT, PRINTABLE_1K, PRINTABLE_1K_OR_EMPTY, PRINTABLE_255, PRINTABLE_255_OR_EMPTY, TEXT_1K,
    TEXT_1K_OR_EMPTY, TEXT_255, TEXT_255_OR_EMPTY, required_claim, string_claim,
)
from tpx.core.providers.matching import FORBIDDEN_TRIGGER, ascii_iequal
from tpx.core.providers.workflow_ref import expected_workflow_ref, workflow_filename

# Triggers that run with the base repository's privileges on behalf of code or
# events someone outside the repository controls (a fork's pull request, a
# workflow a fork's pull request triggered); they must never publish.
FORBIDDEN_EVENTS = frozenset({"pull_request_target", "workflow_run"})

GITHUB_HOSTED = "github-hosted"

# GitHub's own name rules, for the `repository` claim and for a publisher's fields alike.
_OWNER = r"[A-Za-z0-9][A-Za-z0-9-]{0,38}"
_NAME = r"[A-Za-z0-9._-]{1,100}"
OWNER_RE = re.compile(_OWNER)
NAME_RE = re.compile(_NAME)
_REPOSITORY = re.compile(rf"(?P<owner>{_OWNER})/(?P<name>{_NAME})")
# A file in .github/workflows: no directory, no surrounding space (such a publisher could never match).
WORKFLOW_FILE_RE = re.compile(r"[A-Za-z0-9._-][A-Za-z0-9._ -]{0,199}\.ya?ml")
# A reusable workflow a publisher may require the job to run, as `job_workflow_ref` names it:
# owner/repo/.github/workflows/file.yml, optionally @ the ref or commit it must be called at.
_CALLED_PATH = rf"{_OWNER}/{_NAME}/\.github/workflows/{WORKFLOW_FILE_RE.pattern}"
CALLED_WORKFLOW_RE = re.compile(rf"{_CALLED_PATH}(?:@[\x21-\x7e]{{1,255}})?")
# GitHub's rules for environment names, within the printable ASCII the `environment` claim may hold:
# at most 255 characters, no leading or trailing space, none of ' " ` , ; \
_ENVIRONMENT_CHAR = r"\x21\x23-\x26\x28-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x5f\x61-\x7e"
ENVIRONMENT_RE = re.compile(rf"[{_ENVIRONMENT_CHAR}](?:[ {_ENVIRONMENT_CHAR}]{{0,253}}[{_ENVIRONMENT_CHAR}])?")
_EVENT = re.compile(r"[a-z_]{1,64}")


# Optional claims: name -> (pattern, description). Empty means absent.
_OPTIONAL: dict[str, tuple[re.Pattern[str], str]] = {
    "environment": (TEXT_255_OR_EMPTY, PRINTABLE_255_OR_EMPTY),
    "run_id": (TEXT_255_OR_EMPTY, PRINTABLE_255_OR_EMPTY),
    "actor": (TEXT_255_OR_EMPTY, PRINTABLE_255_OR_EMPTY),
    "runner_environment": (TEXT_255_OR_EMPTY, PRINTABLE_255_OR_EMPTY),
    "job_workflow_ref": (TEXT_1K_OR_EMPTY, PRINTABLE_1K_OR_EMPTY),
    "ref_type": (TEXT_255_OR_EMPTY, PRINTABLE_255_OR_EMPTY),
    "ref_protected": (TEXT_255_OR_EMPTY, PRINTABLE_255_OR_EMPTY),
    "repository_visibility": (TEXT_255_OR_EMPTY, PRINTABLE_255_OR_EMPTY),
    "run_attempt": (TEXT_255_OR_EMPTY, PRINTABLE_255_OR_EMPTY),
}
_EXTRA_CLAIMS = ("job_workflow_ref", "ref_type", "ref_protected", "repository_visibility", "run_attempt")


# A GitHub publisher's fields as the admin API takes them; each description completes "it must be ...".
Owner = text(OWNER_RE, "a GitHub user or organisation name")
RepositoryName = text(NAME_RE, "a GitHub repository name")
WorkflowFile = text(WORKFLOW_FILE_RE, "the file name of a workflow in .github/workflows, e.g. release.yml "
                                      "(no directory, no surrounding space)")
CalledWorkflow = text(CALLED_WORKFLOW_RE, "the reusable workflow the job must run, as the job_workflow_ref claim "
                                          "names it: owner/repo/.github/workflows/file.yml, optionally followed by "
                                          "@ and the ref or commit it must be called at (e.g. @refs/heads/main)")
Environments = text_list(ENVIRONMENT_RE, "a GitHub environment name: printable ASCII, at most 255 characters, "
                                         "no leading or trailing space, none of ' \" ` , ; \\", 20)


class GitHubPublisherInput(PublisherInput, tag="github", kw_only=True):
    """A GitHub Actions publisher: the repository by name (and, optionally, by its immutable ids) and the
    workflow file that publishes; environment names are compared ignoring case, as GitHub does."""

    repository_owner: Owner
    repository_owner_id: NumericId | None = None
    repository_name: RepositoryName
    repository_id: NumericId | None = None
    workflow_filename: WorkflowFile
    environments: Environments = []
    job_workflow_ref: CalledWorkflow | None = None

    def identity_fields(self) -> IdentityFields:
        return IdentityFields(owner=self.repository_owner, name=self.repository_name, workflow=self.workflow_filename,
                              owner_id=self.repository_owner_id, name_id=self.repository_id,
                              environments=tuple(dict.fromkeys(self.environments)),
                              conditions={"job_workflow_ref": self.job_workflow_ref})


class GitHubProvider(Forge):
    name = "github"
    public_issuer = "https://token.actions.githubusercontent.com"
    key_hosts: tuple[str, ...] = ()
    fields = {
        "owner": "repository_owner",
        "owner_id": "repository_owner_id",
        "name": "repository_name",
        "name_id": "repository_id",
        "workflow": "workflow_filename",
    }
    options: tuple[str, ...] = ()
    conditions = ("job_workflow_ref",)
    issues_jti = True
    environments_ignore_case = True
    publisher_input = GitHubPublisherInput

    def identity(self, claims: dict[str, Any], issuer_url: str) -> Identity:
        if not isinstance(claims, dict):
            raise Problem("malformed_token", "the token payload is not a JSON object")
        repository = required_claim(claims, "repository", _REPOSITORY,
                                    "owner/name (owner: ASCII letters, digits and '-', at most 39; "
                                    "name: ASCII letters, digits, '.', '_' and '-', at most 100)")
        owner, _, name = repository.partition("/")
        repository_owner = required_claim(claims, "repository_owner", TEXT_255, PRINTABLE_255)
        if repository_owner != owner:
            raise Problem("malformed_token",
                          "claim 'repository_owner' does not equal the owner part of claim 'repository'")
        owner_id = required_claim(claims, "repository_owner_id", ID, ID_TEXT)
        repository_id = required_claim(claims, "repository_id", ID, ID_TEXT)
        workflow_ref = required_claim(claims, "workflow_ref", TEXT_1K, PRINTABLE_1K)
        ref = required_claim(claims, "ref", TEXT_1K, PRINTABLE_1K)
        sha = required_claim(claims, "sha", TEXT_255, PRINTABLE_255)
        event_name = required_claim(claims, "event_name", _EVENT, "1 to 64 lower-case ASCII letters or '_'")
        optional = {
            claim: string_claim(claims, claim, pattern, expected, required=False) or None
            for claim, (pattern, expected) in _OPTIONAL.items()
        }
        filename = workflow_filename(workflow_ref, repository, ref)
        return Identity(
            provider=self.name,
            issuer=issuer_url,
            repository=repository,
            owner=owner,
            name=name,
            owner_id=owner_id,
            repository_id=repository_id,
            # The raw ref when it names no top-level workflow of this repository,
            # so a denial can still show what the token carried.
            workflow=filename if filename is not None else workflow_ref,
            workflow_ref=workflow_ref,
            environment=optional["environment"],
            ref=ref,
            sha=sha,
            run_id=optional["run_id"],
            actor=optional["actor"],
            event_name=event_name,
            runner_environment=optional["runner_environment"],
            extra={claim: optional[claim] for claim in _EXTRA_CLAIMS},
        )

    def checks(self, identity: Identity, publisher: Publisher) -> list[CheckResult]:
        """Every row, in a fixed order, even after a failure, so explain and the
        denial hints can report all differences at once."""
        return [
            repository_match(identity, publisher, "repository", "repository"),
            pinned_id("repository_owner_id", identity.owner_id, publisher.owner_id,
                       "the account may have been deleted and its name re-registered by someone else"),
            pinned_id("repository_id", identity.repository_id, publisher.name_id,
                       "the repository may have been deleted and re-created under the same name"),
            _workflow(identity, publisher),
            *_called_workflow(identity, publisher),
            _trigger(identity),
            _environment(identity, publisher),
            ref_patterns(identity, publisher, "ref"),
            hosted_runner(identity, publisher, GITHUB_HOSTED),
        ]


def _workflow(identity: Identity, publisher: Publisher) -> CheckResult:
    expected_ref = expected_workflow_ref(identity.repository, publisher.workflow, identity.ref)
    # Equality with a string built from the token's own repository and ref is
    # the decision; it cannot be fooled by '@' in the file name or the ref, and
    # a workflow of another repository (a reusable or cross-repository one)
    # never equals it. Requiring the anchored extraction to agree as well
    # refuses publishers configured with a path instead of a bare file name.
    filename = workflow_filename(identity.workflow_ref, identity.repository, identity.ref)
    passed = identity.workflow_ref == expected_ref and filename == publisher.workflow
    actual = filename if filename is not None else identity.workflow_ref
    if passed:
        note = f"workflow_ref is {expected_ref!r}"
    elif filename is None:
        note = (f"workflow_ref {identity.workflow_ref!r} is not a top-level workflow of {identity.repository} "
                f"at {identity.ref}; expected workflow_ref {expected_ref!r}")
    else:
        note = f"expected workflow_ref {expected_ref!r}; file names are case-sensitive"
    return CheckResult("workflow", "workflow_ref", publisher.workflow, actual, passed, note=note)


def _called_workflow(identity: Identity, publisher: Publisher) -> list[CheckResult]:
    """A publisher that names a reusable workflow publishes only from a job running it.

    `workflow_ref` (the `workflow` row) is the caller, which starts the run; `job_workflow_ref`
    is the workflow whose job asked for the token: a shared, reviewed release workflow when a
    caller uses one. Owner and repository compare ignoring case (GitHub routes them so); the file
    path and the ref exactly. No row without the field: nothing changes for other publishers.
    """
    pinned = publisher.conditions.get("job_workflow_ref")
    if pinned is None:
        return []
    actual = identity.extra.get("job_workflow_ref")
    note = None
    if actual is None:
        passed, note = False, "the token carries no job_workflow_ref claim"
    else:
        want_owner, want_repository, want_file, want_ref = _called_parts(pinned)
        owner, repository, file, ref = _called_parts(actual)
        passed = (ascii_iequal(owner, want_owner) and ascii_iequal(repository, want_repository) and file == want_file
                  and (want_ref is None or ref == want_ref))
        if not passed:
            note = ("the job must run the publisher's reusable workflow" + (" at that ref" if want_ref else "")
                    + "; owner and repository compare ignoring case, the path and the ref exactly")
    return [CheckResult("called_workflow", "job_workflow_ref", pinned, actual, passed, note=note)]


def _called_parts(value: str) -> tuple[str, str, str, str | None]:
    """owner, repository, the file's path in it, and the ref (None without one); names cannot hold '@', a ref can."""
    path, at, ref = value.partition("@")
    owner, _, rest = path.partition("/")
    repository, _, file = rest.partition("/")
    return owner, repository, file, ref if at else None


def _trigger(identity: Identity) -> CheckResult:
    event = identity.event_name
    passed = event is not None and event not in FORBIDDEN_EVENTS
    note = None
    if not passed:
        note = ("this trigger runs with the repository's privileges for events someone outside it controls"
                if event is not None else "the token names no triggering event")
    return CheckResult("trigger", "event_name", "not one of " + ", ".join(sorted(FORBIDDEN_EVENTS)), event,
                       passed, note=note, code=FORBIDDEN_TRIGGER)


def _environment(identity: Identity, publisher: Publisher) -> CheckResult:
    if not publisher.environments:
        return CheckResult("environment", "environment", "any", identity.environment, True)
    env = identity.environment
    passed = env is not None and any(ascii_iequal(env, allowed) for allowed in publisher.environments)
    note = None
    if env is None:
        note = "the job must run in one of the publisher's environments (jobs.<job>.environment)"
    elif passed and env not in publisher.environments:
        note = "matched ignoring case, as GitHub environment names are case-insensitive"
    return CheckResult("environment", "environment", list(publisher.environments), env, passed, note=note)
