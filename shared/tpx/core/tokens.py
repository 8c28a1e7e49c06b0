"""The tpx publish token: `tpx_` + 40 base62 characters + a 6-character checksum.

The 40 characters are the second the token was minted (6 digits) and 34
random digits from `secrets` (202 bits). The CRC32 checksum lets secret scanners
and the API recognise a tpx token (and reject a mistyped one) without a database
lookup; it is not a security control.

Only a lookup key is stored: the mint second (5 bytes) followed by the token's
SHA-256. Keys in time order insert at the right edge of their unique index and
lookups of live tokens (all minted recently) read its recent pages, however many
old rows the table keeps; a SHA-256 alone lands on a random page of an index
that outgrows memory (docs/decisions.md, "A time-ordered token lookup key").

Tokens of the first format (40 random digits, stored as their SHA-256 alone)
stay readable: a body whose first six digits are not a recent second is one.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import time
import zlib

PREFIX = "tpx_"
BODY_LENGTH = 40
CHECKSUM_LENGTH = 6
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TOKEN_RE = re.compile(rf"{PREFIX}[0-9A-Za-z]{{{BODY_LENGTH + CHECKSUM_LENGTH}}}")
SECOND_DIGITS = 6   # 62**6 seconds reach the year 3770
RANDOM_DIGITS = BODY_LENGTH - SECOND_DIGITS
ENTROPY_BITS = 202  # floor(34 * log2(62))
SECOND_BYTES = 5
MAX_LIFETIME_SECONDS = 7 * 86400   # the longest TPX_TOKEN_TTL_MAX_SECONDS allowed (tpx.core.config)
CLOCK_SKEW_SECONDS = 300


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, remainder = divmod(number, 62)
        digits.append(ALPHABET[remainder])
    return "".join(reversed(digits))


_VALUE_OF_DIGIT = {digit: value for value, digit in enumerate(ALPHABET)}


def checksum(body: str) -> str:
    return _base62(zlib.crc32((PREFIX + body).encode("ascii")), CHECKSUM_LENGTH)


# Random bytes to base62 digits in one C call: bytes 0..247 map to ALPHABET[byte % 62] (248 = 4 * 62, so
# every digit is equally likely), bytes 248..255 are dropped (rejection sampling: no bias at all).
_DIGIT_OF_BYTE = bytes(ord(ALPHABET[b % 62]) if b < 248 else 0 for b in range(256))
_REJECTED_BYTES = bytes(range(248, 256))
_DRAW = 64   # bytes per draw: 40 or more survive unless 25+ of 64 fall in 248..255 (p < 1e-20)


def _random_digits(count: int) -> str:
    """`count` uniform base62 digits from the OS CSPRNG (one system call). Converting one big integer
    digit by digit (40 divisions) cost 4 us per token, a percent of an exchange."""
    digits = b""
    while len(digits) < count:
        digits += secrets.token_bytes(_DRAW).translate(_DIGIT_OF_BYTE, _REJECTED_BYTES)
    return digits[:count].decode("ascii")


@functools.lru_cache(maxsize=4)
def _second_digits(second: int) -> str:
    """The stamp changes once a second; rendering it (six divisions) cost as much as the random part."""
    return _base62(second, SECOND_DIGITS)


def generate(now: float | None = None) -> str:
    """A token stamped with the second `now` (default: the clock's), for its time-ordered lookup key."""
    body = _second_digits(int(time.time() if now is None else now)) + _random_digits(RANDOM_DIGITS)
    return PREFIX + body + checksum(body)


def generate_first_format() -> str:
    """A token of the first format (40 random digits), minted while a replica that reads only that
    format may still be serving (tpx.exchange.token_format). Never one whose first digits read as a
    recent second, so every replica looks it up under the key it is stored with."""
    while True:
        body = _random_digits(BODY_LENGTH)
        token = PREFIX + body + checksum(body)
        if minted_second(token) is None:
            return token


def is_well_formed(token: object) -> bool:
    """Shape and checksum only; says nothing about whether the token is live."""
    if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
        return False
    body = token[len(PREFIX):len(PREFIX) + BODY_LENGTH]
    return secrets.compare_digest(token[-CHECKSUM_LENGTH:], checksum(body))


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


def minted_second(token: str) -> int | None:
    """The second a well-formed token says it was minted, if it is of the time-stamped format.

    A first-format body starts with six random digits; they read as a second in
    the window a live token can have (the longest lifetime plus clock skew, about
    a week out of 1,800 years) with a chance of 1 in ~90,000 (such a token is
    then looked up under a key it was not stored with and reads as unknown: it
    fails closed, for the few days first-format tokens live on after an upgrade).
    A time-stamped token older than the window is expired whichever key it is
    looked up by.
    """
    second = 0
    for digit in token[len(PREFIX):len(PREFIX) + SECOND_DIGITS]:
        second = second * 62 + _VALUE_OF_DIGIT[digit]
    now = time.time()
    if now - MAX_LIFETIME_SECONDS - CLOCK_SKEW_SECONDS <= second <= now + CLOCK_SKEW_SECONDS:
        return second
    return None


def lookup_key(token: str) -> bytes:
    """The key a well-formed token is stored and looked up under (the module's docstring)."""
    digest = hash_token(token)
    second = minted_second(token)
    return digest if second is None else second.to_bytes(SECOND_BYTES, "big") + digest
