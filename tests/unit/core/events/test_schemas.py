"""The event catalogue (tpx/events/schemas): one schema per type, valid draft 2020-12, and
strict enough to refuse an event that grew a secret, personal data or a malformed envelope.

The good samples are built by the real emitters (minting, routes, store, sweeper,
refresher) without a database, so a change to an emitter that the schema does not
describe fails here first.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tpx.core import tokens
from tpx.core.events import builders, schemas
from tpx.core.events import types as event_types
from tpx.core.events.cloudevents import to_cloudevent
from tpx.core.events.types import Event
from tpx.core.issuers import issuer_json
from tpx.core.providers import PROVIDERS
from tpx.core.providers.base import CheckResult, Identity, Publisher
from tpx.core.providers.github import GitHubProvider
from tpx.core.providers.matching import PublisherEvaluation, denial
from tpx.core.publishers import publisher_json
from tpx.core.revocations import Rule
from tpx.core.times import rfc3339
from tests.support.claims import github_claims
from tests.support.events import denial_cloudevent
from tests.support.paths import ROOT

ISSUER = "https://token.actions.githubusercontent.com"
GITLAB = "https://gitlab.com"
ACTOR = "credential:0123456789ab"
NOW = datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=timezone.utc)
TOKEN = tokens.generate()
JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJpc3MiOiJodHRwczovL2V4YW1wbGUifQ.c2lnbmF0dXJl"
SOURCES = {"exchange": "urn:tpx:exchange", "revoker": "urn:tpx:revoker", "refresher": "urn:tpx:jwks-refresher"}


# -- samples built by the emitters ------------------------------------------------


def github_identity() -> Identity:
    return GitHubProvider().identity(github_claims(owner="octo-org", repo="octo-repo"), ISSUER)


def gitlab_identity() -> Identity:
    return Identity(provider="gitlab", issuer=GITLAB, repository="my-group/my-project", owner="my-group",
                    name="my-project", owner_id="72", repository_id="20", workflow=".gitlab-ci.yml",
                    workflow_ref="gitlab.com/my-group/my-project//.gitlab-ci.yml@refs/heads/main", environment=None,
                    ref="refs/heads/main", sha="714a629c0b401fdce83e847fc9589983fc6f46bc", run_id="1212",
                    actor=None, event_name="push", runner_environment="gitlab-hosted")


def github_publisher(**changes: Any) -> Publisher:
    fields = dict(id=str(uuid.uuid4()), package="octo-pkg", provider="github", issuer=ISSUER, owner="octo-org",
                  name="octo-repo", workflow="release.yml", owner_id="65", name_id=None, created_at=NOW)
    fields.update(changes)
    return Publisher(**fields)


def gitlab_publisher() -> Publisher:
    return Publisher(id=str(uuid.uuid4()), package="lab-pkg", provider="gitlab", issuer=GITLAB, owner="my-group",
                     name="my-project", workflow=".gitlab-ci.yml", environments=("prod",),
                     require_protected_ref=True, permissions=("publish-update", "publish-new"), created_at=NOW)


def issuer_row(**changes: Any) -> dict[str, Any]:
    row = dict(id=uuid.uuid4(), url=ISSUER, kind="github", audience=None, algorithms=["RS256"],
               allowed_packages=None, max_token_lifetime_seconds=7200, enabled=True, jwks_uri=None,
               keys_fetched_at=None, last_error=None, key_ids=[], created_at=NOW, updated_at=NOW)
    row.update(changes)
    return row


def token_row(identity: Identity, **changes: Any) -> dict[str, Any]:
    row = dict(id=uuid.uuid4(), packages=["octo-pkg"], publisher_ids=[uuid.uuid4()], ci=identity.ci(),
               issued_at=NOW - timedelta(minutes=20), expires_at=NOW - timedelta(minutes=5))
    row.update(changes)
    return row


def rule(kind: str = "package", **changes: Any) -> Rule:
    fields = dict(id=uuid.uuid4(), kind=kind, token_id=None, publisher_id=None, package=None, repository_key=None,
                  workflow=None, issued_after=None, issued_before=None, cutoff=NOW, reason="compromised runner",
                  actor=ACTOR, status="pending", revoked=5000, created_at=NOW, completed_at=None)
    fields.update(changes)
    return Rule(**fields)


def cloudevent(event: Event, source: str, sequence: int = 42) -> dict[str, Any]:
    """The event as the relay publishes it (to_cloudevent of its outbox row, JSON round trip)."""
    row = {"event_id": event.id, "type": event.type, "source": source, "subject": event.subject,
           "time": event.time, "data": json.loads(json.dumps(event.data)), "sequence": sequence,
           "chainhash": bytes(range(32))}
    return to_cloudevent(row)


def samples() -> list[tuple[str, dict[str, Any]]]:
    """(label, CloudEvent) for every type, several shapes for some."""
    gh, gl = github_identity(), gitlab_identity()
    out: list[tuple[str, dict[str, Any]]] = []

    def add(label: str, event: Event, source: str = "exchange") -> None:
        out.append((label, cloudevent(event, SOURCES[source])))

    token_id = str(uuid.uuid4())
    publisher_ids = [str(uuid.uuid4()), str(uuid.uuid4())]

    def issued(event: Event) -> Event:  # the times the mint statement adds (tpx.core.db.tokens)
        event.data.update(issued_at=rfc3339(NOW, seconds=True),
                          expires_at=rfc3339(NOW + timedelta(minutes=15), seconds=True))
        return event

    add("issued-github", issued(builders.token_issued(
        token_id, ["octo-pkg", "other-pkg"], {"octo-pkg": ["publish-update"],
                                              "other-pkg": ["publish-update", "publish-new"]},
        publisher_ids, gh.ci())))
    add("issued-gitlab", issued(builders.token_issued(token_id, ["lab-pkg"], {"lab-pkg": ["publish-update"]},
                                                      publisher_ids[:1], gl.ci())))
    loose = github_publisher()
    add("environment-unpinned", builders.environment_unpinned(loose.id, loose.package, token_id, "prod", gh.ci()))

    add("revoked-by-holder", builders.token_revoked(token_row(gh), "revoked by holder"))
    add("revoked-by-rule", builders.token_revoked(token_row(gl), "publisher deleted", uuid.uuid4()), "revoker")
    add("expired", builders.token_expired(token_row(gh)), "revoker")

    publisher = github_publisher()
    github = PROVIDERS["github"]
    add("bound", builders.publisher_bound(publisher.id, publisher.package,
                                          {github.fields[k]: v for k, v in github.bindings(gh, publisher).items()},
                                          gh.ci()))
    for label, p in (("github", publisher), ("gitlab", gitlab_publisher())):
        add(f"publisher-created-{label}",
            builders.admin_change(event_types.PUBLISHER_CREATED, ACTOR, p.id, None, publisher_json(p)))
        add(f"publisher-deleted-{label}",
            builders.admin_change(event_types.PUBLISHER_DELETED, ACTOR, p.id, publisher_json(p), None))

    row = issuer_row()
    before = issuer_json(row, "tpx")
    after = issuer_json(issuer_row(id=row["id"], enabled=False, allowed_packages=["acme-*"],
                                   jwks_uri=f"{ISSUER}/.well-known/jwks", keys_fetched_at=NOW,
                                   last_error="the JWKS could not be fetched: timed out",
                                   key_ids=["k1", "k2"]), "tpx")
    target = str(row["id"])
    add("issuer-created", builders.admin_change(event_types.ISSUER_CREATED, ACTOR, target, None, before))
    add("issuer-updated", builders.admin_change(event_types.ISSUER_UPDATED, ACTOR, target, before, after))
    add("issuer-deleted", builders.admin_change(event_types.ISSUER_DELETED, ACTOR, target, after, None))
    add("keys-rotated", builders.issuer_keys_rotated(row["id"], ISSUER, f"{ISSUER}/.well-known/jwks",
                                                     {"old": {"kty": "RSA"}, "same": {"kty": "RSA", "n": "1"}},
                                                     {"new": {"kty": "RSA"}, "same": {"kty": "RSA", "n": "2"}},
                                                     ["kid='sym': symmetric keys are refused"]), "refresher")

    selectors = [rule("token", token_id=uuid.uuid4()), rule("publisher", publisher_id=uuid.uuid4()),
                 rule("package", package="octo-pkg"),
                 rule("repository", repository_key="octo-org/octo-repo", workflow="release.yml",
                      issued_after=NOW - timedelta(days=1), issued_before=NOW, actor=None)]
    for pending in selectors:
        add(f"requested-{pending.kind}", builders.revocation_requested(pending))
        done = rule(**{**pending.__dict__, "status": "done", "completed_at": NOW + timedelta(seconds=3)})
        add(f"completed-{pending.kind}", builders.revocation_completed(done), "revoker")

    refused = github_publisher(environments=("prod",))
    out.append(("denied", denial_cloudevent(gh, denial(PROVIDERS["github"], gh, [PublisherEvaluation(refused, [
        CheckResult("repository", "repository", refused.repository, gh.repository, True),
        CheckResult("environment", "environment", ["prod"], "staging", False),
    ])]))))
    out.append(("denied-no-candidates", denial_cloudevent(gl, denial(PROVIDERS["gitlab"], gl, []))))
    return out


@pytest.fixture(scope="module")
def catalogue() -> schemas.Catalogue:
    return schemas.load_schemas()


SAMPLES = samples()


def sample(event_type: str) -> dict[str, Any]:
    return copy.deepcopy(next(event for _label, event in SAMPLES if event["type"] == event_type))


def assert_refused(event: dict[str, Any], path_part: str) -> schemas.EventSchemaError:
    with pytest.raises(schemas.EventSchemaError) as caught:
        schemas.validate(event)
    error = caught.value
    assert error.event_type == event.get("type")
    assert path_part in error.path, str(error)
    assert event["type"] in str(error) and error.path in str(error)
    assert TOKEN not in str(error) and JWT not in str(error)  # an error never echoes a secret
    return error


# -- the catalogue itself ---------------------------------------------------------


def test_every_declared_type_has_exactly_one_v1_schema(catalogue):
    declared = set(schemas.all_types())
    assert len(declared) == 14
    assert {t for t, _v in catalogue.events} == declared
    for event_type in declared:
        document = catalogue.events[(event_type, 1)]
        assert document["$id"] == f"urn:tpx:event:{event_type}:v1"
        assert document["x-tpx-version"] == 1
        assert document["title"] and len(document["description"]) > 80
        assert document["properties"]["type"] == {"const": event_type}
        assert (catalogue.folder / f"{event_type.removeprefix('dev.tpx.')}.v1.schema.json").is_file()


def test_every_schema_is_a_valid_draft_2020_12_schema(catalogue):
    assert len(catalogue.documents) == 15  # 14 types + common
    for identifier, document in catalogue.documents.items():
        assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema", identifier
        Draft202012Validator.check_schema(document)
        assert document["x-tpx-version"] == 1


def test_every_reference_resolves(catalogue):
    """Walk every $ref of every schema through the registry the validator uses."""
    registry = catalogue.registry()

    def refs(node):
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for identifier, document in catalogue.documents.items():
        resolver = registry.resolver(base_uri=identifier)
        for ref in refs(document):
            resolver.lookup(ref)  # raises if unresolvable


def test_the_packaged_schemas_are_the_default_and_load_from_a_folder(catalogue, tmp_path):
    assert catalogue.folder.name == "schemas" and catalogue.folder.parent.name == "events"
    for path in catalogue.folder.glob("*.json"):
        (tmp_path / path.name).write_text(path.read_text())
    copy_ = schemas.load_schemas(tmp_path)
    assert copy_.documents == catalogue.documents
    (tmp_path / "token.issued.v1.schema.json").rename(tmp_path / "token-issued.v1.schema.json")
    with pytest.raises(ValueError, match="must be named token.issued.v1.schema.json"):
        schemas.load_schemas(tmp_path)


def test_the_readme_lists_every_type():
    readme = (ROOT / "docs" / "events" / "README.md").read_text()
    for event_type in schemas.all_types():
        routing_key = event_type.removeprefix("dev.tpx.")
        assert f"`{routing_key}`" in readme, routing_key
        assert f"{routing_key}.v1.schema.json" in readme, routing_key


# -- good samples -----------------------------------------------------------------


def test_samples_cover_every_type():
    assert {event["type"] for _label, event in SAMPLES} == set(schemas.all_types())


@pytest.mark.parametrize(("label", "event"), SAMPLES, ids=[label for label, _ in SAMPLES])
def test_emitted_sample_validates(label, event):
    schemas.validate(event)


def test_denial_samples_list_the_failed_checks():
    denials = dict(SAMPLES)
    assert denials["denied"]["data"]["publishers"][0]["failed_checks"] == ["environment"]
    assert denials["denied-no-candidates"]["data"]["publishers"] == []


def test_every_type_requires_its_subject(catalogue):
    """`subject` is optional in the shared envelope; every current type requires its own."""
    envelope = catalogue.documents[schemas.COMMON_ID]["$defs"]["envelope"]
    assert "subject" not in envelope["required"]
    event = sample(event_types.TOKEN_ISSUED)
    del event["subject"]
    assert_refused(event, "$")


def test_an_explicit_catalogue_can_be_passed(catalogue):
    schemas.validate(sample(event_types.TOKEN_ISSUED), catalogue)


# -- refusals ---------------------------------------------------------------------


@pytest.mark.parametrize("event_type", schemas.all_types())
def test_a_token_anywhere_in_data_is_refused(event_type):
    event = sample(event_type)
    event["data"]["token"] = TOKEN
    assert_refused(event, "$.data")


@pytest.mark.parametrize(("event_type", "field"), [
    (event_types.TOKEN_REVOKED, "reason"),
    (event_types.REVOCATION_REQUESTED, "reason"),
    (event_types.REVOCATION_COMPLETED, "reason"),
    (event_types.EXCHANGE_ENVIRONMENT_UNPINNED, "advice"),
])
@pytest.mark.parametrize("secret", ["token", "jwt"])
def test_a_secret_inside_free_text_is_refused(event_type, field, secret):
    event = sample(event_type)
    event["data"][field] = f"leaked: {TOKEN if secret == 'token' else JWT} (oops)"
    error = assert_refused(event, f"$.data.{field}")
    assert "secret" in error.reason


def test_a_token_nested_deep_in_an_admin_change_is_refused():
    event = sample(event_types.ISSUER_UPDATED)
    event["data"]["after"]["last_error"] = f"the IdP answered {TOKEN}"
    assert_refused(event, "$.data.after.last_error")


def test_a_token_as_a_key_or_as_the_subject_is_refused():
    event = sample(event_types.TOKEN_EXPIRED)
    event["data"]["permissions"] = {TOKEN: ["publish-update"]}
    assert_refused(event, "$.data")
    event = sample(event_types.TOKEN_ISSUED)
    event["subject"] = TOKEN
    assert_refused(event, "$.subject")


def test_a_token_in_place_of_a_token_id_is_refused():
    event = sample(event_types.TOKEN_ISSUED)
    event["data"]["token_id"] = TOKEN
    assert_refused(event, "$.data.token_id")


@pytest.mark.parametrize("event_type", [t for t in schemas.all_types() if t not in {
    event_types.PUBLISHER_CREATED, event_types.PUBLISHER_DELETED, event_types.ISSUER_CREATED,
    event_types.ISSUER_UPDATED, event_types.ISSUER_DELETED, event_types.ISSUER_KEYS_ROTATED,
    event_types.REVOCATION_REQUESTED, event_types.REVOCATION_COMPLETED}])
@pytest.mark.parametrize("personal", ["user_email", "user_login", "user_id", "groups_direct"])
def test_personal_data_in_the_ci_identity_is_refused(event_type, personal):
    event = sample(event_type)
    event["data"]["ci"][personal] = "sample-user@example.com"
    error = assert_refused(event, "$.data.ci")
    assert personal in error.reason


@pytest.mark.parametrize(("event_type", "member"), [
    (event_types.TOKEN_ISSUED, "token_id"), (event_types.TOKEN_ISSUED, "ci"), (event_types.TOKEN_ISSUED, "expires_at"),
    (event_types.TOKEN_REVOKED, "reason"), (event_types.TOKEN_EXPIRED, "packages"),
    (event_types.EXCHANGE_ENVIRONMENT_UNPINNED, "environment"), (event_types.PUBLISHER_BOUND, "bound"),
    (event_types.PUBLISHER_CREATED, "actor"), (event_types.PUBLISHER_DELETED, "before"),
    (event_types.ISSUER_CREATED, "after"), (event_types.ISSUER_KEYS_ROTATED, "key_ids"),
    (event_types.REVOCATION_REQUESTED, "revocation_id"), (event_types.REVOCATION_COMPLETED, "completed_at"),
])
def test_a_missing_required_member_is_refused(event_type, member):
    event = sample(event_type)
    del event["data"][member]
    error = assert_refused(event, "$.data")
    assert member in error.reason


def test_a_missing_ci_member_is_refused():
    event = sample(event_types.TOKEN_ISSUED)
    del event["data"]["ci"]["repository_id"]
    assert_refused(event, "$.data.ci")


def test_a_missing_publisher_member_in_an_admin_change_is_refused():
    event = sample(event_types.PUBLISHER_CREATED)
    del event["data"]["after"]["repository_owner_id"]
    assert_refused(event, "$.data.after")


@pytest.mark.parametrize("sequence", ["42", "0000000000000000042", "000000000000000000042", "0000000000000000004x",
                                      42, None])
def test_a_wrong_sequence_format_is_refused(sequence):
    event = sample(event_types.TOKEN_ISSUED)
    event["sequence"] = sequence
    assert_refused(event, "$.sequence")


@pytest.mark.parametrize(("attribute", "value", "path"), [
    ("chainhash", "AB" * 32, "$.chainhash"),
    ("chainhash", "ab" * 31, "$.chainhash"),
    ("specversion", "0.3", "$.specversion"),
    ("datacontenttype", "text/plain", "$.datacontenttype"),
    ("time", "2026-11-27 12:00:00", "$.time"),
    ("time", "2026-11-27T12:00:00+01:00", "$.time"),
    ("id", "not-a-uuid", "$.id"),
    ("source", "urn:tpx:revoker", "$.source"),  # tokens are issued by the exchange only
    ("traceparent", "00-abc", "$"),  # no attribute outside the documented envelope
])
def test_a_malformed_envelope_is_refused(attribute, value, path):
    event = sample(event_types.TOKEN_ISSUED)
    event[attribute] = value
    assert_refused(event, path)


@pytest.mark.parametrize("attribute", ["specversion", "id", "source", "time", "datacontenttype", "data", "sequence",
                                       "chainhash"])
def test_a_missing_envelope_attribute_is_refused(attribute):
    event = sample(event_types.TOKEN_REVOKED)
    del event[attribute]
    error = assert_refused(event, "$")
    assert attribute in error.reason


def test_data_of_another_type_is_refused():
    issued, expired = sample(event_types.TOKEN_ISSUED), sample(event_types.TOKEN_EXPIRED)
    expired["data"] = issued["data"]
    assert_refused(expired, "$.data")


def test_a_selector_that_does_not_match_its_kind_is_refused():
    event = sample(event_types.REVOCATION_COMPLETED)
    assert event["data"]["kind"] == "token"
    event["data"]["selector"] = {"package": "octo-pkg"}
    assert_refused(event, "$.data.selector")


def test_an_unknown_type_or_version_is_named():
    event = sample(event_types.TOKEN_ISSUED)
    event["type"] = "dev.tpx.token.teleported"
    with pytest.raises(schemas.EventSchemaError, match="dev.tpx.token.teleported.*no v1 schema"):
        schemas.validate(event)
    event = sample(event_types.TOKEN_ISSUED)
    event["dataschema"] = "urn:tpx:event:dev.tpx.token.issued:v2"
    with pytest.raises(schemas.EventSchemaError, match="no v2 schema"):
        schemas.validate(event)
    event["dataschema"] = "urn:tpx:event:dev.tpx.token.revoked:v1"
    with pytest.raises(schemas.EventSchemaError, match=r"\$\.dataschema"):
        schemas.validate(event)
    with pytest.raises(schemas.EventSchemaError, match=r"\$\.type"):
        schemas.validate({"data": {}})
