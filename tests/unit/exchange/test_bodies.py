"""Bodies declared as types: refusals name the field and say what it accepts, and /openapi.json's schemas
(generated from the same types) accept exactly what the checks accept."""

from __future__ import annotations

from typing import Any

import jsonschema
import msgspec
import pytest

from tpx.core import bodies
from tpx.core.errors import Problem
from tpx.core.issuers import IssuerChange, IssuerInput
from tpx.core.providers import PROVIDERS
from tpx.core.publishers import PUBLISHER_INPUT
from tpx.core.revocations import RevocationInput
from tpx.exchange.openapi import OPENAPI
from tpx.exchange.routes.exchange import IdTokenBody
from tpx.exchange.routes.tokens import TokenBody

KINDS = bodies.choices(PROVIDERS)   # one of "github", "gitlab", ...
GITHUB = {"package": "pkg", "provider": "github", "repository_owner": "octo-org", "repository_name": "octo-repo",
          "workflow_filename": "release.yml"}


def refused(body: Any, body_type: Any = PUBLISHER_INPUT, code: str = "invalid_publisher") -> Problem:
    with pytest.raises(Problem) as caught:
        bodies.convert(body, body_type, code)
    assert caught.value.code == code
    return caught.value


@pytest.mark.parametrize(("change", "detail"), [
    ({"package": None}, "package: is required; it must be a package name"),
    ({"surprise": 1}, "surprise: is not a known field; accepted fields: allow_self_hosted_runners, environments"),
    ({"provider": "bitbucket"}, f"provider: 'bitbucket' is not valid; it must be {KINDS}"),
    ({"provider": None}, f"provider: is required; it must be {KINDS}"),
    ({"repository_owner": "-octo"}, "repository_owner: '-octo' is not valid; it must be a GitHub user or "
                                    "organisation name"),
    ({"repository_owner": "octo\n"}, "repository_owner: 'octo\\n' is not valid"),   # `$` would let this through
    ({"repository_owner_id": 65}, "repository_owner_id: 65 is a whole number, not a string; it must be a numeric "
                                  "id given as a string"),
    ({"environments": "prod"}, "environments: 'prod' is a string, not a list"),
    ({"environments": ["ok", "tab\there"]}, "environments: 'tab\\there' is not valid; each entry must be a GitHub "
                                            "environment name"),
    ({"environments": ["x"] * 21}, "environments: has 21 entries; at most 20 are allowed"),
    ({"allow_self_hosted_runners": "yes"}, "allow_self_hosted_runners: 'yes' is a string, not true or false"),
    ({"token_ttl_seconds": True}, "token_ttl_seconds: True is a boolean, not a whole number"),
    ({"token_ttl_seconds": 59}, "token_ttl_seconds: 59 is not valid; it must be a whole number of seconds, at least 60"),
    ({"permissions": []}, "permissions: [] is not valid; it must be a non-empty list"),
    ({"permissions": ["admin"]}, "permissions: 'admin' is not valid; each entry must be"),
    ({"\ud800": 1}, "'\\ud800': is not a known field"),
    ({"package": "p\udfff"}, "package: 'p\\udfff' is not valid; it must be a package name"),
])
def test_a_refusal_names_the_field_and_says_what_it_accepts(change, detail):
    problem = refused({**GITHUB, **change})
    assert problem.detail.startswith(detail), problem.detail
    assert problem.extra["field"] == problem.detail.split(":", 1)[0]


def test_the_provider_picks_the_type_that_checks_the_rest():
    assert refused({**GITHUB, "require_protected_ref": True}).extra == {"field": "require_protected_ref"}
    gitlab = bodies.convert({"package": "p", "provider": "gitlab", "namespace": "g", "project": "p",
                             "workflow_filepath": ".gitlab-ci.yml", "require_protected_ref": True},
                            PUBLISHER_INPUT, "invalid_publisher")
    assert type(gitlab).__name__ == "GitLabPublisherInput" and gitlab.require_protected_ref is True


def test_a_body_that_is_no_object_is_refused_as_a_whole():
    assert refused([GITHUB]).detail == "the body must be a JSON object, not a JSON array"
    assert "field" not in refused("x", IdTokenBody, "malformed_request").extra


def test_absent_and_null_differ_where_they_mean_different_things():
    change = bodies.convert({"allowed_packages": None}, IssuerChange, "invalid_issuer")
    assert change.allowed_packages is None and change.enabled is bodies.UNSET
    assert refused({"enabled": None}, IssuerChange, "invalid_issuer").detail.startswith(
        "enabled: may be left out but not null; it must be true or false")


def _components() -> dict[str, Any]:
    return OPENAPI["components"]["schemas"]


def _document_accepts(name: str, value: Any) -> bool:
    schema = {"$ref": f"#/components/schemas/{name}", "components": {"schemas": _components()},
              "$schema": "https://json-schema.org/draft/2020-12/schema"}
    try:
        jsonschema.validate(value, schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        return True
    except jsonschema.ValidationError:
        return False


def _check_accepts(body_type: Any, value: Any) -> bool:
    try:
        bodies.convert(value, body_type, "malformed_request")
        return True
    except Problem:
        return False


ISSUER = {"url": "https://issuer.example.com", "kind": "github"}
SAMPLES: list[tuple[str, Any, dict[str, Any]]] = [
    *[("PublisherInput", PUBLISHER_INPUT, {**GITHUB, **change}) for change in (
        {}, {"package": "-x"}, {"package": "a" * 214}, {"package": "a" * 215}, {"repository_owner": "o\n"},
        {"repository_owner": "a" * 39}, {"repository_owner": "a" * 40}, {"workflow_filename": "a.yaml"},
        {"workflow_filename": "dir/a.yml"}, {"environments": ["prod", "Stage 2"]}, {"environments": [" prod"]},
        {"ref_patterns": ["refs/tags/v*"]}, {"ref_patterns": ["\u00e9"]}, {"token_ttl_seconds": 60},
        {"token_ttl_seconds": 1.0}, {"permissions": ["publish-new"]}, {"permissions": []}, {"provider": "x"},
        {"repository_id": "12"}, {"repository_id": "1a"}, {"unknown": True})],
    ("PublisherInput", PUBLISHER_INPUT, {"package": "p", "provider": "gitlab", "namespace": "g/s.git",
                                         "project": "p", "workflow_filepath": "ci.yml"}),
    ("PublisherInput", PUBLISHER_INPUT, {"package": "p", "provider": "gitlab", "namespace": "g/s",
                                         "project": "p", "workflow_filepath": "ci.yml", "environments": ["a/b"]}),
    *[("IssuerInput", IssuerInput, {**ISSUER, **change}) for change in (
        {}, {"kind": "bitbucket"}, {"algorithms": ["RS256"]}, {"algorithms": ["HS256"]}, {"algorithms": []},
        {"allowed_packages": None}, {"allowed_packages": ["acme-*"]}, {"audience": ""}, {"audience": "a b"},
        {"max_token_lifetime_seconds": 86401}, {"url": "https://x\n"})],
    *[("RevocationInput", RevocationInput, body) for body in (
        {"token_id": "7d1b1d2e-8f1c-4a8e-9a4e-7e9a3b1c2d3e"}, {"token_id": "nope"}, {"repository": "o/r"},
        {"repository": "o"}, {"repository": "o/r", "issued_after": "2025-01-31T12:00:00Z"},
        {"repository": "o/r", "issued_after": "2025-01-31"}, {"package": "p", "reason": "line\nbreak"})],
    *[("IdTokenBody", IdTokenBody, body) for body in ({"jwt": "a.b.c"}, {"jwt": 5}, {}, {"jwt": "x", "y": 1})],
    *[("TokenBody", TokenBody, body) for body in ({"token": "tpx_x"}, {}, {"token": 1}, {"token_type_hint": "x"})],
]


@pytest.mark.parametrize(("name", "body_type", "value"), SAMPLES)
def test_the_document_accepts_exactly_what_the_checks_accept(name, body_type, value):
    """The schemas are generated from the types, so they must agree on every sample (patterns included:
    an ECMA-262 reader and Python's re see the same anchors)."""
    assert _document_accepts(name, value) == _check_accepts(body_type, value), value


def test_every_request_body_of_the_document_is_a_declared_type():
    for path, item in OPENAPI["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "requestBody" not in operation:
                continue
            for media in operation["requestBody"]["content"].values():
                name = media["schema"]["$ref"].rsplit("/", 1)[-1]
                assert name in _components(), f"{method} {path}: {name}"


def test_an_unanchored_pattern_cannot_reach_the_document():
    for name, schema in _components().items():
        for text in _patterns(schema):
            assert text.startswith("^(?:") and text.endswith(")$(?!\\n)"), (name, text)


def _patterns(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return found + [p for value in node.values() for p in _patterns(value)]
    if isinstance(node, list):
        return [p for value in node for p in _patterns(value)]
    return []


def test_answers_are_encoded_from_their_types():
    from tpx.exchange.minting import ExchangeResult

    result = ExchangeResult(token="tpx_" + "a" * 46, token_id="t", expires_at="2026-01-01T00:00:00Z",
                            expires_in=60, packages=["p"], publisher_ids=["x"], permissions={"p": ["publish-update"]})
    assert _document_accepts("ExchangeResult", msgspec.to_builtins(result))
