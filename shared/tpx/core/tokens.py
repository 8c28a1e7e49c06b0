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


def generate() -> str:
    # 32 bytes from the OS CSPRNG read as one integer, then 40 base62 digits of it: one system call
    # instead of 40. 2**256 is so much larger than 62**40 that the digits are uniform to within 2**-17.
    body = _base62(int.from_bytes(secrets.token_bytes(32), "big"), BODY_LENGTH)
    return PREFIX + body + checksum(body)


def is_well_formed(token: object) -> bool:
    """Shape and checksum only; says nothing about whether the token is live."""
    if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
        return False
    body = token[len(PREFIX):len(PREFIX) + BODY_LENGTH]
    return secrets.compare_digest(token[-CHECKSUM_LENGTH:], checksum(body))


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()
