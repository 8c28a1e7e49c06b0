"""Issuer signing keys, parsed once from a JWKS and never trusted blindly.

A JWKS is fetched from the network, so each key is judged on its own: a bad key
(symmetric, private, meant for encryption, too small or too large) is skipped
with a reason while the good ones stay usable. Keys are turned into
`cryptography` objects here, once, so verification never parses key material
on the request path.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any, Union

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tpx.core.jose.strict_json import quote

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
# Each ECDSA algorithm is bound to exactly one curve (RFC 7518 section 3.4).
EC_CURVES: dict[str, tuple[str, type[ec.EllipticCurve], int]] = {
    # alg: (JWK crv, curve class, coordinate length in bytes)
    "ES256": ("P-256", ec.SECP256R1, 32),
    "ES384": ("P-384", ec.SECP384R1, 48),
}
# The only algorithms tpx will ever verify: asymmetric, no "none", no HMAC.
SUPPORTED_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_CURVES)

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
# NIST SP 800-56B caps the public exponent at 256 bits; a bigger one only
# makes verification slower.
MAX_RSA_EXPONENT_BITS = 256
MAX_KID_LENGTH = 128
KID_RE = re.compile(r"[\x20-\x7e]{1,%d}" % MAX_KID_LENGTH)

PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
# 8192 bits is 1366 base64url characters; anything much longer is not a key
# tpx accepts, and refusing it early avoids big-integer work on junk.
_MAX_MEMBER_CHARS = 1400

PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey]


class KeyRejected(Exception):
    """A JWK or JWKS tpx will not use; the message says why, without key material."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VerificationKey:
    """One usable public signing key of an issuer, already parsed."""

    kid: str
    kty: str
    alg: str | None
    # cryptography key objects are not hashable; equality still compares them.
    key: PublicKey = field(repr=False, hash=False)
    # What `supports` answers, derived once from the fields above (frozen: they never change).
    _algorithms: frozenset[str] = field(init=False, repr=False, hash=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_algorithms", frozenset(a for a in SUPPORTED_ALGORITHMS if self._check_supports(a)))

    def supports(self, alg: str) -> bool:
        """Whether a token signed with `alg` may be checked with this key.

        Guards against algorithm confusion: an RSA key never verifies an EC
        signature, an ES256 token needs a P-256 key, and a key that names its
        algorithm is used for that one only. Asked on every verification, so
        the answer is worked out at construction: `isinstance` against
        cryptography's abstract key classes goes through ABCMeta each time.
        """
        return alg in self._algorithms

    def _check_supports(self, alg: str) -> bool:
        if alg not in SUPPORTED_ALGORITHMS:
            return False
        if self.alg is not None and self.alg != alg:
            return False
        if alg in RSA_ALGORITHMS:
            return self.kty == "RSA" and isinstance(self.key, rsa.RSAPublicKey)
        _crv, curve_class, _size = EC_CURVES[alg]
        return (
            self.kty == "EC"
            and isinstance(self.key, ec.EllipticCurvePublicKey)
            and isinstance(self.key.curve, curve_class)
        )


def describe_kid(value: object) -> str:
    """A kid as it may appear in a log line or reason, whatever the JWKS sent."""
    if isinstance(value, str) and KID_RE.fullmatch(value):
        return value
    if value is None:
        return "(none)"
    return quote(value, limit=32)


def _member_bytes(jwk: dict[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise KeyRejected(f"member {name!r} must be a non-empty base64url string")
    # Issuers are trusted to be sane, not byte-perfect: tolerate padding here.
    text = value.rstrip("=")
    if len(text) > _MAX_MEMBER_CHARS:
        raise KeyRejected(f"member {name!r} is too long")
    if not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        raise KeyRejected(f"member {name!r} is not valid base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise KeyRejected(f"member {name!r} is not valid base64url") from None


def _rsa_key(jwk: dict[str, Any]) -> rsa.RSAPublicKey:
    n = int.from_bytes(_member_bytes(jwk, "n"), "big")
    e = int.from_bytes(_member_bytes(jwk, "e"), "big")
    bits = n.bit_length()
    if bits < MIN_RSA_BITS:
        raise KeyRejected(f"RSA modulus is {bits} bits; tpx requires at least {MIN_RSA_BITS}")
    if bits > MAX_RSA_BITS:
        raise KeyRejected(f"RSA modulus is {bits} bits; tpx accepts at most {MAX_RSA_BITS}")
    if e.bit_length() > MAX_RSA_EXPONENT_BITS:
        raise KeyRejected("RSA public exponent is unreasonably large")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        raise KeyRejected("RSA public numbers are invalid") from None


def _ec_key(jwk: dict[str, Any]) -> ec.EllipticCurvePublicKey:
    crv = jwk.get("crv")
    for _alg, (name, curve_class, size) in EC_CURVES.items():
        if crv == name:
            break
    else:
        supported = ", ".join(name for name, _c, _s in EC_CURVES.values())
        raise KeyRejected(f"curve {quote(crv)} is not supported (supported: {supported})")
    x = _member_bytes(jwk, "x")
    y = _member_bytes(jwk, "y")
    if len(x) != size or len(y) != size:
        raise KeyRejected(f"{name} coordinates must be {size} bytes each")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve_class(), b"\x04" + x + y)
    except ValueError:
        raise KeyRejected(f"the point is not on curve {name}") from None


def _check_alg(alg: object, kty: str, crv: object) -> str | None:
    if alg is None:
        return None
    if not isinstance(alg, str) or alg not in SUPPORTED_ALGORITHMS:
        supported = ", ".join(sorted(SUPPORTED_ALGORITHMS))
        raise KeyRejected(f"alg {quote(alg)} is not supported (supported: {supported})")
    if kty == "RSA" and alg not in RSA_ALGORITHMS:
        raise KeyRejected(f"alg {alg} cannot be used with an RSA key")
    if kty == "EC" and (alg not in EC_CURVES or EC_CURVES[alg][0] != crv):
        raise KeyRejected(f"alg {alg} cannot be used with an EC key on curve {quote(crv)}")
    return alg


def parse_jwk(jwk: dict[str, Any]) -> VerificationKey:
    """Turn one JWK into a VerificationKey or raise KeyRejected with the reason."""
    if not isinstance(jwk, dict):
        raise KeyRejected(f"a key must be a JSON object, not {quote(jwk)}")
    kid = jwk.get("kid")
    if kid is None:
        raise KeyRejected("kid is missing; tpx selects keys by kid only")
    if not isinstance(kid, str):
        raise KeyRejected(f"kid must be a string, not {quote(kid)}")
    if not KID_RE.fullmatch(kid):
        raise KeyRejected(f"kid must be 1 to {MAX_KID_LENGTH} printable ASCII characters")
    kty = jwk.get("kty")
    if kty == "oct":
        raise KeyRejected("symmetric keys (kty oct) are never accepted")
    private = [name for name in PRIVATE_MEMBERS if name in jwk]
    if private:
        raise KeyRejected(
            f"the key contains private members ({', '.join(private)}); "
            "a JWKS must publish public keys only"
        )
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise KeyRejected(f"use is {quote(use)}; only signing keys (use sig) are accepted")
    if "key_ops" in jwk:
        ops = jwk["key_ops"]
        if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
            raise KeyRejected("key_ops must be an array of strings")
        if "verify" not in ops:
            raise KeyRejected("key_ops does not include verify")
    if kty == "RSA":
        alg = _check_alg(jwk.get("alg"), kty, None)
        key: PublicKey = _rsa_key(jwk)
    elif kty == "EC":
        alg = _check_alg(jwk.get("alg"), kty, jwk.get("crv"))
        key = _ec_key(jwk)
    else:
        raise KeyRejected(f"kty {quote(kty)} is not supported (supported: RSA, EC)")
    return VerificationKey(kid=kid, kty=kty, alg=alg, key=key)


def parse_jwks(
    document: object, max_keys: int = 100
) -> tuple[dict[str, VerificationKey], list[str]]:
    """Parse a JWKS into usable keys by kid, plus one reason per skipped key.

    Only a document of the wrong shape or with too many keys is refused whole;
    one odd key must not take an issuer's other keys down with it. The caller
    decides what an empty result means (it keeps the last good set).
    """
    if not isinstance(document, dict):
        raise KeyRejected(f"a JWKS must be a JSON object, not {quote(document)}")
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise KeyRejected('a JWKS must have a "keys" array')
    if len(entries) > max_keys:
        raise KeyRejected(f"the JWKS has {len(entries)} keys; tpx accepts at most {max_keys}")
    keys: dict[str, VerificationKey] = {}
    skipped: list[str] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            skipped.append(f"kid=(none): key #{index} is {quote(entry)}, not a JSON object")
            continue
        label = describe_kid(entry.get("kid"))
        try:
            key = parse_jwk(entry)
        except KeyRejected as exc:
            skipped.append(f"kid={label}: {exc.reason}")
            continue
        if key.kid in keys:
            skipped.append(
                f"kid={label}: duplicate kid; the first usable key with this kid is kept"
            )
            continue
        keys[key.kid] = key
    return keys, skipped
