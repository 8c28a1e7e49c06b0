"""Token format, entropy source, checksum and hashing."""

from __future__ import annotations

import hashlib

import pytest

from tpx.core import tokens


def test_generated_tokens_are_well_formed_and_distinct():
    generated = {tokens.generate() for _ in range(2000)}
    assert len(generated) == 2000
    for token in generated:
        assert token.startswith("tpx_")
        assert len(token) == 4 + tokens.BODY_LENGTH + tokens.CHECKSUM_LENGTH
        assert tokens.is_well_formed(token)


def test_entropy_is_at_least_160_bits():
    import math

    assert tokens.BODY_LENGTH * math.log2(len(tokens.ALPHABET)) >= 160
    assert tokens.ENTROPY_BITS >= 160


def test_every_single_character_change_breaks_the_checksum_or_shape():
    token = tokens.generate()
    for position in range(4, len(token)):
        for replacement in "0aZ":
            if token[position] == replacement:
                continue
            altered = token[:position] + replacement + token[position + 1:]
            # CRC32 detects every single-symbol error in a message this short.
            assert not tokens.is_well_formed(altered), (position, replacement)


@pytest.mark.parametrize("value", [
    None, 42, "", "tpx_", "tpx_" + "a" * 45, "tpx_" + "a" * 47, "TPX_" + "a" * 46, "tpx-" + "a" * 46,
    "tpx_" + "a" * 45 + "!", "tpx_" + "é" * 46, " " + "tpx_" + "a" * 46,
])
def test_malformed_values_are_rejected(value):
    assert not tokens.is_well_formed(value)


def test_hash_is_sha256_of_the_token():
    token = tokens.generate()
    assert tokens.hash_token(token) == hashlib.sha256(token.encode()).digest()


def test_logs_redact_tokens_at_any_depth():
    from tpx.core.logging import _redact_values

    token = tokens.generate()
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln"
    event = _redact_values(None, "info", {"event": "x", "nested": {"list": [token, {"jwt": jwt}]}, "top": token})
    assert token not in repr(event) and jwt not in repr(event)


def test_every_base62_digit_is_equally_likely():
    """generate() maps random bytes 0..247 to digits (248..255 are drawn again): each digit must come
    from exactly four byte values, or some digits would be likelier and the token weaker."""
    import collections

    kept = tokens._DIGIT_OF_BYTE[:248]
    assert sorted(collections.Counter(kept).values()) == [4] * 62
    assert set(kept.decode("ascii")) == set(tokens.ALPHABET)
    assert tokens._REJECTED_BYTES == bytes(range(248, 256))
    seen = collections.Counter("".join(tokens.generate()[4:4 + tokens.BODY_LENGTH] for _ in range(3000)))
    expected = 3000 * tokens.BODY_LENGTH / 62
    assert set(seen) == set(tokens.ALPHABET)
    assert all(abs(count - expected) < 6 * expected ** 0.5 for count in seen.values())
