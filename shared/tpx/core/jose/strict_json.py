"""JSON parsing for bytes an attacker chose.

Python's `json` module is lenient in ways that matter for signed documents: it
keeps the last of two duplicate members (so two parsers can disagree about what
was signed), accepts `NaN`/`Infinity`, turns `1e999` into infinity and will
happily hand back a list or a 900-level nest. Everything here fails closed with
a `malformed_token` Problem whose detail names the part of the token at fault
and never echoes the input itself.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Iterator

import orjson

from tpx.core.errors import Problem

# Real ID tokens nest two or three levels at most. A hard bound keeps every
# later consumer (logging, event serialisation, recursive walkers) far away from
# Python's recursion limit.
MAX_DEPTH = 32

_QUOTE_LIMIT = 64


class _Rejected(ValueError):
    """Raised from inside a parser hook; carries the end of a detail sentence."""


def quote(value: object, limit: int = _QUOTE_LIMIT) -> str:
    """Render an untrusted value for a human sentence.

    Escapes everything outside printable ASCII (no log or header injection
    through CR/LF or control characters) and truncates, so a detail stays one
    short line whatever the attacker sent.
    """
    if not isinstance(value, str):
        return f"a JSON {json_type(value)}"
    shown = value if len(value) <= limit else value[:limit]
    rendered = ascii(shown)
    if len(value) > limit:
        rendered += f"... ({len(value)} characters)"
    return rendered


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for details like 'not a JSON array'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise _Rejected(
                f"has the member {quote(name)} more than once; tpx rejects duplicate "
                "member names because parsers disagree on which one counts."
            )
        result[name] = value
    return result


def _no_constant(name: str) -> Any:
    raise _Rejected(f"contains {name}, which is not valid JSON.")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Rejected("contains a number too large to represent.")
    return value


def _is_valid_unicode(text: str) -> bool:
    # JSON escapes can smuggle lone surrogates ("\ud800") that later crash any
    # UTF-8 encoder (logs, database, HTTP responses).
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def iter_strings(value: Any) -> Iterator[str]:
    """Every string in a parsed JSON value, member names included.

    Iterative on purpose: the caller may hold a document nested right up to
    MAX_DEPTH and should not need its own recursion budget.
    """
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for name, member in node.items():
                yield name
                stack.append(member)
        elif isinstance(node, list):
            stack.extend(node)


def _check_tree(value: Any, what: str) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > MAX_DEPTH:
                raise Problem(
                    "malformed_token",
                    f"The {what} nests objects or arrays more than {MAX_DEPTH} levels deep.",
                )
            children = (
                [v for pair in node.items() for v in pair] if isinstance(node, dict) else node
            )
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(node, str) and not _is_valid_unicode(node):
            raise Problem(
                "malformed_token",
                f"The {what} contains a string with an unpaired UTF-16 surrogate escape.",
            )


def loads_with(**hooks: Any) -> Callable[[str], Any]:
    """`json.loads(text, **hooks)` with its decoder built once: json.loads builds a new one on every call
    that passes hooks (half its cost on an ID token). Keeps json.loads's own refusal of a leading
    byte-order mark, which the decoder alone does not check."""
    decoder = json.JSONDecoder(**hooks)

    def loads(text: str) -> Any:
        if text.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return decoder.decode(text)

    return loads


_loads = loads_with(object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_float=_finite_float)


def round_trip(data: bytes) -> dict[str, Any] | None:
    """The object in `data` if orjson parses it and writes it back byte for byte; None otherwise.

    A text that orjson's compact output reproduces exactly has no duplicate
    member (the parsed object would have lost one, and its output would be
    shorter), no NaN or Infinity (orjson refuses them; an overflowing float
    would come back as null), no BOM, no spacing, and only the escapes orjson
    writes itself: the strict parser below would return the same object. Real
    ID tokens are such texts, and so are the compact request bodies clients
    send (the exchange's body parser tries this first too); it costs a third of
    the strict parse, whose duplicate check runs in Python. Everything else
    (spaced or escaped text, numbers beyond 64 bits, floats spelled otherwise,
    anything invalid) goes the strict way and, if it is refused, gets its
    precise reason there.
    """
    try:
        value = orjson.loads(data)
        if type(value) is dict and orjson.dumps(value) == data:
            return value
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        pass
    return None


def loads_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse `data` as one strict JSON object or raise `malformed_token`.

    `what` names the part being parsed ("JWT header", "JWT payload") so the
    detail tells the client exactly which part of its token is broken.
    """
    value = round_trip(data)
    if value is None:
        value = _strict_object(data, what)
    check_tree_of(value, data, what)
    return value


def check_tree_of(value: Any, data: bytes, what: str) -> None:
    """Refuse a parsed `value` (from the text `data`) nested beyond MAX_DEPTH or holding a lone surrogate.

    Fast path: without a backslash the text has no escapes, so no string can hold a surrogate
    escape (or NUL/CR/LF: raw control characters are already invalid JSON), and fewer opening
    brackets than MAX_DEPTH cannot nest deeper than it. Real ID tokens take this path.
    """
    if b"\\" in data or data.count(b"{") + data.count(b"[") > MAX_DEPTH:
        _check_tree(value, what)


def _strict_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Problem(
            "malformed_token",
            f"The {what} is not valid UTF-8 (invalid byte at offset {exc.start}).",
        ) from None
    try:
        value = _loads(text)
    except _Rejected as exc:
        raise Problem("malformed_token", f"The {what} {exc}") from None
    except json.JSONDecodeError as exc:
        raise Problem(
            "malformed_token",
            f"The {what} is not valid JSON ({exc.msg} at position {exc.pos}).",
        ) from None
    except RecursionError:
        raise Problem(
            "malformed_token", f"The {what} nests objects or arrays too deeply."
        ) from None
    except ValueError:
        # e.g. an integer literal beyond Python's int_max_str_digits.
        raise Problem(
            "malformed_token", f"The {what} contains a number tpx cannot represent."
        ) from None
    if not isinstance(value, dict):
        raise Problem(
            "malformed_token",
            f"The {what} must be a JSON object, not a JSON {json_type(value)}.",
        )
    return value
