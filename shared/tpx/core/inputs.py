"""Field-level checks for admin input: each refusal names the field and says what it accepts.

The admin API's request bodies (issuers, publishers, revocations) are checked
with these few helpers, by the module that owns each kind of input
(`tpx.core.issuers`, `tpx.core.publishers`, `tpx.core.revocations`, and each
provider for its own identity fields), so every refusal has one shape:
`422 <code>` with `field` and a sentence.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, Mapping

from tpx.core.errors import Problem

RFC3339_RE = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:[Zz]|[+-]\d\d:\d\d)")
# One line of text: no control characters (C0, DEL, C1), no line or paragraph separators, and no lone
# surrogates (valid JSON escapes that no UTF-8 encoder, Postgres's included, accepts).
LINE_OF_TEXT = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]"


def invalid(code: str, field: str, message: str) -> Problem:
    """A refusal naming `field`; a field name the client made up is named back in printable ASCII."""
    if not (field.isascii() and field.isprintable() and len(field) <= 100):
        field = show(field)
    return Problem(code, f"{field}: {message}", extra={"field": field})


def show(value: Any) -> str:
    """A value as a refusal may quote it: its repr in printable ASCII, cut to 80 characters."""
    text = ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."


def reject_unknown(body: dict[str, Any], allowed: set[str], code: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid(code, unknown[0], f"is not a known field; accepted fields: {', '.join(sorted(allowed))}")


def text(body: dict[str, Any], field: str, pattern: re.Pattern[str], accepts: str, code: str, *,
         required: bool = True) -> str | None:
    value = body.get(field)
    if value is None:
        if required:
            raise invalid(code, field, f"is required; it must be {accepts}")
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise invalid(code, field, f"{show(value)} is not valid; it must be {accepts}")
    return value


def required_text(body: dict[str, Any], field: str, pattern: re.Pattern[str], accepts: str, code: str) -> str:
    value = text(body, field, pattern, accepts, code)
    assert value is not None
    return value


def text_list(body: dict[str, Any], field: str, pattern: re.Pattern[str], accepts: str, code: str,
              limit: int) -> tuple[str, ...]:
    """A list of strings, each of the given shape; duplicates dropped, order kept."""
    value = body.get(field)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid(code, field, f"must be a list of strings, each {accepts}")
    if len(value) > limit:
        raise invalid(code, field, f"has {len(value)} entries; at most {limit} are allowed")
    for item in value:
        if not pattern.fullmatch(item):
            raise invalid(code, field, f"{show(item)} is not valid; each entry must be {accepts}")
    return tuple(dict.fromkeys(value))


def boolean(body: dict[str, Any], field: str, default: bool, code: str) -> bool:
    value = body.get(field, default)
    if not isinstance(value, bool):
        raise invalid(code, field, "must be true or false")
    return value


def seconds(body: dict[str, Any], field: str, low: int, high: int, code: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if type(value) is not int or not low <= value <= high:
        raise invalid(code, field, f"must be a whole number of seconds between {low} and {high}")
    return value


def uuid_field(body: dict[str, Any], field: str, code: str) -> uuid.UUID:
    value = body.get(field)
    try:
        if not isinstance(value, str):
            raise ValueError
        return uuid.UUID(value)
    except ValueError:
        raise invalid(code, field, f"{show(value)} is not an id; it must be a UUID") from None


def time_field(body: dict[str, Any], field: str, code: str) -> datetime | None:
    """An RFC 3339 date and time with a zone; fractions beyond microseconds are cut, not rounded."""
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not RFC3339_RE.fullmatch(value):
        raise invalid(code, field, f"{show(value)} is not an RFC 3339 time with a zone, e.g. 2025-01-31T12:00:00Z")
    whole, dot, rest = value.partition(".")
    if dot:  # Python parses at most microseconds: cut the fraction to 6 digits, keep the zone
        digits = re.match(r"\d+", rest).group()  # type: ignore[union-attr] - RFC3339_RE guarantees digits
        value = f"{whole}.{digits[:6]}{rest[len(digits):]}"
    try:
        return datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise invalid(code, field, f"{show(body[field])} is not a valid date and time") from None


def query_text(params: Mapping[str, str], name: str, pattern: re.Pattern[str], accepts: str) -> str | None:
    """A query parameter of the given shape, or None when absent; `400 malformed_request` naming it."""
    value = params.get(name)
    if value is None:
        return None
    if not pattern.fullmatch(value):
        raise Problem("malformed_request", f"{name}: {show(value)} is not valid; it must be {accepts}",
                      extra={"field": name})
    return value


def path_id(value: str, what: str) -> uuid.UUID:
    """The `{id}` of an admin path; an id that is no UUID names nothing, so it is `404 not_found`."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Problem("not_found", f"no {what} has the id {show(value[:60])}") from None
