"""Buildkite: the typed identity of a verified agent OIDC token and its check table.

Every Buildkite organization shares one issuer, `https://agent.buildkite.com`, so
the organization is part of every match: a publisher names its organization and
pipeline by slug (compared ASCII-case-insensitively), and tokens from any other
organization never become candidates.

Slugs can be renamed and then taken by someone else, so the immutable
`organization_id` and `pipeline_id` (UUIDs) are pinned as well. Buildkite puts
them in a token only when the job asks (`buildkite-agent oidc request-token
--claim organization_id,pipeline_id`); a publisher that pins them refuses a token
without them, and an unpinned publisher binds both on its first successful
exchange with a token that carries both (binding one without the other is never
attempted: the mint binds a publisher's two ids in one step).

Claim validation is narrower than what Buildkite documents, as for GitHub and
GitLab: every string must be plain ASCII of a known shape before anything
compares or folds it, `build_number` must be a JSON integer, and a wrong JSON
type anywhere is `malformed_token`. `build_tag` and `step_key` may be absent,
JSON null or "" (Buildkite's own spelling of null in AWS session tags): all three
mean "not set". Buildkite tokens carry no personal data (no user claims); the
agent-asserted `agent_tag:*`, `cluster_name` and `queue_key` claims are not read.
"""

from __future__ import annotations

import operator
import re
from msgspec.structs import replace
from typing import Any

from tpx.core.bodies import text
from tpx.core.errors import Problem
from tpx.core.jose.strict_json import json_type
from tpx.core.providers.base import CheckResult, Identity, IdentityFields, Publisher, PublisherInput
from tpx.core.providers.checks import condition, hosted_runner, ref_patterns, repository_match, unbound_ids
from tpx.core.providers.claims import UUID_RE, required_claim, string_claim, uuid_claim
from tpx.core.providers.matching import ascii_iequal

BUILDKITE_HOSTED = "buildkite-hosted"
REQUEST_IDS = "buildkite-agent oidc request-token --claim organization_id,pipeline_id"

# Buildkite's slug alphabet (letters, digits, '-'; Buildkite emits lower case, compared ignoring case).
SLUG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,254}")
_SLUG_TEXT = "a Buildkite slug: ASCII letters, digits and '-', not starting with '-', at most 255 characters"
# A git branch or tag name: printable ASCII without space, short enough that refs/heads/<branch> and
# refs/tags/<tag> stay within the 255 characters git hosts allow for a ref.
_BRANCH = re.compile(r"[\x21-\x7e]{1,244}")
_TAG = re.compile(r"[\x21-\x7e]{1,245}")
_REF_TEXT = "printable ASCII without spaces or control characters, at most {} characters"
# Shown, never decided on (a commit may be named other than by its sha, e.g. HEAD).
_COMMIT = re.compile(r"[\x21-\x7e]{1,255}")
_COMMIT_TEXT = "printable ASCII without spaces or control characters, 1 to 255 characters"
_STEP_KEY = re.compile(r"[\x20-\x7e]{1,255}")
_STEP_KEY_TEXT = "printable ASCII without control characters, at most 255 characters"
# A step key a publisher may require: as the claim, without surrounding space (such a key could never match).
STEP_KEY_RE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")
_SOURCE = re.compile(r"[a-z_]{1,64}")
_SOURCE_TEXT = "1 to 64 lower-case ASCII letters or '_'"
# Documented values are buildkite-hosted and self-hosted; another value of this shape is refused by the
# runner check (with a hint), not as a malformed token.
_RUNNER = re.compile(r"[a-z-]{1,64}")
_RUNNER_TEXT = "1 to 64 lower-case ASCII letters or '-'"
_MAX_BUILD_NUMBER = 2**63 - 1


def _unset_or_claim(claims: dict[str, Any], name: str, pattern: re.Pattern[str], expected: str) -> str | None:
    """A claim Buildkite leaves out, sends as JSON null, or (in AWS tags) as "" when it is not set."""
    value = claims.get(name)
    if value is None or value == "":
        return None
    return string_claim(claims, name, pattern, expected)


def _build_number(claims: dict[str, Any]) -> int:
    """Buildkite sends build_number as a JSON number; a string or boolean there is type confusion."""
    if "build_number" not in claims:
        raise Problem("malformed_token", "the token has no 'build_number' claim; expected a non-negative JSON integer")
    value = claims["build_number"]
    if type(value) is not int:
        raise Problem("malformed_token",
                      f"claim 'build_number' is a JSON {json_type(value)}; expected a non-negative JSON integer")
    if not 0 <= value <= _MAX_BUILD_NUMBER:
        raise Problem("malformed_token", "claim 'build_number' is not a non-negative 64-bit integer")
    return value


# A Buildkite publisher's fields as the admin API takes them; each description completes "it must be ...".
Slug = text(SLUG_RE, "a Buildkite slug as in the pipeline's URL (buildkite.com/<organization>/<pipeline>): "
                     "ASCII letters, digits and '-', not starting with '-', at most 255 characters")
BuildkiteId = text(UUID_RE, "a UUID as Buildkite shows it (8-4-4-4-12 hex digits), e.g. "
                            '"0184990a-477b-4fa8-9968-496074483c77"')
StepKey = text(STEP_KEY_RE, "the key of the pipeline step that publishes (its `key:` in pipeline.yml): printable "
                            "ASCII, at most 255 characters, no leading or trailing space")


class BuildkitePublisherInput(PublisherInput, tag="buildkite", kw_only=True):
    """A Buildkite publisher: the pipeline by organization and pipeline slug (and, optionally, by their
    immutable UUIDs, otherwise bound on the first exchange whose token carries them), optionally one step."""

    organization_slug: Slug
    organization_id: BuildkiteId | None = None
    pipeline_slug: Slug
    pipeline_id: BuildkiteId | None = None
    step_key: StepKey | None = None

    def identity_fields(self) -> IdentityFields:
        return IdentityFields(
            owner=self.organization_slug, name=self.pipeline_slug, workflow="",
            owner_id=self.organization_id.lower() if self.organization_id is not None else None,
            name_id=self.pipeline_id.lower() if self.pipeline_id is not None else None,
            conditions={"step_key": self.step_key})


class BuildkiteProvider:
    name = "buildkite"
    public_issuer = "https://agent.buildkite.com"
    key_hosts: tuple[str, ...] = ()
    fields = {
        "owner": "organization_slug",
        "owner_id": "organization_id",
        "name": "pipeline_slug",
        "name_id": "pipeline_id",
    }
    options: tuple[str, ...] = ()
    conditions = ("step_key",)
    # Buildkite tokens have carried a jti since January 2025 (docs/fixtures/buildkite-id-token.md).
    issues_jti = True
    # Buildkite has no deployment environments; publishers have none.
    environments_ignore_case = False
    publisher_input = BuildkitePublisherInput

    def identity(self, claims: dict[str, Any], issuer_url: str) -> Identity:
        if not isinstance(claims, dict):
            raise Problem("malformed_token", "the token payload is not a JSON object")
        organization = required_claim(claims, "organization_slug", SLUG_RE, _SLUG_TEXT)
        pipeline = required_claim(claims, "pipeline_slug", SLUG_RE, _SLUG_TEXT)
        organization_id = uuid_claim(claims, "organization_id", required=False)
        pipeline_id = uuid_claim(claims, "pipeline_id", required=False)
        build_number = _build_number(claims)
        branch = required_claim(claims, "build_branch", _BRANCH, _REF_TEXT.format(244))
        tag = _unset_or_claim(claims, "build_tag", _TAG, _REF_TEXT.format(245))
        commit = required_claim(claims, "build_commit", _COMMIT, _COMMIT_TEXT)
        step_key = _unset_or_claim(claims, "step_key", _STEP_KEY, _STEP_KEY_TEXT)
        job_id = uuid_claim(claims, "job_id", required=True)
        agent_id = uuid_claim(claims, "agent_id", required=True)
        source = required_claim(claims, "build_source", _SOURCE, _SOURCE_TEXT)
        runner = string_claim(claims, "runner_environment", _RUNNER, _RUNNER_TEXT, required=False)
        # The ref Buildkite itself puts in the default `sub`: the tag if the build has one, else the branch.
        ref = f"refs/tags/{tag}" if tag is not None else f"refs/heads/{branch}"
        repository = f"{organization}/{pipeline}"
        return Identity(
            provider=self.name,
            issuer=issuer_url,
            repository=repository,
            owner=organization,
            name=pipeline,
            # None when the job did not ask for the ids: nothing to compare, nothing to bind.
            owner_id=organization_id,  # type: ignore[arg-type]
            repository_id=pipeline_id,  # type: ignore[arg-type]
            workflow="",  # a Buildkite pipeline has no workflow file of its own
            workflow_ref=f"{repository}@{ref}",
            environment=None,
            ref=ref,
            sha=commit,
            # The build (buildkite.com/<organization>/<pipeline>/builds/<number>), as GitHub's run and
            # GitLab's pipeline; the job is in `extra`.
            run_id=str(build_number),
            actor=None,  # Buildkite tokens name no user
            event_name=source,
            runner_environment=runner,
            extra={
                "build_number": build_number,
                "build_branch": branch,
                "build_tag": tag,
                "step_key": step_key,
                "job_id": job_id,
                "agent_id": agent_id,
            },
        )

    def checks(self, identity: Identity, publisher: Publisher) -> list[CheckResult]:
        """Every row, in a fixed order, even after a failure, so explain and the
        denial hints can report all differences at once."""
        return [
            repository_match(identity, publisher, "pipeline", "organization_slug/pipeline_slug"),
            _pinned_id("organization_id", identity.owner_id, publisher.owner_id, _carries_both(identity),
                       "the organization may have been deleted and its slug taken by another organization"),
            _pinned_id("pipeline_id", identity.repository_id, publisher.name_id, _carries_both(identity),
                       "the pipeline may have been deleted and re-created (or its slug taken) with the same slug"),
            _step_key(identity, publisher),
            _trigger(identity),
            _ref(identity, publisher),
            _runner(identity, publisher),
        ]

    def bindings(self, identity: Identity, publisher: Publisher) -> dict[str, str]:
        """The ids the publisher does not pin yet, only from a token that carries both (see the module
        docstring); a token without them binds nothing and the publisher stays unpinned."""
        return unbound_ids(identity, publisher) if _carries_both(identity) else {}

    def default_issuer(self, fields: IdentityFields) -> str:
        return self.public_issuer

    def view_fields(self, publisher: Publisher) -> dict[str, Any]:
        return {
            "organization_slug": publisher.owner,
            "organization_id": publisher.owner_id,
            "pipeline_slug": publisher.name,
            "pipeline_id": publisher.name_id,
            "step_key": publisher.conditions.get("step_key"),
        }

    def publisher_hint(self, identity: Identity) -> dict[str, Any]:
        """The slugs, and the ids when the token carries them, so a publisher created from the hint is
        pinned from the start."""
        hint: dict[str, Any] = {"organization_slug": identity.owner, "pipeline_slug": identity.name}
        if identity.owner_id is not None:
            hint["organization_id"] = identity.owner_id
        if identity.repository_id is not None:
            hint["pipeline_id"] = identity.repository_id
        return hint


def _carries_both(identity: Identity) -> bool:
    return identity.owner_id is not None and identity.repository_id is not None


def _pinned_id(claim: str, actual: str | None, pinned: str | None, bindable: bool, resurrection: str) -> CheckResult:
    """Slugs can be renamed and re-registered; the UUIDs cannot. Once pinned, the token must carry the
    same id; before that, the row passes and says whether this exchange would bind it."""
    if pinned is None:
        if actual is None:
            note = (f"not pinned, and the token carries no {claim} to bind; request the ids with `{REQUEST_IDS}` "
                    "(or set them on the publisher) so that a renamed or re-registered slug cannot publish")
        elif not bindable:
            note = (f"not pinned; the token carries {claim} {actual} but not both ids, so nothing is bound; "
                    f"request both with `{REQUEST_IDS}`")
        else:
            note = f"not pinned yet; bound to {actual} on the first successful exchange"
        return CheckResult(claim, claim, None, actual, True, note=note)
    if actual is None:
        return CheckResult(claim, claim, pinned, None, False,
                           note=f"the publisher is pinned to {claim} {pinned} but the token carries no {claim} claim; "
                                f"request it with `{REQUEST_IDS}`")
    if actual == pinned:
        return CheckResult(claim, claim, pinned, actual, True)
    return CheckResult(claim, claim, pinned, actual, False,
                       note=f"the publisher is pinned to id {pinned} but the token carries {actual}; {resurrection}")


def _step_key(identity: Identity, publisher: Publisher) -> CheckResult:
    """Exact equality: Buildkite step keys are case-sensitive (depends_on names them exactly)."""
    actual, wanted = identity.extra.get("step_key"), publisher.conditions.get("step_key")
    return condition(
        "step_key", "step_key", wanted, actual, operator.eq,
        absent=f"the step that requests the token has no key; give it `key: {wanted}` in the pipeline",
        differs=lambda: "step keys compare exactly" + (", and this one differs only in case"
                                                       if ascii_iequal(actual, wanted)
                                                       else "; only the step with the publisher's key may publish"))


def _trigger(identity: Identity) -> CheckResult:
    """Shown, never refused: every build source (ui, api, webhook, trigger_job, schedule) starts a build of
    the pipeline's own configuration; who may start one is Buildkite's permission to decide."""
    return CheckResult("trigger", "build_source", "any", identity.event_name, True)


def _ref(identity: Identity, publisher: Publisher) -> CheckResult:
    """`ref_patterns` against refs/tags/<build_tag> when the build has a tag, else refs/heads/<build_branch>."""
    claim = "build_tag" if identity.extra.get("build_tag") is not None else "build_branch"
    result = ref_patterns(identity, publisher, claim)
    if result.passed:
        return result
    return replace(result, note=("the ref is refs/tags/<build_tag> when the build has a tag, else "
                                 "refs/heads/<build_branch>; patterns compare case-sensitively"))


def _runner(identity: Identity, publisher: Publisher) -> CheckResult:
    result = hosted_runner(identity, publisher, BUILDKITE_HOSTED)
    if result.passed:
        return result
    return replace(result, note=("only Buildkite hosted agents publish unless the publisher sets "
                                 "allow_self_hosted_runners; agents you run yourself report 'self-hosted' (most "
                                 "Buildkite agents are), so set it if this pipeline's agents are yours"))
