"""Compact JWS parsing and verification of CI ID tokens, under tpx's own rules.

Split in two on purpose. `parse_compact` does every check that needs no key, so
garbage is refused cheaply as `malformed_token` before the issuer is even
looked up. `verify` then checks the signature and the time and audience claims
against an issuer's policy; the algorithm comes from that policy, never from
the token. Both are pure: no I/O, no clock (the caller passes `now`), and no
detail ever contains the token or its signature.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from jwt.algorithms import Algorithm, get_default_algorithms

from tpx.core.errors import Problem
from tpx.core.jose.keys import KID_RE, MAX_KID_LENGTH, SUPPORTED_ALGORITHMS, VerificationKey
from tpx.core.jose.strict_json import iter_strings, json_type, loads_object, quote

MAX_JWT_BYTES = 16 * 1024
MAX_CLAIM_BYTES = 255
MAX_URI_CLAIM_BYTES = 1024
# Far beyond any real timestamp, and small enough for every database column
# and JSON consumer (2**53 - 1 is the largest integer a double holds exactly).
MAX_TIMESTAMP = 2**53 - 1

# Header members that change how a token is processed or where keys come from.
# tpx knows its issuers' keys; a token must not point elsewhere or opt into
# extensions tpx does not implement.
FORBIDDEN_HEADER_MEMBERS: dict[str, str] = {
    "crit": "critical header extensions",
    "jku": "key URLs in the token",
    "x5u": "certificate URLs in the token",
    "jwk": "keys embedded in the token",
    "x5c": "certificate chains in the token",
    "b64": "unencoded payloads (RFC 7797)",
    "zip": "compressed payloads",
    "enc": "encrypted tokens (JWE)",
    "cty": "nested tokens (cty)",
}

JTI_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,254}")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+")
_B64URL_VALUE = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}
_UNUSED_BITS = {2: 0b1111, 3: 0b11}   # by length % 4: the last character's bits that encode no byte
_FORBIDDEN_CHARACTERS = ("\x00", "\r", "\n")

# Built once: pyjwt's algorithm objects are stateless, and only the supported
# ones are reachable, so "none" and HMAC cannot be looked up by accident.
_ALGORITHMS: dict[str, Algorithm] = {
    name: impl for name, impl in get_default_algorithms().items() if name in SUPPORTED_ALGORITHMS
}


@dataclass(frozen=True)
class IssuerPolicy:
    """What tpx requires of tokens from one registered issuer."""

    url: str
    audience: str
    algorithms: frozenset[str] = frozenset({"RS256"})
    max_token_lifetime: int = 7200

    def __post_init__(self) -> None:
        # A bare string would become a set of letters and silently allow nothing
        # sensible; any other iterable is frozen so the policy cannot drift.
        if isinstance(self.algorithms, str):
            raise TypeError("IssuerPolicy.algorithms must be a collection of names, not a string")
        object.__setattr__(self, "algorithms", frozenset(self.algorithms))


@dataclass(frozen=True)
class UnverifiedToken:
    """A structurally valid token whose signature and claims are not yet checked.

    Nothing in it may be trusted except to pick the issuer policy and key. The
    raw parts and claims are kept out of repr so they never reach a log line.
    """

    header: dict[str, Any]
    claims: dict[str, Any] = field(repr=False)
    signing_input: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    @property
    def issuer(self) -> str:
        return self.claims["iss"]

    @property
    def kid(self) -> str:
        return self.header["kid"]

    @property
    def alg(self) -> str:
        return self.header["alg"]


def _malformed(detail: str) -> Problem:
    return Problem("malformed_token", detail)


def _invalid(detail: str) -> Problem:
    return Problem("invalid_token", detail)


def _b64url_decode(segment: str, what: str) -> bytes:
    """Decode one segment, accepting exactly one spelling of each byte string.

    Padding and non-zero trailing bits give the same bytes under many
    spellings; refusing them means a token has one textual form, so nothing
    downstream can be fooled by a variant (e.g. a signature with '==' appended).
    """
    if not _B64URL_RE.fullmatch(segment):
        if "=" in segment:
            raise _malformed(
                f"The {what} has '=' padding; JWT segments are base64url without padding."
            )
        raise _malformed(f"The {what} contains characters outside the base64url alphabet.")
    remainder = len(segment) % 4
    if remainder == 1:
        raise _malformed(f"The {what} has a length no base64url encoding can have.")
    # The one spelling the encoder gives: a last character that carries 4 (or 2) bits the decoder drops
    # has them zero. Equivalent to re-encoding and comparing, without a second pass over the segment.
    if remainder and _B64URL_VALUE[segment[-1]] & _UNUSED_BITS[remainder]:
        raise _malformed(
            f"The {what} is not canonical base64url (its last character has non-zero unused bits)."
        )
    return base64.urlsafe_b64decode(segment + "=" * (-remainder % 4))


def _check_strings(obj: dict[str, Any], what: str, raw: bytes | None = None) -> None:
    if raw is not None and b"\\" not in raw:
        return  # no escapes in the JSON text, so no string holds NUL, CR or LF (raw ones are invalid JSON)
    for name, value in obj.items():
        for text in iter_strings({name: value}):
            if any(ch in text for ch in _FORBIDDEN_CHARACTERS):
                raise _malformed(
                    f"The {what} {quote(name)} contains a NUL, CR or LF character, "
                    "which tpx never accepts."
                )


def _check_header(header: dict[str, Any], raw: bytes | None = None) -> None:
    for name, reason in FORBIDDEN_HEADER_MEMBERS.items():
        if name in header:
            raise _malformed(
                f"The JWT header has the member {name!r}; tpx does not accept {reason}. "
                "Send the ID token exactly as your CI provider issued it."
            )
    for name, value in header.items():
        if not isinstance(value, str):
            raise _malformed(
                f"The JWT header member {quote(name)} must be a string, "
                f"not a JSON {json_type(value)}."
            )
    if "alg" not in header:
        raise _malformed("The JWT header has no 'alg' member.")
    kid = header.get("kid")
    if kid is None:
        raise _malformed(
            "The JWT header has no 'kid' member; tpx selects the issuer's key by kid only."
        )
    if not KID_RE.fullmatch(kid):
        raise _malformed(
            f"The JWT header 'kid' must be 1 to {MAX_KID_LENGTH} printable ASCII characters."
        )
    _check_strings(header, "JWT header member", raw)


def _string_claim(claims: dict[str, Any], name: str, max_bytes: int, *, required: bool) -> None:
    if name not in claims:
        if required:
            raise _malformed(f"The ID token has no {name!r} claim.")
        return
    value = claims[name]
    if not isinstance(value, str):
        raise _malformed(
            f"The {name!r} claim must be a string, not a JSON {json_type(value)}."
        )
    if not value:
        raise _malformed(f"The {name!r} claim is empty.")
    if len(value.encode("utf-8")) > max_bytes:
        raise _malformed(f"The {name!r} claim is longer than {max_bytes} bytes.")


def _int_claim(claims: dict[str, Any], name: str, *, required: bool) -> None:
    if name not in claims:
        if required:
            raise _malformed(f"The ID token has no {name!r} claim.")
        return
    value = claims[name]
    # bool is an int subclass, so `isinstance` would let `true` through.
    if type(value) is not int:
        raise _malformed(
            f"The {name!r} claim must be a JSON integer (seconds since the epoch), "
            f"not a JSON {json_type(value)}."
        )
    if not 0 <= value <= MAX_TIMESTAMP:
        raise _malformed(f"The {name!r} claim is not a plausible timestamp.")


def _check_claims(claims: dict[str, Any], raw: bytes | None = None) -> None:
    _string_claim(claims, "iss", MAX_URI_CLAIM_BYTES, required=True)
    if isinstance(claims.get("aud"), list):
        raise _malformed(
            "The 'aud' claim is a list; tpx requires a single audience. "
            "Request the ID token with exactly one audience."
        )
    _string_claim(claims, "aud", MAX_URI_CLAIM_BYTES, required=True)
    _int_claim(claims, "exp", required=True)
    _int_claim(claims, "iat", required=True)
    _int_claim(claims, "nbf", required=False)
    # Required where the provider issues one (tpx.exchange.verification); Google's and CircleCI's do not.
    _string_claim(claims, "jti", MAX_CLAIM_BYTES, required=False)
    if "jti" in claims and not JTI_RE.fullmatch(claims["jti"]):
        raise _malformed(
            "The 'jti' claim must start with a letter or digit and contain only letters, "
            "digits, '.', '_', ':' and '-' (at most 255 characters)."
        )
    if "sub" in claims and not isinstance(claims["sub"], str):
        raise _malformed(
            f"The 'sub' claim must be a string, not a JSON {json_type(claims['sub'])}."
        )
    _check_strings(claims, "claim", raw)


def parse_compact(token: object) -> UnverifiedToken:
    """Split and decode a compact JWS, refusing anything tpx would not verify.

    Everything checkable without a key happens here, cheapest first: the size
    cap comes before any other work so an oversized input costs nothing.
    """
    if not isinstance(token, str):
        raise _malformed("The ID token must be a string.")
    if len(token) > MAX_JWT_BYTES:
        raise _malformed(
            f"The ID token is longer than {MAX_JWT_BYTES} bytes; CI ID tokens are far smaller."
        )
    if not token.isascii():
        raise _malformed("The ID token contains non-ASCII characters.")
    segments = token.split(".")
    if len(segments) == 5:
        raise _malformed(
            "The ID token has five segments, which is an encrypted token (JWE); "
            "tpx accepts only signed ID tokens (three segments)."
        )
    if len(segments) != 3:
        raise _malformed(
            f"The ID token has {len(segments)} segments; a signed JWT has exactly three "
            "(header.payload.signature)."
        )
    names = ("header", "payload", "signature")
    for name, segment in zip(names, segments):
        if not segment:
            raise _malformed(f"The JWT {name} segment is empty.")
    header_raw, payload_raw, signature = (
        _b64url_decode(segment, f"JWT {name} segment") for name, segment in zip(names, segments)
    )
    header = loads_object(header_raw, "JWT header")
    _check_header(header, header_raw)
    claims = loads_object(payload_raw, "JWT payload")
    _check_claims(claims, payload_raw)
    signing_input = f"{segments[0]}.{segments[1]}".encode("ascii")
    return UnverifiedToken(
        header=header, claims=claims, signing_input=signing_input, signature=signature
    )


def _signature_ok(token: UnverifiedToken, key: VerificationKey) -> bool:
    try:
        return bool(_ALGORITHMS[token.alg].verify(token.signing_input, key.key, token.signature))
    except Exception:  # noqa: BLE001 - any failure inside the crypto layer fails closed
        return False


def verify(
    token: UnverifiedToken,
    policy: IssuerPolicy,
    key: VerificationKey | None,
    *,
    now: int,
    leeway: int,
) -> dict[str, Any]:
    """Check signature and claims against `policy`; return the verified claims.

    `key` is whatever the caller found for `token.kid` (None if nothing). The
    order is fixed: algorithm, key, signature, then claims, so no claim is
    judged before the token is proven to come from the issuer.
    """
    alg = token.alg
    if alg not in policy.algorithms or alg not in SUPPORTED_ALGORITHMS:
        allowed = ", ".join(sorted(policy.algorithms & SUPPORTED_ALGORITHMS)) or "none configured"
        raise _invalid(
            f"The ID token is signed with algorithm {quote(alg)}, which tpx does not accept "
            f"for this issuer (accepted: {allowed})."
        )
    if key is None:
        raise _invalid(
            f"The ID token names an unknown key id {quote(token.kid)}; the issuer's keys may "
            "have rotated. Retry in a minute."
        )
    if not key.supports(alg):
        raise _invalid(
            f"The issuer's key {quote(key.kid)} cannot verify {alg} signatures; "
            "the token's algorithm does not match its key."
        )
    if not _signature_ok(token, key):
        raise _invalid(
            "The ID token's signature is not valid for the issuer's key. "
            "Send the token exactly as your CI provider issued it."
        )
    claims = token.claims
    if claims["iss"] != policy.url:
        raise Problem(
            "unknown_issuer",
            f"The ID token's issuer {quote(claims['iss'])} is not {quote(policy.url)}; "
            "tpx accepts tokens only from the issuer they were checked against.",
        )
    if claims["aud"] != policy.audience:
        raise _invalid(
            f"The ID token's audience is {quote(claims['aud'])}, but tpx expects "
            f"{quote(policy.audience)}. Set the audience input of your CI step to "
            f"{quote(policy.audience)}."
        )
    exp, iat = claims["exp"], claims["iat"]
    if exp <= now - leeway:
        raise _invalid(
            f"The ID token expired {now - exp} seconds ago. Request a fresh ID token "
            "right before the exchange."
        )
    nbf = claims.get("nbf")
    if nbf is not None and nbf > now + leeway:
        raise _invalid(
            f"The ID token is not valid for another {nbf - now} seconds (nbf). "
            "Check the clock of the machine that issued it."
        )
    if iat > now + leeway:
        raise _invalid(
            f"The ID token was issued {iat - now} seconds in the future (iat). "
            "Check the clock of the machine that issued it."
        )
    if exp <= iat:
        raise _invalid("The ID token expires before it was issued (exp is not after iat).")
    if exp - iat > policy.max_token_lifetime:
        raise _invalid(
            f"The ID token is valid for {exp - iat} seconds; tpx accepts at most "
            f"{policy.max_token_lifetime} seconds for this issuer. Request a shorter-lived token."
        )
    return dict(claims)
