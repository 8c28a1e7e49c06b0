"""A publisher from admin input: common fields here, identity fields by the provider; refusals name the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tpx.core.errors import Problem
from tpx.core.providers.base import Publisher
from tpx.core.publishers import identity_key, publisher_input, publisher_json

GITHUB = {"package": "pkg", "provider": "github", "repository_owner": "octo-org", "repository_name": "octo-repo",
          "workflow_filename": "release.yml"}
GITLAB = {"package": "pkg", "provider": "gitlab", "namespace": "my-group/sub", "project": "proj",
          "workflow_filepath": "ci/release.yml"}


def read(body: dict[str, Any], **options: Any) -> Publisher:
    return publisher_input(body, ttl_max=options.get("ttl_max", 21600),
                           allow_loopback=options.get("allow_loopback", False))


def refused(body: dict[str, Any], **options: Any) -> Problem:
    with pytest.raises(Problem) as caught:
        read(body, **options)
    assert caught.value.code == "invalid_publisher" and caught.value.status == 422
    return caught.value


def test_a_github_publisher_in_neutral_fields_with_defaults():
    p = read({**GITHUB, "repository_owner_id": "65"})
    assert (p.provider, p.owner, p.name, p.workflow, p.owner_id, p.name_id) == (
        "github", "octo-org", "octo-repo", "release.yml", "65", None)
    assert p.issuer == "https://token.actions.githubusercontent.com"
    assert (p.environments, p.ref_patterns, p.permissions, p.allow_self_hosted_runners) == (
        (), (), ("publish-update",), False)


def test_a_gitlab_publisher_with_its_own_option():
    p = read({**GITLAB, "require_protected_ref": True, "environments": ["prod", "prod"]})
    assert (p.owner, p.name, p.workflow, p.require_protected_ref) == ("my-group/sub", "proj", "ci/release.yml", True)
    assert p.environments == ("prod",)  # duplicates dropped, order kept
    assert publisher_json(p)["require_protected_ref"] is True
    assert "require_protected_ref" not in publisher_json(read(GITHUB))


@pytest.mark.parametrize(("change", "field"), [
    ({"provider": "bitbucket"}, "provider"),
    ({"provider": None}, "provider"),
    ({"surprise": 1}, "surprise"),
    ({"require_protected_ref": True}, "require_protected_ref"),  # a GitLab option on a GitHub publisher
    ({"namespace": "x"}, "namespace"),
    ({"package": "-leading-dash"}, "package"),
    ({"package": None}, "package"),
    ({"repository_owner": "-octo"}, "repository_owner"),
    ({"repository_owner": "a" * 40}, "repository_owner"),
    ({"repository_name": "with space"}, "repository_name"),
    ({"workflow_filename": ".github/workflows/release.yml"}, "workflow_filename"),
    ({"workflow_filename": "release.txt"}, "workflow_filename"),
    ({"repository_owner_id": 65}, "repository_owner_id"),
    ({"repository_id": "12a"}, "repository_id"),
    ({"environments": "prod"}, "environments"),
    ({"environments": ["x"] * 21}, "environments"),
    ({"environments": ["tab\there"]}, "environments"),
    ({"ref_patterns": ["a" * 256]}, "ref_patterns"),
    ({"allow_self_hosted_runners": "yes"}, "allow_self_hosted_runners"),
    ({"token_ttl_seconds": 59}, "token_ttl_seconds"),
    ({"token_ttl_seconds": 1.5}, "token_ttl_seconds"),
    ({"token_ttl_seconds": True}, "token_ttl_seconds"),
    ({"permissions": []}, "permissions"),
    ({"permissions": ["publish-everything"]}, "permissions"),
    ({"issuer": "http://ghes.example.com"}, "issuer"),
    ({"issuer": "https://ghes.example.com/"}, "issuer"),
    ({"issuer": "http://127.0.0.1:9999"}, "issuer"),
])
def test_github_refusals_name_the_field(change, field):
    problem = refused({**GITHUB, **change})
    assert problem.extra == {"field": field}
    assert problem.detail.startswith(f"{field}: ")


@pytest.mark.parametrize(("change", "field"), [
    ({"namespace": "group//sub"}, "namespace"),
    ({"project": "a/b"}, "project"),
    ({"workflow_filepath": "ci.json"}, "workflow_filepath"),
    ({"require_protected_ref": "true"}, "require_protected_ref"),
    ({"repository_owner": "x"}, "repository_owner"),  # a GitHub field on a GitLab publisher
])
def test_gitlab_refusals_name_the_field(change, field):
    assert refused({**GITLAB, **change}).extra == {"field": field}


@pytest.mark.parametrize("name", [" lead", "trail ", "q'", 'dq"', "back`tick", "com,ma", "semi;", "back\\slash",
                                  "tab\there", "x" * 256, ""])
def test_github_environment_names_follow_githubs_rules(name):
    assert refused({**GITHUB, "environments": [name]}).extra == {"field": "environments"}


@pytest.mark.parametrize("name", ["production", "Prod", "staging-eu", "release/v1", "my env", "a" * 255, "ü"[:0] + "x"])
def test_github_environment_names_that_can_match_are_kept(name):
    assert read({**GITHUB, "environments": [name]}).environments == (name,)


@pytest.mark.parametrize("workflow", [" release.yml", "release .yml ", "\trelease.yml"])
def test_a_workflow_file_name_with_surrounding_whitespace_never_matches_and_is_refused(workflow):
    assert refused({**GITHUB, "workflow_filename": workflow}).extra == {"field": "workflow_filename"}


@pytest.mark.parametrize(("change", "field"), [
    ({"namespace": "group.git"}, "namespace"),
    ({"namespace": "group/sub.atom"}, "namespace"),
    ({"namespace": "group.git/sub"}, "namespace"),
    ({"project": "project.git"}, "project"),
    ({"project": "project.atom"}, "project"),
    ({"workflow_filepath": "/abs.yml"}, "workflow_filepath"),
    ({"workflow_filepath": "/ci/release.yml"}, "workflow_filepath"),
    ({"workflow_filepath": " ci.yml"}, "workflow_filepath"),
    ({"environments": ["/prod"]}, "environments"),
    ({"environments": ["prod/"]}, "environments"),
    ({"environments": ["pr;od"]}, "environments"),
])
def test_gitlab_paths_and_environments_follow_gitlabs_rules(change, field):
    assert refused({**GITLAB, **change}).extra == {"field": field}


@pytest.mark.parametrize("change", [{"namespace": "group.github"}, {"project": "my.gitlab"}, {"project": "x.atomic"},
                                    {"workflow_filepath": ".gitlab-ci.yml"}, {"workflow_filepath": "ci/a b.yaml"},
                                    {"environments": ["review/feature-1", "prod eu", "${X}"]}])
def test_gitlab_values_that_can_match_are_kept(change):
    read({**GITLAB, **change})


def test_the_ttl_ceiling_is_the_operators():
    assert read({**GITHUB, "token_ttl_seconds": 600}, ttl_max=600).token_ttl_seconds == 600
    assert refused({**GITHUB, "token_ttl_seconds": 601}, ttl_max=600).extra == {"field": "token_ttl_seconds"}


def test_loopback_issuers_only_when_allowed():
    assert read({**GITHUB, "issuer": "http://127.0.0.1:9999"}, allow_loopback=True).issuer == "http://127.0.0.1:9999"


def test_identity_key_folds_names_and_github_environments_only():
    github = identity_key(read({**GITHUB, "environments": ["Prod"]}))
    assert github == identity_key(read({**GITHUB, "repository_owner": "OCTO-org", "environments": ["prod"]}))
    gitlab = identity_key(read({**GITLAB, "environments": ["Prod"]}))
    assert gitlab != identity_key(read({**GITLAB, "environments": ["prod"]}))


@pytest.mark.parametrize(("called", "ok"), [
    ("octo-org/shared/.github/workflows/publish.yml", True),
    ("octo-org/shared/.github/workflows/publish.yml@refs/heads/main", True),
    ("octo-org/shared/.github/workflows/publish.yml@0123456789abcdef0123456789abcdef01234567", True),
    ("octo-org/shared/.github/workflows/publish.txt", False),
    ("octo-org/shared/workflows/publish.yml", False),
    ("octo-org/.github/workflows/publish.yml", False),
    ("octo-org/shared/.github/workflows/sub/publish.yml", False),
    ("octo-org/shared/.github/workflows/publish.yml@", False),
    ("octo-org/shared/.github/workflows/publish.yml@refs/heads/a b", False),
])
def test_a_github_publisher_may_pin_the_called_workflow(called, ok):
    if ok:
        p = read({**GITHUB, "job_workflow_ref": called})
        assert p.conditions == {"job_workflow_ref": called}
        assert publisher_json(p)["job_workflow_ref"] == called
        assert identity_key(p) != identity_key(read(GITHUB))   # another publisher than the unpinned one
    else:
        assert refused({**GITHUB, "job_workflow_ref": called}).extra == {"field": "job_workflow_ref"}


def test_a_publisher_without_conditions_keeps_its_identity_key():
    p = read(GITHUB)
    assert p.conditions == {} and publisher_json(p)["job_workflow_ref"] is None
    assert json.loads(identity_key(p)) == ["pkg", "octo-org", "octo-repo", "release.yml", []]
