"""One shape for every refusal of a field: `<code>` with `field` and a sentence saying what it accepts.

Bodies are checked by their types (`tpx.core.bodies`); what a type cannot say
(query parameters, path ids, an RFC 3339 time cut to microseconds, rules that
span fields) is checked with these helpers, so every refusal reads the same.
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
