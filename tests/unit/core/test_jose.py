"""tpx.core.jose: strict JSON, JWKS parsing and compact JWS verification.

Tokens are built by hand (base64url + json) so malformed ones can be crafted
byte by byte, and with `jwt.encode` for ordinary ones, so the parser is also
checked against what a mainstream library produces.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from typing import Any, Callable

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms

from tpx.core.errors import Problem
from tpx.core.jose import (
    MAX_JWT_BYTES,
    SUPPORTED_ALGORITHMS,
    IssuerPolicy,
    KeyRejected,
    UnverifiedToken,
    VerificationKey,
    loads_object,
    parse_compact,
    parse_jwk,
    parse_jwks,
    verify,
)
from tpx.core.jose.verify import _b64url_decode
from tpx.core.jose import strict_json
from tests.support.claims import github_claims

# ---------------------------------------------------------------------------
# Keys and token builders
# ---------------------------------------------------------------------------

RSA_PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_PRIVATE = ec.generate_private_key(ec.SECP256R1())
EC384_PRIVATE = ec.generate_private_key(ec.SECP384R1())
SMALL_RSA_PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=1024)

ISSUER = "https://token.actions.githubusercontent.com"
AUDIENCE = "tpx.example"
NOW = 1_700_000_000
LEEWAY = 60
POLICY = IssuerPolicy(url=ISSUER, audience=AUDIENCE, algorithms=frozenset({"RS256"}))
ANY_ALG_POLICY = IssuerPolicy(
    url=ISSUER, audience=AUDIENCE, algorithms=frozenset({"RS256", "PS256", "ES256", "ES384"})
)
DROP = object()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def enc(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def jwk_of(public_key: Any, **members: Any) -> dict[str, Any]:
    if isinstance(public_key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    jwk.update(members)
    return {k: v for k, v in jwk.items() if v is not DROP}


RSA_JWK = jwk_of(RSA_PRIVATE.public_key(), kid="rsa-1", use="sig")
EC_JWK = jwk_of(EC_PRIVATE.public_key(), kid="ec-1")
RSA_KEY = parse_jwk(RSA_JWK)
EC_KEY = parse_jwk(EC_JWK)
EC384_KEY = parse_jwk(jwk_of(EC384_PRIVATE.public_key(), kid="ec384-1"))


def header(alg: str = "RS256", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"typ": "JWT", "alg": alg, "x5t": "example-thumbprint", "kid": "rsa-1"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not DROP}


def claims(**overrides: Any) -> dict[str, Any]:
    """A GitHub-shaped payload that verifies against POLICY at NOW."""
    base: dict[str, Any] = {
        "jti": "0f3c2a1e-7b7d-4c1e-9a55-3c6a1b2d4e5f",
        "sub": "repo:octo-org/octo-repo:environment:prod",
        "environment": "prod",
        "aud": AUDIENCE,
        "ref": "refs/heads/main",
        "repository": "octo-org/octo-repo",
        "repository_owner_id": "65",
        "workflow_ref": "octo-org/octo-repo/.github/workflows/release.yml@refs/heads/main",
        "event_name": "workflow_dispatch",
        "iss": ISSUER,
        "nbf": NOW - 30,
        "iat": NOW - 30,
        "exp": NOW + 270,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not DROP}


def craft(
    hdr: dict[str, Any] | None = None,
    payload: dict[str, Any] | None = None,
    *,
    header_raw: bytes | None = None,
    payload_raw: bytes | None = None,
    key: Any = RSA_PRIVATE,
    sign_alg: str | None = None,
) -> str:
    """A compact JWS from exact bytes, signed for real unless the alg is unsignable."""
    hdr = header() if hdr is None else hdr
    h = enc(hdr) if header_raw is None else header_raw
    p = enc(claims() if payload is None else payload) if payload_raw is None else payload_raw
    signing_input = f"{b64(h)}.{b64(p)}"
    alg = sign_alg or hdr.get("alg", "RS256")
    if alg in SUPPORTED_ALGORITHMS:
        signature = get_default_algorithms()[alg].sign(signing_input.encode(), key)
    else:
        signature = b"not-a-real-signature"
    return f"{signing_input}.{b64(signature)}"


def split(token: str) -> list[str]:
    return token.split(".")


def flip_trailing_bits(segment: str) -> str:
    """Same bytes, different spelling: set unused low bits of the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    index = alphabet.index(segment[-1])
    unused = {2: 0b1111, 3: 0b11}[len(segment) % 4]
    assert index & unused == 0
    return segment[:-1] + alphabet[index | 1]


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"n": value}
    return value


def assert_problem(excinfo: pytest.ExceptionInfo[Problem], code: str, fragment: str) -> None:
    problem = excinfo.value
    assert problem.code == code, problem.detail
    assert fragment.lower() in problem.detail.lower(), problem.detail


def assert_no_token_material(problem: Problem, token: str) -> None:
    for part in split(token):
        if len(part) > 8:
            assert part not in problem.detail
            assert part not in str(problem)


def verify_token(token: str, key: VerificationKey | None = RSA_KEY,
                 policy: IssuerPolicy = POLICY, now: int = NOW) -> dict[str, Any]:
    return verify(parse_compact(token), policy, key, now=now, leeway=LEEWAY)


# ---------------------------------------------------------------------------
# Happy paths
# ---------------------------------------------------------------------------


def test_pyjwt_token_with_github_header_verifies() -> None:
    token = jwt.encode(
        claims(), RSA_PRIVATE, algorithm="RS256",
        headers={"kid": "rsa-1", "x5t": "example-thumbprint", "typ": "JWT"},
    )
    unverified = parse_compact(token)
    assert isinstance(unverified, UnverifiedToken)
    assert (unverified.issuer, unverified.kid, unverified.alg) == (ISSUER, "rsa-1", "RS256")
    assert verify(unverified, POLICY, RSA_KEY, now=NOW, leeway=LEEWAY) == claims()


def test_hand_built_token_verifies_and_returns_a_copy() -> None:
    unverified = parse_compact(craft())
    result = verify(unverified, POLICY, RSA_KEY, now=NOW, leeway=LEEWAY)
    result["iss"] = "changed"
    assert unverified.claims["iss"] == ISSUER


@pytest.mark.parametrize(
    ("alg", "private", "key"),
    [
        ("ES256", EC_PRIVATE, EC_KEY),
        ("ES384", EC384_PRIVATE, EC384_KEY),
        ("PS256", RSA_PRIVATE, RSA_KEY),
    ],
)
def test_other_algorithms_verify_when_the_policy_allows_them(alg: str, private: Any,
                                                             key: VerificationKey) -> None:
    token = jwt.encode(claims(), private, algorithm=alg, headers={"kid": key.kid})
    assert verify_token(token, key, ANY_ALG_POLICY)["jti"] == claims()["jti"]


def test_token_of_exactly_the_size_cap_is_accepted() -> None:
    signature_chars = len(split(craft())[2])  # fixed for a given RSA key size
    for header_pad in range(3):  # base64url never yields a length of 4k+1
        hdr = header(note="x" * header_pad)
        budget = MAX_JWT_BYTES - len(b64(enc(hdr))) - signature_chars - 2
        start = budget * 3 // 4 - len(enc(claims(padding="")))
        for pad in range(start - 3, start + 3):
            payload = claims(padding="x" * pad)
            if len(b64(enc(payload))) == budget:
                token = craft(hdr, payload)
                assert len(token) == MAX_JWT_BYTES
                assert verify_token(token) == payload
                return
    pytest.fail("no exact fit found")  # pragma: no cover


def test_unknown_string_header_members_and_unknown_claims_are_allowed() -> None:
    token = craft(header(foo="bar"), claims(check_run_id="1", extra={"a": ["b", 1, None]}))
    assert verify_token(token)["extra"] == {"a": ["b", 1, None]}


def test_unverified_token_repr_hides_token_material() -> None:
    token = craft()
    rendered = repr(parse_compact(token))
    assert split(token)[2] not in rendered
    assert "signature" not in rendered and ISSUER not in rendered


# ---------------------------------------------------------------------------
# parse_compact: structure and encoding
# ---------------------------------------------------------------------------

GOOD = craft()
H, P, S = split(GOOD)

STRUCTURE_CASES: list[tuple[str, Callable[[], object], str]] = [
    ("bytes", lambda: GOOD.encode(), "must be a string"),
    ("none", lambda: None, "must be a string"),
    ("int", lambda: 12, "must be a string"),
    ("oversize", lambda: GOOD + "A" * (MAX_JWT_BYTES + 1 - len(GOOD)), "longer than 16384"),
    ("oversize_checked_before_ascii", lambda: "é" * (MAX_JWT_BYTES + 1), "longer than"),
    ("huge", lambda: "." * (10 * 1024 * 1024), "longer than"),
    ("non_ascii", lambda: GOOD[:-2] + "é" + GOOD[-1], "non-ascii"),
    ("two_segments", lambda: f"{H}.{P}", "2 segments"),
    ("four_segments", lambda: f"{GOOD}.{S}", "4 segments"),
    ("jwe_five_segments", lambda: f"{H}.{P}.{S}.{S}.{S}", "encrypted"),
    ("one_segment", lambda: H, "1 segments"),
    ("empty_string", lambda: "", "1 segments"),
    ("empty_signature", lambda: f"{H}.{P}.", "signature segment is empty"),
    ("empty_payload", lambda: f"{H}..{S}", "payload segment is empty"),
    ("empty_header", lambda: f".{P}.{S}", "header segment is empty"),
    ("signature_double_padding", lambda: f"{GOOD}==", "padding"),
    ("signature_single_padding", lambda: f"{GOOD}=", "padding"),
    ("header_padding", lambda: f"{H}=.{P}.{S}", "padding"),
    ("signature_noncanonical", lambda: f"{H}.{P}.{flip_trailing_bits(S)}", "canonical"),
    ("standard_alphabet", lambda: f"{H}.{P}.{S[:-2]}+/", "base64url alphabet"),
    ("space", lambda: f"{H}.{P} .{S}", "base64url alphabet"),
    ("impossible_length", lambda: f"{H}.{P}.AAAAA", "length"),
]


@pytest.mark.parametrize(("token_fn", "fragment"), [c[1:] for c in STRUCTURE_CASES],
                         ids=[c[0] for c in STRUCTURE_CASES])
def test_parse_compact_rejects_bad_structure(token_fn: Callable[[], object], fragment: str) -> None:
    token = token_fn()
    with pytest.raises(Problem) as excinfo:
        parse_compact(token)
    assert_problem(excinfo, "malformed_token", fragment)
    if isinstance(token, str):
        assert_no_token_material(excinfo.value, token)


def test_oversize_token_is_refused_quickly() -> None:
    token = "A" * (MAX_JWT_BYTES + 1)
    start = time.perf_counter()
    for _ in range(1000):
        with pytest.raises(Problem):
            parse_compact(token)
    assert time.perf_counter() - start < 1.0


def test_non_canonical_payload_segment_is_rejected() -> None:
    # Find a payload whose encoding leaves unused bits, then set them.
    payload = claims(pad="")
    while len(enc(payload)) % 3 == 0:
        payload["pad"] += "x"
    token = craft(payload=payload)
    h, p, s = split(token)
    with pytest.raises(Problem) as excinfo:
        parse_compact(f"{h}.{flip_trailing_bits(p)}.{s}")
    assert_problem(excinfo, "malformed_token", "payload segment is not canonical")


# ---------------------------------------------------------------------------
# parse_compact: header rules
# ---------------------------------------------------------------------------

FORBIDDEN = ["crit", "jku", "x5u", "jwk", "x5c", "b64", "zip", "enc", "cty"]


@pytest.mark.parametrize("member", FORBIDDEN)
def test_forbidden_header_members_are_named(member: str) -> None:
    value: Any = {"crit": ["exp"], "jwk": {"kty": "RSA"}, "x5c": ["MIIB"], "b64": False}.get(
        member, "x"
    )
    with pytest.raises(Problem) as excinfo:
        parse_compact(craft(header(**{member: value})))
    assert_problem(excinfo, "malformed_token", f"'{member}'")
    assert "does not accept" in excinfo.value.detail


HEADER_CASES: list[tuple[str, bytes, str]] = [
    ("alg_missing", enc(header(alg=DROP)), "no 'alg'"),
    ("alg_not_string", enc(header(alg=256)), "'alg' must be a string"),
    ("alg_null", enc(header(alg=None)), "'alg' must be a string"),
    ("kid_missing", enc(header(kid=DROP)), "no 'kid'"),
    ("kid_not_string", enc(header(kid=7)), "'kid' must be a string"),
    ("kid_empty", enc(header(kid="")), "1 to 128"),
    ("kid_too_long", enc(header(kid="k" * 129)), "1 to 128"),
    ("kid_control_char", enc(header(kid="a\tb")), "printable ascii"),
    ("kid_non_ascii", enc(header(kid="k\u00e9y")), "printable ascii"),
    ("typ_not_string", enc(header(typ=1)), "'typ' must be a string"),
    ("x5t_not_string", enc(header(x5t=["a"])), "'x5t' must be a string"),
    ("unknown_not_string", enc(header(foo={"a": 1})), "'foo' must be a string"),
    ("unknown_with_newline", enc(header(foo="a\nb")), "nul, cr or lf"),
    ("duplicate_alg", b'{"alg":"RS256","kid":"rsa-1","alg":"none"}', "more than once"),
    ("duplicate_kid", b'{"alg":"RS256","kid":"rsa-1","kid":"other"}', "'kid' more than once"),
    ("not_json", b"{alg:RS256}", "not valid json"),
    ("array", b'["RS256"]', "must be a json object"),
    ("string", b'"RS256"', "must be a json object"),
    ("nan", b'{"alg":"RS256","kid":"rsa-1","x":NaN}', "nan"),
    ("invalid_utf8", b'{"alg":"RS256","kid":"\xff"}', "utf-8"),
    ("bom", b'\xef\xbb\xbf{"alg":"RS256","kid":"rsa-1"}', "not valid json"),
    ("deep", b'{"alg":"RS256","kid":"rsa-1","x":' + b"[" * 5000 + b"]" * 5000 + b"}", "deep"),
]


@pytest.mark.parametrize(("raw", "fragment"), [c[1:] for c in HEADER_CASES],
                         ids=[c[0] for c in HEADER_CASES])
def test_parse_compact_rejects_bad_headers(raw: bytes, fragment: str) -> None:
    with pytest.raises(Problem) as excinfo:
        parse_compact(craft(header_raw=raw, sign_alg="RS256"))
    assert_problem(excinfo, "malformed_token", fragment)
    assert "JWT header" in excinfo.value.detail


def test_header_kid_at_the_length_limit_is_accepted() -> None:
    assert parse_compact(craft(header(kid="k" * 128))).kid == "k" * 128


# ---------------------------------------------------------------------------
# parse_compact: payload and claim types
# ---------------------------------------------------------------------------

PAYLOAD_JSON_CASES: list[tuple[str, bytes, str]] = [
    ("duplicate_top_level", b'{"iss":"a","iss":"b"}', "'iss' more than once"),
    ("duplicate_nested", b'{"x":{"y":1,"y":2}}', "'y' more than once"),
    ("duplicate_in_array", b'{"x":[{"z":1,"z":1}]}', "'z' more than once"),
    ("nan", b'{"exp":NaN}', "nan"),
    ("infinity", b'{"exp":Infinity}', "infinity"),
    ("negative_infinity", b'{"exp":-Infinity}', "-infinity"),
    ("float_overflow", b'{"exp":1e999}', "too large"),
    ("huge_integer", b'{"exp":' + b"9" * 5000 + b"}", "cannot represent"),
    ("top_level_array", b"[]", "must be a json object"),
    ("top_level_null", b"null", "must be a json object"),
    ("trailing_garbage", b'{"a":1}x', "not valid json"),
    ("lone_surrogate", b'{"sub":"\\ud800"}', "surrogate"),
    ("deep_beyond_limit", enc(nested(40)), "32 levels"),
    ("deep_recursion", b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}", "deep"),
]


@pytest.mark.parametrize(("raw", "fragment"), [c[1:] for c in PAYLOAD_JSON_CASES],
                         ids=[c[0] for c in PAYLOAD_JSON_CASES])
def test_parse_compact_rejects_bad_payload_json(raw: bytes, fragment: str) -> None:
    with pytest.raises(Problem) as excinfo:
        parse_compact(craft(payload_raw=raw))
    assert_problem(excinfo, "malformed_token", fragment)
    assert "JWT payload" in excinfo.value.detail


CLAIM_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("iss_missing", claims(iss=DROP), "no 'iss'"),
    ("iss_not_string", claims(iss=["a"]), "'iss' claim must be a string"),
    ("iss_empty", claims(iss=""), "'iss' claim is empty"),
    ("iss_too_long", claims(iss="https://x/" + "a" * 1020), "longer than 1024"),
    ("aud_list", claims(aud=[AUDIENCE]), "single audience"),
    ("aud_list_two", claims(aud=[AUDIENCE, "other"]), "single audience"),
    ("aud_missing", claims(aud=DROP), "no 'aud'"),
    ("aud_int", claims(aud=1), "'aud' claim must be a string"),
    ("exp_missing", claims(exp=DROP), "no 'exp'"),
    ("exp_string", claims(exp=str(NOW + 100)), "json integer"),
    ("exp_float", claims(exp=NOW + 100.0), "json integer"),
    ("exp_bool", claims(exp=True), "json integer"),
    ("exp_null", claims(exp=None), "json integer"),
    ("exp_negative", claims(exp=-1), "plausible"),
    ("exp_huge", claims(exp=2**63), "plausible"),
    ("iat_missing", claims(iat=DROP), "no 'iat'"),
    ("iat_string", claims(iat=str(NOW)), "json integer"),
    ("iat_float", claims(iat=NOW + 0.5), "json integer"),
    ("iat_bool", claims(iat=False), "json integer"),
    ("nbf_string", claims(nbf=str(NOW)), "json integer"),
    ("nbf_float", claims(nbf=float(NOW)), "json integer"),
    ("jti_empty", claims(jti=""), "'jti' claim is empty"),
    ("jti_int", claims(jti=5), "'jti' claim must be a string"),
    ("jti_space", claims(jti="a b"), "'jti' claim must start"),
    ("jti_slash", claims(jti="a/b"), "'jti' claim must start"),
    ("jti_leading_dash", claims(jti="-abc"), "'jti' claim must start"),
    ("jti_non_ascii", claims(jti="ab\u00e9"), "'jti' claim must start"),
    ("jti_too_long", claims(jti="a" * 256), "longer than 255"),
    ("sub_int", claims(sub=1), "'sub' claim must be a string"),
    ("nul_in_claim", claims(repository="octo-org/octo\x00-repo"), "'repository' contains a nul"),
    ("cr_in_claim", claims(ref="refs/heads/main\r"), "'ref' contains a nul, cr or lf"),
    ("lf_in_claim", claims(workflow="a\nb"), "'workflow' contains a nul, cr or lf"),
    ("lf_in_nested_claim", claims(extra={"a": ["ok", "b\nc"]}), "'extra' contains"),
    ("lf_in_claim_name", claims(**{"x\ny": "v"}), "contains a nul, cr or lf"),
    ("lf_in_jti", claims(jti="abc\n"), "'jti' claim must start"),
]


@pytest.mark.parametrize(("payload", "fragment"), [c[1:] for c in CLAIM_CASES],
                         ids=[c[0] for c in CLAIM_CASES])
def test_parse_compact_rejects_bad_claim_types(payload: dict[str, Any], fragment: str) -> None:
    with pytest.raises(Problem) as excinfo:
        parse_compact(craft(payload=payload))
    assert_problem(excinfo, "malformed_token", fragment)


def test_parse_compact_leaves_a_missing_jti_to_the_provider() -> None:
    """Google Cloud and CircleCI issue no jti; a GitHub or GitLab token without one is refused once its
    issuer is known (tests/integration/exchange/test_exchange.py)."""
    assert "jti" not in parse_compact(craft(payload=claims(jti=DROP))).claims


@pytest.mark.parametrize(
    "payload",
    [
        claims(nbf=DROP),
        claims(sub=DROP),
        claims(jti="a" * 255),
        claims(jti="A.b_c:d-9"),
        claims(head_ref="", base_ref=""),
        claims(repository_id="74", run_attempt="2"),
    ],
    ids=["no_nbf", "no_sub", "jti_255", "jti_charset", "empty_strings", "string_ids"],
)
def test_parse_compact_accepts_valid_claim_shapes(payload: dict[str, Any]) -> None:
    assert parse_compact(craft(payload=payload)).claims == payload


# ---------------------------------------------------------------------------
# verify: algorithm, key and signature
# ---------------------------------------------------------------------------

RSA_PUBLIC_PEM = RSA_PRIVATE.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def hs256_confusion_token() -> str:
    """The classic attack: HMAC keyed with the issuer's public key."""
    signing_input = f"{b64(enc(header('HS256')))}.{b64(enc(claims()))}"
    mac = hmac.new(RSA_PUBLIC_PEM, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def tampered_token() -> str:
    h, _p, s = split(craft())
    return f"{h}.{b64(enc(claims(repository='evil/repo')))}.{s}"


SIGNATURE_CASES: list[tuple[str, Callable[[], str], VerificationKey | None, IssuerPolicy, str]] = [
    ("alg_none", lambda: craft(header("none")), RSA_KEY, POLICY, "'none'"),
    ("alg_none_in_policy", lambda: craft(header("none")), RSA_KEY,
     IssuerPolicy(ISSUER, AUDIENCE, frozenset({"none", "RS256"})), "'none'"),
    ("hs256_confusion", hs256_confusion_token, RSA_KEY, POLICY, "'HS256'"),
    ("hs256_confusion_in_policy", hs256_confusion_token, RSA_KEY,
     IssuerPolicy(ISSUER, AUDIENCE, frozenset({"HS256", "RS256"})), "'HS256'"),
    ("alg_not_in_policy", lambda: craft(header("RS384")), RSA_KEY, POLICY, "'RS384'"),
    ("es256_not_in_policy", lambda: craft(header("ES256", kid="ec-1"), key=EC_PRIVATE), EC_KEY,
     POLICY, "accepted: RS256"),
    ("unknown_kid", lambda: craft(header(kid="rotated")), None, POLICY, "rotated"),
    ("es256_token_rsa_key", lambda: craft(header("ES256"), key=EC_PRIVATE), RSA_KEY,
     ANY_ALG_POLICY, "cannot verify ES256"),
    ("rs256_token_ec_key", lambda: craft(header(kid="ec-1")), EC_KEY, ANY_ALG_POLICY,
     "cannot verify RS256"),
    ("es384_token_p256_key", lambda: craft(header("ES384", kid="ec-1"), key=EC384_PRIVATE),
     EC_KEY, ANY_ALG_POLICY, "cannot verify ES384"),
    ("key_declares_other_alg", lambda: craft(header("PS256")),
     parse_jwk({**RSA_JWK, "alg": "RS256"}), ANY_ALG_POLICY, "cannot verify PS256"),
    ("signed_by_other_key", lambda: craft(key=OTHER_RSA_PRIVATE), RSA_KEY, POLICY, "signature"),
    ("tampered_payload", tampered_token, RSA_KEY, POLICY, "signature"),
    ("truncated_signature", lambda: f"{H}.{P}.{b64(base64.urlsafe_b64decode(S + '==')[:-1])}",
     RSA_KEY, POLICY, "signature"),
    ("es256_bad_signature_length", lambda: f"{b64(enc(header('ES256', kid='ec-1')))}.{P}.{S}",
     EC_KEY, ANY_ALG_POLICY, "signature"),
    ("ps256_signed_as_rs256", lambda: f"{b64(enc(header('PS256')))}.{P}.{S}", RSA_KEY,
     ANY_ALG_POLICY, "signature"),
]


@pytest.mark.parametrize(("token_fn", "key", "policy", "fragment"),
                         [c[1:] for c in SIGNATURE_CASES], ids=[c[0] for c in SIGNATURE_CASES])
def test_verify_rejects_bad_algorithms_keys_and_signatures(
    token_fn: Callable[[], str], key: VerificationKey | None, policy: IssuerPolicy, fragment: str
) -> None:
    token = token_fn()
    with pytest.raises(Problem) as excinfo:
        verify_token(token, key, policy)
    assert_problem(excinfo, "invalid_token", fragment)
    assert_no_token_material(excinfo.value, token)


def test_alg_none_with_empty_signature_is_malformed() -> None:
    unsigned = f"{b64(enc(header('none')))}.{b64(enc(claims()))}."
    with pytest.raises(Problem) as excinfo:
        parse_compact(unsigned)
    assert_problem(excinfo, "malformed_token", "signature segment is empty")


def test_padded_signature_that_would_verify_is_still_malformed() -> None:
    # Lenient decoders ignore '==' and the signature still checks out; tpx
    # refuses the variant so replay protection never sees two spellings.
    assert base64.urlsafe_b64decode(S + "==") == base64.urlsafe_b64decode(S + "=" * (-len(S) % 4))
    with pytest.raises(Problem) as excinfo:
        parse_compact(GOOD + "==")
    assert_problem(excinfo, "malformed_token", "padding")


def test_signature_is_checked_before_any_claim() -> None:
    token = craft(payload=claims(exp=NOW - 3600, iat=NOW - 3700, aud="x"), key=OTHER_RSA_PRIVATE)
    with pytest.raises(Problem) as excinfo:
        verify_token(token)
    assert_problem(excinfo, "invalid_token", "signature")


def test_algorithm_is_checked_before_the_key() -> None:
    with pytest.raises(Problem) as excinfo:
        verify_token(craft(header("RS512")), key=None)
    assert_problem(excinfo, "invalid_token", "'RS512'")


# ---------------------------------------------------------------------------
# verify: claims
# ---------------------------------------------------------------------------

CLAIM_VERIFY_CASES: list[tuple[str, dict[str, Any], IssuerPolicy, str, str]] = [
    ("wrong_issuer", claims(iss="https://evil.example"), POLICY, "unknown_issuer", "issuer"),
    ("issuer_trailing_slash", claims(iss=ISSUER + "/"), POLICY, "unknown_issuer", "issuer"),
    ("issuer_case", claims(iss=ISSUER.upper()), POLICY, "unknown_issuer", "issuer"),
    ("wrong_audience", claims(aud="https://github.com/octo-org"), POLICY, "invalid_token",
     f"Set the audience input of your CI step to '{AUDIENCE}'"),
    ("expired_beyond_leeway", claims(exp=NOW - 61, iat=NOW - 300, nbf=NOW - 300), POLICY,
     "invalid_token", "expired 61 seconds ago"),
    ("expired_at_leeway_edge", claims(exp=NOW - 60, iat=NOW - 300, nbf=NOW - 300), POLICY,
     "invalid_token", "expired"),
    ("nbf_future", claims(nbf=NOW + 61, iat=NOW, exp=NOW + 300), POLICY, "invalid_token", "nbf"),
    ("iat_future", claims(iat=NOW + 61, nbf=DROP, exp=NOW + 300), POLICY, "invalid_token", "iat"),
    ("exp_equals_iat", claims(iat=NOW, exp=NOW, nbf=DROP), POLICY, "invalid_token",
     "exp is not after iat"),
    ("exp_before_iat", claims(iat=NOW + 10, exp=NOW + 5, nbf=DROP), POLICY, "invalid_token",
     "exp is not after iat"),
    ("lifetime_too_long", claims(iat=NOW - 10, exp=NOW - 10 + 7201), POLICY, "invalid_token",
     "at most 7200"),
    ("lifetime_per_issuer", claims(iat=NOW - 10, exp=NOW + 600),
     IssuerPolicy(ISSUER, AUDIENCE, frozenset({"RS256"}), max_token_lifetime=600),
     "invalid_token", "at most 600"),
]


@pytest.mark.parametrize(("payload", "policy", "code", "fragment"),
                         [c[1:] for c in CLAIM_VERIFY_CASES],
                         ids=[c[0] for c in CLAIM_VERIFY_CASES])
def test_verify_rejects_bad_claims(payload: dict[str, Any], policy: IssuerPolicy, code: str,
                                   fragment: str) -> None:
    token = craft(payload=payload)
    with pytest.raises(Problem) as excinfo:
        verify_token(token, policy=policy)
    assert_problem(excinfo, code, fragment)
    assert_no_token_material(excinfo.value, token)


@pytest.mark.parametrize(
    "payload",
    [
        claims(exp=NOW - 59, iat=NOW - 300, nbf=NOW - 300),
        claims(nbf=NOW + 60, iat=NOW, exp=NOW + 300),
        claims(iat=NOW + 60, nbf=DROP, exp=NOW + 300),
        claims(iat=NOW - 10, exp=NOW - 10 + 7200),
    ],
    ids=["expired_within_leeway", "nbf_within_leeway", "iat_within_leeway", "lifetime_at_limit"],
)
def test_verify_accepts_claims_within_leeway_and_limits(payload: dict[str, Any]) -> None:
    assert verify_token(craft(payload=payload)) == payload


def test_wrong_audience_detail_names_expected_and_actual() -> None:
    with pytest.raises(Problem) as excinfo:
        verify_token(craft(payload=claims(aud="pypi")))
    assert "'pypi'" in excinfo.value.detail and f"'{AUDIENCE}'" in excinfo.value.detail


def test_verify_does_not_read_the_clock() -> None:
    # A token that expired decades ago still verifies at the `now` it is given.
    old = claims(iat=1_000_000, nbf=1_000_000, exp=1_000_300)
    assert verify_token(craft(payload=old), now=1_000_100) == old


# ---------------------------------------------------------------------------
# strict JSON directly
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"a":{"b":{"c":1,"c":2}}}', "'c' more than once"),
        (b'{"a":NaN}', "NaN"),
        (b"42", "not a JSON integer"),
        (b"\xc3\x28", "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "deep"),
        (b'\xef\xbb\xbf{"a":1}', "BOM"),
    ],
    ids=["nested_duplicate", "nan", "number", "bad_utf8", "recursion", "byte_order_mark"],
)
def test_loads_object_names_what_was_parsed(raw: bytes, fragment: str) -> None:
    with pytest.raises(Problem) as excinfo:
        loads_object(raw, "discovery document")
    assert_problem(excinfo, "malformed_token", fragment)
    assert excinfo.value.detail.startswith("The discovery document ")


def test_loads_object_accepts_depth_at_the_limit() -> None:
    assert loads_object(enc(nested(31)), "x")["n"]["n"]


# Texts the fast parse (orjson, kept only when its output is the input byte for byte) could take, each
# of which the strict parser must read the same way or refuse; none may get past the fast parse alone.
AGREEMENT_CASES = [
    b'{"a":18446744073709551615}', b'{"a":18446744073709551616}', b'{"a":-9223372036854775809}',
    b'{"a":1e999}', b'{"a":"\\ud800"}', b'{"a":1,"a":1}', b'{"a":{"b":1,"b":1}}', b'{"a":[{"c":1,"c":1}]}',
    b'\xef\xbb\xbf{"a":1}', b'{"a":"\\u0000"}', b'{"a":"\\n"}', b'{"a":"\\/"}', b'{"a":-0.0}',
    b'{"a":1.5e300}', b'{"a":0.1}', b'{"a":"\xc3\xa9"}', b'{"a":"\\u00e9"}', b'{"a":"\x7f"}',
    b'{"a":"\\u2028"}', b'{"a":NaN}', b'{"a":1} ', b' {"a":1}', b'{"a": 1}', b'{"a":true,"b":null,"c":[]}',
    b'{"a":1,}', b'{"a":01}', b'{"a":"\x01"}', b"[1]", b'"a"', enc(nested(31)), enc(nested(40)),
    json.dumps(github_claims(), separators=(",", ":")).encode(),
]


def _checked(raw: bytes, parse: Callable[[bytes], Any]) -> Any:
    """What loads_object makes of `raw` with this parse: the value, or the refusal's detail."""
    try:
        value = parse(raw)
        strict_json.check_tree_of(value, raw, "x")
        return value, json.dumps(value)   # json.dumps tells 1 from 1.0 and True
    except Problem as refusal:
        return refusal.detail


@pytest.mark.parametrize("raw", AGREEMENT_CASES)
def test_the_fast_parse_reads_every_text_as_the_strict_parser_does(raw: bytes) -> None:
    strict = _checked(raw, lambda text: strict_json._strict_object(text, "x"))
    if strict_json.round_trip(raw) is not None:
        assert _checked(raw, strict_json.round_trip) == strict
    assert _checked(raw, lambda text: loads_object(text, "x")) == strict


def test_a_compact_id_token_payload_takes_the_fast_parse() -> None:
    """ID tokens are compact JSON (pyjwt, GitHub's and GitLab's issuers): the strict parser's duplicate
    check in Python would cost three times the fast parse on every exchange."""
    for claims in (github_claims(), {"alg": "RS256", "kid": "rsa-1", "typ": "JWT"}):
        raw = json.dumps(claims, separators=(",", ":")).encode()
        assert strict_json.round_trip(raw) == claims


# ---------------------------------------------------------------------------
# JWK and JWKS parsing
# ---------------------------------------------------------------------------


def test_parse_jwk_builds_usable_keys() -> None:
    assert RSA_KEY.kty == "RSA" and RSA_KEY.alg is None
    assert isinstance(RSA_KEY.key, rsa.RSAPublicKey)
    assert isinstance(EC_KEY.key, ec.EllipticCurvePublicKey)
    assert {a for a in SUPPORTED_ALGORITHMS if RSA_KEY.supports(a)} == {
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"
    }
    assert {a for a in SUPPORTED_ALGORITHMS if EC_KEY.supports(a)} == {"ES256"}
    assert {a for a in SUPPORTED_ALGORITHMS if EC384_KEY.supports(a)} == {"ES384"}
    assert not RSA_KEY.supports("HS256") and not RSA_KEY.supports("none")
    assert parse_jwk({**RSA_JWK, "alg": "RS256", "key_ops": ["verify"]}).supports("RS256")
    assert hash(RSA_KEY) == hash(parse_jwk(RSA_JWK)) and RSA_KEY == parse_jwk(RSA_JWK)


def _rsa_jwk_with_modulus_bits(bits: int) -> dict[str, Any]:
    n = (1 << (bits - 1)) | 1
    return {"kty": "RSA", "kid": "big", "e": "AQAB", "n": b64(n.to_bytes((bits + 7) // 8, "big"))}


def _private_jwk(private: Any, **members: Any) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(private, rsa.RSAPrivateKey) else ECAlgorithm
    jwk = algorithm.to_jwk(private, as_dict=True)
    jwk.update(kid="priv", **members)
    return jwk


JWK_CASES: list[tuple[str, object, str]] = [
    ("not_object", ["kty"], "JSON object"),
    ("oct", {"kty": "oct", "kid": "h", "k": "c2VjcmV0"}, "symmetric"),
    ("private_rsa", _private_jwk(RSA_PRIVATE), "private members (d, p, q, dp, dq, qi)"),
    ("private_ec", _private_jwk(EC_PRIVATE), "private members (d)"),
    ("use_enc", {**RSA_JWK, "use": "enc"}, "use is 'enc'"),
    ("use_not_string", {**RSA_JWK, "use": 1}, "use is"),
    ("key_ops_without_verify", {**RSA_JWK, "key_ops": ["encrypt"]}, "verify"),
    ("key_ops_not_list", {**RSA_JWK, "key_ops": "verify"}, "array of strings"),
    ("rsa_1024", jwk_of(SMALL_RSA_PRIVATE.public_key(), kid="small"), "1024 bits"),
    ("rsa_8200", _rsa_jwk_with_modulus_bits(8200), "8200 bits"),
    ("rsa_huge_member", {**RSA_JWK, "n": "A" * 100_000}, "too long"),
    ("rsa_bad_base64", {**RSA_JWK, "n": "abc$"}, "base64url"),
    ("rsa_n_missing", {k: v for k, v in RSA_JWK.items() if k != "n"}, "'n'"),
    ("rsa_e_even", {**RSA_JWK, "e": "AAI"}, "invalid"),
    ("kty_okp", {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AAAA"}, "kty 'OKP'"),
    ("kty_missing", {"kid": "x", "n": "AQAB"}, "kty a JSON null"),
    ("crv_p521", {**EC_JWK, "crv": "P-521"}, "curve 'P-521'"),
    ("crv_secp256k1", {**EC_JWK, "crv": "secp256k1"}, "curve 'secp256k1'"),
    ("ec_short_coordinate", {**EC_JWK, "x": EC_JWK["x"][:-4]}, "32 bytes"),
    ("ec_point_off_curve", {**EC_JWK, "y": EC_JWK["x"]}, "not on curve"),
    ("kid_missing", {k: v for k, v in RSA_JWK.items() if k != "kid"}, "kid is missing"),
    ("kid_not_string", {**RSA_JWK, "kid": 5}, "kid must be a string"),
    ("kid_empty", {**RSA_JWK, "kid": ""}, "1 to 128"),
    ("kid_too_long", {**RSA_JWK, "kid": "k" * 129}, "1 to 128"),
    ("alg_none", {**RSA_JWK, "alg": "none"}, "alg 'none'"),
    ("alg_hs256", {**RSA_JWK, "alg": "HS256"}, "alg 'HS256'"),
    ("alg_es256_on_rsa", {**RSA_JWK, "alg": "ES256"}, "RSA key"),
    ("alg_es384_on_p256", {**EC_JWK, "alg": "ES384"}, "curve 'P-256'"),
]


@pytest.mark.parametrize(("jwk", "fragment"), [c[1:] for c in JWK_CASES],
                         ids=[c[0] for c in JWK_CASES])
def test_parse_jwk_rejects_unusable_keys(jwk: Any, fragment: str) -> None:
    with pytest.raises(KeyRejected) as excinfo:
        parse_jwk(jwk)
    assert fragment.lower() in excinfo.value.reason.lower(), excinfo.value.reason


def test_parse_jwks_keeps_good_keys_and_explains_skipped_ones() -> None:
    document = {
        "keys": [
            RSA_JWK,
            "not-a-key",
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {**RSA_JWK, "kid": "enc-1", "use": "enc"},
            jwk_of(SMALL_RSA_PRIVATE.public_key(), kid="small"),
            EC_JWK,
            {**RSA_JWK, "kid": "priv", "d": "AQAB"},
            None,
        ]
    }
    keys, skipped = parse_jwks(document)
    assert set(keys) == {"rsa-1", "ec-1"}
    assert keys["rsa-1"] == RSA_KEY
    assert len(skipped) == 6
    assert skipped[0].startswith("kid=(none): key #1")
    assert skipped[1].startswith("kid=hmac: symmetric")
    assert skipped[2].startswith("kid=enc-1: use is 'enc'")
    assert skipped[3].startswith("kid=small: RSA modulus is 1024 bits")
    assert skipped[4].startswith("kid=priv: the key contains private members")
    assert skipped[5].startswith("kid=(none): key #7")


def test_parse_jwks_skips_later_duplicate_kids() -> None:
    other = jwk_of(OTHER_RSA_PRIVATE.public_key(), kid="rsa-1")
    keys, skipped = parse_jwks({"keys": [RSA_JWK, other]})
    assert keys == {"rsa-1": RSA_KEY}
    assert skipped == ["kid=rsa-1: duplicate kid; the first usable key with this kid is kept"]


def test_parse_jwks_duplicate_kid_after_a_rejected_key_is_kept() -> None:
    # Issuers publish sig and enc keys under one kid; the enc one must not
    # shadow the signing key.
    keys, skipped = parse_jwks({"keys": [{**RSA_JWK, "use": "enc"}, RSA_JWK]})
    assert keys == {"rsa-1": RSA_KEY}
    assert skipped == ["kid=rsa-1: use is 'enc'; only signing keys (use sig) are accepted"]


def test_parse_jwks_escapes_hostile_kids_in_reasons() -> None:
    _keys, skipped = parse_jwks({"keys": [{**RSA_JWK, "kid": "a\nb", "use": "enc"}]})
    assert "\n" not in skipped[0] and skipped[0].startswith("kid='a\\nb': ")


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ([RSA_JWK], "JSON object"),
        ({}, '"keys" array'),
        ({"keys": RSA_JWK}, '"keys" array'),
        ({"keys": [RSA_JWK] * 101}, "101 keys"),
    ],
    ids=["list", "no_keys", "keys_not_list", "too_many"],
)
def test_parse_jwks_rejects_bad_documents(document: object, fragment: str) -> None:
    with pytest.raises(KeyRejected) as excinfo:
        parse_jwks(document)
    assert fragment in excinfo.value.reason


def test_parse_jwks_max_keys_is_configurable_and_inclusive() -> None:
    keys, _ = parse_jwks({"keys": [RSA_JWK, EC_JWK]}, max_keys=2)
    assert set(keys) == {"rsa-1", "ec-1"}
    with pytest.raises(KeyRejected):
        parse_jwks({"keys": [RSA_JWK, EC_JWK, EC_JWK]}, max_keys=2)


def test_parse_jwks_empty_key_list_is_not_an_error() -> None:
    assert parse_jwks({"keys": []}) == ({}, [])


def test_keys_from_jwks_verify_tokens() -> None:
    keys, _ = parse_jwks({"keys": [RSA_JWK, EC_JWK]})
    token = jwt.encode(claims(), EC_PRIVATE, algorithm="ES256", headers={"kid": "ec-1"})
    unverified = parse_compact(token)
    result = verify(unverified, ANY_ALG_POLICY, keys.get(unverified.kid), now=NOW, leeway=LEEWAY)
    assert result["iss"] == ISSUER


def test_issuer_policy_freezes_algorithms() -> None:
    policy = IssuerPolicy(ISSUER, AUDIENCE, ["RS256"])  # type: ignore[arg-type]
    assert policy.algorithms == frozenset({"RS256"})
    assert IssuerPolicy(ISSUER, AUDIENCE).algorithms == frozenset({"RS256"})
    with pytest.raises(TypeError):
        IssuerPolicy(ISSUER, AUDIENCE, "RS256")  # type: ignore[arg-type]


def test_each_byte_string_has_exactly_one_accepted_spelling():
    """Against the definition (decode, encode again, compare) for every last character of segments of
    every length remainder: the spelling the encoder gives is accepted, every other spelling of the
    same bytes is refused as not canonical."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    rng = random.Random(12)
    for size in range(1, 13):
        spelled = b64(rng.randbytes(size))
        for last in alphabet:
            candidate = spelled[:-1] + last
            decoded = base64.urlsafe_b64decode(candidate + "=" * (-len(candidate) % 4))
            if b64(decoded) == candidate:
                assert _b64url_decode(candidate, "segment") == decoded
            else:
                with pytest.raises(Problem, match="not canonical"):
                    _b64url_decode(candidate, "segment")
