"""The tpx publish token: `tpx_` + 40 random base62 characters + a 6-character checksum.

40 base62 characters from `secrets` carry 238 bits. The CRC32 checksum lets
secret scanners and the API recognise a tpx token (and reject a mistyped one)
without a database lookup; it is not a security control. Only the SHA-256 of a
token is ever stored.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib

PREFIX = "tpx_"
BODY_LENGTH = 40
CHECKSUM_LENGTH = 6
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TOKEN_RE = re.compile(rf"{PREFIX}[0-9A-Za-z]{{{BODY_LENGTH + CHECKSUM_LENGTH}}}")
ENTROPY_BITS = 238  # floor(40 * log2(62))


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, remainder = divmod(number, 62)
        digits.append(ALPHABET[remainder])
    return "".join(reversed(digits))


def checksum(body: str) -> str:
    return _base62(zlib.crc32((PREFIX + body).encode("ascii")), CHECKSUM_LENGTH)


# Random bytes to base62 digits in one C call: bytes 0..247 map to ALPHABET[byte % 62] (248 = 4 * 62, so
# every digit is equally likely), bytes 248..255 are dropped (rejection sampling: no bias at all).
_DIGIT_OF_BYTE = bytes(ord(ALPHABET[b % 62]) if b < 248 else 0 for b in range(256))
_REJECTED_BYTES = bytes(range(248, 256))
_DRAW = 64   # bytes per draw: 40 or more survive unless 25+ of 64 fall in 248..255 (p < 1e-20)


def generate() -> str:
    """40 uniform base62 digits from the OS CSPRNG (one system call) and their checksum. Converting
    one big integer digit by digit (40 divisions) cost 4 us per token, a percent of an exchange."""
    digits = b""
    while len(digits) < BODY_LENGTH:
        digits += secrets.token_bytes(_DRAW).translate(_DIGIT_OF_BYTE, _REJECTED_BYTES)
    body = digits[:BODY_LENGTH].decode("ascii")
    return PREFIX + body + checksum(body)


def is_well_formed(token: object) -> bool:
    """Shape and checksum only; says nothing about whether the token is live."""
    if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
        return False
    body = token[len(PREFIX):len(PREFIX) + BODY_LENGTH]
    return secrets.compare_digest(token[-CHECKSUM_LENGTH:], checksum(body))


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()
