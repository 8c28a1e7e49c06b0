"""The replay key of a token without `jti` (Google Cloud, CircleCI): a hash of what it says, not of its bytes."""

from __future__ import annotations

import base64
import json

from tpx.core.jose.verify import UnverifiedToken
from tpx.exchange.verification import replay_key


def unverified(claims: dict, *, pad: bool = False) -> UnverifiedToken:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode())
    if not pad:
        payload = payload.rstrip(b"=")
    return UnverifiedToken(header={"alg": "RS256", "kid": "k"}, claims=claims, signing_input=b"eyJ9." + payload,
                           signature=b"s")


def test_the_jti_when_the_token_has_one():
    assert replay_key(unverified({"jti": "abc"}), {"jti": "abc"}) == "abc"


def test_otherwise_the_hash_of_the_decoded_claims():
    claims = {"sub": "104628349174512389012", "iat": 1767225600}
    key = replay_key(unverified(claims), claims)
    assert key.startswith("sha256:") and len(key) == 71
    assert replay_key(unverified(claims, pad=True), claims) == key   # the same claims, however encoded
    other = {**claims, "iat": 1767225601}
    assert replay_key(unverified(other), other) != key
