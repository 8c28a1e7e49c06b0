"""Admin and introspection credentials: constant-time checks, and an actor fingerprint nobody can test
guesses against offline.

Regression: the actor recorded in admin events was a truncated, unsalted SHA-256 of the credential, so
anyone who reads the event stream could check candidate credentials against it.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from starlette.requests import Request

from tpx.core.errors import Problem
from tpx.exchange.auth import Credentials

TOKEN = "an-admin-credential-of-some-length"
KEY = b"k" * 32


def request(authorization: str | None) -> Request:
    headers = [(b"authorization", authorization.encode())] if authorization is not None else []
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers, "query_string": b""})


def test_the_actor_is_a_keyed_fingerprint_of_the_credential():
    actor = Credentials((TOKEN,), "admin token", "TPX_ADMIN_TOKENS", fingerprint_key=KEY).authenticate(
        request(f"Bearer {TOKEN}"))
    assert actor == "credential:" + hmac.new(KEY, TOKEN.encode(), hashlib.sha256).hexdigest()[:12]
    assert actor != "credential:" + hashlib.sha256(TOKEN.encode()).hexdigest()[:12]


def test_another_server_key_gives_another_fingerprint():
    one = Credentials((TOKEN,), "admin token", "TPX_ADMIN_TOKENS", fingerprint_key=KEY)
    two = Credentials((TOKEN,), "admin token", "TPX_ADMIN_TOKENS", fingerprint_key=b"x" * 32)
    assert one.authenticate(request(f"Bearer {TOKEN}")) != two.authenticate(request(f"Bearer {TOKEN}"))


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic abc", f"Bearer {TOKEN}x", TOKEN])
def test_anything_but_the_bearer_credential_is_unauthorized(header):
    with pytest.raises(Problem) as refused:
        Credentials((TOKEN,), "admin token", "TPX_ADMIN_TOKENS", fingerprint_key=KEY).authenticate(request(header))
    assert refused.value.code == "unauthorized"
