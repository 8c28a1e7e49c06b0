"""Table tests for the Google Cloud provider: strict identity building, the check table (the Google
conformance table), bindings, publisher input (shape, defaults refused, no ref patterns), the denials
built from it, and the events a Google identity produces."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import jsonschema
import pytest
from msgspec.structs import asdict

from tpx.core import bodies
from tpx.core.errors import Problem
from tpx.core.events import builders, schemas
from tpx.core.events import types as event_types
from tpx.core.events.cloudevents import to_cloudevent
from tpx.core.events.types import Event
from tpx.core.providers import PROVIDERS, get_provider
from tpx.core.providers.base import Identity, Publisher
from tpx.core.providers.google import GoogleProvider
from tpx.core.providers.matching import denial, evaluate
from tpx.core.publishers import PUBLISHER_INPUT, identity_key, publisher_input, publisher_json
from tpx.core.times import rfc3339
from tpx.exchange.openapi import OPENAPI
from tests.support.google_claims import EMAIL, OMIT, SUB, google_claims
from tests.support.check_table import CheckTable
from tests.support.events import denial_cloudevent

ISSUER = "https://accounts.google.com"
LOOPBACK = "http://127.0.0.1:41234"
DOMAIN = "acme-build-prod.iam.gserviceaccount.com"
ACCOUNT = "release-bot"
REPOSITORY = f"{DOMAIN}/{ACCOUNT}"
PROVIDER = GoogleProvider()
CHECK_ORDER = ["email", "sub", "email_verified"]
DELETE = OMIT
NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=timezone.utc)


def base_claims() -> dict[str, Any]:
    """The payload of docs/fixtures/google-id-token.md, copied verbatim."""
    return {
        "aud": "tpx",
        "azp": "104628349174512389012",
        "email": "release-bot@acme-build-prod.iam.gserviceaccount.com",
        "email_verified": True,
        "exp": 1767229200,
        "google": {
            "compute_engine": {
                "instance_creation_timestamp": 1761000000,
                "instance_id": "3047934050210597033",
                "instance_name": "release-runner-1",
                "project_id": "acme-build-prod",
                "project_number": 217706947495,
                "zone": "us-central1-c",
            }
        },
        "iat": 1767225600,
        "iss": "https://accounts.google.com",
        "sub": "104628349174512389012",
    }


TABLE = CheckTable(PROVIDER, base_claims, ISSUER, omit=DELETE)
claims_with, identity_with = TABLE.claims_with, TABLE.identity_with


def publisher(**changes: Any) -> Publisher:
    base = Publisher(id="pub-1", package="foo", provider="google", issuer=ISSUER, owner=DOMAIN, name=ACCOUNT,
                     workflow="")
    return replace(base, **changes)


results_by_check, failed_checks = TABLE.results_by_check, TABLE.failed_checks


def email(account: str = ACCOUNT, domain: str = DOMAIN) -> dict[str, Any]:
    return {"email": f"{account}@{domain}"}


# --- identity(): accepted tokens --------------------------------------------------------------------------


def test_identity_from_fixture() -> None:
    identity = PROVIDER.identity(base_claims(), ISSUER)
    assert identity == Identity(
        provider="google", issuer=ISSUER, repository=REPOSITORY, owner=DOMAIN, name=ACCOUNT, owner_id=SUB,
        repository_id=SUB, workflow="", workflow_ref="", environment=None, ref="", sha="", run_id=None, actor=None,
        event_name=None, runner_environment=None, extra={"email": EMAIL, "email_verified": True},
    )
    assert identity.repository_key == REPOSITORY


def test_the_claims_builder_matches_the_fixture() -> None:
    """tests/support/google_claims.py builds the fixture's shape (only times and the instance differ)."""
    built = google_claims()
    assert set(built) == set(base_claims())
    assert set(built["google"]["compute_engine"]) == set(base_claims()["google"]["compute_engine"])
    assert PROVIDER.identity(built, ISSUER) == PROVIDER.identity(base_claims(), ISSUER)
    assert "jti" not in built


@pytest.mark.parametrize(
    ("changes", "field", "value"),
    [
        pytest.param(email(domain="skia-buildbots.google.com.iam.gserviceaccount.com"), "owner",
                     "skia-buildbots.google.com.iam.gserviceaccount.com", id="domain-scoped-project"),
        pytest.param(email("Release-Bot", "Acme-Build-Prod.iam.gserviceaccount.com"), "repository",
                     "Acme-Build-Prod.iam.gserviceaccount.com/Release-Bot", id="case-kept-as-sent"),
        pytest.param(email("123456789012-compute", "developer.gserviceaccount.com"), "name", "123456789012-compute",
                     id="default-compute-account-is-well-formed"),
        pytest.param(email("acme-build-prod", "appspot.gserviceaccount.com"), "owner", "appspot.gserviceaccount.com",
                     id="app-engine-default-is-well-formed"),
        pytest.param(email("service-217706947495", "gcp-sa-cloudbuild.iam.gserviceaccount.com"), "name",
                     "service-217706947495", id="service-agent"),
        pytest.param(email("a"), "name", "a", id="one-character-account"),
        pytest.param(email("a" * 64), "name", "a" * 64, id="account-at-64"),
        pytest.param({"sub": "1"}, "owner_id", "1", id="sub-one-digit"),
        pytest.param({"sub": "9" * 30}, "owner_id", "9" * 30, id="sub-at-limit"),
        pytest.param({"sub": "9" * 30}, "repository_id", "9" * 30, id="repository-id-mirrors-sub"),
        pytest.param({"azp": DELETE}, "repository", REPOSITORY, id="azp-absent"),
        pytest.param({"azp": "1234-abc.apps.googleusercontent.com"}, "repository", REPOSITORY,
                     id="azp-never-decides"),
        pytest.param({"google": DELETE}, "repository", REPOSITORY, id="format-standard-without-google"),
        pytest.param({"google": "anything", "hd": 5, "nonce": ["x"]}, "repository", REPOSITORY,
                     id="unread-claims-ignored"),
        pytest.param({"email_verified": False}, "extra", {"email": EMAIL, "email_verified": False},
                     id="unverified-is-judged-by-the-row"),
        pytest.param({"jti": "abc"}, "repository", REPOSITORY, id="a-jti-is-not-needed-nor-refused"),
    ],
)
def test_identity_accepts(changes: dict[str, Any], field: str, value: Any) -> None:
    assert getattr(identity_with(**changes), field) == value


def test_email_at_length_limit() -> None:
    domain = ".".join(["d" * 61] * 3) + ".gserviceaccount.com"
    account = "a" * (254 - 1 - len(domain))
    assert len(f"{account}@{domain}") == 254
    assert identity_with(**email(account, domain)).name == account
    with pytest.raises(Problem) as raised:
        identity_with(**email(account + "a", domain))
    assert raised.value.code == "malformed_token" and "'email'" in raised.value.detail


# --- identity(): malformed tokens -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "claim"),
    [
        # Missing required claims.
        *[pytest.param({name: DELETE}, name, id=f"missing-{name}") for name in ("sub", "email", "email_verified")],
        # sub: a string of digits.
        pytest.param({"sub": 104628349174512389012}, "sub", id="sub-number"),
        pytest.param({"sub": ""}, "sub", id="sub-empty"),
        pytest.param({"sub": "1" * 31}, "sub", id="sub-too-long"),
        pytest.param({"sub": "10462834917451238901a"}, "sub", id="sub-not-digits"),
        pytest.param({"sub": "-1"}, "sub", id="sub-negative"),
        pytest.param({"sub": " 1"}, "sub", id="sub-space"),
        pytest.param({"sub": "1\n"}, "sub", id="sub-lf"),
        pytest.param({"sub": "\uff11\uff12"}, "sub", id="sub-fullwidth-digits"),
        pytest.param({"sub": "\u0661\u0662"}, "sub", id="sub-arabic-indic-digits"),
        pytest.param({"sub": None}, "sub", id="sub-null"),
        # email: a service account's, ASCII, at most 254.
        pytest.param({"email": 5}, "email", id="email-number"),
        pytest.param({"email": None}, "email", id="email-null"),
        pytest.param({"email": [EMAIL]}, "email", id="email-array"),
        pytest.param({"email": ""}, "email", id="email-empty"),
        pytest.param({"email": "release-bot"}, "email", id="email-no-at"),
        pytest.param({"email": "a@b@acme-build-prod.iam.gserviceaccount.com"}, "email", id="email-two-at"),
        pytest.param({"email": "@acme-build-prod.iam.gserviceaccount.com"}, "email", id="email-no-account"),
        pytest.param({"email": "release-bot@gserviceaccount.com"}, "email", id="email-bare-gserviceaccount"),
        pytest.param({"email": "someone@gmail.com"}, "email", id="email-of-a-person"),
        pytest.param({"email": "someone@acme.example"}, "email", id="email-workspace-user"),
        pytest.param({"email": f"{EMAIL}.evil.example"}, "email", id="email-suffix"),
        pytest.param({"email": EMAIL.replace("release", "r\u0435lease")}, "email", id="email-cyrillic-e"),
        pytest.param({"email": EMAIL.replace("bot", "\u212aot")}, "email", id="email-kelvin-sign"),
        pytest.param({"email": EMAIL + "\n"}, "email", id="email-lf"),
        pytest.param({"email": EMAIL.replace("@", "\x00@")}, "email", id="email-nul"),
        pytest.param({"email": " " + EMAIL}, "email", id="email-leading-space"),
        pytest.param({"email": EMAIL.replace("@", "@.")}, "email", id="email-empty-label"),
        pytest.param({"email": EMAIL.replace("@acme", "@-acme")}, "email", id="email-label-leading-dash"),
        pytest.param({"email": "-" + EMAIL}, "email", id="email-account-leading-dash"),
        pytest.param({"email": EMAIL.replace("release-bot", "release+bot")}, "email", id="email-plus"),
        pytest.param({"email": "a" * 65 + "@" + DOMAIN}, "email", id="email-account-too-long"),
        pytest.param({"email": "a" * 300 + "@" + DOMAIN}, "email", id="email-too-long"),
        pytest.param({"email": "a@" + "d" * 64 + ".gserviceaccount.com"}, "email", id="email-label-too-long"),
        # email_verified: the JSON boolean.
        pytest.param({"email_verified": "true"}, "email_verified", id="email-verified-string-true"),
        pytest.param({"email_verified": "false"}, "email_verified", id="email-verified-string-false"),
        pytest.param({"email_verified": 1}, "email_verified", id="email-verified-one"),
        pytest.param({"email_verified": None}, "email_verified", id="email-verified-null"),
        pytest.param({"email_verified": [True]}, "email_verified", id="email-verified-array"),
        # azp: optional, printable ASCII when present.
        pytest.param({"azp": 104628349174512389012}, "azp", id="azp-number"),
        pytest.param({"azp": ""}, "azp", id="azp-empty"),
        pytest.param({"azp": "1\x00"}, "azp", id="azp-nul"),
        pytest.param({"azp": "\u00e9"}, "azp", id="azp-non-ascii"),
    ],
)
def test_identity_rejects(changes: dict[str, Any], claim: str) -> None:
    assert repr(claim) in TABLE.malformed(**changes).detail


def test_identity_rejects_non_object_payload() -> None:
    TABLE.malformed(["not", "an", "object"])


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        pytest.param({"sub": 104628349174512389012}, "JSON integer", id="number"),
        pytest.param({"email_verified": "true"}, "JSON string", id="string"),
        pytest.param({"email": None}, "JSON null", id="null"),
        pytest.param({"email_verified": 1.0}, "JSON number", id="float"),
        pytest.param({"email": True}, "JSON boolean", id="boolean"),
    ],
)
def test_malformed_names_the_json_type(changes: dict[str, Any], phrase: str) -> None:
    with pytest.raises(Problem) as raised:
        identity_with(**changes)
    assert phrase in raised.value.detail


@pytest.mark.parametrize(
    ("changes", "phrases"),
    [
        pytest.param({"email": DELETE}, ["format=full", "includeEmail", "--include-email"], id="how-to-get-email"),
        pytest.param({"email_verified": DELETE}, ["JSON boolean true"], id="verified-expected"),
        pytest.param({"email": "someone@gmail.com"}, ["service-account ID tokens only"], id="people-refused"),
    ],
)
def test_malformed_says_what_to_do(changes: dict[str, Any], phrases: list[str]) -> None:
    with pytest.raises(Problem) as raised:
        identity_with(**changes)
    for phrase in phrases:
        assert phrase in raised.value.detail


@pytest.mark.parametrize("changes", [
    {"email": "SECRET-person@gmail.com"}, {"email": "SECRET@" + DOMAIN + "\n"}, {"sub": "SECRET"},
    {"email_verified": "SECRET"}, {"azp": "SECRET\x01"},
])
def test_malformed_never_echoes_the_value(changes: dict[str, Any]) -> None:
    with pytest.raises(Problem) as raised:
        identity_with(**changes)
    assert "SECRET" not in raised.value.detail


# --- personal data ----------------------------------------------------------------------------------------


def test_no_personal_or_instance_data_reaches_the_identity() -> None:
    """A service account is no person; a person's email is refused outright (above). Instance data
    (`google.compute_engine`) and user-token claims are never read."""
    marked = {"name": "PII-name", "picture": "PII-picture", "hd": "PII-hd", "given_name": "PII-given",
              "google": {"compute_engine": {"instance_name": "PII-instance", "project_id": "PII-project"}}}
    identity = identity_with(**marked)
    assert identity == identity_with(google=DELETE)
    assert "PII-" not in repr((asdict(identity), identity.ci()))
    assert identity.actor is None and identity.ci()["actor"] is None


# --- checks(): the conformance table ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "config", "failed"),
    [
        pytest.param({}, {}, set(), id="fixture-matches"),
        # email: the service account, ASCII case-insensitive.
        pytest.param({}, {"owner": DOMAIN.upper(), "name": ACCOUNT.upper()}, set(), id="email-case-publisher"),
        pytest.param(email("Release-Bot", "ACME-build-prod.iam.gserviceaccount.com"), {}, set(),
                     id="email-case-token"),
        pytest.param(email("release-bot2"), {}, {"email"}, id="other-account-same-project"),
        pytest.param(email(domain="acme-build-test.iam.gserviceaccount.com"), {}, {"email"},
                     id="same-account-other-project"),
        pytest.param(email("release"), {}, {"email"}, id="account-prefix"),
        pytest.param(email(domain="acme-build-prod.example.com.iam.gserviceaccount.com"), {}, {"email"},
                     id="domain-scoped-look-alike"),
        pytest.param(email("acme-build-prod", "appspot.gserviceaccount.com"), {}, {"email"},
                     id="default-account-never-matches"),
        # sub: pinned id.
        pytest.param({}, {"owner_id": SUB}, set(), id="sub-pinned-match"),
        pytest.param({}, {"owner_id": "104628349174512389013"}, {"sub"}, id="sub-recreated-account"),
        pytest.param({}, {"owner_id": "0" + SUB}, {"sub"}, id="sub-leading-zero"),
        pytest.param({"sub": "1"}, {}, set(), id="sub-unpinned-any"),
        # email_verified: only true.
        pytest.param({"email_verified": False}, {}, {"email_verified"}, id="email-unverified"),
        pytest.param({"email_verified": False}, {"owner_id": SUB}, {"email_verified"}, id="email-unverified-pinned"),
        # The options other providers have change nothing here.
        pytest.param({}, {"allow_self_hosted_runners": True, "environments": ("x",), "ref_patterns": ("refs/x",)},
                     set(), id="foreign-options-ignored"),
        # Several at once: every row is still evaluated.
        pytest.param({**email("other-bot"), "email_verified": False}, {"owner_id": "1"}, set(CHECK_ORDER),
                     id="everything-fails"),
    ],
)
def test_checks(claims: dict[str, Any], config: dict[str, Any], failed: set[str]) -> None:
    assert failed_checks(identity_with(**claims), publisher(**config)) == failed


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({}, id="matching"),
        pytest.param({"owner": "other.iam.gserviceaccount.com", "owner_id": "1"}, id="failing"),
    ],
)
def test_every_row_always_reported_in_order(config: dict[str, Any]) -> None:
    results = PROVIDER.checks(identity_with(email_verified=False), publisher(**config))
    assert [r.check for r in results] == CHECK_ORDER


@pytest.mark.parametrize(
    ("claims", "config", "check", "expected"),
    [
        pytest.param({}, {}, "email", {"claim": "email", "expected": EMAIL, "actual": EMAIL, "passed": True,
                                       "note": None}, id="email"),
        pytest.param(email("Release-Bot"), {}, "email",
                     {"expected": EMAIL, "actual": f"Release-Bot@{DOMAIN}", "passed": True,
                      "note": "matched ignoring case"}, id="email-case-noted"),
        pytest.param({}, {}, "sub", {"claim": "sub", "expected": None, "actual": SUB, "passed": True,
                                     "note": f"not pinned yet; bound to {SUB} on the first successful exchange"},
                     id="sub-unpinned"),
        pytest.param({}, {"owner_id": SUB}, "sub", {"expected": SUB, "actual": SUB, "note": None}, id="sub-pinned"),
        pytest.param({}, {}, "email_verified", {"claim": "email_verified", "expected": True, "actual": True,
                                                "passed": True, "note": None}, id="verified"),
        pytest.param({"email_verified": False}, {}, "email_verified", {"expected": True, "actual": False,
                                                                       "passed": False}, id="unverified"),
    ],
)
def test_check_fields(claims: dict[str, Any], config: dict[str, Any], check: str, expected: dict[str, Any]) -> None:
    result = results_by_check(identity_with(**claims), publisher(**config))[check]
    for field, value in expected.items():
        assert getattr(result, field) == value, field


@pytest.mark.parametrize(
    ("claims", "config", "check", "phrases"),
    [
        pytest.param({}, {"owner_id": "1"}, "sub", ["1", SUB, "deleted and re-created", "new sub"],
                     id="resurrection"),
        pytest.param(email("other-bot"), {}, "email", ["another service account"], id="other-account"),
        pytest.param({"email_verified": False}, {}, "email_verified", ["verified", "true"], id="unverified"),
    ],
)
def test_check_notes(claims: dict[str, Any], config: dict[str, Any], check: str, phrases: list[str]) -> None:
    note = results_by_check(identity_with(**claims), publisher(**config))[check].note
    assert note is not None
    for phrase in phrases:
        assert phrase in note


def test_unread_claims_never_decide() -> None:
    """azp, the instance data and anything else can say anything without changing a decision."""
    plain = PROVIDER.checks(identity_with(), publisher())
    noisy = PROVIDER.checks(
        identity_with(azp="999", google={"compute_engine": {"project_id": "other-project"}}, hd="acme.example",
                      aud_extra=["x"]),
        publisher(),
    )
    assert plain == noisy


# --- bindings() -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "bindings"),
    [
        pytest.param({}, {"owner_id": SUB}, id="unpinned-binds-sub"),
        pytest.param({"owner_id": SUB}, {}, id="pinned"),
        pytest.param({"owner_id": "1"}, {}, id="pinned-to-another-never-rebinds"),
        pytest.param({"name_id": SUB}, {"owner_id": SUB}, id="name-id-never-read"),
    ],
)
def test_bindings(config: dict[str, Any], bindings: dict[str, str]) -> None:
    assert PROVIDER.bindings(identity_with(), publisher(**config)) == bindings


def test_bound_ids_use_the_api_name() -> None:
    assert {PROVIDER.fields[k]: v for k, v in PROVIDER.bindings(identity_with(), publisher()).items()} == {"sub": SUB}


# --- matching: evaluate() and denial() --------------------------------------------------------------------


def test_evaluate_and_explain() -> None:
    pubs = [publisher(), publisher(id="pub-2", package="bar", owner_id="1")]
    evaluations = evaluate(PROVIDER, identity_with(), pubs)
    assert [e.matched for e in evaluations] == [True, False]
    explain = evaluations[1].as_explain()
    assert [c["check"] for c in explain["checks"]] == CHECK_ORDER
    sub = explain["checks"][CHECK_ORDER.index("sub")]
    assert (sub["passed"], sub["expected"], sub["actual"]) == (False, "1", SUB)


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"issuer": LOOPBACK}, id="other-issuer"),
        pytest.param({"issuer": ISSUER + "/"}, id="issuer-not-byte-equal"),
        pytest.param({"issuer": "accounts.google.com"}, id="bare-issuer-form"),
        pytest.param({"provider": "github"}, id="github-publisher"),
    ],
)
def test_evaluate_skips_publishers_of_another_issuer_or_provider(config: dict[str, Any]) -> None:
    assert evaluate(PROVIDER, identity_with(), [publisher(**config)]) == []


def test_denial_without_candidates_uses_google_field_names() -> None:
    problem = denial(PROVIDER, identity_with(), [])
    assert problem.code == "no_matching_publisher"
    assert problem.detail == f"no trusted publisher is configured for repository {REPOSITORY} on issuer {ISSUER}"
    body = json.loads(problem.hints[0].removeprefix("add one: POST /v1/admin/publishers with "))
    assert body == {"package": "<package>", "provider": "google", "issuer": ISSUER, "email": EMAIL}
    # The hint is a body the admin API accepts once the package is filled in.
    assert publisher_input({**body, "package": "foo"}, ttl_max=21600, allow_loopback=False).owner == DOMAIN


@pytest.mark.parametrize(
    ("claims", "config", "hint"),
    [
        pytest.param(email("other-bot"), {},
                     f"publisher pub-1 (package foo): email: the token has 'other-bot@{DOMAIN}', expected '{EMAIL}' "
                     "(the token was issued to another service account)", id="email"),
        pytest.param({}, {"owner_id": "1"},
                     f"publisher pub-1 (package foo): sub: the token has '{SUB}', expected '1' (the publisher is "
                     f"pinned to id 1 but the token carries {SUB}; the service account may have been deleted",
                     id="sub"),
        pytest.param({"email_verified": False}, {},
                     "publisher pub-1 (package foo): email_verified: the token has False, expected True",
                     id="verified"),
    ],
)
def test_denial_hints_name_the_differing_row(claims: dict[str, Any], config: dict[str, Any], hint: str) -> None:
    identity = identity_with(**claims)
    problem = denial(PROVIDER, identity, evaluate(PROVIDER, identity, [publisher(**config)]))
    assert problem.code == "no_matching_publisher"
    assert len(problem.hints) == 1
    assert problem.hints[0].startswith(hint)


def test_denial_names_the_closest_publisher_and_counts_the_rest() -> None:
    identity = identity_with(email_verified=False)
    problem = denial(PROVIDER, identity, evaluate(PROVIDER, identity, [publisher(owner_id="1")]))
    assert problem.detail.startswith(f"no trusted publisher for {REPOSITORY} matches this token; the closest is "
                                     "publisher pub-1 (package foo), whose sub check failed")
    assert "and 1 more difference;" in problem.detail


# --- registry ---------------------------------------------------------------------------------------------


def test_registered() -> None:
    provider = get_provider("google")
    assert isinstance(provider, GoogleProvider) and PROVIDERS["google"] is provider
    assert provider.public_issuer == ISSUER
    assert provider.issues_jti is False
    assert (provider.options, provider.conditions) == ((), ())


# --- publisher input --------------------------------------------------------------------------------------


def google_body(**changes: Any) -> dict[str, Any]:
    return {"package": "foo", "provider": "google", "email": EMAIL, **changes}


def made(**changes: Any) -> Publisher:
    return publisher_input(google_body(**changes), ttl_max=21600, allow_loopback=True)


def refused(**changes: Any) -> Problem:
    with pytest.raises(Problem) as raised:
        made(**changes)
    assert raised.value.code == "invalid_publisher"
    return raised.value


def test_publisher_from_input() -> None:
    p = made()
    assert (p.provider, p.issuer, p.owner, p.name, p.workflow) == ("google", ISSUER, DOMAIN, ACCOUNT, "")
    assert (p.owner_id, p.name_id, p.environments, p.ref_patterns, p.conditions) == (None, None, (), (), {})
    assert made(sub=SUB).owner_id == SUB
    assert made(issuer=LOOPBACK).issuer == LOOPBACK


@pytest.mark.parametrize(
    "value",
    [
        "Release-Bot@ACME-Build-Prod.iam.gserviceaccount.com",
        "release-bot@acme-build-prod.iam.gserviceaccount.com",
    ],
)
def test_email_is_stored_lower_cased(value: str) -> None:
    p = made(email=value)
    assert (p.owner, p.name) == (DOMAIN, ACCOUNT)
    assert identity_key(p) == identity_key(made())


@pytest.mark.parametrize(
    "value",
    [
        "abcdef@abcdef.iam.gserviceaccount.com",                                   # both at 6
        f"{'a' * 30}@{'p' * 30}.iam.gserviceaccount.com",                         # both at 30
        "release-bot@skia-buildbots.google.com.iam.gserviceaccount.com",          # domain-scoped project
        "service-217706947495@gcp-sa-cloudbuild.iam.gserviceaccount.com",        # a service agent's shape
        "r2d2-bot@a1-b2-c3.iam.gserviceaccount.com",
    ],
)
def test_email_shapes_accepted(value: str) -> None:
    assert made(email=value).name == value.partition("@")[0]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("123456789012-compute@developer.gserviceaccount.com", id="default-compute"),
        pytest.param("acme-build-prod@appspot.gserviceaccount.com", id="default-app-engine"),
        pytest.param("123456789012@cloudbuild.gserviceaccount.com", id="legacy-cloud-build"),
        pytest.param("someone@gmail.com", id="person"),
        pytest.param("release-bot@acme.example", id="not-google"),
        pytest.param("abcde@acme-build-prod.iam.gserviceaccount.com", id="account-too-short"),
        pytest.param(f"{'a' * 31}@acme-build-prod.iam.gserviceaccount.com", id="account-too-long"),
        pytest.param("1release@acme-build-prod.iam.gserviceaccount.com", id="account-leading-digit"),
        pytest.param("release-@acme-build-prod.iam.gserviceaccount.com", id="account-trailing-dash"),
        pytest.param("release_bot@acme-build-prod.iam.gserviceaccount.com", id="account-underscore"),
        pytest.param("release.bot@acme-build-prod.iam.gserviceaccount.com", id="account-dot"),
        pytest.param("release-bot@acme.iam.gserviceaccount.com", id="project-too-short"),
        pytest.param("release-bot@1acme-build.iam.gserviceaccount.com", id="project-leading-digit"),
        pytest.param("release-bot@acme-build-prod.gserviceaccount.com", id="no-iam"),
        pytest.param("release-bot@acme-build-prod.iam.gserviceaccount.com.", id="trailing-dot"),
        pytest.param("release-bot@acme-build-prod.iam.gserviceaccount.com\n", id="trailing-newline"),
        pytest.param(" release-bot@acme-build-prod.iam.gserviceaccount.com", id="leading-space"),
        pytest.param("r\u0435lease-bot@acme-build-prod.iam.gserviceaccount.com", id="cyrillic"),
        pytest.param("release-\u212aot@acme-build-prod.iam.gserviceaccount.com", id="kelvin"),
        pytest.param("release-bot@abcdef." + ".".join(["d" * 60] * 4) + ".iam.gserviceaccount.com",
                     id="over-254"),
        pytest.param("", id="empty"),
    ],
)
def test_email_shapes_refused(value: str) -> None:
    problem = refused(email=value)
    assert problem.extra["field"] == "email"
    assert "it must be a user-managed Google Cloud service account's email" in problem.detail


def test_default_accounts_are_refused_with_the_reason() -> None:
    detail = refused(email="123456789012-compute@developer.gserviceaccount.com").detail
    for phrase in ("PROJECT_NUMBER-compute@developer.gserviceaccount.com", "PROJECT_ID@appspot.gserviceaccount.com",
                   "every workload of their project can use them", "create a service account for publishing"):
        assert phrase in detail


@pytest.mark.parametrize(
    ("changes", "field", "phrase"),
    [
        pytest.param({"sub": 104628349174512389012}, "sub", "is a whole number, not a string", id="sub-number"),
        pytest.param({"sub": "1" * 31}, "sub", "a string of digits", id="sub-too-long"),
        pytest.param({"sub": "12a"}, "sub", "a string of digits", id="sub-not-digits"),
        pytest.param({"sub": ""}, "sub", "a string of digits", id="sub-empty"),
        pytest.param({"ref_patterns": ["refs/tags/v*"]}, "ref_patterns", "names no git ref", id="ref-patterns"),
        pytest.param({"ref_patterns": "refs/tags/v*"}, "ref_patterns", "names no git ref", id="ref-patterns-string"),
        pytest.param({"environments": ["release"]}, "environments", "is not a known field", id="environments"),
        pytest.param({"workflow_filename": "release.yml"}, "workflow_filename", "is not a known field",
                     id="github-field"),
        pytest.param({"email": None}, "email", "is required", id="email-null"),
        pytest.param({"email": DELETE}, "email", "is required", id="email-missing"),
    ],
)
def test_publisher_refusals_name_the_field(changes: dict[str, Any], field: str, phrase: str) -> None:
    body = {k: v for k, v in google_body(**changes).items() if v is not DELETE}
    with pytest.raises(Problem) as raised:
        publisher_input(body, ttl_max=21600, allow_loopback=False)
    assert raised.value.code == "invalid_publisher"
    assert raised.value.extra["field"] == field
    assert phrase in raised.value.detail, raised.value.detail


def test_empty_ref_patterns_are_accepted() -> None:
    assert made(ref_patterns=[]).ref_patterns == ()


def test_the_view_shows_google_field_names() -> None:
    stored = replace(made(sub=SUB), id=str(uuid.uuid4()), created_at=NOW)
    view = publisher_json(stored)
    assert view == {"provider": "google", "package": "foo", "issuer": ISSUER, "ref_patterns": [],
                    "allow_self_hosted_runners": False, "token_ttl_seconds": None, "permissions": ["publish-update"],
                    "email": EMAIL, "sub": SUB, "id": stored.id, "created_at": rfc3339(NOW)}
    # What the API shows is what it takes back (without id and created_at).
    again = publisher_input({k: v for k, v in view.items() if k not in ("id", "created_at")}, ttl_max=21600,
                            allow_loopback=False)
    assert (again.owner, again.name, again.owner_id) == (stored.owner, stored.name, stored.owner_id)


def _document_accepts(value: Any) -> bool:
    schema = {"$ref": "#/components/schemas/PublisherInput", "components": OPENAPI["components"],
              "$schema": "https://json-schema.org/draft/2020-12/schema"}
    try:
        jsonschema.validate(value, schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        return True
    except jsonschema.ValidationError:
        return False


def _check_accepts(value: Any) -> bool:
    try:
        bodies.convert(value, PUBLISHER_INPUT, "invalid_publisher")
        return True
    except Problem:
        return False


@pytest.mark.parametrize("changes", [
    {}, {"email": "Release-Bot@acme-build-prod.iam.gserviceaccount.com"},
    {"email": "release-bot@skia-buildbots.google.com.iam.gserviceaccount.com"},
    {"email": "123456789012-compute@developer.gserviceaccount.com"}, {"email": "abcde@abcdef.iam.gserviceaccount.com"},
    {"email": EMAIL + "\n"}, {"email": "release-bot@abcdef." + ".".join(["d" * 60] * 4) + ".iam.gserviceaccount.com"},
    {"sub": SUB}, {"sub": "1" * 31}, {"sub": 1}, {"ref_patterns": []}, {"ref_patterns": ["refs/tags/v*"]},
    {"environments": []}, {"allow_self_hosted_runners": True},
])
def test_the_document_accepts_exactly_what_the_checks_accept(changes: dict[str, Any]) -> None:
    value = google_body(**changes)
    assert _document_accepts(value) == _check_accepts(value), value


# --- events: what a Google identity writes matches the catalogue ------------------------------------------


def _cloudevent(event: Event, source: str = "urn:tpx:exchange") -> dict[str, Any]:
    row = {"event_id": event.id, "type": event.type, "source": source, "subject": event.subject, "time": event.time,
           "data": json.loads(json.dumps(event.data)), "sequence": 42, "chainhash": bytes(range(32))}
    return to_cloudevent(row)


def google_events() -> list[tuple[str, dict[str, Any]]]:
    identity = identity_with()
    ci = identity.ci()
    stored = replace(made(), id=str(uuid.uuid4()), created_at=NOW)
    pinned = replace(made(sub=SUB), id=str(uuid.uuid4()), created_at=NOW)
    token_id = str(uuid.uuid4())
    issued = builders.token_issued(token_id, ["foo"], {"foo": ["publish-update"]}, [stored.id], ci)
    issued.data.update(issued_at=rfc3339(NOW, seconds=True), expires_at=rfc3339(NOW + timedelta(minutes=15),
                                                                                 seconds=True))
    bound = builders.publisher_bound(stored.id, stored.package, {PROVIDER.fields[k]: v for k, v in
                                                                 PROVIDER.bindings(identity, stored).items()}, ci)
    out = [("issued", _cloudevent(issued)), ("bound", _cloudevent(bound))]
    for label, p in (("unpinned", stored), ("pinned", pinned)):
        out.append((f"created-{label}", _cloudevent(builders.admin_change(
            event_types.PUBLISHER_CREATED, "credential:0123456789ab", p.id, None, publisher_json(p)))))
        out.append((f"deleted-{label}", _cloudevent(builders.admin_change(
            event_types.PUBLISHER_DELETED, "credential:0123456789ab", p.id, publisher_json(p), None))))
    refused_identity = identity_with(email_verified=False)
    out.append(("denied", denial_cloudevent(refused_identity, denial(
        PROVIDER, refused_identity, evaluate(PROVIDER, refused_identity, [pinned])))))
    out.append(("denied-no-candidates", denial_cloudevent(identity, denial(PROVIDER, identity, []))))
    return out


@pytest.mark.parametrize(("label", "event"), google_events(), ids=[label for label, _ in google_events()])
def test_google_events_match_their_schemas(label: str, event: dict[str, Any]) -> None:
    schemas.validate(event)


def test_a_google_publisher_event_is_held_to_its_own_schema() -> None:
    """The catalogue's googlePublisher is strict: a member GitHub has, or a person's email, is refused."""
    stored = replace(made(), id=str(uuid.uuid4()), created_at=NOW)
    for change in ({"environments": []}, {"email": "someone@gmail.com"}, {"ref_patterns": ["refs/x"]},
                   {"sub": 5}):
        view = {**publisher_json(stored), **change}
        event = _cloudevent(builders.admin_change(event_types.PUBLISHER_CREATED, "credential:0123456789ab",
                                                  stored.id, None, view))
        with pytest.raises(schemas.EventSchemaError):
            schemas.validate(event)
