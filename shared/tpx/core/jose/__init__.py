"""Token verification: strict JSON, issuer keys and compact JWS under tpx's rules.

Callers need only this package's names; the submodules stay small so each
rule is easy to find and audit.
"""

from tpx.core.jose.keys import (
    SUPPORTED_ALGORITHMS,
    KeyRejected,
    VerificationKey,
    parse_jwk,
    parse_jwks,
)
from tpx.core.jose.strict_json import loads_object
from tpx.core.jose.verify import (
    MAX_CLAIM_BYTES,
    MAX_JWT_BYTES,
    MAX_URI_CLAIM_BYTES,
    IssuerPolicy,
    UnverifiedToken,
    parse_compact,
    verify,
)

__all__ = [
    "MAX_CLAIM_BYTES",
    "MAX_JWT_BYTES",
    "MAX_URI_CLAIM_BYTES",
    "SUPPORTED_ALGORITHMS",
    "IssuerPolicy",
    "KeyRejected",
    "UnverifiedToken",
    "VerificationKey",
    "loads_object",
    "parse_compact",
    "parse_jwk",
    "parse_jwks",
    "verify",
]
