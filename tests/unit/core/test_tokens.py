"""Token format, entropy source, checksum and hashing."""

from __future__ import annotations

import hashlib
import time

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

    assert tokens.RANDOM_DIGITS == tokens.BODY_LENGTH - tokens.SECOND_DIGITS
    assert tokens.ENTROPY_BITS == math.floor(tokens.RANDOM_DIGITS * math.log2(len(tokens.ALPHABET)))
    assert tokens.ENTROPY_BITS >= 160


def test_a_token_carries_the_second_it_was_minted():
    now = time.time()
    token = tokens.generate(now)
    assert tokens.minted_second(token) == int(now)
    assert tokens.lookup_key(token) == int(now).to_bytes(tokens.SECOND_BYTES, "big") + tokens.hash_token(token)
    assert tokens.minted_second(tokens.generate()) in (int(now), int(now) + 1)


def test_lookup_keys_are_in_mint_order():
    """What keeps the unique index's inserts at its right edge: a later second sorts after, whatever the
    random digits and the hash (sorted as PostgreSQL compares bytea, bytewise)."""
    now = time.time()
    keys = [tokens.lookup_key(tokens.generate(now - 3600 + second)) for second in range(0, 3600, 7)]
    assert keys == sorted(keys)
    assert len({key[:tokens.SECOND_BYTES] for key in keys}) == len(keys)


def test_first_format_tokens_are_looked_up_by_their_sha256():
    first = tokens.generate_first_format()
    assert tokens.is_well_formed(first)
    assert tokens.minted_second(first) is None
    assert tokens.lookup_key(first) == hashlib.sha256(first.encode()).digest()


def test_a_first_format_body_that_reads_as_a_recent_second_is_drawn_again(monkeypatch):
    """Such a token would be stored under its SHA-256 but looked up under a time-stamped key."""
    recent = tokens._base62(int(time.time()), tokens.SECOND_DIGITS)
    draws = iter([recent + "a" * tokens.RANDOM_DIGITS, "z" * tokens.BODY_LENGTH])
    monkeypatch.setattr(tokens, "_random_digits", lambda count: next(draws))
    unlucky = "tpx_" + recent + "a" * tokens.RANDOM_DIGITS
    assert tokens.minted_second(unlucky + tokens.checksum(unlucky[4:])) is not None
    assert tokens.generate_first_format() == "tpx_" + "z" * 40 + tokens.checksum("z" * 40)


@pytest.mark.parametrize("age, time_stamped", [
    (0, True), (-tokens.CLOCK_SKEW_SECONDS, True), (-tokens.CLOCK_SKEW_SECONDS - 5, False),
    (tokens.MAX_LIFETIME_SECONDS, True), (tokens.MAX_LIFETIME_SECONDS + tokens.CLOCK_SKEW_SECONDS + 5, False),
])
def test_only_a_second_a_live_token_can_have_reads_as_time_stamped(age, time_stamped):
    """A token from beyond the window is expired (or a first-format one): its key is then the SHA-256
    alone, which no time-stamped token is stored under, so it reads as unknown."""
    token = tokens.generate(time.time() - age)
    assert (tokens.minted_second(token) is not None) is time_stamped


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
    random_part = slice(4 + tokens.SECOND_DIGITS, 4 + tokens.BODY_LENGTH)
    seen = collections.Counter("".join(tokens.generate()[random_part] for _ in range(3000)))
    expected = 3000 * tokens.RANDOM_DIGITS / 62
    assert set(seen) == set(tokens.ALPHABET)
    assert all(abs(count - expected) < 6 * expected ** 0.5 for count in seen.values())
