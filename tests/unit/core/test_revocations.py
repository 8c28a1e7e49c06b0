"""A revocation's selector from admin input, and how rules and selectors show themselves."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import msgspec
import pytest

from tpx.core.errors import Problem
from tpx.core.revocations import DEFAULT_REASON, Rule, Selector, parse_selector

TOKEN_ID = str(uuid.uuid4())


@pytest.mark.parametrize(("body", "selector"), [
    ({"token_id": TOKEN_ID}, Selector("token", token_id=uuid.UUID(TOKEN_ID))),
    ({"publisher_id": TOKEN_ID}, Selector("publisher", publisher_id=uuid.UUID(TOKEN_ID))),
    ({"package": "acme-lib"}, Selector("package", package="acme-lib")),
    ({"repository": "Octo-Org/Repo"}, Selector("repository", repository_key="octo-org/repo")),
    ({"repository": "group/sub/project", "workflow": "release.yml"},
     Selector("repository", repository_key="group/sub/project", workflow="release.yml")),
    ({"repository": "o/r", "issued_after": "2026-01-02T03:04:05.123456789+01:00"},
     Selector("repository", repository_key="o/r",
              issued_after=datetime(2026, 1, 2, 2, 4, 5, 123456, tzinfo=timezone.utc))),
])
def test_selectors(body, selector):
    assert parse_selector(body) == (selector, DEFAULT_REASON)


@pytest.mark.parametrize(("body", "field"), [
    ({}, "selector"),
    ({"reason": "x"}, "selector"),
    ({"package": "a", "repository": "o/r"}, "repository"),
    ({"package": "a", "workflow": "release.yml"}, "workflow"),
    ({"token_id": "not-a-uuid"}, "token_id"),
    ({"publisher_id": 7}, "publisher_id"),
    ({"package": " spaced"}, "package"),
    ({"repository": "no-slash"}, "repository"),
    ({"repository": "o/r", "issued_after": "yesterday"}, "issued_after"),
    ({"repository": "o/r", "issued_before": "2026-01-02T03:04:05"}, "issued_before"),  # no zone
    ({"repository": "o/r", "issued_after": "2026-02-30T00:00:00Z"}, "issued_after"),
    ({"repository": "o/r", "issued_after": "2026-01-02T00:00:00Z", "issued_before": "2026-01-01T00:00:00Z"},
     "issued_before"),
    ({"package": "a", "reason": "two\nlines"}, "reason"),
    ({"package": "a", "reason": "x" * 501}, "reason"),
    ({"package": "a", "extra": 1}, "extra"),
])
def test_refusals_name_the_field(body, field):
    with pytest.raises(Problem) as refused:
        parse_selector(body)
    assert refused.value.code == "invalid_request" and refused.value.extra == {"field": field}


def test_a_rule_shows_its_selector_and_times_in_utc():
    now = datetime(2026, 12, 4, 23, 0, tzinfo=timezone.utc)
    rule = Rule(id=uuid.uuid4(), kind="repository", token_id=None, publisher_id=None, package=None,
                repository_key="o/r", workflow=None, issued_after=now, issued_before=None, cutoff=now, reason="r",
                actor=None, status="pending", revoked=0, created_at=now, completed_at=None)
    shown = msgspec.to_builtins(rule.to_api())
    assert shown["selector"] == {"repository": "o/r", "issued_after": "2026-12-04T23:00:00.000000Z"}
    assert shown["cutoff"] == "2026-12-04T23:00:00.000000Z" and shown["completed_at"] is None
    assert msgspec.to_builtins(rule.summary()) == {"revocation_id": str(rule.id), "status": "pending", "revoked": 0}


def test_a_selector_needs_its_kinds_field():
    with pytest.raises(ValueError):
        Selector("package")
    with pytest.raises(ValueError):
        Selector("everything", package="x")
