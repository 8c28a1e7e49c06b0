"""Table tests for the CircleCI provider: strict identity building, the check table (the CircleCI
conformance table), bindings, personal data, the denials built from it, the admin input of a
publisher, and the events a CircleCI exchange writes against their schemas."""

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
from tpx.core.providers.base import CheckResult, Identity, Publisher
from tpx.core.providers.circleci import CircleCIProvider, issuer_organization
from tpx.core.providers.matching import denial, evaluate
from tpx.core.publishers import identity_key, publisher_input, publisher_json
from tests.support.circleci_claims import (
    ABSENT, CONTEXT, JOB, ORG, PIPELINE, PIPELINE_DEFINITION, PROJECT, ROOT_ISSUER, USER, VCS_ORIGIN, VCS_REF,
    WORKFLOW, circleci_claims,
)
from tests.support.events import denial_cloudevent

ISSUER = f"{ROOT_ISSUER}/org/{ORG}"
LOOPBACK = "http://127.0.0.1:41234"
OTHER_ORG = "11111111-2222-4333-8444-555555555555"
OTHER_UUID = "99999999-8888-4777-8666-555555555555"
PROVIDER = CircleCIProvider()
REPOSITORY = f"{ORG}/{PROJECT}"
CHECK_ORDER = ["project", "issuer_organization", "ssh_rerun", "pipeline_definition", "contexts", "vcs_origin",
               "vcs_ref", "ref"]

P = "oidc.circleci.com/"
ORG_ID, PROJECT_ID, PDEF_ID = P + "org-id", P + "project-id", P + "pipeline-definition-id"
PIPELINE_ID, WORKFLOW_ID, JOB_ID = P + "pipeline-id", P + "workflow-id", P + "job-id"
CONTEXT_IDS, ORIGIN, REF, SSH = P + "context-ids", P + "vcs-origin", P + "vcs-ref", P + "ssh-rerun"
UUID_CLAIMS = (ORG_ID, PROJECT_ID, PDEF_ID, PIPELINE_ID, WORKFLOW_ID, JOB_ID)


def changed(changes: dict[str, Any], issuer: str = ISSUER) -> Identity:
    """The fixture's payload with claims changed (keys are claim names; ABSENT removes one), read."""
    claims = circleci_claims(issued=1767225600, issuer=issuer)
    for name, value in changes.items():
        if value is ABSENT:
            claims.pop(name, None)
        else:
            claims[name] = value
    return PROVIDER.identity(claims, issuer)


def identity_with(issuer: str = ISSUER, **changes: Any) -> Identity:
    """Keyword changes use short names: org, project, pdef, contexts, origin, ref, ssh."""
    names = {"org": ORG_ID, "project": PROJECT_ID, "pdef": PDEF_ID, "contexts": CONTEXT_IDS, "origin": ORIGIN,
             "ref": REF, "ssh": SSH}
    return changed({names[k]: v for k, v in changes.items()}, issuer)


def publisher(**changes: Any) -> Publisher:
    conditions = changes.pop("conditions", {})
    base = Publisher(id="pub-1", package="widgets", provider="circleci", issuer=ISSUER, owner=ORG, name=PROJECT,
                     workflow="", owner_id=ORG, name_id=PROJECT, conditions=conditions)
    return replace(base, **changes)


def pinned(**conditions: Any) -> Publisher:
    return publisher(conditions=conditions)


def results_by_check(identity: Identity, pub: Publisher) -> dict[str, CheckResult]:
    return {r.check: r for r in PROVIDER.checks(identity, pub)}


def failed_checks(identity: Identity, pub: Publisher) -> set[str]:
    return {r.check for r in PROVIDER.checks(identity, pub) if not r.passed}


# --- identity(): accepted tokens --------------------------------------------------------------------------


def test_identity_from_fixture() -> None:
    identity = PROVIDER.identity(circleci_claims(issuer=ISSUER), ISSUER)
    assert identity == Identity(
        provider="circleci", issuer=ISSUER, repository=REPOSITORY, owner=ORG, name=PROJECT, owner_id=ORG,
        repository_id=PROJECT, workflow=PIPELINE_DEFINITION, workflow_ref="", environment=None, ref=VCS_REF, sha="",
        run_id=WORKFLOW, actor=None, event_name=None, runner_environment=None,
        extra={"pipeline_definition_id": PIPELINE_DEFINITION, "context_ids": (CONTEXT,), "vcs_origin": VCS_ORIGIN,
               "vcs_ref": VCS_REF, "ssh_rerun": False, "pipeline_id": PIPELINE, "job_id": JOB},
    )
    assert identity.repository_key == REPOSITORY


@pytest.mark.parametrize(
    ("changes", "field", "value"),
    [
        pytest.param({ORG_ID: ORG.upper(), PROJECT_ID: PROJECT.upper()}, "repository", REPOSITORY,
                     id="upper-case-uuids-folded"),
        pytest.param({PDEF_ID: PIPELINE_DEFINITION.upper()}, "workflow", PIPELINE_DEFINITION, id="pdef-folded"),
        pytest.param({WORKFLOW_ID: WORKFLOW.upper()}, "run_id", WORKFLOW, id="workflow-id-folded"),
        pytest.param({PDEF_ID: ABSENT}, "workflow", "", id="no-pipeline-definition"),
        pytest.param({WORKFLOW_ID: ABSENT}, "run_id", None, id="no-workflow-id"),
        pytest.param({PIPELINE_ID: ABSENT, JOB_ID: ABSENT}, "repository", REPOSITORY, id="no-pipeline-or-job-id"),
        pytest.param({REF: ABSENT, ORIGIN: ABSENT}, "ref", "", id="custom-webhook-pipeline"),
        pytest.param({REF: ""}, "ref", "", id="empty-ref-is-absent"),
        pytest.param({REF: "refs/tags/v1.2.3"}, "ref", "refs/tags/v1.2.3", id="tag"),
        pytest.param({REF: "r" * 1024}, "ref", "r" * 1024, id="ref-at-limit"),
        pytest.param({REF: "refs/heads/feature branch"}, "ref", "refs/heads/feature branch", id="ref-space-kept"),
        pytest.param({"sub": "anything at all", "user_id": 7, "unknown": {"x": [1]}}, "repository", REPOSITORY,
                     id="sub-and-unknown-claims-ignored"),
        pytest.param({}, "sha", "", id="no-commit"),
        pytest.param({}, "actor", None, id="no-actor"),
        pytest.param({}, "event_name", None, id="no-event"),
        pytest.param({}, "runner_environment", None, id="no-runner"),
        pytest.param({}, "environment", None, id="no-environment"),
    ],
)
def test_identity_accepts(changes: dict[str, Any], field: str, value: Any) -> None:
    assert getattr(changed(changes), field) == value


@pytest.mark.parametrize(
    ("changes", "extra", "value"),
    [
        pytest.param({CONTEXT_IDS: []}, "context_ids", (), id="no-contexts"),
        pytest.param({CONTEXT_IDS: ABSENT}, "context_ids", None, id="contexts-claim-absent"),
        pytest.param({CONTEXT_IDS: [CONTEXT.upper(), OTHER_UUID]}, "context_ids", (CONTEXT, OTHER_UUID),
                     id="contexts-folded-order-kept"),
        pytest.param({CONTEXT_IDS: [CONTEXT] * 100}, "context_ids", (CONTEXT,) * 100, id="contexts-at-limit"),
        pytest.param({ORIGIN: ""}, "vcs_origin", None, id="empty-origin-is-absent"),
        pytest.param({ORIGIN: "GitHub.com/Acme/Widgets"}, "vcs_origin", "GitHub.com/Acme/Widgets",
                     id="origin-case-kept"),
        pytest.param({ORIGIN: "bitbucket.org/acme/widgets"}, "vcs_origin", "bitbucket.org/acme/widgets",
                     id="origin-bitbucket"),
        pytest.param({SSH: True}, "ssh_rerun", True, id="ssh-rerun-read-then-refused-by-checks"),
        pytest.param({PIPELINE_ID: ABSENT}, "pipeline_id", None, id="no-pipeline-id"),
        pytest.param({JOB_ID: JOB.upper()}, "job_id", JOB, id="job-id-folded"),
    ],
)
def test_identity_extra(changes: dict[str, Any], extra: str, value: Any) -> None:
    assert changed(changes).extra[extra] == value


def test_root_issuer_identity() -> None:
    identity = changed({}, ROOT_ISSUER)
    assert (identity.issuer, identity.repository) == (ROOT_ISSUER, REPOSITORY)


# --- identity(): malformed tokens -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "claim"),
    [
        # Missing required claims.
        pytest.param({ORG_ID: ABSENT}, ORG_ID, id="missing-org-id"),
        pytest.param({PROJECT_ID: ABSENT}, PROJECT_ID, id="missing-project-id"),
        pytest.param({SSH: ABSENT}, SSH, id="missing-ssh-rerun"),
        # Every UUID claim: wrong JSON type, bad shape, look-alikes.
        *[pytest.param({name: value}, name, id=f"{name.removeprefix(P)}-{label}")
          for name in UUID_CLAIMS
          for label, value in (
              ("number", 7), ("boolean", True), ("null", None), ("array", [ORG]), ("object", {"id": ORG}),
              ("empty", ""), ("no-dashes", ORG.replace("-", "")), ("braces", "{" + ORG + "}"),
              ("urn", "urn:uuid:" + ORG), ("too-long", ORG + "0"), ("not-hex", "g" + ORG[1:]),
              ("trailing-lf", ORG + "\n"), ("nul", ORG[:-1] + "\x00"), ("space", " " + ORG),
              ("fullwidth-digit", "\uff17" + ORG[1:]), ("cyrillic-a", ORG.replace("a", "\u0430")),
          )],
        # context-ids: a JSON array of UUID strings.
        pytest.param({CONTEXT_IDS: CONTEXT}, CONTEXT_IDS, id="contexts-string"),
        pytest.param({CONTEXT_IDS: None}, CONTEXT_IDS, id="contexts-null"),
        pytest.param({CONTEXT_IDS: {"0": CONTEXT}}, CONTEXT_IDS, id="contexts-object"),
        pytest.param({CONTEXT_IDS: [CONTEXT, 5]}, CONTEXT_IDS, id="contexts-number-entry"),
        pytest.param({CONTEXT_IDS: [[CONTEXT]]}, CONTEXT_IDS, id="contexts-nested"),
        pytest.param({CONTEXT_IDS: [None]}, CONTEXT_IDS, id="contexts-null-entry"),
        pytest.param({CONTEXT_IDS: ["ctx-name"]}, CONTEXT_IDS, id="contexts-name-not-id"),
        pytest.param({CONTEXT_IDS: [""]}, CONTEXT_IDS, id="contexts-empty-entry"),
        pytest.param({CONTEXT_IDS: [CONTEXT + "\n"]}, CONTEXT_IDS, id="contexts-lf"),
        pytest.param({CONTEXT_IDS: [CONTEXT] * 101}, CONTEXT_IDS, id="contexts-too-many"),
        # ssh-rerun: a JSON boolean, nothing that merely reads like one.
        pytest.param({SSH: "false"}, SSH, id="ssh-rerun-string-false"),
        pytest.param({SSH: "true"}, SSH, id="ssh-rerun-string-true"),
        pytest.param({SSH: 0}, SSH, id="ssh-rerun-zero"),
        pytest.param({SSH: 1}, SSH, id="ssh-rerun-one"),
        pytest.param({SSH: None}, SSH, id="ssh-rerun-null"),
        pytest.param({SSH: [False]}, SSH, id="ssh-rerun-array"),
        pytest.param({SSH: 0.0}, SSH, id="ssh-rerun-float"),
        # vcs-origin: printable ASCII without spaces.
        pytest.param({ORIGIN: 7}, ORIGIN, id="origin-number"),
        pytest.param({ORIGIN: None}, ORIGIN, id="origin-null"),
        pytest.param({ORIGIN: ["github.com/acme/widgets"]}, ORIGIN, id="origin-array"),
        pytest.param({ORIGIN: "github.com/acme/wid gets"}, ORIGIN, id="origin-space"),
        pytest.param({ORIGIN: "github.com/acme/widgets\n"}, ORIGIN, id="origin-lf"),
        pytest.param({ORIGIN: "github.com/acme/w\u00efdgets"}, ORIGIN, id="origin-non-ascii"),
        pytest.param({ORIGIN: "github.com/\u0430cme/widgets"}, ORIGIN, id="origin-cyrillic"),
        pytest.param({ORIGIN: "g" * 1025}, ORIGIN, id="origin-too-long"),
        # vcs-ref: printable ASCII.
        pytest.param({REF: True}, REF, id="ref-boolean"),
        pytest.param({REF: "refs/heads/main\r"}, REF, id="ref-cr"),
        pytest.param({REF: "refs/heads/ma\u00efn"}, REF, id="ref-non-ascii"),
        pytest.param({REF: "refs/heads/\x00"}, REF, id="ref-nul"),
        pytest.param({REF: "r" * 1025}, REF, id="ref-too-long"),
    ],
)
def test_identity_rejects(changes: dict[str, Any], claim: str) -> None:
    with pytest.raises(Problem) as raised:
        changed(changes)
    assert raised.value.code == "malformed_token"
    assert repr(claim) in raised.value.detail


def test_identity_rejects_non_object_payload() -> None:
    with pytest.raises(Problem) as raised:
        PROVIDER.identity(["not", "an", "object"], ISSUER)  # type: ignore[arg-type]
    assert raised.value.code == "malformed_token"


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        pytest.param({ORG_ID: 7}, "JSON integer", id="number"),
        pytest.param({PROJECT_ID: None}, "JSON null", id="null"),
        pytest.param({SSH: "false"}, "JSON string; expected a JSON boolean", id="ssh-string"),
        pytest.param({SSH: ABSENT}, "has no 'oidc.circleci.com/ssh-rerun' claim", id="ssh-missing"),
        pytest.param({CONTEXT_IDS: CONTEXT}, "JSON string; expected a JSON array", id="contexts-string"),
        pytest.param({CONTEXT_IDS: [1]}, "holds a JSON integer", id="contexts-entry-number"),
        pytest.param({CONTEXT_IDS: [CONTEXT] * 101}, "has 101 entries", id="contexts-count"),
    ],
)
def test_malformed_names_the_json_type(changes: dict[str, Any], phrase: str) -> None:
    with pytest.raises(Problem) as raised:
        changed(changes)
    assert phrase in raised.value.detail


@pytest.mark.parametrize("changes", [{REF: "refs/heads/SECRET\n"}, {ORIGIN: "SECRET host"},
                                     {CONTEXT_IDS: ["SECRET"]}, {ORG_ID: "SECRET"}, {SSH: "SECRET"}])
def test_malformed_never_echoes_the_value(changes: dict[str, Any]) -> None:
    with pytest.raises(Problem) as raised:
        changed(changes)
    assert "SECRET" not in raised.value.detail


# --- personal data ----------------------------------------------------------------------------------------


def test_the_user_id_in_sub_never_reaches_the_identity_checks_or_denials() -> None:
    identity = changed({})
    everywhere = repr((asdict(identity), identity.ci()))
    assert USER not in everywhere
    problem = denial(PROVIDER, identity, evaluate(PROVIDER, identity, [pinned(vcs_ref="refs/heads/x")]))
    assert USER not in repr((problem.detail, problem.hints, problem.checks))
    assert identity.ci()["actor"] is None


def test_ci_record_is_what_introspection_and_events_carry() -> None:
    assert changed({}).ci() == {
        "provider": "circleci", "issuer": ISSUER, "repository": REPOSITORY, "repository_id": PROJECT,
        "owner_id": ORG, "workflow": PIPELINE_DEFINITION, "workflow_ref": "", "environment": None, "ref": VCS_REF,
        "sha": "", "run_id": WORKFLOW, "actor": None, "event_name": None, "runner_environment": None,
    }


# --- checks(): the conformance table ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity", "config", "failed"),
    [
        pytest.param({}, {}, set(), id="fixture-matches"),
        # project: organization and project ids, case folded.
        pytest.param({}, {"owner": ORG.upper(), "name": PROJECT.upper()}, set(), id="publisher-upper-case"),
        pytest.param({"org": ORG.upper(), "project": PROJECT.upper()}, {}, set(), id="token-upper-case"),
        pytest.param({}, {"name": OTHER_UUID}, {"project"}, id="other-project"),
        pytest.param({"project": OTHER_UUID}, {}, {"project"}, id="token-other-project"),
        # issuer_organization: the token's org-id is its issuer's organization and the publisher's.
        pytest.param({"org": OTHER_ORG}, {}, {"project", "issuer_organization"}, id="org-id-not-the-issuers"),
        pytest.param({}, {"owner": OTHER_ORG}, {"project", "issuer_organization"},
                     id="publisher-of-another-org-under-this-issuer"),
        # ssh-rerun must be false.
        pytest.param({"ssh": True}, {}, {"ssh_rerun"}, id="ssh-rerun"),
        pytest.param({"ssh": True}, {"conditions": {"pipeline_definition_id": PIPELINE_DEFINITION}}, {"ssh_rerun"},
                     id="ssh-rerun-pinned-publisher"),
        # pipeline_definition: only when pinned.
        pytest.param({}, {"conditions": {"pipeline_definition_id": PIPELINE_DEFINITION}}, set(), id="pdef-match"),
        pytest.param({}, {"conditions": {"pipeline_definition_id": PIPELINE_DEFINITION.upper()}}, set(),
                     id="pdef-case-folded"),
        pytest.param({}, {"conditions": {"pipeline_definition_id": OTHER_UUID}}, {"pipeline_definition"},
                     id="pdef-other"),
        pytest.param({"pdef": ABSENT}, {"conditions": {"pipeline_definition_id": PIPELINE_DEFINITION}},
                     {"pipeline_definition"}, id="pdef-missing"),
        pytest.param({"pdef": ABSENT}, {}, set(), id="pdef-any-missing"),
        pytest.param({"pdef": OTHER_UUID}, {}, set(), id="pdef-any"),
        # contexts: every listed one among the job's.
        pytest.param({}, {"conditions": {"context_ids": [CONTEXT]}}, set(), id="context-match"),
        pytest.param({"contexts": [OTHER_UUID, CONTEXT.upper()]}, {"conditions": {"context_ids": [CONTEXT]}}, set(),
                     id="context-among-more"),
        pytest.param({"contexts": [OTHER_UUID, CONTEXT]}, {"conditions": {"context_ids": [CONTEXT, OTHER_UUID]}},
                     set(), id="contexts-all"),
        pytest.param({}, {"conditions": {"context_ids": [CONTEXT, OTHER_UUID]}}, {"contexts"},
                     id="contexts-one-of-two-is-not-enough"),
        pytest.param({}, {"conditions": {"context_ids": [OTHER_UUID]}}, {"contexts"}, id="context-other"),
        pytest.param({"contexts": []}, {"conditions": {"context_ids": [CONTEXT]}}, {"contexts"}, id="no-context"),
        pytest.param({"contexts": ABSENT}, {"conditions": {"context_ids": [CONTEXT]}}, {"contexts"},
                     id="contexts-claim-missing"),
        pytest.param({"contexts": ABSENT}, {}, set(), id="contexts-any-missing"),
        pytest.param({"contexts": []}, {"conditions": {"context_ids": []}}, set(), id="contexts-empty-list-is-any"),
        # vcs_origin: ASCII case-insensitive, present.
        pytest.param({}, {"conditions": {"vcs_origin": VCS_ORIGIN}}, set(), id="origin-match"),
        pytest.param({"origin": "GitHub.com/ACME/widgets"}, {"conditions": {"vcs_origin": VCS_ORIGIN}}, set(),
                     id="origin-case-insensitive"),
        pytest.param({"origin": "github.com/fork/widgets"}, {"conditions": {"vcs_origin": VCS_ORIGIN}},
                     {"vcs_origin"}, id="origin-fork"),
        pytest.param({"origin": "https://github.com/acme/widgets"}, {"conditions": {"vcs_origin": VCS_ORIGIN}},
                     {"vcs_origin"}, id="origin-with-scheme"),
        pytest.param({"origin": "github.com/acme/widgets-evil"}, {"conditions": {"vcs_origin": VCS_ORIGIN}},
                     {"vcs_origin"}, id="origin-prefix"),
        pytest.param({"origin": ABSENT}, {"conditions": {"vcs_origin": VCS_ORIGIN}}, {"vcs_origin"},
                     id="origin-missing"),
        pytest.param({"origin": ABSENT}, {}, set(), id="origin-any-missing"),
        # vcs_ref: exact.
        pytest.param({}, {"conditions": {"vcs_ref": VCS_REF}}, set(), id="vcs-ref-match"),
        pytest.param({}, {"conditions": {"vcs_ref": "refs/heads/Main"}}, {"vcs_ref"}, id="vcs-ref-case"),
        pytest.param({}, {"conditions": {"vcs_ref": "refs/heads/mai"}}, {"vcs_ref"}, id="vcs-ref-prefix"),
        pytest.param({"ref": "refs/tags/v1"}, {"conditions": {"vcs_ref": "refs/tags/v1"}}, set(), id="vcs-ref-tag"),
        pytest.param({"ref": ABSENT}, {"conditions": {"vcs_ref": VCS_REF}}, {"vcs_ref"}, id="vcs-ref-missing"),
        pytest.param({"ref": ABSENT}, {}, set(), id="vcs-ref-any-missing"),
        # ref: the common ref patterns, on vcs-ref.
        pytest.param({}, {"ref_patterns": ("refs/heads/main",)}, set(), id="ref-pattern-exact"),
        pytest.param({"ref": "refs/tags/v1.2"}, {"ref_patterns": ("refs/tags/v*",)}, set(), id="ref-pattern-tag"),
        pytest.param({}, {"ref_patterns": ("refs/tags/v*",)}, {"ref"}, id="ref-pattern-miss"),
        pytest.param({}, {"ref_patterns": ("main",)}, {"ref"}, id="ref-pattern-is-full-ref"),
        pytest.param({}, {"ref_patterns": ("refs/heads/MAIN",)}, {"ref"}, id="ref-pattern-case-sensitive"),
        pytest.param({"ref": ABSENT}, {"ref_patterns": ("refs/heads/*",)}, {"ref"}, id="ref-pattern-no-ref"),
        pytest.param({"ref": ABSENT}, {"ref_patterns": ("*",)}, set(), id="ref-pattern-star-no-ref"),
        # A publisher's runner flag changes nothing (the token does not say where the job ran).
        pytest.param({}, {"allow_self_hosted_runners": True}, set(), id="runner-flag-no-effect"),
        # Several at once: every row is still evaluated.
        pytest.param({"ssh": True, "pdef": ABSENT, "contexts": [], "origin": ABSENT, "ref": ABSENT},
                     {"ref_patterns": ("refs/tags/*",),
                      "conditions": {"pipeline_definition_id": PIPELINE_DEFINITION, "context_ids": [CONTEXT],
                                     "vcs_origin": VCS_ORIGIN, "vcs_ref": VCS_REF}},
                     set(CHECK_ORDER) - {"project", "issuer_organization"}, id="everything-fails"),
    ],
)
def test_checks(identity: dict[str, Any], config: dict[str, Any], failed: set[str]) -> None:
    assert failed_checks(identity_with(**identity), publisher(**config)) == failed


@pytest.mark.parametrize(
    ("issuer", "token_org", "publisher_org", "passed"),
    [
        pytest.param(ISSUER, ORG, ORG, True, id="org-issuer"),
        pytest.param(ISSUER.replace(ORG, ORG.upper()), ORG, ORG, True, id="org-issuer-upper-case-url"),
        pytest.param(ISSUER, OTHER_ORG, ORG, False, id="org-issuer-other-token-org"),
        pytest.param(ISSUER, ORG, OTHER_ORG, False, id="org-issuer-other-publisher-org"),
        pytest.param(ROOT_ISSUER, ORG, ORG, True, id="root-issuer"),
        pytest.param(ROOT_ISSUER, OTHER_ORG, ORG, False, id="root-issuer-other-org"),
        pytest.param(LOOPBACK, ORG, ORG, True, id="loopback"),
        pytest.param(LOOPBACK, OTHER_ORG, ORG, False, id="loopback-other-org"),
        pytest.param("https://circleci.example.com/org/" + ORG, ORG, ORG, True, id="server-org-issuer"),
        pytest.param("https://circleci.example.com/org/" + ORG, OTHER_ORG, OTHER_ORG, False,
                     id="server-org-issuer-other-org"),
        pytest.param(f"{ROOT_ISSUER}/org/{OTHER_ORG}", ORG, ORG, False, id="another-orgs-issuer"),
    ],
)
def test_issuer_organization(issuer: str, token_org: str, publisher_org: str, passed: bool) -> None:
    identity = identity_with(issuer, org=token_org)
    result = results_by_check(identity, publisher(issuer=issuer, owner=publisher_org))["issuer_organization"]
    assert result.passed is passed
    assert result.claim == ORG_ID and result.actual == token_org


@pytest.mark.parametrize(
    ("issuer", "organization"),
    [
        (ISSUER, ORG),
        (ISSUER.replace(ORG, ORG.upper()), ORG),
        (ROOT_ISSUER, None),
        (LOOPBACK, None),
        (f"{ROOT_ISSUER}/org/not-a-uuid", None),
        (f"{ROOT_ISSUER}/org/{ORG}/extra", None),
        (f"{ROOT_ISSUER}/orgs/{ORG}", None),
        (f"https://oidc.example.com/tenant/org/{ORG}", ORG),
    ],
)
def test_issuer_organization_of_a_url(issuer: str, organization: str | None) -> None:
    assert issuer_organization(issuer) == organization


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({}, id="matching"),
        pytest.param({"owner": OTHER_ORG, "ref_patterns": ("x",),
                      "conditions": {"pipeline_definition_id": OTHER_UUID, "context_ids": [OTHER_UUID],
                                     "vcs_origin": "x.example/y", "vcs_ref": "refs/heads/x"}}, id="failing"),
    ],
)
def test_every_row_always_reported_in_order(config: dict[str, Any]) -> None:
    assert [r.check for r in PROVIDER.checks(identity_with(ssh=True), publisher(**config))] == CHECK_ORDER


@pytest.mark.parametrize(
    ("identity", "config", "check", "expected"),
    [
        pytest.param({}, {}, "project", {"claim": PROJECT_ID, "expected": REPOSITORY, "actual": REPOSITORY,
                                         "passed": True, "note": None}, id="project"),
        pytest.param({}, {}, "issuer_organization", {"claim": ORG_ID, "expected": ORG, "actual": ORG, "note": None},
                     id="issuer-organization"),
        pytest.param({}, {}, "ssh_rerun", {"claim": SSH, "expected": False, "actual": False, "passed": True},
                     id="ssh-rerun"),
        pytest.param({"ssh": True}, {}, "ssh_rerun", {"expected": False, "actual": True, "passed": False},
                     id="ssh-rerun-true"),
        pytest.param({}, {}, "pipeline_definition", {"claim": PDEF_ID, "expected": "any",
                                                     "actual": PIPELINE_DEFINITION}, id="pdef-any"),
        pytest.param({}, {"conditions": {"pipeline_definition_id": PIPELINE_DEFINITION}}, "pipeline_definition",
                     {"expected": PIPELINE_DEFINITION, "passed": True}, id="pdef-pinned"),
        pytest.param({}, {}, "contexts", {"claim": CONTEXT_IDS, "expected": "any", "actual": [CONTEXT]},
                     id="contexts-any"),
        pytest.param({"contexts": ABSENT}, {}, "contexts", {"expected": "any", "actual": None}, id="contexts-none"),
        pytest.param({}, {"conditions": {"context_ids": [CONTEXT, OTHER_UUID]}}, "contexts",
                     {"expected": f"all of {CONTEXT}, {OTHER_UUID}", "actual": [CONTEXT], "passed": False},
                     id="contexts-all-of"),
        pytest.param({}, {}, "vcs_origin", {"claim": ORIGIN, "expected": "any", "actual": VCS_ORIGIN},
                     id="origin-any"),
        pytest.param({}, {}, "vcs_ref", {"claim": REF, "expected": "any", "actual": VCS_REF}, id="vcs-ref-any"),
        pytest.param({}, {}, "ref", {"claim": REF, "expected": "any", "actual": VCS_REF}, id="ref-any"),
        pytest.param({"ref": ABSENT}, {}, "ref", {"expected": "any", "actual": None, "passed": True},
                     id="ref-any-absent"),
        pytest.param({}, {"ref_patterns": ("refs/heads/*",)}, "ref", {"expected": ["refs/heads/*"], "passed": True},
                     id="ref-patterns"),
    ],
)
def test_check_fields(identity: dict[str, Any], config: dict[str, Any], check: str, expected: dict[str, Any]) -> None:
    result = results_by_check(identity_with(**identity), publisher(**config))[check]
    for field, value in expected.items():
        assert getattr(result, field) == value, field


@pytest.mark.parametrize(
    ("issuer", "identity", "config", "check", "phrases"),
    [
        pytest.param(ISSUER, {"project": OTHER_UUID}, {}, "project", [OTHER_UUID, PROJECT], id="project"),
        pytest.param(ISSUER, {"org": OTHER_ORG}, {}, "project", [OTHER_ORG, "organization"], id="project-org"),
        pytest.param(ISSUER, {"org": OTHER_ORG}, {}, "issuer_organization",
                     [OTHER_ORG, ORG, "never speaks for another"], id="token-org-not-the-issuers"),
        pytest.param(ISSUER, {}, {"owner": OTHER_ORG}, "issuer_organization",
                     [OTHER_ORG, f"{ROOT_ISSUER}/org/{OTHER_ORG}"], id="publisher-under-wrong-issuer"),
        pytest.param(ROOT_ISSUER, {}, {"issuer": ROOT_ISSUER}, "issuer_organization",
                     ["names no organization", "org-id decides"], id="root-issuer-passes-with-note"),
        pytest.param(ROOT_ISSUER, {"org": OTHER_ORG}, {"issuer": ROOT_ISSUER}, "issuer_organization",
                     [OTHER_ORG, ORG], id="root-issuer-other-org"),
        pytest.param(ISSUER, {"ssh": True}, {}, "ssh_rerun", ["Rerun job with SSH", "without SSH"], id="ssh"),
        pytest.param(ISSUER, {"pdef": ABSENT}, {"conditions": {"pipeline_definition_id": PIPELINE_DEFINITION}},
                     "pipeline_definition", ["names no pipeline definition"], id="pdef-missing"),
        pytest.param(ISSUER, {}, {"conditions": {"pipeline_definition_id": OTHER_UUID}}, "pipeline_definition",
                     ["another pipeline definition", "Project Setup"], id="pdef-other"),
        pytest.param(ISSUER, {}, {"conditions": {"context_ids": [CONTEXT, OTHER_UUID]}}, "contexts",
                     ["every context", OTHER_UUID], id="contexts"),
        pytest.param(ISSUER, {"origin": ABSENT}, {"conditions": {"vcs_origin": VCS_ORIGIN}}, "vcs_origin",
                     ["custom webhook"], id="origin-missing"),
        pytest.param(ISSUER, {"origin": "github.com/fork/widgets"}, {"conditions": {"vcs_origin": VCS_ORIGIN}},
                     "vcs_origin", ["fork", "no scheme"], id="origin-other"),
        pytest.param(ISSUER, {"ref": ABSENT}, {"conditions": {"vcs_ref": VCS_REF}}, "vcs_ref", ["custom webhook"],
                     id="vcs-ref-missing"),
        pytest.param(ISSUER, {}, {"conditions": {"vcs_ref": "refs/heads/Main"}}, "vcs_ref", ["case-sensitive"],
                     id="vcs-ref-case"),
        pytest.param(ISSUER, {}, {"conditions": {"vcs_ref": "main"}}, "vcs_ref", ["refs/heads/main"],
                     id="vcs-ref-other"),
        pytest.param(ISSUER, {"ref": ABSENT}, {"ref_patterns": ("refs/heads/*",)}, "ref", ["custom webhook"],
                     id="ref-missing"),
    ],
)
def test_check_notes(issuer: str, identity: dict[str, Any], config: dict[str, Any], check: str,
                     phrases: list[str]) -> None:
    note = results_by_check(identity_with(issuer, **identity), publisher(**config))[check].note
    assert note is not None
    for phrase in phrases:
        assert phrase in note


def test_sub_and_unread_claims_never_decide() -> None:
    plain = PROVIDER.checks(identity_with(), publisher())
    noisy = PROVIDER.checks(changed({"sub": f"org/{OTHER_ORG}/project/{OTHER_UUID}/user/x", "aud": "other",
                                     "oidc.circleci.com/user-id": OTHER_UUID}), publisher())
    assert plain == noisy


# --- bindings() -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [{}, {"owner_id": None, "name_id": None}, {"owner_id": ORG}])
def test_nothing_is_ever_bound(config: dict[str, Any]) -> None:
    """The ids are the names: a publisher pins them from its creation."""
    assert PROVIDER.bindings(identity_with(), publisher(**config)) == {}


# --- matching: evaluate() and denial() --------------------------------------------------------------------


def test_evaluate_and_explain() -> None:
    pubs = [publisher(), publisher(id="pub-2", package="other", conditions={"vcs_ref": "refs/tags/v1"})]
    evaluations = evaluate(PROVIDER, identity_with(), pubs)
    assert [e.matched for e in evaluations] == [True, False]
    explain = evaluations[1].as_explain()
    assert [c["check"] for c in explain["checks"]] == CHECK_ORDER
    assert [c["check"] for c in explain["checks"] if not c["passed"]] == ["vcs_ref"]
    json.dumps(explain)  # every value is JSON


@pytest.mark.parametrize(
    ("issuer", "config"),
    [
        pytest.param(ISSUER, {"issuer": ROOT_ISSUER}, id="root-issuer-publisher-org-token"),
        pytest.param(ROOT_ISSUER, {"issuer": ISSUER}, id="org-issuer-publisher-root-token"),
        pytest.param(ISSUER, {"issuer": ISSUER + "/"}, id="issuer-not-byte-equal"),
        pytest.param(ISSUER, {"provider": "github"}, id="github-publisher"),
    ],
)
def test_evaluate_skips_publishers_of_another_issuer_or_provider(issuer: str, config: dict[str, Any]) -> None:
    assert evaluate(PROVIDER, identity_with(issuer), [publisher(**config)]) == []


def test_denial_without_candidates_uses_circleci_field_names() -> None:
    problem = denial(PROVIDER, identity_with(), [])
    assert problem.code == "no_matching_publisher"
    assert REPOSITORY in problem.detail and ISSUER in problem.detail
    hint = json.loads(problem.hints[0].removeprefix("add one: POST /v1/admin/publishers with "))
    assert hint == {"package": "<package>", "provider": "circleci", "issuer": ISSUER, "organization_id": ORG,
                    "project_id": PROJECT, "pipeline_definition_id": PIPELINE_DEFINITION, "vcs_origin": VCS_ORIGIN}


def test_denial_hint_of_a_webhook_pipeline_names_only_the_ids() -> None:
    identity = identity_with(pdef=ABSENT, origin=ABSENT, ref=ABSENT)
    hint = denial(PROVIDER, identity, []).hints[0]
    assert json.loads(hint.removeprefix("add one: POST /v1/admin/publishers with ")) == {
        "package": "<package>", "provider": "circleci", "issuer": ISSUER, "organization_id": ORG,
        "project_id": PROJECT}


@pytest.mark.parametrize(
    ("identity", "config", "hint"),
    [
        pytest.param({"ssh": True}, {},
                     "publisher pub-1 (package widgets): ssh_rerun: the token has True, expected False", id="ssh"),
        pytest.param({}, {"conditions": {"pipeline_definition_id": OTHER_UUID}},
                     f"publisher pub-1 (package widgets): pipeline_definition: the token has '{PIPELINE_DEFINITION}', "
                     f"expected '{OTHER_UUID}'", id="pdef"),
        pytest.param({"pdef": ABSENT}, {"conditions": {"pipeline_definition_id": OTHER_UUID}},
                     f"publisher pub-1 (package widgets): pipeline_definition: the token has no {PDEF_ID}, "
                     f"expected '{OTHER_UUID}'", id="pdef-missing"),
        pytest.param({}, {"conditions": {"context_ids": [OTHER_UUID]}},
                     f"publisher pub-1 (package widgets): contexts: the token has ['{CONTEXT}'], "
                     f"expected 'all of {OTHER_UUID}'", id="contexts"),
        pytest.param({"origin": "github.com/fork/widgets"}, {"conditions": {"vcs_origin": VCS_ORIGIN}},
                     f"publisher pub-1 (package widgets): vcs_origin: the token has 'github.com/fork/widgets', "
                     f"expected '{VCS_ORIGIN}'", id="origin"),
        pytest.param({}, {"conditions": {"vcs_ref": "refs/tags/v1"}},
                     "publisher pub-1 (package widgets): vcs_ref: the token has 'refs/heads/main', "
                     "expected 'refs/tags/v1'", id="vcs-ref"),
        pytest.param({"ref": ABSENT}, {"ref_patterns": ("refs/tags/*",)},
                     f"publisher pub-1 (package widgets): ref: the token has no {REF}, expected one of "
                     "['refs/tags/*']", id="ref-missing"),
        pytest.param({"org": OTHER_ORG}, {},
                     f"publisher pub-1 (package widgets): project: the token has '{OTHER_ORG}/{PROJECT}', "
                     f"expected '{REPOSITORY}'", id="project"),
    ],
)
def test_denial_hints_name_the_differing_part(identity: dict[str, Any], config: dict[str, Any], hint: str) -> None:
    ident = identity_with(**identity)
    problem = denial(PROVIDER, ident, evaluate(PROVIDER, ident, [publisher(**config)]))
    assert problem.code == "no_matching_publisher"
    assert problem.hints[0].startswith(hint)


def test_denial_detail_names_the_closest_publisher_and_first_failed_check() -> None:
    identity = identity_with(ssh=True)
    problem = denial(PROVIDER, identity, evaluate(PROVIDER, identity, [publisher()]))
    assert "publisher pub-1 (package widgets), whose ssh_rerun check failed" in problem.detail
    assert f"claim {SSH} is True, expected False" in problem.detail


# --- registry ---------------------------------------------------------------------------------------------


def test_registered_and_issues_no_jti() -> None:
    assert isinstance(get_provider("circleci"), CircleCIProvider)
    assert PROVIDERS["circleci"].name == "circleci"
    assert PROVIDERS["circleci"].issues_jti is False
    assert PROVIDERS["circleci"].public_issuer == ROOT_ISSUER


# --- the admin input of a publisher -----------------------------------------------------------------------

BODY = {"package": "widgets", "provider": "circleci", "organization_id": ORG, "project_id": PROJECT}


def read(body: dict[str, Any], **options: Any) -> Publisher:
    return publisher_input(body, ttl_max=21600, allow_loopback=options.get("allow_loopback", False))


def refused(body: dict[str, Any], **options: Any) -> Problem:
    with pytest.raises(Problem) as caught:
        read(body, **options)
    assert caught.value.code == "invalid_publisher" and caught.value.status == 422
    return caught.value


def test_a_circleci_publisher_in_neutral_fields_with_defaults() -> None:
    p = read(BODY)
    assert (p.provider, p.issuer, p.owner, p.name, p.workflow, p.owner_id, p.name_id) == (
        "circleci", ISSUER, ORG, PROJECT, "", ORG, PROJECT)
    assert p.conditions == {}
    assert publisher_json(replace(p, id=str(uuid.uuid4()))) | {"id": "x"} == {
        "id": "x", "package": "widgets", "provider": "circleci", "issuer": ISSUER, "organization_id": ORG,
        "project_id": PROJECT, "pipeline_definition_id": None, "context_ids": [], "vcs_origin": None,
        "vcs_ref": None, "ref_patterns": [], "allow_self_hosted_runners": False, "token_ttl_seconds": None,
        "permissions": ["publish-update"], "created_at": None}


def test_every_condition_folded_and_stored() -> None:
    p = read({**BODY, "organization_id": ORG.upper(), "project_id": PROJECT.upper(),
              "pipeline_definition_id": PIPELINE_DEFINITION.upper(),
              "context_ids": [OTHER_UUID, CONTEXT.upper(), CONTEXT], "vcs_origin": "GitHub.com/Acme/Widgets",
              "vcs_ref": "refs/tags/v1.2.3", "ref_patterns": ["refs/tags/v*"]})
    assert (p.owner, p.name, p.issuer) == (ORG, PROJECT, ISSUER)
    # Contexts: folded, without duplicates, sorted (a set of contexts, so its order never makes two publishers).
    assert p.conditions == {"pipeline_definition_id": PIPELINE_DEFINITION, "context_ids": [OTHER_UUID, CONTEXT],
                            "vcs_origin": "github.com/acme/widgets", "vcs_ref": "refs/tags/v1.2.3"}
    shown = publisher_json(p)
    assert (shown["context_ids"], shown["vcs_origin"], shown["vcs_ref"]) == (
        [OTHER_UUID, CONTEXT], "github.com/acme/widgets", "refs/tags/v1.2.3")
    # A token of that pipeline definition, tag, contexts and (differently cased) origin matches it.
    token = identity_with(ref="refs/tags/v1.2.3", contexts=[OTHER_UUID, CONTEXT], origin="github.com/ACME/widgets")
    assert failed_checks(token, p) == set()


@pytest.mark.parametrize(("issuer", "stored"), [
    (ROOT_ISSUER, ROOT_ISSUER),
    (ISSUER, ISSUER),
    (ISSUER.replace(ORG, ORG.upper()), ISSUER.replace(ORG, ORG.upper())),
    ("https://circleci.example.com/org/" + ORG, "https://circleci.example.com/org/" + ORG),
])
def test_the_issuer_may_be_the_root_or_the_organizations(issuer: str, stored: str) -> None:
    assert read({**BODY, "issuer": issuer}).issuer == stored


def test_a_loopback_issuer_only_when_allowed() -> None:
    assert read({**BODY, "issuer": LOOPBACK}, allow_loopback=True).issuer == LOOPBACK
    assert refused({**BODY, "issuer": LOOPBACK}).extra == {"field": "issuer"}


def test_an_issuer_of_another_organization_is_refused() -> None:
    problem = refused({**BODY, "issuer": f"{ROOT_ISSUER}/org/{OTHER_ORG}"})
    assert problem.extra == {"field": "issuer"}
    assert OTHER_ORG in problem.detail and f"{ROOT_ISSUER}/org/{ORG}" in problem.detail


@pytest.mark.parametrize(("change", "field"), [
    ({"organization_id": None}, "organization_id"),
    ({"organization_id": "acme"}, "organization_id"),
    ({"organization_id": ORG.replace("-", "")}, "organization_id"),
    ({"organization_id": ORG + "\n"}, "organization_id"),
    ({"project_id": 5}, "project_id"),
    ({"project_id": "{" + PROJECT + "}"}, "project_id"),
    ({"pipeline_definition_id": "release"}, "pipeline_definition_id"),
    ({"context_ids": CONTEXT}, "context_ids"),
    ({"context_ids": ["org-global"]}, "context_ids"),
    ({"context_ids": [str(uuid.uuid4()) for _ in range(21)]}, "context_ids"),
    ({"vcs_origin": "https://github.com/acme/widgets"}, "vcs_origin"),
    ({"vcs_origin": "github.com"}, "vcs_origin"),
    ({"vcs_origin": "github.com/acme/widgets/"}, "vcs_origin"),
    ({"vcs_origin": "github.com/acme/wid gets"}, "vcs_origin"),
    ({"vcs_origin": "github.com//widgets"}, "vcs_origin"),
    ({"vcs_ref": "main"}, "vcs_ref"),
    ({"vcs_ref": "refs/heads/main branch"}, "vcs_ref"),
    ({"vcs_ref": "refs/"}, "vcs_ref"),
    ({"environments": ["prod"]}, "environments"),
    ({"workflow_filename": "release.yml"}, "workflow_filename"),
    ({"repository_owner": "acme"}, "repository_owner"),
    ({"require_protected_ref": True}, "require_protected_ref"),
    ({"issuer": "https://oidc.circleci.com/"}, "issuer"),
    ({"issuer": "http://oidc.circleci.com"}, "issuer"),
])
def test_circleci_refusals_name_the_field(change: dict[str, Any], field: str) -> None:
    problem = refused({**BODY, **change})
    assert problem.extra == {"field": field}
    assert problem.detail.startswith(f"{field}: ")


@pytest.mark.parametrize("origin", ["github.com/acme/widgets", "gitlab.com/group/sub/project",
                                    "bitbucket.org/acme/widgets", "git.example.com:8443/acme/widgets",
                                    "github.com/acme/widgets.js"])
def test_vcs_origins_that_can_match_are_kept(origin: str) -> None:
    assert read({**BODY, "vcs_origin": origin}).conditions["vcs_origin"] == origin


def test_identity_key_folds_uuids_origins_and_the_order_of_contexts() -> None:
    one = read({**BODY, "context_ids": [CONTEXT, OTHER_UUID], "vcs_origin": "GitHub.com/acme/widgets"})
    two = read({**BODY, "organization_id": ORG.upper(), "context_ids": [OTHER_UUID.upper(), CONTEXT],
                "vcs_origin": "github.com/ACME/widgets"})
    assert identity_key(one) == identity_key(two)
    assert identity_key(one) != identity_key(read(BODY))
    assert identity_key(read({**BODY, "vcs_ref": "refs/heads/main"})) != identity_key(read(BODY))


# --- the events of a CircleCI exchange, against their schemas ---------------------------------------------

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=timezone.utc)


def cloudevent(event: Event) -> dict[str, Any]:
    row = {"event_id": event.id, "type": event.type, "source": "urn:tpx:exchange", "subject": event.subject,
           "time": event.time, "data": json.loads(json.dumps(event.data)), "sequence": 42,
           "chainhash": bytes(range(32))}
    return to_cloudevent(row)


@pytest.mark.parametrize("changes", [{}, {"ref": ABSENT, "origin": ABSENT, "pdef": ABSENT, "contexts": ABSENT}],
                         ids=["full", "custom-webhook"])
def test_token_issued_and_denied_events_match_their_schemas(changes: dict[str, Any]) -> None:
    identity = identity_with(**changes)
    issued = builders.token_issued(str(uuid.uuid4()), ["widgets"], {"widgets": ["publish-update"]},
                                   [str(uuid.uuid4())], identity.ci())
    issued.data.update(issued_at="2026-11-27T12:00:00Z", expires_at="2026-11-27T12:15:00Z")
    schemas.validate(cloudevent(issued))

    refused_publisher = publisher(id=str(uuid.uuid4()), conditions={"vcs_ref": "refs/tags/v1"})
    problem = denial(PROVIDER, identity, evaluate(PROVIDER, identity, [refused_publisher]))
    event = denial_cloudevent(identity, problem)
    schemas.validate(event)
    assert event["data"]["publishers"][0]["failed_checks"] == ["vcs_ref"]


@pytest.mark.parametrize("body", [BODY, {**BODY, "issuer": ROOT_ISSUER, "pipeline_definition_id": PIPELINE_DEFINITION,
                                         "context_ids": [CONTEXT, OTHER_UUID], "vcs_origin": "GitHub.com/Acme/W",
                                         "vcs_ref": "refs/heads/main", "ref_patterns": ["refs/heads/*"]}],
                         ids=["minimal", "every-condition"])
def test_publisher_created_and_deleted_events_match_their_schemas(body: dict[str, Any]) -> None:
    p = replace(read(body), id=str(uuid.uuid4()), created_at=NOW)
    for before, after, kind in ((None, publisher_json(p), event_types.PUBLISHER_CREATED),
                                (publisher_json(p), None, event_types.PUBLISHER_DELETED)):
        schemas.validate(cloudevent(builders.admin_change(kind, "credential:0123456789ab", p.id, before, after)))


def test_the_publisher_schema_refuses_a_circleci_publisher_with_a_foreign_member() -> None:
    p = replace(read(BODY), id=str(uuid.uuid4()), created_at=NOW)
    shown = {**publisher_json(p), "workflow_filename": "release.yml"}
    with pytest.raises(schemas.EventSchemaError):
        schemas.validate(cloudevent(builders.admin_change(event_types.PUBLISHER_CREATED, "credential:0123456789ab",
                                                          p.id, None, shown)))
