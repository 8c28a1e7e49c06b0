"""Google Cloud: service-account ID tokens (`iss` https://accounts.google.com) and their check table.

A Google ID token proves which service account asked for it: `email` (the
account's address, reusable after the account is deleted) and `sub` (its unique
numeric id, never reused). It names no repository, workflow, ref, environment
or runner, so the neutral fields are: owner = the email's domain
(acme-build-prod.iam.gserviceaccount.com), name = its local part (release-bot),
owner_id = `sub`, workflow = "" (docs/fixtures/google-id-token.md).

The same issuer signs ID tokens for people (Google sign-in), so `email` must be
a service account's (…@….gserviceaccount.com) or the token is `malformed_token`:
a person's address never reaches an identity, a stored token or an event.

Claims are read as strictly as GitHub's and GitLab's: `sub` a string of digits,
`email` ASCII of the service-account shape, `email_verified` the JSON boolean
(a string "true" is type confusion). Google's tokens carry no `jti`, so replay
protection keys on the hash of the decoded claims (`issues_jti = False`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from msgspec import Meta

from tpx.core.bodies import anchored, text
from tpx.core.errors import Problem
from tpx.core.jose.strict_json import json_type
from tpx.core.providers.base import CheckResult, Identity, IdentityFields, Publisher, PublisherInput
from tpx.core.providers.checks import pinned_id
from tpx.core.providers.claims import PRINTABLE_255, TEXT_255, required_claim, string_claim
from tpx.core.providers.matching import ascii_iequal, ascii_lower

EMAIL_MAX = 254
# The unique id Google assigns a service account (`sub`, also its OAuth 2 client id): 21 digits in every
# sample; Google documents no length, so up to 30 are read.
SUB_RE = re.compile(r"[0-9]{1,30}")
SUB_TEXT = "a string of 1 to 30 decimal digits"

# Any service account's address as Google spells it in `email`: user-managed accounts
# (…@PROJECT.iam.gserviceaccount.com) and Google's own (…@developer., @appspot., @cloudbuild., service
# agents). Labels are separated by '.', which no label holds, so matching cannot backtrack far; the
# length cap is checked first.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
TOKEN_EMAIL_RE = re.compile(rf"[A-Za-z0-9](?:[A-Za-z0-9._-]{{0,62}}[A-Za-z0-9])?@(?:{_LABEL}\.)+gserviceaccount\.com")
TOKEN_EMAIL_TEXT = (f"a Google Cloud service account's email (ACCOUNT@DOMAIN.gserviceaccount.com, ASCII, at most "
                    f"{EMAIL_MAX} characters); tpx accepts service-account ID tokens only, never a person's")

# A publisher names a user-managed account: ACCOUNT@PROJECT_ID.iam.gserviceaccount.com, both parts as the
# IAM API allows them (6 to 30 letters, digits and '-', starting with a letter, not ending with '-'); a
# domain-scoped project (example.com:my-project) puts its domain after the project id
# (…@my-project.example.com.iam.gserviceaccount.com). Google's default accounts have other domains and
# are refused by this shape: every workload of their project (any VM, Cloud Run service, App Engine app,
# build) can act as them, so they identify no particular release job.
_IAM_ID = r"[A-Za-z][A-Za-z0-9-]{4,28}[A-Za-z0-9]"
PUBLISHER_EMAIL_RE = re.compile(rf"{_IAM_ID}@{_IAM_ID}(?:\.{_LABEL})*\.iam\.gserviceaccount\.com")
DEFAULT_ACCOUNTS = ("PROJECT_NUMBER-compute@developer.gserviceaccount.com", "PROJECT_ID@appspot.gserviceaccount.com",
                    "PROJECT_NUMBER@cloudbuild.gserviceaccount.com")

# A Google publisher's fields as the admin API takes them; each description completes "it must be ...".
Email = Annotated[str, Meta(pattern=anchored(PUBLISHER_EMAIL_RE.pattern), max_length=EMAIL_MAX, description=(
    "a user-managed Google Cloud service account's email, ACCOUNT@PROJECT_ID.iam.gserviceaccount.com (ACCOUNT "
    "and PROJECT_ID 6 to 30 ASCII letters, digits and '-', starting with a letter; a domain-scoped project's "
    f"domain follows PROJECT_ID; at most {EMAIL_MAX} characters; stored lower-cased). Google's default "
    f"accounts ({', '.join(DEFAULT_ACCOUNTS)}) are refused: every workload of their project can use them, so "
    "create a service account for publishing"))]
AccountId = text(SUB_RE, "the service account's unique id as a string of digits, e.g. \"104628349174512389012\" "
                         "(gcloud iam service-accounts describe EMAIL --format='value(uniqueId)'); left out, it "
                         "is bound on the first successful exchange")
NoRefPatterns = Annotated[tuple[()], Meta(description=(
    "empty: a Google Cloud ID token names no git ref, so a Google publisher cannot limit refs; limit who can "
    "act as the service account instead (who holds roles/iam.serviceAccountUser, "
    "roles/iam.serviceAccountTokenCreator or roles/iam.serviceAccountOpenIdTokenCreator on it)"))]


class GooglePublisherInput(PublisherInput, tag="google", kw_only=True):
    """A Google Cloud publisher: the service account by email and, optionally, by its unique id. No
    environments (not a field) and no ref patterns: Google's tokens name neither."""

    email: Email
    sub: AccountId | None = None
    ref_patterns: NoRefPatterns = ()

    def identity_fields(self) -> IdentityFields:
        # Google spells service account emails in lower case; stored so, they compare with the
        # token's ignoring case and two spellings of one account are one publisher.
        account, _, domain = ascii_lower(self.email).partition("@")
        return IdentityFields(owner=domain, name=account, workflow="", owner_id=self.sub, name_id=None)


class GoogleProvider:
    name = "google"
    public_issuer = "https://accounts.google.com"
    # Google's discovery document names https://www.googleapis.com/oauth2/v3/certs as its jwks_uri.
    key_hosts = ("www.googleapis.com",)
    # The API has one `email` for owner and name, and one id, `sub` (name_id mirrors it, see identity()).
    fields = {
        "owner": "email",
        "owner_id": "sub",
        "name": "email",
        "name_id": "sub",
    }
    options: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ()
    issues_jti = False
    environments_ignore_case = False
    publisher_input = GooglePublisherInput

    def identity(self, claims: dict[str, Any], issuer_url: str) -> Identity:
        if not isinstance(claims, dict):
            raise Problem("malformed_token", "the token payload is not a JSON object")
        sub = required_claim(claims, "sub", SUB_RE, SUB_TEXT)
        email = _email(claims)
        verified = _email_verified(claims)
        string_claim(claims, "azp", TEXT_255, PRINTABLE_255, required=False)
        account, _, domain = email.rpartition("@")
        return Identity(
            provider=self.name,
            issuer=issuer_url,
            repository=f"{domain}/{account}",
            owner=domain,
            name=account,
            owner_id=sub,
            # Google has one immutable id, the account's. The mint's binding statement pins the
            # identity's repository_id as the publisher's name_id too (tpx.core.db.tokens), and siblings'
            # name_id pins are compared with it (tpx.exchange.minting), so it mirrors `sub`: a null there
            # would refuse every first exchange, and another value would pin a second, meaningless id.
            repository_id=sub,
            # No workflow, ref or commit: the CI identity leaves them empty (common.v1 `ci`).
            workflow="",
            workflow_ref="",
            environment=None,
            ref="",
            sha="",
            run_id=None,
            actor=None,
            event_name=None,
            runner_environment=None,
            extra={"email": email, "email_verified": verified},
        )

    def checks(self, identity: Identity, publisher: Publisher) -> list[CheckResult]:
        """Every row, in a fixed order, even after a failure, so explain and the
        denial hints can report all differences at once."""
        return [
            _email_row(identity, publisher),
            pinned_id("sub", identity.owner_id, publisher.owner_id,
                      "the service account may have been deleted and re-created with the same email, which gives "
                      "it a new unique id; if you re-created it, replace the publisher with one pinning the new sub"),
            _email_verified_row(identity),
        ]

    def bindings(self, identity: Identity, publisher: Publisher) -> dict[str, str]:
        """Only `sub`: the one id a Google identity has (name_id, its mirror, is never shown)."""
        return {"owner_id": identity.owner_id} if publisher.owner_id is None else {}

    def default_issuer(self, fields: IdentityFields) -> str:
        return self.public_issuer

    def view_fields(self, publisher: Publisher) -> dict[str, Any]:
        return {"email": _publisher_email(publisher), "sub": publisher.owner_id}

    def publisher_hint(self, identity: Identity) -> dict[str, Any]:
        return {"email": identity.extra["email"]}


def _email(claims: dict[str, Any]) -> str:
    """The service account's email; its absence is the common mistake of asking for a token without it."""
    if "email" not in claims:
        raise Problem("malformed_token",
                      "the token has no 'email' claim; request the ID token with the email included: from the "
                      "metadata server with format=full, from generateIdToken with \"includeEmail\": true, with "
                      "gcloud auth print-identity-token --include-email")
    value = claims["email"]
    # The cap comes first so the pattern only ever sees bounded input.
    if isinstance(value, str) and len(value) > EMAIL_MAX:
        raise Problem("malformed_token", f"claim 'email' is not {TOKEN_EMAIL_TEXT}")
    return required_claim(claims, "email", TOKEN_EMAIL_RE, TOKEN_EMAIL_TEXT)


def _email_verified(claims: dict[str, Any]) -> bool:
    """A JSON boolean (Google sends one); `false` is judged by the email_verified row, not refused here."""
    if "email_verified" not in claims:
        raise Problem("malformed_token",
                      "the token has no 'email_verified' claim; expected the JSON boolean true (Google adds it "
                      "with 'email')")
    value = claims["email_verified"]
    if type(value) is not bool:
        raise Problem("malformed_token",
                      f"claim 'email_verified' is a JSON {json_type(value)}; expected the JSON boolean true")
    return value


def _publisher_email(publisher: Publisher) -> str:
    return f"{publisher.name}@{publisher.owner}"


def _email_row(identity: Identity, publisher: Publisher) -> CheckResult:
    """The service account, by email, ASCII-case-insensitively (both sides are lower case in practice)."""
    expected, actual = _publisher_email(publisher), identity.extra["email"]
    passed = ascii_iequal(actual, expected)
    note = None
    if not passed:
        note = "the token was issued to another service account"
    elif actual != expected:
        note = "matched ignoring case"
    return CheckResult("email", "email", expected, actual, passed, note=note)


def _email_verified_row(identity: Identity) -> CheckResult:
    actual = identity.extra.get("email_verified")
    passed = actual is True
    note = None if passed else "Google did not mark the email as verified; only tokens with email_verified true publish"
    return CheckResult("email_verified", "email_verified", True, actual, passed, note=note)
