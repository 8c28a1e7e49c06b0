"""Request bodies declared once, as types: they check the input and they are the OpenAPI schemas.

Each kind of input is a `Body` (a msgspec Struct) declared by the module that owns
it (issuers, publishers and each provider's identity fields, revocations, the
exchange's own routes). `convert` checks a parsed body against its type and turns
msgspec's error into the same refusal every admin field has always had: `field`
named, the offending value quoted, and the field's description saying what it
accepts. The same descriptions, patterns and bounds are what `/openapi.json`
publishes (`schemas`), so the document cannot say one thing and the check another.

JSON is still parsed by the strict parser at the HTTP edge (duplicate members and
NaN are refused there; msgspec would keep the last duplicate), so `convert`
receives plain Python values.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar, Union

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType, inspect

from tpx.core.errors import Problem
from tpx.core.inputs import invalid, show
from tpx.core.jose.strict_json import json_type

__all__ = ["Body", "UNSET", "UnsetType", "Flag", "convert", "schemas", "seconds", "text", "text_list"]

T = TypeVar("T")


class Body(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A request body: unknown members refused, every field named on input."""


def anchored(pattern: str) -> str:
    """A whole-value pattern that means the same to msgspec (Python's `re.search`) and to an
    OpenAPI reader (ECMA-262): Python's `$` also matches before a final newline, so a value
    with one appended would pass a plain `^...$`; `(?!\\n)` refuses that and is a no-op in ECMA."""
    return f"^(?:{pattern})$(?!\\n)"


def text(pattern: str | re.Pattern[str], accepts: str) -> Any:
    """A string of the given shape; `accepts` completes "it must be ..." in refusals and documents it."""
    source = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
    return Annotated[str, Meta(pattern=anchored(source), description=accepts)]


def text_list(pattern: str | re.Pattern[str], accepts: str, limit: int, *, min_length: int = 0) -> Any:
    """A list of at most `limit` strings, each of the given shape."""
    return Annotated[list[text(pattern, accepts)], Meta(  # type: ignore[valid-type]
        min_length=min_length, max_length=limit, description=f"a list of at most {limit} entries, each {accepts}")]


def seconds(low: int, high: int) -> Any:
    return Annotated[int, Meta(ge=low, le=high, description=f"a whole number of seconds between {low} and {high}")]


Flag = Annotated[bool, Meta(description="true or false")]


def choices(values: Any) -> str:
    """`"a" or "b"`, or `one of "a", "b", "c"`: what a field with a fixed set of values accepts."""
    quoted = [f'"{v}"' if isinstance(v, str) else str(v) for v in values]
    return " or ".join(quoted) if len(quoted) <= 2 else "one of " + ", ".join(quoted)


def convert(value: Any, body_type: type[T] | Any, code: str, *, strict: bool = True) -> T:
    """`value` as `body_type`, or the refusal `code` (400 or 422) naming the field and what it accepts.
    `strict=False` reads numbers from strings, for a form, whose values are all strings."""
    try:
        return msgspec.convert(value, body_type, strict=strict)
    except msgspec.ValidationError as error:
        raise refusal(str(error), value, body_type, code) from None
    except UnicodeEncodeError:
        # A lone surrogate (a valid JSON escape, but no character) that msgspec cannot encode to UTF-8.
        raise _not_text(value, body_type, code) from None


def _not_text(value: Any, body_type: Any, code: str) -> Problem:
    """The refusal for the first member whose name or string value is not encodable text."""
    struct = _chosen(body_type, value) if isinstance(value, dict) else body_type
    for name, member in value.items() if isinstance(value, dict) else ():
        if not _encodable(name):
            return invalid(code, name, f"is not a known field; accepted fields: {', '.join(sorted(_fields(struct)))}")
        if not _encodable(member):
            return invalid(code, name, f"{show(member)} is not valid; it must be {_accepts(body_type, struct, name)}")
    return Problem(code, "the body holds a lone surrogate escape, which is not text; send UTF-8 text")


def _encodable(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, list):
        return all(_encodable(item) for item in value)
    if isinstance(value, dict):
        return all(_encodable(k) and _encodable(v) for k, v in value.items())
    return True


_MESSAGE = re.compile(r"(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.S)
_TOP = re.compile(r"\.(?P<field>[^.\[]+)(?:\[(?P<index>\d+)\])?")
_NAMED = re.compile(r"Object (?P<kind>missing required|contains unknown) field `(?P<field>[^`]*)`")
_TOO_LONG = re.compile(r"Expected `(?:array|object)` of length <= (?P<limit>\d+)")
_MISTYPED = re.compile(r"Expected `(?P<expected>[a-z]+)[^`]*`, got `(?P<got>[a-z]+)`")
_KINDS = {"str": "a string", "int": "a whole number", "float": "a number", "bool": "true or false",
          "array": "a list", "object": "an object", "null": "null"}


def refusal(message: str, value: Any, body_type: Any, code: str) -> Problem:
    """msgspec's validation message, said the way tpx says it: `<field>: <what is wrong>; it must be ...`."""
    parts = _MESSAGE.fullmatch(message)
    assert parts is not None  # the pattern matches any text
    what, path = parts["what"], parts["path"] or ""
    if not isinstance(value, dict):
        return Problem(code, f"the body must be a JSON object, not a JSON {json_type(value)}")
    struct = _chosen(body_type, value)
    named = _NAMED.fullmatch(what)
    top = _TOP.match(path)
    if named and not top:
        name = named["field"]
        if named["kind"] == "contains unknown":
            return invalid(code, name, f"is not a known field; accepted fields: {', '.join(sorted(_fields(struct)))}")
        return invalid(code, name, f"is required; it must be {_accepts(body_type, struct, name)}")
    if not top:
        return Problem(code, f"the body is not valid: {what}")
    name, index = top["field"], top["index"]
    accepts = _accepts(body_type, struct, name)
    given = value.get(name)
    if index is not None and isinstance(given, list) and int(index) < len(given):
        return invalid(code, name, f"{show(given[int(index)])} is not valid; each entry must be "
                                    f"{_item_accepts(struct, name)}")
    too_long = _TOO_LONG.match(what)
    if too_long and isinstance(given, (list, dict)):
        return invalid(code, name, f"has {len(given)} entries; at most {too_long['limit']} are allowed")
    if given is None:
        if name in _required(struct) or name == _info(struct).tag_field:
            return invalid(code, name, f"is required; it must be {accepts}")
        return invalid(code, name, f"may be left out but not null; it must be {accepts}")
    mistyped = _MISTYPED.match(what)
    if mistyped and index is None:
        got = "a boolean" if mistyped["got"] == "bool" else _KINDS.get(mistyped["got"], mistyped["got"])
        expected = _KINDS.get(mistyped["expected"])
        if expected:
            return invalid(code, name, f"{show(given)} is {got}, not {expected}; it must be {accepts}")
    return invalid(code, name, f"{show(given)} is not valid; it must be {accepts}")


# --- what a type says about its fields (msgspec.inspect), cached per type ------------------------------------

_INFO: dict[Any, Any] = {}


def _info(struct: Any) -> Any:
    info = _INFO.get(struct)
    if info is None:
        info = _INFO[struct] = inspect.type_info(struct)
    return info


def _members(body_type: Any) -> list[Any]:
    """The Struct types a body may be: itself, or each member of a tagged union."""
    info = _info(body_type)
    if isinstance(info, inspect.UnionType):
        return [t.cls for t in info.types if isinstance(t, inspect.StructType)]
    return [body_type]


def _chosen(body_type: Any, value: dict[str, Any]) -> Any:
    """The member of a tagged union the body's tag names (the first one when it names none)."""
    members = _members(body_type)
    for member in members:
        info = _info(member)
        if info.tag_field is not None and value.get(info.tag_field) == info.tag:
            return member
    return members[0]


def _fields(struct: Any) -> list[str]:
    info = _info(struct)
    names = [f.encode_name for f in info.fields]
    return [info.tag_field, *names] if info.tag_field else names


def _required(struct: Any) -> set[str]:
    return {f.encode_name for f in _info(struct).fields if f.required}


def _field_type(struct: Any, name: str) -> Any:
    for f in _info(struct).fields:
        if f.encode_name == name:
            return f.type
    return None


def _accepts(body_type: Any, struct: Any, name: str) -> str:
    info = _info(struct)
    if info.tag_field == name:
        tags = [_info(member).tag for member in _members(body_type)]
        return choices(tags)
    return _description(_field_type(struct, name)) or "as documented in /openapi.json"


def _item_accepts(struct: Any, name: str) -> str:
    field_type = _unwrap(_field_type(struct, name))
    if isinstance(field_type, (inspect.ListType, inspect.SetType, inspect.VarTupleType)):
        return _description(field_type.item_type) or "as documented in /openapi.json"
    return _description(field_type) or "as documented in /openapi.json"


def text_fields(struct: Any) -> set[str]:
    """The fields of `struct` that take a string (for a command line that reads other values as JSON)."""
    return {f.encode_name for f in _info(struct).fields if isinstance(_unwrap(f.type), inspect.StrType)}


def _unwrap(t: Any) -> Any:
    """The type without its metadata and without the `None`/unset alternatives of an optional field."""
    while True:
        if isinstance(t, inspect.Metadata):
            t = t.type
        elif isinstance(t, inspect.UnionType):
            rest = [m for m in t.types if not isinstance(m, inspect.NoneType)]
            if len(rest) != 1:
                return t
            t = rest[0]
        else:
            return t


def _description(t: Any) -> str | None:
    while t is not None:
        if isinstance(t, inspect.Metadata):
            if t.extra_json_schema and "description" in t.extra_json_schema:
                return t.extra_json_schema["description"]
            t = t.type
        elif isinstance(t, inspect.UnionType):
            rest = [m for m in t.types if not isinstance(m, inspect.NoneType)]
            t = rest[0] if len(rest) == 1 else None
        elif isinstance(t, inspect.LiteralType):
            return choices(t.values)
        else:
            return None
    return None


# --- the OpenAPI side ------------------------------------------------------------------------------------------

def schemas(*types: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """JSON Schemas for `types` (refs into #/components/schemas) and the components they need."""
    refs, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    return list(refs), components


def one_of(*members: type) -> Any:
    """A tagged union of bodies (msgspec picks the member by its tag field)."""
    return Union[members]  # type: ignore[valid-type]
