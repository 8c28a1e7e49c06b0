"""An issuer from admin input, and the loopback rule shared with the jwks-refresher."""

from __future__ import annotations

import pytest

from tpx.core.errors import Problem
from tpx.core.providers import PROVIDERS
from tpx.core.issuers import is_loopback_host, issuer_changes, issuer_url


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True),
    ("10.0.0.1", False), ("example.com", False), ("localhost.example.com", False), ("", False),
])
def test_is_loopback_host(host, loopback):
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize("url", ["https://token.actions.githubusercontent.com", "https://gitlab.example.com",
                                 "https://ghes.example.com/_services/token"])
def test_https_issuer_urls_are_kept_byte_for_byte(url):
    assert issuer_url(url, allow_loopback=False) == url


@pytest.mark.parametrize(("url", "allow", "says"), [
    ("http://gitlab.example.com", False, "must use https"),
    ("https://gitlab.example.com/", False, "must not end with '/'"),
    ("https://user:pw@gitlab.example.com", False, "no query, fragment or credentials"),
    ("https://gitlab.example.com?x=1", False, "no query"),
    ("https://gitlab.example.com#frag", False, "no query, fragment"),
    ("https:///path", False, "with a host"),
    ("http://127.0.0.1:8080", False, "TPX_INSECURE_LOOPBACK_ISSUERS=1"),
    ("https://gitlab.example.com/é", False, "exactly as the tokens' `iss` claim spells it"),
    (42, False, "exactly as the tokens' `iss` claim spells it"),
])
def test_bad_issuer_urls_are_refused_with_the_reason(url, allow, says):
    with pytest.raises(Problem) as refused:
        issuer_url(url, allow_loopback=allow)
    assert refused.value.code == "invalid_issuer" and refused.value.extra == {"field": "url"}
    assert says in refused.value.detail


def test_loopback_issuers_when_allowed():
    assert issuer_url("http://127.0.0.1:8080", allow_loopback=True) == "http://127.0.0.1:8080"


def test_creating_needs_url_and_a_known_kind():
    assert issuer_changes({"url": "https://gitlab.example.com", "kind": "gitlab"}, False, creating=True) == {
        "url": "https://gitlab.example.com", "kind": "gitlab"}
    with pytest.raises(Problem) as refused:
        issuer_changes({"url": "https://x.example.com", "kind": "bitbucket"}, False, creating=True)
    assert refused.value.extra == {"field": "kind"}
    assert 'one of "github", "gitlab", "' in refused.value.detail and all(f'"{k}"' in refused.value.detail
                                                                          for k in PROVIDERS)


def test_a_change_cannot_move_the_url_or_the_kind():
    for field in ("url", "kind"):
        with pytest.raises(Problem) as refused:
            issuer_changes({field: "x"}, False, creating=False)
        assert refused.value.extra == {"field": field}


@pytest.mark.parametrize(("body", "expected"), [
    ({"enabled": False}, {"enabled": False}),
    ({"audience": "pypi"}, {"audience": "pypi"}),
    ({"audience": None}, {"audience": None}),
    ({"algorithms": ["RS256", "ES256", "RS256"]}, {"algorithms": ["RS256", "ES256"]}),
    ({"allowed_packages": ["acme-*"]}, {"allowed_packages": ["acme-*"]}),
    ({"allowed_packages": None}, {"allowed_packages": None}),
    ({"max_token_lifetime_seconds": 3600}, {"max_token_lifetime_seconds": 3600}),
])
def test_changes(body, expected):
    assert issuer_changes(body, False, creating=False) == expected


@pytest.mark.parametrize(("body", "field"), [
    ({"enabled": "no"}, "enabled"),
    ({"audience": "with space"}, "audience"),
    ({"algorithms": []}, "algorithms"),
    ({"algorithms": ["HS256"]}, "algorithms"),
    ({"algorithms": ["none"]}, "algorithms"),
    ({"allowed_packages": ["no spaces"]}, "allowed_packages"),
    ({"max_token_lifetime_seconds": 59}, "max_token_lifetime_seconds"),
    ({"jwks_uri": "https://elsewhere"}, "jwks_uri"),
])
def test_bad_changes_name_the_field(body, field):
    with pytest.raises(Problem) as refused:
        issuer_changes(body, False, creating=False)
    assert refused.value.code == "invalid_issuer" and refused.value.extra == {"field": field}


def test_registering_googles_public_issuer_approves_its_key_host():
    """Google's jwks_uri is on www.googleapis.com; without the approval the refresher never fetches keys."""
    google = issuer_changes({"url": "https://accounts.google.com", "kind": "google"}, False, creating=True)
    assert google["jwks_hosts"] == ["www.googleapis.com"]
    other = issuer_changes({"url": "https://accounts.example.com", "kind": "google"}, False, creating=True)
    assert "jwks_hosts" not in other
    assert "jwks_hosts" not in issuer_changes({"url": "https://gitlab.com", "kind": "gitlab"}, False, creating=True)
