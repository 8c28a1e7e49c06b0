"""Table tests for the Buildkite provider: strict identity building, the check table (the Buildkite
conformance table), pinning and binding of the organization and pipeline UUIDs, the admin input, the
event schemas, and the denials built from it."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import pytest
from msgspec.structs import asdict

from tpx.core.errors import Problem
from tpx.core.events import builders, schemas
from tpx.core.events import types as event_types
from tpx.core.events.cloudevents import to_cloudevent
from tpx.core.events.types import Event
from tpx.core.providers import PROVIDERS, get_provider
from tpx.core.providers.base import Identity, Publisher
from tpx.core.providers.buildkite import BuildkiteProvider
from tpx.core.providers.matching import denial, evaluate
from tpx.core.publishers import identity_key, publisher_input, publisher_json
from tests.support.buildkite_claims import COMMIT, OMIT, buildkite_claims
from tests.support.paths import ROOT
from tests.support.check_table import CheckTable

ISSUER = "https://agent.buildkite.com"
LOOPBACK = "http://127.0.0.1:41234"
ORG_ID = "0184990a-477b-4fa8-9968-496074483c77"
PIPE_ID = "0184990a-4782-42b5-afc1-16715b10b1a0"
JOB_ID = "019b7a3b-9d10-4f2e-8c7a-61b5e4d3c2a1"
AGENT_ID = "019b7a3b-a0e4-4b7c-9d2f-3e8a7c6b5d40"
OTHER_ID = "11111111-2222-4333-8444-555555555555"
PROVIDER = BuildkiteProvider()
CHECK_ORDER = ["pipeline", "organization_id", "pipeline_id", "step_key", "trigger", "ref", "runner"]
NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=timezone.utc)


def fixture_claims() -> dict[str, Any]:
    """The payload of docs/fixtures/buildkite-id-token.md, copied verbatim."""
    return {
        "iss": "https://agent.buildkite.com",
        "sub": "organization:acme-inc:pipeline:widgets-release:ref:refs/heads/main:commit:"
               "3f1c9e0a7b2d4c6e8f0a1b3c5d7e9f1a2b4c6d8e:step:publish",
        "aud": "tpx",
        "iat": 1767225600,
        "nbf": 1767225600,
        "exp": 1767225900,
        "jti": "019b7a3c-5e21-7c4d-9a8b-2f6e1d0c3b4a",
        "organization_slug": "acme-inc",
        "pipeline_slug": "widgets-release",
        "build_number": 412,
        "build_branch": "main",
        "build_tag": None,
        "build_commit": "3f1c9e0a7b2d4c6e8f0a1b3c5d7e9f1a2b4c6d8e",
        "step_key": "publish",
        "job_id": "019b7a3b-9d10-4f2e-8c7a-61b5e4d3c2a1",
        "agent_id": "019b7a3b-a0e4-4b7c-9d2f-3e8a7c6b5d40",
        "build_source": "webhook",
        "runner_environment": "self-hosted",
        "organization_id": "0184990a-477b-4fa8-9968-496074483c77",
        "pipeline_id": "0184990a-4782-42b5-afc1-16715b10b1a0",
    }


TABLE = CheckTable(PROVIDER, fixture_claims, ISSUER, omit=OMIT)
claims_with, identity_with = TABLE.claims_with, TABLE.identity_with


NO_IDS = {"organization_id": OMIT, "pipeline_id": OMIT}


def publisher(**changes: Any) -> Publisher:
    base = Publisher(id="pub-1", package="widgets", provider="buildkite", issuer=ISSUER, owner="acme-inc",
                     name="widgets-release", workflow="", allow_self_hosted_runners=True)
    return replace(base, **changes)


results_by_check, failed_checks = TABLE.results_by_check, TABLE.failed_checks


# --- identity(): accepted tokens --------------------------------------------------------------------------


def test_identity_from_fixture() -> None:
    identity = PROVIDER.identity(fixture_claims(), ISSUER)
    assert identity == Identity(
        provider="buildkite", issuer=ISSUER, repository="acme-inc/widgets-release", owner="acme-inc",
        name="widgets-release", owner_id=ORG_ID, repository_id=PIPE_ID, workflow="",
        workflow_ref="acme-inc/widgets-release@refs/heads/main", environment=None, ref="refs/heads/main",
        sha=COMMIT, run_id="412", actor=None, event_name="webhook", runner_environment="self-hosted",
        extra={"build_number": 412, "build_branch": "main", "build_tag": None, "step_key": "publish",
               "job_id": JOB_ID, "agent_id": AGENT_ID},
    )
    assert identity.repository_key == "acme-inc/widgets-release"


def test_the_documented_fixture_is_this_payload() -> None:
    """docs/fixtures/buildkite-id-token.md shows the payload these tests read, verbatim."""
    text = (ROOT / "docs" / "fixtures" / "buildkite-id-token.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```json\n")[1:]]
    assert json.loads(blocks[1]) == fixture_claims()


def test_the_support_builder_matches_the_fixture_shape() -> None:
    built = buildkite_claims()
    assert set(built) == set(fixture_claims()) - {"iss"}
    assert {name: type(value) for name, value in built.items()} == {
        name: type(value) for name, value in fixture_claims().items() if name != "iss"}
    assert PROVIDER.identity(built, ISSUER).ref == "refs/heads/main"


@pytest.mark.parametrize(
    ("changes", "field", "value"),
    [
        # The ref: the tag when the build has one, else the branch.
        pytest.param({"build_tag": "v1.4.0"}, "ref", "refs/tags/v1.4.0", id="tag-wins"),
        pytest.param({"build_tag": "v1.4.0", "build_branch": "v1.4.0"}, "ref", "refs/tags/v1.4.0",
                     id="tag-build-branch-is-tag"),
        pytest.param({"build_tag": None}, "ref", "refs/heads/main", id="tag-null"),
        pytest.param({"build_tag": OMIT}, "ref", "refs/heads/main", id="tag-absent"),
        pytest.param({"build_tag": ""}, "ref", "refs/heads/main", id="tag-empty-is-unset"),
        pytest.param({"build_branch": "feature/x"}, "ref", "refs/heads/feature/x", id="branch-with-slash"),
        pytest.param({"build_branch": "someone:main"}, "ref", "refs/heads/someone:main", id="fork-branch-prefixed"),
        pytest.param({"build_branch": "b" * 244}, "ref", "refs/heads/" + "b" * 244, id="branch-at-limit"),
        pytest.param({"build_tag": "t" * 245}, "ref", "refs/tags/" + "t" * 245, id="tag-at-limit"),
        pytest.param({"build_tag": "v2"}, "workflow_ref", "acme-inc/widgets-release@refs/tags/v2",
                     id="workflow-ref-names-the-ref"),
        # Slugs and ids.
        pytest.param({"organization_slug": "Acme-Inc", "pipeline_slug": "X1"}, "repository", "Acme-Inc/X1",
                     id="slug-case-kept-as-sent"),
        pytest.param({"organization_slug": "a" * 255}, "owner", "a" * 255, id="slug-at-limit"),
        pytest.param({"organization_slug": "9-"}, "owner", "9-", id="slug-digit-first"),
        pytest.param({"organization_id": ORG_ID.upper()}, "owner_id", ORG_ID, id="uuid-upper-case-folded"),
        pytest.param({"organization_id": OMIT}, "owner_id", None, id="organization-id-absent"),
        pytest.param({"pipeline_id": OMIT}, "repository_id", None, id="pipeline-id-absent"),
        # Everything else.
        pytest.param({"step_key": None}, "extra", {"step_key": None}, id="step-key-null"),
        pytest.param({"step_key": OMIT}, "extra", {"step_key": None}, id="step-key-absent"),
        pytest.param({"step_key": ""}, "extra", {"step_key": None}, id="step-key-empty-is-unset"),
        pytest.param({"step_key": "deploy: pypi"}, "extra", {"step_key": "deploy: pypi"}, id="step-key-punctuation"),
        pytest.param({"build_number": 0}, "run_id", "0", id="build-number-zero"),
        pytest.param({"build_number": 2**63 - 1}, "run_id", str(2**63 - 1), id="build-number-at-limit"),
        pytest.param({"build_commit": "HEAD"}, "sha", "HEAD", id="commit-not-a-sha"),
        pytest.param({"job_id": JOB_ID.upper()}, "extra", {"job_id": JOB_ID}, id="job-id-folded"),
        pytest.param({"runner_environment": "buildkite-hosted"}, "runner_environment", "buildkite-hosted",
                     id="hosted"),
        pytest.param({"runner_environment": OMIT}, "runner_environment", None, id="runner-absent"),
        pytest.param({"build_source": "trigger_job"}, "event_name", "trigger_job", id="trigger-job"),
        pytest.param({"build_source": "schedule"}, "event_name", "schedule", id="schedule"),
        pytest.param({"agent_tag:queue": "release", "cluster_name": 7, "queue_key": ["x"], "build_id": None,
                      "https://aws.amazon.com/tags": {"principal_tags": {}}}, "repository",
                     "acme-inc/widgets-release", id="unread-claims-ignored"),
        pytest.param({"sub": 12}, "repository", "acme-inc/widgets-release", id="sub-never-read"),
        pytest.param({"jti": OMIT}, "repository", "acme-inc/widgets-release", id="jti-is-verifications-business"),
    ],
)
def test_identity_accepts(changes: dict[str, Any], field: str, value: Any) -> None:
    identity = identity_with(**changes)
    if field == "extra":
        for name, expected in value.items():
            assert identity.extra[name] == expected
    else:
        assert getattr(identity, field) == value


# --- identity(): malformed tokens -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "claim"),
    [
        # Missing required claims.
        *[pytest.param({name: OMIT}, name, id=f"missing-{name}")
          for name in ("organization_slug", "pipeline_slug", "build_number", "build_branch", "build_commit",
                       "job_id", "agent_id", "build_source")],
        # Wrong JSON types.
        pytest.param({"organization_slug": None}, "organization_slug", id="organization-slug-null"),
        pytest.param({"pipeline_slug": ["widgets"]}, "pipeline_slug", id="pipeline-slug-array"),
        pytest.param({"organization_id": 184990}, "organization_id", id="organization-id-number"),
        pytest.param({"organization_id": None}, "organization_id", id="organization-id-null"),
        pytest.param({"pipeline_id": {"id": PIPE_ID}}, "pipeline_id", id="pipeline-id-object"),
        pytest.param({"build_number": "412"}, "build_number", id="build-number-string"),
        pytest.param({"build_number": True}, "build_number", id="build-number-boolean"),
        pytest.param({"build_number": 412.0}, "build_number", id="build-number-float"),
        pytest.param({"build_number": None}, "build_number", id="build-number-null"),
        pytest.param({"build_number": -1}, "build_number", id="build-number-negative"),
        pytest.param({"build_number": 2**63}, "build_number", id="build-number-huge"),
        pytest.param({"build_branch": None}, "build_branch", id="branch-null"),
        pytest.param({"build_tag": 1}, "build_tag", id="tag-number"),
        pytest.param({"build_tag": False}, "build_tag", id="tag-false"),
        pytest.param({"step_key": 5}, "step_key", id="step-key-number"),
        pytest.param({"step_key": ["publish"]}, "step_key", id="step-key-array"),
        pytest.param({"job_id": 1}, "job_id", id="job-id-number"),
        pytest.param({"build_source": None}, "build_source", id="source-null"),
        pytest.param({"runner_environment": True}, "runner_environment", id="runner-boolean"),
        pytest.param({"runner_environment": None}, "runner_environment", id="runner-null"),
        # Slug shapes.
        pytest.param({"organization_slug": ""}, "organization_slug", id="slug-empty"),
        pytest.param({"organization_slug": "-acme"}, "organization_slug", id="slug-leading-dash"),
        pytest.param({"organization_slug": "acme_inc"}, "organization_slug", id="slug-underscore"),
        pytest.param({"organization_slug": "acme inc"}, "organization_slug", id="slug-space"),
        pytest.param({"organization_slug": "acme/inc"}, "organization_slug", id="slug-slash"),
        pytest.param({"pipeline_slug": "widgets.release"}, "pipeline_slug", id="slug-dot"),
        pytest.param({"pipeline_slug": "w" * 256}, "pipeline_slug", id="slug-too-long"),
        pytest.param({"organization_slug": "acme-\u0131nc"}, "organization_slug", id="slug-dotless-i"),
        pytest.param({"organization_slug": "\u212acme"}, "organization_slug", id="slug-kelvin-sign"),
        pytest.param({"pipeline_slug": "widgets\n"}, "pipeline_slug", id="slug-lf"),
        pytest.param({"pipeline_slug": "widgets\x00"}, "pipeline_slug", id="slug-nul"),
        # UUID shapes.
        pytest.param({"organization_id": ""}, "organization_id", id="organization-id-empty"),
        pytest.param({"organization_id": "0184990a-477b-4fa8-9968-496074483k77"}, "organization_id",
                     id="organization-id-not-hex"),
        pytest.param({"pipeline_id": PIPE_ID.replace("-", "")}, "pipeline_id", id="pipeline-id-no-dashes"),
        pytest.param({"pipeline_id": "{" + PIPE_ID + "}"}, "pipeline_id", id="pipeline-id-braces"),
        pytest.param({"pipeline_id": PIPE_ID + "\n"}, "pipeline_id", id="pipeline-id-lf"),
        pytest.param({"agent_id": "agent-1"}, "agent_id", id="agent-id-shape"),
        pytest.param({"job_id": "\uff10" + JOB_ID[1:]}, "job_id", id="job-id-fullwidth-digit"),
        # Refs.
        pytest.param({"build_branch": ""}, "build_branch", id="branch-empty"),
        pytest.param({"build_branch": "main branch"}, "build_branch", id="branch-space"),
        pytest.param({"build_branch": "main\r"}, "build_branch", id="branch-cr"),
        pytest.param({"build_branch": "ma\u00efn"}, "build_branch", id="branch-non-ascii"),
        pytest.param({"build_branch": "b" * 245}, "build_branch", id="branch-too-long"),
        pytest.param({"build_tag": "v1 .0"}, "build_tag", id="tag-space"),
        pytest.param({"build_tag": "v1\x00"}, "build_tag", id="tag-nul"),
        pytest.param({"build_tag": "t" * 246}, "build_tag", id="tag-too-long"),
        # Others.
        pytest.param({"build_commit": ""}, "build_commit", id="commit-empty"),
        pytest.param({"build_commit": "abc def"}, "build_commit", id="commit-space"),
        pytest.param({"step_key": "publish\n"}, "step_key", id="step-key-lf"),
        pytest.param({"step_key": "ver\u00f6ffentlichen"}, "step_key", id="step-key-non-ascii"),
        pytest.param({"step_key": "k" * 256}, "step_key", id="step-key-too-long"),
        pytest.param({"build_source": "Webhook"}, "build_source", id="source-case"),
        pytest.param({"build_source": "web hook"}, "build_source", id="source-space"),
        pytest.param({"runner_environment": "Self-Hosted"}, "runner_environment", id="runner-case"),
        pytest.param({"runner_environment": ""}, "runner_environment", id="runner-empty"),
    ],
)
def test_identity_rejects(changes: dict[str, Any], claim: str) -> None:
    assert repr(claim) in TABLE.malformed(**changes).detail


def test_identity_rejects_non_object_payload() -> None:
    TABLE.malformed(["not", "an", "object"])


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        pytest.param({"build_number": "412"}, "JSON string", id="build-number-string"),
        pytest.param({"build_number": True}, "JSON boolean", id="build-number-boolean"),
        pytest.param({"build_number": 1.5}, "JSON number", id="build-number-float"),
        pytest.param({"organization_id": 7}, "JSON integer", id="id-number"),
        pytest.param({"step_key": True}, "JSON boolean", id="step-key-boolean"),
        pytest.param({"organization_slug": None}, "JSON null", id="slug-null"),
        pytest.param({"build_tag": 3}, "JSON integer", id="tag-number"),
    ],
)
def test_malformed_names_the_json_type(changes: dict[str, Any], phrase: str) -> None:
    with pytest.raises(Problem) as raised:
        identity_with(**changes)
    assert phrase in raised.value.detail


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"build_branch": "SECRET branch"}, id="branch"),
        pytest.param({"organization_slug": "SECRET_org"}, id="slug"),
        pytest.param({"pipeline_id": "SECRET"}, id="uuid"),
        pytest.param({"step_key": "SECRET\n"}, id="step-key"),
        pytest.param({"build_number": "SECRET"}, id="build-number"),
    ],
)
def test_malformed_never_echoes_the_value(changes: dict[str, Any]) -> None:
    with pytest.raises(Problem) as raised:
        identity_with(**changes)
    assert "SECRET" not in raised.value.detail


# --- no personal data -------------------------------------------------------------------------------------


def test_nothing_beyond_the_read_claims_reaches_the_identity() -> None:
    """Buildkite tokens name no user; agent-asserted and display claims are never read or stored."""
    marked = {"agent_tag:hostname": "PII-laptop-of-jane", "cluster_name": "PII-cluster", "queue_key": "PII-queue",
              "sub": "PII-sub", "user_email": "PII@example.com"}
    identity = identity_with(**marked)
    assert identity == identity_with()
    everywhere = repr((asdict(identity), identity.ci()))
    assert "PII" not in everywhere
    assert identity.actor is None and identity.ci()["actor"] is None


def test_ci_identity_members() -> None:
    assert identity_with().ci() == {
        "provider": "buildkite", "issuer": ISSUER, "repository": "acme-inc/widgets-release",
        "repository_id": PIPE_ID, "owner_id": ORG_ID, "workflow": "",
        "workflow_ref": "acme-inc/widgets-release@refs/heads/main", "environment": None, "ref": "refs/heads/main",
        "sha": COMMIT, "run_id": "412", "actor": None, "event_name": "webhook", "runner_environment": "self-hosted",
    }
    without = identity_with(**NO_IDS).ci()
    assert (without["owner_id"], without["repository_id"]) == (None, None)


# --- checks(): the conformance table ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "config", "failed"),
    [
        pytest.param({}, {}, set(), id="fixture-matches"),
        # Pipeline: organization and pipeline slugs, ASCII case-insensitive.
        pytest.param({}, {"owner": "ACME-Inc", "name": "Widgets-RELEASE"}, set(), id="slugs-case-insensitive"),
        pytest.param({"organization_slug": "ACME-INC"}, {}, set(), id="token-slug-case-insensitive"),
        pytest.param({}, {"owner": "acme-incorporated"}, {"pipeline"}, id="organization-mismatch"),
        pytest.param({}, {"name": "widgets"}, {"pipeline"}, id="pipeline-mismatch"),
        pytest.param({"organization_slug": "other-org"}, {}, {"pipeline"}, id="another-organization"),
        pytest.param({"pipeline_slug": "widgets-releas"}, {}, {"pipeline"}, id="pipeline-prefix"),
        # organization_id / pipeline_id pins.
        pytest.param({}, {"owner_id": ORG_ID, "name_id": PIPE_ID}, set(), id="ids-pinned-match"),
        pytest.param({"organization_id": ORG_ID.upper()}, {"owner_id": ORG_ID}, set(), id="pinned-id-case-folded"),
        pytest.param({}, {"owner_id": OTHER_ID}, {"organization_id"}, id="organization-id-mismatch"),
        pytest.param({}, {"name_id": OTHER_ID}, {"pipeline_id"}, id="pipeline-id-mismatch"),
        pytest.param(NO_IDS, {}, set(), id="no-ids-unpinned-passes"),
        pytest.param({"organization_id": OMIT}, {"owner_id": ORG_ID}, {"organization_id"},
                     id="organization-id-pinned-token-lacks"),
        pytest.param({"pipeline_id": OMIT}, {"name_id": PIPE_ID}, {"pipeline_id"}, id="pipeline-id-pinned-token-lacks"),
        pytest.param(NO_IDS, {"owner_id": ORG_ID, "name_id": PIPE_ID}, {"organization_id", "pipeline_id"},
                     id="both-pinned-token-lacks-both"),
        pytest.param({"organization_id": PIPE_ID, "pipeline_id": ORG_ID}, {"owner_id": ORG_ID, "name_id": PIPE_ID},
                     {"organization_id", "pipeline_id"}, id="ids-swapped"),
        # Step key: exact when set.
        pytest.param({}, {"conditions": {"step_key": "publish"}}, set(), id="step-key-match"),
        pytest.param({}, {"conditions": {"step_key": "Publish"}}, {"step_key"}, id="step-key-case-sensitive"),
        pytest.param({}, {"conditions": {"step_key": "deploy"}}, {"step_key"}, id="step-key-mismatch"),
        pytest.param({"step_key": None}, {"conditions": {"step_key": "publish"}}, {"step_key"}, id="step-key-null"),
        pytest.param({"step_key": OMIT}, {"conditions": {"step_key": "publish"}}, {"step_key"}, id="step-key-absent"),
        pytest.param({"step_key": None}, {}, set(), id="step-key-any-null"),
        pytest.param({"step_key": "anything"}, {}, set(), id="step-key-any"),
        # Trigger: shown, never refused.
        *[pytest.param({"build_source": source}, {}, set(), id=f"source-{source}")
          for source in ("ui", "api", "webhook", "trigger_job", "schedule", "something_new")],
        # Ref patterns against refs/tags/<tag> or refs/heads/<branch>.
        pytest.param({}, {"ref_patterns": ("refs/heads/main",)}, set(), id="ref-branch-exact"),
        pytest.param({}, {"ref_patterns": ("main",)}, {"ref"}, id="ref-pattern-is-a-ref-not-a-branch"),
        pytest.param({}, {"ref_patterns": ("refs/heads/MAIN",)}, {"ref"}, id="ref-case-sensitive"),
        pytest.param({}, {"ref_patterns": ("refs/tags/v*",)}, {"ref"}, id="ref-branch-not-tag"),
        pytest.param({"build_tag": "v1.4.0", "build_branch": "v1.4.0"}, {"ref_patterns": ("refs/tags/v*",)}, set(),
                     id="ref-tag"),
        pytest.param({"build_tag": "v1.4.0", "build_branch": "main"}, {"ref_patterns": ("refs/heads/main",)}, {"ref"},
                     id="ref-tag-build-is-not-the-branch"),
        pytest.param({"build_tag": None}, {"ref_patterns": ("refs/tags/*",)}, {"ref"}, id="ref-null-tag"),
        pytest.param({"build_branch": "someone:main"}, {"ref_patterns": ("refs/heads/main",)}, {"ref"},
                     id="ref-fork-branch-prefixed"),
        pytest.param({"build_branch": "release/1.x"}, {"ref_patterns": ("refs/heads/release/*",)}, set(),
                     id="ref-glob"),
        # Runner: buildkite-hosted only unless allowed.
        pytest.param({}, {"allow_self_hosted_runners": False}, {"runner"}, id="self-hosted-refused-by-default"),
        pytest.param({"runner_environment": "buildkite-hosted"}, {"allow_self_hosted_runners": False}, set(),
                     id="hosted"),
        pytest.param({"runner_environment": OMIT}, {"allow_self_hosted_runners": False}, {"runner"},
                     id="runner-absent-refused"),
        pytest.param({"runner_environment": "github-hosted"}, {"allow_self_hosted_runners": False}, {"runner"},
                     id="runner-unknown-refused"),
        pytest.param({"runner_environment": OMIT}, {}, set(), id="runner-absent-allowed"),
        # Several at once: every row is still evaluated.
        pytest.param({"build_tag": "x", "step_key": None, "runner_environment": "self-hosted", "organization_slug": "o"},
                     {"owner_id": OTHER_ID, "name_id": OTHER_ID, "conditions": {"step_key": "publish"},
                      "ref_patterns": ("refs/heads/main",), "allow_self_hosted_runners": False},
                     set(CHECK_ORDER) - {"trigger"}, id="everything-fails"),
    ],
)
def test_checks(claims: dict[str, Any], config: dict[str, Any], failed: set[str]) -> None:
    assert failed_checks(identity_with(**claims), publisher(**config)) == failed


@pytest.mark.parametrize(
    ("claims", "config"),
    [
        pytest.param({}, {}, id="matching"),
        pytest.param(NO_IDS, {"owner": "other", "owner_id": ORG_ID, "conditions": {"step_key": "x"}}, id="failing"),
    ],
)
def test_every_row_always_reported_in_order(claims: dict[str, Any], config: dict[str, Any]) -> None:
    assert [r.check for r in PROVIDER.checks(identity_with(**claims), publisher(**config))] == CHECK_ORDER


@pytest.mark.parametrize(
    ("claims", "config", "check", "expected"),
    [
        pytest.param({}, {}, "pipeline", {"claim": "organization_slug/pipeline_slug",
                                          "expected": "acme-inc/widgets-release",
                                          "actual": "acme-inc/widgets-release", "passed": True}, id="pipeline"),
        pytest.param({}, {}, "organization_id",
                     {"claim": "organization_id", "expected": None, "actual": ORG_ID, "passed": True,
                      "note": f"not pinned yet; bound to {ORG_ID} on the first successful exchange"},
                     id="organization-id-unpinned"),
        pytest.param({}, {}, "pipeline_id",
                     {"claim": "pipeline_id", "expected": None, "actual": PIPE_ID, "passed": True,
                      "note": f"not pinned yet; bound to {PIPE_ID} on the first successful exchange"},
                     id="pipeline-id-unpinned"),
        pytest.param({}, {"owner_id": ORG_ID}, "organization_id",
                     {"expected": ORG_ID, "actual": ORG_ID, "passed": True, "note": None}, id="organization-id-pinned"),
        pytest.param(NO_IDS, {}, "organization_id", {"expected": None, "actual": None, "passed": True},
                     id="organization-id-neither"),
        pytest.param({"organization_id": OMIT}, {"owner_id": ORG_ID}, "organization_id",
                     {"expected": ORG_ID, "actual": None, "passed": False}, id="organization-id-pinned-absent"),
        pytest.param({}, {}, "step_key", {"claim": "step_key", "expected": "any", "actual": "publish",
                                          "passed": True}, id="step-key-any"),
        pytest.param({}, {"conditions": {"step_key": "publish"}}, "step_key",
                     {"expected": "publish", "actual": "publish", "passed": True, "note": None}, id="step-key-set"),
        pytest.param({}, {}, "trigger", {"claim": "build_source", "expected": "any", "actual": "webhook",
                                         "passed": True, "code": "no_matching_publisher"}, id="trigger"),
        pytest.param({}, {}, "ref", {"claim": "build_branch", "expected": "any", "actual": "refs/heads/main"},
                     id="ref-any"),
        pytest.param({"build_tag": "v2"}, {"ref_patterns": ("refs/tags/v*",)}, "ref",
                     {"claim": "build_tag", "expected": ["refs/tags/v*"], "actual": "refs/tags/v2", "passed": True},
                     id="ref-from-tag"),
        pytest.param({}, {"allow_self_hosted_runners": False}, "runner",
                     {"claim": "runner_environment", "expected": "buildkite-hosted", "actual": "self-hosted",
                      "passed": False}, id="runner"),
        pytest.param({}, {}, "runner", {"expected": "any", "actual": "self-hosted", "passed": True}, id="runner-any"),
    ],
)
def test_check_fields(claims: dict[str, Any], config: dict[str, Any], check: str, expected: dict[str, Any]) -> None:
    result = results_by_check(identity_with(**claims), publisher(**config))[check]
    for field, value in expected.items():
        assert getattr(result, field) == value, field


@pytest.mark.parametrize(
    ("claims", "config", "check", "phrases"),
    [
        pytest.param({}, {"owner_id": OTHER_ID}, "organization_id", [OTHER_ID, ORG_ID, "slug taken"],
                     id="organization-resurrection"),
        pytest.param({}, {"name_id": OTHER_ID}, "pipeline_id", [OTHER_ID, PIPE_ID, "re-created"],
                     id="pipeline-recreated"),
        pytest.param({"organization_id": OMIT}, {"owner_id": ORG_ID}, "organization_id",
                     ["no organization_id claim", "--claim organization_id,pipeline_id"], id="pinned-but-absent"),
        pytest.param(NO_IDS, {}, "pipeline_id", ["not pinned", "no pipeline_id to bind",
                                                 "--claim organization_id,pipeline_id"], id="unpinned-absent"),
        pytest.param({"pipeline_id": OMIT}, {}, "organization_id",
                     [f"carries organization_id {ORG_ID} but not both ids", "nothing is bound"], id="only-one-id"),
        pytest.param({"step_key": None}, {"conditions": {"step_key": "publish"}}, "step_key",
                     ["has no key", "`key: publish`"], id="step-without-key"),
        pytest.param({}, {"conditions": {"step_key": "Publish"}}, "step_key", ["exactly", "only in case"],
                     id="step-key-case"),
        pytest.param({}, {"conditions": {"step_key": "deploy"}}, "step_key", ["exactly", "only the step"],
                     id="step-key-other"),
        pytest.param({}, {"ref_patterns": ("refs/tags/*",)}, "ref", ["refs/tags/<build_tag>",
                                                                      "refs/heads/<build_branch>"], id="ref"),
        pytest.param({}, {"allow_self_hosted_runners": False}, "runner",
                     ["allow_self_hosted_runners", "'self-hosted'", "most Buildkite agents"], id="runner"),
    ],
)
def test_check_notes(claims: dict[str, Any], config: dict[str, Any], check: str, phrases: list[str]) -> None:
    note = results_by_check(identity_with(**claims), publisher(**config))[check].note
    assert note is not None
    for phrase in phrases:
        assert phrase in note


def test_claims_nobody_checks_never_decide() -> None:
    """sub, the job, the agent, the build number and agent-asserted claims can say anything."""
    plain = PROVIDER.checks(identity_with(), publisher(conditions={"step_key": "publish"}))
    noisy = PROVIDER.checks(
        identity_with(sub="organization:other:pipeline:other:ref:refs/heads/x:commit:y:step:publish",
                      job_id=OTHER_ID, agent_id=OTHER_ID, build_number=1, build_commit="HEAD",
                      **{"agent_tag:queue": "release", "cluster_name": "prod"}),
        publisher(conditions={"step_key": "publish"}),
    )
    assert plain == noisy


# --- bindings() -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "config", "bindings"),
    [
        pytest.param({}, {}, {"owner_id": ORG_ID, "name_id": PIPE_ID}, id="nothing-pinned"),
        pytest.param({}, {"owner_id": ORG_ID}, {"name_id": PIPE_ID}, id="organization-pinned"),
        pytest.param({}, {"name_id": PIPE_ID}, {"owner_id": ORG_ID}, id="pipeline-pinned"),
        pytest.param({}, {"owner_id": ORG_ID, "name_id": PIPE_ID}, {}, id="both-pinned"),
        pytest.param(NO_IDS, {}, {}, id="token-without-ids-binds-nothing"),
        pytest.param({"pipeline_id": OMIT}, {}, {}, id="token-with-organization-id-only-binds-nothing"),
        pytest.param({"organization_id": OMIT}, {}, {}, id="token-with-pipeline-id-only-binds-nothing"),
        pytest.param({"organization_id": ORG_ID.upper()}, {}, {"owner_id": ORG_ID, "name_id": PIPE_ID},
                     id="bound-lower-case"),
    ],
)
def test_bindings(claims: dict[str, Any], config: dict[str, Any], bindings: dict[str, str]) -> None:
    assert PROVIDER.bindings(identity_with(**claims), publisher(**config)) == bindings


def test_every_binding_carries_both_ids() -> None:
    """The mint binds a publisher's two ids in one statement with the identity's owner_id and
    repository_id (tpx.core.db.tokens); a binding is only ever asked for when both are known."""
    for claims in ({}, NO_IDS, {"pipeline_id": OMIT}, {"organization_id": OMIT}):
        identity = identity_with(**claims)
        for config in ({}, {"owner_id": ORG_ID}, {"name_id": PIPE_ID}):
            if PROVIDER.bindings(identity, publisher(**config)):
                assert identity.owner_id is not None and identity.repository_id is not None


# --- matching: evaluate() and denial() --------------------------------------------------------------------


def test_evaluate_and_explain() -> None:
    pubs = [publisher(), publisher(id="pub-2", package="other", conditions={"step_key": "deploy"})]
    evaluations = evaluate(PROVIDER, identity_with(), pubs)
    assert [e.matched for e in evaluations] == [True, False]
    explain = evaluations[1].as_explain()
    assert [c["check"] for c in explain["checks"]] == CHECK_ORDER
    trigger = explain["checks"][CHECK_ORDER.index("trigger")]
    assert trigger == {"check": "trigger", "claim": "build_source", "expected": "any", "actual": "webhook",
                       "passed": True}
    step = explain["checks"][CHECK_ORDER.index("step_key")]
    assert (step["expected"], step["actual"], step["passed"]) == ("deploy", "publish", False)


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"issuer": LOOPBACK}, id="other-issuer"),
        pytest.param({"issuer": ISSUER + "/"}, id="issuer-not-byte-equal"),
        pytest.param({"provider": "github"}, id="github-publisher"),
    ],
)
def test_evaluate_skips_publishers_of_another_issuer_or_provider(config: dict[str, Any]) -> None:
    assert evaluate(PROVIDER, identity_with(), [publisher(**config)]) == []


def test_denial_without_candidates_uses_buildkite_field_names() -> None:
    problem = denial(PROVIDER, identity_with(), [])
    assert problem.code == "no_matching_publisher"
    assert problem.detail == (f"no trusted publisher is configured for repository acme-inc/widgets-release on "
                              f"issuer {ISSUER}")
    body = json.loads(problem.hints[0].removeprefix("add one: POST /v1/admin/publishers with "))
    assert body == {"package": "<package>", "provider": "buildkite", "issuer": ISSUER,
                    "organization_slug": "acme-inc", "pipeline_slug": "widgets-release",
                    "organization_id": ORG_ID, "pipeline_id": PIPE_ID}
    # The hint is a body the admin API accepts.
    assert publisher_input({**body, "package": "widgets"}, ttl_max=21600, allow_loopback=False).owner_id == ORG_ID


def test_denial_without_candidates_or_ids() -> None:
    problem = denial(PROVIDER, identity_with(**NO_IDS), [])
    assert '"organization_id"' not in problem.hints[0] and '"pipeline_id"' not in problem.hints[0]


@pytest.mark.parametrize(
    ("claims", "config", "hint"),
    [
        pytest.param({}, {"owner_id": OTHER_ID},
                     f"publisher pub-1 (package widgets): organization_id: the token has '{ORG_ID}', "
                     f"expected '{OTHER_ID}'", id="organization-id"),
        pytest.param({"pipeline_id": OMIT}, {"name_id": PIPE_ID},
                     f"publisher pub-1 (package widgets): pipeline_id: the token has no pipeline_id, "
                     f"expected '{PIPE_ID}'", id="pipeline-id-absent"),
        pytest.param({}, {"conditions": {"step_key": "deploy"}},
                     "publisher pub-1 (package widgets): step_key: the token has 'publish', expected 'deploy'",
                     id="step-key"),
        pytest.param({"step_key": None}, {"conditions": {"step_key": "deploy"}},
                     "publisher pub-1 (package widgets): step_key: the token has no step_key, expected 'deploy'",
                     id="step-key-null"),
        pytest.param({}, {"ref_patterns": ("refs/tags/v*",)},
                     "publisher pub-1 (package widgets): ref: the token has 'refs/heads/main', expected one of "
                     "['refs/tags/v*']", id="ref"),
        pytest.param({}, {"allow_self_hosted_runners": False},
                     "publisher pub-1 (package widgets): runner: the token has 'self-hosted', expected "
                     "'buildkite-hosted'", id="runner"),
    ],
)
def test_denial_hints_name_the_differing_part(claims: dict[str, Any], config: dict[str, Any], hint: str) -> None:
    identity = identity_with(**claims)
    problem = denial(PROVIDER, identity, evaluate(PROVIDER, identity, [publisher(**config)]))
    assert problem.code == "no_matching_publisher"
    assert len(problem.hints) == 1
    assert problem.hints[0].startswith(hint)


def test_denial_detail_names_the_closest_publisher_and_first_failure() -> None:
    identity = identity_with(**NO_IDS)
    problem = denial(PROVIDER, identity, evaluate(PROVIDER, identity, [
        publisher(owner_id=ORG_ID, name_id=PIPE_ID, allow_self_hosted_runners=False)]))
    assert "whose organization_id check failed: claim organization_id is absent" in problem.detail
    assert "and 2 more differences" in problem.detail
    assert [hint.split(": ")[1] for hint in problem.hints] == ["organization_id", "pipeline_id", "runner"]


# --- the admin input --------------------------------------------------------------------------------------


def read(body: dict[str, Any]) -> Publisher:
    return publisher_input(body, ttl_max=21600, allow_loopback=True)


BODY = {"package": "widgets", "provider": "buildkite", "organization_slug": "acme-inc",
        "pipeline_slug": "widgets-release"}


def test_a_buildkite_publisher_in_neutral_fields_with_defaults() -> None:
    p = read(BODY)
    assert (p.provider, p.issuer, p.owner, p.name, p.workflow, p.owner_id, p.name_id) == (
        "buildkite", ISSUER, "acme-inc", "widgets-release", "", None, None)
    assert (p.environments, p.conditions, p.allow_self_hosted_runners) == ((), {}, False)


def test_every_field() -> None:
    p = read({**BODY, "issuer": LOOPBACK, "organization_id": ORG_ID.upper(), "pipeline_id": PIPE_ID,
              "step_key": "publish", "ref_patterns": ["refs/tags/v*"], "allow_self_hosted_runners": True})
    assert (p.issuer, p.owner_id, p.name_id, p.conditions) == (LOOPBACK, ORG_ID, PIPE_ID, {"step_key": "publish"})
    assert (p.ref_patterns, p.allow_self_hosted_runners) == (("refs/tags/v*",), True)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"organization_slug": OMIT}, "organization_slug"),
        ({"pipeline_slug": OMIT}, "pipeline_slug"),
        ({"organization_slug": "acme_inc"}, "organization_slug"),
        ({"organization_slug": "-acme"}, "organization_slug"),
        ({"pipeline_slug": "acme/widgets"}, "pipeline_slug"),
        ({"pipeline_slug": ""}, "pipeline_slug"),
        ({"pipeline_slug": "w" * 256}, "pipeline_slug"),
        ({"organization_slug": "acme-inc\n"}, "organization_slug"),
        ({"organization_id": "0184990a477b4fa89968496074483c77"}, "organization_id"),
        ({"organization_id": "not-a-uuid"}, "organization_id"),
        ({"pipeline_id": 5}, "pipeline_id"),
        ({"step_key": ""}, "step_key"),
        ({"step_key": " publish"}, "step_key"),
        ({"step_key": "publish\n"}, "step_key"),
        ({"step_key": "k" * 256}, "step_key"),
        ({"environments": ["release"]}, "environments"),
        ({"workflow_filename": "release.yml"}, "workflow_filename"),
        ({"require_protected_ref": True}, "require_protected_ref"),
        ({"allow_self_hosted_runners": "yes"}, "allow_self_hosted_runners"),
    ],
)
def test_refusals_name_the_field(change: dict[str, Any], field: str) -> None:
    body = {**BODY, **change}
    with pytest.raises(Problem) as raised:
        read({name: value for name, value in body.items() if value is not OMIT})
    assert raised.value.code == "invalid_publisher"
    assert field in raised.value.detail


def test_identity_key_folds_slugs_and_keeps_the_step_key() -> None:
    assert identity_key(read(BODY)) == identity_key(read({**BODY, "organization_slug": "ACME-inc"}))
    assert identity_key(read(BODY)) != identity_key(read({**BODY, "step_key": "publish"}))
    assert identity_key(read({**BODY, "step_key": "a"})) != identity_key(read({**BODY, "step_key": "b"}))


def test_the_view_uses_buildkites_field_names() -> None:
    p = replace(read({**BODY, "step_key": "publish", "organization_id": ORG_ID}), id=str(uuid.uuid4()),
                created_at=NOW)
    view = publisher_json(p)
    assert {k: view[k] for k in ("provider", "organization_slug", "organization_id", "pipeline_slug", "pipeline_id",
                                  "step_key")} == {
        "provider": "buildkite", "organization_slug": "acme-inc", "organization_id": ORG_ID,
        "pipeline_slug": "widgets-release", "pipeline_id": None, "step_key": "publish"}
    assert "environments" not in view and "workflow_filename" not in view


# --- events: what this provider puts in them matches the catalogue ----------------------------------------


def cloudevent(event: Event) -> dict[str, Any]:
    return to_cloudevent({"event_id": event.id, "type": event.type, "source": "urn:tpx:exchange",
                          "subject": event.subject, "time": NOW, "data": json.loads(json.dumps(event.data)),
                          "sequence": 1, "chainhash": bytes(32)})


@pytest.mark.parametrize("claims", [pytest.param({}, id="with-ids"), pytest.param(NO_IDS, id="without-ids")])
def test_issued_event_matches_its_schema(claims: dict[str, Any]) -> None:
    event = builders.token_issued(str(uuid.uuid4()), ["widgets"], {"widgets": ["publish-update"]},
                                  [str(uuid.uuid4())], identity_with(**claims).ci())
    event.data.update(issued_at="2026-11-27T12:00:00Z", expires_at="2026-11-27T12:15:00Z")
    schemas.validate(cloudevent(event))


def test_bound_event_matches_its_schema() -> None:
    p = replace(read(BODY), id=str(uuid.uuid4()))
    identity = identity_with()
    bound = {PROVIDER.fields[k]: v for k, v in PROVIDER.bindings(identity, p).items()}
    assert bound == {"organization_id": ORG_ID, "pipeline_id": PIPE_ID}
    schemas.validate(cloudevent(builders.publisher_bound(p.id, p.package, bound, identity.ci())))


@pytest.mark.parametrize("body", [pytest.param(BODY, id="minimal"),
                                  pytest.param({**BODY, "organization_id": ORG_ID, "pipeline_id": PIPE_ID,
                                                "step_key": "publish", "ref_patterns": ["refs/tags/*"],
                                                "token_ttl_seconds": 300}, id="every-field")])
def test_publisher_events_match_their_schema(body: dict[str, Any]) -> None:
    p = replace(read(body), id=str(uuid.uuid4()), created_at=NOW)
    schemas.validate(cloudevent(builders.admin_change(event_types.PUBLISHER_CREATED, "credential:0123456789ab", p.id,
                                                      None, publisher_json(p))))


def test_a_publisher_event_with_a_foreign_member_is_refused() -> None:
    p = replace(read(BODY), id=str(uuid.uuid4()), created_at=NOW)
    after = {**publisher_json(p), "workflow_filename": "release.yml"}
    with pytest.raises(schemas.EventSchemaError):
        schemas.validate(cloudevent(builders.admin_change(event_types.PUBLISHER_CREATED, "credential:0123456789ab",
                                                          p.id, None, after)))


# --- registry ---------------------------------------------------------------------------------------------


def test_registered() -> None:
    assert isinstance(get_provider("buildkite"), BuildkiteProvider)
    provider = PROVIDERS["buildkite"]
    assert (provider.name, provider.public_issuer, provider.issues_jti) == ("buildkite", ISSUER, True)
    assert provider.conditions == ("step_key",)
