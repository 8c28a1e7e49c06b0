"""Reading claims strictly: the shared helpers of every provider's `identity()`.

A claim is either a string of the documented shape or the token is
`malformed_token`; the value itself is never echoed back in the detail.
"""

from __future__ import annotations

import re
from typing import Any

from tpx.core.errors import Problem
from tpx.core.jose.strict_json import json_type

# Shapes shared by the providers' claim tables. Printable ASCII (space to tilde) excludes NUL, CR,
# LF, every other control character and everything outside ASCII.
ID = re.compile(r"[0-9]{1,20}")
ID_TEXT = "a string of 1 to 20 decimal digits"
TEXT_1K = re.compile(r"[\x20-\x7e]{1,1024}")
TEXT_255 = re.compile(r"[\x20-\x7e]{1,255}")
TEXT_255_OR_EMPTY = re.compile(r"[\x20-\x7e]{0,255}")
TEXT_1K_OR_EMPTY = re.compile(r"[\x20-\x7e]{0,1024}")
PRINTABLE_1K = "printable ASCII without control characters, 1 to 1024 characters"
PRINTABLE_255 = "printable ASCII without control characters, 1 to 255 characters"
PRINTABLE_255_OR_EMPTY = "printable ASCII without control characters, at most 255 characters"
PRINTABLE_1K_OR_EMPTY = "printable ASCII without control characters, at most 1024 characters"
# The ids Buildkite and CircleCI assign: UUIDs, read in either case and folded to the lower case they emit.
UUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
UUID_RE = re.compile(UUID)
UUID_TEXT = "a UUID (8-4-4-4-12 hexadecimal digits)"


def string_claim(claims: dict[str, Any], name: str, pattern: re.Pattern[str], expected: str, *,
                  required: bool = True) -> str | None:
    """A claim that is a string of the given shape; the value is never echoed back."""
    if name not in claims:
        if required:
            raise Problem("malformed_token", f"the token has no {name!r} claim; expected {expected}")
        return None
    value = claims[name]
    if not isinstance(value, str):
        raise Problem("malformed_token", f"claim {name!r} is a JSON {json_type(value)}; expected a string: {expected}")
    if pattern.fullmatch(value) is None:
        raise Problem("malformed_token", f"claim {name!r} is not {expected}")
    return value


def uuid_claim(claims: dict[str, Any], name: str, *, required: bool) -> str | None:
    """A UUID claim, lower-cased, so that one id is one string."""
    value = string_claim(claims, name, UUID_RE, UUID_TEXT, required=required)
    return value.lower() if value is not None else None


def required_claim(claims: dict[str, Any], name: str, pattern: re.Pattern[str], expected: str) -> str:
    value = string_claim(claims, name, pattern, expected)
    assert value is not None
    return value
