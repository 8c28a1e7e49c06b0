"""CircleCI: the typed identity of a verified OIDC token and its check table.

CircleCI signs a job's tokens with an issuer of the job's organization,
`https://oidc.circleci.com/org/<organization-id>`, or, when the job asks for it
(`circleci run oidc get --root-issuer`), with the root issuer
`https://oidc.circleci.com` that serves every organization. Both are registered
as issuers of kind "circleci"; under the root issuer the `org-id` claim alone
says which organization the job belongs to, so it is compared in every case.

The organization and project are named by UUIDs only (no names in the token),
so they are the publisher's owner and name and, being immutable, its ids too:
there is nothing to bind on a first exchange. UUIDs compare lower-cased.

Claims are read strictly, as for GitHub and GitLab: every string claim must be
plain ASCII of a known shape, `context-ids` a JSON array of UUID strings and
`ssh-rerun` a JSON boolean; anything else is `malformed_token` naming the claim,
never echoing its value. `sub` is not read (it holds the user's id and an
unescaped VCS origin); no personal claim reaches the identity.
"""

from __future__ import annotations

import operator
import re
from typing import Any
from urllib.parse import urlsplit

from tpx.core import inputs
from tpx.core.bodies import text, text_list
from tpx.core.errors import Problem
from tpx.core.jose.strict_json import json_type
from tpx.core.providers.base import CheckResult, Identity, IdentityFields, Publisher, PublisherInput
from tpx.core.providers.checks import condition, ref_patterns
from tpx.core.providers.claims import (
    PRINTABLE_1K_OR_EMPTY, TEXT_1K_OR_EMPTY, UUID, UUID_RE, UUID_TEXT, required_claim, string_claim, uuid_claim,
)
from tpx.core.providers.matching import ascii_iequal, ascii_lower

ROOT_ISSUER = "https://oidc.circleci.com"

_PREFIX = "oidc.circleci.com/"
ORG_ID = _PREFIX + "org-id"
PROJECT_ID = _PREFIX + "project-id"
PIPELINE_DEFINITION_ID = _PREFIX + "pipeline-definition-id"
PIPELINE_ID = _PREFIX + "pipeline-id"
WORKFLOW_ID = _PREFIX + "workflow-id"
JOB_ID = _PREFIX + "job-id"
CONTEXT_IDS = _PREFIX + "context-ids"
VCS_ORIGIN = _PREFIX + "vcs-origin"
VCS_REF = _PREFIX + "vcs-ref"
SSH_RERUN = _PREFIX + "ssh-rerun"

# The organization an issuer URL names: the last path segments /org/<uuid> (cloud and CircleCI server alike).
_ISSUER_ORG = re.compile(rf"/org/({UUID})\Z")
# A repository without a scheme, as the vcs-origin claim spells it: host[:port]/path, e.g. github.com/acme/widgets.
VCS_ORIGIN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}(?::[0-9]{1,5})?(?:/[A-Za-z0-9_.~-]{1,255}){1,20}")
# The token's vcs-origin: printable ASCII without spaces (its shape is CircleCI's; equality decides).
_VCS_ORIGIN_CLAIM = re.compile(r"[\x21-\x7e]{0,1024}")
_VCS_ORIGIN_TEXT = "printable ASCII without spaces or control characters, at most 1024 characters"
# A full git ref, as the vcs-ref claim spells it: refs/heads/main, refs/tags/v1.2.3.
VCS_REF_RE = re.compile(r"refs/[\x21-\x7e]{1,1019}")
MAX_CONTEXTS = 20
# Bounds the work a token can cause; CircleCI documents one context per job.
_MAX_TOKEN_CONTEXTS = 100


def issuer_organization(issuer: str) -> str | None:
    """The organization id (lower case) an issuer URL ends with, as in https://oidc.circleci.com/org/<id>;
    None for the root issuer (and any other URL, such as a loopback test issuer)."""
    match = _ISSUER_ORG.search(urlsplit(issuer).path)
    return ascii_lower(match.group(1)) if match is not None else None


def _context_ids(claims: dict[str, Any]) -> tuple[str, ...] | None:
    """The contexts the job uses: a JSON array of UUID strings (possibly empty); None when absent.

    An absent claim can never satisfy a publisher that lists contexts, so reading it as
    "no contexts" would be safe as well; None keeps the difference visible in denials."""
    if CONTEXT_IDS not in claims:
        return None
    value = claims[CONTEXT_IDS]
    expected = f"a JSON array of at most {_MAX_TOKEN_CONTEXTS} strings, each {UUID_TEXT}"
    if not isinstance(value, list):
        raise Problem("malformed_token", f"claim {CONTEXT_IDS!r} is a JSON {json_type(value)}; expected {expected}")
    if len(value) > _MAX_TOKEN_CONTEXTS:
        raise Problem("malformed_token", f"claim {CONTEXT_IDS!r} has {len(value)} entries; expected {expected}")
    for item in value:
        if not isinstance(item, str):
            raise Problem("malformed_token",
                          f"claim {CONTEXT_IDS!r} holds a JSON {json_type(item)}; expected {expected}")
        if UUID_RE.fullmatch(item) is None:
            raise Problem("malformed_token", f"claim {CONTEXT_IDS!r} holds an entry that is not {UUID_TEXT}")
    return tuple(ascii_lower(item) for item in value)


def _ssh_rerun(claims: dict[str, Any]) -> bool:
    """A JSON boolean, always present: true means a person has a shell in the job (and its token).

    Missing, or a string such as "false", is a malformed token rather than "not a rerun": type
    confusion is how this check fails elsewhere (a policy comparing with the string "true" never
    sees the JSON true CircleCI sends as a rerun)."""
    if SSH_RERUN not in claims:
        raise Problem("malformed_token", f"the token has no {SSH_RERUN!r} claim; expected a JSON boolean")
    value = claims[SSH_RERUN]
    if type(value) is not bool:
        raise Problem("malformed_token",
                      f"claim {SSH_RERUN!r} is a JSON {json_type(value)}; expected a JSON boolean (true or false)")
    return value


# A CircleCI publisher's fields as the admin API takes them; each description completes "it must be ...".
Uuid = text(UUID_RE, UUID_TEXT)
ContextIds = text_list(UUID_RE, f"{UUID_TEXT}: a context the job must use (Organization Settings > Contexts); "
                                "the job must use every listed context", MAX_CONTEXTS)
VcsOrigin = text(VCS_ORIGIN_RE, "the repository the pipeline must be triggered from, as CircleCI's vcs-origin claim "
                                "names it: host/path without a scheme, e.g. github.com/acme/widgets (compared "
                                "ignoring case)")
VcsRef = text(VCS_REF_RE, "the full git ref the pipeline must be triggered on, e.g. refs/heads/main or "
                          "refs/tags/v1.2.3 (compared exactly)")
IssuerUrl = text(r"[\x21-\x7e]{1,1024}", "the URL of a registered circleci issuer; default: the organization's "
                                         "own issuer, https://oidc.circleci.com/org/<organization_id>; the root "
                                         "issuer https://oidc.circleci.com (circleci run oidc get --root-issuer) "
                                         "is another choice")


class CircleCIPublisherInput(PublisherInput, tag="circleci", kw_only=True):
    """A CircleCI publisher: the organization and project by id, and optionally the pipeline definition,
    the contexts, and the repository and ref the pipeline must come from. CircleCI tokens do not say
    whether the job ran on a self-hosted runner, so allow_self_hosted_runners changes nothing here."""

    issuer: IssuerUrl | None = None
    organization_id: Uuid
    project_id: Uuid
    pipeline_definition_id: Uuid | None = None
    context_ids: ContextIds = []
    vcs_origin: VcsOrigin | None = None
    vcs_ref: VcsRef | None = None

    def identity_fields(self) -> IdentityFields:
        organization = ascii_lower(self.organization_id)
        project = ascii_lower(self.project_id)
        named = issuer_organization(self.issuer) if self.issuer is not None else None
        if named is not None and named != organization:
            raise inputs.invalid("invalid_publisher", "issuer",
                                 f"{self.issuer!r} is the issuer of organization {named}, not of organization_id "
                                 f"{organization}; leave issuer out to use {ROOT_ISSUER}/org/{organization}")
        contexts = sorted({ascii_lower(context) for context in self.context_ids})
        return IdentityFields(
            owner=organization, name=project, workflow="",
            # The ids are the names: pinned from the start, nothing to bind.
            owner_id=organization, name_id=project,
            conditions={
                "pipeline_definition_id": ascii_lower(self.pipeline_definition_id)
                if self.pipeline_definition_id is not None else None,
                "context_ids": contexts or None,
                "vcs_origin": ascii_lower(self.vcs_origin) if self.vcs_origin is not None else None,
                "vcs_ref": self.vcs_ref,
            })


class CircleCIProvider:
    name = "circleci"
    # The root issuer; a publisher's default is its organization's own issuer (default_issuer).
    public_issuer = ROOT_ISSUER
    key_hosts: tuple[str, ...] = ()
    # The ids are the names. The token's pipeline definition is the identity's workflow (what a repository
    # revocation's `workflow` selects); a publisher pins it as a condition, so its own workflow is "".
    fields = {
        "owner": "organization_id",
        "owner_id": "organization_id",
        "name": "project_id",
        "name_id": "project_id",
        "workflow": "pipeline_definition_id",
    }
    options: tuple[str, ...] = ()
    conditions = ("pipeline_definition_id", "context_ids", "vcs_origin", "vcs_ref")
    issues_jti = False
    environments_ignore_case = False
    publisher_input = CircleCIPublisherInput

    def identity(self, claims: dict[str, Any], issuer_url: str) -> Identity:
        if not isinstance(claims, dict):
            raise Problem("malformed_token", "the token payload is not a JSON object")
        organization = ascii_lower(required_claim(claims, ORG_ID, UUID_RE, UUID_TEXT))
        project = ascii_lower(required_claim(claims, PROJECT_ID, UUID_RE, UUID_TEXT))
        pipeline_definition = uuid_claim(claims, PIPELINE_DEFINITION_ID, required=False)
        pipeline = uuid_claim(claims, PIPELINE_ID, required=False)
        workflow = uuid_claim(claims, WORKFLOW_ID, required=False)
        job = uuid_claim(claims, JOB_ID, required=False)
        contexts = _context_ids(claims)
        # Absent for pipelines triggered by a custom webhook; empty means absent, as for other providers.
        vcs_origin = string_claim(claims, VCS_ORIGIN, _VCS_ORIGIN_CLAIM, _VCS_ORIGIN_TEXT, required=False) or None
        vcs_ref = string_claim(claims, VCS_REF, TEXT_1K_OR_EMPTY, PRINTABLE_1K_OR_EMPTY, required=False) or None
        ssh_rerun = _ssh_rerun(claims)
        return Identity(
            provider=self.name,
            issuer=issuer_url,
            repository=f"{organization}/{project}",
            owner=organization,
            name=project,
            owner_id=organization,
            repository_id=project,
            workflow=pipeline_definition or "",
            workflow_ref="",
            environment=None,
            ref=vcs_ref or "",
            sha="",  # CircleCI tokens name no commit
            # The workflow id: the one run id CircleCI shows in its URLs and serves at /api/v2/workflow/<id>.
            run_id=workflow,
            actor=None,  # sub's user id is personal data and is not read
            event_name=None,
            runner_environment=None,
            extra={
                "pipeline_definition_id": pipeline_definition,
                "context_ids": contexts,
                "vcs_origin": vcs_origin,
                "vcs_ref": vcs_ref,
                "ssh_rerun": ssh_rerun,
                "pipeline_id": pipeline,
                "job_id": job,
            },
        )

    def checks(self, identity: Identity, publisher: Publisher) -> list[CheckResult]:
        """Every row, in a fixed order, even after a failure, so explain and the
        denial hints can report all differences at once."""
        return [
            _project(identity, publisher),
            _issuer_organization(identity, publisher),
            _ssh_rerun_row(identity),
            _pipeline_definition(identity, publisher),
            _contexts(identity, publisher),
            _vcs_origin(identity, publisher),
            _vcs_ref(identity, publisher),
            _ref(identity, publisher),
        ]

    def bindings(self, identity: Identity, publisher: Publisher) -> dict[str, str]:
        """Nothing: the organization and project ids are the publisher's names, immutable and set at creation."""
        return {}

    def default_issuer(self, fields: IdentityFields) -> str:
        return f"{ROOT_ISSUER}/org/{fields.owner}"

    def view_fields(self, publisher: Publisher) -> dict[str, Any]:
        conditions = publisher.conditions
        return {
            "organization_id": publisher.owner,
            "project_id": publisher.name,
            "pipeline_definition_id": conditions.get("pipeline_definition_id"),
            "context_ids": list(conditions.get("context_ids") or []),
            "vcs_origin": conditions.get("vcs_origin"),
            "vcs_ref": conditions.get("vcs_ref"),
        }

    def publisher_hint(self, identity: Identity) -> dict[str, Any]:
        """The ids, and the pipeline definition and repository when the token names them: pinning those
        is what keeps another pipeline of the project (or a fork's build) from publishing."""
        hint: dict[str, Any] = {"organization_id": identity.owner, "project_id": identity.name}
        for field in ("pipeline_definition_id", "vcs_origin"):
            if identity.extra.get(field) is not None:
                hint[field] = identity.extra[field]
        return hint


def _project(identity: Identity, publisher: Publisher) -> CheckResult:
    """Organization and project ids, lower-cased (the candidates were loaded by them already)."""
    same_org = ascii_iequal(identity.owner, publisher.owner)
    same_project = ascii_iequal(identity.name, publisher.name)
    note = None
    if not same_org:
        note = f"the token's org-id is {identity.owner}; the publisher names organization {publisher.owner}"
    elif not same_project:
        note = f"the token's project-id is {identity.name}; the publisher names project {publisher.name}"
    return CheckResult("project", PROJECT_ID, publisher.repository, identity.repository, same_org and same_project,
                       note=note)


def _issuer_organization(identity: Identity, publisher: Publisher) -> CheckResult:
    """The token's org-id is the organization its issuer URL names, and the publisher's.

    A per-organization issuer signs only its organization's jobs; a token whose org-id
    differs was not minted the way CircleCI documents, and never counts. The root issuer
    (and a loopback test issuer) names no organization: the org-id claim alone decides,
    compared with the publisher's organization.
    """
    organization = identity.owner
    named = issuer_organization(identity.issuer)
    if named is None:
        passed = ascii_iequal(organization, publisher.owner)
        note = (f"the issuer {identity.issuer} names no organization; the token's org-id decides"
                if passed else f"the token's org-id is {organization}, not the publisher's organization "
                               f"{publisher.owner}")
        return CheckResult("issuer_organization", ORG_ID, ascii_lower(publisher.owner), organization, passed,
                           note=note)
    note = None
    if organization != named:
        note = (f"the token's org-id {organization} is not the organization {named} its issuer {identity.issuer} "
                "belongs to; an organization's issuer never speaks for another")
    elif not ascii_iequal(publisher.owner, named):
        note = (f"the publisher names organization {publisher.owner} but uses the issuer of organization {named}; "
                f"register it with the issuer {ROOT_ISSUER}/org/{publisher.owner}")
    return CheckResult("issuer_organization", ORG_ID, named, organization, note is None, note=note)


def _ssh_rerun_row(identity: Identity) -> CheckResult:
    rerun = identity.extra.get("ssh_rerun")
    passed = rerun is False
    note = None if passed else (
        "the job was started with \"Rerun job with SSH\": a person with a shell in the job holds its token, so it "
        "never publishes; rerun the workflow without SSH")
    return CheckResult("ssh_rerun", SSH_RERUN, False, rerun, passed, note=note)


def _pipeline_definition(identity: Identity, publisher: Publisher) -> CheckResult:
    """Only the publisher's pipeline definition (its config source and triggers), when it names one."""
    return condition(
        "pipeline_definition", PIPELINE_DEFINITION_ID, publisher.conditions.get("pipeline_definition_id"),
        identity.extra.get("pipeline_definition_id"), lambda actual, pinned: actual == ascii_lower(pinned),
        absent="the token names no pipeline definition, and the publisher pins one",
        differs=lambda: ("the job ran in another pipeline definition of the project (Project Settings > Project "
                         "Setup lists their ids)"))


def _contexts(identity: Identity, publisher: Publisher) -> CheckResult:
    """Every listed context must be among the job's contexts (more are fine).

    "All listed" rather than "any one": a context can carry its own restrictions (security
    groups, expression rules on branches), and a publisher that lists two means both apply.
    """
    used = identity.extra.get("context_ids")
    actual = list(used) if used is not None else None
    pinned = list(publisher.conditions.get("context_ids") or [])
    if not pinned:
        return CheckResult("contexts", CONTEXT_IDS, "any", actual, True)
    missing = [context for context in pinned if context not in (used or ())]
    note = None
    if missing:
        note = ("the job must use every context the publisher lists (context: in the workflow's job); it does not "
                f"use {', '.join(missing)}")
    return CheckResult("contexts", CONTEXT_IDS, "all of " + ", ".join(pinned), actual, not missing, note=note)


def _vcs_origin(identity: Identity, publisher: Publisher) -> CheckResult:
    """The repository the pipeline was triggered from, ignoring ASCII case; a fork's build names the fork."""
    return condition(
        "vcs_origin", VCS_ORIGIN, publisher.conditions.get("vcs_origin"), identity.extra.get("vcs_origin"),
        ascii_iequal,
        absent="the pipeline names no repository (a pipeline triggered by a custom webhook carries no vcs-origin)",
        differs=lambda: "the pipeline was triggered from another repository (or a fork); origins have no scheme")


def _vcs_ref(identity: Identity, publisher: Publisher) -> CheckResult:
    actual, pinned = identity.extra.get("vcs_ref"), publisher.conditions.get("vcs_ref")
    return condition(
        "vcs_ref", VCS_REF, pinned, actual, operator.eq,
        absent="the pipeline names no ref (a pipeline triggered by a custom webhook carries no vcs-ref)",
        differs=lambda: ("differs only in case; git refs are case-sensitive" if ascii_iequal(actual, pinned)
                         else "the full ref must be equal, e.g. refs/heads/main or refs/tags/v1.2.3"))


def _ref(identity: Identity, publisher: Publisher) -> CheckResult:
    """The common ref patterns, on vcs-ref; a token without one matches no pattern but '*'."""
    result = ref_patterns(identity, publisher, VCS_REF)
    if identity.extra.get("vcs_ref") is not None:
        return result
    note = None if result.passed or not publisher.ref_patterns else (
        "the pipeline names no ref (a pipeline triggered by a custom webhook carries no vcs-ref)")
    return CheckResult(result.check, result.claim, result.expected, None, result.passed, note=note)
